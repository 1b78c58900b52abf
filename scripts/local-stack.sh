#!/usr/bin/env bash
# The local developer stack: nats-server with JetStream and a PostgreSQL 15 cluster, both kept
# under the project's .local/ directory (gitignored) so that data survives between runs.
#
#   scripts/local-stack.sh start    start both (no-op for what already runs), wait until ready
#   scripts/local-stack.sh stop     stop both cleanly
#   scripts/local-stack.sh status   report; exit 0 only when both run
#   scripts/local-stack.sh env      print the exports the binaries need (eval "$(... env)")
#
# Ports: NATS_PORT [4222], NATS_MONITOR_PORT [8222], PG_PORT [55432].
# As root, PostgreSQL runs as the `postgres` OS user. When the repository sits where that
# user cannot reach (e.g. under /root), the cluster lives in
# /var/tmp/events-processor-<hash of the repo path>/pg instead; `status` prints where.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCAL="$ROOT/.local"
NATS_PORT="${NATS_PORT:-4222}"
NATS_MONITOR_PORT="${NATS_MONITOR_PORT:-8222}"
PG_PORT="${PG_PORT:-55432}"
PG_DB=events
START_TIMEOUT="${STACK_START_TIMEOUT:-60}" # seconds
STOP_TIMEOUT="${STACK_STOP_TIMEOUT:-30}"   # seconds

NATS_STORE="$LOCAL/nats"
LOG_DIR="$LOCAL/log"
RUN_DIR="$LOCAL/run"
NATS_LOG="$LOG_DIR/nats.log"
NATS_PIDFILE="$RUN_DIR/nats.pid"

log() { echo "local-stack: $*"; }
die() {
  echo "local-stack: error: $*" >&2
  exit 1
}

pg_bin_dir() {
  if [[ -n "${PG_BIN:-}" ]]; then
    echo "$PG_BIN"
  elif [[ -x /usr/lib/postgresql/15/bin/postgres ]]; then
    echo /usr/lib/postgresql/15/bin
  else
    local d
    d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
    [[ -n "$d" ]] || die "PostgreSQL server binaries not found (run scripts/bootstrap.sh)"
    echo "$d"
  fi
}
PG_BIN="$(pg_bin_dir)"

is_root() { [[ "$(id -u)" -eq 0 ]]; }

# Runs a command as the OS user that owns the cluster.
as_pg() {
  if is_root; then
    # From / so that a cwd the postgres user cannot read causes no warnings.
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

# Where the cluster lives: .local/pg when the cluster's OS user can reach it, else a stable
# directory under /var/tmp derived from the repository path.
pg_area() {
  if ! is_root; then
    echo "$LOCAL/pg"
    return
  fi
  id postgres >/dev/null 2>&1 || die "OS user 'postgres' missing (run scripts/bootstrap.sh)"
  # .local/ is created world-traversable, so reaching the repository is what matters.
  # shellcheck disable=SC2016 # $1 is expanded by the inner sh.
  if runuser -u postgres -- sh -c 'cd "$1"' _ "$ROOT" 2>/dev/null; then
    echo "$LOCAL/pg"
  else
    local hash
    hash="$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)"
    echo "/var/tmp/events-processor-$hash/pg"
  fi
}
PG_AREA="$(pg_area)"
PGDATA_DIR="$PG_AREA/data"
PG_SOCKET_DIR="$PG_AREA/run"
PG_LOG="$PG_AREA/postgres.log"

# A zombie (exited, not yet reaped by whoever adopted it) counts as gone.
pid_alive() {
  local state
  kill -0 "$1" 2>/dev/null || return 1
  state="$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)"
  [[ -n "$state" && "$state" != Z ]]
}

nats_pid() {
  local pid
  [[ -f "$NATS_PIDFILE" ]] || return 1
  pid="$(cat "$NATS_PIDFILE" 2>/dev/null)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  pid_alive "$pid" || return 1
  [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == nats-server* ]] || return 1
  echo "$pid"
}

nats_healthy() {
  if command -v curl >/dev/null 2>&1; then
    curl -fsS --max-time 1 -o /dev/null \
      "http://127.0.0.1:$NATS_MONITOR_PORT/healthz?js-enabled-only=true" 2>/dev/null
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$NATS_PORT") 2>/dev/null
  fi
}

pg_running() { as_pg "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" status >/dev/null 2>&1; }
pg_ready() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -d postgres -U postgres; }
psql_admin() {
  "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres "$@"
}

start_nats() {
  local pid deadline
  mkdir -p "$NATS_STORE" "$LOG_DIR" "$RUN_DIR"
  chmod 755 "$LOCAL"
  if pid="$(nats_pid)"; then
    log "nats-server already running (pid $pid)"
  else
    command -v nats-server >/dev/null 2>&1 || die "nats-server not installed (run scripts/bootstrap.sh)"
    # setsid: a Ctrl-C on the developer's terminal must not kill the server behind the
    # processes that still drain to it; `stop` shuts it down in order.
    setsid nats-server -js -sd "$NATS_STORE" -a 127.0.0.1 -p "$NATS_PORT" \
      -m "$NATS_MONITOR_PORT" -P "$NATS_PIDFILE" </dev/null >>"$NATS_LOG" 2>&1 &
    pid=$!
    echo "$pid" >"$NATS_PIDFILE"
    log "nats-server started (pid $pid, log $NATS_LOG)"
  fi
  deadline=$((SECONDS + START_TIMEOUT))
  until nats_healthy; do
    if ! pid_alive "$pid"; then
      tail -n 20 "$NATS_LOG" >&2 || true
      die "nats-server exited during start (port $NATS_PORT or $NATS_MONITOR_PORT in use?)"
    fi
    ((SECONDS < deadline)) || die "nats-server not ready after ${START_TIMEOUT}s; see $NATS_LOG"
    sleep 0.1
  done
  log "nats-server ready on nats://127.0.0.1:$NATS_PORT (monitor :$NATS_MONITOR_PORT)"
}

start_pg() {
  local deadline
  mkdir -p "$PG_AREA"
  if is_root; then
    chown postgres:postgres "$PG_AREA"
  fi
  as_pg mkdir -p "$PG_SOCKET_DIR"
  if [[ ! -f "$PGDATA_DIR/PG_VERSION" ]]; then
    log "initialising PostgreSQL cluster in $PGDATA_DIR"
    if ! as_pg "$PG_BIN/initdb" -D "$PGDATA_DIR" --auth=trust -U postgres --encoding=UTF8 \
      --locale=C >"$PG_AREA/initdb.log" 2>&1; then
      cat "$PG_AREA/initdb.log" >&2
      die "initdb failed"
    fi
  fi
  if pg_running; then
    log "PostgreSQL already running (data $PGDATA_DIR)"
  else
    # Settings go on the command line so that PG_PORT can change between runs. pg_ctl -w
    # polls until the server accepts connections and fails if it dies while starting.
    log "PostgreSQL starting (data $PGDATA_DIR, log $PG_LOG)"
    if ! as_pg "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -l "$PG_LOG" -w -t "$START_TIMEOUT" \
      -o "-c port=$PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories='$PG_SOCKET_DIR' -c fsync=on" \
      start >/dev/null; then
      tail -n 20 "$PG_LOG" >&2 || true
      die "PostgreSQL did not start (port $PG_PORT in use?); see $PG_LOG"
    fi
  fi
  deadline=$((SECONDS + START_TIMEOUT))
  until pg_ready; do
    ((SECONDS < deadline)) || die "PostgreSQL not accepting connections on 127.0.0.1:$PG_PORT after ${START_TIMEOUT}s; see $PG_LOG"
    sleep 0.1
  done
  if [[ -z "$(psql_admin -tAc "select 1 from pg_database where datname = '$PG_DB'")" ]]; then
    psql_admin -c "create database $PG_DB"
    log "created database $PG_DB"
  fi
  log "PostgreSQL ready on 127.0.0.1:$PG_PORT (database $PG_DB)"
}

stop_nats() {
  local pid deadline
  if ! pid="$(nats_pid)"; then
    log "nats-server not running"
    rm -f "$NATS_PIDFILE"
    return
  fi
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + STOP_TIMEOUT))
  while pid_alive "$pid"; do
    if ((SECONDS >= deadline)); then
      log "nats-server did not stop in ${STOP_TIMEOUT}s; killing"
      kill -KILL "$pid" 2>/dev/null || true
      deadline=$((SECONDS + STOP_TIMEOUT))
    fi
    sleep 0.05
  done
  rm -f "$NATS_PIDFILE"
  log "nats-server stopped"
}

stop_pg() {
  if [[ ! -f "$PGDATA_DIR/PG_VERSION" ]] || ! pg_running; then
    log "PostgreSQL not running"
    return
  fi
  as_pg "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" stop -m fast -w -t "$STOP_TIMEOUT" >/dev/null
  log "PostgreSQL stopped"
}

status() {
  local ok=0 pid
  if pid="$(nats_pid)"; then
    if nats_healthy; then
      log "nats-server: running (pid $pid) on nats://127.0.0.1:$NATS_PORT, store $NATS_STORE"
    else
      log "nats-server: running (pid $pid) but not healthy; see $NATS_LOG"
      ok=1
    fi
  else
    log "nats-server: stopped (store $NATS_STORE)"
    ok=1
  fi
  if [[ -f "$PGDATA_DIR/PG_VERSION" ]] && pg_running; then
    if pg_ready; then
      log "PostgreSQL: running on 127.0.0.1:$PG_PORT, data $PGDATA_DIR"
    else
      log "PostgreSQL: running but not accepting connections on :$PG_PORT; see $PG_LOG"
      ok=1
    fi
  else
    log "PostgreSQL: stopped (data $PGDATA_DIR)"
    ok=1
  fi
  return "$ok"
}

print_env() {
  echo "export NATS_URL=nats://127.0.0.1:$NATS_PORT"
  echo "export POSTGRES_DSN=postgresql://postgres@127.0.0.1:$PG_PORT/$PG_DB"
}

case "${1:-}" in
  start)
    start_nats
    start_pg
    ;;
  stop)
    stop_pg
    stop_nats
    ;;
  status) status ;;
  env) print_env ;;
  *)
    echo "usage: $0 {start|stop|status|env}" >&2
    exit 2
    ;;
esac
