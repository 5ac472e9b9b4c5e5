#!/usr/bin/env bash
# A real single-node SLURM for the length of one command:
#
#   bash tests/cluster/slurm.sh COMMAND [ARG ...]
#
# installs Debian's slurm-wlm and munge when they are missing (apt; needs root), writes a slurm.conf
# for this machine (one node with its real CPU count and memory, one partition "main") to
# /etc/slurm/slurm.conf (refusing where one exists; removed at the end), starts munged, slurmctld and
# slurmd with their state and logs in a scratch folder, waits until sinfo shows the node idle, runs
# COMMAND with SLURM_CONF pointing at it, and stops every daemon it started, by pid, however COMMAND
# ends. There is no accounting database: finished jobs are written one per line to
# $SLURM_JOBCOMP_FILE (jobcomp/filetxt), and the executor plugin reads job states with squeue
# (MinJobAge keeps finished jobs visible to it for an hour).
set -euo pipefail

if [ "$#" -eq 0 ]; then
    echo "usage: bash tests/cluster/slurm.sh COMMAND [ARG ...]" >&2
    exit 2
fi

missing=()
for tool in slurmctld slurmd munged sbatch squeue sinfo; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "error: ${missing[*]} missing and not root: install slurm-wlm and munge (apt), or run as root" >&2
        exit 2
    fi
    echo "slurm.sh: installing slurm-wlm and munge (apt)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null
fi

scratch=$(mktemp -d /tmp/slurm-XXXXXX)
host=$(hostname -s)
cpus=$(nproc)
memory_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
mkdir -p "$scratch/state" "$scratch/spool" "$scratch/munge"
cat >"$scratch/slurm.conf" <<EOF
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$scratch/state
SlurmdSpoolDir=$scratch/spool
SlurmctldPidFile=$scratch/slurmctld.pid
SlurmdPidFile=$scratch/slurmd.pid
SlurmctldLogFile=$scratch/slurmctld.log
SlurmdLogFile=$scratch/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$scratch/jobcomp.txt
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
MinJobAge=3600
ReturnToService=2
NodeName=$host CPUs=$cpus RealMemory=$memory_mb State=UNKNOWN
PartitionName=main Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF

pids=()
created_conf=
stop() {
    status=$?
    [ -n "$created_conf" ] && rm -f "$created_conf"
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    if [ "$status" != 0 ]; then
        echo "slurm.sh: the daemons' logs are kept in $scratch" >&2
    else
        rm -rf "$scratch"
    fi
    exit "$status"
}
trap stop EXIT

# munged: a socket of its own, so that a munged the system already runs is left alone
socket="$scratch/munge/munge.socket"
key=/etc/munge/munge.key
[ -f "$key" ] || { echo "error: $key is missing: reinstall munge" >&2; exit 2; }
/usr/sbin/munged --foreground --force --socket="$socket" --pid-file="$scratch/munge/munged.pid" \
    --key-file="$key" --log-file="$scratch/munge/munged.log" --seed-file="$scratch/munge/munged.seed" \
    >"$scratch/munge/munged.out" 2>&1 &
pids+=("$!")
for _ in $(seq 50); do [ -S "$socket" ] && break; sleep 0.1; done
# slurm's auth/munge plugin finds the socket through AuthInfo
sed -i "s|^AuthType=auth/munge|AuthType=auth/munge\nAuthInfo=socket=$socket|" "$scratch/slurm.conf"

# jobs find the configuration where SLURM's commands look by default (srun inside a job ignores
# SLURM_CONF): /etc/slurm/slurm.conf, unless this machine already has one
system_conf=/etc/slurm/slurm.conf
[ -e "$system_conf" ] && { echo "error: $system_conf exists: this machine has a SLURM of its own" >&2; exit 2; }
mkdir -p /etc/slurm
cp "$scratch/slurm.conf" "$system_conf"
created_conf=$system_conf
export SLURM_CONF="$system_conf" SLURM_JOBCOMP_FILE="$scratch/jobcomp.txt"
slurmctld -D -c >"$scratch/slurmctld.out" 2>&1 &
pids+=("$!")
slurmd -D >"$scratch/slurmd.out" 2>&1 &
pids+=("$!")
for _ in $(seq 100); do
    state=$(sinfo -h -N -o "%T" 2>/dev/null || true)
    [ "$state" = idle ] && break
    sleep 0.2
done
if [ "$(sinfo -h -N -o "%T" 2>/dev/null || true)" != idle ]; then
    echo "error: the SLURM node did not come up idle; see $scratch/slurmctld.log and slurmd.log" >&2
    exit 1
fi
echo "slurm.sh: one node ($host, $cpus CPUs, $memory_mb MB) idle; SLURM_CONF=$SLURM_CONF" >&2
"$@"
