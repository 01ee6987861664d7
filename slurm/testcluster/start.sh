#!/usr/bin/env bash
# Start (or check) the single-machine Slurm test cluster "toolkit-test":
# munged, MariaDB, slurmdbd, slurmctld and two slurmd (a100-node, h100-node) with fake GPUs.
# Idempotent: when everything is already up and healthy with the same config it returns at once.
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
    echo "error: slurm/testcluster/start.sh must run as root (it installs packages and starts daemons)" >&2
    exit 2
fi

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
. "$HERE/common.sh"
take_lock

TIMEOUT=${TESTCLUSTER_TIMEOUT:-60}
PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)
export DEBIAN_FRONTEND=noninteractive

die() { # <message> [log files to show]
    local f
    echo "error: testcluster: $1" >&2
    shift
    for f in "$@"; do
        [[ -r "$f" ]] || continue
        echo "---- last lines of $f ----" >&2
        tail -n 25 "$f" >&2
    done
    exit 1
}

# wait_for <seconds> <command...>: poll until the command succeeds
wait_for() {
    local secs=$1 deadline
    shift
    deadline=$((SECONDS + secs))
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.25
    done
}

render() { # <template> <dest>
    sed -e "s|@STATE_DIR@|$TC_STATE_DIR|g" -e "s|@LOG_DIR@|$TC_LOG_DIR|g" \
        -e "s|@RUN_DIR@|$TC_RUN_DIR|g" -e "s|@DB_USER@|$TC_DB_USER|g" \
        -e "s|@DB_PASS@|$TC_DB_PASS|g" -e "s|@DB_NAME@|$TC_DB_NAME|g" "$1" >"$2"
}

up_line() {
    local states all_idle=1 node state summary=""
    states=$(node_states)
    while read -r node state; do
        [[ "$state" == IDLE ]] || all_idle=0
        summary+="${summary:+, }$node ${state,,}"
    done <<<"$states"
    if ((all_idle)); then
        echo "testcluster: up (nodes $(IFS=,; echo "${TC_NODES[*]}") idle)"
    else
        echo "testcluster: up (nodes $summary)"
    fi
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
mariadb_ok() { q mariadb-admin --no-defaults -uroot ping >/dev/null 2>&1 || q mysqladmin ping >/dev/null 2>&1; }
dbd_ok() { live_pid "$TC_RUN_DIR/slurmdbd.pid" slurmdbd >/dev/null && q sacctmgr -n -P list cluster format=cluster >/dev/null; }

all_healthy() {
    local node
    munge_ok && mariadb_ok && dbd_ok || return 1
    live_pid "$TC_RUN_DIR/slurmctld.pid" slurmctld >/dev/null && ctld_up || return 1
    for node in "${TC_NODES[@]}"; do
        live_pid "$(slurmd_pidfile "$node")" slurmd >/dev/null || return 1
    done
    nodes_usable
}

# ---- 0. render the configuration; running daemons are kept only if it is what is installed
CONF_FILES=(slurm.conf gres.conf cgroup.conf slurmdbd.conf)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
render "$HERE/slurm.conf.in" "$TMP/slurm.conf"
cp "$HERE/gres.conf" "$HERE/cgroup.conf" "$TMP/"
render "$HERE/slurmdbd.conf.in" "$TMP/slurmdbd.conf"
config_installed() {
    local f
    for f in "${CONF_FILES[@]}"; do cmp -s "$TMP/$f" "$TC_CONF_DIR/$f" || return 1; done
}

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'; }

missing=()
for p in "${PACKAGES[@]}"; do installed "$p" || missing+=("$p"); done

if ((${#missing[@]} == 0)) && config_installed && all_healthy; then
    up_line
    exit 0
fi

# ---- 1. packages
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    # keep maintainer scripts from starting daemons (no systemd here; we start them below)
    own_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        own_policy=1
        trap 'rm -rf "$TMP"; rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends -o Dpkg::Use-Pty=0 "${missing[@]}" >"$TMP/apt.log" 2>&1 ||
        die "apt-get install ${missing[*]} failed" "$TMP/apt.log"
    if ((own_policy)); then
        rm -f /usr/sbin/policy-rc.d
        trap 'rm -rf "$TMP"' EXIT
    fi
fi

# ---- 2. directories, fake GPUs, configuration
mkdir -p "$TC_CONF_DIR" "$TC_LOG_DIR" "$TC_RUN_DIR" "$TC_STATE_DIR/ctld"
for node in "${TC_NODES[@]}"; do mkdir -p "$TC_STATE_DIR/d/$node"; done

minor=0
for gpu in a100 h100; do
    for i in 0 1 2 3; do
        dev=/dev/fake_${gpu}_$i
        if [[ ! -c "$dev" ]]; then
            rm -f "$dev"
            mknod -m 0666 "$dev" c 195 "$minor"
        fi
        minor=$((minor + 1))
    done
done

if ! config_installed; then
    # Slurm daemons started with another configuration must restart
    stop_slurm_daemons
fi
install -m 0644 "$TMP/slurm.conf" "$TC_CONF_DIR/slurm.conf"
install -m 0644 "$TMP/gres.conf" "$TC_CONF_DIR/gres.conf"
install -m 0644 "$TMP/cgroup.conf" "$TC_CONF_DIR/cgroup.conf"
install -m 0600 -o root -g root "$TMP/slurmdbd.conf" "$TC_CONF_DIR/slurmdbd.conf"

# daemons are started with "9>&-": they must not inherit the lock (fd 9) of take_lock

# ---- 3. munge
if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating /etc/munge/munge.key"
    if command -v mungekey >/dev/null; then
        mungekey --create --force --keyfile=/etc/munge/munge.key
    else
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    fi
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
if ! munge_ok; then
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 0755 /run/munge
    if pid=$(live_pid "$MUNGE_PID" munged); then kill -TERM "$pid"; sleep 0.5; fi
    rm -f "$MUNGE_PID"
    runuser -u munge -- /usr/sbin/munged --force 9>&- ||
        die "munged did not start" /var/log/munge/munged.log
    wait_for 10 munge_ok || die "munge does not work" /var/log/munge/munged.log
    log "started munged"
fi

# ---- 4. MariaDB with the accounting database
if ! mariadb_ok; then
    /etc/init.d/mariadb start >"$TMP/mariadb.log" 2>&1 9>&- ||
        die "MariaDB did not start" "$TMP/mariadb.log" /var/log/mysql/error.log
    wait_for 30 mariadb_ok || die "MariaDB does not answer" "$TMP/mariadb.log" /var/log/mysql/error.log
    log "started MariaDB"
fi
mariadb -uroot <<SQL || die "could not create the accounting database"
CREATE DATABASE IF NOT EXISTS $TC_DB_NAME;
CREATE USER IF NOT EXISTS '$TC_DB_USER'@'localhost' IDENTIFIED BY '$TC_DB_PASS';
ALTER USER '$TC_DB_USER'@'localhost' IDENTIFIED BY '$TC_DB_PASS';
GRANT ALL ON $TC_DB_NAME.* TO '$TC_DB_USER'@'localhost';
SQL

# ---- 5. slurmdbd, cluster registration
if ! live_pid "$TC_RUN_DIR/slurmdbd.pid" slurmdbd >/dev/null; then
    slurmdbd 9>&- || die "slurmdbd did not start" "$TC_LOG_DIR/slurmdbd.log"
    log "started slurmdbd"
fi
wait_for "$TIMEOUT" dbd_ok || die "slurmdbd does not answer after ${TIMEOUT}s" "$TC_LOG_DIR/slurmdbd.log"
if ! q sacctmgr -n -P list cluster format=cluster | grep -qx "$TC_NAME"; then
    q sacctmgr -i add cluster "$TC_NAME" >/dev/null || die "sacctmgr add cluster $TC_NAME failed" "$TC_LOG_DIR/slurmdbd.log"
    log "registered cluster $TC_NAME in slurmdbd"
fi

# ---- 6. slurmctld
if ! live_pid "$TC_RUN_DIR/slurmctld.pid" slurmctld >/dev/null; then
    # -i: a state file that no longer matches the config is dropped instead of being fatal
    slurmctld -i 9>&- || die "slurmctld did not start" "$TC_LOG_DIR/slurmctld.log"
    log "started slurmctld"
fi
wait_for "$TIMEOUT" ctld_up || die "scontrol ping: slurmctld not UP after ${TIMEOUT}s" "$TC_LOG_DIR/slurmctld.log"

# ---- 7. one slurmd per node
for node in "${TC_NODES[@]}"; do
    if ! live_pid "$(slurmd_pidfile "$node")" slurmd >/dev/null; then
        slurmd -N "$node" 9>&- || die "slurmd -N $node did not start" "$TC_LOG_DIR/slurmd-$node.log"
        log "started slurmd $node"
    fi
done

# ---- 8. wait for usable nodes; nodes left drained/down by an earlier run are resumed once
resumed=0
deadline=$((SECONDS + TIMEOUT))
until nodes_usable; do
    if ((!resumed && SECONDS > 3)); then
        while read -r node state; do
            if [[ "$state" =~ DRAIN|DOWN|FAIL ]] && [[ ! "$state" =~ NOT_RESPONDING ]]; then
                log "resuming $node (was $state)"
                q scontrol update nodename="$node" state=resume || true
                resumed=1
            fi
        done < <(node_states)
    fi
    if ((SECONDS >= deadline)); then
        echo "error: testcluster: nodes not idle after ${TIMEOUT}s:" >&2
        node_states >&2 || true
        q scontrol show node -o | grep -o 'Reason=[^=]*' >&2 || true
        die "see the logs" "$TC_LOG_DIR/slurmctld.log" "$TC_LOG_DIR/slurmd-a100-node.log" "$TC_LOG_DIR/slurmd-h100-node.log"
    fi
    sleep 0.25
done

up_line
