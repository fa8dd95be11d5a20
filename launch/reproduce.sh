#!/usr/bin/env bash
# launch/reproduce.sh: one command per row of the paper's FID table. It converts the dataset (when not done
# yet), trains the row's recipe (resuming), samples --count images with the paper's one- and two-step
# settings, evaluates them against the published reference statistics and prints the FID beside the
# published one. Every stage is skipped when its output exists and is valid, so rerunning the same command
# after an interruption (a preempted job, a full disk, Ctrl-C) continues where it stopped.
#
#   launch/reproduce.sh ROW [options] [-- TRAIN_OVERRIDES...]
#   launch/reproduce.sh cifar10_ct --source cifar-10-binary.tar.gz --inception inception-2015-12-05.pt \
#       --ref cifar10-32x32.npz --launcher "launch/cm-mpirun -n 8"
#   launch/reproduce.sh imagenet64_cd_lpips --source ILSVRC2012/train --ref VIRTUAL_imagenet64_labeled.npz \
#       --launcher "srun --mpi=pmix" --run-dir /shared/runs/im64      # inside an sbatch allocation
#   launch/reproduce.sh --list                                        # the rows and their published FIDs
#
# ROW (recipes/configs/ROW.toml; `--list` prints them):
#   cifar10_cd_lpips cifar10_cd_l2 cifar10_cd_l1 cifar10_ct cifar10_ict
#   imagenet64_cd_lpips imagenet64_cd_l2 imagenet64_ct
#   lsun_bedroom256_cd_lpips lsun_bedroom256_cd_l2 lsun_bedroom256_ct
#   lsun_cat256_cd_lpips lsun_cat256_cd_l2 lsun_cat256_ct
# The *_cd_* rows distil an EDM teacher (the recipe's method.teacher), and the ImageNet-64 / LSUN *_ct rows
# start from it (method.init_from, as the reference launch script): the script stops before doing anything
# when that file is missing and says how to get it (the released teachers, or `cm train <dataset>_edm`).
# LPIPS rows need the VGG16 + LPIPS weights file (core/lpips.h; checked first as well).
#
# Stages (outputs under the run directory RUN, default runs/ROW):
#   1 convert   `cm data convert` of --source into the recipe's dataset.path (or --data-dir), skipped when
#               `cm data verify` passes there at the recipe's resolution; an interrupted conversion resumes
#               (--resume keeps finished shards). Sources: CIFAR-10 cifar-10-binary.tar.gz (or its extracted
#               cifar-10-batches-bin/), ImageNet the ILSVRC2012 train folder (WNID subfolders), LSUN the LMDB
#               export (bedroom_train_lmdb/, the cat LMDB). For huge sets convert beforehand with
#               `cm data convert ... --worker I/N` + `cm data manifest`: the stage then finds it done.
#   2 train     `cm train ROW run.dir=RUN dataset.path=DATA OVERRIDES` under --launcher; skipped when
#               RUN/final.json says train.steps and that checkpoint is committed; otherwise cm train resumes
#               from RUN's newest committed checkpoint by itself (resume=auto). Exit 75 (preempted, checkpoint
#               committed) is passed on: run the same command again.
#   3 sample    `cm sample` of --count images (default 50,000) from the recipe's sampling EMA (sample.ema,
#               else the first of train.ema_rates) of RUN's final checkpoint: RUN/fid/1step (--ts 0) and
#               RUN/fid/2step (the recipe's sample.ts / sample.grid or sample.sigmas: the paper's two-step
#               settings, e.g. ts 0,11,17 of N = 18 on CIFAR-10, 0,22,39 of 40 for CD ImageNet-64).
#   4 ref       --ref FILE as given; without it the statistics of the converted training set, computed once
#               with `cm eval ref-stats` into RUN/fid/ref_stats_train.npz.
#   5 eval      `cm eval SAMPLES --ref REF --inception FILE --metrics fid --json RUN/fid/<k>step/eval.json`.
#   6 results   RUN/reproduce.json and one line per column, e.g.
#                 cifar10_cd_lpips: FID 3.61 (1 step) | published 3.55
# Beside its output each stage writes an inputs file naming what it was made from (RUN/fid/<k>step/inputs.txt,
# eval.inputs.txt, ref_stats_train.npz.inputs.txt); a stage whose inputs changed (another checkpoint, count,
# seed, reference, Inception file) runs again.
#
# The reference statistics behind each published number (spec section 12; pass the file with --ref):
#   CIFAR-10       the 50,000 training images' statistics (clean-fid "legacy_tensorflow"): EDM's
#                  https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/cifar10-32x32.npz holds them; without --ref
#                  the script computes them from the converted training set (the same with the real Inception)
#   ImageNet 64    VIRTUAL_imagenet64_labeled.npz of the guided-diffusion evaluator:
#                  https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/imagenet/64/VIRTUAL_imagenet64_labeled.npz
#   LSUN Bedroom   https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/lsun/bedroom/VIRTUAL_lsun_bedroom256.npz
#   LSUN Cat       https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/lsun/cat/VIRTUAL_lsun_cat256.npz
#   (for ImageNet / LSUN the training-set statistics computed without --ref are close to, not the same as,
#   the reference batch: compare with the published number only against the VIRTUAL_*.npz file)
# The feature network: inception-2015-12-05.pt (--inception, else $CM_INCEPTION, else
# ~/.cache/cm/inception-2015-12-05.pt): https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt
#
# Options:
#   --source PATH       the dataset as published (needed only while the dataset is not converted)
#   --data-dir DIR      converted dataset directory (default: the recipe's dataset.path, relative to here)
#   --run-dir DIR       run directory (default runs/ROW)
#   --steps N           train.steps=N (a shorter run; the CT curriculum spreads over it)
#   --count N           samples per column (default 50000, the paper's)
#   --nfe LIST          columns to sample and evaluate: 1 (one step), 2 (the recipe's multistep); default 1,2
#   --inception FILE    TorchScript Inception (see above)
#   --ref FILE          reference statistics / image set (see above)
#   --launcher "CMD"    run train, sample and eval under CMD: "launch/cm-mpirun -n 8" (cm-mpirun adds the cm
#                       binary itself), "srun --mpi=pmix", "mpirun -np 8"; default one process
#   --batch B           samples / Inception images per forward on each rank (cm sample, cm eval)
#   --seed S            sampling noise seed (default 0)
#   --shards N          shards of the converted dataset (default: cifar10 16, imagenet 256, lsun 512)
#   --format F          converter format (default by dataset: cifar10, imagenet, lsun; e.g. imagenet64-npz)
#   --reconvert         convert again over a dataset directory that does not verify (cm data convert --overwrite)
#   --list              print the rows, their published FIDs and what they need, then exit
#   -- OVERRIDES        passed to cm train (and to cm sample / cm config, so the network matches)
# Environment: CM_BIN (default build/cm of this repository).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CM=${CM_BIN:-$here/build/cm}
prog=reproduce.sh

# --- the published FIDs ------------------------------------------------------------------------------------
# From ../shared/spec/consistency-models.md section 11 ("Published results"), which says: the CD CIFAR-10 /
# ImageNet-64 numbers and the iCT numbers are confirmed, the CT and LSUN numbers are as recalled from the paper.
# The spec gives CD numbers for the LPIPS metric only: the l2 / l1 rows have none ("-").
# cifar10_ict: spec section 11 lists only iCT-deep (2.51 / 2.24, a deeper network than this recipe's NCSN++);
# 2.83 / 2.46 is the iCT paper's NCSN++ figure as recipes/configs/cifar10_ict.toml cites it.
#   row                       1 step  2 steps  source
published_table() {
  cat <<'EOF'
cifar10_cd_lpips          3.55    2.93     spec §11 CIFAR-10 CD (confirmed)
cifar10_cd_l2             -       -        spec §11 gives CD with LPIPS only
cifar10_cd_l1             -       -        spec §11 gives CD with LPIPS only
cifar10_ct                8.70    5.83     spec §11 CIFAR-10 CT (as recalled)
cifar10_ict               2.83    2.46     iCT paper via recipes/configs/cifar10_ict.toml (spec §11: iCT-deep 2.51 / 2.24)
imagenet64_cd_lpips       6.20    4.70     spec §11 ImageNet 64 CD (confirmed)
imagenet64_cd_l2          -       -        spec §11 gives CD with LPIPS only
imagenet64_ct             13.0    11.1     spec §11 ImageNet 64 CT (as recalled)
lsun_bedroom256_cd_lpips  7.80    5.22     spec §11 LSUN Bedroom 256 CD (as recalled)
lsun_bedroom256_cd_l2     -       -        spec §11 gives CD with LPIPS only
lsun_bedroom256_ct        16.0    7.85     spec §11 LSUN Bedroom 256 CT (as recalled)
lsun_cat256_cd_lpips      11.0    8.84     spec §11 LSUN Cat 256 CD (as recalled)
lsun_cat256_cd_l2         -       -        spec §11 gives CD with LPIPS only
lsun_cat256_ct            20.7    11.7     spec §11 LSUN Cat 256 CT (as recalled)
EOF
}

say() { printf '[reproduce] %s\n' "$*"; }
die() {  # die CODE MESSAGE...: the message on stderr, then exit CODE
  local code=$1; shift
  printf '%s: error: %s\n' "$prog" "$1" >&2; shift
  local l; for l in "$@"; do printf '  %s\n' "$l" >&2; done
  exit "$code"
}
usage() { sed -n '2,80p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

# --- options -----------------------------------------------------------------------------------------------
row="" source="" data_dir="" run_dir="" steps="" count=50000 nfe_list="1,2" inception="" ref="" launcher=""
batch="" seed=0 shards="" format="" reconvert=0 list=0
overrides=()
need_value() { [[ $# -ge 2 && -n "$2" ]] || die 2 "$1 needs a value (see $prog --help)"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --list) list=1; shift ;;
    --source) need_value "$@"; source=$2; shift 2 ;;
    --data-dir) need_value "$@"; data_dir=$2; shift 2 ;;
    --run-dir) need_value "$@"; run_dir=$2; shift 2 ;;
    --steps) need_value "$@"; steps=$2; shift 2 ;;
    --count) need_value "$@"; count=$2; shift 2 ;;
    --nfe) need_value "$@"; nfe_list=$2; shift 2 ;;
    --inception) need_value "$@"; inception=$2; shift 2 ;;
    --ref) need_value "$@"; ref=$2; shift 2 ;;
    --launcher) need_value "$@"; launcher=$2; shift 2 ;;
    --batch) need_value "$@"; batch=$2; shift 2 ;;
    --seed) need_value "$@"; seed=$2; shift 2 ;;
    --shards) need_value "$@"; shards=$2; shift 2 ;;
    --format) need_value "$@"; format=$2; shift 2 ;;
    --reconvert) reconvert=1; shift ;;
    --) shift; overrides+=("$@"); break ;;
    -*) die 2 "unknown option '$1' (see $prog --help)" ;;
    *) if [[ -z "$row" ]]; then row=$1; shift; else die 2 "unexpected argument '$1': train overrides go after '--'"; fi ;;
  esac
done

if (( list )); then
  printf '%-26s %-7s %-7s %s\n' ROW "1 step" "2 steps" "source of the published FID"
  published_table | while read -r r p1 p2 src; do printf '%-26s %-7s %-7s %s\n' "$r" "$p1" "$p2" "$src"; done
  echo "CD rows need the EDM teacher (method.teacher); the ImageNet-64 / LSUN CT rows start from it (method.init_from)."
  exit 0
fi
[[ -n "$row" ]] || { usage >&2; die 2 "no ROW given (one of: $(published_table | awk '{printf "%s%s", s, $1; s=" "}'))"; }
pub_line=$(published_table | awk -v r="$row" '$1 == r' || true)
[[ -n "$pub_line" ]] || die 2 "'$row' is not a row of the paper's table; rows: $(published_table | awk '{printf "%s%s", s, $1; s=" "}')"
read -r _ pub1 pub2 pub_src <<<"$pub_line"

is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }
is_uint "$count" && (( count > 0 )) || die 2 "--count wants a positive number, got '$count'"
is_uint "$seed" || die 2 "--seed wants a number, got '$seed'"
[[ -z "$steps" ]] || { is_uint "$steps" && (( steps > 0 )); } || die 2 "--steps wants a positive number, got '$steps'"
[[ -z "$batch" ]] || { is_uint "$batch" && (( batch > 0 )); } || die 2 "--batch wants a positive number, got '$batch'"
[[ -z "$shards" ]] || { is_uint "$shards" && (( shards > 0 )); } || die 2 "--shards wants a positive number, got '$shards'"
IFS=',' read -r -a nfes <<<"$nfe_list"
for k in "${nfes[@]}"; do [[ "$k" == 1 || "$k" == 2 ]] || die 2 "--nfe takes 1 and/or 2 (e.g. 1,2), got '$nfe_list'"; done
[[ -x "$CM" ]] || die 2 "cm not found at $CM" "build it (bash launch/setup.sh, or cmake --build build --target cm) or set CM_BIN"

# The launcher: launch/cm-mpirun takes the cm command (it adds the binary); others (srun, mpirun) the binary.
launch_prefix=()
if [[ -n "$launcher" ]]; then
  read -r -a launch_prefix <<<"$launcher"
  [[ "$(basename "${launch_prefix[0]}")" == cm-mpirun ]] || launch_prefix+=("$CM")
else
  launch_prefix=("$CM")
fi
run_cm() {  # run_cm ARGS...: cm under the launcher, the command line printed first
  say "  \$ ${launch_prefix[*]} $*"
  "${launch_prefix[@]}" "$@"
}

# --- the resolved recipe -----------------------------------------------------------------------------------
[[ -n "$steps" ]] && overrides+=("train.steps=$steps")
resolve=("${overrides[@]}")
[[ -n "$run_dir" ]] && resolve+=("run.dir=$run_dir")
[[ -n "$data_dir" ]] && resolve+=("dataset.path=$data_dir")
if ! config=$("$CM" config "$row" "${resolve[@]}" 2>&1); then
  printf '%s\n' "$config" >&2
  die 2 "cm config $row ${resolve[*]} failed (above): the recipe or an override is wrong"
fi
cfg() {  # cfg SECTION KEY: the value in the resolved TOML (quotes of strings removed), "" when absent
  printf '%s\n' "$config" | awk -v s="$1" -v k="$2" '
    /^\[.*\]$/ { sec = substr($0, 2, length($0) - 2); next }
    sec == s && index($0, k " = ") == 1 { v = substr($0, length(k) + 4); gsub(/^'\''|'\''$/, "", v); print v; exit }'
}
list_items() { printf '%s' "$1" | tr -d '[] ' | tr ',' ' '; }  # "[ 0, 11 ]" -> "0 11"

run_dir=$(cfg run dir); [[ -n "$run_dir" ]] || run_dir="runs/$row"
data_dir=$(cfg dataset path)
dataset_kind=$(cfg dataset kind) dataset_name=$(cfg dataset name) resolution=$(cfg dataset resolution)
channels=$(cfg dataset channels)
method=$(cfg method name) metric=$(cfg method metric)
train_steps=$(cfg train steps)
teacher=$(cfg method teacher) init_from=$(cfg method init_from)
read -r -a ema_rates <<<"$(list_items "$(cfg train ema_rates)")"
ema=$(cfg sample ema)
if [[ -z "$ema" ]] || awk -v e="$ema" 'BEGIN { exit !(e + 0 < 0) }'; then
  (( ${#ema_rates[@]} > 0 )) || die 2 "$row has no sampling EMA (train.ema_rates is empty): nothing to sample the paper's figures from"
  ema=${ema_rates[0]}
fi
# The shortest decimal that reads back as the same double (cm config prints 17 digits: 0.99990000000000001).
ema=$(awk -v e="$ema" 'BEGIN { for (p = 1; p < 17; p++) { s = sprintf("%." p "g", e); if (s + 0 == e + 0) break }
                               if (p == 17) s = sprintf("%.17g", e); print s }')
read -r -a sample_ts <<<"$(list_items "$(cfg sample ts)")"
read -r -a sample_sigmas <<<"$(list_items "$(cfg sample sigmas)")"
grid=$(cfg sample grid)
if (( ${#sample_sigmas[@]} > 0 )); then
  multi_steps=${#sample_sigmas[@]}
  multi_desc="sigmas $(printf '%s\n' "${sample_sigmas[@]}" | awk '{printf "%s%.6g", s, $1; s=","}') (the recipe's sample.sigmas)"
else
  multi_steps=${#sample_ts[@]}
  multi_desc="ts $(IFS=,; echo "${sample_ts[*]}") of N = $grid (the recipe's sample.ts, sample.grid)"
fi
[[ "$dataset_kind" == hdf5 ]] || die 2 "$row trains on dataset.kind = '$dataset_kind', not a converted (hdf5) dataset"

say "row $row: method $method, metric $metric, dataset $dataset_name ${resolution}x${resolution}, $train_steps steps"
say "run directory $run_dir, dataset $data_dir, train overrides: ${overrides[*]:-(none)}"

# --- inputs that must exist before anything runs -----------------------------------------------------------
teacher_help() {  # teacher_help KEY PATH: how to get the EDM teacher of this row's dataset
  local key=$1 path=$2
  case "$dataset_name" in
    cifar10)
      printf '%s\n' \
        "EDM's released CIFAR-10 model (NCSN++ config F), converted once (needs a checkout of NVlabs/edm):" \
        "    wget https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-cifar10-32x32-uncond-ve.pkl" \
        "    PYTHONPATH=/path/to/edm python3 tools/edm_pickle_to_safetensors.py edm-cifar10-32x32-uncond-ve.pkl --out $path" \
        "  (see that tool's header on loading it), or train the teacher with this framework:" \
        "    cm train cifar10_edm run.dir=runs/cifar10_edm    (then: cm export runs/cifar10_edm --ema 0.99929 --out $path)" ;;
    imagenet64|lsun_bedroom256|lsun_cat256)
      local f; f=$(basename "$path")
      printf '%s\n' \
        "the released EDM teacher of openai/consistency_models:" \
        "    mkdir -p $(dirname "$path") && wget -O $path https://openaipublic.blob.core.windows.net/consistency/$f" \
        "  or train it with this framework: cm train ${dataset_name}_edm run.dir=runs/${dataset_name}_edm, then cm export runs/${dataset_name}_edm --ema 0.9999432189950708 --out $path" ;;
  esac
  printf '%s\n' "or point the recipe at your file: $prog $row ... -- $key=FILE"
}
if [[ "$method" == cd && "$teacher" != exact && ! -f "$teacher" ]]; then
  mapfile -t lines < <(teacher_help method.teacher "$teacher")
  die 1 "$row distils an EDM teacher, and its teacher file method.teacher = '$teacher' does not exist (relative to $PWD)." \
    "Consistency distillation (CD) needs the trained EDM diffusion model of the same dataset. Get it:" "${lines[@]}"
fi
if [[ -n "$init_from" && ! -f "$init_from" ]]; then
  mapfile -t lines < <(teacher_help method.init_from "$init_from")
  die 1 "$row starts its student from the EDM teacher (method.init_from = '$init_from', as the reference launch script), and that file does not exist (relative to $PWD)." \
    "Get it:" "${lines[@]}" "(method.init_from=\"\" trains from random weights instead: the paper's table, not the released runs)"
fi
if [[ "$metric" == lpips ]]; then
  lpips=$(cfg method lpips_weights)
  [[ -n "$lpips" ]] || lpips=${CM_LPIPS_WEIGHTS:-${XDG_CACHE_HOME:-${HOME:-.}/.cache}/cm/lpips_vgg16.safetensors}
  [[ -f "$lpips" ]] || die 1 "$row trains with the LPIPS metric, and the LPIPS weights file '$lpips' does not exist." \
    "Make it once on a machine with Python and PyTorch:" \
    "    wget https://download.pytorch.org/models/vgg16-397923af.pth" \
    "    wget https://github.com/photosynthesis-team/photosynthesis.metrics/releases/download/v0.4.0/lpips_weights.pt" \
    "    python3 tools/convert_lpips_weights.py --vgg vgg16-397923af.pth --lin lpips_weights.pt --out $lpips" \
    "then set CM_LPIPS_WEIGHTS=FILE (or put it at that path, or pass -- +method.lpips_weights=FILE)."
fi
[[ -n "$inception" ]] || inception=${CM_INCEPTION:-${HOME:-.}/.cache/cm/inception-2015-12-05.pt}
[[ -f "$inception" ]] || die 1 "the Inception network '$inception' does not exist: the FID stage needs it." \
  "Download it once (StyleGAN2-ADA's TorchScript file, the one clean-fid loads):" \
  "    wget https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt" \
  "then pass --inception FILE (or set CM_INCEPTION, or put it at ~/.cache/cm/inception-2015-12-05.pt)."
[[ -z "$ref" || -e "$ref" ]] || die 1 "the reference statistics '$ref' (--ref) do not exist." \
  "CIFAR-10: https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/cifar10-32x32.npz (or leave --ref out: training-set statistics)" \
  "ImageNet 64: https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/imagenet/64/VIRTUAL_imagenet64_labeled.npz" \
  "LSUN: .../ref_batches/lsun/bedroom/VIRTUAL_lsun_bedroom256.npz, .../ref_batches/lsun/cat/VIRTUAL_lsun_cat256.npz (same host)"
fingerprint() { stat -L -c '%s bytes, modified %Y' "$1" 2>/dev/null || echo missing; }  # for inputs.txt
mkdir -p "$run_dir/fid"

# --- 1 convert ---------------------------------------------------------------------------------------------
say "[1/6] convert: the training set at $data_dir"
manifest_field() { sed -n "s/^ *\"$2\": *\"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}$/\1/p" "$1/manifest.json" | head -n 1; }
data_ok() {  # data_ok: the converted dataset verifies and has the recipe's image size
  [[ -f "$data_dir/manifest.json" ]] || return 1
  local out; out=$("$CM" data verify "$data_dir" 2>&1) || { verify_out=$out; return 2; }
  local h w c; h=$(manifest_field "$data_dir" height) w=$(manifest_field "$data_dir" width) c=$(manifest_field "$data_dir" channels)
  if [[ "$h" != "$resolution" || "$w" != "$resolution" || "$c" != "$channels" ]]; then
    verify_out="$data_dir holds ${h}x${w}x${c} images, the recipe wants ${resolution}x${resolution}x${channels}"; return 2
  fi
  records=$(manifest_field "$data_dir" total_records)
  return 0
}
verify_out="" records=""
status=0; data_ok || status=$?
if (( status == 0 )); then
  say "  skipped: $data_dir verifies (cm data verify: $records images ${resolution}x${resolution}x${channels})"
else
  if (( status == 2 && ! reconvert )); then
    printf '%s\n' "$verify_out" >&2
    die 1 "$data_dir holds a converted dataset that does not verify or does not fit $row (above)." \
      "Move it aside, or pass --reconvert (with --source) to convert over it."
  fi
  if [[ -z "$source" ]]; then
    case "$dataset_name" in
      cifar10) src_help="cifar-10-binary.tar.gz from https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz (or its extracted cifar-10-batches-bin/)" ;;
      imagenet64) src_help="the ILSVRC2012 train folder (ILSVRC2012_img_train.tar from image-net.org, extracted into one folder per WNID)" ;;
      lsun_bedroom256) src_help="the LSUN bedroom LMDB export bedroom_train_lmdb/ (fyu/lsun download.py -c bedroom)" ;;
      lsun_cat256) src_help="the LSUN cat LMDB export (the LSUN objects release, cat)" ;;
      *) src_help="the published files of $dataset_name" ;;
    esac
    die 1 "$data_dir is not a converted dataset yet, and no --source was given to convert it from." \
      "Pass --source PATH: $src_help" \
      "(or give --data-dir DIR of a dataset converted already with cm data convert)"
  fi
  [[ -e "$source" ]] || die 1 "--source '$source' does not exist"
  if [[ -z "$format" ]]; then
    case "$dataset_name" in
      cifar10) format=cifar10 ;; imagenet64) format=imagenet ;; lsun_*) format=lsun ;;
      *) die 2 "no converter known for dataset '$dataset_name': pass --format F (cm data convert --help)" ;;
    esac
  fi
  if [[ -z "$shards" ]]; then
    case "$format" in cifar10) shards=16 ;; imagenet|imagenet64-npz) shards=256 ;; lsun) shards=512 ;; *) shards=16 ;; esac
  fi
  convert=(data convert "$format" "$source" "$data_dir" --shards "$shards" --resolution "$resolution")
  [[ "$dataset_name" == lsun_* ]] && convert+=(--name "$dataset_name")
  if (( status == 2 )); then convert+=(--overwrite); else convert+=(--resume); fi
  say "  converting $source ($format) into $shards shards"
  say "  \$ $CM ${convert[*]}"
  "$CM" "${convert[@]}" || die 1 "the conversion of $source failed (above); rerun the same command to resume it"
  data_ok || { printf '%s\n' "$verify_out" >&2; die 1 "the converted dataset $data_dir does not verify (above)"; }
  say "  done: $data_dir ($records images, manifest.json)"
fi
overrides+=("dataset.path=$data_dir" "run.dir=$run_dir")  # what cm config resolved, given to every cm command

# --- 2 train -----------------------------------------------------------------------------------------------
say "[2/6] train: cm train $row into $run_dir ($train_steps steps)"
ckpt_dir=$(printf '%s/checkpoints/step_%08d' "$run_dir" "$train_steps")
train_done() {
  [[ -f "$run_dir/final.json" && -f "$ckpt_dir/COMMIT" ]] || return 1
  local s; s=$(sed -n 's/.*"steps": *\([0-9]*\).*/\1/p' "$run_dir/final.json")
  [[ "$s" == "$train_steps" ]]
}
if train_done; then
  say "  skipped: $run_dir/final.json says $train_steps steps, checkpoint $ckpt_dir is committed"
else
  [[ -d "$run_dir/checkpoints" ]] && say "  $run_dir has checkpoints: cm train resumes from the newest committed one"
  rc=0
  run_cm train "$row" "${overrides[@]}" || rc=$?
  if (( rc == 75 )); then
    say "  training stopped on a signal with its checkpoint committed (exit 75): run the same command again to resume"
    exit 75
  fi
  (( rc == 0 )) || die "$rc" "cm train $row failed (exit $rc, messages above); rerunning this command resumes from its newest committed checkpoint"
  train_done || die 1 "cm train ended but $run_dir/final.json or $ckpt_dir/COMMIT is not what $train_steps steps leave"
  say "  done: $run_dir (final.json, checkpoints/, ema_$ema.safetensors)"
fi
weights_id="checkpoint $ckpt_dir ($(cksum <"$ckpt_dir/COMMIT" | awk '{print $1}')), EMA $ema"

# --- 3 sample ----------------------------------------------------------------------------------------------
# stage_fresh FILE WANT: the inputs file FILE says WANT (the stage's output was made from these inputs).
stage_fresh() { [[ -f "$1" && "$(cat "$1")" == "$2" ]]; }
declare -A col_dir col_npz col_desc col_steps
for k in "${nfes[@]}"; do
  if [[ "$k" == 1 ]]; then
    col_steps[$k]=1 col_desc[$k]="one step (--ts 0)"
  else
    if (( multi_steps < 2 )); then say "  (no multistep column: $row samples in one step)"; continue; fi
    col_steps[$k]=$multi_steps col_desc[$k]="$multi_steps steps, $multi_desc"
  fi
  col_dir[$k]="$run_dir/fid/${k}step"
done
cols=()
for k in "${nfes[@]}"; do [[ -n "${col_dir[$k]:-}" ]] && cols+=("$k"); done
(( ${#cols[@]} > 0 )) || die 1 "nothing to evaluate (--nfe $nfe_list)"

for k in "${cols[@]}"; do
  d=${col_dir[$k]}
  say "[3/6] sample: $count images, ${col_desc[$k]}, EMA $ema, seed $seed -> $d"
  want="weights: $weights_id
count: $count
seed: $seed
sampling: ${col_desc[$k]}
overrides: ${overrides[*]}"
  npz=$(ls "$d"/samples_"$count"x*.npz 2>/dev/null | head -n 1 || true)
  if [[ -n "$npz" ]] && stage_fresh "$d/inputs.txt" "$want"; then
    say "  skipped: $npz is there, made from the same checkpoint, count and seed"
  else
    rm -f "$d/inputs.txt" "$d/eval.json" "$d/eval.inputs.txt"
    mkdir -p "$d"
    args=(sample "$row" "${overrides[@]}" --weights "$run_dir" --ema "$ema" --count "$count" --seed "$seed" --out "$d")
    [[ "$k" == 1 ]] && args+=(--ts 0)
    [[ -n "$batch" ]] && args+=(--batch "$batch")
    run_cm "${args[@]}" || die 1 "cm sample failed (above); rerun this command to try the stage again"
    npz=$(ls "$d"/samples_"$count"x*.npz 2>/dev/null | head -n 1 || true)
    [[ -n "$npz" ]] || die 1 "cm sample wrote no $d/samples_${count}x*.npz"
    printf '%s\n' "$want" >"$d/inputs.txt"
    say "  done: $npz (and $d/samples.png)"
  fi
  col_npz[$k]=$npz
done

# --- 4 reference statistics --------------------------------------------------------------------------------
if [[ -n "$ref" ]]; then
  ref_kind="given (--ref)"
  say "[4/6] ref: $ref (--ref)"
else
  ref="$run_dir/fid/ref_stats_train.npz"
  ref_kind="training-set statistics computed here (cm eval ref-stats $data_dir)"
  say "[4/6] ref: no --ref given: statistics of the training set $data_dir -> $ref"
  want="dataset: $data_dir ($(cksum <"$data_dir/manifest.json" | awk '{print $1}'))
inception: $inception ($(fingerprint "$inception"))"
  if [[ -f "$ref" ]] && stage_fresh "$ref.inputs.txt" "$want"; then
    say "  skipped: $ref is there, from the same dataset and Inception file"
  else
    rm -f "$ref.inputs.txt"
    args=(eval ref-stats "$data_dir" --out "$ref" --inception "$inception")
    [[ -n "$batch" ]] && args+=(--batch "$batch")
    run_cm "${args[@]}" || die 1 "cm eval ref-stats failed (above)"
    [[ -f "$ref" ]] || die 1 "cm eval ref-stats wrote no $ref"
    printf '%s\n' "$want" >"$ref.inputs.txt"
    say "  done: $ref"
  fi
  case "$dataset_name" in
    cifar10) ;;
    *) say "  note: the published $dataset_name figures used the guided-diffusion VIRTUAL_*.npz reference batch (see --help): pass it with --ref to compare" ;;
  esac
fi

# --- 5 eval ------------------------------------------------------------------------------------------------
json_num() { sed -n "s/.*\"$2\": *\([-0-9.eE+naNif]*\).*/\1/p" "$1" | head -n 1; }
json_str() { sed -n "s/.*\"$2\": *\"\([^\"]*\)\".*/\1/p" "$1" | head -n 1; }
declare -A col_fid
for k in "${cols[@]}"; do
  d=${col_dir[$k]} npz=${col_npz[$k]}
  say "[5/6] eval: FID of $npz against $ref -> $d/eval.json"
  want="samples: $npz ($(cksum <"$d/inputs.txt" | awk '{print $1}'))
ref: $ref ($(fingerprint "$ref"))
inception: $inception ($(fingerprint "$inception"))"
  if [[ -f "$d/eval.json" ]] && stage_fresh "$d/eval.inputs.txt" "$want" && [[ -n "$(json_num "$d/eval.json" fid)" ]]; then
    say "  skipped: $d/eval.json is there, for the same samples, reference and Inception file"
  else
    rm -f "$d/eval.inputs.txt"
    args=(eval "$npz" --ref "$ref" --inception "$inception" --metrics fid --json "$d/eval.json")
    [[ -n "$batch" ]] && args+=(--batch "$batch")
    run_cm "${args[@]}" || die 1 "cm eval failed (above)"
    [[ -n "$(json_num "$d/eval.json" fid)" ]] || die 1 "cm eval wrote no FID into $d/eval.json"
    printf '%s\n' "$want" >"$d/eval.inputs.txt"
    say "  done: $d/eval.json"
  fi
  col_fid[$k]=$(json_num "$d/eval.json" fid)
done
inception_sha=$(json_str "${col_dir[${cols[0]}]}/eval.json" inception_sha256)

# --- 6 results ---------------------------------------------------------------------------------------------
jstr() { local s=${1//\\/\\\\}; s=${s//\"/\\\"}; s=${s//$'\t'/\\t}; s=${s//$'\n'/\\n}; printf '"%s"' "$s"; }
jnum() { if [[ "$1" == - || -z "$1" ]]; then printf null; else printf '%s' "$1"; fi; }
results="$run_dir/reproduce.json"
{
  printf '{\n  "row": %s,\n  "method": %s,\n  "metric": %s,\n' "$(jstr "$row")" "$(jstr "$method")" "$(jstr "$metric")"
  printf '  "overrides": ['; sep=""; for o in "${overrides[@]}"; do printf '%s%s' "$sep" "$(jstr "$o")"; sep=", "; done; printf '],\n'
  printf '  "run_dir": %s,\n  "dataset": %s,\n  "train_steps": %s,\n  "ema": %s,\n' "$(jstr "$run_dir")" "$(jstr "$data_dir")" "$train_steps" "$(jstr "$ema")"
  printf '  "count": %s,\n  "seed": %s,\n  "inception": %s,\n  "inception_sha256": %s,\n' "$count" "$seed" "$(jstr "$inception")" "$(jstr "$inception_sha")"
  printf '  "ref": %s,\n  "ref_kind": %s,\n  "published_source": %s,\n  "results": [\n' "$(jstr "$ref")" "$(jstr "$ref_kind")" "$(jstr "$pub_src")"
  sep=""
  for k in "${cols[@]}"; do
    if [[ "$k" == 1 ]]; then p=$pub1; else p=$pub2; fi
    printf '%s    {"column": %s, "steps": %s, "sampling": %s, "fid": %s, "published": %s, "samples": %s, "eval": %s}' "$sep" \
      "$k" "${col_steps[$k]}" "$(jstr "${col_desc[$k]}")" "$(jnum "${col_fid[$k]}")" "$(jnum "$p")" \
      "$(jstr "${col_npz[$k]}")" "$(jstr "${col_dir[$k]}/eval.json")"
    sep=$',\n'
  done
  printf '\n  ]\n}\n'
} >"$results.tmp"
mv "$results.tmp" "$results"
say "[6/6] results: $results"
(( count == 50000 )) || say "  note: $count samples per column, not the paper's 50,000: FID is biased upwards with fewer samples"
say "  published: $pub_src"
for k in "${cols[@]}"; do
  if [[ "$k" == 1 ]]; then p=$pub1; else p=$pub2; fi
  [[ "$p" == - ]] && p="none in the spec"
  n=${col_steps[$k]}
  printf '%s: FID %.2f (%s step%s) | published %s\n' "$row" "${col_fid[$k]}" "$n" "$([[ $n == 1 ]] || echo s)" "$p"
done
