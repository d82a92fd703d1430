#!/usr/bin/env bash
# A canary release with automatic rollback (issue 15, item 5; ADR 033; docs/runbooks/canary.md).
#
# Starts a new build (--canary-bin) beside the running one (--baseline URL) on the same store,
# behind nginx; shifts --share percent of the traffic to it (weighted upstream, graceful reload);
# every --interval seconds reads both instances' /metrics and compares what each burned of the
# error budgets since the shift: availability (5xx, budget 0.1 %) and latency-p99 (commands over
# 250 ms, budget 1 %). The canary is rolled back at once, by itself, when it burns either budget
# faster than the baseline by --factor (and faster than the budget allows at all), after
# --min-requests of its own and --min-bad bad events; it is promoted (all traffic to it) when
# --watch seconds pass without that. Exit 0: promoted; 3: rolled back; anything else: the canary could not be judged (nginx
# is left on the baseline).
#
# Production: nginx already runs with ops/nginx/tenantry-canary.conf.template's settings and
# includes --upstream-file; the baseline runs. Tests and rehearsals: --nginx-start renders the
# template into --state-dir and starts nginx there.
set -euo pipefail

usage() {
  sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
  cat <<'EOF'
Options:
  --baseline URL          the running build (http://HOST:PORT), reached directly for /metrics
  --canary-bin PATH       the new build's tenantry binary
  --store URL             the PostgreSQL both builds use
  --canary-listen H:P     where the canary listens (default 127.0.0.1:18081)
  --canary-env K=V        environment for the canary (repeatable), e.g. TENANTRY_METRICS_TOKEN=…
  --state-dir DIR         the canary's log, pid and the nginx files (default ./canary-state)
  --upstream-file PATH    the upstream file nginx includes (default STATE_DIR/upstream.conf)
  --nginx-start H:P       start nginx from the template, listening on H:P
  --share PERCENT         traffic to the canary while watched (default 20)
  --watch SECONDS         how long the canary is watched before promotion (default 120)
  --interval SECONDS      between two looks (default 5)
  --min-requests N        canary requests before a verdict (default 100)
  --factor X              how much faster than the baseline the canary may burn (default 2)
  --min-bad N             bad events (5xx, slow commands) of the canary before it is judged on
                          that budget (default 5: one slow cold start is not a verdict)
  --metrics-token TOKEN   /metrics' bearer token when the instances set metrics_token
EOF
}

BASELINE="" CANARY_BIN="" STORE="" CANARY_LISTEN="127.0.0.1:18081" STATE_DIR="./canary-state"
UPSTREAM_FILE="" NGINX_START="" SHARE=20 WATCH=120 INTERVAL=5 MIN_REQUESTS=100 FACTOR=2 MIN_BAD=5
METRICS_TOKEN="${TENANTRY_METRICS_TOKEN:-}"
CANARY_ENV=()
while [ $# -gt 0 ]; do
  case "$1" in
    --baseline) BASELINE="$2"; shift 2 ;;
    --canary-bin) CANARY_BIN="$2"; shift 2 ;;
    --store) STORE="$2"; shift 2 ;;
    --canary-listen) CANARY_LISTEN="$2"; shift 2 ;;
    --canary-env) CANARY_ENV+=("$2"); shift 2 ;;
    --state-dir) STATE_DIR="$2"; shift 2 ;;
    --upstream-file) UPSTREAM_FILE="$2"; shift 2 ;;
    --nginx-start) NGINX_START="$2"; shift 2 ;;
    --share) SHARE="$2"; shift 2 ;;
    --watch) WATCH="$2"; shift 2 ;;
    --interval) INTERVAL="$2"; shift 2 ;;
    --min-requests) MIN_REQUESTS="$2"; shift 2 ;;
    --factor) FACTOR="$2"; shift 2 ;;
    --min-bad) MIN_BAD="$2"; shift 2 ;;
    --metrics-token) METRICS_TOKEN="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "canary: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
[ -n "$BASELINE" ] && [ -n "$CANARY_BIN" ] && [ -n "$STORE" ] || { usage >&2; exit 2; }
[ -x "$CANARY_BIN" ] || { echo "canary: $CANARY_BIN is not executable" >&2; exit 2; }
[ "$SHARE" -ge 1 ] && [ "$SHARE" -le 99 ] || { echo "canary: --share must be 1 to 99" >&2; exit 2; }
mkdir -p "$STATE_DIR"
STATE_DIR="$(cd "$STATE_DIR" && pwd)"
UPSTREAM_FILE="${UPSTREAM_FILE:-$STATE_DIR/upstream.conf}"
BASE_ADDR="${BASELINE#http://}"; BASE_ADDR="${BASE_ADDR%/}"
CANARY_URL="http://$CANARY_LISTEN"
NGINX=(nginx)
[ -n "$NGINX_START" ] && NGINX=(nginx -c "$STATE_DIR/nginx.conf" -p "$STATE_DIR")

log() { echo "canary: $*" >&2; }

# The upstream file: "BASE_WEIGHT CANARY_WEIGHT" (0 leaves a server out), then a graceful reload.
route() {
  local base="$1" canary="$2"
  {
    echo "upstream tenantry {"
    [ "$base" -gt 0 ] && echo "    server $BASE_ADDR weight=$base max_fails=0;"
    [ "$canary" -gt 0 ] && echo "    server $CANARY_LISTEN weight=$canary max_fails=0;"
    echo "    keepalive 64;"
    echo "}"
  } >"$UPSTREAM_FILE.tmp"
  mv "$UPSTREAM_FILE.tmp" "$UPSTREAM_FILE"
  "${NGINX[@]}" -t -q
  "${NGINX[@]}" -s reload
  log "traffic: baseline $base, canary $canary"
}

if [ -n "$NGINX_START" ]; then
  mkdir -p "$STATE_DIR"/{client_body,proxy,fastcgi,uwsgi,scgi}
  sed -e "s#@PREFIX@#$STATE_DIR#g" -e "s#@LISTEN@#$NGINX_START#g" \
      -e "s#@UPSTREAM_FILE@#$UPSTREAM_FILE#g" \
      "$(dirname "$0")/../ops/nginx/tenantry-canary.conf.template" >"$STATE_DIR/nginx.conf"
  if [ ! -s "$STATE_DIR/nginx.pid" ] || ! kill -0 "$(cat "$STATE_DIR/nginx.pid")" 2>/dev/null; then
    printf 'upstream tenantry {\n    server %s;\n    keepalive 64;\n}\n' "$BASE_ADDR" >"$UPSTREAM_FILE"
    "${NGINX[@]}"
    log "nginx listening on $NGINX_START (pid $(cat "$STATE_DIR/nginx.pid"))"
  fi
fi

# The counters of one instance: requests, 5xx, commands, commands within 250 ms.
counters() {
  local auth=()
  [ -n "$METRICS_TOKEN" ] && auth=(-H "Authorization: Bearer $METRICS_TOKEN")
  # Health checks and scrapes are not traffic: /readyz answers 503 while this instance applies
  # the other's writes (catching_up), which is no failed request.
  curl -fsS --max-time 5 "${auth[@]}" "$1/metrics" | grep -vE 'route="/(readyz|healthz|livez|metrics)"' | awk '
    /^tenantry_http_request_duration_seconds_count\{/ {
      n = $NF; total += n
      if ($0 ~ /status="5[0-9][0-9]"/) bad += n
      if ($0 ~ /method="(POST|PUT|PATCH|DELETE)"/) cmds += n
    }
    /^tenantry_http_request_duration_seconds_bucket\{/ && /le="0.25"/ && /method="(POST|PUT|PATCH|DELETE)"/ { fast += $NF }
    END { printf "%d %d %d %d\n", total, bad, cmds, fast }'
}

# Start the canary on the same store.
log "starting $CANARY_BIN on $CANARY_LISTEN"
env "${CANARY_ENV[@]}" "$CANARY_BIN" serve --store "$STORE" --listen "$CANARY_LISTEN" \
  >"$STATE_DIR/canary.log" 2>&1 &
CANARY_PID=$!
echo "$CANARY_PID" >"$STATE_DIR/canary.pid"
stop_canary() {
  kill -TERM "$CANARY_PID" 2>/dev/null || true
  wait "$CANARY_PID" 2>/dev/null || true
  rm -f "$STATE_DIR/canary.pid"
}
ready=0
for _ in $(seq 1 300); do
  if curl -fsS --max-time 2 "$CANARY_URL/readyz" >/dev/null 2>&1; then ready=1; break; fi
  kill -0 "$CANARY_PID" 2>/dev/null || break
  sleep 0.2
done
if [ "$ready" != 1 ]; then
  log "the canary did not become ready; its log:"; tail -20 "$STATE_DIR/canary.log" >&2
  stop_canary; exit 4
fi

base0=$(counters "$BASELINE") || { log "cannot read the baseline's /metrics"; stop_canary; exit 4; }
canary0=$(counters "$CANARY_URL") || { log "cannot read the canary's /metrics"; stop_canary; exit 4; }
read -r b_total0 b_bad0 b_cmds0 b_fast0 <<<"$base0"
read -r c_total0 c_bad0 c_cmds0 c_fast0 <<<"$canary0"
route $((100 - SHARE)) "$SHARE"

# Burn rate of a budget: bad / all / budget (0 with nothing measured).
burn() { awk -v bad="$1" -v all="$2" -v budget="$3" 'BEGIN { if (all > 0) printf "%.3f", bad / all / budget; else print 0 }'; }
# Is the canary's burn (> 1, the budget's own pace) more than FACTOR times the baseline's?
worse() { awk -v c="$1" -v b="$2" -v f="$FACTOR" 'BEGIN { exit !(c > 1 && c > f * b) }'; }

verdict="promote"
started=$(date +%s)
while :; do
  sleep "$INTERVAL"
  # A canary that stops answering its /metrics is rolled back; so is any doubt about the baseline.
  base=$(counters "$BASELINE") || { log "cannot read the baseline's /metrics"; verdict="rollback"; break; }
  canary=$(counters "$CANARY_URL") || { log "cannot read the canary's /metrics"; verdict="rollback"; break; }
  read -r b_total b_bad b_cmds b_fast <<<"$base"
  read -r c_total c_bad c_cmds c_fast <<<"$canary"
  bt=$((b_total - b_total0)); bb=$((b_bad - b_bad0)); bc=$((b_cmds - b_cmds0)); bs=$((bc - (b_fast - b_fast0)))
  ct=$((c_total - c_total0)); cb=$((c_bad - c_bad0)); cc=$((c_cmds - c_cmds0)); cs=$((cc - (c_fast - c_fast0)))
  b_avail=$(burn "$bb" "$bt" 0.001); c_avail=$(burn "$cb" "$ct" 0.001)
  b_p99=$(burn "$bs" "$bc" 0.01); c_p99=$(burn "$cs" "$cc" 0.01)
  log "$(($(date +%s) - started))s baseline: $bt requests, $bb 5xx, $bs slow of $bc commands (burn ${b_avail}x, ${b_p99}x); canary: $ct requests, $cb 5xx, $cs slow of $cc commands (burn ${c_avail}x, ${c_p99}x)"
  if [ "$ct" -ge "$MIN_REQUESTS" ]; then
    if [ "$cb" -ge "$MIN_BAD" ] && worse "$c_avail" "$b_avail"; then
      log "the canary burns the availability budget at ${c_avail}x against the baseline's ${b_avail}x"
      verdict="rollback"; break
    fi
    if [ "$cs" -ge "$MIN_BAD" ] && worse "$c_p99" "$b_p99"; then
      log "the canary burns the latency-p99 budget at ${c_p99}x against the baseline's ${b_p99}x"
      verdict="rollback"; break
    fi
  fi
  if [ $(($(date +%s) - started)) -ge "$WATCH" ]; then
    if [ "$ct" -lt "$MIN_REQUESTS" ]; then
      log "only $ct requests reached the canary in ${WATCH}s: not enough to judge"
      verdict="undecided"
    fi
    break
  fi
done

# The canary's 5xx series, for whoever investigates.
show_5xx() {
  local lines
  lines=$(curl -fsS --max-time 5 ${METRICS_TOKEN:+-H "Authorization: Bearer $METRICS_TOKEN"} \
    "$CANARY_URL/metrics" | grep -E '^tenantry_http_request_duration_seconds_count\{.*status="5' \
    | grep -vE 'route="/(readyz|healthz|livez|metrics)"' || true)
  [ -n "$lines" ] && { log "the canary's 5xx series:"; echo "$lines" >&2; }
  return 0
}

case "$verdict" in
  rollback)
    route 100 0
    show_5xx
    # nginx's old workers finish what they hold; then the canary stops (gracefully).
    sleep 2
    stop_canary
    echo "ROLLED BACK"
    exit 3 ;;
  undecided)
    route 100 0; sleep 2; stop_canary
    echo "UNDECIDED"
    exit 5 ;;
  promote)
    show_5xx
    route 0 100
    echo "$CANARY_PID" >"$STATE_DIR/promoted.pid"
    echo "PROMOTED $CANARY_URL pid $CANARY_PID (stop the old build at $BASELINE when its requests are done)"
    exit 0 ;;
esac
