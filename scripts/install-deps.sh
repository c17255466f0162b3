#!/usr/bin/env bash
# Installs what the demo and the tests need on a bare Debian machine:
# PostgreSQL and Redis server binaries, Lua 5.4 and openssl (Debian
# packages). Does nothing when they are already present. (The chart tests install their
# Python packages and fetch promtool themselves: scripts/chart-tests.sh.)
set -euo pipefail

have_postgres() {
  command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}
have_redis() {
  command -v redis-server >/dev/null 2>&1
}

have_lua() {
  command -v lua5.4 >/dev/null 2>&1
}
have_openssl() {
  command -v openssl >/dev/null 2>&1
}

missing=()
have_postgres || missing+=(postgresql)
have_redis || missing+=(redis-server)
# The Argo CD health checks (Lua) are executed by the tests.
have_lua || missing+=(lua5.4)
# The https cache-invalidation test makes its certificates with it.
have_openssl || missing+=(openssl)

if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} (Debian packages)"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
have_postgres || { echo "PostgreSQL server binaries still missing" >&2; exit 1; }
have_redis || { echo "redis-server still missing" >&2; exit 1; }
have_lua || { echo "lua5.4 still missing" >&2; exit 1; }
have_openssl || { echo "openssl still missing" >&2; exit 1; }
