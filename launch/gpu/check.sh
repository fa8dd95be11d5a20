#!/usr/bin/env bash
# Builds cm with CUDA and NCCL on a GPU machine that has python3 with a CUDA PyTorch 2.x, cmake, ninja and
# nvcc but no apt and no network, runs the checks that need the GPU, the benchmarks, and writes a summary.
# Dependencies come from Debian 12 packages carried along (launch/gpu/prepare.sh), unpacked with
# `dpkg-deb -x` (or ar + tar) into a prefix: nothing is installed into /, no root needed.
#
#   bash launch/gpu/check.sh                 # everything; summary in $OUT (or $CM_GPU_WORK/out)
#   bash launch/gpu/check.sh --dry-run       # CPU mode: unpack, configure, summary; GPU steps reported SKIP
#   bash launch/gpu/check.sh --steps unpack,configure,build   # a subset (names below; env always runs)
#
# Steps, in order (each time-limited; the whole run keeps within --budget seconds, default 540):
#   env        GPU, driver, torch (version, CUDA, C++ ABI), nvcc, compilers, cores
#   unpack     the carried .debs into $CM_GPU_WORK/prefix; a library-path folder holding only the carried
#              libraries whose soname this machine lacks; mpicc/mpirun links; fixtures and reference code
#   configure  cmake -G Ninja against the pip LibTorch (CUDA) and the prefix, NCCL from pip's nvidia-nccl;
#              then checks that every dependency came from the prefix
#   build      ninja -j<cores> of cm and the test executables that are run (not the whole tree)
#   mpi        a 1-rank and a 2-rank MPI start with the carried OpenMPI
#   nccl       cm bench allreduce --device cuda: NCCL all-reduce, buckets, overlap on CUDA streams (1 rank)
#   tests      the GPU-relevant test executables (gtest filters in TESTS below); device "auto" = the GPU
#   bench      cm bench step --synthetic: cifar10_ct, imagenet64_cd_lpips (and imagenet64_ct) x precisions, and
#              the reference implementation's CT step (openai/consistency_models) on imagenet64_ct's network
#              and batch (ref_step.py), most important first
#   scaling    cm plan --scaling from the measured step and overlap
# Options: --dry-run, --steps LIST, --skip LIST, --budget S, --jobs N, --work DIR, --out DIR, --carry DIR,
#          --build DIR, --fail STEP (pretend STEP failed: tests the failure report), -h.
# Environment: PYTHON (default python3), CM_GPU_TORCH_CMAKE (LibTorch's cmake prefix; default from torch),
#   CM_GPU_CARRIED_LIBS=all (put every carried library on the library path, not only the missing ones),
#   CM_GPU_PRECISIONS (default "bf16 fp16 tf32 fp32"), CM_GPU_BATCH_CIFAR (64), CM_GPU_BATCH_IMAGENET (32),
#   CM_GPU_BENCH_STEPS (5), CM_GPU_BENCH_WARMUP (2), CM_GPU_BUILD_TARGETS (default: cm + the tests run),
#   CM_GPU_CM (a cm binary to use instead of the one built, e.g. for the scaling step of a dry run),
#   CM_GPU_LIMIT_<step> (that step's time limit in seconds, e.g. CM_GPU_LIMIT_build=1800 on a small machine),
#   CM_GPU_ALLOW_CPU=1 (run the GPU steps anyway, on the CPU: a test of their logic with tiny batches),
#   CM_GPU_BENCH_JOBS (the bench list, comma-separated, e.g. "cm cifar10_ct bf16,ref fp16"),
#   CM_GPU_REF_ARGS (more ref_step.py arguments, e.g. "--device cpu --small" for such a test).
# Exit code: 0 when every step that ran passed, 1 otherwise (2: bad usage). Files in the summary folder:
#   summary.md, summary.json, results.tsv, logs.tar.gz (every step's log), bench.jsonl, scaling.json.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$here/../.." && pwd)
ALL_STEPS="env unpack configure build mpi nccl tests bench scaling"

usage() { sed -n '2,37p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

# ---------------------------------------------------------------------------------------------------------
# Options (the internal --step NAME re-entry runs one step with the environment the parent exported).
if [[ "${1:-}" == "--step" ]]; then INTERNAL_STEP=$2; shift 2; else INTERNAL_STEP=""; fi
if [[ -z "$INTERNAL_STEP" ]]; then
  DRY=0; STEPS="$ALL_STEPS"; SKIP=""; BUDGET=540; JOBS=$(nproc 2>/dev/null || echo 4); FAIL_STEP=""
  WORK=${CM_GPU_WORK:-/tmp/cm-gpu}; OUTDIR=${OUT:-}; CARRY=${CM_GPU_CARRY:-$here/carry}; BUILD=""
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --dry-run) DRY=1; shift ;;
      --steps) STEPS=${2//,/ }; shift 2 ;;
      --skip) SKIP=${2//,/ }; shift 2 ;;
      --budget) BUDGET=$2; shift 2 ;;
      --jobs) JOBS=$2; shift 2 ;;
      --work) WORK=$2; shift 2 ;;
      --out) OUTDIR=$2; shift 2 ;;
      --carry) CARRY=$2; shift 2 ;;
      --build) BUILD=$2; shift 2 ;;
      --fail) FAIL_STEP=$2; shift 2 ;;
      -h|--help) usage; exit 0 ;;
      *) echo "check.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
  done
  for s in $STEPS $SKIP; do
    [[ " $ALL_STEPS " == *" $s "* ]] || { echo "check.sh: unknown step '$s' (steps: $ALL_STEPS)" >&2; exit 2; }
  done
  [[ " $STEPS " == *" env "* ]] || STEPS="env $STEPS"   # the facts every other step reads
  [[ "$BUDGET" =~ ^[0-9]+$ && "$JOBS" =~ ^[0-9]+$ ]] || { echo "check.sh: --budget and --jobs take numbers" >&2; exit 2; }
  mkdir -p "$WORK" || exit 2
  WORK=$(cd "$WORK" && pwd)
  OUTDIR=${OUTDIR:-$WORK/out}
  BUILD=${BUILD:-$WORK/build}
  export DRY STEPS BUDGET JOBS FAIL_STEP WORK OUTDIR CARRY BUILD ROOT
  export PREFIX=$WORK/prefix LIBDIR=$WORK/libpath BINDIR=$WORK/bin LOGS=$WORK/logs RESULTS=$WORK/results.tsv
  export FACTS=$WORK/facts.env START_EPOCH=$(date +%s)
  export PYTHON=${PYTHON:-python3}
fi

# ---------------------------------------------------------------------------------------------------------
# Helpers shared by the steps.
log() { printf '[check %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
fact() { printf '%s=%q\n' "$1" "$2" >>"$FACTS"; }   # key=value facts for the summary (sourced later)
note() { printf '%s\n' "$*" >>"$LOGS/$INTERNAL_STEP.notes"; }  # one line per sub-check for the summary
remaining() {  # seconds left to this step (its limit) and to the whole run, whichever is less
  local now; now=$(date +%s)
  local run=$(( BUDGET - (now - START_EPOCH) )) step=$(( ${STEP_END:-0} - now ))
  [[ -n "${STEP_END:-}" ]] && (( step < run )) && run=$step
  echo "$run"
}
have() { command -v "$1" >/dev/null 2>&1; }

# The environment every build and run step uses: the prefix's tools and libraries, OpenMPI relocated to it.
setup_env() {
  [[ -f "$FACTS" ]] && source "$FACTS"
  export PATH="$BINDIR:$PATH"
  export LD_LIBRARY_PATH="$LIBDIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export OPAL_PREFIX="$PREFIX/usr" OPAL_SYSCONFDIR="$PREFIX/etc/openmpi"
  export PMIX_MCA_mca_base_component_path="$PREFIX/usr/lib/x86_64-linux-gnu/pmix2/lib/pmix"
  export OMPI_MCA_mca_base_component_show_load_errors=0 OMPI_MCA_btl_base_warn_component_unused=0
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
  export PKG_CONFIG_LIBDIR="$PREFIX/usr/lib/x86_64-linux-gnu/pkgconfig:$PREFIX/usr/share/pkgconfig" PKG_CONFIG_PATH=
  export OMP_WAIT_POLICY=PASSIVE TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
  export TMPDIR=${TMPDIR:-/tmp}
}

# The GPU steps cannot run in a dry run (or without a GPU): they report SKIP with the reason.
need_gpu() {
  [[ "${CM_GPU_ALLOW_CPU:-}" == 1 ]] && return 0   # tests of the step logic on a CPU machine (slow, tiny batches)
  if [[ "$DRY" == 1 ]]; then note "SKIP dry run: needs a GPU"; exit 3; fi
  if [[ "${GPU_COUNT:-0}" == 0 ]]; then note "SKIP no GPU visible"; exit 3; fi
}

cm_bin() { echo "${CM_GPU_CM:-$BUILD/cm}"; }  # CM_GPU_CM: an already built cm (dry runs)

# ---------------------------------------------------------------------------------------------------------
# Steps. Each runs in its own process (under timeout); exit 0 = PASS, 3 = SKIP, anything else = FAIL. Lines
# written with `note` appear under the step in the summary.

step_env() {
  fact HOSTNAME "$(hostname 2>/dev/null || echo unknown)"
  fact CORES "$(nproc 2>/dev/null || echo '?')"
  local gpu="" driver="" count=0
  if have nvidia-smi; then
    gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
    driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1)
    count=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  fi
  fact GPU_NAME "$gpu"; fact GPU_DRIVER "$driver"; fact GPU_COUNT "$count"
  note "GPU: ${gpu:-none} x $count, driver ${driver:-none}"
  local py
  py=$("$PYTHON" - <<'EOF' 2>&1
import os, sys
try:
    import torch
except Exception as e:
    print("TORCH_ERROR=%r" % str(e)); sys.exit(0)
print("TORCH_VERSION=%s" % torch.__version__)
print("TORCH_CUDA=%s" % (torch.version.cuda or ""))
print("TORCH_ABI=%d" % int(torch._C._GLIBCXX_USE_CXX11_ABI))
print("TORCH_CMAKE_PY=%s" % torch.utils.cmake_prefix_path)
print("TORCH_CUDA_AVAILABLE=%d" % int(torch.cuda.is_available()))
print("TORCH_SITE=%s" % os.path.dirname(os.path.dirname(torch.__file__)))
try:
    import nvidia
    print("NVIDIA_PATHS=%s" % ":".join(list(nvidia.__path__)))
except Exception:
    print("NVIDIA_PATHS=")
EOF
)
  echo "$py"
  local line
  while IFS= read -r line; do [[ "$line" == *=* ]] && fact "${line%%=*}" "${line#*=}"; done <<<"$py"
  source "$FACTS"
  [[ -n "${TORCH_ERROR:-}" ]] && note "python3 cannot import torch: $TORCH_ERROR"
  note "torch ${TORCH_VERSION:-none}, CUDA ${TORCH_CUDA:-none}, C++11 ABI ${TORCH_ABI:-?}, cuda available ${TORCH_CUDA_AVAILABLE:-0}"
  local nvcc_v="" cxx_v cmake_v ninja_v
  have nvcc && nvcc_v=$(nvcc --version | tail -2 | head -1)
  [[ -z "$nvcc_v" && -x /usr/local/cuda/bin/nvcc ]] && nvcc_v="$(/usr/local/cuda/bin/nvcc --version | tail -2 | head -1) (/usr/local/cuda/bin)"
  cxx_v=$(${CXX:-c++} --version 2>/dev/null | head -1); cmake_v=$(cmake --version 2>/dev/null | head -1)
  ninja_v=$(ninja --version 2>/dev/null)
  fact NVCC_VERSION "$nvcc_v"; fact CXX_VERSION "$cxx_v"
  note "nvcc: ${nvcc_v:-none}; c++: ${cxx_v:-none}; ${cmake_v:-no cmake}; ninja ${ninja_v:-none}; $(nproc) cores"
  local bad=0
  have cmake || { note "FAIL cmake not found"; bad=1; }
  have ninja || { note "FAIL ninja not found"; bad=1; }
  have "${CXX:-c++}" || { note "FAIL no C++ compiler (c++ or \$CXX)"; bad=1; }
  if [[ "$DRY" != 1 ]]; then
    [[ "$count" -gt 0 ]] || { note "FAIL nvidia-smi shows no GPU"; bad=1; }
    [[ -n "${TORCH_CUDA:-}" && "${TORCH_CUDA_AVAILABLE:-0}" == 1 ]] || { note "FAIL torch has no usable CUDA"; bad=1; }
    [[ -n "$nvcc_v" ]] || { note "FAIL nvcc not found (PATH or /usr/local/cuda/bin)"; bad=1; }
  fi
  return $bad
}

# Unpacks one .deb into $PREFIX: dpkg-deb when there is one, else ar + tar.
unpack_deb() {
  local deb=$1
  if have dpkg-deb; then dpkg-deb -x "$deb" "$PREFIX" && return 0; fi
  local t; t=$(mktemp -d)
  (cd "$t" && ar x "$deb") || { rm -rf "$t"; return 1; }
  local data; data=$(ls "$t"/data.tar.* 2>/dev/null | head -1)
  [[ -n "$data" ]] && tar -xf "$data" -C "$PREFIX"; local rc=$?
  rm -rf "$t"; return $rc
}

step_unpack() {
  local debs="$CARRY/debs"
  local n; n=$(ls "$debs"/*.deb 2>/dev/null | wc -l)
  [[ "$n" -gt 0 ]] || { note "FAIL no .deb files in $debs: run launch/gpu/prepare.sh where apt works, then carry $CARRY"; return 1; }
  rm -rf "$PREFIX" "$LIBDIR" "$BINDIR"; mkdir -p "$PREFIX" "$LIBDIR" "$BINDIR"
  local f bad=0
  for f in "$debs"/*.deb; do unpack_deb "$f" || { note "FAIL cannot unpack $(basename "$f")"; bad=1; }; done
  [[ $bad == 0 ]] || return 1
  note "unpacked $n packages ($(du -sh "$debs" | cut -f1) of .debs, $(du -sh "$PREFIX" | cut -f1) unpacked) into $PREFIX"
  # What Debian's postinst scripts would have made: the update-alternatives links of OpenMPI.
  local u=$PREFIX/usr/bin
  for pair in mpicc:mpicc.openmpi mpicxx:mpicxx.openmpi mpirun:mpirun.openmpi mpiexec:mpiexec.openmpi \
              orted:orted ompi_info:ompi_info; do
    [[ -e "$u/${pair#*:}" ]] && ln -sf "$u/${pair#*:}" "$BINDIR/${pair%%:*}"
  done
  # Absolute symlinks (zlib1g-dev's libz.so -> /lib/...) must point into the prefix, not at the machine's files.
  local l target
  while IFS= read -r l; do
    target=$(readlink "$l")
    [[ -e "$PREFIX$target" || -L "$PREFIX$target" ]] && ln -sfn "$PREFIX$target" "$l"
  done < <(find "$PREFIX" -type l -lname '/*')
  # pkg-config files name /usr: point them at the prefix (pkg-config then sees only the prefix's, see setup_env).
  local pc
  for pc in "$PREFIX"/usr/lib/x86_64-linux-gnu/pkgconfig/*.pc "$PREFIX"/usr/share/pkgconfig/*.pc; do
    [[ -f "$pc" ]] && sed -i -E "s#^([A-Za-z_]+)=/usr(/|\$)#\1=$PREFIX/usr\2#" "$pc"
  done
  [[ -x "$PREFIX/usr/bin/pkgconf" ]] && ln -sf "$PREFIX/usr/bin/pkgconf" "$BINDIR/pkg-config"
  # The library path: carried libraries whose soname this machine lacks (all of them with CM_GPU_CARRIED_LIBS=all).
  local cache; cache=$( (ldconfig -p 2>/dev/null || /sbin/ldconfig -p 2>/dev/null) | awk '{print $1}' | sort -u)
  local lib name added=0 kept=0
  while IFS= read -r lib; do
    name=$(basename "$lib")
    if [[ "${CM_GPU_CARRIED_LIBS:-}" != all ]] && grep -qxF "$name" <<<"$cache"; then kept=$((kept + 1)); continue; fi
    ln -sf "$lib" "$LIBDIR/$name"; added=$((added + 1))
  done < <(find "$PREFIX/usr/lib/x86_64-linux-gnu" "$PREFIX/lib/x86_64-linux-gnu" -maxdepth 1 -name 'lib*.so.*' 2>/dev/null |
           grep -E '\.so\.[0-9]+$' | sort)
  note "library path $LIBDIR: $added carried sonames this machine lacks; $kept it has (its own copy is used)"
  # Fixtures (tests read $ROOT/../shared) and the reference code.
  local shared="$ROOT/../shared"
  if [[ -d "$shared/fixtures/reference-nets" ]]; then
    note "fixtures: $shared"
  elif [[ -d "$CARRY/shared/fixtures/reference-nets" ]]; then
    if [[ ! -e "$shared" ]] && ln -s "$CARRY/shared" "$shared" 2>/dev/null; then
      note "fixtures: linked $shared -> $CARRY/shared"
    else
      note "fixtures: cannot make $shared (exists or not writable); the fixture tests will fail"
    fi
  else
    note "fixtures: none carried ($CARRY/shared); the fixture tests will fail"
  fi
  [[ -d "$CARRY/consistency_models/cm" ]] && note "reference code: $CARRY/consistency_models" ||
    note "reference code: not carried ($CARRY/consistency_models/cm); the reference step will be skipped"
  # A smoke test of the relocated OpenMPI wrapper: its include path must be the prefix's.
  if [[ -x "$BINDIR/mpicc" ]]; then
    setup_env
    local show; show=$("$BINDIR/mpicc" -showme:compile 2>&1)
    [[ "$show" == *"$PREFIX"* ]] || { note "FAIL mpicc -showme does not point into the prefix: $show"; return 1; }
  else
    note "FAIL no mpicc.openmpi in the carried packages"; return 1
  fi
}

# The LibTorch to build against: $CM_GPU_TORCH_CMAKE, else python's torch (GPU runs); in a dry run the pip
# one if it has CUDA-free cmake files, else Debian's libtorch-dev.
torch_cmake_dir() {
  if [[ -n "${CM_GPU_TORCH_CMAKE:-}" ]]; then echo "$CM_GPU_TORCH_CMAKE"; return; fi
  if [[ -n "${TORCH_CMAKE_PY:-}" && -d "${TORCH_CMAKE_PY}/Torch" ]]; then echo "$TORCH_CMAKE_PY"; return; fi
  [[ "$DRY" == 1 && -d /usr/lib/x86_64-linux-gnu/cmake/Torch ]] && echo /usr/lib/x86_64-linux-gnu/cmake
}

# NCCL: the one pip's torch loads (nvidia-nccl-cu12/cu13 wheels), else the system's.
find_nccl() {
  local d inc="" lib=""
  local IFS=:
  for d in ${NVIDIA_PATHS:-}; do
    [[ -z "$inc" ]] && inc=$(find "$d" -name nccl.h -path '*nccl*' 2>/dev/null | head -1)
    [[ -z "$lib" ]] && lib=$(find "$d" -name 'libnccl.so*' 2>/dev/null | sort | head -1)
  done
  unset IFS
  for d in /usr/include /usr/local/cuda/include; do [[ -z "$inc" && -f $d/nccl.h ]] && inc=$d/nccl.h; done
  for d in /usr/lib/x86_64-linux-gnu /usr/local/cuda/lib64; do
    [[ -z "$lib" ]] && lib=$(ls $d/libnccl.so* 2>/dev/null | head -1)
  done
  echo "${inc:+$(dirname "$inc")}|$lib"
}

step_configure() {
  setup_env
  local torch; torch=$(torch_cmake_dir)
  [[ -n "$torch" ]] || { note "FAIL no LibTorch cmake files (torch.utils.cmake_prefix_path or CM_GPU_TORCH_CMAKE)"; return 1; }
  if [[ "${TORCH_ABI:-1}" == 0 && "$DRY" != 1 ]]; then
    note "FAIL torch was built with the pre-C++11 ABI (_GLIBCXX_USE_CXX11_ABI=0): Debian's compiled C++ libraries (fmt,"
    note "     toml++, gtest) use the C++11 ABI and cannot be linked with it. Use a torch built with the C++11 ABI (pip"
    note "     wheels since 2.7 are), or build fmt, toml++ and googletest from source with -D_GLIBCXX_USE_CXX11_ABI=0."
    return 1
  fi
  local args=(-S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
              "-DCMAKE_PREFIX_PATH=$PREFIX/usr;$torch"   # the prefix first: a system LibTorch's folder holds fmt too
              "-DMPI_C_COMPILER=$BINDIR/mpicc" "-DMPIEXEC_EXECUTABLE=$BINDIR/mpiexec" "-DPKG_CONFIG_EXECUTABLE=$BINDIR/pkg-config"
              "-DHDF5_ROOT=$PREFIX/usr/lib/x86_64-linux-gnu/hdf5/serial"
              # The multiarch headers of the packages (jconfig.h, zipconf.h, openssl/opensslconf.h), which a
              # compiler finds in /usr/include/x86_64-linux-gnu only for packages installed into /.
              "-DCMAKE_C_FLAGS=-isystem $PREFIX/usr/include/x86_64-linux-gnu"
              "-DCMAKE_CXX_FLAGS=-isystem $PREFIX/usr/include/x86_64-linux-gnu")
  grep -q 'CM_SHARED_DIR.*CACHE' "$ROOT/tests/CMakeLists.txt" 2>/dev/null && [[ -d "$CARRY/shared/fixtures" ]] &&
    args+=("-DCM_SHARED_DIR=$CARRY/shared")
  if [[ "$DRY" == 1 ]]; then
    args+=(-DCM_WITH_CUDA=OFF -DCM_CUDA_COMPILE_CHECK=OFF)
  else
    local nccl inc lib nvcc
    nccl=$(find_nccl); inc=${nccl%%|*}; lib=${nccl#*|}
    [[ -n "$inc" && -n "$lib" ]] || { note "FAIL NCCL not found (nccl.h: ${inc:-none}, libnccl: ${lib:-none})"; return 1; }
    note "NCCL: $inc, $lib"
    nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
    args+=(-DCM_WITH_CUDA=ON -DCM_WITH_NCCL=ON "-DNCCL_INCLUDE_DIR=$inc" "-DNCCL_LIBRARY=$lib"
           "-DCMAKE_CUDA_COMPILER=$nvcc" "-DCUDAToolkit_ROOT=$(dirname "$(dirname "$nvcc")")"
           "-DCMAKE_CUDA_ARCHITECTURES=90")
  fi
  note "LibTorch: $torch"
  echo "cmake ${args[*]}"
  rm -f "$BUILD/CMakeCache.txt"
  cmake "${args[@]}" || { note "FAIL cmake configure (see logs/configure.log)"; return 1; }
  # Every dependency must come from the prefix (or LibTorch), never from a system copy that may differ.
  local c="$BUILD/CMakeCache.txt" key val bad=0
  for key in MPI_C_HEADER_DIR HDF5_C_INCLUDE_DIR fmt_DIR tomlplusplus_DIR GTest_DIR PNG_PNG_INCLUDE_DIR \
             JPEG_INCLUDE_DIR ZLIB_INCLUDE_DIR CM_WEBP_LIBRARY CM_LMDB_LIBRARY CM_XXHASH_LIBRARY MPIEXEC_EXECUTABLE \
             OPENSSL_CRYPTO_LIBRARY OPENSSL_INCLUDE_DIR nlohmann_json_DIR pkgcfg_lib_CM_LIBZIP_zip HDF5_hdf5_LIBRARY_RELEASE \
             MPI_mpi_LIBRARY; do
    val=$(grep -E "^$key:[A-Z]+=" "$c" | head -1 | cut -d= -f2-)
    if [[ -z "$val" ]]; then continue; fi
    if [[ "$val" != "$PREFIX"* && "$val" != "$BINDIR"* ]]; then note "FAIL $key = $val (not from $PREFIX)"; bad=1; fi
  done
  local cuda nccl_on
  cuda=$(grep -E '^CM_WITH_CUDA:' "$c" | cut -d= -f2); nccl_on=$(grep -E '^CM_WITH_NCCL:' "$c" | cut -d= -f2)
  note "configured: CUDA $cuda, NCCL $nccl_on, dependencies from the prefix: $([[ $bad == 0 ]] && echo yes || echo NO)"
  if [[ "$DRY" != 1 && ( "$cuda" != ON || "$nccl_on" != ON ) ]]; then note "FAIL CUDA/NCCL not enabled"; bad=1; fi
  return $bad
}

# The test executables that are run, in this order, with their gtest filters ("*" = all). Device "auto" puts
# every Trainer, cm train/sample/eval/bench of these on the GPU. Left out: the tests that start 2 or 3 ranks
# under mpirun (on a 1-GPU machine "auto" gives each rank a GPU, and there is one), and test_bench_step
# (the bench step runs cm bench step itself).
TESTS=(
  "test_gpu_script:Cuda*:GpuScript.UnpackLibraryPathAndFailureReport"   # the dry run itself is tested on CPU
  "test_networks:*"
  "test_quality_toy:ToyQuality.CdFromExactTeacher:ToyQuality.ConsistencyTraining"
  "test_checkpoint:Checkpoint.ExactResumeIsBitwise:Checkpoint.ExactResumeWithTheHdf5LoaderCursor:Checkpoint.Sigusr1*"
  "test_sampling:*-Sampling.SameSamplesForAnyBatchAndWorldSize"
  "test_eval:*-EvalCmd.ShardedOverRanksAgreesWithOneProcess"
  "test_precision:*-Precision_.AnInfOnOneRankIsSkippedByBothRanksAndChangesNothing"
  "test_loader:*"
)
build_targets() {
  local t out="cm"
  for t in "${TESTS[@]}"; do
    local name=${t%%:*}
    [[ -f "$ROOT/tests/$name.cpp" ]] && out="$out $name"
  done
  echo "$out"
}

step_build() {
  setup_env
  [[ -f "$BUILD/build.ninja" ]] || { note "FAIL not configured ($BUILD/build.ninja missing)"; return 1; }
  local targets; targets=$(build_targets)
  [[ -n "${CM_GPU_BUILD_TARGETS:-}" ]] && targets=$CM_GPU_BUILD_TARGETS
  note "targets: $targets (-j$JOBS)"
  local t0=$(date +%s)
  # shellcheck disable=SC2086
  ninja -C "$BUILD" -j "$JOBS" $targets || { note "FAIL ninja (see logs/build.log)"; return 1; }
  note "built in $(( $(date +%s) - t0 )) s"
  # Headers and libraries of carried packages must come from the prefix: a system copy that the build used
  # instead (a header in the compiler's depfiles, an unversioned .so or .a on a link line) is reported.
  local used=""
  used=$( (find "$BUILD" -name '*.o.d' -exec cat {} + 2>/dev/null | tr ' \\' '\n\n' | grep -E '^/usr/include/' ;
           grep -oE '(^| )/usr/lib/x86_64-linux-gnu/lib[A-Za-z0-9_+-]*\.(so|a)( |$)' "$BUILD/build.ninja" | tr -d ' ') |
          sort -u | while IFS= read -r f; do [[ -e "$PREFIX$f" ]] && echo "$f"; done | head -20)
  if [[ -n "$used" ]]; then
    note "$([[ "$DRY" == 1 ]] && echo FAIL || echo WARN) system copies of carried files were used: $(tr '\n' ' ' <<<"$used")"
    [[ "$DRY" == 1 ]] && return 1
  else
    note "no system copy of a carried header or library was used"
  fi
  if [[ -x "$BUILD/cm-main" ]]; then
    local missing; missing=$(ldd "$BUILD/cm-main" 2>/dev/null | grep 'not found' || true)
    [[ -z "$missing" ]] || { note "FAIL cm-main has unresolved libraries: $missing"; return 1; }
    ldd "$BUILD/cm-main" | grep -E 'mpi|hdf5|nccl|torch_cuda|c10_cuda|cudart' | sed 's/^[[:space:]]*/ldd: /'
  fi
}

step_mpi() {
  setup_env
  local mpicc="$BINDIR/mpicc" t="$WORK/mpi_hello"
  cat >"$t.c" <<'EOF'
#include <mpi.h>
#include <stdio.h>
int main(void) {
  int provided = 0, rank = 0, size = 0;
  MPI_Init_thread(NULL, NULL, MPI_THREAD_MULTIPLE, &provided);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  int one = 1, sum = 0;
  MPI_Allreduce(&one, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  printf("rank %d/%d thread level %d sum %d\n", rank, size, provided, sum);
  MPI_Finalize();
  return sum == size ? 0 : 1;
}
EOF
  "$mpicc" "$t.c" -o "$t" || { note "FAIL mpicc could not build a hello program"; return 1; }
  local out1 out2
  out1=$(timeout 60 "$t" 2>&1) || { note "FAIL singleton MPI start: $out1"; return 1; }
  out2=$(timeout 60 "$BINDIR/mpirun" -n 2 --bind-to none "$t" 2>&1) || { note "FAIL mpirun -n 2: $out2"; return 1; }
  echo "$out1"; echo "$out2"
  [[ "$out2" == *"rank 1/2"* ]] || { note "FAIL mpirun -n 2 did not start 2 ranks"; return 1; }
  note "singleton and mpirun -n 2 run (thread level $(sed -n 's/.*thread level \([0-9]\).*/\1/p' <<<"$out1"))"
}

step_tests() {
  need_gpu
  setup_env
  local t bad=0 ran=0
  for t in "${TESTS[@]}"; do
    local name=${t%%:*} filter=${t#*:}
    local exe="$BUILD/tests/$name"
    if [[ ! -x "$exe" ]]; then note "SKIP $name: not built"; continue; fi
    local left; left=$(remaining)
    if (( left < 25 )); then note "SKIP $name: out of time"; continue; fi
    local limit=$(( left - 10 < 240 ? left - 10 : 240 ))
    local log="$LOGS/tests-$name.log" json="$WORK/tests-$name.json" t0=$(date +%s)
    timeout -k 10 "$limit" "$exe" --gtest_filter="$filter" --gtest_output="json:$json" >"$log" 2>&1
    local rc=$? secs=$(( $(date +%s) - t0 )) summary
    summary=$(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$log" | tr '\n' ' ')
    ran=$((ran + 1))
    if [[ $rc == 0 ]]; then
      note "PASS $name ($secs s): $summary"
    else
      bad=1
      [[ $rc == 124 || $rc == 137 ]] && summary="timed out after $limit s; $summary"
      note "FAIL $name (rc $rc, $secs s): $summary $(grep -E '^\[  FAILED  \] [A-Za-z]' "$log" | sed 's/.*\] //' | sort -u | tr '\n' ' ')"
    fi
  done
  [[ $ran -gt 0 ]] || { note "FAIL no test executable was run"; return 1; }
  return $bad
}

step_nccl() {
  need_gpu
  setup_env
  local out
  out=$(timeout -k 5 120 "$(cm_bin)" bench allreduce --device cuda --params 56e6 --bucket-mb 25 --iters 5 2>&1)
  local rc=$?
  echo "$out"
  [[ $rc == 0 && "$out" == *"backend nccl"* && "$out" == *"verified"* ]] || { note "FAIL cm bench allreduce --device cuda (rc $rc)"; return 1; }
  local hides; hides=$(sed -n 's/.*hides \([-0-9.]*\) %.*/\1/p' <<<"$out" | head -1)
  fact OVERLAP_PERCENT "${hides:-0}"
  note "NCCL all-reduce, buckets and overlap verified on 1 rank; overlap hides ${hides:-?} % of the bucketed time"
}

# One `cm bench step` run; appends its JSON line to bench.jsonl.
bench_one() {
  local recipe=$1 precision=$2; shift 2
  local tag=${BENCH_TAG:-}  # a variant's suffix for its files (e.g. -nchw)
  local json="$WORK/bench-$recipe-$precision$tag.json" t0=$(date +%s)
  local left; left=$(remaining)
  if (( left < 25 )); then note "SKIP $recipe $precision: out of time"; return 3; fi
  local limit=$(( left - 5 < 150 ? left - 5 : 150 ))
  timeout -k 5 "$limit" "$(cm_bin)" bench step "$recipe" "train.precision=$precision" "$@" --synthetic \
    --steps "${CM_GPU_BENCH_STEPS:-5}" --warmup "${CM_GPU_BENCH_WARMUP:-2}" --json "$json" >"$LOGS/bench-$recipe-$precision$tag.log" 2>&1
  local rc=$?
  if [[ $rc != 0 || ! -s "$json" ]]; then
    note "FAIL $recipe$tag $precision (rc $rc): $(tail -2 "$LOGS/bench-$recipe-$precision$tag.log" | tr '\n' ' ')"; return 1
  fi
  cat "$json" >>"$OUTDIR/bench.jsonl"
  note "PASS $recipe$tag $precision ($(( $(date +%s) - t0 )) s): $("$PYTHON" -c '
import json,sys; j=json.load(open(sys.argv[1]))
f = j["peak_fraction"]; m = j["peak_memory_gb"]
print("%.1f images/s, %.1f TFLOP/s, %s of the dense peak, %s peak memory, step %.4f s" % (j["images_per_s_rank"], j["tflops_rank"],
      "%.1f %%" % (100 * f) if f >= 0 else "? %", "%.2f GB" % m if m >= 0 else "? GB", j["step_s"]))' "$json" 2>/dev/null)"
}

# One run of the reference's CT step (ref_step.py), beside cm's imagenet64_ct at the same precision.
reference_one() {
  local precision=$1 batch=$2
  [[ -d "$CARRY/consistency_models/cm" ]] || { note "SKIP reference $precision: the reference code was not carried ($CARRY/consistency_models)"; return 3; }
  local left; left=$(remaining)
  if (( left < 25 )); then note "SKIP reference $precision: out of time"; return 3; fi
  local json="$WORK/reference-$precision.json" log="$LOGS/reference-$precision.log" t0=$(date +%s)
  timeout -k 5 $(( left - 5 < 150 ? left - 5 : 150 )) "$PYTHON" "$here/ref_step.py" --reference "$CARRY/consistency_models" \
    --precision "$precision" --batch "$batch" --steps "${CM_GPU_BENCH_STEPS:-5}" --warmup "${CM_GPU_BENCH_WARMUP:-2}" \
    --json "$json" ${CM_GPU_REF_ARGS:-} >"$log" 2>&1
  local rc=$?
  if [[ $rc != 0 || ! -s "$json" ]]; then note "FAIL reference $precision (rc $rc): $(tail -2 "$log" | tr '\n' ' ')"; return 1; fi
  cat "$json" >>"$OUTDIR/bench.jsonl"
  note "PASS reference $precision ($(( $(date +%s) - t0 )) s): $("$PYTHON" "$here/summary.py" --compare "$json" "$WORK/bench-imagenet64_ct-$precision.json")"
}

# The benchmarks, most important first, each within what is left of the step's time (the rest is SKIP):
# the NCSN++ target (cifar10_ct bf16), the reference comparison in its precision (fp16), then the others.
step_bench() {
  need_gpu
  setup_env
  local bad=0 job kind a b p rc
  local bc=${CM_GPU_BATCH_CIFAR:-64} bi=${CM_GPU_BATCH_IMAGENET:-32}
  local precisions=${CM_GPU_PRECISIONS:-bf16 fp16 tf32 fp32}
  local teacher="$WORK/random_teacher_adm_imagenet64.safetensors"
  "$PYTHON" -c 'import safetensors' 2>/dev/null || teacher="$WORK/random_teacher_adm_imagenet64.pt"  # torch.save then
  rm -f "$OUTDIR/bench.jsonl"
  local jobs=(
    "cm cifar10_ct bf16" "cm imagenet64_ct fp16" "ref fp16" "cm imagenet64_cd_lpips bf16" "cm cifar10_ct fp16"
    "cm cifar10_ct tf32" "cm cifar10_ct fp32" "cm imagenet64_cd_lpips fp16" "cm imagenet64_ct fp32" "ref fp32"
    "cm imagenet64_cd_lpips tf32" "cm imagenet64_cd_lpips fp32" "cm cifar10_ct_nchw bf16"
  )
  [[ -n "${CM_GPU_BENCH_JOBS:-}" ]] && IFS=, read -r -a jobs <<<"$CM_GPU_BENCH_JOBS"   # e.g. "cm cifar10_ct bf16,ref fp16"
  for job in "${jobs[@]}"; do
    read -r kind a b <<<"$job"
    p=${b:-$a}
    [[ " $precisions " == *" $p "* ]] || continue
    rc=0
    if [[ $kind == ref ]]; then
      reference_one "$a" "$bi" || rc=$?
    elif [[ $a == cifar10_ct ]]; then
      bench_one cifar10_ct "$b" "train.batch=$bc" || rc=$?
    elif [[ $a == cifar10_ct_nchw ]]; then  # the same without channels_last (auto: on for CUDA), for its effect
      BENCH_TAG=-nchw bench_one cifar10_ct "$b" "train.batch=$bc" train.channels_last=off || rc=$?
    elif [[ $a == imagenet64_ct ]]; then
      bench_one imagenet64_ct "$b" "train.batch=$bi" 'method.init_from=""' || rc=$?
    else
      # The CD recipe needs a teacher: random weights of the ADM (the timing does not depend on their values).
      if [[ ! -s "$teacher" ]]; then
        timeout 120 "$PYTHON" "$here/ref_step.py" --reference "$CARRY/consistency_models" --write-teacher "$teacher" \
          >>"$LOGS/bench-teacher.log" 2>&1 || { note "SKIP $a $b: no random teacher (logs/bench-teacher.log)"; continue; }
      fi
      bench_one imagenet64_cd_lpips "$b" "train.batch=$bi" "method.teacher=$teacher" || rc=$?
    fi
    [[ $rc == 0 || $rc == 3 ]] || bad=1
  done
  return $bad
}

step_scaling() {
  setup_env
  local overlap=$(awk -v h="${OVERLAP_PERCENT:-0}" 'BEGIN { h /= 100; if (h < 0) h = 0; if (h > 1) h = 1; print h }')
  local recipe json bad=0 ran=0
  for recipe in cifar10_ct imagenet64_cd_lpips; do
    local prec=bf16 made_up=""
    json="$WORK/bench-$recipe-$prec.json"
    if [[ ! -s "$json" ]]; then
      made_up=" (dry run: made-up step time)"
      if [[ "$DRY" == 1 && -x "$(cm_bin)" ]]; then
        # Dry run: a made-up step time, to exercise the command and the summary (not a measurement).
        printf '{"step_s": 0.05, "batch_per_rank": 64}\n' >"$WORK/dry-$recipe.json"; json="$WORK/dry-$recipe.json"
      else
        note "SKIP $recipe: no bf16 measurement"; continue
      fi
    fi
    ran=$((ran + 1))
    local out
    out=$(timeout 120 "$(cm_bin)" plan "$recipe" --scaling --bench-json "$json" --overlap "$overlap" --gpus-per-node 8 \
          --nodes 8 --json "$WORK/scaling-$recipe.json" 2>&1)
    local rc=$?
    echo "$out"
    if [[ $rc != 0 ]]; then note "FAIL cm plan $recipe --scaling (rc $rc): $(tail -1 <<<"$out")"; bad=1; continue; fi
    note "$recipe: $(grep -E '^ +8 +64 ' <<<"$out" | awk '{print "64 GPUs: step " $6 " ms, efficiency " $7 " [target >= 90 %]"}')$made_up"
  done
  [[ $ran -gt 0 ]] || { note "SKIP nothing measured to project"; exit 3; }
  return $bad
}

# ---------------------------------------------------------------------------------------------------------
# Internal re-entry: run one step (the parent applies the timeout).
if [[ -n "$INTERNAL_STEP" ]]; then
  [[ -f "$FACTS" ]] && source "$FACTS"
  if [[ "$FAIL_STEP" == "$INTERNAL_STEP" ]]; then note "FAIL injected by --fail $INTERNAL_STEP"; exit 1; fi
  "step_$INTERNAL_STEP"
  exit $?
fi

# ---------------------------------------------------------------------------------------------------------
# The driver: each step with its time limit, then the summary.
# Limits sized for one H200 machine of 16 cores inside a 10-minute call (README.md: the expected times).
declare -A LIMIT=([env]=60 [unpack]=60 [configure]=150 [build]=300 [mpi]=60 [nccl]=60 [tests]=160 [bench]=260
                  [scaling]=60)
declare -A DEPENDS=([configure]=unpack [build]=configure [mpi]=unpack [tests]=build [nccl]=build [bench]=build
                    [scaling]=build)
rm -rf "$LOGS" "$RESULTS" "$FACTS"; mkdir -p "$LOGS" "$OUTDIR"; : >"$RESULTS"; : >"$FACTS"
rm -f "$WORK"/scaling-*.json "$WORK"/dry-*.json   # nothing of an earlier run is reported as this one's
[[ " $STEPS " == *" bench "* ]] && rm -f "$WORK"/bench-*.json "$WORK"/reference-*.json "$OUTDIR/bench.jsonl"
log "root $ROOT, work $WORK, summary in $OUTDIR, budget ${BUDGET} s, $( [[ $DRY == 1 ]] && echo 'DRY RUN (CPU)' || echo GPU)"
declare -A STATUS
overall=0
for s in $ALL_STEPS; do
  [[ " $STEPS " == *" $s "* ]] || continue
  [[ " $SKIP " == *" $s "* ]] && { STATUS[$s]=SKIP; printf '%s\tSKIP\t0\tskipped by --skip\n' "$s" >>"$RESULTS"; continue; }
  dep=${DEPENDS[$s]:-}
  if [[ -n "$dep" && " $STEPS " == *" $dep "* && "${STATUS[$dep]:-}" =~ ^(FAIL|SKIP)$ ]]; then
    why="$dep $([[ ${STATUS[$dep]} == FAIL ]] && echo failed || echo skipped)"
    STATUS[$s]=SKIP; printf '%s\tSKIP\t0\t%s\n' "$s" "$why" >>"$RESULTS"; log "$s: SKIP ($why)"; continue
  fi
  left=$(remaining)
  limit=${LIMIT[$s]}
  override="CM_GPU_LIMIT_$s"; [[ -n "${!override:-}" ]] && limit=${!override}   # e.g. CM_GPU_LIMIT_build=1800
  (( limit > left - 5 )) && limit=$(( left - 5 ))
  if (( limit < 10 )); then
    STATUS[$s]=SKIP; printf '%s\tSKIP\t0\tout of time (budget %s s)\n' "$s" "$BUDGET" >>"$RESULTS"; log "$s: SKIP (out of time)"; continue
  fi
  log "$s: start (limit $limit s)"
  t0=$(date +%s)
  STEP_END=$(( t0 + limit - 5 )) timeout -k 10 "$limit" bash "${BASH_SOURCE[0]}" --step "$s" >"$LOGS/$s.log" 2>&1
  rc=$?
  secs=$(( $(date +%s) - t0 ))
  case $rc in
    0) st=PASS; why="" ;;
    3) st=SKIP; why=$(grep -m1 '^SKIP' "$LOGS/$s.notes" 2>/dev/null | sed 's/^SKIP //') ;;
    124|137) st=FAIL; why="timed out after $limit s" ;;
    *) st=FAIL; why="exit code $rc" ;;
  esac
  [[ $st == FAIL ]] && overall=1
  STATUS[$s]=$st
  printf '%s\t%s\t%s\t%s\n' "$s" "$st" "$secs" "$why" >>"$RESULTS"
  log "$s: $st ($secs s)${why:+ - $why}"
  [[ -f "$LOGS/$s.notes" ]] && sed 's/^/    /' "$LOGS/$s.notes"
done

"$PYTHON" "$here/summary.py" --results "$RESULTS" --facts "$FACTS" --logs "$LOGS" --out "$OUTDIR" --work "$WORK" \
  --dry-run "$DRY" --elapsed $(( $(date +%s) - START_EPOCH )) --budget "$BUDGET" || {
  echo "check.sh: summary.py failed; results:" >&2; cat "$RESULTS" >&2; overall=1; }
cp "$RESULTS" "$OUTDIR/results.tsv"
for f in "$WORK"/scaling-*.json; do [[ -f "$f" ]] && cat "$f"; done >"$OUTDIR/scaling.json" 2>/dev/null
[[ -s "$OUTDIR/scaling.json" ]] || rm -f "$OUTDIR/scaling.json"
tar -czf "$OUTDIR/logs.tar.gz" -C "$WORK" logs 2>/dev/null
log "summary: $OUTDIR/summary.md ($(grep -c PASS "$RESULTS") passed, $(grep -c FAIL "$RESULTS") failed, $(grep -c SKIP "$RESULTS") skipped)"
exit $overall
