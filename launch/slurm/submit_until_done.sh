#!/usr/bin/env bash
# Submits a batch script again and again until the run is finished, for clusters where jobs cannot requeue
# themselves (or when a requeue was refused). Waits for each job (sbatch --wait), then looks for the run's
# final.json, which `cm train` writes only after the last step.
#
#   launch/slurm/submit_until_done.sh [--max N] [SBATCH_OPTIONS... --] SCRIPT train RECIPE run.dir=DIR [overrides]
#
# e.g. launch/slurm/submit_until_done.sh --max 20 --time=4:00:00 -- launch/slurm/cm_1node.sbatch \
#        train cifar10_ct run.dir=/shared/runs/cifar10_ct
set -uo pipefail
max=50
if [[ "${1:-}" == --max ]]; then max=$2; shift 2; fi
opts=()
if printf '%s\n' "$@" | grep -qx -- '--'; then
  while [[ "$1" != -- ]]; do opts+=("$1"); shift; done
  shift
fi
[[ $# -ge 2 ]] || { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
script=$1; shift
run_dir=$(printf '%s\n' "$@" | sed -n 's/^run\.dir=//p' | tail -1)
[[ -n "$run_dir" ]] || { echo "submit_until_done.sh: give run.dir=DIR so that each job resumes the same run" >&2; exit 2; }

for attempt in $(seq 1 "$max"); do
  if [[ -f "$run_dir/final.json" ]]; then
    echo "run $run_dir is finished ($((attempt - 1)) job(s) submitted)"
    exit 0
  fi
  echo "[$(date -Is)] submitting attempt $attempt/$max: sbatch --wait ${opts[*]} $script $*"
  sbatch --wait "${opts[@]}" "$script" "$@"
  rc=$?
  echo "[$(date -Is)] job ended with $rc"
  if [[ ! -f "$run_dir/final.json" && $rc -ne 0 && $rc -ne 75 ]]; then
    # A job that failed for another reason than preemption would fail again: stop and show it.
    echo "submit_until_done.sh: the job failed (exit $rc) without finishing the run; not resubmitting" >&2
    exit "$rc"
  fi
done
[[ -f "$run_dir/final.json" ]] && exit 0
echo "submit_until_done.sh: run not finished after $max jobs" >&2
exit 1
