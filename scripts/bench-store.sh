#!/usr/bin/env bash
# The store benchmark of docs/perf.md, in one run: the pgbench baseline (one-row INSERT per
# transaction, 20 clients) and `tenantry bench store` on both backends, all on this machine.
#
#   scripts/bench-store.sh            # uses a throwaway PostgreSQL cluster
#   DATABASE_URL=postgres://… scripts/bench-store.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${DATABASE_URL:-}" ]; then
  # shellcheck source=scripts/pg-throwaway.sh
  source scripts/pg-throwaway.sh
fi
PGBENCH=$(ls /usr/lib/postgresql/*/bin/pgbench | head -n1)
cargo build --release -p cli >&2
B=${CARGO_TARGET_DIR:-target}/release/tenantry

fresh_db() {
  psql "$DATABASE_URL" -qAt -c "DROP DATABASE IF EXISTS $1" -c "CREATE DATABASE $1" >/dev/null
  echo "${DATABASE_URL%/*}/$1"
}

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -sr)"
echo "postgres: $(psql "$DATABASE_URL" -qAt -c 'show server_version')"

echo "== baseline: pgbench, one INSERT per transaction, 20 clients, 20 s"
base=$(fresh_db tenantry_baseline)
psql "$base" -q -c "CREATE TABLE bench_events (
  global_position bigserial PRIMARY KEY, tenant_id uuid NOT NULL, stream_id text NOT NULL,
  recorded_at timestamptz NOT NULL DEFAULT now(), payload text NOT NULL)"
script=$(mktemp)
cat >"$script" <<'SQL'
\set n random(1, 1000000)
INSERT INTO bench_events (tenant_id, stream_id, payload) VALUES (gen_random_uuid(), 'usage-' || :n, '{"meter":"queries","units":1,"dataset_id":"ds-00000042","n":' || :n || '}');
SQL
"$PGBENCH" -n -c 20 -j 2 -T 20 -f "$script" "$base" | grep -E "^(tps|latency|number of transactions)"
rm -f "$script"

run() { echo "-- tenantry bench store $*"; "$B" bench store "$@"; }
echo "== embedded"
run --backend embedded --writers 64 --events 300000 --batch 1
run --backend embedded --writers 64 --events 3000000 --batch 100
echo "== postgres"
run --backend postgres --url "$(fresh_db tenantry_bench_single)" --writers 64 --events 300000 --batch 1
run --backend postgres --url "$(fresh_db tenantry_bench_batch)" --writers 64 --events 3000000 --batch 100
