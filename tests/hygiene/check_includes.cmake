# Header hygiene: compiles a one-line translation unit that includes <hci/hci.h> with -H
# -fsyntax-only, using only the include directories given, and fails if any header it pulls in
# is a Boost header, a private *_internal.h header, or lives in the libhci/ source directory.
#
#   cmake -DCXX=<compiler> -DINCLUDES_FILE=<file with one include dir per line>
#         -DWORK_DIR=<scratch dir> [-DREQUIRE=<path suffix>;...] [-DEXPECT_VIOLATION=<pattern>]
#         -P check_includes.cmake
#
# REQUIRE lists headers that must appear in the include tree, so that the check cannot pass by
# seeing nothing. With EXPECT_VIOLATION the check is inverted (for testing the check itself): it
# passes only when a violation matching that pattern is found.
foreach(var CXX INCLUDES_FILE WORK_DIR)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "check_includes.cmake: -D${var}= is required")
  endif()
endforeach()

file(STRINGS "${INCLUDES_FILE}" include_dirs)
set(args -std=c++20 -fsyntax-only -H)
foreach(dir IN LISTS include_dirs)
  if(dir)
    list(APPEND args "-I${dir}")
  endif()
endforeach()
file(MAKE_DIRECTORY "${WORK_DIR}")
set(tu "${WORK_DIR}/include_hci.cc")
file(WRITE "${tu}" "#include <hci/hci.h>\n")

execute_process(
  COMMAND "${CXX}" ${args} "${tu}"
  RESULT_VARIABLE rc
  OUTPUT_VARIABLE out
  ERROR_VARIABLE err)
if(NOT rc STREQUAL "0")
  message(FATAL_ERROR "compiling ${tu} failed (${rc}):\n${CXX} ${args} ${tu}\n${err}")
endif()

# -H prints one line per header on stderr: one dot per nesting level, a space, the path. The
# stack of open headers gives, for the first violation, the chain of includes that led to it.
string(REPLACE "\n" ";" lines "${err}")
set(headers)
set(stack)
set(first_chain)
foreach(line IN LISTS lines)
  if(NOT line MATCHES "^(\\.+) (.+)$")
    continue()
  endif()
  string(LENGTH "${CMAKE_MATCH_1}" depth)
  file(REAL_PATH "${CMAKE_MATCH_2}" path)
  list(APPEND headers "${path}")
  math(EXPR keep "${depth} - 1")
  list(SUBLIST stack 0 ${keep} stack)
  list(APPEND stack "${path}")
  if(NOT first_chain AND (path MATCHES "boost/" OR path MATCHES "_internal\\.h$" OR
                          path MATCHES "/libhci/"))
    set(first_chain "${stack}")
  endif()
endforeach()
list(REMOVE_DUPLICATES headers)
list(LENGTH headers count)

foreach(required IN LISTS REQUIRE)
  set(found FALSE)
  foreach(h IN LISTS headers)
    string(FIND "${h}" "${required}" at REVERSE)
    string(LENGTH "${h}" h_length)
    string(LENGTH "${required}" r_length)
    math(EXPR suffix_at "${h_length} - ${r_length}")
    if(at GREATER_EQUAL 0 AND at EQUAL suffix_at)
      set(found TRUE)
      break()
    endif()
  endforeach()
  if(NOT found)
    message(FATAL_ERROR "<hci/hci.h> did not pull in ${required} (saw ${count} headers): "
                        "is the -H output being read?\n${err}")
  endif()
endforeach()

set(violations)
foreach(h IN LISTS headers)
  if(h MATCHES "boost/" OR h MATCHES "_internal\\.h$" OR h MATCHES "/libhci/")
    list(APPEND violations "${h}")
  endif()
endforeach()
list(LENGTH violations violation_count)

if(DEFINED EXPECT_VIOLATION)
  foreach(v IN LISTS violations)
    if(v MATCHES "${EXPECT_VIOLATION}")
      message(STATUS "the check caught ${v}, as expected")
      return()
    endif()
  endforeach()
  message(FATAL_ERROR "expected a violation matching \"${EXPECT_VIOLATION}\"; found: "
                      "${violations}")
endif()

if(violations)
  list(SUBLIST violations 0 20 shown)
  list(JOIN shown "\n  " shown)
  list(JOIN first_chain "\n  includes " chain)
  message(FATAL_ERROR "<hci/hci.h> must not pull in Boost or private headers, but it includes "
                      "${violation_count}, e.g.:\n  ${shown}\nThe first one comes from:\n  "
                      "${tu}\n  includes ${chain}")
endif()
message(STATUS "<hci/hci.h> pulls in ${count} headers, none of them Boost or private")
