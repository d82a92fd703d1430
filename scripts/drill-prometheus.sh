#!/usr/bin/env bash
# The alert drill in Prometheus's own rule evaluation (issue 15, item 3; ADR 028 addendum), run by
# scripts/test.sh: a real `prometheus` scrapes a real `tenantry serve` every second and evaluates
# ops/prometheus/rules/slo.yml with every window and interval divided by 60 (1h -> 60s,
# 5m -> 5s, a rule group's 1m -> 1s); `tenantry drill --scale 60 --prometheus …` injects errors
# until TenantryAvailabilityBurnPageFast fires both in GET /v1/ops/slo and in Prometheus's
# /api/v1/alerts, turns the drill off, and waits until it clears in both.
# Needs: prometheus and promtool (Debian package prometheus), curl, python3; TENANTRY_BIN (default:
# the debug build of target/, built when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET="${CARGO_TARGET_DIR:-target}"
BIN="${TENANTRY_BIN:-$TARGET/debug/tenantry}"
if [ -z "${TENANTRY_BIN:-}" ]; then
  cargo build -q -p cli --bin tenantry
fi
for tool in prometheus promtool curl python3; do
  command -v "$tool" >/dev/null || { echo "drill-prometheus: $tool is missing" >&2; exit 1; }
done

WORK="$(mktemp -d)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
P_API=$(free_port); P_PROM=$(free_port)
PIDS=()
cleanup() {
  set +e
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  wait 2>/dev/null
  if [ -n "${DRILL_TEST_KEEP:-}" ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*" >&2
  echo "-- prometheus:" >&2; tail -20 "$WORK/prometheus.log" >&2 || true
  echo "-- drill:" >&2; cat "$WORK/drill.err" >&2 || true
  exit 1
}

# The rules, scaled: durations in range selectors and the groups' evaluation intervals ÷ 60.
python3 - ops/prometheus/rules/slo.yml "$WORK/slo-scaled.yml" <<'PY'
import re, sys
UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
def seconds(n, u): return int(n) * UNIT[u]
def scaled(n, u): return f"{max(1, seconds(n, u) // 60)}s"
text = open(sys.argv[1]).read()
text = re.sub(r"\[(\d+)([smhd])\]", lambda m: f"[{scaled(*m.groups())}]", text)
text = re.sub(r"(interval:\s*)(\d+)([smhd])", lambda m: m.group(1) + scaled(m.group(2), m.group(3)), text)
text = re.sub(r"(\bfor:\s*)(\d+)([smhd])", lambda m: m.group(1) + scaled(m.group(2), m.group(3)), text)
open(sys.argv[2], "w").write(text)
PY
promtool check rules "$WORK/slo-scaled.yml" >/dev/null

mkdir -p "$WORK/data"
TOKEN=$("$BIN" operator token --role ops --data "$WORK/data" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
"$BIN" serve --data "$WORK/data" --listen "127.0.0.1:$P_API" >"$WORK/server.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 150); do curl -fsS "http://127.0.0.1:$P_API/readyz" >/dev/null 2>&1 && break; sleep 0.2; done
curl -fsS "http://127.0.0.1:$P_API/readyz" >/dev/null || fail "the server did not start"
# /metrics answers on loopback without a token (api/src/metrics.rs): what Prometheus scrapes.
curl -fsS "http://127.0.0.1:$P_API/metrics" | grep -q '^tenantry_' || fail "/metrics does not answer on loopback"

cat >"$WORK/prometheus.yml" <<YML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $WORK/slo-scaled.yml
scrape_configs:
  - job_name: tenantry
    static_configs:
      - targets: ['127.0.0.1:$P_API']
YML
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
  --web.listen-address="127.0.0.1:$P_PROM" >"$WORK/prometheus.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 150); do curl -fsS "http://127.0.0.1:$P_PROM/-/ready" >/dev/null 2>&1 && break; sleep 0.2; done
curl -fsS "http://127.0.0.1:$P_PROM/-/ready" >/dev/null || fail "prometheus did not start"
# Wait for the first scrapes, so the windows hold clean traffic before the drill.
for _ in $(seq 1 50); do
  curl -fsS "http://127.0.0.1:$P_PROM/api/v1/query?query=up" | grep -q '"value":\[[0-9.]*,"1"\]' && break
  sleep 0.2
done
sleep 3

"$BIN" drill --url "http://127.0.0.1:$P_API" --token "$TOKEN" --scale 60 --error-ratio 0.5 \
  --route-prefix /v1/plans --timeout-secs 90 --prometheus "http://127.0.0.1:$P_PROM" \
  >"$WORK/drill.json" 2>"$WORK/drill.err" || fail "the drill did not fire and clear in both views"
python3 - "$WORK/drill.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
p = r["prometheus"]
assert r["ok"], r
assert p["quiet_before"] and p["fired"] and p["cleared"], p
print(f"drill: in-process fired after {r['fired_after_ms']} ms, cleared after {r['cleared_after_ms']} ms; "
      f"Prometheus ({p['alert']}) fired after {p['fired_after_ms']} ms, cleared after {p['cleared_after_ms']} ms")
PY
