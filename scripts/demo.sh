#!/usr/bin/env bash
# Runs the demo on throw-away local PostgreSQL and Redis servers, installing
# them first when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cargo run --quiet -- demo "$@"
