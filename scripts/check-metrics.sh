#!/usr/bin/env bash
# Lints a live /metrics endpoint (or a saved scrape) with `promtool check metrics`:
# naming (base units, _total counters), help texts, duplicate series, histogram shape.
#
#   scripts/check-metrics.sh http://127.0.0.1:8080/metrics
#   scripts/check-metrics.sh scrape.txt
#
# Exit 0 when promtool finds nothing, 1 when it reports problems, 2 on usage or fetch errors.
# promtool comes with Debian's `prometheus` package (scripts/check-deploy.sh installs it).
set -euo pipefail

usage() {
  echo "usage: $0 URL|FILE   (e.g. http://127.0.0.1:8080/metrics)" >&2
  exit 2
}
[[ $# -eq 1 ]] || usage
target="$1"

if ! command -v promtool >/dev/null 2>&1; then
  echo "check-metrics: promtool not found; install it with: apt-get install prometheus" >&2
  exit 2
fi

body="$(mktemp)"
trap 'rm -f "$body"' EXIT

if [[ "$target" =~ ^https?:// ]]; then
  if ! curl -fsS --max-time 10 "$target" -o "$body"; then
    echo "check-metrics: cannot fetch $target" >&2
    exit 2
  fi
elif [[ -f "$target" ]]; then
  cp "$target" "$body"
else
  usage
fi

if ! grep -q '^evp_' "$body"; then
  echo "check-metrics: $target has no evp_ metric; is it the events processor?" >&2
  exit 1
fi

series=$(grep -cv '^#' "$body" || true)
if problems="$(promtool check metrics <"$body" 2>&1)"; then
  echo "check-metrics: $target ok ($series series)"
else
  echo "check-metrics: promtool check metrics reports problems in $target:" >&2
  echo "$problems" >&2
  exit 1
fi
