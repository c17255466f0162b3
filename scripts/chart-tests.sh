#!/usr/bin/env bash
# The Helm chart tests (tests/chart, pytest): renders and lints
# charts/archiver-operator with the real Helm library (helm-python-sdk),
# validates every object against the Kubernetes schemas
# (kubernetes-validate), checks RBAC, pod security, alerts and the generated
# copies (CRDs, Argo CD health checks).
#
# Needs only python3 (3.10 or newer). The pinned packages of
# tests/chart/requirements.txt go into a virtualenv (default
# target/chart-venv, reused while the requirements are unchanged). When
# Debian's python3 lacks the venv module, python3-venv is installed with
# apt-get (sudo when not root); failing that, the packages go into a private
# directory with pip --target. Extra arguments are passed to pytest.
#
# promtool (Debian's prometheus package) parses the PrometheusRule and the
# Grafana dashboard's queries and runs the alerts' unit tests. When it is not
# on PATH, promtool alone is unpacked from the package into target/promtool
# (apt-get download + dpkg-deb; apt-get update with sudo when not root and
# the package lists lack it). Installing the package instead would also
# start a Prometheus server on port 9090 wherever systemd runs. Without
# promtool those tests are skipped when pytest is run by hand; they fail in
# CI (CI=true) and under scripts/test.sh (ARCHIVER_REQUIRE_PROMTOOL=1).
set -euo pipefail
cd "$(dirname "$0")/.."

requirements=tests/chart/requirements.txt
venv="${CHART_TESTS_VENV:-target/chart-venv}"
python="${PYTHON:-python3}"

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then return 1; fi
  if [ -n "$sudo" ] && ! command -v sudo >/dev/null 2>&1; then return 1; fi
  echo "installing $* (Debian packages)" >&2
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if ! command -v "$python" >/dev/null 2>&1; then
  apt_install python3 || { echo "python3 is missing and could not be installed" >&2; exit 1; }
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "the chart tests need Python 3.10 or newer ($("$python" --version 2>&1))" >&2
  exit 1
fi

promtool_dir="${CHART_TESTS_PROMTOOL_DIR:-target/promtool}"
fetch_promtool() {
  if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-deb >/dev/null 2>&1; then return 1; fi
  local download
  download=$(mktemp -d)
  if ! (cd "$download" && apt-get download prometheus >/dev/null 2>&1); then
    if [ -n "$sudo" ] && ! command -v sudo >/dev/null 2>&1; then rm -rf "$download"; return 1; fi
    echo "fetching promtool (Debian package prometheus)" >&2
    $sudo apt-get update -qq >/dev/null \
      && (cd "$download" && apt-get download prometheus >/dev/null 2>&1) \
      || { rm -rf "$download"; return 1; }
  fi
  rm -rf "$promtool_dir"
  mkdir -p "$promtool_dir"
  # Only the promtool binary (linked against libc alone), no service.
  dpkg-deb --fsys-tarfile "$download"/prometheus_*.deb | tar -x -C "$promtool_dir" ./usr/bin/promtool
  rm -rf "$download"
  "$promtool_dir/usr/bin/promtool" --version >/dev/null
}
if ! command -v promtool >/dev/null 2>&1; then
  if [ ! -x "$promtool_dir/usr/bin/promtool" ] && ! fetch_promtool; then
    echo "promtool could not be fetched (Debian package prometheus): its tests fail under scripts/test.sh and CI, and are skipped otherwise" >&2
  fi
  if [ -x "$promtool_dir/usr/bin/promtool" ]; then
    PATH="$(cd "$promtool_dir/usr/bin" && pwd):$PATH"
    export PATH
  fi
fi

stamp() { sha256sum "$requirements" | cut -d' ' -f1; }

run_pytest() {
  PYTHONDONTWRITEBYTECODE=1 "$@" -m pytest -p no:cacheprovider -q tests/chart "${extra_args[@]}"
}
extra_args=("$@")

# 1. A virtualenv (the normal case). CHART_TESTS_NO_VENV=1 skips it (to
# exercise the fallback below).
make_venv() {
  rm -rf "$venv"
  "$python" -m venv "$venv" >/dev/null 2>&1 && "$venv/bin/python" -m pip --version >/dev/null 2>&1
}
if [ -z "${CHART_TESTS_NO_VENV:-}" ]; then
  if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.requirements-sha256" 2>/dev/null)" != "$(stamp)" ]; then
    if ! make_venv; then
      # Debian ships the venv module (with ensurepip) as python3-venv.
      echo "python3 -m venv is not available; trying the python3-venv package" >&2
      apt_install python3-venv && make_venv || rm -rf "$venv"
    fi
    if [ -x "$venv/bin/python" ]; then
      "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$requirements"
      stamp > "$venv/.requirements-sha256"
    fi
  fi
  if [ -x "$venv/bin/python" ]; then
    run_pytest "$venv/bin/python"
    exit 0
  fi
fi

# 2. No virtualenv possible: pip --target into a private directory, with the
# interpreter's own pip (installed from Debian's python3-pip if need be).
echo "no virtualenv: installing the requirements with pip --target" >&2
target="${CHART_TESTS_TARGET:-target/chart-pylib}"
if ! "$python" -m pip --version >/dev/null 2>&1; then
  apt_install python3-pip || { echo "neither python3-venv nor python3-pip could be installed" >&2; exit 1; }
fi
if [ "$(cat "$target/.requirements-sha256" 2>/dev/null)" != "$(stamp)" ]; then
  rm -rf "$target"
  pip_target() { "$python" -m pip install -q --disable-pip-version-check --target "$target" -r "$requirements" "$@"; }
  # Debian marks its Python externally managed (PEP 668); --target leaves
  # the system untouched, so overriding the marker is safe. Older pips do
  # not know the flag.
  pip_target --break-system-packages 2>/dev/null || pip_target
  stamp > "$target/.requirements-sha256"
fi
PYTHONPATH="$target${PYTHONPATH:+:$PYTHONPATH}" run_pytest "$python"
