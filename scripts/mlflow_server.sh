#!/usr/bin/env bash
# A local MLflow tracking server (UI + REST API + artifact proxy) for xkd runs.
#
#   bash scripts/mlflow_server.sh start     # start, or reuse the running one; prints the URL
#   bash scripts/mlflow_server.sh url       # print the URL (export MLFLOW_TRACKING_URI=$(... url))
#   bash scripts/mlflow_server.sh status    # "running <url> (pid N)" or "stopped"; exit 1 when stopped
#   bash scripts/mlflow_server.sh stop      # stop the server and every process it started
#
# The state directory, database, artifacts and log are private to the user (umask 077). The
# backend store URI (maybe with a database password) reaches the server through its environment
# (MLFLOW_BACKEND_STORE_URI), never its command line, which every user can read in `ps`.
# `stop` only ends a process that is this state directory's `mlflow server`: a pid file left
# by a server that died names, after pid reuse, some other process, which is left alone.
#
# Settings (environment variables):
#   XKD_MLFLOW_DIR     state directory: mlflow.db, artifacts/, server.log, server.pid
#                      (default: runs/mlflow-server in the repository)
#   XKD_MLFLOW_HOST    interface to bind (default 127.0.0.1; use 0.0.0.0 for a team server
#                      and list its name in XKD_MLFLOW_ALLOWED_HOSTS)
#   XKD_MLFLOW_PORT    port (default 5000)
#   XKD_MLFLOW_BACKEND backend store URI (default sqlite:///$XKD_MLFLOW_DIR/mlflow.db);
#                      PostgreSQL works too: postgresql://user:pass@host:5432/mlflow (needs psycopg2)
#   XKD_MLFLOW_ALLOWED_HOSTS  extra Host headers to accept, comma separated
#   XKD_MLFLOW_WORKERS server workers (default 1: ~550 MB and ~20 s to start instead of ~2.5 GB / ~70 s)
#   XKD_MLFLOW_START_TIMEOUT  seconds to wait for /health (default 300)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)

DIR=${XKD_MLFLOW_DIR:-$ROOT/runs/mlflow-server}
HOST=${XKD_MLFLOW_HOST:-127.0.0.1}
PORT=${XKD_MLFLOW_PORT:-5000}
WORKERS=${XKD_MLFLOW_WORKERS:-1}
START_TIMEOUT=${XKD_MLFLOW_START_TIMEOUT:-300}
MLFLOW=${MLFLOW_BIN:-$ROOT/.venv/bin/mlflow}
[[ -x $MLFLOW ]] || MLFLOW=$(command -v mlflow || true)
PYTHON=$ROOT/.venv/bin/python
[[ -x $PYTHON ]] || PYTHON=python3

mkdir -p "$(dirname "$DIR")"   # the parents with the caller's umask (e.g. runs/, shared with training runs)
umask 077                       # the store itself, and all the server writes, private to the user
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
BACKEND=${XKD_MLFLOW_BACKEND:-sqlite:///$DIR/mlflow.db}
PID_FILE=$DIR/server.pid
LOG=$DIR/server.log
# The address clients use: a wildcard bind is reached through the loopback interface.
case $HOST in 0.0.0.0 | "::") CLIENT_HOST=127.0.0.1 ;; *) CLIENT_HOST=$HOST ;; esac
URL=http://$CLIENT_HOST:$PORT

healthy() {
  if command -v curl >/dev/null 2>&1; then
    curl -fsS --max-time 5 "$URL/health" >/dev/null 2>&1
  else
    "$PYTHON" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)' "$URL/health" \
      >/dev/null 2>&1
  fi
}

# The backend URI with a password blanked out, for messages.
backend_shown() {
  sed -E 's#(://[^:/@]*):[^@]*@#\1:***@#' <<<"$BACKEND"
}

# True when pid $1 runs this state directory's `mlflow server` (its command line names our
# artifact folder): a recycled pid from a stale pid file must never be signalled.
is_our_server() {
  local args
  if [[ -r /proc/$1/cmdline ]]; then
    args=$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null) || return 1
  else
    args="$(ps -ww -o args= -p "$1" 2>/dev/null) " || return 1
  fi
  [[ $args == *mlflow*" server "* && $args == *" --artifacts-destination $DIR/artifacts "* ]]
}

# The pid of the server's process group leader, if it is alive and really our server.
server_pid() {
  local pid
  pid=$(cat "$PID_FILE" 2>/dev/null || true)
  [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && is_our_server "$pid" && echo "$pid"
}

where_to_look() {  # on stderr: stdout stays the bare URL for $(... start)
  echo "[mlflow_server] training runs: $URL/#/experiments/<id>/runs; loss charts side by side:" \
    "$URL/#/experiments/<id>/runs?compareRunsMode=CHART (each run's log prints its own links)" >&2
}

start() {
  if [[ -n $(server_pid) ]] && healthy; then
    echo "$URL"
    where_to_look
    return 0
  fi
  if healthy; then
    echo "error: something else already answers on $URL (not the server of $DIR); set XKD_MLFLOW_PORT" >&2
    return 1
  fi
  [[ -n $(server_pid) ]] && stop >/dev/null   # started earlier but not answering: restart it
  [[ -n $MLFLOW ]] || { echo "error: mlflow not found (run scripts/setup_env.sh)" >&2; return 1; }
  mkdir -p "$DIR/artifacts"
  local allowed="127.0.0.1,127.0.0.1:$PORT,localhost,localhost:$PORT,$CLIENT_HOST:$PORT"
  [[ -n ${XKD_MLFLOW_ALLOWED_HOSTS:-} ]] && allowed+=",$XKD_MLFLOW_ALLOWED_HOSTS"
  # setsid: the server and its workers form one process group, which `stop` ends as a whole.
  # The job runner (MLflow's background jobs for GenAI features) is not needed for training runs.
  # The backend URI goes in the environment (mlflow's --backend-store-uri envvar), not in argv.
  MLFLOW_BACKEND_STORE_URI=$BACKEND MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid "$MLFLOW" server \
    --artifacts-destination "$DIR/artifacts" \
    --host "$HOST" --port "$PORT" --workers "$WORKERS" \
    --allowed-hosts "$allowed" \
    >>"$LOG" 2>&1 </dev/null 9>&- &   # 9>&-: the server must not hold the start/stop lock
  echo $! >"$PID_FILE"
  local waited=0
  until healthy; do
    if ! kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
      echo "error: the MLflow server exited; last lines of $LOG:" >&2
      tail -n 20 "$LOG" >&2
      return 1
    fi
    if ((waited >= START_TIMEOUT)); then
      echo "error: no answer from $URL/health after ${START_TIMEOUT}s; see $LOG" >&2
      stop >/dev/null
      return 1
    fi
    sleep 1
    waited=$((waited + 1))
  done
  echo "$URL"
  where_to_look
}

stop() {
  local pid stale
  pid=$(server_pid || true)
  if [[ -z $pid ]]; then
    stale=$(cat "$PID_FILE" 2>/dev/null || true)
    if [[ -n $stale ]]; then
      echo "$PID_FILE named pid $stale, which is not this store's mlflow server (it exited earlier):" \
        "removed the stale pid file, signalled nothing" >&2
    fi
    rm -f "$PID_FILE"
    echo "stopped"
    return 0
  fi
  kill -TERM -- "-$pid" 2>/dev/null || true
  for _ in $(seq 1 30); do
    kill -0 -- "-$pid" 2>/dev/null || break
    sleep 1
  done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$PID_FILE"
  echo "stopped"
}

status() {
  local pid
  pid=$(server_pid || true)
  if [[ -n $pid ]] && healthy; then
    echo "running $URL (pid $pid, store $(backend_shown))"
  elif [[ -n $pid ]]; then
    echo "starting or unhealthy $URL (pid $pid); see $LOG"
    return 1
  else
    echo "stopped"
    return 1
  fi
}

# One start or stop at a time per state directory (concurrent starts would race for the port).
exec 9>"$DIR/.lock"
case ${1:-} in
  start) flock 9 && start ;;
  stop) flock 9 && stop ;;
  status) status ;;
  url) echo "$URL" ;;
  *)
    echo "usage: $0 start|stop|status|url" >&2
    exit 2
    ;;
esac
