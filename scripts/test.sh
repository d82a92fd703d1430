#!/usr/bin/env bash
# Run every test: the whole workspace, both store backends.
# Uses DATABASE_URL when it is set and reachable; otherwise starts a throwaway PostgreSQL cluster.
set -euo pipefail
cd "$(dirname "$0")/.."

reachable() {
  python3 - "$1" <<'PY'
import socket, sys, urllib.parse
u = urllib.parse.urlparse(sys.argv[1])
try:
    socket.create_connection((u.hostname or "127.0.0.1", u.port or 5432), timeout=2).close()
except OSError:
    sys.exit(1)
PY
}

if [ -n "${DATABASE_URL:-}" ] && reachable "$DATABASE_URL"; then
  echo "using PostgreSQL at DATABASE_URL" >&2
else
  # shellcheck source=scripts/pg-throwaway.sh
  source scripts/pg-throwaway.sh
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi
# The billing tests read invoice PDFs back with pdftotext (Debian package poppler-utils).
if ! command -v pdftotext >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq poppler-utils
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq poppler-utils
  fi
fi
# The SLO rules are unit-tested with promtool (Debian package prometheus; ADR 028).
if ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq --no-install-recommends prometheus
  fi
fi
echo "== SLO rules (promtool check rules, promtool test rules)"
promtool check rules ops/prometheus/rules/*.yml
promtool test rules ops/prometheus/tests/*.yml

echo "== OpenAPI document"
scripts/validate-openapi.sh

echo "== HTTP contract (schemathesis, every check, against the real server)"
scripts/schemathesis.sh

echo "== tests"
cargo nextest run --workspace --no-fail-fast "$@"
