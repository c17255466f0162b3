#!/usr/bin/env bash
# The whole test suite: installs PostgreSQL and Redis when missing, then
# formatting, lints, every Rust test (unit, integration against real servers
# started by the test support, end to end against a real kube-apiserver + etcd
# driven with kubectl, CLI, Argo CD health Lua), then the Helm chart tests
# (rendered, linted and schema-validated with the real Helm library).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
# kube-apiserver, etcd and kubectl for tests/kubernetes_e2e.rs: cached, or built
# with Go from the Kubernetes module (minutes, cold); built alongside the Rust
# build below rather than after it.
kube_log=$(mktemp)
scripts/kube-binaries.sh >"$kube_log" 2>&1 &
kube_binaries=$!
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
# The release image's build (Dockerfile): no demo, no test support.
cargo clippy --locked --no-default-features --bin archiver-operator -- -D warnings
if ! wait "$kube_binaries"; then
  cat "$kube_log" >&2
  echo "scripts/kube-binaries.sh failed: the Kubernetes end-to-end tests cannot run" >&2
  exit 1
fi
grep -v '^go: downloading' "$kube_log" >&2 || true
rm -f "$kube_log"
cargo test --all-targets
# promtool's tests (the alerts and the dashboard's queries) must run here,
# not be skipped, whether or not the CI system sets CI=true.
ARCHIVER_REQUIRE_PROMTOOL=1 scripts/chart-tests.sh
