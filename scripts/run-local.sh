#!/usr/bin/env bash
# What `make run` executes after building: the local stack (NATS + PostgreSQL under .local/),
# migrations, then events-processor and dlq-worker with their logs interleaved on this
# terminal. Ctrl-C stops both binaries, then the stack, and exits 0. If a binary dies on its
# own, everything is stopped and the script exits non-zero. Data in .local/ is kept, so the
# next run continues where this one stopped.
#
# BUILD_DIR [build/dev], PROCESSOR_HTTP_PORT [8080], DLQ_HTTP_PORT [8081], LOG_FORMAT [text];
# NATS_PORT / NATS_MONITOR_PORT / PG_PORT as in scripts/local-stack.sh.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build/dev}"
STACK="$ROOT/scripts/local-stack.sh"
PROCESSOR_HTTP_PORT="${PROCESSOR_HTTP_PORT:-8080}"
DLQ_HTTP_PORT="${DLQ_HTTP_PORT:-8081}"
STOP_TIMEOUT="${RUN_STOP_TIMEOUT:-30}" # seconds per binary before SIGKILL

log() { echo "run-local: $*"; }

for bin in events-processor dlq-worker eventctl; do
  if [[ ! -x "$BUILD_DIR/$bin" ]]; then
    echo "run-local: $BUILD_DIR/$bin not found; build first (make build)" >&2
    exit 1
  fi
done

children=()
stack_started=0

stop_children() {
  local pid deadline
  for pid in "${children[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${children[@]}"; do
    deadline=$((SECONDS + STOP_TIMEOUT))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "pid $pid did not stop within ${STOP_TIMEOUT}s; killing"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
  children=()
}

shutdown() {
  stop_children
  if ((stack_started)); then
    "$STACK" stop || true
    stack_started=0
  fi
}
# Whatever way the script ends (error, signal, a binary dying), nothing is left running.
trap shutdown EXIT

interrupted=0
trap 'interrupted=1' INT TERM

stack_started=1
"$STACK" start
eval "$("$STACK" env)"
export LOG_FORMAT="${LOG_FORMAT:-text}"

((interrupted == 0)) || exit 0
log "applying migrations"
"$BUILD_DIR/eventctl" migrate
((interrupted == 0)) || exit 0

# setsid: Ctrl-C reaches only this script, which then stops both with one SIGTERM (a second
# signal would make them exit without draining).
HTTP_PORT="$PROCESSOR_HTTP_PORT" setsid "$BUILD_DIR/events-processor" &
processor_pid=$!
children+=("$processor_pid")
HTTP_PORT="$DLQ_HTTP_PORT" setsid "$BUILD_DIR/dlq-worker" &
worker_pid=$!
children+=("$worker_pid")

cat <<EOF

==============================================================================
 events-processor (pid $processor_pid) and dlq-worker (pid $worker_pid) are running
   NATS_URL=$NATS_URL
   POSTGRES_DSN=$POSTGRES_DSN
 metrics:    http://127.0.0.1:$PROCESSOR_HTTP_PORT/metrics   http://127.0.0.1:$DLQ_HTTP_PORT/metrics
 readiness:  http://127.0.0.1:$PROCESSOR_HTTP_PORT/readyz    http://127.0.0.1:$DLQ_HTTP_PORT/readyz
 liveness:   http://127.0.0.1:$PROCESSOR_HTTP_PORT/healthz   http://127.0.0.1:$DLQ_HTTP_PORT/healthz
 publish a sample (another terminal):
   build/dev/eventctl publish --type messages.upsert --tenant acme
 query it:
   psql $POSTGRES_DSN -c 'select * from tenant_acme.messages'
 Ctrl-C stops both binaries and the local stack (data stays in .local/).
==============================================================================

EOF

# `wait -n` returns when either binary exits, or early when a trapped signal arrives.
status=0
wait -n "$processor_pid" "$worker_pid" || status=$?
if ((interrupted)); then
  log "stopping"
  shutdown
  log "stopped"
  exit 0
fi

if kill -0 "$processor_pid" 2>/dev/null; then
  died="dlq-worker"
else
  died="events-processor"
fi
log "$died exited (status $status); stopping everything" >&2
shutdown
exit $((status == 0 ? 1 : status))
