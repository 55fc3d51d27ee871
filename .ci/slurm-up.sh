#!/usr/bin/env bash
# A real single-node Slurm on this machine (Debian, as root or through sudo) for the slurm launcher's tests.
#
# Installs slurm-wlm and munge if missing, writes a minimal /etc/slurm/slurm.conf for this host (one node
# with its CPUs and memory, partition `debug`), starts munged, slurmctld and slurmd, and waits until
# `sinfo` shows the node up. Idempotent: a second call finds everything running and returns at once (a
# changed slurm.conf restarts the daemons). It never overwrites a slurm.conf it did not write.
# Exit status 0 only when the node accepts jobs; otherwise one line says why, with the daemons' last log lines.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { echo "slurm-up: needs root (to install and run slurmd) and sudo is missing" >&2; exit 1; }
    exec sudo -E bash "$0" "$@"
fi

CONF=/etc/slurm/slurm.conf
MARK="# written by robustbench-mtl .ci/slurm-up.sh"
STATE=/var/spool/rbm-slurm          # slurmctld state and slurmd spool
LOGS=/var/log/rbm-slurm
CTLD_PID=/run/rbm-slurmctld.pid
SLURMD_PID=/run/rbm-slurmd.pid
NODE=$(hostname -s)

node_state() { sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | head -n1 || true; }

node_up() { case "$(node_state)" in idle*|mixed*|allocated*|completing*) return 0 ;; *) return 1 ;; esac; }

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop() {
    running "$1" || return 0
    local pid
    pid=$(cat "$1")
    kill "$pid"
    for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
}

fail() {
    echo "slurm-up: $1" >&2
    for log in "$LOGS/slurmctld.log" "$LOGS/slurmd.log"; do
        if [ -f "$log" ]; then echo "--- last lines of $log" >&2; tail -n 15 "$log" >&2; fi
    done
    exit 1
}

install_packages() {
    command -v slurmd >/dev/null && command -v slurmctld >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null && return
    echo "slurm-up: installing slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # a container's policy-rc.d may refuse to start services during the install; they are started below
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
}

write_conf() {
    if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
        echo "slurm-up: $CONF exists and was not written by this script; not touching it" >&2
        exit 1
    fi
    # slurmd -C reports this machine as Slurm sees it (CPUs, sockets, cores, memory); UpTime is not config
    local hw
    hw=$(slurmd -C | head -n1 | sed 's/^NodeName=[^ ]* //')
    mkdir -p /etc/slurm "$STATE/ctld" "$STATE/d" "$LOGS"
    cat > "$CONF.new" <<EOF
$MARK
ClusterName=rbm
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# a requeued job waits cred_expire seconds before it may start again (Slurm's default: 120)
AuthInfo=cred_expire=10
CredType=cred/munge
MpiDefault=none
# no cgroups in containers: track processes through /proc, no task binding, no cgroup.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# look at pending jobs every 2 s, not 60/30 s: a requeued job becomes eligible by time, not by an event
SchedulerParameters=sched_interval=2,bf_interval=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# requeue (by an admin, a preemption, or submitit at a time-out) is what the launcher's resume is tested on
JobRequeue=1
# seconds between SIGTERM and SIGKILL when a job is cancelled or requeued (Slurm's default: 30)
KillWait=2
MinJobAge=300
ReturnToService=2
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
NodeName=$NODE NodeAddr=127.0.0.1 $hw State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    if cmp -s "$CONF.new" "$CONF"; then
        rm "$CONF.new"
        return
    fi
    mv "$CONF.new" "$CONF"
    echo "slurm-up: wrote $CONF ($hw)"
    # daemons started on an older version of the file must read the new one
    stop "$SLURMD_PID"
    stop "$CTLD_PID"
}

start_munge() {
    if [ ! -f /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
    chown -R munge:munge /etc/munge && chmod 700 /etc/munge && chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge
    if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
        runuser -u munge -- /usr/sbin/munged
        sleep 1
    fi
    munge -n </dev/null | unmunge >/dev/null || fail "munged does not answer (see /var/log/munge/munged.log)"
}

start_slurm() {
    running "$CTLD_PID" || slurmctld || fail "slurmctld did not start"
    running "$SLURMD_PID" || slurmd -N "$NODE" || fail "slurmd cannot run on this machine"
}

wait_node() {
    for _ in $(seq 60); do
        if node_up; then
            echo "slurm-up: node $NODE is $(node_state); partition debug accepts jobs"
            return
        fi
        case "$(node_state)" in
            down*|drain*) scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true ;;
        esac
        running "$SLURMD_PID" || fail "slurmd exited (node state: '$(node_state)')"
        sleep 1
    done
    fail "node $NODE is '$(node_state)' after 60 s, not idle"
}

install_packages
write_conf
start_munge
start_slurm
wait_node
