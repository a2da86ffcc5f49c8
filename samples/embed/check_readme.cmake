# Checks that the README's first ```cpp block is byte for byte the embedding example.
#   cmake -DREADME=<README.md> -DEXAMPLE=<embed_example.cc> -P check_readme.cmake
file(READ "${README}" readme)
file(READ "${EXAMPLE}" example)
set(fence "```cpp\n")
string(FIND "${readme}" "${fence}" begin)
if(begin EQUAL -1)
  message(FATAL_ERROR "${README} has no ```cpp block")
endif()
string(LENGTH "${fence}" fence_length)
math(EXPR begin "${begin} + ${fence_length}")
string(SUBSTRING "${readme}" ${begin} -1 rest)
string(FIND "${rest}" "\n```" end)
if(end EQUAL -1)
  message(FATAL_ERROR "${README}: the ```cpp block is not closed")
endif()
math(EXPR end "${end} + 1")  # keep the block's last newline
string(SUBSTRING "${rest}" 0 ${end} block)
if(NOT block STREQUAL example)
  file(WRITE "${CMAKE_CURRENT_BINARY_DIR}/readme_block.cc" "${block}")
  execute_process(COMMAND diff -u "${EXAMPLE}" "${CMAKE_CURRENT_BINARY_DIR}/readme_block.cc")
  message(FATAL_ERROR
          "The README's ```cpp block differs from ${EXAMPLE} (diff above); keep them identical")
endif()
