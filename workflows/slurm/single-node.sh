#!/usr/bin/env bash
# A one-machine Slurm cluster on Debian/Ubuntu, for trying the workflow's Slurm profile and
# the job-array script without a real cluster (also inside containers without systemd).
#
# What it does (as root):
#   1. apt-get installs slurm-wlm and munge (skipped with --no-install or when present);
#   2. makes a munge key if there is none, starts munged by hand and checks it;
#   3. writes /etc/slurm/slurm.conf: this host is the controller and the only compute node,
#      with the CPU count, sockets/cores and memory `slurmd -C` reports; no cgroups
#      (proctrack/linuxproc, task/none), no accounting database;
#   4. starts slurmctld and slurmd by hand (not through systemd), resumes the node if it
#      came up down, and checks `sinfo` and `srun hostname`.
# State stays where Debian's packages put it: /var/lib/slurm, /var/log/slurm, /run.
# Rerunning it restarts the daemons with a fresh configuration.
#
# Usage: single-node.sh [--no-install] [--stop]
#   --no-install   do not call apt-get (the packages are already there)
#   --stop         stop slurmd, slurmctld and munged, then exit
# Environment: SLURM_PARTITION (default: debug), SLURM_CLUSTER (default: single),
#   SLURM_MEM_MB (the node's RealMemory in MB; default: what `slurmd -C` reports).
set -euo pipefail

install=1
stop=0
for a in "$@"; do
    case "$a" in
        --no-install) install=0 ;;
        --stop) stop=1 ;;
        -h | --help)
            sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "single-node.sh: unknown argument '$a' (try --help)" >&2
            exit 2
            ;;
    esac
done

if [ "$(id -u)" -ne 0 ]; then
    echo "single-node.sh: run as root (it installs packages, writes /etc/slurm and starts daemons)" >&2
    exit 2
fi

conf=/etc/slurm/slurm.conf
partition=${SLURM_PARTITION:-debug}
cluster=${SLURM_CLUSTER:-single}
marker="# written by workflows/slurm/single-node.sh"

log() { printf '[single-node] %s\n' "$*"; }

# Stop a daemon by its pid file, waiting for it to go.
stop_pid() {
    local name=$1 pidfile=$2 pid
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        log "stopping $name (pid $pid)"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
    fi
    rm -f "$pidfile"
}

stop_all() {
    stop_pid slurmd /run/slurmd.pid
    stop_pid slurmctld /run/slurmctld.pid
    if [ -S /run/munge/munge.socket.2 ]; then
        log "stopping munged"
        /usr/sbin/munged --stop 2>/dev/null || stop_pid munged /run/munge/munged.pid
    fi
}

if [ "$stop" = 1 ]; then
    stop_all
    exit 0
fi

# 1. Packages.
if [ "$install" = 1 ]; then
    if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
        || ! command -v srun >/dev/null || ! command -v munged >/dev/null; then
        log "installing slurm-wlm and munge with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends slurm-wlm munge
    fi
fi
for b in munged munge unmunge slurmctld slurmd sinfo srun scontrol; do
    command -v "$b" >/dev/null || {
        echo "single-node.sh: '$b' not found; install slurm-wlm and munge" >&2
        exit 1
    }
done
log "$(slurmctld -V), $(munged -V 2>&1 | awk "{print \$1; exit}")"

# Restart cleanly when something is already running.
stop_all

# 2. Munge.
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge
install -d -o munge -g munge -m 0700 /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    log "creating /etc/munge/munge.key"
    if command -v mungekey >/dev/null; then
        mungekey --create --keyfile=/etc/munge/munge.key
    else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
log "starting munged"
runuser -u munge -- /usr/sbin/munged
for _ in $(seq 50); do
    [ -S /run/munge/munge.socket.2 ] && break
    sleep 0.1
done
munge -n | unmunge >/dev/null || {
    echo "single-node.sh: munge does not work; see /var/log/munge/munged.log" >&2
    exit 1
}

# 3. slurm.conf.
host=$(hostname -s)
# `slurmd -C` prints "NodeName=host CPUs=.. Boards=.. SocketsPerBoard=.. CoresPerSocket=..
# ThreadsPerCore=.. RealMemory=.."; keep its hardware fields as they are.
node=$(slurmd -C | head -n 1)
case "$node" in
    NodeName=*) ;;
    *)
        echo "single-node.sh: unexpected 'slurmd -C' output: $node" >&2
        exit 1
        ;;
esac
cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$node")
mem=${SLURM_MEM_MB:-$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node")}
hw=$(sed -e 's/^NodeName=[^ ]* //' -e 's/ *RealMemory=[0-9]*//' <<<"$node")
defmem=$((mem / cpus))

if [ -f "$conf" ] && ! grep -qF "$marker" "$conf"; then
    backup="$conf.before-single-node.$(date +%Y%m%d%H%M%S)"
    log "keeping the existing $conf as $backup"
    cp -p "$conf" "$backup"
fi
install -d -m 0755 /etc/slurm
install -d -o slurm -g slurm -m 0755 /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm
tmp=$(mktemp "$conf.XXXXXX")
cat >"$tmp" <<EOF
$marker
# One machine: $host is the controller and the only node. No cgroups, no accounting database.
ClusterName=$cluster
SlurmctldHost=$host
SlurmUser=slurm
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
SwitchType=switch/none
# Without systemd or cgroup v2 delegation (containers): track processes by parent pid, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# No mail from jobs (no mail program needed).
MailProg=/bin/true
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$defmem
ReturnToService=2
# Finished jobs stay visible to squeue/scontrol for 10 minutes (workflow managers poll them).
MinJobAge=600
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$host $hw RealMemory=$mem State=UNKNOWN
PartitionName=$partition Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
chmod 0644 "$tmp"
mv -f "$tmp" "$conf"
log "wrote $conf: node $host, $cpus CPUs, ${mem} MB, partition $partition"

# 4. Daemons.
log "starting slurmctld"
slurmctld
for _ in $(seq 50); do
    scontrol ping 2>/dev/null | grep -q UP && break
    sleep 0.2
done
scontrol ping | grep -q UP || {
    echo "single-node.sh: slurmctld did not come up; see /var/log/slurm/slurmctld.log" >&2
    tail -n 20 /var/log/slurm/slurmctld.log >&2 || true
    exit 1
}
log "starting slurmd"
slurmd
state=""
for _ in $(seq 60); do
    state=$(sinfo -h -n "$host" -o '%T' 2>/dev/null | head -n 1)
    case "$state" in idle* | mixed* | allocated*) break ;; esac
    sleep 0.5
done
case "$state" in
    idle* | mixed* | allocated*) ;;
    *)
        log "node state '$state'; resuming it"
        scontrol update NodeName="$host" State=RESUME 2>/dev/null || true
        sleep 2
        state=$(sinfo -h -n "$host" -o '%T' | head -n 1)
        ;;
esac
sinfo
case "$state" in
    idle* | mixed* | allocated*) ;;
    *)
        echo "single-node.sh: node $host is '$state'; see /var/log/slurm/slurmd.log" >&2
        sinfo -R >&2 || true
        tail -n 20 /var/log/slurm/slurmd.log >&2 || true
        exit 1
        ;;
esac
out=$(timeout 60 srun -N1 -n1 hostname)
if [ "$out" != "$(hostname)" ] && [ "$out" != "$host" ]; then
    echo "single-node.sh: 'srun hostname' printed '$out'" >&2
    exit 1
fi
log "srun hostname: $out"
log "ready: sbatch/srun/squeue work; stop with: $0 --stop"
