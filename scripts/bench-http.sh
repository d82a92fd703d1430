#!/usr/bin/env bash
# The HTTP benchmark of docs/perf.md: `tenantry bench http` on both stores, one run.
# 20 tenants, 64 keep-alive connections, 10 s per phase (command, then read).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${DATABASE_URL:-}" ]; then
  # shellcheck source=scripts/pg-throwaway.sh
  source scripts/pg-throwaway.sh
fi
cargo build --release -p cli >&2
B=${CARGO_TARGET_DIR:-target}/release/tenantry
psql "$DATABASE_URL" -qAt -c "DROP DATABASE IF EXISTS tenantry_bench_http" -c "CREATE DATABASE tenantry_bench_http" >/dev/null
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -sr)"
echo "-- embedded"
"$B" bench http --backend embedded --tenants 20 --connections 64 --seconds 10 2>/dev/null
echo "-- postgres"
"$B" bench http --backend postgres --url "${DATABASE_URL%/*}/tenantry_bench_http" --tenants 20 --connections 64 --seconds 10 2>/dev/null
