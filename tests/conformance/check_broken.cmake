# conformance.broken: runs hci-conformance against tests/conformance/broken_plugin.cc and checks
# that the kit fails it on the checks each of its defects breaks, passes the checks that it
# honours, still cleans up after the failures, and reports the defects in the matrix.
#   cmake -DKIT=<hci-conformance> -DPLUGIN=<hci_conformance-broken.so> -DOUT=<dir>
#         -P check_broken.cmake
foreach(var KIT PLUGIN OUT)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "check_broken.cmake: -D${var}= is required")
  endif()
endforeach()
file(REMOVE_RECURSE "${OUT}")
file(MAKE_DIRECTORY "${OUT}")

execute_process(
  COMMAND "${KIT}" --plugin "${PLUGIN}" --junit "${OUT}/junit.xml" --matrix "${OUT}/matrix.json"
  RESULT_VARIABLE rc
  OUTPUT_VARIABLE out
  ERROR_VARIABLE err
  TIMEOUT 100)
file(WRITE "${OUT}/stdout.txt" "${out}")
set(problems)
if(NOT rc EQUAL 1)
  list(APPEND problems "exit status ${rc}, expected 1 (checks failed)")
endif()

# Checks each defect must fail.
set(must_fail
  StorageLifecycle.Snapshots            # claims snapshots, answers Unimplemented
  StorageIdempotency.CreateVolume       # a repeated create gives AlreadyExists
  StorageLifecycle.AttachDetach         # deletes an attached volume
  StorageLifecycle.Expand               # shrinks
  StorageCapabilities.RevertUnimplemented)  # revert not claimed, yet implemented
# Checks the plugin honours: the kit must not fail everything.
set(must_pass
  Handshake.PluginLoads
  StorageLifecycle.CreateGetListDelete
  StorageLifecycle.ExpandAttached
  StorageNegative.CreateVolume_spec_size_bytes
  StorageNotFound.GetVolume
  Cleanup.NothingLeftBehind)            # the tracker cleaned up after every failure
foreach(test IN LISTS must_fail)
  string(FIND "${out}" "[  FAILED  ] ${test} (" at)
  if(at EQUAL -1)
    list(APPEND problems "${test} did not fail")
  endif()
endforeach()
foreach(test IN LISTS must_pass)
  string(FIND "${out}" "[       OK ] ${test} (" at)
  if(at EQUAL -1)
    list(APPEND problems "${test} did not pass")
  endif()
endforeach()

# The JUnit report names the failures.
if(NOT EXISTS "${OUT}/junit.xml")
  list(APPEND problems "no JUnit XML was written")
else()
  file(READ "${OUT}/junit.xml" junit)
  foreach(name Snapshots RevertUnimplemented)
    string(REGEX MATCH "<testcase name=\"${name}\"[^>]*>[ \t\r\n]*<failure" hit "${junit}")
    if(NOT hit)
      list(APPEND problems "junit.xml does not report ${name} as a failure")
    endif()
  endforeach()
endif()

# The matrix says partial where the defects are, missing where the plugin is honest.
if(NOT EXISTS "${OUT}/matrix.json")
  list(APPEND problems "no matrix was written")
else()
  file(READ "${OUT}/matrix.json" json)
  set(expect
    CreateVolume=SUPPORT_PARTIAL DeleteVolume=SUPPORT_PARTIAL ExpandVolume=SUPPORT_PARTIAL
    CreateSnapshot=SUPPORT_PARTIAL RevertVolume=SUPPORT_PARTIAL
    GetChangedBlocks=SUPPORT_MISSING GetVolume=SUPPORT_COMPLETE)
  string(JSON count LENGTH "${json}" operations)
  math(EXPR last "${count} - 1")
  foreach(pair IN LISTS expect)
    string(REPLACE "=" ";" pair "${pair}")
    list(GET pair 0 op)
    list(GET pair 1 want)
    set(got "(absent)")
    foreach(i RANGE ${last})
      string(JSON kind GET "${json}" operations ${i} kind)
      string(JSON name GET "${json}" operations ${i} operation)
      if(kind STREQUAL "storage" AND name STREQUAL op)
        string(JSON got GET "${json}" operations ${i} support)
      endif()
    endforeach()
    if(NOT got STREQUAL want)
      list(APPEND problems "matrix: storage ${op} is ${got}, expected ${want}")
    endif()
  endforeach()
endif()

if(problems)
  list(JOIN problems "\n  " text)
  message(FATAL_ERROR "hci-conformance did not judge the broken plugin as expected:\n  ${text}\n"
                      "--- its output (${OUT}/stdout.txt):\n${out}\n--- stderr:\n${err}")
endif()
message(STATUS "hci-conformance failed the broken plugin on each of its defects")
