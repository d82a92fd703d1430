#!/usr/bin/env bash
# HTTP throughput of two builds in one run (docs/perf.md): each binary serves a fresh store
# (embedded, then PostgreSQL) and the same client — `tenantry bench http --addr` of the new
# build — drives it: a one-event command, a read, and a refused command.
#
#   scripts/bench-http-compare.sh OLD_TENANTRY NEW_TENANTRY [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=$1 NEW=$2 SECONDS_PER_PHASE=${3:-10}
if [ -z "${DATABASE_URL:-}" ]; then
  # shellcheck source=scripts/pg-throwaway.sh
  source scripts/pg-throwaway.sh
fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -sr)"
run() {
  local label=$1 bin=$2 store=$3
  local port; port=$(free_port)
  # The old build has no sign-up limit; the new one's is turned off for the bench's sign-ups.
  TENANTRY_SIGNUP_PER_MINUTE=0 TENANTRY_LOG=warn "$bin" serve --listen "127.0.0.1:$port" $store >/dev/null 2>&1 &
  local pid=$!
  for _ in $(seq 1 100); do
    curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  echo "-- $label"
  "$NEW" bench http --addr "127.0.0.1:$port" --tenants 20 --connections 64 --seconds "$SECONDS_PER_PHASE" 2>/dev/null
  kill "$pid"; wait "$pid" 2>/dev/null || true
}
for which in old new; do
  bin=$OLD; [ "$which" = new ] && bin=$NEW
  dir=$(mktemp -d /tmp/tenantry-bench-http.XXXXXX)
  run "$which embedded" "$bin" "--data $dir"
  rm -rf "$dir"
  db="tenantry_bench_http_$which"
  psql "$DATABASE_URL" -qAt -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null
  run "$which postgres" "$bin" "--store ${DATABASE_URL%/*}/$db"
done
