#!/usr/bin/env bash
# CPU time of a standalone operator over an idle window, with a manifests
# directory of many files: what a steady `run --manifests DIR` costs when
# nothing changes. No database is needed.
#
#   scripts/manifests-idle-cpu.sh [BINARY] [FILES] [SECONDS] [KIND]
#
# KIND is `secret` (Secrets only: the cost of watching the files) or
# `paused` (paused DeletionRequests: objects the engine knows that need no
# work). The window starts once the first pass is over (CPU below 0.2 s per
# 5 s twice in a row) or after 300 s at most. Prints the CPU seconds (user +
# system) used during the window.
set -euo pipefail
binary=${1:-target/debug/archiver-operator}
files=${2:-5000}
seconds=${3:-30}
kind=${4:-secret}
dir=$(mktemp -d)
pid=
stop() {
  if [ -n "$pid" ]; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  rm -rf "$dir"
}
trap stop EXIT
for i in $(seq 1 "$files"); do
  if [ "$kind" = secret ]; then
    printf 'apiVersion: v1\nkind: Secret\nmetadata: {name: s-%d, namespace: archiver}\nstringData: {url: "redis://127.0.0.1:6379/0"}\n' "$i"
  else
    printf 'apiVersion: archiver.uptime.dev/v1alpha1\nkind: DeletionRequest\nmetadata:\n  name: erase-%d\n  namespace: archiver\n  annotations: {archiver.uptime.dev/reconcile: disabled}\nspec:\n  tenantId: 6f1c2a9e-4b1d-4c55-9a43-2f5e7d8c9b01\n  serverSlug: server-%d\n  reason: gdpr-art17\n  requester: 0b7e3c41-9d2a-4f6b-8e15-7a9c0d4e2f63\n' "$i" "$i"
  fi > "$dir/m-$i.yaml"
done
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
env -u DATABASE_URL ARCHIVER_LOG_FORMAT=json "$binary" run --manifests "$dir" --http-addr "127.0.0.1:$port" >/dev/null 2>&1 &
pid=$!
ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
started=$SECONDS
quiet=0
previous=$(cpu)
while [ $((SECONDS - started)) -lt 300 ] && [ "$quiet" -lt 2 ]; do
  sleep 5
  current=$(cpu)
  if [ $((current - previous)) -lt $((ticks / 5)) ]; then quiet=$((quiet + 1)); else quiet=0; fi
  previous=$current
done
before=$(cpu)
sleep "$seconds"
after=$(cpu)
echo "$kind files=$files warm-up=$((SECONDS - started - seconds))s idle=${seconds}s cpu=$(echo "scale=2; ($after - $before) / $ticks" | bc) s"
