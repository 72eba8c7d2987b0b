#!/usr/bin/env bash
# A real SLURM cluster on this machine (one node, or N nodes in network namespaces), for the tests
# and for trying launch/slurm_submit.py.
#
#   bash scripts/slurm_local_cluster.sh start [--nodes N]  # install (apt-get) if missing, configure, start, wait for idle
#   bash scripts/slurm_local_cluster.sh status   # daemons, nodes (namespace, hostname, address) and `sinfo`
#   bash scripts/slurm_local_cluster.sh stop     # stop the daemons; remove namespaces, interfaces, /etc/hosts lines
#   bash scripts/slurm_local_cluster.sh env      # print `export SLURM_CONF=...` for a shell
#   bash scripts/slurm_local_cluster.sh node-down K       # node K crashes: link down, SIGKILL to all its processes
#   bash scripts/slurm_local_cluster.sh node-kill-jobs K  # SIGKILL to every process on node K except its slurmd
#   bash scripts/slurm_local_cluster.sh node-up K         # link up, node K's slurmd started again (after node-down)
#   bash scripts/slurm_local_cluster.sh node-exec K CMD...  # run CMD on node K (its network + UTS namespace)
#
# --nodes 1 (the default): the node is `hostname -s` at 127.0.0.1, as before.
# --nodes N >= 2: nodes xkdnode1..N, each slurmd in its own network namespace (`ip netns` xkdnodeK,
# address $XKD_SLURM_SUBNET.(10+K) on a veth to the bridge xkdbr0 = $XKD_SLURM_SUBNET.1, default
# subnet 10.203.0) and its own UTS namespace (hostname xkdnodeK); the names are added to /etc/hosts
# (lines marked with this script's marker, removed by stop) so they resolve in every namespace.
# slurmctld, slurmdbd, MariaDB and munged stay in the root namespace (slurmctld and slurmdbd reached
# on the bridge address); the file system is shared, as cluster nodes share NFS (the munge socket
# too). Every node gets the machine's CPUs and memory from `slurmd -C` (oversubscribed).
#
# Daemons (started directly, no systemd): munged (the system one, reused when running),
# a private MariaDB (datadir and socket under the state dir, TCP 127.0.0.1:$XKD_SLURM_DB_PORT),
# slurmdbd (accounting: submitit needs sacct to notice cancelled jobs), slurmctld, slurmd.
# Node(s): see --nodes above; CPUs/sockets/cores/memory from `slurmd -C`; partition `debug`
# (default, no time limit); SlurmdTimeout $XKD_SLURM_SLURMD_TIMEOUT (60 s). Everything lives in $XKD_SLURM_DIR
# (default /tmp/xkd-slurm); clients need SLURM_CONF=$XKD_SLURM_DIR/etc/slurm.conf, which
# `start` also links to /etc/slurm/slurm.conf when that file is free (absent or ours).
# `start` is idempotent: a healthy running cluster is reused; half-started or stale state
# is stopped and started again (also when it runs with another number of nodes). The last line
# of `start` is `SLURM_CONF=<path>`. Per-node slurmd logs: $XKD_SLURM_DIR/log/slurmd.<node>.log.
# Needs root (apt-get, SlurmUser=root). Ports: $XKD_SLURM_CTLD_PORT (6817), $XKD_SLURM_D_PORT
# (6818), $XKD_SLURM_DBD_PORT (6819), $XKD_SLURM_DB_PORT (3316).
set -euo pipefail

DIR=${XKD_SLURM_DIR:-/tmp/xkd-slurm}
CTLD_PORT=${XKD_SLURM_CTLD_PORT:-6817}
D_PORT=${XKD_SLURM_D_PORT:-6818}
DBD_PORT=${XKD_SLURM_DBD_PORT:-6819}
DB_PORT=${XKD_SLURM_DB_PORT:-3316}
CLUSTER=xkd
SLURMD_TIMEOUT=${XKD_SLURM_SLURMD_TIMEOUT:-60}  # seconds before slurmctld declares a silent node DOWN
SUBNET=${XKD_SLURM_SUBNET:-10.203.0}
BRIDGE=xkdbr0
NS_PREFIX=xkdnode
MARKER="# xkd-slurm-local-cluster"
CONF=$DIR/etc/slurm.conf
NODES_FILE=$DIR/etc/nodes
export SLURM_CONF=$CONF
PACKAGES=(slurm-wlm slurmdbd munge mariadb-server)

say() { echo "[slurm_local_cluster] $*"; }
die() { echo "[slurm_local_cluster] error: $*" >&2; exit 1; }

stop_pidfile() {  # stop_pidfile PIDFILE: TERM the process, KILL it after 15 s, remove the file
  local pid
  if alive "$1"; then
    pid=$(cat "$1")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$1"
}

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

NODES=1  # nodes of the cluster being started / running (start --nodes, else $NODES_FILE)
[[ -s $NODES_FILE ]] && NODES=$(cat "$NODES_FILE")

multi() { ((NODES > 1)); }
node_name() { if multi; then echo "$NS_PREFIX$1"; else hostname -s; fi; }  # node_name K
node_addr() { echo "$SUBNET.$((10 + $1))"; }
node_names() { local k; for k in $(seq 1 "$NODES"); do node_name "$k"; done; }
ctld_addr() { if multi; then echo "$SUBNET.1"; else echo 127.0.0.1; fi; }
slurmd_pidfile() { if multi; then echo "$DIR/run/slurmd.$(node_name "$1").pid"; else echo "$DIR/run/slurmd.pid"; fi; }

write_configs() {
  local node hw k nodelist
  node=$(hostname -s)
  # "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105"
  hw=$(slurmd -C | head -1 | sed -e 's/^NodeName=[^ ]* //')
  mkdir -p "$DIR"/{etc,state,spool,log,run}
  echo "$NODES" >"$NODES_FILE"
  local spool=$DIR/spool slurmd_pid=$DIR/run/slurmd.pid slurmd_log=$DIR/log/slurmd.log
  if multi; then
    spool=$DIR/spool/%n slurmd_pid=$DIR/run/slurmd.%n.pid slurmd_log=$DIR/log/slurmd.%n.log
    nodelist="$NS_PREFIX[1-$NODES]"
  else
    nodelist=$node
  fi
  cat >"$CONF" <<EOF
$MARKER (written by scripts/slurm_local_cluster.sh; rewritten at every start)
ClusterName=$CLUSTER
SlurmctldHost=$node($(ctld_addr))
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$CTLD_PORT
SlurmdPort=$D_PORT
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$slurmd_pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$slurmd_log
SlurmdTimeout=$SLURMD_TIMEOUT
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
AccountingStorageHost=$(ctld_addr)
AccountingStoragePort=$DBD_PORT
JobAcctGatherType=jobacct_gather/none
EOF
  if multi; then
    for k in $(seq 1 "$NODES"); do
      echo "NodeName=$(node_name "$k") NodeHostname=$(node_name "$k") NodeAddr=$(node_addr "$k") $hw State=UNKNOWN" >>"$CONF"
    done
  else
    echo "NodeName=$node NodeAddr=127.0.0.1 $hw State=UNKNOWN" >>"$CONF"
  fi
  echo "PartitionName=debug Nodes=$nodelist Default=YES MaxTime=INFINITE State=UP" >>"$CONF"
  cat >"$DIR/etc/cgroup.conf" <<EOF
$MARKER
# Unused: ProctrackType=proctrack/linuxproc and TaskPlugin=task/none need no cgroups.
CgroupPlugin=autodetect
EOF
  cat >"$DIR/etc/slurmdbd.conf" <<EOF
$MARKER
AuthType=auth/munge
DbdHost=localhost
DbdAddr=$(ctld_addr)
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

node_state() {  # node_state [NAME]: sinfo's state of the node (default: the first one)
  sinfo -h -n "${1:-$(node_name 1)}" -o %T 2>/dev/null | head -1
}

all_nodes_in() {  # all_nodes_in REGEX: every node's state matches
  local name
  for name in $(node_names); do [[ $(node_state "$name") =~ $1 ]] || return 1; done
}

healthy() {
  local k
  alive "$DIR/run/slurmdbd.pid" && alive "$DIR/run/slurmctld.pid" && [[ -f $CONF ]] || return 1
  for k in $(seq 1 "$NODES"); do alive "$(slurmd_pidfile "$k")" || return 1; done
  all_nodes_in '^(idle|mixed|allocated|completing)$'
}

# ----------------------------------------------------------------------------- the namespaced nodes

hosts_block_remove() {  # /etc/hosts without our lines (written in place: /etc/hosts may be a bind mount)
  if grep -q "$MARKER" /etc/hosts 2>/dev/null; then
    local kept
    kept=$(grep -v "$MARKER" /etc/hosts)
    printf '%s\n' "$kept" >/etc/hosts
  fi
}

kill_in_namespace() {  # kill_in_namespace NS SIGNAL [EXCEPT_PID]: signal every process in the namespace
  local pid
  for pid in $(ip netns pids "$1" 2>/dev/null || true); do
    [[ $pid == "${3:-}" ]] && continue
    kill "-$2" "$pid" 2>/dev/null || true
  done
}

network_down() {  # every process, namespace, interface and hosts line of ours (also leftovers of a crash)
  local ns link
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$NS_PREFIX[0-9]+$" || true); do
    kill_in_namespace "$ns" 9
    ip netns del "$ns" 2>/dev/null || true
  done
  for link in $(ip -br link 2>/dev/null | awk '{print $1}' | sed 's/@.*//' | grep -E '^xkdv[0-9]+$' || true); do
    ip link del "$link" 2>/dev/null || true
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  hosts_block_remove
}

network_up() {  # bridge + one namespace, veth and hosts line per node
  local k ns
  command -v ip >/dev/null || die "--nodes $NODES needs iproute2 (ip netns, ip link)"
  network_down
  ip link add "$BRIDGE" type bridge || die "cannot create the bridge $BRIDGE (network namespaces refused here?)"
  ip addr add "$SUBNET.1/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  for k in $(seq 1 "$NODES"); do
    ns=$NS_PREFIX$k
    ip netns add "$ns" || die "cannot create the network namespace $ns"
    ip link add "xkdv$k" type veth peer name "xkdv${k}n"
    ip link set "xkdv${k}n" netns "$ns"
    ip link set "xkdv$k" master "$BRIDGE" up
    ip -n "$ns" link set lo up
    ip -n "$ns" link set "xkdv${k}n" name eth0
    ip -n "$ns" addr add "$(node_addr "$k")/24" dev eth0
    ip -n "$ns" link set eth0 up
    echo "$(node_addr "$k") $ns $MARKER" >>/etc/hosts
  done
}

start_slurmd() {  # start_slurmd K: node K's slurmd (in its namespaces when multi-node)
  local name
  name=$(node_name "$1")
  if multi; then
    mkdir -p "$DIR/spool/$name"
    # nsenter, not `ip netns exec`: that one remounts /sys (slurmd needs /sys/fs/cgroup as it is).
    nsenter --net="/run/netns/$NS_PREFIX$1" unshare --uts bash -c "hostname $name && exec slurmd -N $name" \
      </dev/null >/dev/null 2>&1
  else
    slurmd </dev/null >/dev/null 2>&1
  fi
}

node_down() {  # node_down K: the node crashes: its link goes dark, then every process in it dies
  multi || die "node-down needs a multi-node cluster (start --nodes N)"
  # Link first: peers see silence (no FIN/RST), as from a node that lost power; they notice by timeout.
  ip link set "xkdv$1" down
  kill_in_namespace "$NS_PREFIX$1" 9
  rm -f "$(slurmd_pidfile "$1")"
  say "node $(node_name "$1") down: link xkdv$1 down, every process in namespace $NS_PREFIX$1 killed"
}

node_kill_jobs() {  # node_kill_jobs K: every job process on the node (slurmstepd and tasks); slurmd lives
  multi || die "node-kill-jobs needs a multi-node cluster (start --nodes N)"
  local pid killed=0
  for pid in $(ip netns pids "$NS_PREFIX$1" 2>/dev/null || true); do
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == slurmd ]] && continue  # the daemon and any child it forked
    kill -9 "$pid" 2>/dev/null && killed=$((killed + 1))
  done
  say "node $(node_name "$1"): $killed job process(es) killed, slurmd kept"
}

node_up() {  # node_up K: start the node's slurmd again; the node returns to service by itself
  multi || die "node-up needs a multi-node cluster (start --nodes N)"
  ip link set "xkdv$1" up
  if alive "$(slurmd_pidfile "$1")"; then say "node $(node_name "$1"): slurmd already running"; return 0; fi
  start_slurmd "$1"
  wait_for 30 "slurmd on $(node_name "$1")" alive "$(slurmd_pidfile "$1")"
  say "node $(node_name "$1"): slurmd started"
}

stop_daemons() {
  local name pidfile pid k
  for k in $(seq 1 "$NODES"); do
    pidfile=$(slurmd_pidfile "$k")
    stop_pidfile "$pidfile"
  done
  network_down
  for name in slurmd slurmctld slurmdbd mariadb; do
    pidfile=$DIR/run/$name.pid
    stop_pidfile "$pidfile"
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
  local started wanted=1
  started=$(date +%s.%N)
  while (($#)); do
    case $1 in
      --nodes) wanted=${2:-}; shift 2 || shift ;;
      --nodes=*) wanted=${1#--nodes=}; shift ;;
      *) die "start: unknown option $1 (usage: start [--nodes N])" ;;
    esac
  done
  [[ $wanted =~ ^[0-9]+$ ]] && ((wanted >= 1 && wanted <= 200)) || die "--nodes '$wanted': expected 1..200"
  [[ $(id -u) == 0 ]] || die "needs root (apt-get, daemons with SlurmUser=root); run it with sudo"
  if [[ -f $CONF ]] && ((wanted == NODES)) && healthy; then
    say "reusing the running cluster: $NODES node(s) $(node_names | tr '\n' ' ')$(node_state) (state dir $DIR)"
    echo "SLURM_CONF=$CONF"
    return 0
  fi
  install_packages
  stop_daemons  # leftovers of a half-started cluster, or a cluster of another size
  NODES=$wanted
  if multi; then network_up; fi
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
  local k name state
  for k in $(seq 1 "$NODES"); do start_slurmd "$k"; done
  for name in $(node_names); do
    wait_for 60 "node $name to register" bash -c "[[ \$(sinfo -h -n $name -o %T) =~ ^(idle|mixed|allocated|down|drained)\$ ]]"
    state=$(node_state "$name")
    if [[ $state =~ ^(down|drained|draining)$ ]]; then
      scontrol update NodeName="$name" State=RESUME >/dev/null 2>&1 || true
    fi
    wait_for 60 "node $name to be idle" bash -c "[[ \$(sinfo -h -n $name -o %T) == idle ]]"
  done
  local elapsed
  elapsed=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  say "cluster up in ${elapsed} s: $NODES node(s) $(node_names | tr '\n' ' ')idle, partition debug, accounting on (state dir $DIR)"
  echo "SLURM_CONF=$CONF"
}

status() {
  local name k
  for name in mariadb slurmdbd slurmctld; do
    if alive "$DIR/run/$name.pid"; then echo "$name: running (pid $(cat "$DIR/run/$name.pid"))"; else echo "$name: stopped"; fi
  done
  for k in $(seq 1 "$NODES"); do
    name=$(node_name "$k")
    if multi; then
      printf 'node %s: namespace %s%s, hostname %s, address %s, slurmd ' "$name" "$NS_PREFIX" "$k" "$name" "$(node_addr "$k")"
    else
      printf 'node %s: address 127.0.0.1 (root namespace), slurmd ' "$name"
    fi
    if alive "$(slurmd_pidfile "$k")"; then echo "running (pid $(cat "$(slurmd_pidfile "$k")"))"; else echo "stopped"; fi
  done
  if [[ -S /run/munge/munge.socket.2 ]]; then echo "munged: running"; else echo "munged: stopped"; fi
  if alive "$DIR/run/slurmctld.pid"; then sinfo; else return 1; fi
}

node_arg() {  # node_arg K: a node number of the running cluster
  [[ ${1:-} =~ ^[0-9]+$ ]] && ((${1:-0} >= 1 && ${1:-0} <= NODES)) || die "expected a node number 1..$NODES, got '${1:-}'"
}

command=${1:-}
shift || true
case $command in
  start) start "$@" ;;
  stop) stop_daemons; rm -f "$NODES_FILE"; say "stopped (state kept in $DIR)" ;;
  status) status ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  node-down) node_arg "${1:-}"; node_down "$1" ;;
  node-kill-jobs) node_arg "${1:-}"; node_kill_jobs "$1" ;;
  node-up) node_arg "${1:-}"; node_up "$1" ;;
  node-exec) node_arg "${1:-}"; multi || die "node-exec needs a multi-node cluster"; k=$1; shift
    exec nsenter --net="/run/netns/$NS_PREFIX$k" unshare --uts bash -c 'hostname "$0" && exec "$@"' "$(node_name "$k")" "$@" ;;
  *) echo "usage: $0 start [--nodes N]|stop|status|env|node-down K|node-kill-jobs K|node-up K|node-exec K CMD..." >&2
    exit 2 ;;
esac
