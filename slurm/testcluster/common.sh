# shellcheck shell=bash disable=SC2034
# Shared settings and helpers for start.sh and stop.sh (sourced, not run).
# Every path is fixed so that stop.sh finds what start.sh started.

TC_NAME=toolkit-test
TC_NODES=(a100-node h100-node)
TC_CONF_DIR=/etc/slurm                      # Debian's default: sinfo/sbatch find it without SLURM_CONF
TC_LOG_DIR=/var/log/slurm-testcluster
TC_STATE_DIR=/var/spool/slurm-testcluster   # ctld/ (StateSaveLocation), d/<node>/ (SlurmdSpoolDir)
TC_RUN_DIR=/run/slurm-testcluster           # pid files
TC_DB_NAME=slurm_acct_db
TC_DB_USER=slurm
TC_DB_PASS=toolkit-testcluster              # local-only test database, reachable through the socket only
MUNGE_PID=/run/munge/munged.pid
MARIADB_PID=/run/mysqld/mysqld.pid

log() { printf 'testcluster: %s\n' "$*" >&2; }

# pid from a pid file if that process is alive and is the expected program (guards against reused pids)
live_pid() { # <pidfile> <comm>
    local pid
    [[ -r "$1" ]] || return 1
    pid=$(tr -dc '0-9' <"$1")
    [[ -n "$pid" && -r "/proc/$pid/comm" ]] || return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$2" ]] || return 1
    echo "$pid"
}

slurmd_pidfile() { echo "$TC_RUN_DIR/slurmd-$1.pid"; }

# terminate processes given as "<pidfile>:<comm>:<label>" (all signalled at once, which is
# faster: each Slurm daemon takes ~2 s to exit); SIGKILL after STOP_TIMEOUT seconds
STOP_TIMEOUT=${STOP_TIMEOUT:-20}
stop_pidfiles() {
    local spec pidfile comm label pid i alive
    local -a pids=() labels=() files=()
    for spec in "$@"; do
        IFS=: read -r pidfile comm label <<<"$spec"
        if pid=$(live_pid "$pidfile" "$comm"); then
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid") labels+=("$label") files+=("$pidfile")
        else
            rm -f "$pidfile"
        fi
    done
    ((${#pids[@]})) || return 0
    for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
        alive=0
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        ((alive)) || break
        sleep 0.1
    done
    for i in "${!pids[@]}"; do
        if kill -0 "${pids[$i]}" 2>/dev/null; then
            log "${labels[$i]} (pid ${pids[$i]}) ignored SIGTERM for ${STOP_TIMEOUT}s, sending SIGKILL"
            kill -KILL "${pids[$i]}" 2>/dev/null || true
        fi
        rm -f "${files[$i]}"
        log "stopped ${labels[$i]} (pid ${pids[$i]})"
    done
}

# scontrol/sinfo/sacctmgr never wait long on a dead daemon
q() { timeout 10 "$@" 2>/dev/null; }

ctld_up() { q scontrol ping | grep -q 'is UP'; }

# "<node> <STATE>" per node, e.g. "a100-node IDLE" or "h100-node IDLE+DRAIN"
node_states() {
    q scontrol show node -o | sed -n 's/^NodeName=\([^ ]*\) .* State=\([^ ]*\) .*/\1 \2/p'
}

# true when every node is usable: IDLE/MIXED/ALLOCATED without DRAIN/DOWN/NOT_RESPONDING/...
nodes_usable() {
    local states n=0 node state
    states=$(node_states) || return 1
    while read -r node state; do
        [[ -n "$node" ]] || continue
        n=$((n + 1))
        [[ "$state" =~ ^(IDLE|MIXED|ALLOCATED)(\+(COMPLETING|PLANNED))*$ ]] || return 1
    done <<<"$states"
    [[ $n -eq ${#TC_NODES[@]} ]]
}

stop_slurm_daemons() {
    local node
    local -a specs=("$TC_RUN_DIR/slurmctld.pid:slurmctld:slurmctld")
    for node in "${TC_NODES[@]}"; do
        specs+=("$(slurmd_pidfile "$node"):slurmd:slurmd $node")
    done
    stop_pidfiles "${specs[@]}"
    # after slurmctld, which sends its last accounting records to slurmdbd
    stop_pidfiles "$TC_RUN_DIR/slurmdbd.pid:slurmdbd:slurmdbd"
}

# start.sh and stop.sh never run at the same time (e.g. test workers starting the cluster together)
take_lock() {
    exec 9>/run/slurm-testcluster.lock
    flock -w 300 9 || { echo "error: testcluster: another start.sh/stop.sh holds /run/slurm-testcluster.lock" >&2; exit 1; }
}
