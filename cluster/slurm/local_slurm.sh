#!/usr/bin/env bash
# A real, private Slurm cluster on this one host, for tests and for trying the launcher.
#
#   cluster/slurm/local_slurm.sh start    install (if needed), configure, start, wait until nodes idle
#   cluster/slurm/local_slurm.sh stop     stop exactly the daemons `start` started (by their pid files)
#   cluster/slurm/local_slurm.sh status   sinfo of the private cluster
#   eval "$(cluster/slurm/local_slurm.sh env)"   point sbatch/squeue/scontrol at it (SLURM_CONF)
#
# Debian's munge, slurmctld, slurmd and slurm-client (no systemd needed). Everything lives under
# $LOCAL_SLURM_DIR: slurm.conf, a private munge key and socket, state, spool, logs and pid files.
# Nothing is written to /etc, and a system munged/slurmd (if any) is left alone. The K fake nodes
# n1..nK are slurmd processes (`slurmd -N nX`) with their own NodeAddr 127.0.0.1X and port, so
# `sbatch -N 2` gets n[1-2] and Ray on "n2" really listens on a different address.
# Needs root (slurmd runs jobs as their submitting user) and apt-get for the first install.
#
# Settings (environment):
#   LOCAL_SLURM_DIR    state dir                      (default /tmp/rlaif-slurm)
#   LOCAL_SLURM_NODES  number of fake nodes K (<= 9)  (default 3)
#   LOCAL_SLURM_CPUS   CPUs each fake node advertises (default 2)
#   LOCAL_SLURM_GPUS   GPUs each fake node advertises (Gres=gpu:N over N empty files as device files:
#                      Slurm counts and assigns them, nothing opens them) (default 0)
#   LOCAL_SLURM_PORT   slurmctld port; node i uses PORT+i (default 6817)
#   LOCAL_SLURM_WAIT_S seconds to wait for idle nodes  (default 60)
#   LOCAL_SLURM_ISOLATED  nodes (e.g. "n2") whose slurmd, and so every job step on them, runs in its own
#                      mount namespace with a fresh /dev/shm and /tmp, like a second machine
#                      (cluster/isolate_node.sh); LOCAL_SLURM_DIR stays visible there
#   LOCAL_SLURM_SHARE  more paths an isolated node must see even if they lie under /tmp (checkout, venv)
set -euo pipefail

DIR=${LOCAL_SLURM_DIR:-/tmp/rlaif-slurm}
NODES=${LOCAL_SLURM_NODES:-3}
CPUS=${LOCAL_SLURM_CPUS:-2}
GPUS=${LOCAL_SLURM_GPUS:-0}
PORT=${LOCAL_SLURM_PORT:-6817}
WAIT_S=${LOCAL_SLURM_WAIT_S:-60}
ISOLATED=${LOCAL_SLURM_ISOLATED:-}
SHARE=${LOCAL_SLURM_SHARE:-}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CONF=$DIR/slurm.conf
MUNGE=$DIR/munge
SOCKET=$MUNGE/munge.socket

log() { echo "local_slurm: $*" >&2; }
die() { log "error: $*"; exit 1; }

install_packages() {
    local missing=()
    for bin in munged slurmctld slurmd sbatch; do command -v "$bin" >/dev/null || missing+=("$bin"); done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    [[ $(id -u) -eq 0 ]] || die "not root: cannot apt-get install munge/slurm (missing: ${missing[*]})"
    command -v apt-get >/dev/null || die "apt-get unavailable: cannot install munge/slurm"
    log "installing munge slurmctld slurmd slurm-client"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends munge slurmctld slurmd slurm-client >/dev/null
}

write_conf() {
    local i
    mkdir -p "$DIR/ctld" "$DIR/d"
    for i in $(seq 1 "$NODES"); do mkdir -p "$DIR/d/n$i"; done
    cat >"$CONF" <<EOF
# Written by cluster/slurm/local_slurm.sh: $NODES fake nodes on one host.
ClusterName=rlaif
SlurmctldHost=localhost
SlurmctldPort=$PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET
StateSaveLocation=$DIR/ctld
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdSpoolDir=$DIR/d/%n
SlurmdPidFile=$DIR/d/%n.pid
SlurmdLogFile=$DIR/d/%n.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
$( ((GPUS > 0)) && echo "GresTypes=gpu" || true)
# Finished jobs stay visible to scontrol show job for 10 min (no accounting database here).
MinJobAge=600
KillWait=10
EOF
    local gres=""
    if ((GPUS > 0)); then
        gres="Gres=gpu:$GPUS"
        # Fake GPUs: empty files as device files, so Slurm counts and assigns them (no cgroup binds them).
        echo "Name=gpu File=$DIR/fakegpu[0-$((GPUS - 1))]" >"$DIR/gres.conf"
        for i in $(seq 0 $((GPUS - 1))); do touch "$DIR/fakegpu$i"; done
    fi
    for i in $(seq 1 "$NODES"); do
        echo "NodeName=n$i NodeAddr=127.0.0.1$i NodeHostname=n$i Port=$((PORT + i)) CPUs=$CPUS RealMemory=4000 $gres State=UNKNOWN" >>"$CONF"
    done
    echo "PartitionName=debug Nodes=n[1-$NODES] Default=YES MaxTime=INFINITE State=UP" >>"$CONF"
}

alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_munge() {
    alive "$MUNGE/munged.pid" && return 0
    install -d -o munge -g munge -m 0711 "$MUNGE"  # munged wants the socket dir searchable by all
    if [[ ! -f $MUNGE/munge.key ]]; then
        runuser -u munge -- mungekey --create --keyfile="$MUNGE/munge.key"
    fi
    runuser -u munge -- munged --socket="$SOCKET" --key-file="$MUNGE/munge.key" \
        --pid-file="$MUNGE/munged.pid" --log-file="$MUNGE/munged.log" --seed-file="$MUNGE/munged.seed"
}

# Poll `cond` (a command) every 0.5 s until it succeeds or `secs` pass.
wait_for() {
    local secs=$1; shift
    local deadline=$((SECONDS + secs))
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.5
    done
}

all_idle() {
    local states
    states=$(sinfo -h -N -o '%T' 2>/dev/null) || return 1
    [[ $(grep -c '^idle$' <<<"$states") -eq $NODES ]]
}

start() {
    [[ $NODES -ge 1 && $NODES -le 9 ]] || die "LOCAL_SLURM_NODES must be 1..9 (NodeAddr 127.0.0.1X)"
    [[ $(id -u) -eq 0 ]] || die "needs root: slurmd starts job steps as the submitting user"
    install_packages
    mkdir -p "$DIR"
    if [[ -f $CONF ]] && alive "$DIR/slurmctld.pid"; then
        local have
        have=$(grep -c '^NodeName=' "$CONF")
        [[ $have -eq $NODES ]] || die "already running with $have nodes, not $NODES: run '$0 stop' first"
        ((GPUS == 0)) || grep -q "Gres=gpu:$GPUS " "$CONF" || die "already running without Gres=gpu:$GPUS: run '$0 stop' first"
        log "already running ($CONF)"
    else
        stop_pids "$DIR"/d/n*.pid  # slurmd left by a crashed run would hold the node ports
        write_conf
        start_munge
        export SLURM_CONF=$CONF
        slurmctld -i -f "$CONF"
        for i in $(seq 1 "$NODES"); do start_slurmd "n$i"; done
    fi
    export SLURM_CONF=$CONF
    if ! wait_for "$WAIT_S" all_idle; then
        sinfo -N >&2 || true
        die "nodes not idle within ${WAIT_S}s; logs in $DIR"
    fi
    log "ready: $NODES nodes idle; export SLURM_CONF=$CONF"
}

# SIGTERM the daemons in these pid files, wait up to 20 s, SIGKILL what is left; remove the files.
# A pid counts only while its command line names $DIR: a stale pid file never hits a reused pid.
start_slurmd() {  # $1 = node name
    if [[ " $ISOLATED " != *" $1 "* ]]; then
        slurmd -N "$1" -f "$CONF"
        return
    fi
    local args=(--share "$DIR") p
    for p in $SHARE; do args+=(--share "$p"); done
    # slurmd daemonizes inside the new namespace; its job steps inherit it.
    "$HERE/../isolate_node.sh" "${args[@]}" -- slurmd -N "$1" -f "$CONF"
}

stop_pids() {
    local pidfile pid pids=()
    for pidfile in "$@"; do
        [[ -f $pidfile ]] || continue
        pid=$(cat "$pidfile")
        ours "$pid" && pids+=("$pid")
        rm -f "$pidfile"
    done
    [[ ${#pids[@]} -gt 0 ]] || return 0
    kill "${pids[@]}" 2>/dev/null || true
    wait_for 20 none_alive "${pids[@]}" || kill -9 "${pids[@]}" 2>/dev/null || true
}

ours() { tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF "$DIR"; }

none_alive() {
    local pid
    for pid in "$@"; do kill -0 "$pid" 2>/dev/null && return 1; done
    return 0
}

stop() {
    if [[ -f $CONF ]] && alive "$DIR/slurmctld.pid"; then
        # Jobs of this private cluster are ours: cancel them so their steps end before slurmd does.
        SLURM_CONF=$CONF squeue -h -o %i | SLURM_CONF=$CONF xargs -r scancel --quiet || true
        SLURM_CONF=$CONF wait_for 30 bash -c '[[ -z $(squeue -h -o %i 2>/dev/null) ]]' || log "jobs still listed"
    fi
    # SIGTERM to every daemon at once (each takes seconds to shut down), then wait; munged last, as
    # slurmctld/slurmd use it until they exit.
    stop_pids "$DIR"/d/n*.pid "$DIR/slurmctld.pid"
    stop_pids "$MUNGE/munged.pid"
    log "stopped"
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) SLURM_CONF=$CONF sinfo -N ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) sed -n '2,20p' "$0"; exit 2 ;;
esac
