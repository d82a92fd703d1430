#!/usr/bin/env bash
# The canary test (issue 15, item 5; ADR 033), run by scripts/test.sh: on one fresh PostgreSQL
# database, behind nginx, with `tenantry soak` driving traffic through nginx the whole time
# (retrying with Idempotency-Keys, counting every request's final answer):
#   1. a good canary (the same build) is watched and PROMOTED;
#   2. a bad canary (the same build with fault_error_ratio = 0.5: half its requests answer 503)
#      is ROLLED BACK by itself;
#   3. the soak's report shows no request without a final answer, no final 5xx, and every
#      acknowledged write in the API and in the log.
# Needs: DATABASE_URL (a PostgreSQL superuser URL), nginx, curl, jq; TENANTRY_BIN (default: the
# debug build of target/, built when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

: "${DATABASE_URL:?DATABASE_URL must name a PostgreSQL server}"
TARGET="${CARGO_TARGET_DIR:-target}"
BIN="${TENANTRY_BIN:-$TARGET/debug/tenantry}"
if [ -z "${TENANTRY_BIN:-}" ]; then
  cargo build -q -p cli --bin tenantry
fi
# nginx lives in /usr/sbin, psql may be only with the server binaries.
for dir in /usr/sbin /usr/lib/postgresql/*/bin; do [ -d "$dir" ] && PATH="$PATH:$dir"; done
export PATH
for tool in nginx curl jq psql; do
  command -v "$tool" >/dev/null || { echo "canary-test: $tool is missing" >&2; exit 1; }
done

WORK="$(mktemp -d)"
DB="canary_test_$$_$(date +%s)"
BASE_URL="${DATABASE_URL%/*}"
STORE="$BASE_URL/$DB"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
P_BASE=$(free_port); P_GOOD=$(free_port); P_BAD=$(free_port); P_NGINX=$(free_port)
PIDS=()
cleanup() {
  set +e
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  [ -s "$WORK/canary/promoted.pid" ] && kill -TERM "$(cat "$WORK/canary/promoted.pid")" 2>/dev/null
  [ -s "$WORK/canary/canary.pid" ] && kill -TERM "$(cat "$WORK/canary/canary.pid")" 2>/dev/null
  [ -s "$WORK/canary/nginx.pid" ] && kill -TERM "$(cat "$WORK/canary/nginx.pid")" 2>/dev/null
  sleep 1
  psql -q "$DATABASE_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
  if [ -n "${CANARY_TEST_KEEP:-}" ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*" >&2
  echo "-- the load's log:" >&2; tail -20 "$WORK/soak.log" >&2 || true
  exit 1
}
psql -q "$DATABASE_URL" -c "CREATE DATABASE $DB" >/dev/null

# The running build.
export TENANTRY_SIGNUP_PER_MINUTE=0
"$BIN" serve --store "$STORE" --listen "127.0.0.1:$P_BASE" >"$WORK/base.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 150); do curl -fsS "http://127.0.0.1:$P_BASE/readyz" >/dev/null 2>&1 && break; sleep 0.2; done
curl -fsS "http://127.0.0.1:$P_BASE/readyz" >/dev/null

# nginx in front of it (started by the canary script's --nginx-start on the first run), then
# the load through nginx. The soak starts once nginx answers.
mkdir -p "$WORK/canary"
sed -e "s#@PREFIX@#$WORK/canary#g" -e "s#@LISTEN@#127.0.0.1:$P_NGINX#g" \
    -e "s#@UPSTREAM_FILE@#$WORK/canary/upstream.conf#g" \
    ops/nginx/tenantry-canary.conf.template >"$WORK/canary/nginx.conf"
mkdir -p "$WORK/canary"/{client_body,proxy,fastcgi,uwsgi,scgi}
printf 'upstream tenantry {\n    server 127.0.0.1:%s;\n    keepalive 64;\n}\n' "$P_BASE" >"$WORK/canary/upstream.conf"
nginx -c "$WORK/canary/nginx.conf" -p "$WORK/canary"
for _ in $(seq 1 50); do curl -fsS "http://127.0.0.1:$P_NGINX/healthz" >/dev/null 2>&1 && break; sleep 0.1; done

"$BIN" soak --url "http://127.0.0.1:$P_NGINX" --tenants 4 --duration 75s --rate 60 --seed 3 \
  --tries 6 --store "$STORE" --report-dir "$WORK/soak" --progress-secs 10 \
  --bounds "p95=5000,p99=10000,5xx=0,lost=0,memory=off,unanswered=0" \
  >"$WORK/soak.json" 2>"$WORK/soak.log" &
SOAK=$!
PIDS+=($SOAK)
sleep 8

canary() {
  scripts/canary.sh --baseline "$1" --canary-bin "$BIN" --store "$STORE" --canary-listen "$2" \
    --state-dir "$WORK/canary" --nginx-start "127.0.0.1:$P_NGINX" --share 30 --watch 15 \
    --interval 3 --min-requests 40 "${@:3}"
}

echo "== a good canary"
set +e
canary "http://127.0.0.1:$P_BASE" "127.0.0.1:$P_GOOD" --canary-env TENANTRY_SIGNUP_PER_MINUTE=0 \
  >"$WORK/good.out" 2>"$WORK/good.err"
good=$?
set -e
cat "$WORK/good.err" >&2
[ "$good" = 0 ] && grep -q '^PROMOTED' "$WORK/good.out" || fail "the good canary was not promoted (exit $good)"
GOOD_PID=$(cat "$WORK/canary/promoted.pid")
PIDS+=($GOOD_PID)
rm -f "$WORK/canary/promoted.pid"
# The old build drains and stops, as an operator would after a promotion.
sleep 2
kill -TERM "${PIDS[0]}"

echo "== a bad canary"
set +e
canary "http://127.0.0.1:$P_GOOD" "127.0.0.1:$P_BAD" --canary-env TENANTRY_SIGNUP_PER_MINUTE=0 \
  --canary-env TENANTRY_FAULT_ERROR_RATIO=0.5 >"$WORK/bad.out" 2>"$WORK/bad.err"
bad=$?
set -e
cat "$WORK/bad.err" >&2
[ "$bad" = 3 ] && grep -q '^ROLLED BACK' "$WORK/bad.out" || fail "the bad canary was not rolled back (exit $bad)"
grep -q 'burns the availability budget' "$WORK/bad.err" || fail "rolled back for another reason"
# The bad canary really answered 503s: its own log of requests is gone with it, but its
# injected answers were retried by the clients, so the soak must still be clean.

echo "== the load's verdict"
set +e
wait "$SOAK"; soak_rc=$?
set -e
tail -5 "$WORK/soak.log" >&2
report="$WORK/soak/soak-report.json"
jq -e '.requests > 500' "$report" >/dev/null || { echo "FAIL: too little load went through" >&2; exit 1; }
jq -e '.unanswered == 0' "$report" >/dev/null || { echo "FAIL: requests without a final answer" >&2; jq .by_status "$report"; exit 1; }
jq -e '.status_5xx == 0' "$report" >/dev/null || { echo "FAIL: final 5xx answers" >&2; jq .by_status "$report"; exit 1; }
jq -e '.loss.acknowledged > 100 and .loss.lost == 0 and .loss.missing_in_log == 0' "$report" >/dev/null \
  || { echo "FAIL: acknowledged writes lost" >&2; jq .loss "$report"; exit 1; }
[ "$soak_rc" = 0 ] || { echo "FAIL: the soak's bounds (exit $soak_rc)" >&2; cat "$WORK/soak/soak-report.md" >&2; exit 1; }
echo "canary test: promoted the good canary, rolled back the bad one, no request lost ($(jq .requests "$report") requests, $(jq .loss.acknowledged "$report") acknowledged writes)"
