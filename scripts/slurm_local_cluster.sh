#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for the tests and for trying launch/slurm_submit.py.
#
#   bash scripts/slurm_local_cluster.sh start    # install (apt-get) if missing, configure, start, wait for idle
#   bash scripts/slurm_local_cluster.sh status   # daemons and `sinfo`
#   bash scripts/slurm_local_cluster.sh stop     # stop the daemons this script started
#   bash scripts/slurm_local_cluster.sh env      # print `export SLURM_CONF=...` for a shell
#
# Daemons (started directly, no systemd): munged (the system one, reused when running),
# a private MariaDB (datadir and socket under the state dir, TCP 127.0.0.1:$XKD_SLURM_DB_PORT),
# slurmdbd (accounting: submitit needs sacct to notice cancelled jobs), slurmctld, slurmd.
# Node: `hostname -s`, NodeAddr=127.0.0.1, CPUs/sockets/cores/memory from `slurmd -C`;
# partition `debug` (default, no time limit). Everything lives in $XKD_SLURM_DIR
# (default /tmp/xkd-slurm); clients need SLURM_CONF=$XKD_SLURM_DIR/etc/slurm.conf, which
# `start` also links to /etc/slurm/slurm.conf when that file is free (absent or ours).
# `start` is idempotent: a healthy running cluster is reused; half-started or stale state
# is stopped and started again. The last line of `start` is `SLURM_CONF=<path>`.
# Needs root (apt-get, SlurmUser=root). Ports: $XKD_SLURM_CTLD_PORT (6817), $XKD_SLURM_D_PORT
# (6818), $XKD_SLURM_DBD_PORT (6819), $XKD_SLURM_DB_PORT (3316).
set -euo pipefail

DIR=${XKD_SLURM_DIR:-/tmp/xkd-slurm}
CTLD_PORT=${XKD_SLURM_CTLD_PORT:-6817}
D_PORT=${XKD_SLURM_D_PORT:-6818}
DBD_PORT=${XKD_SLURM_DBD_PORT:-6819}
DB_PORT=${XKD_SLURM_DB_PORT:-3316}
CLUSTER=xkd
MARKER="# xkd-slurm-local-cluster"
CONF=$DIR/etc/slurm.conf
export SLURM_CONF=$CONF
PACKAGES=(slurm-wlm slurmdbd munge mariadb-server)

say() { echo "[slurm_local_cluster] $*"; }
die() { echo "[slurm_local_cluster] error: $*" >&2; exit 1; }

alive() {  # alive PIDFILE: the pid in the file is a running process
  [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: poll until COMMAND succeeds
  local limit=$1 what=$2 waited=0
  shift 2
  until "$@" >/dev/null 2>&1; do
    sleep 0.5
    waited=$((waited + 1))
    if ((waited > limit * 2)); then
      die "$what did not come up within ${limit}s; logs in $DIR/log/"
    fi
  done
}

install_packages() {
  local missing=()
  command -v slurmctld >/dev/null || missing+=(slurm-wlm)
  command -v slurmdbd >/dev/null || missing+=(slurmdbd)
  command -v munged >/dev/null || missing+=(munge)
  command -v mariadbd >/dev/null || missing+=(mariadb-server)
  ((${#missing[@]} == 0)) && return 0
  command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install ${PACKAGES[*]}"
  say "installing ${missing[*]} with apt-get"
  # policy-rc.d keeps the packages' init scripts from starting system daemons during install.
  local policy=/usr/sbin/policy-rc.d created_policy=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created_policy=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
  ((created_policy)) && rm -f "$policy"
  return 0
}

write_configs() {
  local node hw
  node=$(hostname -s)
  # "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105"
  hw=$(slurmd -C | head -1 | sed -e 's/^NodeName=[^ ]* //')
  mkdir -p "$DIR"/{etc,state,spool,log,run}
  cat >"$CONF" <<EOF
$MARKER (written by scripts/slurm_local_cluster.sh; rewritten at every start)
ClusterName=$CLUSTER
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$CTLD_PORT
SlurmdPort=$D_PORT
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MailProg=/bin/true
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
KillWait=30
MinJobAge=600
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
JobAcctGatherType=jobacct_gather/none
NodeName=$node NodeAddr=127.0.0.1 $hw State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
  cat >"$DIR/etc/cgroup.conf" <<EOF
$MARKER
# Unused: ProctrackType=proctrack/linuxproc and TaskPlugin=task/none need no cgroups.
CgroupPlugin=autodetect
EOF
  cat >"$DIR/etc/slurmdbd.conf" <<EOF
$MARKER
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=xkd-slurm
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$DIR/etc/slurmdbd.conf"
  # Let plain `sinfo` / `sbatch` find the cluster, unless /etc/slurm/slurm.conf belongs to someone else.
  local system=/etc/slurm/slurm.conf
  if [[ ! -e $system && ! -L $system ]] || { [[ -L $system ]] && grep -qs "$MARKER" "$(readlink "$system")"; }; then
    mkdir -p /etc/slurm && ln -sfn "$CONF" "$system"
  elif [[ $(readlink -f "$system") != "$(readlink -f "$CONF")" ]]; then
    say "note: $system belongs to another cluster; export SLURM_CONF=$CONF to use this one"
  fi
}

start_munge() {
  if [[ -S /run/munge/munge.socket.2 ]] && munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    return 0
  fi
  [[ -s /etc/munge/munge.key ]] || { say "creating /etc/munge/munge.key"; mungekey --create --force >/dev/null 2>&1 \
    || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 2>/dev/null; chown munge:munge /etc/munge/munge.key;
    chmod 400 /etc/munge/munge.key; }
  install -d -o munge -g munge -m 755 /run/munge
  install -d -o munge -g munge -m 700 /var/log/munge /var/lib/munge
  rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged </dev/null >/dev/null 2>&1
  touch "$DIR/run/munged.ours"
  wait_for 20 munged bash -c 'munge -n </dev/null | unmunge'
}

start_mariadb() {
  local data=$DIR/mysql
  if alive "$DIR/run/mariadb.pid" && mariadb-admin --socket="$DIR/run/mysql.sock" -uroot ping >/dev/null 2>&1; then
    return 0
  fi
  if [[ ! -d $data/mysql ]]; then
    rm -rf "$data"
    mariadb-install-db --no-defaults --user=root --datadir="$data" --auth-root-authentication-method=socket \
      --skip-test-db >"$DIR/log/mariadb-install.log" 2>&1 || die "mariadb-install-db failed: $DIR/log/mariadb-install.log"
  fi
  setsid mariadbd --no-defaults --user=root --datadir="$data" --socket="$DIR/run/mysql.sock" \
    --pid-file="$DIR/run/mariadb.pid" --bind-address=127.0.0.1 --port="$DB_PORT" \
    --log-error="$DIR/log/mariadb.log" --innodb-buffer-pool-size=64M --skip-log-bin </dev/null >/dev/null 2>&1 &
  wait_for 60 "MariaDB" mariadb-admin --socket="$DIR/run/mysql.sock" -uroot ping
  mariadb --socket="$DIR/run/mysql.sock" -uroot <<'SQL'
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'xkd-slurm';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'xkd-slurm';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
SQL
}

node_state() {
  sinfo -h -n "$(hostname -s)" -o %T 2>/dev/null | head -1
}

healthy() {
  alive "$DIR/run/slurmdbd.pid" && alive "$DIR/run/slurmctld.pid" && alive "$DIR/run/slurmd.pid" \
    && [[ -f $CONF ]] && [[ $(node_state) =~ ^(idle|mixed|allocated|completing)$ ]]
}

stop_daemons() {
  local name pidfile pid
  for name in slurmd slurmctld slurmdbd mariadb; do
    pidfile=$DIR/run/$name.pid
    if alive "$pidfile"; then
      pid=$(cat "$pidfile")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
  done
  if [[ -f $DIR/run/munged.ours ]]; then
    if alive /run/munge/munged.pid; then kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true; fi
    rm -f "$DIR/run/munged.ours"
  fi
}

port_free() {  # port_free PORT: nothing listens on 127.0.0.1:PORT
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

start() {
  local begin=$SECONDS started
  started=$(date +%s.%N)
  [[ $(id -u) == 0 ]] || die "needs root (apt-get, daemons with SlurmUser=root); run it with sudo"
  if [[ -f $CONF ]] && healthy; then
    say "reusing the running cluster: node $(hostname -s) $(node_state) (state dir $DIR)"
    echo "SLURM_CONF=$CONF"
    return 0
  fi
  install_packages
  stop_daemons  # leftovers of a half-started cluster
  for port in "$CTLD_PORT" "$D_PORT" "$DBD_PORT" "$DB_PORT"; do
    port_free "$port" || die "port $port on 127.0.0.1 is taken by another process (not this script's daemons);" \
      "set XKD_SLURM_CTLD_PORT / XKD_SLURM_D_PORT / XKD_SLURM_DBD_PORT / XKD_SLURM_DB_PORT"
  done
  write_configs
  start_munge
  start_mariadb
  slurmdbd </dev/null >/dev/null 2>&1
  wait_for 60 "slurmdbd" sacctmgr -n list cluster
  if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
  fi
  slurmctld </dev/null >/dev/null 2>&1
  wait_for 60 "slurmctld" scontrol ping
  slurmd </dev/null >/dev/null 2>&1
  wait_for 60 "the node to register" bash -c "[[ \$(sinfo -h -n $(hostname -s) -o %T) =~ ^(idle|mixed|allocated|down|drained)\$ ]]"
  local state
  state=$(node_state)
  if [[ $state =~ ^(down|drained|draining)$ ]]; then
    scontrol update NodeName="$(hostname -s)" State=RESUME >/dev/null 2>&1 || true
  fi
  wait_for 60 "the node to be idle" bash -c "[[ \$(sinfo -h -n $(hostname -s) -o %T) == idle ]]"
  local elapsed
  elapsed=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  say "cluster up in ${elapsed} s: node $(hostname -s) idle, partition debug, accounting on (state dir $DIR)"
  echo "SLURM_CONF=$CONF"
}

status() {
  local name
  for name in mariadb slurmdbd slurmctld slurmd; do
    if alive "$DIR/run/$name.pid"; then echo "$name: running (pid $(cat "$DIR/run/$name.pid"))"; else echo "$name: stopped"; fi
  done
  if [[ -S /run/munge/munge.socket.2 ]]; then echo "munged: running"; else echo "munged: stopped"; fi
  if alive "$DIR/run/slurmctld.pid"; then sinfo; else return 1; fi
}

case ${1:-} in
  start) start ;;
  stop) stop_daemons; say "stopped (state kept in $DIR)" ;;
  status) status ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
