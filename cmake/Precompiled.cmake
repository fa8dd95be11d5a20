# LibTorch headers cost ~20 s per translation unit. One precompiled header (cmake/pch.h) is built once in
# cm_pch and reused by every target made with cm_add_library / cm_add_executable.

add_library(cm_pch STATIC ${CMAKE_SOURCE_DIR}/cmake/pch.cpp)
target_link_libraries(cm_pch PUBLIC cm_torch fmt::fmt)
target_precompile_headers(cm_pch PRIVATE ${CMAKE_SOURCE_DIR}/cmake/pch.h)

function(cm_use_pch target)
  target_precompile_headers(${target} REUSE_FROM cm_pch)
endfunction()

# cm_add_library(name SOURCES... ) : static library with the shared PCH and the repo root on the include path.
function(cm_add_library name)
  add_library(${name} STATIC ${ARGN})
  target_include_directories(${name} PUBLIC ${CMAKE_SOURCE_DIR})
  target_link_libraries(${name} PUBLIC cm_torch fmt::fmt)
  target_compile_options(${name} PRIVATE -Wall -Wextra -Wno-unused-parameter)
  cm_use_pch(${name})
endfunction()
