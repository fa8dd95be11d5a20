#!/usr/bin/env bash
# Several real "hosts" on this machine, for testing `cm` across nodes: each host is a network namespace
# with its own address on a private bridge, its own hostname (UTS namespace), its own /etc/hosts and a
# node-local /tmp (mount namespace), an sshd (for mpirun over ssh) and a slurmd; host 1 also runs the
# slurmctld of a SLURM cluster whose compute nodes are these hosts. The file system is otherwise shared
# (the shared run.dir of a cluster, like NFS), and so is the PID space.
#
#   launch/slurm/local_nodes.sh start STATE_DIR [HOSTS]  # 2 (default) or 3 hosts cmnode1..; waits until
#                                                       # every slurmd is idle and every sshd answers
#   export SLURM_CONF=STATE_DIR/slurm.conf              # sbatch / srun / squeue / scontrol as usual
#   ssh -F STATE_DIR/ssh_config cmnode1 CMD              # a shell on a host (mpirun there reaches the others)
#   launch/slurm/local_nodes.sh exec STATE_DIR HOST CMD  # CMD inside HOST's namespaces, without ssh
#   launch/slurm/local_nodes.sh stop STATE_DIR           # kills everything in the namespaces, deletes
#                                                       # them, the veths and the bridge, stops munged
#
# Names and addresses: bridge cmbr0 (10.213.7.1/24 on this machine), hosts cmnodeI at 10.213.7.(10+I),
# veth cmvI (bridge side) to eth0 (host side). CM_NODES_SUBNET=A.B.C changes the /24. Nothing outside
# STATE_DIR is written or read as configuration: a private munged (own key and socket), a private sshd
# config, host and user keys, slurm.conf; /etc/hosts and /tmp are replaced only inside the hosts' mount
# namespaces. Needs root, iproute2, util-linux (unshare, nsenter), openssh-server, slurm-wlm and munge.
# With CM_NODES_OWNER=PID (a test's process id) a watcher runs `stop` as soon as that process is gone, so
# nothing stays behind even when the test is killed before its own teardown.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)

cmd=${1:-}
dir=${2:-}
if [[ -z "$cmd" || -z "$dir" ]]; then
  echo "usage: $0 start STATE_DIR [HOSTS] | stop STATE_DIR | exec STATE_DIR HOST CMD..." >&2
  exit 2
fi
bridge=cmbr0
subnet=${CM_NODES_SUBNET:-10.213.7}

# PIDs of every process in network namespace $1 (empty when it does not exist).
ns_pids() { ip netns pids "$1" 2>/dev/null || true; }

stop() {
  local hosts=() h
  if [[ -f "$dir/reaper.pid" ]]; then
    local rp
    rp=$(cat "$dir/reaper.pid")
    if [[ "$rp" != "$$" ]]; then kill "$rp" 2>/dev/null || true; fi
    rm -f "$dir/reaper.pid"
  fi
  # Only what this STATE_DIR's `start` created (another cluster may be up, or starting, beside it).
  if [[ -f "$dir/owned" ]]; then
    mapfile -t hosts < "$dir/hosts.list"
  fi
  # Daemons first, gently (slurmd and slurmctld save state, sshd closes sessions), then everything.
  for sig in TERM KILL; do
    local left=0
    for h in "${hosts[@]}"; do
      for p in $(ns_pids "$h"); do kill -s "$sig" "$p" 2>/dev/null && left=1; done
    done
    (( left )) || break
    for _ in $(seq 30); do
      local any=0
      for h in "${hosts[@]}"; do [[ -n "$(ns_pids "$h")" ]] && any=1; done
      (( any )) || break
      sleep 0.1
    done
  done
  for h in "${hosts[@]}"; do
    ip netns del "$h" 2>/dev/null || true
  done
  if [[ -f "$dir/owned" ]]; then
    for h in "${hosts[@]}"; do ip link del "cmv${h#cmnode}" 2>/dev/null || true; done
    ip link del "$bridge" 2>/dev/null || true
  fi
  if [[ -f "$dir/munge/munged.pid" ]]; then
    local mp
    mp=$(cat "$dir/munge/munged.pid")
    kill "$mp" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 "$mp" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$mp" 2>/dev/null || true
    rm -f "$dir/munge/munged.pid"
  fi
  local rest=""
  for h in "${hosts[@]}"; do [[ -e "/run/netns/$h" ]] && rest+=" $h"; done
  if [[ -n "$rest" ]] || { [[ -f "$dir/owned" ]] && ip link show "$bridge" >/dev/null 2>&1; }; then
    echo "$0: could not remove:$rest ${bridge}" >&2
    return 1
  fi
  rm -f "$dir/owned"
  echo "local hosts in $dir stopped (${hosts[*]:-none})"
}

# Runs "$@" inside host $1's namespaces (network, UTS, mount), entered through its holder process.
host_exec() {
  local h=$1; shift
  local pid
  pid=$(cat "$dir/$h.holder" 2>/dev/null) || { echo "$0: host $h is not up in $dir" >&2; return 2; }
  nsenter -t "$pid" -n -u -m -- "$@"
}

case "$cmd" in
  stop) stop; exit $? ;;
  exec)
    [[ $# -ge 4 ]] || { echo "usage: $0 exec STATE_DIR HOST CMD..." >&2; exit 2; }
    dir=$(cd "$dir" && pwd)
    h=$3; shift 3
    host_exec "$h" "$@"; exit $? ;;
  start) ;;
  *) echo "unknown command '$cmd' (start|stop|exec)" >&2; exit 2 ;;
esac

n=${3:-2}
[[ "$n" =~ ^[1-9]$ ]] || { echo "$0: HOSTS must be 1..9, got '$n'" >&2; exit 2; }
if [[ $(id -u) -ne 0 ]]; then
  echo "$0: local hosts need root (network namespaces, sshd, slurmd)" >&2
  exit 3
fi
for b in ip nsenter unshare sshd ssh ssh-keygen munged slurmctld slurmd sbatch; do
  command -v "$b" >/dev/null || { echo "$0: '$b' not found: apt-get install iproute2 util-linux openssh-server openssh-client slurm-wlm munge" >&2; exit 3; }
done
if ip link show "$bridge" >/dev/null 2>&1; then
  echo "$0: bridge $bridge exists: another local_nodes.sh cluster is up (stop it with: $0 stop ITS_STATE_DIR)" >&2
  exit 3
fi

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
# From here on, a failure takes down whatever was brought up.
trap 'rc=$?; if (( rc != 0 )); then echo "$0: start failed; tearing down" >&2; stop >&2 || true; fi' EXIT
mkdir -p "$dir"/{state,spool,log,munge,tmp}
if [[ -n "${CM_NODES_OWNER:-}" ]]; then
  script=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
  setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; exec "$2" stop "$3"' reaper \
    "$CM_NODES_OWNER" "$script" "$dir" </dev/null >>"$dir/reaper.log" 2>&1 &
  echo $! > "$dir/reaper.pid"
fi
chmod 700 "$dir/munge"
hosts=()
for i in $(seq "$n"); do hosts+=("cmnode$i"); done
printf '%s\n' "${hosts[@]}" > "$dir/hosts.list"
addr() { echo "$subnet.$((10 + ${1#cmnode}))"; }

# ---- network: bridge + one veth per host ----
ip link add "$bridge" type bridge
echo "$bridge" > "$dir/owned"   # from here on `stop` removes the bridge, the hosts' namespaces and veths
ip addr add "$subnet.1/24" dev "$bridge"
ip link set "$bridge" up
{
  echo "127.0.0.1 localhost"
  for h in "${hosts[@]}"; do echo "$(addr "$h") $h"; done
} > "$dir/hosts"
for h in "${hosts[@]}"; do
  i=${h#cmnode}
  ip netns add "$h"
  ip link add "cmv$i" type veth peer name "cmv${i}n"
  ip link set "cmv${i}n" netns "$h"
  ip link set "cmv$i" master "$bridge" up
  ip netns exec "$h" ip link set "cmv${i}n" name eth0
  ip netns exec "$h" ip addr add "$(addr "$h")/24" dev eth0
  ip netns exec "$h" ip link set eth0 up
  ip netns exec "$h" ip link set lo up
  # The holder: a process that owns the host's UTS and mount namespaces (hostname, /etc/hosts, node-local
  # /tmp); daemons and commands enter them with nsenter.
  mkdir -p "$dir/tmp/$h" && chmod 1777 "$dir/tmp/$h"
  # What must stay shared although it lies under /tmp (a checkout or CI clone in /tmp, CM_NODES_SHARE="DIR ..."):
  # bound into the node-local /tmp at the same path, so every host sees the one copy, as on a shared file system.
  binds=""
  for p in "$repo" ${CM_NODES_SHARE:-}; do
    case "$p" in
      /tmp/*) rel=${p#/tmp/}; mkdir -p "$dir/tmp/$h/$rel"; binds+="mount --bind '$p' '$dir/tmp/$h/$rel' && " ;;
    esac
  done
  setsid nsenter --net="/run/netns/$h" unshare --uts --mount --propagation private sh -c \
    "mount --bind '$dir/hosts' /etc/hosts && $binds mount --rbind '$dir/tmp/$h' /tmp && hostname $h && echo \$\$ > '$dir/$h.holder.tmp' && exec sleep infinity" \
    </dev/null >/dev/null 2>&1 &
  for _ in $(seq 50); do [[ -s "$dir/$h.holder.tmp" ]] && break; sleep 0.1; done
  mv "$dir/$h.holder.tmp" "$dir/$h.holder"
  [[ "$(host_exec "$h" hostname)" == "$h" ]] || { echo "$0: $h did not get its hostname" >&2; exit 1; }
done

# ---- munge: a private daemon, key and socket (slurm.conf's AuthInfo points every host at it) ----
dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$dir/munge/munge.key"
munged --force --socket="$dir/munge/munge.socket" --key-file="$dir/munge/munge.key" \
  --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/munged.seed"
for _ in $(seq 50); do [[ -S "$dir/munge/munge.socket" ]] && break; sleep 0.1; done

# ---- ssh: host key, root's key, a client config that names every host ----
rm -f "$dir"/ssh_host_key* "$dir"/id_ed25519*
rm -f "$dir"/ssh_host_key* "$dir"/id_ed25519*
ssh-keygen -q -t ed25519 -N '' -f "$dir/ssh_host_key" -C cm-local-nodes
ssh-keygen -q -t ed25519 -N '' -f "$dir/id_ed25519" -C cm-local-nodes
cp "$dir/id_ed25519.pub" "$dir/authorized_keys"
: > "$dir/known_hosts"
{
  echo "# Written by launch/slurm/local_nodes.sh: ssh -F $dir/ssh_config HOST"
  for h in "${hosts[@]}"; do
    echo "Host $h"
    echo "  HostName $(addr "$h")"
    echo "$h,$(addr "$h") $(cut -d' ' -f1,2 "$dir/ssh_host_key.pub")" >> "$dir/known_hosts"
  done
  echo "Host *"
  echo "  User root"
  echo "  IdentityFile $dir/id_ed25519"
  echo "  IdentitiesOnly yes"
  echo "  UserKnownHostsFile $dir/known_hosts"
  echo "  GlobalKnownHostsFile /dev/null"
  echo "  StrictHostKeyChecking yes"
  echo "  BatchMode yes"
  echo "  LogLevel ERROR"
  echo "  ConnectTimeout 10"
} > "$dir/ssh_config"
# sshd's privilege separation directory (Debian's init script creates it at boot).
mkdir -p /run/sshd && chmod 755 /run/sshd
for h in "${hosts[@]}"; do
  cat > "$dir/sshd_config.$h" <<EOF
# Written by launch/slurm/local_nodes.sh: sshd of $h
ListenAddress $(addr "$h")
Port 22
HostKey $dir/ssh_host_key
PidFile $dir/sshd.$h.pid
AuthorizedKeysFile $dir/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitUserEnvironment no
AcceptEnv LANG LC_*
MaxStartups 64
MaxSessions 64
LogLevel ERROR
EOF
  host_exec "$h" /usr/sbin/sshd -f "$dir/sshd_config.$h" -E "$dir/log/sshd.$h.log"
done

# ---- SLURM: slurmctld on host 1, one slurmd per host ----
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / (n + 1) ))
ctl=${hosts[0]}
cat > "$dir/slurm.conf" <<EOF
# Written by launch/slurm/local_nodes.sh: ${#hosts[@]} nodes (network namespaces of this machine), one partition.
ClusterName=cmnodes
SlurmctldHost=$ctl($(addr "$ctl"))
SlurmUser=root
SlurmctldPort=$(( 16817 + RANDOM % 2000 ))
SlurmdPort=$(( 18817 + RANDOM % 2000 ))
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.%n.log
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
CryptoType=crypto/munge
MpiDefault=pmix
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
JobRequeue=1
KillWait=10
MinJobAge=3600
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
PlugStackConfig=$dir/plugstack.conf
EOF
for h in "${hosts[@]}"; do
  echo "NodeName=$h NodeAddr=$(addr "$h") NodeHostname=$h CPUs=$cpus RealMemory=$mem State=UNKNOWN" >> "$dir/slurm.conf"
done
echo "PartitionName=nodes Nodes=$(IFS=,; echo "${hosts[*]}") Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO" >> "$dir/slurm.conf"
: > "$dir/plugstack.conf"
printf 'CgroupPlugin=autodetect\nIgnoreSystemd=yes\n' > "$dir/cgroup.conf"
for h in "${hosts[@]}"; do mkdir -p "$dir/spool/$h"; done

export SLURM_CONF="$dir/slurm.conf"
host_exec "$ctl" env SLURM_CONF="$SLURM_CONF" slurmctld -f "$SLURM_CONF" -c
for h in "${hosts[@]}"; do
  host_exec "$h" env SLURM_CONF="$SLURM_CONF" slurmd -f "$SLURM_CONF" -N "$h" -c
done

# ---- wait: every node idle, every sshd answering ----
up=0
for _ in $(seq 150); do
  idle=$(sinfo -h -N -o '%N %T' 2>/dev/null | awk '$2 ~ /^idle/ {print $1}' | sort -u | wc -l || true)
  if (( idle == n )); then up=1; break; fi
  sleep 0.2
done
if (( ! up )); then
  echo "$0: the nodes did not come up:" >&2
  sinfo -N >&2 || true
  tail -n 20 "$dir"/log/*.log >&2 || true
  exit 1
fi
for h in "${hosts[@]}"; do
  ok=0
  for _ in $(seq 50); do
    if [[ "$(ssh -F "$dir/ssh_config" "$h" hostname 2>/dev/null)" == "$h" ]]; then ok=1; break; fi
    sleep 0.1
  done
  (( ok )) || { echo "$0: ssh to $h failed:" >&2; ssh -F "$dir/ssh_config" "$h" hostname >&2 || true; tail -n 20 "$dir/log/sshd.$h.log" >&2 || true; exit 1; }
done
echo "local hosts up: ${hosts[*]} ($subnet.0/24 on $bridge), SLURM partition 'nodes', ssh -F $dir/ssh_config HOST;" \
     "export SLURM_CONF=$dir/slurm.conf"
