#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for testing the batch scripts (and for trying them
# out on a workstation): munged + slurmctld + slurmd on localhost with the machine's CPUs, one partition.
#
#   launch/slurm/local_cluster.sh start STATE_DIR   # writes STATE_DIR/slurm.conf, starts the daemons,
#                                                   # waits until the node is idle
#   export SLURM_CONF=STATE_DIR/slurm.conf          # then sbatch / srun / squeue / scontrol as usual
#   launch/slurm/local_cluster.sh stop STATE_DIR    # stops the daemons started by `start`
#
# Needs root and Debian's slurm-wlm and munge (launch/setup.sh installs them). Everything the cluster
# writes (state, spool, logs) stays in STATE_DIR; /etc/slurm is not touched. The munge key of the
# munge package (/etc/munge/munge.key) is used; munged is started if it is not running.
set -euo pipefail

cmd=${1:-}
dir=${2:-}
if [[ -z "$cmd" || -z "$dir" ]]; then
  echo "usage: $0 start|stop STATE_DIR" >&2
  exit 2
fi

if [[ "$cmd" == stop ]]; then
  for d in slurmd slurmctld; do
    if [[ -f "$dir/$d.pid" ]]; then
      pid=$(cat "$dir/$d.pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$dir/$d.pid"
    fi
  done
  echo "local SLURM cluster in $dir stopped"
  exit 0
fi
[[ "$cmd" == start ]] || { echo "unknown command '$cmd' (start|stop)" >&2; exit 2; }

if [[ $(id -u) -ne 0 ]]; then
  echo "$0: a local SLURM cluster needs root (slurmd runs jobs as their users)" >&2
  exit 3
fi
for b in munged slurmctld slurmd sbatch; do
  command -v "$b" >/dev/null || { echo "$0: '$b' not found: apt-get install slurm-wlm munge" >&2; exit 3; }
done

mkdir -p "$dir"/{state,spool,log}
dir=$(cd "$dir" && pwd)
host=$(hostname -s)
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))

cat > "$dir/slurm.conf" <<EOF
# Written by launch/slurm/local_cluster.sh: one node (this machine), one partition.
ClusterName=cmlocal
SlurmctldHost=$host
SlurmUser=root
SlurmctldPort=$(( 16817 + RANDOM % 2000 ))
SlurmdPort=$(( 18817 + RANDOM % 2000 ))
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=pmix
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
JobRequeue=1
KillWait=20
MinJobAge=3600
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
# Debian's plugin stack config is harmless; an empty one next to ours keeps the cluster self-contained.
: > "$dir/plugstack.conf"
echo "PlugStackConfig=$dir/plugstack.conf" >> "$dir/slurm.conf"
# cgroup.conf is read even with task/none on some versions; make one that asks for nothing.
printf 'CgroupPlugin=autodetect\nIgnoreSystemd=yes\n' > "$dir/cgroup.conf"

if ! pgrep -x munged >/dev/null; then
  mkdir -p /run/munge && chown munge:munge /run/munge 2>/dev/null || true
  if id munge >/dev/null 2>&1; then
    su -s /bin/sh munge -c munged || munged --force
  else
    munged --force
  fi
fi

export SLURM_CONF="$dir/slurm.conf"
slurmctld -f "$dir/slurm.conf" -c            # -c: clean start (no state of an earlier cluster)
slurmd -f "$dir/slurm.conf" -c
for _ in $(seq 100); do
  state=$(sinfo -h -N -o '%T' 2>/dev/null | head -1 || true)
  if [[ "$state" == idle* ]]; then
    echo "local SLURM cluster up: node $host, $cpus CPUs; export SLURM_CONF=$dir/slurm.conf"
    exit 0
  fi
  sleep 0.2
done
echo "$0: the node did not come up (state '${state:-none}'); logs in $dir/log" >&2
tail -n 20 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
exit 1
