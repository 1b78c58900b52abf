#!/usr/bin/env bash
# Offline checks of the deployment files (Dockerfile, docker-compose.yml, Helm chart,
# Prometheus rules, Grafana dashboard, docs). CI runs it on a fresh Debian 12 as root; it
# installs the Debian packages it needs (docker-compose, prometheus for promtool,
# python3-yaml, yamllint, shellcheck when available). No Docker engine, helm binary or
# Kubernetes cluster is needed: scripts/check_deploy.py validates the values against the
# schema and renders the chart with a Go-template subset. When `helm` is installed it runs
# `helm lint` and `helm template` too.
#
#   scripts/check-deploy.sh               every check; exit 1 when one fails
#   EVENTCTL=build/dev/eventctl scripts/check-deploy.sh
#                                         also compare values.yaml defaults with the binary
#
# Prints one line per check and ends with "summary: N passed, M failed" (the line .ci/run
# adds up across steps).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CHART=helm/events-processor
export DEBIAN_FRONTEND=noninteractive
export PYTHONDONTWRITEBYTECODE=1

# --- packages ------------------------------------------------------------------------------
required=(docker-compose prometheus python3 python3-yaml yamllint)
optional=(shellcheck)

installed() {
  [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" == "installed" ]]
}

missing=()
for p in "${required[@]}" "${optional[@]}"; do
  installed "$p" || missing+=("$p")
done
if ((${#missing[@]} > 0)); then
  if [[ $(id -u) -eq 0 ]]; then
    as_root=()
  elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
  else
    echo "check-deploy: not root and no sudo; please install as root:" >&2
    echo "  apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
  fi
  echo "check-deploy: installing: ${missing[*]}"
  # The prometheus package ships a service; keep apt from starting it (only promtool is
  # used). A policy-rc.d that already exists is left alone.
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${as_root[@]}" tee "$policy" >/dev/null
    "${as_root[@]}" chmod 0755 "$policy"
    created_policy=1
  fi
  status=0
  "${as_root[@]}" apt-get update -qq || status=$?
  if ((status == 0)); then
    for p in "${missing[@]}"; do
      if "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "$p" >/dev/null; then
        echo "check-deploy: installed $p"
      else
        echo "check-deploy: could not install $p"
      fi
    done
  fi
  if ((created_policy)); then
    "${as_root[@]}" rm -f "$policy"
  fi
  for p in "${required[@]}"; do
    if ! installed "$p"; then
      echo "check-deploy: required package $p is missing" >&2
      exit 1
    fi
  done
fi

# Debian's interpreter, which has python3-yaml (a pyenv or venv python3 may not).
PYTHON=/usr/bin/python3
[[ -x $PYTHON ]] || PYTHON=python3

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# --- runner --------------------------------------------------------------------------------
passed=0
failed=0
failed_names=()
check() {
  local name="$1" log="$work/log" status=0
  shift
  "$@" >"$log" 2>&1 || status=$?
  if ((status == 0)); then
    passed=$((passed + 1))
    echo "ok     ${name}"
  else
    failed=$((failed + 1))
    failed_names+=("$name")
    echo "FAILED ${name} (status ${status}):"
    sed 's/^/    /' "$log"
  fi
}
skip() {
  echo "skip   $1: $2"
}

# --- checks --------------------------------------------------------------------------------
compose_config() {
  # A throw-away HOME keeps docker-compose from reading a developer's Docker config.
  HOME="$work" docker-compose -f docker-compose.yml config -q
  HOME="$work" docker-compose -f docker-compose.yml --profile grafana config -q
  [[ "$(HOME="$work" docker-compose -f docker-compose.yml --profile grafana config --services |
    sort | tr '\n' ' ')" == "dlq-worker events-processor grafana migrate nats postgres prometheus " ]]
}
check "docker-compose config -q (with and without profile grafana)" compose_config

eventctl="${EVENTCTL:-}"
if [[ -z $eventctl ]]; then
  for candidate in build/dev/eventctl build/release/eventctl; do
    if [[ -x $candidate ]]; then
      eventctl="$candidate"
      break
    fi
  done
fi
py_args=(--promql-out "$work/dashboard-queries.yaml" --render-out "$work/rendered")
[[ -n $eventctl ]] && py_args+=(--eventctl "$eventctl")
for part in schema values config render monitoring compose; do
  case $part in
    schema) title="values.yaml and ci/*.yaml validate against values.schema.json" ;;
    values) title="every .Values reference exists; every value used and documented" ;;
    config) title="chart config keys = config.cpp variables${eventctl:+; defaults = $eventctl config}" ;;
    render) title="chart renders with ci/*.yaml; manifests checked" ;;
    monitoring) title="rules and dashboard use exported metrics; runbooks and tests per alert" ;;
    compose) title="docker-compose services, dependencies and mounted files" ;;
  esac
  check "$title" "$PYTHON" scripts/check_deploy.py "${py_args[@]}" "$part"
done

json_valid() {
  local f
  for f in "$CHART/values.schema.json" "$CHART/files/grafana-dashboard.json"; do
    "$PYTHON" -m json.tool "$f" >/dev/null || {
      echo "$f is not valid JSON"
      return 1
    }
  done
}
check "JSON files parse" json_valid

yaml_lint() {
  local files=(docker-compose.yml "$CHART/Chart.yaml" "$CHART/values.yaml")
  mapfile -t -O "${#files[@]}" files < <(find "$CHART/ci" "$CHART/files" -name '*.yaml' -o -name '*.yml' | sort)
  yamllint -s -d '{extends: default, rules: {line-length: {max: 200},
    document-start: disable, truthy: {allowed-values: ["true", "false"], check-keys: false},
    comments: {min-spaces-from-content: 1}, indentation: {indent-sequences: consistent}}}' \
    "${files[@]}"
}
check "yamllint (non-template YAML)" yaml_lint

check "promtool check rules (alerts)" promtool check rules "$CHART/files/prometheus-rules.yaml"
promtool_test() {
  (cd "$CHART/files" && promtool test rules prometheus-rules.test.yaml)
}
check "promtool test rules (alert unit tests)" promtool_test
dashboard_queries() {
  [[ -s "$work/dashboard-queries.yaml" ]] || {
    echo "no dashboard queries were extracted"
    return 1
  }
  promtool check rules "$work/dashboard-queries.yaml"
}
check "promtool parses every dashboard query" dashboard_queries
check "promtool check config (compose Prometheus)" \
  promtool check config --syntax-only "$CHART/files/compose/prometheus.yml"

# The image cannot be built here: check what it is built from.
dockerfile_packages() {
  local bootstrap_dev pkg runtime status=0
  # Every -dev package of scripts/bootstrap.sh is installed by the build stage.
  bootstrap_dev=$(grep -oE '\b[a-z0-9.+-]+-dev\b' scripts/bootstrap.sh | sort -u)
  for pkg in $bootstrap_dev; do
    grep -qE "(^|[[:space:]])${pkg}([[:space:]]|\\\\|$)" Dockerfile || {
      echo "Dockerfile build stage lacks $pkg (scripts/bootstrap.sh needs it)"
      status=1
    }
  done
  # Every apt package the Dockerfile names exists in Debian 12. (apt-cache's output is read
  # whole before grep: with pipefail, `apt-cache ... | grep -q` fails whenever grep exits
  # before apt-cache has written everything.)
  known() { grep -q 'Candidate: [0-9]' <<<"$(apt-cache policy "$1" 2>/dev/null)"; }
  if known libc6; then
    for pkg in $(sed -n '/apt-get install/,/rm -rf/p' Dockerfile | tr -c 'a-z0-9.+-' '\n' |
      grep -E '^[a-z0-9][a-z0-9.+-]+$' | grep -vxE 'apt-get|install|rm|rf|lists|var|lib|apt|noninteractive' |
      sort -u); do
      known "$pkg" || {
        echo "Dockerfile installs $pkg, which apt does not know"
        status=1
      }
    done
  else
    echo "(apt lists missing: package existence not checked)"
  fi
  # A built binary's shared libraries are all provided by the runtime stage's packages.
  runtime=$(sed -n '/^FROM .*slim/,$p' Dockerfile)
  local bin lib path owner
  for bin in build/release/events-processor build/dev/events-processor \
    build/release/dlq-worker build/dev/dlq-worker build/release/eventctl build/dev/eventctl; do
    [[ -x $bin ]] || continue
    command -v objdump >/dev/null 2>&1 || break
    for lib in $(objdump -p "$bin" | awk '/NEEDED/ {print $2}'); do
      path=$(ldconfig -p | awk -v l="$lib" '$1 == l {print $NF; exit}')
      [[ -n $path ]] || continue
      owner=$(dpkg -S "$(readlink -f "$path")" 2>/dev/null | head -n 1 | cut -d: -f1) || true
      case $owner in
        "" | libc6 | libstdc++6 | libgcc-s1) ;; # in debian:bookworm-slim
        *) grep -qw -- "$owner" <<<"$runtime" || {
          echo "$bin needs $lib from $owner, which the runtime stage does not install"
          status=1
        } ;;
      esac
    done
  done
  # Files the Dockerfile copies exist.
  for path in schemas migrations CMakeLists.txt CMakePresets.json; do
    [[ -e $path ]] || {
      echo "Dockerfile needs $path"
      status=1
    }
  done
  # The image's version label is the version evp_build_info reports.
  local project image
  project=$(sed -nE 's/^project\([a-z_]+ VERSION ([0-9.]+).*/\1/p' CMakeLists.txt)
  image=$(sed -nE 's/^ARG VERSION=([0-9.]+)$/\1/p' Dockerfile)
  if [[ -z $project || $project != "$image" ]]; then
    echo "Dockerfile ARG VERSION=${image:-?} differs from CMakeLists.txt's project VERSION ${project:-?}"
    status=1
  fi
  return "$status"
}
check "Dockerfile packages and version (build = bootstrap -dev list; runtime covers the binaries' libraries)" \
  dockerfile_packages

if command -v shellcheck >/dev/null 2>&1; then
  check "shellcheck scripts/check-deploy.sh scripts/check-metrics.sh" \
    shellcheck scripts/check-deploy.sh scripts/check-metrics.sh
else
  skip "shellcheck" "not installed"
fi

if command -v helm >/dev/null 2>&1; then
  helm_checks() {
    local f
    for f in "$CHART"/ci/*.yaml; do
      helm lint "$CHART" -f "$f" || return 1
      helm template evp "$CHART" -f "$f" >/dev/null || return 1
    done
  }
  check "helm lint + helm template with ci/*.yaml" helm_checks
else
  skip "helm lint / helm template" "no helm binary (the chart is rendered by scripts/check_deploy.py)"
fi

# kubectl (Debian 12: kubernetes-client 1.20) cannot validate manifests without an API
# server, even with --dry-run=client, so it is not installed. Point KUBECONFIG at a cluster
# to get a server-side dry run of the rendered manifests.
if [[ -n ${KUBECONFIG:-} ]] && command -v kubectl >/dev/null 2>&1 &&
  timeout 10 kubectl version >/dev/null 2>&1; then
  kubectl_dry_run() {
    local f
    for f in "$work"/rendered/*.yaml; do
      kubectl apply --dry-run=server -f "$f" || return 1
    done
  }
  check "kubectl apply --dry-run=server (KUBECONFIG cluster)" kubectl_dry_run
else
  skip "kubectl" "needs an API server even for a dry run; set KUBECONFIG to a cluster to enable"
fi

echo "summary: ${passed} passed, ${failed} failed"
if ((failed > 0)); then
  printf 'check-deploy: failed: %s\n' "${failed_names[@]}"
  exit 1
fi
