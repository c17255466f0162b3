#!/usr/bin/env bash
# The whole test suite: installs PostgreSQL and Redis when missing, then
# formatting, lints, and every test (unit, integration against real servers
# started by the test support, CLI).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets
