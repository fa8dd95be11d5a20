#!/usr/bin/env bash
# launch/study_fmnist.sh: the paper's comparison at the scale of a 2-core machine, on real images
# (Fashion-MNIST 28x28, README "The Fashion-MNIST study"). One command trains and evaluates:
#   teacher  the EDM teacher (fmnist28_edm): the shipped recipes/weights/fmnist28_edm.safetensors, or trained
#            here with --train-teacher (its own budget, --teacher-steps)
#   cd       consistency distillation from it (fmnist28_cd: l2, Heun, N = 18, mu = 0)
#   ct       consistency training (fmnist28_ct: the paper's curriculum s0 2 -> s1 150 over the budget)
#   ict      improved consistency training (fmnist28_ict: pseudo-Huber, lognormal, 1/dt, s0 10 -> 160)
# Every method trains on the same budget of images (--images, default 38,400 = 600 steps of batch 64) with
# --ranks CPU ranks. Each is then measured by FD_fmnist (`cm features --help`; the shipped classifier)
# of --count samples (default 2,000) against the training split: one step, and two steps with the second
# noise level chosen by `cm ts-search --feature-net fmnist` (on --search-count samples); the teacher at its
# Heun NFE (35). It writes RUN/table.md (and prints it): FD_fmnist at 1 and 2 steps, the chosen ts, images
# seen, training wall time, RUN/<method>/fd/<k>step/samples.png grids, and RUN/study_grid.png (a row per
# model: one step on the left, two on the right; the teacher on the right).
#
#   launch/study_fmnist.sh [--out runs/study] [--images N] [--count N] [--search-count N] [--ranks R]
#                          [--threads T] [--train-teacher [--teacher-steps S]] [--methods teacher,cd,ct,ict]
#                          [--no-setup]
#
# --methods picks the stages of this invocation (default all four; the table lists the stages named), so
# stages can run side by side, one core each: e.g. `--methods ct --threads 1` beside `--methods teacher,cd
# --threads 1`, then the default to write the whole table. --threads sets the compute threads of every
# process (train.threads and OMP_NUM_THREADS); default: cm's own (cores / ranks).
# Rerunning continues: a finished training is not redone (cm train resumes an interrupted one), a stage whose
# output exists is skipped. The teacher's evaluation and the CD run record the teacher's SHA-256: a changed
# teacher re-evaluates, and stops with a message if a CD run of another teacher is in the way.
# Budgets measured on this project's 2-core machine: README.
set -euo pipefail
cd "$(dirname "$0")/.."

out=runs/study images=38400 count=2000 search_count=1000 ranks=2 train_teacher=0 teacher_steps=2700
methods=teacher,cd,ct,ict setup=1 batch=64 threads=0
die() { echo "study: $*" >&2; exit 1; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --images) images=$2; shift 2 ;;
    --count) count=$2; shift 2 ;;
    --search-count) search_count=$2; shift 2 ;;
    --ranks) ranks=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --train-teacher) train_teacher=1; shift ;;
    --teacher-steps) teacher_steps=$2; shift 2 ;;
    --methods) methods=$2; shift 2 ;;
    --no-setup) setup=0; shift ;;
    -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
for v in images count search_count ranks teacher_steps; do
  [[ "${!v}" =~ ^[0-9]+$ && "${!v}" -gt 0 ]] || die "--${v//_/-} must be a positive integer, got '${!v}'"
done
(( images % batch == 0 )) || die "--images $images must be a multiple of the batch, $batch"
(( count >= 2 && search_count >= 2 )) || die "--count and --search-count must be >= 2"
[[ "$threads" =~ ^[0-9]+$ ]] || die "--threads must be a non-negative integer, got '$threads'"
train_threads=()
if (( threads > 0 )); then export OMP_NUM_THREADS=$threads; train_threads=(train.threads="$threads"); fi
steps=$(( images / batch ))
IFS=, read -r -a method_list <<<"$methods"
with_teacher=0 cm_methods=()
for m in "${method_list[@]}"; do
  case "$m" in
    teacher) with_teacher=1 ;;
    cd|ct|ict) cm_methods+=("$m") ;;
    *) die "--methods: '$m' is not teacher, cd, ct or ict" ;;
  esac
done

if (( setup )); then CM_BUILD_TARGET=cm bash launch/setup.sh; fi
cm=./build/cm
launch=(launch/cm-mpirun -n "$ranks")
(( ranks == 1 )) && launch=("$cm")
mkdir -p "$out"
py=/usr/bin/python3
json() { "$py" -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {}, {"d": d}))' "$1" "$2"; }

# --- data -------------------------------------------------------------------------------------------------
train_data=data/fashion-mnist28-train test_data=data/fashion-mnist28-test
if ! $cm data verify "$train_data" >/dev/null 2>&1; then
  $cm data convert fashion-mnist /usr/share/datasets/fashion-mnist "$train_data" --shards 2 --overwrite
fi
if ! $cm data verify "$test_data" >/dev/null 2>&1; then
  $cm data convert fashion-mnist /usr/share/datasets/fashion-mnist "$test_data" --split test --shards 1 --overwrite
fi
ref=$out/ref_stats_fmnist_train.npz
if [[ ! -f $ref ]]; then
  echo "study: FD_fmnist statistics of the training split -> $ref"
  $cm eval ref-stats "$train_data" --feature-net fmnist --out "$ref" --batch 500
fi
# The floor at this sample count: that many test images against the training split.
floor_json=$out/floor_${count}.json
[[ -f $floor_json ]] || $cm eval "$test_data" --ref "$ref" --feature-net fmnist --metrics fd --count "$count" --quiet --json "$floor_json" >/dev/null
floor=$(json "$floor_json" 'round(d["fd_fmnist"], 2)')

seconds_of() { [[ -f "$1/study_train_s" ]] && cat "$1/study_train_s" || echo "?"; }
# --- teacher ----------------------------------------------------------------------------------------------
teacher=recipes/weights/fmnist28_edm.safetensors
if (( train_teacher )); then
  tdir=$out/teacher
  if [[ ! -f $tdir/final.json ]]; then
    t0=$(date +%s)
    "${launch[@]}" train fmnist28_edm run.dir="$tdir" train.steps="$teacher_steps" "${train_threads[@]}"
    echo $(( $(date +%s) - t0 )) >"$tdir/study_train_s"
  fi
  teacher=$tdir/ema_0.999.safetensors
  [[ -f $teacher ]] || die "the teacher run $tdir left no ema_0.999.safetensors"
fi
[[ -f $teacher ]] || die "the teacher $teacher is missing (pass --train-teacher to train one)"
teacher_sha=$(sha256sum "$teacher" | cut -c1-64)
tdir_eval=$out/teacher_eval
if (( with_teacher )); then
  if [[ -f $tdir_eval/eval.json && "$(cat "$tdir_eval/teacher.sha256" 2>/dev/null)" != "$teacher_sha" ]]; then
    echo "study: the teacher changed since $tdir_eval was made: evaluating it again"
    rm -rf "$tdir_eval"
  fi
  if [[ ! -f $tdir_eval/eval.json ]]; then
    echo "study: teacher samples (EDM Heun, 18 steps = 35 evaluations), $count"
    "${launch[@]}" sample fmnist28_edm --weights "$teacher" --count "$count" --out "$tdir_eval"
    $cm eval "$tdir_eval"/samples_"${count}"x28x28x1.npz --ref "$ref" --feature-net fmnist --metrics fd --quiet --json "$tdir_eval/eval.json"
    echo "$teacher_sha" >"$tdir_eval/teacher.sha256"
  fi
fi

# --- the consistency models ---------------------------------------------------------------------------------
rows=()
for m in "${cm_methods[@]}"; do
  dir=$out/$m recipe=fmnist28_$m
  extra=()
  if [[ $m == cd ]]; then
    extra=(method.teacher="$teacher")
    if [[ -d $dir && "$(cat "$dir/teacher.sha256" 2>/dev/null)" != "$teacher_sha" ]]; then
      die "$dir was distilled from another teacher than $teacher (sha256 $teacher_sha): remove $dir (or pick another --out) to distil this one"
    fi
    mkdir -p "$dir"; echo "$teacher_sha" >"$dir/teacher.sha256"
  fi
  echo "study: $m: $recipe, $steps steps of batch $batch ($images images) on $ranks rank(s)"
  if [[ ! -f $dir/final.json ]]; then
    t0=$(date +%s)
    "${launch[@]}" train "$recipe" run.dir="$dir" train.steps="$steps" train.batch="$batch" eval.every_images=0 "${extra[@]}" "${train_threads[@]}"
    prev=0; [[ -f $dir/study_train_s ]] && prev=$(cat "$dir/study_train_s")
    echo $(( prev + $(date +%s) - t0 )) >"$dir/study_train_s"
  fi
  ts_json=$dir/ts_search.json
  if [[ ! -f $ts_json ]]; then
    "${launch[@]}" ts-search "$recipe" "${extra[@]}" --weights "$dir/ema_0.99.safetensors" --ref "$ref" --feature-net fmnist \
      --count "$search_count" --stride 2 --refine --quiet --json "$ts_json"
  fi
  best=$(json "$ts_json" 'd["best"]["index"]')
  for k in 1 2; do
    d=$dir/fd/${k}step
    if [[ ! -f $d/eval.json ]]; then
      ts=0; (( k == 2 )) && ts=0,$best,17
      "${launch[@]}" sample "$recipe" "${extra[@]}" --weights "$dir/ema_0.99.safetensors" --ts "$ts" --grid 18 --count "$count" --out "$d"
      $cm eval "$d"/samples_"${count}"x28x28x1.npz --ref "$ref" --feature-net fmnist --metrics fd --quiet --json "$d/eval.json"
    fi
  done
  fd1=$(json "$dir/fd/1step/eval.json" 'round(d["fd_fmnist"], 2)') fd2=$(json "$dir/fd/2step/eval.json" 'round(d["fd_fmnist"], 2)')
  sigma=$(json "$ts_json" 'round(d["best"]["sigma"], 3)')
  rows+=("| $m ($recipe) | $fd1 | $fd2 (ts 0,$best,17: sigma $sigma) | $images | $(seconds_of "$dir") s | \`$dir/fd/1step/samples.png\`, \`$dir/fd/2step/samples.png\` |")
done

tsecs="shipped"
(( train_teacher )) && tsecs="$(seconds_of "$out/teacher") s"
sha=$(json "$floor_json" 'd["feature_net_sha256"]')   # the network cm eval used, as it named it
per="$ranks CPU rank(s)"; (( threads > 0 )) && per="$ranks rank(s) x $threads thread(s)"
{
  echo "FD_fmnist of $count samples against the Fashion-MNIST training split (feature network sha256 $sha);"
  echo "floor at this count ($count test images): $floor. Budget per consistency model: $images images, $per."
  echo "Teacher: $teacher (sha256 $teacher_sha)."
  echo
  echo "| method | FD_fmnist, 1 step | FD_fmnist, 2 steps | images | training wall time | samples |"
  echo "|---|---|---|---|---|---|"
  if (( with_teacher )); then
    tfd=$(json "$tdir_eval/eval.json" 'round(d["fd_fmnist"], 2)')
    echo "| EDM teacher (Heun, 35 evaluations) | - | $tfd (35 NFE) | - | $tsecs | \`$tdir_eval/samples.png\` |"
  fi
  printf '%s\n' "${rows[@]}"
} | tee "$out/table.md"
echo "study: wrote $out/table.md"

# --- one picture of every stage: a row per model, one step | two steps (the teacher: its 35 NFE) ---------------
# The first 32 samples of each (every stage draws its noise from the same seed). numpy and zlib only.
panels=()
(( with_teacher )) && panels+=("teacher" "" "$tdir_eval/samples_${count}x28x28x1.npz")
for m in "${cm_methods[@]}"; do panels+=("$m" "$out/$m/fd/1step/samples_${count}x28x28x1.npz" "$out/$m/fd/2step/samples_${count}x28x28x1.npz"); done
"$py" - "$out/study_grid.png" "${panels[@]}" <<'PY'
import struct, sys, zlib
import numpy as np
out, args = sys.argv[1], sys.argv[2:]
rows, cols, px, gap = 4, 8, 28, 2
def panel(path):
    p = np.full((rows * (px + gap), cols * (px + gap)), 255, np.uint8)
    if path:
        x = np.load(path)["arr_0"][: rows * cols, :, :, 0]
        for i, im in enumerate(x):
            r, c = divmod(i, cols)
            p[r * (px + gap) : r * (px + gap) + px, c * (px + gap) : c * (px + gap) + px] = im
    return p
lines = []
for k in range(0, len(args), 3):
    a, b = panel(args[k + 1]), panel(args[k + 2])
    line = np.concatenate([a, np.full((a.shape[0], 8), 255, np.uint8), b], axis=1)
    lines += [line, np.full((8, line.shape[1]), 255, np.uint8)]
img = np.concatenate(lines[:-1], axis=0)
raw = b"".join(b"\x00" + row.tobytes() for row in img)
chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", img.shape[1], img.shape[0], 8, 0, 0, 0, 0)) \
    + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
open(out + ".tmp", "wb").write(png)
import os; os.replace(out + ".tmp", out)
print("study: wrote %s (rows: %s; left one step, right two steps)" % (out, ", ".join(args[0::3])))
PY
