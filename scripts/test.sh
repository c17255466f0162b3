#!/usr/bin/env bash
# The whole test suite: installs PostgreSQL and Redis when missing, then
# formatting, lints, every Rust test (unit, integration against real servers
# started by the test support, CLI, Argo CD health Lua), then the Helm chart
# tests (rendered, linted and schema-validated with the real Helm library).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets
scripts/chart-tests.sh
