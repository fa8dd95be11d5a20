# Finds every external dependency; a missing one stops configure with the Debian package to install.

macro(cm_require found what package)
  if(NOT ${found})
    message(FATAL_ERROR "${what} not found. On Debian 12 install it with:\n  sudo apt-get install ${package}\n"
                        "(or run `bash launch/setup.sh`, which installs everything the build needs).")
  endif()
endmacro()

# LibTorch: Debian's libtorch-dev (CPU, 1.13) or a CUDA LibTorch 2.x given by -DCMAKE_PREFIX_PATH
# (for a pip-installed torch: python3 -c 'import torch; print(torch.utils.cmake_prefix_path)').
find_package(Torch QUIET)
cm_require(Torch_FOUND "LibTorch" "libtorch-dev")
message(STATUS "LibTorch: ${TORCH_INSTALL_PREFIX}")
# TorchConfig puts its ABI flag in TORCH_CXX_FLAGS; carry it on an interface target, not globally.
add_library(cm_torch INTERFACE)
target_link_libraries(cm_torch INTERFACE ${TORCH_LIBRARIES})
target_include_directories(cm_torch SYSTEM INTERFACE ${TORCH_INCLUDE_DIRS})
separate_arguments(_cm_torch_flags UNIX_COMMAND "${TORCH_CXX_FLAGS}")
target_compile_options(cm_torch INTERFACE ${_cm_torch_flags})

# CUDA support follows the LibTorch that was found.
set(_cm_torch_cuda OFF)
if(TARGET torch_cuda OR CUDA_FOUND OR TORCH_CUDA_LIBRARIES)
  set(_cm_torch_cuda ON)
endif()
option(CM_WITH_CUDA "Build CUDA code paths (needs a CUDA LibTorch)" ${_cm_torch_cuda})
find_path(NCCL_INCLUDE_DIR nccl.h HINTS $ENV{NCCL_HOME}/include /usr/local/cuda/include /usr/include)
find_library(NCCL_LIBRARY nccl HINTS $ENV{NCCL_HOME}/lib /usr/local/cuda/lib64 /usr/lib/x86_64-linux-gnu)
set(_cm_nccl OFF)
if(CM_WITH_CUDA AND NCCL_INCLUDE_DIR AND NCCL_LIBRARY)
  set(_cm_nccl ON)
endif()
option(CM_WITH_NCCL "Build the NCCL communicator (needs CUDA LibTorch and NCCL)" ${_cm_nccl})
# Compile-only check of the CUDA/NCCL sources on CPU machines that have the CUDA headers, so the GPU
# code does not rot between GPU runs (nothing is linked or run).
set(_cm_cuda_check OFF)
if(NOT CM_WITH_CUDA AND EXISTS /usr/local/cuda/include/cuda_runtime_api.h AND NCCL_INCLUDE_DIR)
  set(_cm_cuda_check ON)
endif()
option(CM_CUDA_COMPILE_CHECK "Compile (not link) the CUDA/NCCL sources against CUDA headers" ${_cm_cuda_check})
message(STATUS "CUDA: ${CM_WITH_CUDA}  NCCL: ${CM_WITH_NCCL}  CUDA compile check: ${CM_CUDA_COMPILE_CHECK}")

find_package(MPI QUIET COMPONENTS C)
cm_require(MPI_C_FOUND "MPI (OpenMPI)" "libopenmpi-dev openmpi-bin")

find_package(HDF5 QUIET COMPONENTS C)
cm_require(HDF5_FOUND "HDF5" "libhdf5-dev")
add_library(cm_hdf5 INTERFACE)
target_include_directories(cm_hdf5 SYSTEM INTERFACE ${HDF5_INCLUDE_DIRS})
target_link_libraries(cm_hdf5 INTERFACE ${HDF5_LIBRARIES})
target_compile_definitions(cm_hdf5 INTERFACE ${HDF5_DEFINITIONS})

find_package(tomlplusplus QUIET)
cm_require(tomlplusplus_FOUND "toml++" "libtomlplusplus-dev")

find_package(fmt QUIET)
cm_require(fmt_FOUND "fmt" "libfmt-dev")

find_package(ZLIB QUIET)
cm_require(ZLIB_FOUND "zlib" "zlib1g-dev")

find_package(Threads REQUIRED)

if(CM_BUILD_TESTS)
  find_package(GTest QUIET)
  cm_require(GTest_FOUND "GoogleTest" "libgtest-dev")
endif()
