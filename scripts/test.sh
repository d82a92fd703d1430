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

# The canary test puts nginx in front of two builds and reads reports with jq (ADR 033).
if { ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; } || ! command -v jq >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq --no-install-recommends nginx jq
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq --no-install-recommends nginx jq
  fi
fi
export PATH="$PATH:/usr/sbin"
echo "== nightly soak units (systemd-analyze verify)"
if command -v systemd-analyze >/dev/null 2>&1; then
  systemd-analyze verify --man=no ops/systemd/tenantry-soak.service ops/systemd/tenantry-soak.timer
else
  echo "systemd-analyze is not installed: the units in ops/systemd are not verified" >&2
fi

echo "== OpenAPI document"
scripts/validate-openapi.sh

echo "== HTTP contract (schemathesis, every check, against the real server)"
scripts/schemathesis.sh

echo "== SCIM 2.0 conformance (scim2-tester, against the real server)"
scripts/scim2-tester.sh

echo "== tests"
cargo nextest run --workspace --no-fail-fast "$@"

echo "== canary: a good build promoted, a bad one rolled back, no request lost (scripts/canary-test.sh)"
scripts/canary-test.sh

echo "== alert drill in Prometheus's own rule evaluation (scripts/drill-prometheus.sh)"
scripts/drill-prometheus.sh
