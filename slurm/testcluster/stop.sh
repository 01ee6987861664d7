#!/usr/bin/env bash
# Stop the single-machine Slurm test cluster: cancel its jobs, then stop both slurmd,
# slurmctld, slurmdbd, MariaDB and munged. Idempotent: exit 0 when nothing runs.
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
    echo "error: slurm/testcluster/stop.sh must run as root (it stops daemons)" >&2
    exit 2
fi

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
. "$HERE/common.sh"
take_lock

# 1. cancel running/pending jobs so no job processes (slurmstepd) outlive the cluster
if command -v scontrol >/dev/null && live_pid "$TC_RUN_DIR/slurmctld.pid" slurmctld >/dev/null && ctld_up; then
    jobs=$(q squeue -h -o %A | sort -u | tr '\n' ' ' || true)
    if [[ -n "${jobs// /}" ]]; then
        log "cancelling jobs $jobs"
        # shellcheck disable=SC2086
        q scancel $jobs || true
        for ((i = 0; i < 100; i++)); do
            [[ -z "$(q squeue -h -t R,CG,S,CF -o %A || true)" ]] && break
            sleep 0.2
        done
    fi
fi

# 2. Slurm daemons
stop_slurm_daemons

# 3. MariaDB and munged (in parallel; nothing needs them once slurmdbd is gone)
if [[ -x /etc/init.d/mariadb ]] && { [[ -e "$MARIADB_PID" ]] || pgrep -x mariadbd >/dev/null; }; then
    (/etc/init.d/mariadb stop >/dev/null 2>&1 || stop_pidfiles "$MARIADB_PID:mariadbd:MariaDB"
     log "stopped MariaDB") &
fi
stop_pidfiles "$MUNGE_PID:munged:munged"
wait

echo "testcluster: stopped"
