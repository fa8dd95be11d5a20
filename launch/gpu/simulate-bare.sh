#!/usr/bin/env bash
# Runs a command (by default launch/gpu/check.sh --dry-run ...) on a Debian 12 development machine as if the
# project's -dev packages were not installed: in a private mount namespace (root, `unshare -m`), the
# headers, CMake and pkg-config files, OpenMPI/PMIx/HDF5 folders and the mpicc/mpirun/h5cc programs of the
# packages that check.sh carries are covered by empty ones, so a build or run that still found a system copy
# fails instead of passing by accident. Nothing outside the namespace changes; it ends with the command.
# The runtime libraries stay (cmake, python3 and the compiler use some); run check.sh with
# CM_GPU_CARRIED_LIBS=all so the carried ones come first on the library path.
#
#   sudo bash launch/gpu/simulate-bare.sh bash launch/gpu/check.sh --dry-run --work /tmp/gpu-check-build
set -euo pipefail
[[ $# -gt 0 ]] || { echo "usage: $0 COMMAND [ARGS...]" >&2; exit 2; }
[[ "$(id -u)" == 0 ]] || { echo "$0: needs root (a private mount namespace)" >&2; exit 2; }
if [[ "${CM_BARE_INSIDE:-}" != 1 ]]; then
  exec env CM_BARE_INSIDE=1 CM_GPU_CARRIED_LIBS=all unshare -m --propagation private bash "$0" "$@"
fi

empty=$(mktemp -d /tmp/cm-bare-empty.XXXXXX)
hidden=0
hide() {
  local p
  for p in "$@"; do
    if [[ -d "$p" && ! -L "$p" ]]; then mount --bind "$empty" "$p" && hidden=$((hidden + 1))
    elif [[ -f "$p" && ! -L "$p" ]]; then mount --bind /dev/null "$p" && hidden=$((hidden + 1))
    fi
  done
}
L=/usr/lib/x86_64-linux-gnu
hide /usr/include/hdf5 /usr/include/fmt /usr/include/toml++ /usr/include/gtest /usr/include/gmock /usr/include/nlohmann \
     /usr/include/openssl /usr/include/webp /usr/include/x86_64-linux-gnu/openssl \
     /usr/include/lmdb.h /usr/include/xxhash.h /usr/include/xxh3.h /usr/include/zlib.h /usr/include/zconf.h \
     /usr/include/png.h /usr/include/pngconf.h /usr/include/jpeglib.h /usr/include/x86_64-linux-gnu/jconfig.h \
     /usr/include/zip.h /usr/include/x86_64-linux-gnu/zipconf.h /usr/include/nlohmann_json.natvis \
     $L/openmpi $L/pmix2 $L/hdf5 $L/cmake/fmt $L/cmake/tomlplusplus $L/cmake/GTest $L/cmake/nlohmann_json \
     $L/pkgconfig /usr/share/pkgconfig /usr/share/cmake/nlohmann_json /usr/share/openmpi /etc/openmpi \
     /usr/bin/opal_wrapper /usr/bin/orterun /usr/bin/orted /usr/bin/h5cc /usr/bin/pkgconf \
     $L/libgtest.a $L/libgtest_main.a $L/libgmock.a $L/libgmock_main.a $L/libhdf5_serial.a $L/libxxhash.a \
     $L/liblmdb.a $L/libwebp.a $L/libpng16.a $L/libjpeg.a $L/libz.a $L/libzip.a $L/libfmt.a $L/libcrypto.a $L/libssl.a
echo "simulate-bare: $hidden system paths covered in this mount namespace" >&2
"$@"
