# conformance.matrix: merges the matrices the conformance.<plugin> tests just wrote and compares
# the result with the committed docs/support-matrix.md; on a difference prints the diff and how
# to regenerate.
#   cmake -DKIT=<hci-conformance> -DRESULTS=<dir> -DPLUGINS=<a;b> -DCOMMITTED=<md>
#         -DBUILD_DIR=<build dir> -P check_matrix.cmake
foreach(var KIT RESULTS PLUGINS COMMITTED BUILD_DIR)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "check_matrix.cmake: -D${var}= is required")
  endif()
endforeach()

set(inputs)
foreach(plugin IN LISTS PLUGINS)
  if(NOT EXISTS "${RESULTS}/${plugin}.json")
    message(FATAL_ERROR "${RESULTS}/${plugin}.json is missing: conformance.${plugin} did not run "
                        "(run `ctest -R conformance` so that its results exist)")
  endif()
  list(APPEND inputs "${RESULTS}/${plugin}.json")
endforeach()

set(generated "${RESULTS}/support-matrix.md")
execute_process(
  COMMAND "${KIT}" --merge ${inputs} --output "${generated}"
  RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "hci-conformance --merge failed (exit status ${rc})")
endif()

file(READ "${generated}" want)
set(have "")
if(EXISTS "${COMMITTED}")
  file(READ "${COMMITTED}" have)
endif()
if(NOT have STREQUAL want)
  execute_process(COMMAND diff -u "${COMMITTED}" "${generated}" OUTPUT_VARIABLE diff)
  message(FATAL_ERROR
    "${COMMITTED} is not what the current tree generates:\n${diff}\n"
    "Regenerate it with\n"
    "  cmake --build ${BUILD_DIR} --target support-matrix\n"
    "(or copy ${generated} over it) and commit the result.")
endif()
message(STATUS "${COMMITTED} matches this run")
