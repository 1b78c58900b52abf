#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz/ with clang (ASan + UBSan) into build/fuzz/ and
# runs each for a bounded time. Exits non-zero when any target crashes; the crashing inputs
# are kept in build/fuzz/artifacts/.
#
#   scripts/fuzz.sh [seconds-per-target] [target...]
#     seconds  default 60; 0 only replays the seed corpus (a quick smoke check)
#     target   subject_fuzz, event_fuzz, dlq_fuzz (default: all)
#
# The main build uses g++ via CMake; this one compiles the pure sources it needs (core,
# routing, validation, handlers and the embedded schemas) directly, so nothing here links
# nats.c, libpqxx or prometheus-cpp. As root on Debian, missing clang is installed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root="$PWD"

seconds="${1:-60}"
shift || true
targets=("$@")
((${#targets[@]})) || targets=(subject_fuzz event_fuzz dlq_fuzz)
if ! [[ "$seconds" =~ ^[0-9]+$ ]]; then
  echo "usage: scripts/fuzz.sh [seconds-per-target] [target...]" >&2
  exit 2
fi

out="$root/build/fuzz"
jobs="$(nproc 2>/dev/null || echo 2)"

# --- toolchain -------------------------------------------------------------------------
apt_install() {
  if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "fuzz: missing $*; install them (as root: apt-get install $*)" >&2
    exit 1
  fi
  echo "fuzz: installing $*"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

find_clang() {
  local c
  for c in clang++-14 clang++; do
    if command -v "$c" >/dev/null 2>&1; then
      echo "$c"
      return
    fi
  done
}
CXX="${FUZZ_CXX:-$(find_clang)}"
if [[ -z "$CXX" ]]; then
  apt_install clang libclang-rt-14-dev
  CXX="$(find_clang)"
fi
# clang without its runtime libraries cannot link -fsanitize=fuzzer.
if [[ ! -e "$("$CXX" -print-runtime-dir)/libclang_rt.fuzzer-x86_64.a" ]] &&
  [[ ! -e "$("$CXX" -print-runtime-dir)/libclang_rt.fuzzer.a" ]]; then
  apt_install libclang-rt-14-dev
fi
missing=()
[[ -e /usr/include/nlohmann/json.hpp ]] || missing+=(nlohmann-json3-dev)
[[ -e /usr/include/valijson/validator.hpp ]] || missing+=(libvalijson-dev)
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
((${#missing[@]} == 0)) || apt_install "${missing[@]}"
echo "fuzz: $("$CXX" --version | head -n1)"

# --- build -----------------------------------------------------------------------------
mkdir -p "$out/generated" "$out/obj" "$out/artifacts" "$out/logs" "$out/corpus"

embed() {  # embed <out> <name> <base> <files...>
  local file="$1" name="$2" base="$3"
  shift 3
  local IFS='|'
  cmake "-DOUT=$file" "-DNAME=$name" "-DBASE=$base" "-DFILES=$*" -P scripts/embed.cmake
}
mapfile -t schema_files < <(find "$root/schemas/v1" -name '*.json' | LC_ALL=C sort)
mapfile -t migration_files < <(find "$root/migrations" -mindepth 2 -maxdepth 2 -name '*.sql' |
  LC_ALL=C sort)
embed "$out/generated/embedded_schemas.cpp" EmbeddedSchemas "$root/schemas" "${schema_files[@]}"
embed "$out/generated/embedded_migrations.cpp" EmbeddedMigrations "$root/migrations" \
  "${migration_files[@]}"

# Sanitizer findings must stop the run (UBSan only warns by default) so libFuzzer keeps the
# input. _GLIBCXX_ASSERTIONS adds bounds checks to std containers.
# shellcheck disable=SC2054 # commas belong to -fsanitize=
common=(-std=c++20 -g -O1 -fno-omit-frame-pointer -I"$root/internal"
  -DVALIJSON_USE_EXCEPTIONS=1 '-DEVP_VERSION="fuzz"' -D_GLIBCXX_ASSERTIONS
  -fsanitize=address,undefined -fno-sanitize-recover=all)
# Project sources are g++-clean; clang's extra warnings must not break this build.
lib_flags=("${common[@]}" -fsanitize=fuzzer-no-link -w)
target_flags=("${common[@]}" -fsanitize=fuzzer -Wall -Wextra -Wpedantic -Wshadow -Werror)

sources=(internal/core/event.cpp internal/core/dead_letter.cpp internal/core/text.cpp
  internal/core/duration.cpp internal/routing/subject.cpp internal/validation/decoder.cpp
  internal/validation/schema_registry.cpp internal/validation/utf8.cpp
  internal/validation/json_spans.cpp
  internal/handlers/mutation.cpp "$out/generated/embedded_schemas.cpp"
  "$out/generated/embedded_migrations.cpp")

# Rebuild an object when the flags changed, or when its source or any header it includes
# (from the compiler's .d file) is newer.
stamp="$out/obj/flags"
flags_now="$CXX ${lib_flags[*]}"
if ! [[ -f "$stamp" && "$(cat "$stamp")" == "$flags_now" ]]; then
  rm -f "$out"/obj/*.o
  echo "$flags_now" >"$stamp"
fi

is_stale() {  # is_stale <object>
  local obj="$1" dep
  [[ -f "$obj" && -f "${obj%.o}.d" ]] || return 0
  # shellcheck disable=SC2013 # a .d file lists space-separated paths
  for dep in $(sed -e 's/^[^:]*://' -e 's/\\$//' "${obj%.o}.d"); do
    [[ "$dep" -nt "$obj" ]] && return 0
  done
  return 1
}
objects=()
stale=()
for src in "${sources[@]}"; do
  obj="$out/obj/$(basename "${src%.cpp}").o"
  objects+=("$obj")
  if is_stale "$obj"; then stale+=("$src"); fi
done
if ((${#stale[@]})); then
  echo "fuzz: compiling ${#stale[@]} source(s) with $jobs job(s)"
  export CXX out
  # shellcheck disable=SC2016 # expanded by the inner bash
  printf '%s\n' "${stale[@]}" | xargs -P "$jobs" -I{} bash -c \
    'o="$out/obj/$(basename "${1%.cpp}").o"; "$CXX" "${@:2}" -MMD -MF "${o%.o}.d" -c "$1" -o "$o.tmp" && mv "$o.tmp" "$o"' \
    _ {} "${lib_flags[@]}"
fi
for t in "${targets[@]}"; do
  [[ -f "tests/fuzz/$t.cpp" ]] || {
    echo "fuzz: no such target tests/fuzz/$t.cpp" >&2
    exit 2
  }
  # Relinked when the flags, an object, the target's source or a header it includes changed.
  relink=0
  if [[ ! -f "$out/$t" || ! -f "$out/$t.d" || "$stamp" -nt "$out/$t" ]]; then
    relink=1
  else
    # shellcheck disable=SC2013 # a .d file lists space-separated paths
    for dep in $(sed -e 's/^[^:]*://' -e 's/\\$//' "$out/$t.d") "${objects[@]}"; do
      if [[ "$dep" -nt "$out/$t" ]]; then
        relink=1
        break
      fi
    done
  fi
  ((relink)) || continue
  echo "fuzz: linking $t"
  "$CXX" "${target_flags[@]}" -Itests/fuzz -MMD -MF "$out/$t.d" "tests/fuzz/$t.cpp" \
    "${objects[@]}" -o "$out/$t"
done

# --- corpora ---------------------------------------------------------------------------
# The working corpus lives in build/fuzz/corpus/<target> and grows across runs; only the
# hand-written seeds of tests/fuzz/corpus/<target> are in the repository.
seed_corpus() {  # seed_corpus <target>
  local t="$1" dir="$out/corpus/$1" f
  mkdir -p "$dir"
  if [[ -d "tests/fuzz/corpus/$t" ]]; then
    for f in "tests/fuzz/corpus/$t"/*; do cp -f "$f" "$dir/seed-$(basename "$f")"; done
  fi
  if [[ "$t" == event_fuzz ]]; then
    while IFS= read -r f; do
      # tests/testdata/valid/chats.upsert/full.json -> testdata-valid-chats.upsert-full.json
      cp -f "$f" "$dir/$(echo "${f#tests/}" | tr '/' '-')"
    done < <(find tests/testdata/valid tests/testdata/invalid -name '*.json' | LC_ALL=C sort)
  fi
}

# --- run -------------------------------------------------------------------------------
export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
failed=()
for t in "${targets[@]}"; do
  seed_corpus "$t"
  log="$out/logs/$t.log"
  args=(-rss_limit_mb=2048 -timeout=10 -print_final_stats=1
    "-artifact_prefix=$out/artifacts/$t-")
  [[ -f "tests/fuzz/$t.dict" ]] && args+=("-dict=tests/fuzz/$t.dict")
  if ((seconds > 0)); then args+=("-max_total_time=$seconds"); else args+=(-runs=0); fi
  echo "fuzz: running $t for ${seconds}s (log: ${log#"$root"/})"
  status=0
  "$out/$t" "${args[@]}" "$out/corpus/$t" >"$log" 2>&1 || status=$?
  # Final stats: execs per second, coverage (edges) and features of the last status line.
  execs="$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}' || true)"
  rate="$(grep -E '^stat::average_exec_per_sec' "$log" | awk '{print $2}' || true)"
  last="$(grep -E '#[0-9]+.*(cov|DONE|INITED)' "$log" | tail -n1 || true)"
  cov="$(grep -oE 'cov: [0-9]+' <<<"$last" | awk '{print $2}' || true)"
  ft="$(grep -oE 'ft: [0-9]+' <<<"$last" | awk '{print $2}' || true)"
  units="$(grep -oE 'corp: [0-9]+' <<<"$last" | awk '{print $2}' || true)"
  echo "fuzz: $t: execs=${execs:-?} exec/s=${rate:-?} cov=${cov:-?} ft=${ft:-?}" \
    "corpus=${units:-?} status=$status"
  if ((status != 0)); then
    failed+=("$t")
    grep -E 'ERROR: |INVARIANT BROKEN|runtime error|Test unit written' "$log" | head -n 5 || true
    echo "fuzz: reproduce: build/fuzz/$t <artifact>; minimize: build/fuzz/$t" \
      "-minimize_crash=1 -runs=100000 -exact_artifact_path=build/fuzz/artifacts/$t-min <artifact>"
  fi
done

if ((${#failed[@]})); then
  echo "fuzz: FAILED: ${failed[*]} (artifacts in build/fuzz/artifacts/)"
  exit 1
fi
echo "fuzz: ok (${targets[*]})"
