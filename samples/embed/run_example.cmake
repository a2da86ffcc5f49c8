# Runs the embedding example the way a user would, with a fresh state directory under $TMPDIR
# (or /tmp), and checks that it succeeded and got the VM through Running to Stopped.
#   cmake -DEXAMPLE=<exe> -DCONFIG=<host.yaml> -DPLUGIN_DIR=<dir> -P run_example.cmake
foreach(var EXAMPLE CONFIG PLUGIN_DIR)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "run_example.cmake: -D${var}= is required")
  endif()
endforeach()

set(tmp "$ENV{TMPDIR}")
if(NOT tmp)
  set(tmp "/tmp")
endif()
string(RANDOM LENGTH 12 suffix)
set(STATE_DIR "${tmp}/hci-embed-example-${suffix}")
file(MAKE_DIRECTORY "${STATE_DIR}")
set(ENV{HCI_STATE_DIR} "${STATE_DIR}")
set(ENV{HCI_PLUGIN_PATH} "${PLUGIN_DIR}")
execute_process(
  COMMAND "${EXAMPLE}" "${CONFIG}"
  RESULT_VARIABLE rc
  OUTPUT_VARIABLE out
  ERROR_VARIABLE err
  TIMEOUT 60)
message("--- stdout\n${out}--- stderr\n${err}---")
if(NOT rc STREQUAL "0")
  message(FATAL_ERROR "embed_example exited with ${rc} (state kept in ${STATE_DIR})")
endif()
foreach(line "demo: VM_PHASE_RUNNING" "demo: VM_PHASE_STOPPED")
  string(FIND "${out}" "${line}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "embed_example did not print \"${line}\" (state kept in ${STATE_DIR})")
  endif()
endforeach()
file(REMOVE_RECURSE "${STATE_DIR}")
