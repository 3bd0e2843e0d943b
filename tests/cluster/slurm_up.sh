#!/usr/bin/env bash
# A real single-host SLURM for CI and local tests (Debian 12, slurm-wlm 22.05, as root, no systemd).
#
# Installs Debian's slurmctld/slurmd/slurm-client/munge when missing, writes /etc/slurm/slurm.conf
# with SLURM_FAKE_NODES (default 2) fake nodes n1..nN on this host (one `slurmd -N nI` each), starts
# munged, slurmctld and the slurmd daemons, and waits until every node is idle.
#
# Idempotent: when the cluster is already up (all nodes answer) it changes nothing.  Every daemon it
# starts is recorded in $STATE_DIR, and tests/cluster/slurm_down.sh stops exactly those.
#
#   SLURM_FAKE_NODES=N   number of fake nodes (default 2)
#   SLURM_ACCOUNTING=1   also MariaDB + slurmdbd so that the real `sacct` works (+~10 s); without it
#                        put tests/cluster/bin first on PATH: its `sacct` stand-in answers submitit.
set -euo pipefail
N=${SLURM_FAKE_NODES:-2}
ACCT=${SLURM_ACCOUNTING:-0}
STATE_DIR=${CONTRA_SLURM_STATE:-/run/contra-slurm}
log() { echo "slurm_up: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
  log "needs root (installs packages, writes /etc/slurm, starts daemons)"; exit 3
fi

nodes_up() {  # every configured node answers and is usable (idle/mixed/allocated)
  local want=$1 got
  got=$(timeout 5 sinfo -h -N -t idle,mix,alloc,completing -o '%N' 2>/dev/null | sort -u | wc -l) || return 1
  [ "$got" -ge "$want" ]
}

if command -v sinfo >/dev/null 2>&1 && [ -f /etc/slurm/slurm.conf ] && nodes_up "$N"; then
  log "already up"; sinfo -N; exit 0
fi

# --- packages ---------------------------------------------------------------------------------
PKGS="slurmctld slurmd slurm-client munge"
[ "$ACCT" = 1 ] && PKGS="$PKGS slurmdbd mariadb-server"
NEED=""; for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || NEED="$NEED $p"; done
if [ -n "$NEED" ]; then
  command -v apt-get >/dev/null 2>&1 || { log "missing packages:$NEED and no apt-get"; exit 3; }
  log "installing$NEED"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q $NEED >/dev/null
fi

mkdir -p "$STATE_DIR" /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
chown munge:munge /run/munge && chmod 0755 /run/munge
[ -s /etc/munge/munge.key ] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key

# record a daemon we started: its pid and its command name, so slurm_down.sh stops only that one
own() {  # own NAME PIDFILE
  local name=$1 pidfile=$2 pid
  for _ in $(seq 1 50); do [ -s "$pidfile" ] && break; sleep 0.1; done
  pid=$(cat "$pidfile" 2>/dev/null) || { log "no pid file $pidfile for $name"; return 1; }
  echo "$pid $(cat /proc/"$pid"/comm 2>/dev/null || echo "$name")" > "$STATE_DIR/$name.pid"
}
running() {  # running PIDFILE: the pid in it is alive
  [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

# --- slurm.conf -------------------------------------------------------------------------------
HOST=$(hostname -s)
CPUS=$(nproc)
MEM=$(( $(awk '/MemTotal/{print $2}' /proc/meminfo) / 1024 - 2048 ))   # MiB, keep 2 GiB spare
{
cat <<CONF
# written by contra tests/cluster/slurm_up.sh: $N fake nodes on host $HOST
ClusterName=ci
SlurmctldHost=${HOST}
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd-%n.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
# debug2: the log shows each time-limit check and the --signal warnings it sends (the time-limit
# tests plan their jobs around those checks: tests/cluster/slurmutil.py await_signal_slot)
SlurmctldDebug=debug2
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
MpiDefault=none
ReturnToService=2
KillWait=5
MinJobAge=300
CONF
if [ "$ACCT" = 1 ]; then
  printf 'AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=localhost\n'
  printf 'JobAcctGatherType=jobacct_gather/linux\n'
else
  printf 'AccountingStorageType=accounting_storage/none\nJobAcctGatherType=jobacct_gather/none\n'
fi
# The fake nodes share this host: each one gets all cores (oversubscribed) and 1/N of the memory.
for i in $(seq 1 "$N"); do
  echo "NodeName=n$i NodeHostname=${HOST} NodeAddr=127.0.0.1 Port=$((17000 + i)) CPUs=${CPUS} RealMemory=$((MEM / N)) State=UNKNOWN"
done
echo "PartitionName=debug Nodes=n[1-$N] Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES"
} > /etc/slurm/slurm.conf

# job hostnames n1..nN must resolve (MASTER_ADDR=n1 for gloo/nccl)
for i in $(seq 1 "$N"); do
  grep -qE "[[:space:]]n$i([[:space:]]|\$)" /etc/hosts || echo "127.0.0.1 n$i" >> /etc/hosts
done

# --- daemons ----------------------------------------------------------------------------------
if ! { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }; then
  runuser -u munge -- /usr/sbin/munged   # only once: a second munged steals the socket
  own munged /run/munge/munged.pid
fi

if [ "$ACCT" = 1 ]; then
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
  if ! mariadb -e 'select 1' >/dev/null 2>&1; then
    /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 --pid-file=/run/mysqld/mysqld.pid \
      >/var/log/slurm/mariadb.log 2>&1 &
    for _ in $(seq 1 60); do mariadb -e 'select 1' >/dev/null 2>&1 && break; sleep 0.5; done
    own mariadbd /run/mysqld/mysqld.pid
  fi
  mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db; CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
  printf 'AuthType=auth/munge\nDbdHost=localhost\nSlurmUser=root\nLogFile=/var/log/slurm/slurmdbd.log\nPidFile=/run/slurmdbd.pid\nStorageType=accounting_storage/mysql\nStorageHost=localhost\nStorageUser=slurm\nStoragePass=slurmpw\nStorageLoc=slurm_acct_db\n' > /etc/slurm/slurmdbd.conf
  chmod 600 /etc/slurm/slurmdbd.conf
  if ! running /run/slurmdbd.pid; then
    slurmdbd
    own slurmdbd /run/slurmdbd.pid
  fi
  for _ in $(seq 1 120); do timeout 5 sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.5; done
  sacctmgr -i -Q add cluster ci >/dev/null 2>&1 || true
fi

if running /run/slurmctld.pid; then
  scontrol reconfigure   # someone's controller: just make it read the new config
else
  slurmctld -c           # -c: clear saved job state (fresh cluster)
  own slurmctld /run/slurmctld.pid
fi
for i in $(seq 1 "$N"); do
  if ! running "/run/slurmd-n$i.pid"; then
    slurmd -N "n$i"
    own "slurmd-n$i" "/run/slurmd-n$i.pid"
  fi
done

for _ in $(seq 1 60); do
  [ "$(sinfo -h -N -t idle -o '%N' 2>/dev/null | sort -u | wc -l)" -ge "$N" ] && break
  sleep 0.5
done
if ! timeout 30 srun -N"$N" -n"$N" hostname >/dev/null; then
  log "srun across $N nodes failed; see /var/log/slurm/"; sinfo -N >&2; exit 1
fi
sinfo -N
log "up ($N nodes)"
