#!/usr/bin/env bash
# The body of the project's SLURM batch scripts (cm_1node.sbatch, cm_nodes.sbatch): one `cm` rank per
# task with srun --mpi=pmix, and a requeue when the run stopped for preemption.
#
#   job.sh CM_ARGS...        e.g. job.sh train cifar10_ct run.dir=/shared/runs/cifar10_ct
#
# The run directory must be given (run.dir=...) on a shared file system: a requeued job runs the same
# command, finds the run's checkpoints there and resumes from the newest one (cm train resume=auto).
# SLURM sends SIGUSR1 to every rank before the time limit (--signal=USR1@SECONDS in the batch scripts);
# scancel --signal=USR1 JOBID does the same by hand. cm then checkpoints at the next step boundary and
# exits with code 75 (CM_PREEMPT_EXIT_CODE); this script then requeues the job, which resumes.
set -uo pipefail

home=${CM_HOME:-${SLURM_SUBMIT_DIR:-$PWD}}
cm=${CM_BIN:-$home/build/cm}
preempt_code=${CM_PREEMPT_EXIT_CODE:-75}
if [[ ! -x "$cm" ]]; then
  echo "job.sh: cm not found at $cm: build it first, or set CM_BIN (or CM_HOME to the repository)" >&2
  exit 2
fi
if [[ $# -eq 0 ]]; then
  echo "job.sh: no cm command given: sbatch ... cm_1node.sbatch train RECIPE run.dir=DIR [overrides]" >&2
  exit 2
fi
if [[ "$1" == train ]] && ! printf '%s\n' "$@" | grep -q '^run\.dir='; then
  echo "job.sh: give run.dir=DIR on a shared file system, so that a requeued job resumes the same run" >&2
  exit 2
fi

# Threads per rank: the CPUs SLURM gave each task.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
export OMPI_MCA_btl_vader_single_copy_mechanism=${OMPI_MCA_btl_vader_single_copy_mechanism:-none}

echo "[$(date -Is)] job ${SLURM_JOB_ID:-?} (restart ${SLURM_RESTART_COUNT:-0}): ${SLURM_NTASKS:-?} tasks on" \
     "${SLURM_JOB_NUM_NODES:-?} node(s) ${SLURM_JOB_NODELIST:-}, $OMP_NUM_THREADS threads per task: cm $*"

srun --mpi=pmix --kill-on-bad-exit=1 "$cm" "$@"
rc=$?

if [[ $rc -eq $preempt_code ]]; then
  echo "[$(date -Is)] cm checkpointed for preemption (exit $rc): requeueing job ${SLURM_JOB_ID:-?}"
  if scontrol requeue "${SLURM_JOB_ID}"; then
    exit 0
  fi
  echo "job.sh: scontrol requeue failed; resubmit the same command to resume (launch/slurm/submit_until_done.sh does)" >&2
fi
echo "[$(date -Is)] cm exited with $rc"
exit $rc
