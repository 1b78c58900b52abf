#!/usr/bin/env bash
# Runs clang-tidy with the checks of .clang-tidy on the project's C++ sources, using the dev
# build's compile commands (build/dev, configured and built first: some sources include
# generated headers). Exits non-zero when any check finds something.
#
#   scripts/tidy.sh [file...]   default: every .cpp of cmd/ internal/ bench/ tests/
#                               (tests/fuzz is built by clang directly and has no entry)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v clang-tidy >/dev/null 2>&1; then
  echo "tidy: clang-tidy is missing; run make bootstrap" >&2
  exit 1
fi
cmake --preset dev >/dev/null
cmake --build --preset dev -j"${JOBS:-2}" >/dev/null

files=("$@")
if ((${#files[@]} == 0)); then
  mapfile -t files < <(find cmd internal bench tests -name '*.cpp' -not -path 'tests/fuzz/*' | sort)
fi
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
status=0
# Each clang-tidy prints its findings on stdout; "N warnings generated" (system headers,
# suppressed) goes to stderr.
printf '%s\n' "${files[@]}" |
  xargs -P "$(nproc 2>/dev/null || echo 2)" -n 1 clang-tidy -p build/dev --quiet >"$out" 2>/dev/null ||
  status=$?
if ((status != 0)) || grep -q ': \(warning\|error\):' "$out"; then
  cat "$out"
  echo "tidy: $(grep -c ': \(warning\|error\):' "$out") finding(s) in ${#files[@]} files" >&2
  exit 1
fi
echo "tidy: ${#files[@]} files, no findings"
