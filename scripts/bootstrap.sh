#!/usr/bin/env bash
# Installs the Debian packages needed to build, test and run the project locally.
# Idempotent: does nothing (and never touches the network) when everything is installed.
# Runs apt-get as root, through sudo when not root, or prints what to install and fails.
set -euo pipefail

# "a|b" means: any of these satisfies the need; the first is installed when none is present.
required=(
  build-essential cmake pkg-config
  libnats-dev libpqxx-dev nlohmann-json3-dev prometheus-cpp-dev libspdlog-dev
  libgtest-dev libgmock-dev libvalijson-dev libcpp-httplib-dev libcli11-dev libjemalloc-dev
  nats-server postgresql "postgresql-client|postgresql-client-15" clang-format clang-tidy
  prometheus
  curl jq
)
optional=(ninja-build)

installed() {
  [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" == "installed" ]]
}

missing_from() {
  local spec alt found
  for spec in "$@"; do
    found=0
    IFS='|' read -r -a alts <<<"$spec"
    for alt in "${alts[@]}"; do
      if installed "$alt"; then
        found=1
        break
      fi
    done
    ((found)) || echo "${alts[0]}"
  done
}

mapfile -t missing < <(missing_from "${required[@]}")
mapfile -t missing_optional < <(missing_from "${optional[@]}")

if ((${#missing[@]} == 0 && ${#missing_optional[@]} == 0)); then
  echo "bootstrap: all packages present"
  exit 0
fi

if [[ $(id -u) -eq 0 ]]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
else
  echo "bootstrap: not root and no sudo; please install as root:" >&2
  echo "  apt-get update && apt-get install -y --no-install-recommends" \
    "${missing[@]}" "${missing_optional[@]}" >&2
  exit 1
fi

echo "bootstrap: installing: ${missing[*]} ${missing_optional[*]}"
"${as_root[@]}" apt-get update
if ((${#missing[@]} > 0)); then
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y --no-install-recommends "${missing[@]}"
fi
if ((${#missing_optional[@]} > 0)); then
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y --no-install-recommends "${missing_optional[@]}" ||
    echo "bootstrap: optional packages not installed (${missing_optional[*]}); continuing"
fi

mapfile -t still_missing < <(missing_from "${required[@]}")
if ((${#still_missing[@]} > 0)); then
  echo "bootstrap: still missing after install: ${still_missing[*]}" >&2
  exit 1
fi
echo "bootstrap: done"
