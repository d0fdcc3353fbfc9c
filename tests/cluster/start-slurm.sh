#!/usr/bin/env bash
# Bring up a one-node Slurm cluster on localhost (Debian 12 as root), idempotently:
#   munged -> [mariadbd -> slurmdbd] -> slurmctld -> slurmd; node "localhost", partition "debug".
# Installs the Debian packages it needs (munge, slurm-wlm, slurmdbd, mariadb-server) when missing,
# without letting their install scripts start any daemon. A daemon whose pid file names a live
# process of the right name is left alone (and is not recorded as started by this call).
#
# Everything this script writes lives in RUN, LOG and STATE below, plus /etc/slurm/{slurm,gres,
# slurmdbd}.conf (marked as written here); MariaDB gets its own data dir, socket and port under
# STATE/RUN, so a system MariaDB is never touched. `stop-slurm.sh --purge` removes all of it.
#
# Knobs (environment):
#   SLURM_LOCAL_ACCOUNTING=1|0  slurmdbd + MariaDB (needed by sacct, which the Snakemake executor
#                               plugin uses for job status)                      default 1
#   SLURM_LOCAL_CPUS            CPUs of the node                                   default nproc
#   SLURM_LOCAL_MEM_MB          RealMemory of the node (capped at 80 % of RAM)     default 8000
#   SLURM_LOCAL_FAKE_GPU=1|0    one GRES gpu backed by /dev/null, so jobs asking for --gpus=1 are
#                               scheduled (Slurm sets CUDA_VISIBLE_DEVICES; there is no device)
#   SLURM_LOCAL_DB_PORT         TCP port of the private MariaDB on 127.0.0.1       default 3399
#   SLURM_LOCAL_STARTED=FILE    append "PIDFILE COMM PID" for each daemon this call started, so the
#                               caller can stop exactly those (stop-slurm.sh --only FILE)
# The config is rewritten on every call; after changing knobs run stop-slurm.sh first.
set -euo pipefail
ACCT=${SLURM_LOCAL_ACCOUNTING:-1}; CPUS=${SLURM_LOCAL_CPUS:-$(nproc)}
MEM=${SLURM_LOCAL_MEM_MB:-8000}; GPU=${SLURM_LOCAL_FAKE_GPU:-1}; DB_PORT=${SLURM_LOCAL_DB_PORT:-3399}
STARTED=${SLURM_LOCAL_STARTED:-}; TIMEOUT=120
RUN=/run/slurm-local LOG=/var/log/slurm-local STATE=/var/lib/slurm-local
MUNGE_PID=/run/munge/munged.pid DB_PID=$RUN/mysql/mariadbd.pid DB_SOCK=$RUN/mysql/mariadbd.sock DB_DIR=$STATE/mysql
MARK="# written by unet-pipeline tests/cluster/start-slurm.sh"
T0=$(date +%s%N)
log() { printf '[start-slurm %6.2fs] %s\n' "$(( ($(date +%s%N) - T0) / 10000000 ))e-2" "$*"; }
die() { log "ERROR: $*"; exit 1; }
[[ $(id -u) == 0 ]] || die "run as root"
command -v apt-get >/dev/null && command -v dpkg-query >/dev/null || die "needs Debian/Ubuntu (apt-get, dpkg-query)"

# --- packages -------------------------------------------------------------------------------
pkgs=(munge slurm-wlm slurmctld slurmd slurm-client); [[ $ACCT == 1 ]] && pkgs+=(slurmdbd mariadb-server)
missing=(); for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  own_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then   # stop package scripts from starting daemons
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; own_policy=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [[ $own_policy == 1 ]]; then rm -f /usr/sbin/policy-rc.d; trap - EXIT; fi
fi
log "packages ok: slurm $(dpkg-query -W -f='${Version}' slurmctld)"

# --- helpers --------------------------------------------------------------------------------
running() { local p; p=$(cat "$1" 2>/dev/null) && [[ $p =~ ^[0-9]+$ && $(cat /proc/"$p"/comm 2>/dev/null) == "$2" ]]; }
record() {   # record PIDFILE COMM LOG [PID]: wait for the pid file of a daemon this call started
  local end=$(( $(date +%s) + TIMEOUT ))  # and note it in $STARTED; PID: the launched process, if known
  until running "$1" "$2"; do
    if [[ -n ${4:-} ]] && ! kill -0 "$4" 2>/dev/null; then tail -n 5 "$3" >&2 || true; die "$2 exited at start"; fi
    (( $(date +%s) < end )) || { tail -n 5 "$3" >&2 || true; die "$2 wrote no pid file $1"; }
    sleep 0.2
  done
  if [[ -n $STARTED ]]; then echo "$1 $2 $(cat "$1")" >>"$STARTED"; fi
}
wait_for() {   # wait_for WHAT [PIDFILE COMM LOG] -- CMD...: poll CMD; fail fast if the daemon died
  local what=$1 end=$(( $(date +%s) + TIMEOUT )) w=(); shift
  while [[ $1 != -- ]]; do w+=("$1"); shift; done; shift
  until "$@" >/dev/null 2>&1; do
    if ((${#w[@]})) && [[ -s ${w[0]} ]] && ! running "${w[0]}" "${w[1]}"; then
      tail -n 5 "${w[2]}" >&2 || true; die "${w[1]} died ($what)"; fi
    (( $(date +%s) < end )) || die "timeout: $what"; sleep 0.5
  done; log "$what"
}

# --- configuration --------------------------------------------------------------------------
install -d -o slurm -g slurm "$RUN" "$LOG" "$STATE" "$STATE/slurmctld"
install -d "$STATE/slurmd"; install -d -o munge -g munge /run/munge /var/log/munge /var/lib/munge
cap=$(awk '/MemTotal/{print int($2/1024*0.8)}' /proc/meminfo); (( MEM > cap )) && MEM=$cap
if [[ $ACCT == 1 ]]; then
  acct=$'AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=localhost\nJobAcctGatherType=jobacct_gather/linux'
  [[ $GPU == 1 ]] && acct+=$'\nAccountingStorageTRES=gres/gpu'   # only valid with slurmdbd
else acct=$'AccountingStorageType=accounting_storage/none\nJobAcctGatherType=jobacct_gather/none'; fi
gres=""; if [[ $GPU == 1 ]]; then gres="Gres=gpu:1"; acct+=$'\nGresTypes=gpu'; fi
for f in slurm.conf gres.conf slurmdbd.conf; do   # never overwrite a config this script did not write
  [[ ! -s /etc/slurm/$f ]] || grep -qxF "$MARK" /etc/slurm/$f || die "/etc/slurm/$f exists and was not written by this script"
done
install -d /etc/slurm
cat >/etc/slurm/slurm.conf <<EOF
$MARK
ClusterName=localcluster
SlurmctldHost=localhost
SlurmUser=slurm
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
MpiDefault=none
ReturnToService=2
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
EnforcePartLimits=ALL
MinJobAge=300
$acct
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM $gres State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
if [[ $GPU == 1 ]]; then printf '%s\nNodeName=localhost Name=gpu File=/dev/null\n' "$MARK" >/etc/slurm/gres.conf
else rm -f /etc/slurm/gres.conf; fi

# --- munge ----------------------------------------------------------------------------------
[[ -s /etc/munge/munge.key ]] || mungekey --create --keyfile=/etc/munge/munge.key
chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
if ! running $MUNGE_PID munged; then
  runuser -u munge -- /usr/sbin/munged --pid-file=$MUNGE_PID; record $MUNGE_PID munged /var/log/munge/munged.log; fi
wait_for "munged up" -- bash -c 'munge -n | unmunge'

# --- accounting: a private MariaDB (own datadir, socket, port) and slurmdbd ------------------
if [[ $ACCT == 1 ]]; then
  install -d -o mysql -g mysql "$DB_DIR" "$RUN/mysql"   # mariadbd runs as mysql: its own dirs
  touch $LOG/mariadb.log; chown mysql:mysql $LOG/mariadb.log
  [[ -d $DB_DIR/mysql ]] || mariadb-install-db --no-defaults --user=mysql --datadir="$DB_DIR" \
    --auth-root-authentication-method=socket >/dev/null
  if ! running $DB_PID mariadbd; then   # mariadbd does not daemonize: detach it with setsid
    setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$DB_DIR" --socket=$DB_SOCK \
      --bind-address=127.0.0.1 --port="$DB_PORT" --pid-file=$DB_PID --log-error=$LOG/mariadb.log \
      </dev/null >/dev/null 2>&1 &
    record $DB_PID mariadbd $LOG/mariadb.log $!
  fi
  wait_for "mariadbd up" -- bash -c "mariadb-admin --no-defaults --socket=$DB_SOCK ping && test -s $DB_PID"
  pw=$(sed -n 's/^StoragePass=//p' /etc/slurm/slurmdbd.conf 2>/dev/null || true)
  [[ -n $pw ]] || pw=$(head -c 64 /dev/urandom | base64 | tr -dc A-Za-z0-9 | head -c 24)
  mariadb --no-defaults --socket=$DB_SOCK -uroot -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1'; ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pw';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
  install -m 600 -o slurm -g slurm /dev/stdin /etc/slurm/slurmdbd.conf <<EOF
$MARK
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=$pw
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
EOF
  if ! running $RUN/slurmdbd.pid slurmdbd; then /usr/sbin/slurmdbd; record $RUN/slurmdbd.pid slurmdbd $LOG/slurmdbd.log; fi
  wait_for "slurmdbd up" $RUN/slurmdbd.pid slurmdbd $LOG/slurmdbd.log -- sacctmgr -n list cluster
  sacctmgr -nP list cluster format=cluster | grep -qx localcluster || sacctmgr -i add cluster localcluster >/dev/null
  sacctmgr -nP list account format=account | grep -qx local || sacctmgr -i add account local >/dev/null
  sacctmgr -nP list assoc user=root format=account | grep -qx local || sacctmgr -i add user root Account=local >/dev/null
else rm -f /etc/slurm/slurmdbd.conf; fi

# --- slurmctld, slurmd ----------------------------------------------------------------------
if ! running $RUN/slurmctld.pid slurmctld; then /usr/sbin/slurmctld; record $RUN/slurmctld.pid slurmctld $LOG/slurmctld.log; fi
wait_for "slurmctld up" $RUN/slurmctld.pid slurmctld $LOG/slurmctld.log -- bash -c 'scontrol ping | grep -q "is UP"'
if ! running $RUN/slurmd.pid slurmd; then /usr/sbin/slurmd -N localhost; record $RUN/slurmd.pid slurmd $LOG/slurmd.log; fi
node_ready() {
  case $(sinfo -h -N -n localhost -o %t) in
    idle|mix|alloc) return 0 ;;
    down*|drain*|drng*) scontrol update NodeName=localhost State=RESUME; return 1 ;;
    *) return 1 ;;
  esac
}
wait_for "node ready" $RUN/slurmd.pid slurmd $LOG/slurmd.log -- node_ready
timeout 60 srun -n1 -t 1 --mem=50 true || die "smoke test 'srun true' failed"
log "srun smoke test ok; pids: munged=$(cat $MUNGE_PID)$( [[ $ACCT == 1 ]] && echo " mariadbd=$(cat $DB_PID) slurmdbd=$(cat $RUN/slurmdbd.pid)") slurmctld=$(cat $RUN/slurmctld.pid) slurmd=$(cat $RUN/slurmd.pid)"
log "$(sinfo -h -o 'partition %P: %D node(s) %t, %c cpus, %m MB, gres %G')"
