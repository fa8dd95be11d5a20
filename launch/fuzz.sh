#!/usr/bin/env bash
# Builds the fuzz targets of tests/fuzz (clang, libFuzzer + ASan + UBSan) into $CM_BUILD_DIR/fuzz (default
# build/fuzz), replays every regression input (tests/fuzz/regressions/ and the crash files make_inputs.py
# writes), then fuzzes each target in turn from its seed corpus, one process at a time.
#   launch/fuzz.sh [--seconds N] [--runs N] [--targets "fuzz_json fuzz_tar"] [--no-build] [--jobs J]
# --seconds: time per target (default 10); --runs: stop a target after N executions (0 = no limit; the
# first of the two limits ends it). Prints executions, seconds, exec/s and the result per target; exits 1
# on any crash, hang (> 30 s on one input), leak, out-of-memory (> 2 GB) or sanitizer report, 2 when clang
# or libFuzzer is missing (Debian: apt-get install clang libclang-rt-14-dev).
# CM_BUILD_LOCK=FILE: take that flock around the build (shared build machines).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=10 runs=0 targets="" build=1 jobs=2
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) secs="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    --targets) targets="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    --jobs) jobs="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "fuzz.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
dir="${CM_BUILD_DIR:-build}/fuzz"
if ! command -v clang++ >/dev/null || ! ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1; then
  echo "fuzz.sh: clang++ or libFuzzer missing: apt-get install clang libclang-rt-14-dev" >&2
  exit 2
fi
lock=()
[ -n "${CM_BUILD_LOCK:-}" ] && lock=(flock "$CM_BUILD_LOCK")
if [ "$build" = 1 ]; then
  t0=$(date +%s)
  "${lock[@]}" cmake -S tests/fuzz -B "$dir" -G Ninja -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ >"$dir.configure.log" 2>&1 ||
    { cat "$dir.configure.log"; exit 1; }
  "${lock[@]}" cmake --build "$dir" -j"$jobs" >"$dir.build.log" 2>&1 || { tail -40 "$dir.build.log"; exit 1; }
  echo "fuzz: built $(cat "$dir/targets.txt" | wc -w) targets in $(( $(date +%s) - t0 )) s ($dir)"
fi
[ -n "$targets" ] || targets="$(cat "$dir/targets.txt")"
# Debian's python3 has numpy, torch and PIL (launch/setup.sh installs them): torch.save'd .pt seeds and JPEG/WebP
# seeds come from those; another python3 makes the rest.
py=python3
[ -x /usr/bin/python3 ] && /usr/bin/python3 -c "import torch, PIL" 2>/dev/null && py=/usr/bin/python3
"$py" tests/fuzz/make_inputs.py "$dir/inputs" >/dev/null
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=0:abort_on_error=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
export OMP_NUM_THREADS=1
failed=0
printf '%-20s %12s %8s %9s  %s\n' target executions seconds exec/s result
for t in $targets; do
  bin="$dir/$t"
  [ -x "$bin" ] || { printf '%-20s %12s %8s %9s  %s\n' "$t" - - - "NOT BUILT"; failed=1; continue; }
  work="$dir/work/$t"
  mkdir -p "$work/corpus" "$work/artifacts"
  [ -d "$dir/inputs/corpus/$t" ] && cp -n "$dir/inputs/corpus/$t"/* "$work/corpus/" 2>/dev/null || true
  regs=()
  for r in "$dir/inputs/regressions/$t" "tests/fuzz/regressions/$t"; do
    [ -d "$r" ] && for f in "$r"/*; do [ -f "$f" ] && regs+=("$f"); done
  done
  common=(-rss_limit_mb=2048 -timeout=30 -artifact_prefix="$work/artifacts/" -print_final_stats=1)
  result=ok
  if [ ${#regs[@]} -gt 0 ] && ! "$bin" "${common[@]}" "${regs[@]}" >"$work/regressions.log" 2>&1; then
    result="REGRESSION FAILED (see $work/regressions.log)"
  fi
  limit=(-max_total_time="$secs")
  [ "$runs" != 0 ] && limit+=(-runs="$runs")
  start=$(date +%s.%N)
  if ! "$bin" "${common[@]}" "${limit[@]}" "$work/corpus" >"$work/fuzz.log" 2>&1; then
    result="CRASH (see $work/fuzz.log, inputs in $work/artifacts/)"
  fi
  end=$(date +%s.%N)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/fuzz.log" | tail -1)
  execs=${execs:-0}
  el=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.0f", b - a }')
  rate=$(awk -v n="$execs" -v s="$el" 'BEGIN { printf "%.0f", (s > 0 ? n / s : n) }')
  [ "$result" = ok ] || failed=1
  printf '%-20s %12s %8s %9s  %s (%d regression inputs)\n' "$t" "$execs" "$el" "$rate" "$result" "${#regs[@]}"
done
exit $failed
