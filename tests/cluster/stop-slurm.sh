#!/usr/bin/env bash
# Stop the daemons of the one-node cluster started by start-slurm.sh, by pid only (never by name):
# cancel leftover jobs through Slurm, then SIGTERM each pid read from its pid file, only if
# /proc/<pid>/comm is the expected name (SIGKILL after 30 s).
#
#   stop-slurm.sh                 stop every daemon named by the cluster's pid files
#   stop-slurm.sh --only FILE     stop only the daemons listed in FILE ("PIDFILE COMM PID" lines,
#                                 written by start-slurm.sh through SLURM_LOCAL_STARTED), and only
#                                 while the pid file still names that same pid
#   --purge                       then, when none of the cluster's daemons is left running, remove
#                                 everything start-slurm.sh wrote: /run/slurm-local,
#                                 /var/log/slurm-local, /var/lib/slurm-local (job state, private
#                                 MariaDB data) and the /etc/slurm/*.conf files it marked as its own.
#                                 Installed packages and /etc/munge/munge.key stay.
set -uo pipefail
RUN=/run/slurm-local LOG=/var/log/slurm-local STATE=/var/lib/slurm-local
MARK="# written by unet-pipeline tests/cluster/start-slurm.sh"
ONLY="" PURGE=0
while (($#)); do
  case $1 in
    --only) ONLY=${2:?--only needs a file}; shift 2 ;;
    --purge) PURGE=1; shift ;;
    *) echo "usage: $0 [--only FILE] [--purge]" >&2; exit 2 ;;
  esac
done
[[ $(id -u) == 0 ]] || { echo "run as root" >&2; exit 1; }
say() { echo "[stop-slurm] $*"; }

# In stopping order: the reverse of start-slurm.sh.
DAEMONS=("$RUN/slurmd.pid slurmd" "$RUN/slurmctld.pid slurmctld" "$RUN/slurmdbd.pid slurmdbd"
         "$RUN/mysql/mariadbd.pid mariadbd" "/run/munge/munged.pid munged")
alive() { [[ $1 =~ ^[0-9]+$ && $(cat /proc/"$1"/comm 2>/dev/null) == "$2" ]]; }
pid_of() { local p; p=$(cat "$1" 2>/dev/null) && [[ $p =~ ^[0-9]+$ ]] && echo "$p"; }
wanted() {   # wanted PIDFILE COMM -> the pid to stop (empty: leave it)
  local pid; pid=$(pid_of "$1") || return 0
  if [[ -z $ONLY ]]; then echo "$pid"; return; fi
  [[ -r $ONLY ]] && grep -qxF "$1 $2 $pid" "$ONLY" && echo "$pid"
}

stop_list=()
for d in "${DAEMONS[@]}"; do
  read -r pidfile comm <<<"$d"
  pid=$(wanted "$pidfile" "$comm")
  if [[ -n $pid ]]; then stop_list+=("$pidfile $comm $pid"); fi
done

# Cancel leftover jobs only when the controller itself is ours to stop.
if printf '%s\n' "${stop_list[@]}" | grep -q " slurmctld " && scontrol ping 2>/dev/null | grep -q "is UP"; then
  jobs=$(squeue -h -o %A | tr '\n' ' ')
  if [[ -n ${jobs// } ]]; then
    say "scancel $jobs"; scancel $jobs
    for _ in $(seq 60); do [[ -z $(squeue -h -o %A) ]] && break; sleep 0.5; done
  fi
fi

for entry in "${stop_list[@]}"; do
  read -r pidfile comm pid <<<"$entry"
  if alive "$pid" "$comm"; then
    kill -TERM "$pid"
    for _ in $(seq 300); do alive "$pid" "$comm" || break; sleep 0.1; done
    if alive "$pid" "$comm"; then say "$comm: pid $pid ignored SIGTERM, SIGKILL"; kill -KILL "$pid"; fi
    say "$comm: stopped pid $pid"
  else say "$comm: pid $pid not running, stale pid file removed"; fi
  [[ $(pid_of "$pidfile") == "$pid" ]] && rm -f "$pidfile"
done
((${#stop_list[@]})) || say "nothing to stop"

if [[ $PURGE == 1 ]]; then
  left=()
  for d in "${DAEMONS[@]}"; do
    read -r pidfile comm <<<"$d"
    [[ $comm == munged ]] && continue   # munge may serve other things; it holds no cluster state
    pid=$(pid_of "$pidfile") && alive "$pid" "$comm" && left+=("$comm=$pid")
  done
  if ((${#left[@]})); then say "not purging: still running ${left[*]}"; exit 1; fi
  rm -rf "$RUN" "$LOG" "$STATE"
  for f in /etc/slurm/slurm.conf /etc/slurm/gres.conf /etc/slurm/slurmdbd.conf; do
    [[ -f $f ]] && grep -qxF "$MARK" "$f" && rm -f "$f"
  done
  say "purged $RUN $LOG $STATE and the marked /etc/slurm configs"
fi
exit 0
