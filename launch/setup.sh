#!/usr/bin/env bash
# Installs the Debian 12 packages the project needs (when missing), then configures and builds it in
# build/ (or $CM_BUILD_DIR). Safe to run again: it only installs what is missing and rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  build-essential cmake ninja-build git pkg-config
  libtorch-dev libopenblas0-pthread          # LibTorch 1.13 (CPU) and a fast BLAS for it
  libopenmpi-dev openmpi-bin                 # MPI communicator, mpirun
  libhdf5-dev                                # dataset shards
  libtomlplusplus-dev libfmt-dev zlib1g-dev  # configs, formatting, gzip and CRC32
  nlohmann-json3-dev libssl-dev libzip-dev   # JSON, SHA-256 (libcrypto), zip (.npz, .pt)
  libjpeg-dev libpng-dev libwebp-dev liblmdb-dev  # PNG pictures, dataset converters
  libxxhash-dev                              # per-record checksums of the dataset shards
  libgtest-dev                               # tests
  clang libclang-rt-14-dev                   # fuzz targets (tests/fuzz, libFuzzer + ASan/UBSan)
  python3 python3-numpy python3-torch python3-pil python3-lmdb  # tests make expected values with these
  dataset-fashion-mnist                      # the real dataset of the CPU runs
  slurm-wlm munge                            # the SLURM tests bring up a local cluster (launch/slurm/)
  openssh-server openssh-client iproute2     # the multi-node tests: hosts as network namespaces (local_nodes.sh)
  chromium fonts-liberation                  # the cm report test renders the page headless
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

BUILD_DIR="${CM_BUILD_DIR:-build}"
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
# Two jobs per core at most: LibTorch translation units take ~1 GB of memory each.
# CM_BUILD_TARGET=cm builds only the program (the main job); the default builds everything, tests included.
cmake --build "$BUILD_DIR" -j "$(nproc)" ${CM_BUILD_TARGET:+--target "$CM_BUILD_TARGET"}
echo "setup: built $BUILD_DIR (${CM_BUILD_TARGET:-all targets})"
