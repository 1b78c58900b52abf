#!/usr/bin/env bash
# Runs clang-tidy with the checks of .clang-tidy on the project's C++ sources, using the dev
# build's compile commands (build/dev, configured and built first: some sources include
# generated headers). Exits non-zero when any check finds something or clang-tidy fails.
#
#   scripts/tidy.sh [file...]   default: every .cpp of cmd/ internal/ bench/ tests/
#                               (tests/fuzz is built by clang directly and has no entry)
#   JOBS=N                      parallel clang-tidy processes (default: the CPU count)
#   TIDY_DIRS="cmd internal"    the directories whose .cpp files are checked (default: all four)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v clang-tidy >/dev/null 2>&1; then
  echo "tidy: clang-tidy is missing; run make bootstrap" >&2
  exit 1
fi
jobs="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
cmake --preset dev >/dev/null
if ! build_log="$(cmake --build --preset dev -j"$jobs" 2>&1)"; then
  echo "$build_log" >&2
  echo "tidy: the dev build failed" >&2
  exit 1
fi

files=("$@")
if ((${#files[@]} == 0)); then
  # shellcheck disable=SC2086 # TIDY_DIRS is a list of directories on purpose.
  mapfile -t files < <(find ${TIDY_DIRS:-cmd internal bench tests} -name '*.cpp' -not -path 'tests/fuzz/*' | sort)
fi
out="$(mktemp)"
err="$(mktemp)"
trap 'rm -f "$out" "$err"' EXIT
status=0
# Findings go to stdout; stderr carries "N warnings generated" (system headers, suppressed)
# and whatever else went wrong (a crash, a file missing from the compile commands).
printf '%s\n' "${files[@]}" |
  xargs -d '\n' -P "$jobs" -n 1 clang-tidy -p build/dev --quiet >"$out" 2>"$err" || status=$?
findings="$(grep -c ': \(warning\|error\):' "$out" || true)"
if ((status != 0 || findings > 0)); then
  cat "$out"
  grep -v ' warnings\? generated\.$' "$err" >&2 || true
  echo "tidy: failed (clang-tidy status ${status}; ${findings} finding line(s), a header's" \
    "finding shows once per file that includes it)" >&2
  exit 1
fi
echo "tidy: ${#files[@]} files, no findings"
