#!/usr/bin/env bash
# Downloads (does not install) the Debian 12 packages that launch/gpu/check.sh unpacks on a GPU machine that
# has no apt and no network: the -dev packages the build of cm uses and the runtime libraries behind them.
# Run it on a Debian 12 (bookworm) amd64 machine with apt; no root needed.
#
#   bash launch/gpu/fetch-debs.sh [DIR]      # default DIR: launch/gpu/carry/debs (ignored by git; carried)
#
# Prints the total size. Packages the GPU machine's own system already has (glibc, libstdc++, often
# zlib, libssl) are still fetched: check.sh puts a carried library on the library path only when the
# machine lacks its soname, so carrying one too many costs only bytes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${1:-$here/carry/debs}

# What the build links (cmake/Dependencies.cmake, datasets/CMakeLists.txt) and its headers.
DEV=(
  libopenmpi-dev      # mpi.h, libmpi.so, the mpicc wrapper's data (FindMPI)
  libhdf5-dev         # hdf5.h, libhdf5_serial.so (FindHDF5 through HDF5_ROOT)
  libtomlplusplus-dev libfmt-dev nlohmann-json3-dev
  zlib1g-dev libjpeg62-turbo-dev libpng-dev libwebp-dev liblmdb-dev libxxhash-dev
  libssl-dev libzip-dev
  libgtest-dev        # the test suite (static gtest built with the C++11 ABI, plus its sources)
  pkg-config pkgconf pkgconf-bin libpkgconf3   # libzip is found through pkg-config (core/CMakeLists.txt)
)
# Runtime libraries: the -dev packages' libraries and what those need (readelf NEEDED, not apt's whole
# dependency tree: OpenMPI's optional transports - UCX, libfabric, verbs, PSM - are left out; their
# components fail to load quietly and shared memory + TCP remain, which is all one node needs).
RUNTIME=(
  openmpi-bin openmpi-common libopenmpi3 libpmix2 libhwloc15 libevent-core-2.1-7 libevent-pthreads-2.1-7
  libmunge2 libudev1
  libhdf5-103-1 libsz2 libaec0
  libcurl4 libnghttp2-14 libidn2-0 librtmp1 libssh2-1 libpsl5 libgssapi-krb5-2 libkrb5-3 libk5crypto3
  libkrb5support0 libkeyutils1 libcom-err2 libldap-2.5-0 libsasl2-2 libsasl2-modules-db libdb5.3 libzstd1
  libbrotli1 libgnutls30 libhogweed6 libnettle8 libgmp10 libp11-kit0 libtasn1-6 libunistring2 libffi8
  libfmt9 libtomlplusplus3 libjpeg62-turbo libpng16-16 libwebp7 libwebpdemux2 libwebpmux3 liblmdb0
  libxxhash0 libssl3 libzip4 libbz2-1.0 zlib1g
)

command -v apt-get >/dev/null || { echo "fetch-debs: needs apt-get (a Debian 12 machine)" >&2; exit 2; }
if [[ "$(dpkg --print-architecture)" != amd64 ]]; then
  echo "fetch-debs: this machine is $(dpkg --print-architecture); the GPU machines are amd64" >&2; exit 2
fi
mkdir -p "$dir"
cd "$dir"
rm -f ./*.deb
apt-get -q download "${DEV[@]}" "${RUNTIME[@]}" 2>&1 | grep -v "^Get:\|unsandboxed as root" || true
for p in "${DEV[@]}" "${RUNTIME[@]}"; do ls "${p}"_*.deb >/dev/null 2>&1 || { echo "fetch-debs: $p was not downloaded" >&2; exit 1; }; done
n=$(ls ./*.deb | wc -l)
bytes=$(du -cb ./*.deb | tail -1 | cut -f1)
awk -v n="$n" -v b="$bytes" -v d="$dir" 'BEGIN { printf "fetch-debs: %d packages, %.1f MiB in %s\n", n, b / 1048576, d }'
