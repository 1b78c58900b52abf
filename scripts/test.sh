#!/usr/bin/env bash
# What `make test` executes: bootstrap, configure + build a preset, then run ctest against ONE
# throw-away PostgreSQL cluster shared by all test processes (each test process creates its
# own fresh database in it, see tests/support/servers.hpp). The cluster lives in a mktemp
# directory on a free port and is always removed on exit. Exits with ctest's status.
#
# PRESET [dev] (dev, release, asan), CTEST_ARGS (ctest selection; default "-LE chaos": unit and
# integration; the chaos suite runs with `make chaos`), CTEST_JOBS [3] (tests run at the same
# time: an integration test mostly waits for its servers, and uses about a third of a core).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PRESET="${PRESET:-dev}"
cd "$ROOT"
started=$SECONDS

log() { echo "test.sh: $*"; }

"$ROOT/scripts/bootstrap.sh"
cmake --preset "$PRESET"
cmake --build --preset "$PRESET" -j2

if [[ -n "${PG_BIN:-}" ]]; then
  pg_bin="$PG_BIN"
elif [[ -x /usr/lib/postgresql/15/bin/postgres ]]; then
  pg_bin=/usr/lib/postgresql/15/bin
else
  pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
fi
[[ -n "$pg_bin" && -x "$pg_bin/postgres" ]] || {
  echo "test.sh: PostgreSQL server binaries not found" >&2
  exit 1
}

as_pg() {
  if [[ "$(id -u)" -eq 0 ]]; then
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

pg_dir="$(mktemp -d "${TMPDIR:-/tmp}/evp-test-pg.XXXXXX")"
ctest_log="$(mktemp "${TMPDIR:-/tmp}/evp-ctest.XXXXXX")"
pg_started=0
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
  if ((pg_started)); then
    as_pg "$pg_bin/pg_ctl" -D "$pg_dir/data" stop -m fast -w -t 30 >/dev/null 2>&1 ||
      as_pg "$pg_bin/pg_ctl" -D "$pg_dir/data" stop -m immediate -w -t 30 >/dev/null 2>&1 || true
  fi
  rm -rf "$pg_dir" "$ctest_log"
}
trap cleanup EXIT
if [[ "$(id -u)" -eq 0 ]]; then
  chown postgres:postgres "$pg_dir"
fi

as_pg "$pg_bin/initdb" -D "$pg_dir/data" --auth=trust -U postgres --encoding=UTF8 --locale=C \
  --no-sync >"$pg_dir/initdb.log" 2>&1 || {
  cat "$pg_dir/initdb.log" >&2
  exit 1
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A port can be taken between the check and the bind: try a few.
for attempt in 1 2 3 4 5; do
  port=$((10000 + RANDOM % 22000)) # below the ephemeral range (32768-60999)
  port_in_use "$port" && continue
  if as_pg "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/postgres.log" -w -t 60 \
    -o "-c port=$port -c listen_addresses=127.0.0.1 -c unix_socket_directories='$pg_dir' -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
    start >/dev/null; then
    pg_started=1
    break
  fi
  log "PostgreSQL did not start on port $port (attempt $attempt)"
done
if ((pg_started == 0)); then
  tail -n 30 "$pg_dir/postgres.log" >&2 || true
  echo "test.sh: could not start the test PostgreSQL cluster" >&2
  exit 1
fi
export EVP_TEST_POSTGRES_ADMIN_DSN="postgresql://postgres@127.0.0.1:$port/postgres"
log "test PostgreSQL on 127.0.0.1:$port (data $pg_dir/data)"

export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1}"

status=0
# shellcheck disable=SC2086 # CTEST_ARGS is split into arguments on purpose.
ctest --preset "$PRESET" -j"${CTEST_JOBS:-3}" --output-on-failure --no-tests=error ${CTEST_ARGS:--LE chaos} 2>&1 |
  tee "$ctest_log" || status=${PIPESTATUS[0]}

summary="$(grep -E '^[0-9]+% tests passed, [0-9]+ tests? failed out of [0-9]+' "$ctest_log" | tail -n 1 || true)"
if [[ "$summary" =~ ([0-9]+)\ tests?\ failed\ out\ of\ ([0-9]+) ]]; then
  failed="${BASH_REMATCH[1]}"
  total="${BASH_REMATCH[2]}"
else
  failed=0
  total=0
fi
log "preset $PRESET, ctest exit status $status, $((SECONDS - started)) s"
echo "summary: $((total - failed)) passed, $failed failed"
exit "$status"
