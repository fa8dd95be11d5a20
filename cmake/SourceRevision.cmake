# The source revision recorded in meta.json and in checkpoints: `git describe --always --dirty` of the source tree
# (e.g. "40efa0a" or "40efa0a-dirty"), "unknown" when the tree is no git checkout or git is missing, or the value
# given with -DCM_SOURCE_REVISION=... (a packaged source without .git).
#
# It is taken at configure time and again at every build (the cm_source_revision_update target runs
# WriteSourceRevision.cmake, which rewrites generated/source_revision.cpp only when the revision changed), so a
# commit or an edit needs no reconfigure and costs one tiny object. Code includes "source_revision.h" and calls
# cm::source_revision(); every library gets it through cm_core.
set(CM_SOURCE_REVISION "" CACHE STRING "Source revision to record instead of asking git (empty: git describe)")

set(CM_GENERATED_DIR ${CMAKE_BINARY_DIR}/generated)
configure_file(${CMAKE_CURRENT_LIST_DIR}/source_revision.h.in ${CM_GENERATED_DIR}/source_revision.h COPYONLY)
set(_cm_revision_cpp ${CM_GENERATED_DIR}/source_revision.cpp)
set(_cm_revision_args -DCM_SOURCE_DIR=${CMAKE_SOURCE_DIR} -DCM_OUTPUT=${_cm_revision_cpp}
                      -DCM_SOURCE_REVISION=${CM_SOURCE_REVISION})
set(_cm_revision_script ${CMAKE_CURRENT_LIST_DIR}/WriteSourceRevision.cmake)

execute_process(COMMAND ${CMAKE_COMMAND} ${_cm_revision_args} -DCM_PRINT=1 -P ${_cm_revision_script}
                OUTPUT_VARIABLE _cm_revision OUTPUT_STRIP_TRAILING_WHITESPACE)
message(STATUS "Source revision: ${_cm_revision}")

add_custom_target(cm_source_revision_update
                  COMMAND ${CMAKE_COMMAND} ${_cm_revision_args} -P ${_cm_revision_script}
                  BYPRODUCTS ${_cm_revision_cpp}
                  VERBATIM)
add_library(cm_source_revision STATIC ${_cm_revision_cpp})
add_dependencies(cm_source_revision cm_source_revision_update)
target_include_directories(cm_source_revision PUBLIC ${CM_GENERATED_DIR})
