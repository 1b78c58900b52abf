#!/usr/bin/env bash
# The benchmark of docs/performance.md and the project quality bars (QUALITY.md), one command:
#
#   bench/run.sh                      full run (3 runs x 200,000 events, 50 tenants)
#   SMOKE=1 bench/run.sh              tiny run for CI (finishes in well under 90 s once built)
#
# It builds the release preset, starts its OWN nats-server (JetStream, file storage) and
# PostgreSQL 15 (fsync and synchronous_commit ON) in a temp directory on free ports, and in each
# run measures on one preloaded standard-mix stream:
#   (a) reference  bench/reference.cpp: fetch 4096 -> COPY upsert over 2 writers -> ack each
#   (b) processor  build/release/events-processor draining the same backlog from its start
#   (d) latency    publish -> commit p50/p99 of the caught-up processor at LATENCY_RATE events/s
#   (e) history    HISTORY_EVENTS history.messages events of HISTORY_ITEMS items, items/s
#   (f) redrive    `eventctl exhausted redrive` of REDRIVE_EVENTS exhausted events, events/s
#   (g) soak       only with SOAK_SECONDS > 0: SOAK_RATE events/s for SOAK_SECONDS, the
#                  processor's RSS sampled every 10 s (the "flat over 10 minutes" bar)
#   (c) naive      reference.cpp --naive: one transaction + one AckSync per event
# then prints each run's figures, one table of medians and PASS/MISS against QUALITY.md.
#
# Settings (environment):
#   RUNS [3]  EVENTS [200000]  TENANTS [50]  LATENCY_RATE [5000]  LATENCY_SECONDS [20]
#   NAIVE_EVENTS [20000, at most EVENTS]   DRAIN_TIMEOUT [120 + EVENTS/500 seconds]
#   HISTORY_EVENTS [20]  HISTORY_ITEMS [5000]  (MAX_EVENT_BYTES is raised to fit one event)
#   REDRIVE_EVENTS [10000]  SOAK_SECONDS [0 = no soak; make soak: 600]  SOAK_RATE [LATENCY_RATE]
#   SMOKE=1   defaults become RUNS=1 EVENTS=5000 TENANTS=5 LATENCY_RATE=500 LATENCY_SECONDS=5
#             NAIVE_EVENTS=500 HISTORY_EVENTS=2 HISTORY_ITEMS=1000 REDRIVE_EVENTS=500
#             (explicit values still win)
#   BUILD=0   skip the build and use the binaries already in build/$PRESET
#   PRESET    CMake preset of the binaries [release]; CI's smoke run uses dev, which `make
#             test` has just built (figures from a dev build are not comparable)
#   KEEP=1    keep the temp directory (server and processor logs) after the run
#   PROFILE=1 also print, per run, the CPU each process spent per event in the reference and
#             processor phases, and where PostgreSQL's executor and planning time went by
#             statement kind in the processor and latency phases, with how often each kind
#             was planned (pg_stat_statements; it costs a few per cent, so figures are not
#             for the bars)
#   PG_BIN    PostgreSQL server binaries [/usr/lib/postgresql/15/bin]
#   NATS_STORE_PARENT  directory for nats-server's file store [the temp directory], e.g.
#             /dev/shm to keep NATS's write-back off PostgreSQL's disk
# Processor settings such as BATCH_SIZE or DB_POOL_SIZE are passed through to the processor;
# TENANTS here is the number of tenants and is removed from the processor's environment (where
# it would be an allow-list).
#
# Exit status: 0 measured (PASS or MISS alike), 1 harness error (build, servers, tools),
# 3 the processor did not finish the workload (crashed, or never drained the backlog).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

SMOKE="${SMOKE:-0}"
[[ "$SMOKE" == 0 || "$SMOKE" == 1 ]] || {
  echo "bench: error: SMOKE must be 0 or 1" >&2
  exit 1
}
if [[ "$SMOKE" == 1 ]]; then
  RUNS="${RUNS:-1}" EVENTS="${EVENTS:-5000}" TENANTS="${TENANTS:-5}"
  LATENCY_RATE="${LATENCY_RATE:-500}" LATENCY_SECONDS="${LATENCY_SECONDS:-5}"
  NAIVE_EVENTS="${NAIVE_EVENTS:-500}" HISTORY_EVENTS="${HISTORY_EVENTS:-2}"
  HISTORY_ITEMS="${HISTORY_ITEMS:-1000}" REDRIVE_EVENTS="${REDRIVE_EVENTS:-500}"
fi
RUNS="${RUNS:-3}"
EVENTS="${EVENTS:-200000}"
TENANTS="${TENANTS:-50}"
LATENCY_RATE="${LATENCY_RATE:-5000}"
LATENCY_SECONDS="${LATENCY_SECONDS:-20}"
NAIVE_EVENTS="${NAIVE_EVENTS:-20000}"
HISTORY_EVENTS="${HISTORY_EVENTS:-20}"
HISTORY_ITEMS="${HISTORY_ITEMS:-5000}"
REDRIVE_EVENTS="${REDRIVE_EVENTS:-10000}"
SOAK_SECONDS="${SOAK_SECONDS:-0}"
SOAK_RATE="${SOAK_RATE:-$LATENCY_RATE}"
BUILD="${BUILD:-1}"
KEEP="${KEEP:-0}"
PROFILE="${PROFILE:-0}"
[[ "$PROFILE" == 0 || "$PROFILE" == 1 ]] || {
  echo "bench: error: PROFILE must be 0 or 1" >&2
  exit 1
}
[[ "$PROFILE" == 0 ]] || command -v pgrep >/dev/null || {
  echo "bench: error: PROFILE=1 needs pgrep (Debian package procps)" >&2
  exit 1
}

STREAM=EVENTS_REALTIME
REF_CONSUMER=bench-reference
NAIVE_CONSUMER=bench-naive
PROC_CONSUMER=bench-processor
PRESET="${PRESET:-release}"
[[ "$PRESET" =~ ^(release|dev|asan)$ ]] || {
  echo "bench: error: PRESET must be release, dev or asan" >&2
  exit 1
}
BIN="$ROOT/build/$PRESET"
REFERENCE="$BIN/bench/evp_bench_reference"
PROCESSOR="$BIN/events-processor"
EVENTCTL="$BIN/eventctl"

log() { echo "bench: $*"; }
die() {
  echo "bench: error: $*" >&2
  exit 1
}

for v in RUNS EVENTS TENANTS LATENCY_RATE LATENCY_SECONDS NAIVE_EVENTS HISTORY_EVENTS HISTORY_ITEMS REDRIVE_EVENTS SOAK_RATE; do
  [[ "${!v}" =~ ^[0-9]+$ && "${!v}" -gt 0 ]] || die "$v must be a positive integer (got '${!v}')"
done
((NAIVE_EVENTS <= EVENTS)) || NAIVE_EVENTS=$EVENTS
[[ "$SOAK_SECONDS" =~ ^[0-9]+$ ]] || die "SOAK_SECONDS must be a number of seconds (0 = no soak)"
DRAIN_TIMEOUT="${DRAIN_TIMEOUT:-$((120 + EVENTS / 500))}"
# A history event carries HISTORY_ITEMS items of about 450 bytes: unless set, the processor's
# MAX_EVENT_BYTES is raised to fit one, and nats-server's max_payload to 1 MiB above that (so
# that an oversized event still arrives, to be exhausted as too_large).
if [[ -z "${MAX_EVENT_BYTES:-}" ]] && ((HISTORY_ITEMS * 600 + 65536 > 921600)); then
  export MAX_EVENT_BYTES=$((HISTORY_ITEMS * 600 + 65536))
fi
NATS_MAX_PAYLOAD=$((${MAX_EVENT_BYTES:-921600} + 1048576))
HISTORY_STREAM=EVENTS_HISTORY
[[ "$DRAIN_TIMEOUT" =~ ^[0-9]+$ ]] || die "DRAIN_TIMEOUT must be a number of seconds"

COMMAND_LINE="SMOKE=$SMOKE RUNS=$RUNS EVENTS=$EVENTS TENANTS=$TENANTS LATENCY_RATE=$LATENCY_RATE"
COMMAND_LINE+=" LATENCY_SECONDS=$LATENCY_SECONDS NAIVE_EVENTS=$NAIVE_EVENTS"
COMMAND_LINE+=" HISTORY_EVENTS=$HISTORY_EVENTS HISTORY_ITEMS=$HISTORY_ITEMS"
COMMAND_LINE+=" REDRIVE_EVENTS=$REDRIVE_EVENTS BUILD=$BUILD"
((SOAK_SECONDS == 0)) || COMMAND_LINE+=" SOAK_SECONDS=$SOAK_SECONDS SOAK_RATE=$SOAK_RATE"
((PROFILE == 0)) || COMMAND_LINE+=" PROFILE=1"
for v in BATCH_SIZE DB_POOL_SIZE DB_STATEMENT_CACHE BATCH_MAX_WAIT MAX_ACK_PENDING MAX_EVENT_BYTES NATS_STORE_PARENT PGOPTIONS; do
  [[ -n "${!v:-}" ]] && COMMAND_LINE+=" $v=$(printf '%q' "${!v}")"
done
COMMAND_LINE+=" bench/run.sh"

if [[ -n "${PG_BIN:-}" ]]; then
  pg_bin="$PG_BIN"
else
  pg_bin=/usr/lib/postgresql/15/bin
fi
for tool in cmake nats-server curl jq awk; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is required (apt-get install $tool)"
done
[[ -x "$pg_bin/postgres" && -x "$pg_bin/initdb" ]] || die "PostgreSQL server binaries not in $pg_bin"
command -v psql >/dev/null 2>&1 || die "psql is required (postgresql-client)"

# ------------------------------------------------------------------------------------------
# Work area and cleanup

commit="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
# Uncommitted changes to what goes into the processor (read-only git commands only).
changed="$(git -C "$ROOT" --no-optional-locks status --porcelain --untracked-files=no -- \
  internal cmd migrations schemas CMakeLists.txt 2>/dev/null | awk '{ print $NF }' | paste -sd ' ' - || true)"
[[ -z "$changed" ]] || commit+=" + uncommitted changes to: $changed"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/evp-bench.XXXXXX")"
nats_store="$WORK/nats"
if [[ -n "${NATS_STORE_PARENT:-}" ]]; then
  nats_store="$(mktemp -d "$NATS_STORE_PARENT/evp-bench-nats.XXXXXX")" ||
    die "cannot create a directory under NATS_STORE_PARENT=$NATS_STORE_PARENT"
fi
chmod 755 "$WORK"
mkdir -p "$WORK/logs"

# ------------------------------------------------------------------------------------------
# Servers and cleanup

as_pg() {
  if [[ "$(id -u)" -eq 0 ]]; then
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

pg_dir="$WORK/pg"
pg_started=0
nats_pid=""
proc_pid=""
child_pid=""

stop_pid() { # pid, seconds to wait after SIGTERM before SIGKILL
  local pid="$1" i
  [[ -n "$pid" ]] || return 0
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < $2 * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
}

# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
  local status=$?
  stop_pid "$child_pid" 5
  stop_pid "$proc_pid" 30
  stop_pid "$nats_pid" 10
  if ((pg_started)); then
    as_pg "$pg_bin/pg_ctl" -D "$pg_dir/data" stop -m fast -w -t 30 >/dev/null 2>&1 ||
      as_pg "$pg_bin/pg_ctl" -D "$pg_dir/data" stop -m immediate -w -t 30 >/dev/null 2>&1 || true
  fi
  if [[ "$KEEP" == 1 || $status -ne 0 ]]; then
    echo "bench: logs kept in $WORK/logs and $pg_dir/postgres.log" >&2
    rm -rf "$nats_store" "$pg_dir/data"
  else
    rm -rf "$nats_store" "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------------------------------
# Build

if [[ "$BUILD" != 0 ]]; then
  log "building the $PRESET preset (log $WORK/logs/build.log)"
  if ! { cmake --preset "$PRESET" &&
    cmake --build --preset "$PRESET" -j2 --target events-processor eventctl evp_bench_reference; } \
    >"$WORK/logs/build.log" 2>&1; then
    tail -n 40 "$WORK/logs/build.log" >&2
    die "$PRESET build failed"
  fi
fi
for b in "$PROCESSOR" "$EVENTCTL" "$REFERENCE"; do
  [[ -x "$b" ]] || die "$b missing (run without BUILD=0)"
done

# ------------------------------------------------------------------------------------------
# Servers

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# Ports come from below the kernel's ephemeral range: an outgoing connection (any client on
# the machine) can take an ephemeral port between this check and the server's bind.
ephemeral_low="$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)"
((ephemeral_low > 12000)) || ephemeral_low=32768
free_port() {
  local p
  for _ in $(seq 1 50); do
    p=$((10000 + RANDOM % (ephemeral_low - 10000)))
    port_in_use "$p" || {
      echo "$p"
      return 0
    }
  done
  die "no free TCP port found"
}

mkdir -p "$pg_dir"
[[ "$(id -u)" -ne 0 ]] || chown postgres:postgres "$pg_dir"
as_pg "$pg_bin/initdb" -D "$pg_dir/data" --auth=trust -U postgres --encoding=UTF8 --locale=C \
  --no-sync >"$WORK/logs/initdb.log" 2>&1 || die "initdb failed; see $WORK/logs/initdb.log"
pg_extra=""
((PROFILE == 0)) || pg_extra=" -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.max=10000 -c pg_stat_statements.track_planning=on"
for attempt in 1 2 3 4 5; do
  pg_port="$(free_port)"
  if as_pg "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/postgres.log" -w -t 60 \
    -o "-c port=$pg_port -c listen_addresses=127.0.0.1 -c unix_socket_directories='$pg_dir' -c fsync=on -c synchronous_commit=on -c full_page_writes=on -c shared_buffers=256MB -c max_connections=100$pg_extra" \
    start >/dev/null; then
    pg_started=1
    break
  fi
  log "PostgreSQL did not start on port $pg_port (attempt $attempt)"
done
((pg_started)) || {
  tail -n 20 "$pg_dir/postgres.log" >&2 || true
  die "could not start PostgreSQL"
}
psql_db() { # database, psql arguments...
  local db="$1"
  shift
  PGOPTIONS='-c client_min_messages=warning' psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$pg_port" -U postgres -d "$db" "$@"
}

start_nats() { # store dir
  local i
  for attempt in 1 2 3 4 5; do
    nats_port="$(free_port)"
    nats_mon="$(free_port)"
    # History events of HISTORY_ITEMS realistic items are larger than the default 1 MB.
    printf 'max_payload: %d\n' "$NATS_MAX_PAYLOAD" >"$WORK/nats.conf"
    nats-server -c "$WORK/nats.conf" -js -sd "$1" -a 127.0.0.1 -p "$nats_port" -m "$nats_mon" \
      </dev/null >>"$WORK/logs/nats.log" 2>&1 &
    nats_pid=$!
    for ((i = 0; i < 100; i++)); do
      if curl -fsS --max-time 1 -o /dev/null \
        "http://127.0.0.1:$nats_mon/healthz?js-enabled-only=true" 2>/dev/null; then
        return 0
      fi
      kill -0 "$nats_pid" 2>/dev/null || break
      sleep 0.1
    done
    stop_pid "$nats_pid" 5
    nats_pid=""
    log "nats-server did not start on ports $nats_port/$nats_mon (attempt $attempt)"
  done
  tail -n 20 "$WORK/logs/nats.log" >&2 || true
  die "could not start nats-server"
}

# ------------------------------------------------------------------------------------------
# Measurement helpers

jsz() { curl -fsS --max-time 2 "http://127.0.0.1:$nats_mon/jsz?consumers=true"; }

stream_messages() {
  jsz | jq -r --arg s "$STREAM" \
    '[.account_details[]?.stream_detail[]? | select(.name == $s) | .state.messages] | first // 0'
}

# Waits until the consumer exists with nothing pending or unacknowledged and sets drained_at
# (unix seconds, like EPOCHREALTIME). The poll is evp_bench_reference --wait-drained: one
# process asking the server every 50 ms, so that measuring takes next to no CPU from the
# measured run (a curl + jq poll every 200 ms took about 8 % of the machine). Returns 2 when
# pid died without draining (after a 5 s grace for acks in flight), 3 on timeout; both set
# last_backlog.
wait_drained() { # consumer, pid, timeout seconds [, stream [, trace file]]
  local out rc=0
  out="$("$REFERENCE" --wait-drained --nats "nats://127.0.0.1:$nats_port" \
    --stream "${4:-$STREAM}" --durable "$1" --pid "$2" --timeout-s "$3" \
    ${5:+--trace "$5"})" || rc=$?
  case "$rc" in
    0) drained_at="$out" ;;
    4) last_backlog="$out"; return 2 ;;
    3) last_backlog="$out"; return 3 ;;
    *) last_backlog="unknown (the poll failed: $rc)"; return 3 ;;
  esac
}

elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
rate() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.0f", (s > 0 ? n / s : 0) }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a !~ /^[0-9.]+$/ || b !~ /^[0-9.]+$/ || b == 0) print "n/a"; else printf "%.2f", a / b }'; }
median() { # values... ; ">N" (beyond the top bucket) sorts above N; non-numbers are ignored
  printf '%s\n' "$@" | awk '
    /^>?[0-9.]+$/ { over = substr($0, 1, 1) == ">"; v = over ? substr($0, 2) + 0 : $0 + 0
                    printf "%.6f %d %s\n", v, over, $0 }' | sort -g -k1,1 -k2,2 |
    awk '{ v[NR] = $1; o[NR] = $2; t[NR] = $3 }
      END {
        if (NR == 0) { print "n/a"; exit }
        if (NR % 2) { print t[(NR + 1) / 2]; exit }
        a = NR / 2; b = a + 1
        if (o[b]) print t[b]; else print (v[a] + v[b]) / 2
      }'
}
maximum() { printf '%s\n' "$@" | awk '/^[0-9.]+$/' | sort -g | tail -n 1; }
vmhwm_kb() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null || true; }
vmrss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || true; }
# CPU clock ticks (user + system) of a process, with its reaped children (PostgreSQL backends).
pid_ticks() { awk '{ print $14 + $15 + $16 + $17 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
tree_ticks() { # pid: the process and its live children
  local total=0 p
  for p in "$1" $(pgrep -P "$1" 2>/dev/null); do total=$((total + $(pid_ticks "$p"))); done
  echo "$total"
}
# "PostgreSQL-ticks nats-server-ticks"
server_ticks() { echo "$(tree_ticks "$(head -n 1 "$pg_dir/data/postmaster.pid")") $(pid_ticks "$nats_pid")"; }
cpu_per_event() { # "pg nats" before, "pg nats [processor]" after, events
  awk -v b="$1" -v a="$2" -v n="$3" -v hz="$(getconf CLK_TCK)" 'BEGIN {
    split(b, x, " "); split(a, y, " "); us = 1e6 / hz / n
    out = sprintf("PostgreSQL %.1f, nats-server %.1f", (y[1] - x[1]) * us, (y[2] - x[2]) * us)
    if (y[3] != "") out = out sprintf(", processor %.1f", y[3] * us)
    print out }'
}
# pg_stat_statements of the processor phase, grouped by what each statement writes.
statement_profile() { # database
  psql_db "$1" -P footer=off <<'SQL'
SELECT kind, sum(calls) AS calls, sum(rows) AS rows,
       round(sum(total_exec_time)::numeric) AS exec_ms,
       round((100 * sum(total_exec_time) / sum(sum(total_exec_time)) OVER ())::numeric) AS pct,
       round((1000 * sum(total_exec_time) / nullif(sum(calls), 0))::numeric) AS us_per_call,
       round(sum(total_plan_time)::numeric) AS plan_ms, sum(plans) AS plans
FROM (SELECT calls, rows, total_exec_time, total_plan_time, plans, CASE
        WHEN query LIKE 'WITH r AS (SELECT DISTINCT ON%' THEN 'onboarding (contacts, onboarding_log)'
        WHEN query LIKE 'WITH r AS (SELECT agent_id, phone_number, min(seq)%'
          THEN 'first contacts.upsert marks'
        WHEN query ~ '^INSERT INTO "[^"]*"\."[a-z_]+" AS cur'
          THEN 'upsert ' || substring(query from '^INSERT INTO "[^"]*"\."([a-z_]+)"')
        WHEN query ~ '^UPDATE "[^"]*"\."[a-z_]+" AS cur'
          THEN 'update ' || substring(query from '^UPDATE "[^"]*"\."([a-z_]+)"')
        WHEN query LIKE 'SELECT r.idx%'
          THEN 'stale check ' || substring(query from 'FROM "[^"]*"\."([a-z_]+)" AS cur')
        WHEN query ~* '^\s*(--|CREATE|ALTER|SET LOCAL|SELECT pg_advisory)' THEN 'tenant schemas (DDL)'
        ELSE 'other' END AS kind
      FROM pg_stat_statements
      WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())) s
GROUP BY kind ORDER BY sum(total_exec_time) DESC;
SQL
}
mb() { awk -v k="$1" 'BEGIN { if (k == "" || k == "n/a") print "n/a"; else printf "%.0f MB", k / 1024 }'; }

# Sum of evp_events_total by outcome, "applied=N stale_skipped=N ..." from a /metrics dump.
outcomes() { # metrics dump [, event type]
  awk -v t="${2:-}" '/^evp_events_total\{/ && (t == "" || index($1, "type=\"" t "\"")) { if (match($1, /outcome="[^"]*"/)) { o = substr($1, RSTART + 9, RLENGTH - 10); n[o] += $2 } }
       END { for (o in n) printf "%s=%d\n", o, n[o] }' "$1" | sort | paste -sd ' ' -
}

# A phase whose work the processor did not finish: printed now, repeated after the table.
phase_failed() { # tag, phase, what the processor did not do
  printf '%s: %-10s FAILED: processor %s (backlog %s)\n' "$1" "$2" "$3" "$last_backlog"
  product_failed=1
  failure_notes+=("$1: processor $3 (backlog $last_backlog)")
}

metric_value() { # metrics dump, metric name [, labels that must all appear, e.g. 'type="x"']
  awk -v m="$2" -v l="${3:-}" '
    { name = $1; sub(/\{.*/, "", name) }
    name == m {
      ok = 1; n = split(l, want, ",")
      for (i = 1; i <= n; i++) if (!index($1, want[i])) ok = 0
      if (ok) v += $2
    }
    END { printf "%.0f", v }' "$1"
}

# "N batches of M messages and T ms (means; prepare P, write W, settle S ms), R redeliveries"
# from a /metrics dump. A batch is prepared while the one before it is written.
batch_stats() {
  awk '$1 == "evp_batch_size_messages_count" { n = $2 } $1 == "evp_batch_size_messages_sum" { m = $2 }
       $1 == "evp_batch_duration_seconds_sum" { t = $2 } $1 ~ /^evp_redeliveries_total/ { r = $2 }
       $1 ~ /^evp_batch_stage_seconds_(sum|count)\{/ && match($1, /stage="[a-z]+"/) {
         st = substr($1, RSTART + 7, RLENGTH - 8)
         if ($1 ~ /_sum\{/) ss[st] = $2; else sc[st] = $2 }
       function mean(st) { return sc[st] ? 1000 * ss[st] / sc[st] : 0 }
       END { printf "%d batches of %.0f messages and %.0f ms (means; prepare %.0f, write %.0f, settle %.0f ms), %d redeliveries",
               n, (n ? m / n : 0), (n ? 1000 * t / n : 0), mean("prepare"), mean("write"), mean("settle"), r }' "$1"
}

# Batches between two /metrics dumps (before, after, seconds between them): "N batches of M
# messages, writes of W ms, the writer busy P % of the time". Caught up, a batch holds what
# arrived during the write before it, so latency follows the write time of a batch.
batch_delta_stats() {
  awk -v secs="$3" '
       $1 == "evp_batch_size_messages_count" { n[FILENAME] = $2 }
       $1 == "evp_batch_size_messages_sum" { m[FILENAME] = $2 }
       $1 == "evp_batch_stage_seconds_sum{stage=\"write\"}" { w[FILENAME] = $2 }
       END { b = ARGV[1]; a = ARGV[2]; dn = n[a] - n[b]
             if (dn <= 0 || secs <= 0) { printf "no batches"; exit }
             printf "%d batches of %.0f messages, writes of %.1f ms, the writer busy %.0f %% of the time",
               dn, (m[a] - m[b]) / dn, 1000 * (w[a] - w[b]) / dn, 100 * (w[a] - w[b]) / secs }' "$1" "$2"
}

# "N tenant schemas created in the first S s" (from "consuming" to the last "tenant schema
# ready" line of the processor log): first-sight tenant DDL is inside the measured window.
tenant_setup() {
  jq -R -r 'fromjson? | select(.msg == "consuming" or .msg == "tenant schema ready") |
            "\(.msg)|\(.ts)"' "$1" |
    awk -F'|' '{ split(substr($2, 12, 12), t, ":"); s = t[1] * 3600 + t[2] * 60 + t[3]
                 if ($1 == "consuming") start = s; else { n++; last = s } }
               END { if (n && start != "") { d = last - start; if (d < 0) d += 86400
                       printf "%d tenant schemas created in the first %.1f s", n, d }
                     else printf "no tenant schema created" }'
}

# The processor's rate once the first-sight tenant schemas exist, "R N S" (events/s, events,
# seconds): the backlog at the last "tenant schema ready" line (from the drain poll's trace)
# over the time from then until drained. "n/a" without schemas or trace. With 1,000 tenants the
# schemas' DDL takes much of the window; this is the rate the scale bar is about.
after_schemas() { # processor log, backlog trace, drained_at
  local last
  last="$(jq -R -r 'fromjson? | select(.msg == "tenant schema ready") | .ts' "$1" | tail -n 1)"
  [[ -n "$last" && -s "$2" ]] || { echo "n/a 0 0"; return; }
  last="$(date -u -d "$last" +%s.%3N)"
  awk -v t="$last" -v end="$3" '$1 >= t { s = end - $1; if (s > 0) printf "%.0f %d %.3f\n", $2 / s, $2, s; else print "n/a 0 0"; found = 1; exit }
       END { if (!found) print "n/a 0 0" }' "$2"
}

# Quantiles of evp_end_to_end_latency_seconds from the bucket deltas between two /metrics
# dumps, linear interpolation inside the bucket (as Prometheus' histogram_quantile does).
# Prints "p50_ms p99_ms count"; a quantile in the +Inf bucket prints as ">30000".
latency_quantiles() { # before, after
  awk '
    function le_of(s) { match(s, /le="[^"]*"/); return substr(s, RSTART + 4, RLENGTH - 5) }
    /^evp_end_to_end_latency_seconds_bucket/ {
      le = le_of($1)
      if (FNR == NR) { before[le] = $2; next }
      order[n++] = le; after[le] = $2
    }
    function q(p,   rank, i, prev_cum, prev_le, cum) {
      rank = p * total; prev_cum = 0; prev_le = 0
      for (i = 0; i < n; i++) {
        cum = after[order[i]] - before[order[i]]
        if (cum >= rank && cum > 0) {
          if (order[i] == "+Inf") return sprintf(">%g", prev_le * 1000)
          if (cum == prev_cum) return sprintf("%.1f", order[i] * 1000)
          return sprintf("%.1f", (prev_le + (order[i] - prev_le) * (rank - prev_cum) / (cum - prev_cum)) * 1000)
        }
        prev_cum = cum; prev_le = order[i]
      }
      return "n/a"
    }
    END {
      total = after["+Inf"] - before["+Inf"]
      if (total <= 0) { print "n/a n/a 0"; exit }
      printf "%s %s %d\n", q(0.50), q(0.99), total
    }' "$1" "$2"
}

metrics_dump() { curl -fsS --max-time 5 "http://127.0.0.1:$http_port/metrics" >"$1"; }

# Runs the load generator against this run's nats-server, with its default connections: 2
# for the unpaced preload, 1 per 20,000 events/s for a paced load.
eventctl_load() {
  env -u TENANTS NATS_URL="nats://127.0.0.1:$nats_port" "$EVENTCTL" load --tenants "$TENANTS" \
    --mix standard --quiet "$@"
}

# Summary of the processor log: counts per level, then the distinct warn/error messages.
log_summary() {
  jq -R -r 'fromjson? | select(.level == "warning" or .level == "error" or .level == "critical")
            | "\(.level): \(.msg // .message // "?")"' "$1" | sort | uniq -c | sort -rn | head -n 8 |
    sed 's/^ */      /'
  grep -vE '^(\{|signal [0-9]+: )' "$1" | head -n 3 | sed 's/^/      (stderr) /' || true
}

# ------------------------------------------------------------------------------------------
# Runs

cpu_model="$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
mem_total="$(awk '/^MemTotal/ { printf "%.0f GB", $2 / 1048576 }' /proc/meminfo)"
started_at="$(date -u '+%Y-%m-%d %H:%M UTC')"
echo "command:  $COMMAND_LINE"
echo "commit:   $commit"
echo "machine:  $(nproc) cores (${cpu_model:-unknown CPU}), $mem_total RAM, $(uname -sr);" \
  "load average at start $(cut -d' ' -f1-3 /proc/loadavg)"
echo "servers:  $(nats-server --version), PostgreSQL $("$pg_bin/postgres" --version | awk '{ print $3 }')" \
  "(fsync=on synchronous_commit=on shared_buffers=256MB), all on this machine"
echo "date:     $started_at"
echo

soak_growths=()
ref_rates=() proc_rates=() run_ratios=() warm_rates=() hist_rates=() hist_ratios=() redrive_rates=()
redrive_applied_rates=() ref_this_run="" naive_rates=() p50s=() p99s=() ref_rss=() proc_rss=() naive_rss=()
product_failed=0
failure_notes=() # what went wrong, repeated after the table (CI shows the end of the output)
nats_port="" nats_mon="" http_port="" drained_at="" last_backlog=""

for ((run = 1; run <= RUNS; run++)); do
  tag="run $run/$RUNS"
  db="bench_r$run"
  dsn="postgresql://postgres@127.0.0.1:$pg_port/$db"
  rm -rf "$nats_store"
  mkdir -p "$nats_store"
  start_nats "$nats_store"
  psql_db postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
  ((PROFILE == 0)) || psql_db "$db" -c "CREATE EXTENSION pg_stat_statements"

  # Preload: one stream, EVENTS standard-mix events over TENANTS tenants.
  "$REFERENCE" --ensure-stream --nats "nats://127.0.0.1:$nats_port" --stream "$STREAM" ||
    die "cannot create the stream"
  t0="$EPOCHREALTIME"
  eventctl_load --rate 0 --count "$EVENTS" --run-id "bench-r$run" >"$WORK/logs/preload-$run.log" 2>&1 ||
    die "preload failed: $(tail -n 3 "$WORK/logs/preload-$run.log")"
  secs="$(elapsed "$t0" "$EPOCHREALTIME")"
  in_stream="$(stream_messages)"
  [[ "$in_stream" == "$EVENTS" ]] || die "stream holds $in_stream messages after preloading $EVENTS"
  echo "$tag: preload    $EVENTS events in ${secs} s ($(rate "$EVENTS" "$secs") events/s published;" \
    "load average $(cut -d' ' -f1 /proc/loadavg))"

  # (a) reference: from launch until its consumer has nothing pending or unacknowledged.
  psql_db "$db" -c CHECKPOINT
  ((PROFILE == 0)) || cpu_before="$(server_ticks)"
  t0="$EPOCHREALTIME"
  "$REFERENCE" --nats "nats://127.0.0.1:$nats_port" --pg "$dsn" --stream "$STREAM" \
    --durable "$REF_CONSUMER" --table bench_ref --batch 4096 --writers 2 --limit "$EVENTS" \
    >"$WORK/logs/reference-$run.log" 2>&1 &
  child_pid=$!
  status=0
  wait_drained "$REF_CONSUMER" "$child_pid" "$DRAIN_TIMEOUT" || status=$?
  wait "$child_pid" || die "reference failed: $(tail -n 3 "$WORK/logs/reference-$run.log")"
  child_pid=""
  ((status == 0)) || die "reference did not drain its consumer (backlog $last_backlog)"
  ((PROFILE == 0)) || ref_cpu="$(cpu_per_event "$cpu_before" "$(server_ticks)" "$EVENTS")"
  secs="$(elapsed "$t0" "$drained_at")"
  r="$(rate "$EVENTS" "$secs")"
  ref_rates+=("$r")
  ref_this_run="$r"
  self="$(grep '^reference:' "$WORK/logs/reference-$run.log" | tail -n 1)"
  rss="$(sed -n 's/.*peak_rss_kb=\([0-9]*\).*/\1/p' <<<"$self")"
  ref_rss+=("${rss:-n/a}")
  echo "$tag: reference  $EVENTS events in ${secs} s = $r events/s" \
    "(self-timed: $(sed -n 's/.*events_per_s=\([0-9]*\).*/\1/p' <<<"$self") events/s;" \
    "deadlock retries $(sed -n 's/.*retries=\([0-9]*\).*/\1/p' <<<"$self"); peak RSS $(mb "${rss:-n/a}"))"

  # (b) processor: from launch (start-up, migrations and tenant schemas included) until drained.
  psql_db "$db" -c CHECKPOINT
  ((PROFILE == 0)) || psql_db "$db" -c "SELECT pg_stat_statements_reset()" >/dev/null
  ((PROFILE == 0)) || cpu_before="$(server_ticks)"
  http_port="$(free_port)"
  proc_log="$WORK/logs/processor-$run.log"
  t0="$EPOCHREALTIME"
  env -u TENANTS NATS_URL="nats://127.0.0.1:$nats_port" POSTGRES_DSN="$dsn" HTTP_PORT="$http_port" \
    REALTIME_STREAM="$STREAM" REALTIME_CONSUMER="$PROC_CONSUMER" HISTORY_STREAM="$HISTORY_STREAM" \
    HISTORY_CONSUMER="$PROC_CONSUMER-history" DLQ_CONSUMER="$PROC_CONSUMER-dlq" \
    LOG_FORMAT=json LOG_LEVEL=info "$PROCESSOR" >"$proc_log" 2>&1 &
  proc_pid=$!
  status=0
  wait_drained "$PROC_CONSUMER" "$proc_pid" "$DRAIN_TIMEOUT" "$STREAM" \
    "$WORK/logs/backlog-$run.txt" || status=$?
  if ((status != 0)); then
    reason="did not drain within ${DRAIN_TIMEOUT} s"
    ((status == 2)) && reason="exited before draining"
    echo "$tag: processor  FAILED: $reason (backlog $last_backlog); log tail:"
    tail -n 15 "$proc_log" | sed 's/^/      /'
    product_failed=1
    failure_notes+=("$tag: processor $reason (backlog $last_backlog)")
    proc_rates+=("n/a") proc_rss+=("n/a") p50s+=("n/a") p99s+=("n/a") run_ratios+=("n/a") warm_rates+=("n/a")
    hist_rates+=("n/a") hist_ratios+=("n/a") redrive_rates+=("n/a") redrive_applied_rates+=("n/a")
  else
    secs="$(elapsed "$t0" "$drained_at")"
    r="$(rate "$EVENTS" "$secs")"
    rss_drained="$(vmhwm_kb "$proc_pid")"
    ((PROFILE == 0)) ||
      proc_cpu="$(cpu_per_event "$cpu_before" "$(server_ticks) $(pid_ticks "$proc_pid")" "$EVENTS")"
    proc_rates+=("$r")
    run_ratios+=("$(ratio "$r" "$ref_this_run")")
    metrics_dump "$WORK/logs/metrics-$run-drained.txt" || die "cannot read the processor's /metrics"
    echo "$tag: processor  $EVENTS events in ${secs} s = $r events/s" \
      "= ${run_ratios[-1]} x this run's reference (peak RSS $(mb "$rss_drained"); $(outcomes "$WORK/logs/metrics-$run-drained.txt");" \
      "$(batch_stats "$WORK/logs/metrics-$run-drained.txt"); $(tenant_setup "$proc_log"))"
    read -r warm warm_n warm_s < <(after_schemas "$proc_log" "$WORK/logs/backlog-$run.txt" "$drained_at")
    warm_rates+=("$warm")
    echo "$tag: processor  after the tenant schemas existed: $warm_n events in $warm_s s = $warm events/s"
    if ((PROFILE == 1)); then
      echo "$tag: profile    CPU per event (µs): reference phase: $ref_cpu;" \
        "processor phase: $proc_cpu"
      echo "$tag: profile    PostgreSQL executor and planning time of the processor phase by statement:"
      statement_profile "$db" | sed 's/^/      /'
    fi

    # (d) latency: the caught-up processor under LATENCY_RATE events/s for LATENCY_SECONDS.
    ((PROFILE == 0)) || psql_db "$db" -c "SELECT pg_stat_statements_reset()" >/dev/null
    metrics_dump "$WORK/logs/metrics-$run-before.txt" || die "cannot read the processor's /metrics"
    lat_from="$(date +%s.%N)"
    eventctl_load --rate "$LATENCY_RATE" --duration "${LATENCY_SECONDS}s" --run-id "bench-lat$run" \
      >"$WORK/logs/latency-load-$run.log" 2>&1 ||
      die "latency load failed: $(tail -n 3 "$WORK/logs/latency-load-$run.log")"
    status=0
    wait_drained "$PROC_CONSUMER" "$proc_pid" "$DRAIN_TIMEOUT" || status=$?
    if ((status != 0)); then
      phase_failed "$tag" latency "did not drain the latency load"
      p50s+=("n/a") p99s+=("n/a")
    else
      metrics_dump "$WORK/logs/metrics-$run-after.txt" || die "cannot read the processor's /metrics"
      read -r p50 p99 n < <(latency_quantiles "$WORK/logs/metrics-$run-before.txt" \
        "$WORK/logs/metrics-$run-after.txt")
      p50s+=("$p50") p99s+=("$p99")
      offered="$(sed -n 's/.*in \([0-9.]*\) s: \([0-9]*\) events\/s.*/\2/p' "$WORK/logs/latency-load-$run.log")"
      lat_secs="$(awk -v a="$lat_from" -v b="$(date +%s.%N)" 'BEGIN { printf "%.3f", b - a }')"
      echo "$tag: latency    $n events observed at ${offered:-?} events/s offered" \
        "(target $LATENCY_RATE): p50 ${p50} ms, p99 ${p99} ms;" \
        "$(batch_delta_stats "$WORK/logs/metrics-$run-before.txt" "$WORK/logs/metrics-$run-after.txt" "$lat_secs")"
      if ((PROFILE == 1)); then
        echo "$tag: profile    PostgreSQL executor and planning time of the latency phase by statement:"
        statement_profile "$db" | sed 's/^/      /'
      fi
    fi

    rss_end="$(vmhwm_kb "$proc_pid")"
    proc_rss+=("${rss_end:-n/a}")
    # (e) history imports: HISTORY_EVENTS history.messages events of HISTORY_ITEMS items each,
    # published at once to the caught-up processor; items/s from the first publish until its
    # history consumer has drained. eventctl builds the events first (--prebuild) and prints
    # when it starts publishing: generating 5,000-item events took about a fifth of the
    # machine, inside the window. After the RSS reading above: the memory bar is about the
    # realtime backlog; the history phase's peak is printed on its own line.
    env -u TENANTS NATS_URL="nats://127.0.0.1:$nats_port" "$EVENTCTL" load --tenants "$TENANTS" \
      --mix history.messages=1 --history-items "$HISTORY_ITEMS" --rate 0 --count "$HISTORY_EVENTS" \
      --concurrency 1 --quiet --prebuild --run-id "bench-hist$run" \
      >"$WORK/logs/history-load-$run.log" 2>&1 ||
      die "history load failed: $(tail -n 3 "$WORK/logs/history-load-$run.log")"
    t0="$(sed -n 's/^publishing from \([0-9.]*\)$/\1/p' "$WORK/logs/history-load-$run.log")"
    [[ -n "$t0" ]] || die "history load printed no start time: $(tail -n 3 "$WORK/logs/history-load-$run.log")"
    status=0
    wait_drained "$PROC_CONSUMER-history" "$proc_pid" "$DRAIN_TIMEOUT" "$HISTORY_STREAM" || status=$?
    if ((status != 0)); then
      phase_failed "$tag" history "did not drain the history imports"
      hist_rates+=("n/a") hist_ratios+=("n/a")
    else
      secs="$(elapsed "$t0" "$drained_at")"
      r_hist="$(rate $((HISTORY_EVENTS * HISTORY_ITEMS)) "$secs")"
      hist_rates+=("$r_hist")
      hist_ratios+=("$(ratio "$r_hist" "${proc_rates[-1]}")")
      metrics_dump "$WORK/logs/metrics-$run-history.txt" || die "cannot read the processor's /metrics"
      echo "$tag: history    $HISTORY_EVENTS events x $HISTORY_ITEMS items in ${secs} s" \
        "= $r_hist items/s = ${hist_ratios[-1]} x this run's realtime events/s" \
        "(history.messages events so far: $(outcomes "$WORK/logs/metrics-$run-history.txt" history.messages);" \
        "peak RSS now $(mb "$(vmhwm_kb "$proc_pid")"))"
    fi

    # (f) redrive: REDRIVE_EVENTS valid messages.upsert events recorded as exhausted (as the
    # DLQ worker records events whose retries ran out during a database outage), then one
    # `eventctl exhausted redrive`: its own rate (select, publish, mark resolved), and the rate
    # until the processor has applied them all.
    psql_db "$db" -c "INSERT INTO events_ops.exhausted_events (idempotency_key, company_id,
        source_subject, error_class, reason, attempts, original_payload, first_failed_at,
        last_failed_at)
      SELECT 'bench-redrive-$run:' || g, t, 'v1.messages.upsert.' || t, 'retryable',
        'retries_exhausted: database unavailable (benchmark seed)', 20,
        convert_to(json_build_object('message_id', 'redrive-$run-' || g, 'company_id', t,
          'chat_id', 'chat-' || (g % 100), 'jid', '5511' || (900000000 + g % 100) || '@s.whatsapp.net',
          'flow', 'OUT', 'message_type', 'text',
          'message_text', 'redriven message ' || g, 'status', 'sent',
          'message_timestamp', extract(epoch FROM now())::bigint)::text, 'UTF8'),
        now(), now()
      FROM generate_series(1, $REDRIVE_EVENTS) g,
        LATERAL (SELECT 'load_t' || lpad((g % $TENANTS)::text, 4, '0') AS t) x" >/dev/null
    metrics_dump "$WORK/logs/metrics-$run-before-redrive.txt" || die "cannot read the processor's /metrics"
    redriven_before="$(metric_value "$WORK/logs/metrics-$run-before-redrive.txt" evp_redriven_events_total)"
    applied_before="$(metric_value "$WORK/logs/metrics-$run-before-redrive.txt" evp_events_total \
      'type="messages.upsert",outcome="applied"')"
    t0="$EPOCHREALTIME"
    env -u TENANTS NATS_URL="nats://127.0.0.1:$nats_port" POSTGRES_DSN="$dsn" "$EVENTCTL" \
      exhausted redrive --reason retries_exhausted --limit "$REDRIVE_EVENTS" --note benchmark \
      >"$WORK/logs/redrive-$run.log" 2>&1 ||
      die "redrive failed: $(tail -n 3 "$WORK/logs/redrive-$run.log")"
    redrive_line="$(tr '\r' '\n' <"$WORK/logs/redrive-$run.log" | grep '^redriven ' | tail -n 1 || true)"
    r_redrive="$(sed -n 's/^redriven .*(\([0-9]*\) events\/s).*/\1/p' <<<"$redrive_line")"
    redrive_rates+=("${r_redrive:-n/a}")
    status=0
    wait_drained "$PROC_CONSUMER" "$proc_pid" "$DRAIN_TIMEOUT" || status=$?
    if ((status != 0)); then
      phase_failed "$tag" redrive "did not drain the redriven events"
      redrive_applied_rates+=("n/a")
    else
      secs="$(elapsed "$t0" "$drained_at")"
      redrive_applied_rates+=("$(rate "$REDRIVE_EVENTS" "$secs")")
      metrics_dump "$WORK/logs/metrics-$run-redrive.txt" || die "cannot read the processor's /metrics"
      redriven_after="$(metric_value "$WORK/logs/metrics-$run-redrive.txt" evp_redriven_events_total)"
      applied_after="$(metric_value "$WORK/logs/metrics-$run-redrive.txt" evp_events_total \
        'type="messages.upsert",outcome="applied"')"
      echo "$tag: redrive    ${redrive_line:-no summary line from eventctl};" \
        "all applied ${secs} s after the command started = ${redrive_applied_rates[-1]} events/s" \
        "($((redriven_after - redriven_before)) counted by evp_redriven_events_total," \
        "$((applied_after - applied_before)) applied)"
    fi

    # (g) soak: SOAK_RATE events/s for SOAK_SECONDS with the processor's resident memory
    # sampled every 10 s. "Growth" is the last sample minus the sample after the first
    # minute (allocator pools and caches fill up during the first minute).
    if ((SOAK_SECONDS > 0)); then
      eventctl_load --rate "$SOAK_RATE" --duration "${SOAK_SECONDS}s" --run-id "bench-soak$run" \
        >"$WORK/logs/soak-load-$run.log" 2>&1 &
      load_pid=$!
      soak_start=$SECONDS
      : >"$WORK/logs/soak-rss-$run.txt"
      while kill -0 "$load_pid" 2>/dev/null; do
        echo "$((SECONDS - soak_start)) $(vmrss_kb "$proc_pid")" >>"$WORK/logs/soak-rss-$run.txt"
        sleep 10
      done
      wait "$load_pid" || die "soak load failed: $(tail -n 3 "$WORK/logs/soak-load-$run.log")"
      status=0
      wait_drained "$PROC_CONSUMER" "$proc_pid" "$DRAIN_TIMEOUT" || status=$?
      echo "$((SECONDS - soak_start)) $(vmrss_kb "$proc_pid")" >>"$WORK/logs/soak-rss-$run.txt"
      if ((status != 0)); then
        phase_failed "$tag" soak "did not keep up with the soak load"
        soak_growths+=("n/a")
      else
        read -r first last peak < <(awk '$1 >= 60 && first == "" { first = $2 }
          { last = $2; if ($2 > peak) peak = $2 } END { print (first == "" ? last : first), last, peak }' \
          "$WORK/logs/soak-rss-$run.txt")
        soak_growths+=("$(awk -v a="$first" -v b="$last" 'BEGIN { printf "%.1f", (b - a) / 1024 }')")
        echo "$tag: soak       $SOAK_SECONDS s at $SOAK_RATE events/s offered: RSS $(mb "$first") after" \
          "1 min, $(mb "$last") at the end, $(mb "$peak") at most; growth ${soak_growths[-1]} MB" \
          "(samples in logs/soak-rss-$run.txt)"
      fi
    fi
  fi

  # Stop the processor (SIGTERM: it drains), then the naive design on a bounded slice.
  if [[ -n "$proc_pid" ]]; then
    how="after SIGTERM"
    kill -0 "$proc_pid" 2>/dev/null || how="(it had exited on its own)"
    stop_pid "$proc_pid" 40
    exit_status=0
    wait "$proc_pid" || exit_status=$?
    proc_pid=""
    warnings="$(grep -c '"level":"warning"' "$proc_log" || true)"
    errors="$(grep -cE '"level":"(error|critical)"' "$proc_log" || true)"
    echo "$tag: processor  exit status $exit_status $how; log: $errors errors," \
      "$warnings warnings"
    if ((${#failure_notes[@]} > 0)) && [[ "${failure_notes[-1]}" == "$tag: "* ]]; then
      failure_notes[-1]+="; exit status $exit_status $how; last log lines:"
      failure_notes[-1]+=$'\n'"$(tail -n 12 "$proc_log" | cut -c1-400 | sed 's/^/      /')"
    fi
    if ((errors + warnings > 0)) || grep -qvE '^(\{|signal [0-9]+: )' "$proc_log"; then
      log_summary "$proc_log"
    fi
  fi

  "$REFERENCE" --naive --nats "nats://127.0.0.1:$nats_port" --pg "$dsn" --stream "$STREAM" \
    --durable "$NAIVE_CONSUMER" --table bench_naive --batch 1024 --limit "$NAIVE_EVENTS" \
    >"$WORK/logs/naive-$run.log" 2>&1 || die "naive run failed: $(tail -n 3 "$WORK/logs/naive-$run.log")"
  self="$(grep '^reference:' "$WORK/logs/naive-$run.log" | tail -n 1)"
  r="$(sed -n 's/.*events_per_s=\([0-9]*\).*/\1/p' <<<"$self")"
  rss="$(sed -n 's/.*peak_rss_kb=\([0-9]*\).*/\1/p' <<<"$self")"
  naive_rates+=("${r:-n/a}") naive_rss+=("${rss:-n/a}")
  echo "$tag: naive      $NAIVE_EVENTS events, $(sed -n 's/.*seconds=\([0-9.]*\).*/\1/p' <<<"$self") s" \
    "= $r events/s (one transaction + AckSync per event)"

  stop_pid "$nats_pid" 10
  wait "$nats_pid" 2>/dev/null || true
  nats_pid=""
  psql_db postgres -c "DROP DATABASE IF EXISTS $db"
  echo
done

# ------------------------------------------------------------------------------------------
# Report

pg_problems="$(grep -E '(ERROR|FATAL|PANIC|WARNING): ' "$pg_dir/postgres.log" |
  sed -E 's/^.*(ERROR|FATAL|PANIC|WARNING): +/\1: /' | sort | uniq -c | sort -rn | head -n 8 || true)"
if [[ -n "$pg_problems" ]]; then
  echo "PostgreSQL log (all runs), most frequent problems:"
  printf '%s\n' "$pg_problems" | sed 's/^ */      /'
  echo
fi

ref_med="$(median "${ref_rates[@]}")"
proc_med="$(median "${proc_rates[@]}")"
naive_med="$(median "${naive_rates[@]}")"
p50_med="$(median "${p50s[@]}")"
p99_med="$(median "${p99s[@]}")"
fmt_ms() { [[ "$1" == n/a* ]] && echo "$1" || echo "$1 ms"; }

echo "Results: medians of $RUNS run(s), $EVENTS events over $TENANTS tenants (standard mix);" \
  "latency at $LATENCY_RATE events/s for $LATENCY_SECONDS s; naive on $NAIVE_EVENTS events"
printf '| %-48s | %17s | %18s | %14s | %10s | %10s | %14s |\n' \
  path "events/s (median)" "ratio to reference" "ratio to naive" p50 p99 "peak RSS (max)"
printf '| %-48s | %17s | %18s | %14s | %10s | %10s | %14s |\n' \
  "---" "---:" "---:" "---:" "---:" "---:" "---:"
printf '| %-48s | %17s | %18s | %14s | %10s | %10s | %14s |\n' \
  "reference: fetch 4096, COPY upsert, 2 writers" "$ref_med" "1.00" "$(ratio "$ref_med" "$naive_med")" \
  "-" "-" "$(mb "$(maximum "${ref_rss[@]}")")"
printf '| %-48s | %17s | %18s | %14s | %10s | %10s | %14s |\n' \
  "events-processor (full validation, bookkeeping)" "$proc_med" "$(ratio "$proc_med" "$ref_med")" \
  "$(ratio "$proc_med" "$naive_med")" "$(fmt_ms "$p50_med")" "$(fmt_ms "$p99_med")" \
  "$(mb "$(maximum "${proc_rss[@]}")")"
printf '| %-48s | %17s | %18s | %14s | %10s | %10s | %14s |\n' \
  "naive: 1 transaction + AckSync per event" "$naive_med" "$(ratio "$naive_med" "$ref_med")" "1.00" \
  "-" "-" "$(mb "$(maximum "${naive_rss[@]}")")"
echo
echo "per run (events/s): reference ${ref_rates[*]} | processor ${proc_rates[*]} |" \
  "naive ${naive_rates[*]} | p50 ms ${p50s[*]} | p99 ms ${p99s[*]}"
echo "processor / reference within each run: ${run_ratios[*]} (median $(median "${run_ratios[@]}"))"
echo "processor once its first-sight tenant schemas existed (events/s): ${warm_rates[*]}" \
  "(median $(median "${warm_rates[@]}")); the scale bar compares this figure for TENANTS=1000 and 50"
echo "history imports ($HISTORY_EVENTS events x $HISTORY_ITEMS items): items/s ${hist_rates[*]}" \
  "(median $(median "${hist_rates[@]}")); items/s / realtime events/s within each run:" \
  "${hist_ratios[*]} (median $(median "${hist_ratios[@]}"))"
echo "redrive ($REDRIVE_EVENTS exhausted events): eventctl events/s ${redrive_rates[*]}" \
  "(median $(median "${redrive_rates[@]}")); until applied: ${redrive_applied_rates[*]}" \
  "(median $(median "${redrive_applied_rates[@]}"))"
echo "latency precision is bounded by the histogram buckets (1, 2.5, 5, 7.5, 10, 15, 20, 30, 40, 50, 75, 100 ms ...):"
echo "a quantile is interpolated linearly inside its bucket."
echo

verdict() { # label, value (may be ">N"), comparison (ge|le), bar, unit
  local v="$2" res=MISS
  if [[ "$v" =~ ^[0-9.]+$ ]] &&
    awk -v v="$v" -v b="$4" -v c="$3" 'BEGIN { exit !((c == "ge") ? v >= b : v <= b) }'; then
    res=PASS
  fi
  [[ "$v" == n/a ]] || v+="$5"
  printf '%-4s %-42s %s (bar: %s %s%s)\n' "$res" "$1" "$v" "$([[ $3 == ge ]] && echo '>=' || echo '<=')" "$4" "$5"
}
proc_rss_mb="$(awk -v k="$(maximum "${proc_rss[@]}")" 'BEGIN { if (k == "") print "n/a"; else printf "%.0f", k / 1024 }')"
echo "QUALITY.md bars:"
verdict "throughput: processor / reference" "$(ratio "$proc_med" "$ref_med")" ge 0.75 "x"
verdict "latency p50 at ${LATENCY_RATE} events/s" "$p50_med" le 10 " ms"
verdict "latency p99 at ${LATENCY_RATE} events/s" "$p99_med" le 50 " ms"
verdict "peak RSS with a ${EVENTS}-event backlog" "$proc_rss_mb" le 100 " MB"
verdict "history items/s / realtime events/s" "$(median "${hist_ratios[@]}")" ge 1.00 "x"
verdict "redrive of ${REDRIVE_EVENTS} exhausted events" "$(median "${redrive_rates[@]}")" ge 5000 " events/s"
if ((SOAK_SECONDS > 0)); then
  # "Flat": less than 5 MB more than after the first minute, for the worst run (a shrinking
  # RSS counts as 0).
  worst_growth="$(printf '%s\n' "${soak_growths[@]}" | awk '/^-?[0-9.]+$/' | sort -g | tail -n 1)"
  worst_growth="$(awk -v g="$worst_growth" 'BEGIN { if (g == "") print "n/a"; else printf "%.1f", (g < 0 ? 0 : g) }')"
  verdict "RSS growth over a ${SOAK_SECONDS} s soak" "$worst_growth" le 5 " MB"
fi
if ((SMOKE == 1 || EVENTS != 200000 || LATENCY_RATE != 5000)); then
  echo "(bars are defined for EVENTS=200000 and LATENCY_RATE=5000; this run used other sizes)"
fi
echo "finished in $SECONDS s"
if ((product_failed)); then
  echo "bench: the processor did not complete the workload:" >&2
  printf '  %s\n' "${failure_notes[@]}" >&2
  exit 3
fi
