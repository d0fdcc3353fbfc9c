#!/usr/bin/env bash
# Provenance: copied from ../shared/slurm/start-slurm.sh (the shared cluster scripts, 2026-12-02);
# the project's own from then on (adapted and maintained here; run by tests/cluster/slurm.sh).
# Bring up a one-node Slurm cluster on localhost (Debian 12, as root), idempotently:
# munged -> [mariadbd -> slurmdbd] -> slurmctld -> slurmd; node "localhost", partition "debug".
# A daemon whose pid file names a live process of the right name is left alone.
# Knobs: SLURM_LOCAL_ACCOUNTING=1|0 (slurmdbd+mariadb, needed for sacct), SLURM_LOCAL_CPUS,
#        SLURM_LOCAL_MEM_MB (8000), SLURM_LOCAL_FAKE_GPU=1|0 (one GRES gpu backed by /dev/null).
# Config is rewritten on every call; after changing knobs run stop-slurm.sh first.
set -euo pipefail
ACCT=${SLURM_LOCAL_ACCOUNTING:-1}; CPUS=${SLURM_LOCAL_CPUS:-$(nproc)}
MEM=${SLURM_LOCAL_MEM_MB:-8000}; GPU=${SLURM_LOCAL_FAKE_GPU:-1}; TIMEOUT=120
RUN=/run/slurm-local LOG=/var/log/slurm-local STATE=/var/lib/slurm-local
MUNGE_PID=/run/munge/munged.pid DB_PID=/run/mysqld/mysqld.pid DB_SOCK=/run/mysqld/mysqld.sock
T0=$(date +%s%N)
log() { printf '[start-slurm %6.2fs] %s\n' "$(( ($(date +%s%N) - T0) / 10000000 ))e-2" "$*"; }
die() { log "ERROR: $*"; exit 1; }
[[ $(id -u) == 0 ]] || die "run as root"

pkgs=(munge slurmctld slurmd slurm-client); [[ $ACCT == 1 ]] && pkgs+=(slurmdbd mariadb-server)
missing=(); for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
if ((${#missing[@]})); then
  own=0; [[ -e /usr/sbin/policy-rc.d ]] || {   # stop package scripts from starting daemons
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; own=1; }
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [[ $own == 1 ]]; then rm -f /usr/sbin/policy-rc.d; fi
fi
log "packages ok: slurm $(dpkg-query -W -f='${Version}' slurmctld)"

running() { local p; p=$(cat "$1" 2>/dev/null) && [[ $p =~ ^[0-9]+$ && $(cat /proc/"$p"/comm 2>/dev/null) == "$2" ]]; }
wait_for() {   # wait_for WHAT [PIDFILE COMM LOG] -- CMD...: poll CMD; fail fast if the daemon died
  local what=$1 end=$(( $(date +%s) + TIMEOUT )) w=(); shift
  while [[ $1 != -- ]]; do w+=("$1"); shift; done; shift
  until "$@" >/dev/null 2>&1; do
    if ((${#w[@]})) && [[ -s ${w[0]} ]] && ! running "${w[0]}" "${w[1]}"; then
      tail -n 5 "${w[2]}" >&2; die "${w[1]} died ($what)"; fi
    (( $(date +%s) < end )) || die "timeout: $what"; sleep 0.5
  done; log "$what"
}

install -d -o slurm -g slurm "$RUN" "$LOG" "$STATE" "$STATE/slurmctld"
install -d "$STATE/slurmd"; install -d -o munge -g munge /run/munge /var/log/munge /var/lib/munge
(( MEM > $(awk '/MemTotal/{print int($2/1024*0.8)}' /proc/meminfo) )) && MEM=$(awk '/MemTotal/{print int($2/1024*0.8)}' /proc/meminfo)
if [[ $ACCT == 1 ]]; then
  acct=$'AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=localhost\nJobAcctGatherType=jobacct_gather/linux'
  [[ $GPU == 1 ]] && acct+=$'\nAccountingStorageTRES=gres/gpu'   # only valid with slurmdbd
else acct=$'AccountingStorageType=accounting_storage/none\nJobAcctGatherType=jobacct_gather/none'; fi
gres=""; if [[ $GPU == 1 ]]; then gres="Gres=gpu:1"; acct+=$'\nGresTypes=gpu'; fi
cat >/etc/slurm/slurm.conf <<EOF
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
if [[ $GPU == 1 ]]; then echo "NodeName=localhost Name=gpu File=/dev/null" >/etc/slurm/gres.conf
else rm -f /etc/slurm/gres.conf; fi

[[ -s /etc/munge/munge.key ]] || mungekey --create --keyfile=/etc/munge/munge.key
chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
running $MUNGE_PID munged || runuser -u munge -- /usr/sbin/munged --pid-file=$MUNGE_PID
wait_for "munged up" -- bash -c 'munge -n | unmunge'

if [[ $ACCT == 1 ]]; then
  install -d -o mysql -g mysql /run/mysqld
  [[ -d /var/lib/mysql/mysql ]] || mariadb-install-db --user=mysql >/dev/null
  if ! running $DB_PID mariadbd; then   # mariadbd does not daemonize: detach it with setsid
    setsid /usr/sbin/mariadbd --user=mysql --skip-networking --socket=$DB_SOCK \
      --pid-file=$DB_PID --log-error=$LOG/mariadb.log </dev/null >/dev/null 2>&1 &
  fi
  wait_for "mariadbd up" -- bash -c "mariadb-admin --socket=$DB_SOCK ping && test -s $DB_PID"
  pw=$(sed -n 's/^StoragePass=//p' /etc/slurm/slurmdbd.conf 2>/dev/null || true)
  [[ -n $pw ]] || pw=$(head -c 64 /dev/urandom | base64 | tr -dc A-Za-z0-9 | head -c 24)
  mariadb --socket=$DB_SOCK -uroot -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost'; ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$pw';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
  install -m 600 -o slurm -g slurm /dev/stdin /etc/slurm/slurmdbd.conf <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=$pw
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
EOF
  running $RUN/slurmdbd.pid slurmdbd || /usr/sbin/slurmdbd
  wait_for "slurmdbd up" $RUN/slurmdbd.pid slurmdbd $LOG/slurmdbd.log -- sacctmgr -n list cluster
  sacctmgr -nP list cluster format=cluster | grep -qx localcluster || sacctmgr -i add cluster localcluster >/dev/null
  sacctmgr -nP list account format=account | grep -qx local || sacctmgr -i add account local >/dev/null
  sacctmgr -nP list assoc user=root format=account | grep -qx local || sacctmgr -i add user root Account=local >/dev/null
fi

running $RUN/slurmctld.pid slurmctld || /usr/sbin/slurmctld
wait_for "slurmctld up" $RUN/slurmctld.pid slurmctld $LOG/slurmctld.log -- bash -c 'scontrol ping | grep -q "is UP"'
running $RUN/slurmd.pid slurmd || /usr/sbin/slurmd -N localhost
node_ready() {
  case $(sinfo -h -N -n localhost -o %t) in
    idle|mix|alloc) return 0 ;;
    down*|drain*|drng*) scontrol update NodeName=localhost State=RESUME; return 1 ;;
    *) return 1 ;;
  esac
}
wait_for "node ready" $RUN/slurmd.pid slurmd $LOG/slurmd.log -- node_ready
timeout 60 srun -n1 -t 1 --mem=50 true || die "smoke test 'srun true' failed"
log "srun smoke test ok; pids: munged=$(cat $MUNGE_PID) $( [[ $ACCT == 1 ]] && echo "mariadbd=$(cat $DB_PID) slurmdbd=$(cat $RUN/slurmdbd.pid)" ) slurmctld=$(cat $RUN/slurmctld.pid) slurmd=$(cat $RUN/slurmd.pid)"
log "$(sinfo -h -o 'partition %P: %D node(s) %t, %c cpus, %m MB, gres %G')"
