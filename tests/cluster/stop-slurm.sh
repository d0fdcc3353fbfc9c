#!/usr/bin/env bash
# Provenance: copied from ../shared/slurm/stop-slurm.sh (the shared cluster scripts, 2026-12-02);
# the project's own from then on (adapted and maintained here; run by tests/cluster/slurm.sh).
# Stop the daemons started by start-slurm.sh: cancel leftover jobs through Slurm, then send
# SIGTERM to each pid read from its pid file, only if /proc/<pid>/comm is the expected name.
set -uo pipefail
RUN=/run/slurm-local
[[ $(id -u) == 0 ]] || { echo "run as root" >&2; exit 1; }
if scontrol ping 2>/dev/null | grep -q "is UP"; then
  jobs=$(squeue -h -o %A | tr '\n' ' ')
  if [[ -n ${jobs// } ]]; then
    echo "[stop-slurm] scancel $jobs"; scancel $jobs
    for _ in $(seq 60); do [[ -z $(squeue -h -o %A) ]] && break; sleep 0.5; done
  fi
fi
stop() {   # stop PIDFILE COMM
  local pid; pid=$(cat "$1" 2>/dev/null) || { echo "[stop-slurm] $2: no pid file"; return; }
  if [[ $pid =~ ^[0-9]+$ && $(cat /proc/"$pid"/comm 2>/dev/null) == "$2" ]]; then
    kill -TERM "$pid"
    for _ in $(seq 300); do [[ -e /proc/$pid ]] || break; sleep 0.1; done
    if [[ $(cat /proc/"$pid"/comm 2>/dev/null) == "$2" ]]; then kill -KILL "$pid"; fi
    echo "[stop-slurm] $2: stopped pid $pid"
  else echo "[stop-slurm] $2: pid $pid not running, stale pid file removed"; fi
  rm -f "$1"
}
stop $RUN/slurmd.pid slurmd
stop $RUN/slurmctld.pid slurmctld
stop $RUN/slurmdbd.pid slurmdbd
stop /run/mysqld/mysqld.pid mariadbd
stop /run/munge/munged.pid munged
