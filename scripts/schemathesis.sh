#!/usr/bin/env bash
# The HTTP contract: schemathesis, every check and every phase, against the real `tenantry serve`
# on a fresh embedded store, with a signed-up tenant's token (an ops operator's for the platform
# routes). Expects no failure. Only the fuzzer's own token revocation is left out: revoking the
# token it authenticates with would turn every later request into a 401. (`PUT /v1/ops/drill` is
# disabled in scripts/schemathesis.toml: a drill would inject 503s into the run itself.)
#
# Run time is bounded: 25 cases per operation and phase (about 2,000 requests over the 30
# operations) take 15-60 s on 2 cores after the build; 100 took ~100 s and found nothing more.
# TENANTRY_SCHEMATHESIS_EXAMPLES and TENANTRY_SCHEMATHESIS_SEED (default 1, so CI is repeatable)
# widen the search; TENANTRY_SCHEMATHESIS_SHOW_DROPPED=1 lists what the hooks set aside and why
# (scripts/schemathesis_hooks.py, ADR 012).
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=4.32.5
VENV=${TENANTRY_SCHEMATHESIS_VENV:-$HOME/.cache/tenantry-schemathesis-$VERSION}
MAX_EXAMPLES=${TENANTRY_SCHEMATHESIS_EXAMPLES:-25}
if [ ! -x "$VENV/bin/schemathesis" ]; then
  # Under CPython 3.11.7, hypothesis' source introspection fails inside the parser ("AST
  # constructor recursion depth mismatch"), an error of the run: prefer Python 3.12 or newer.
  PYTHON=python3
  for candidate in python3.13 python3.12 /root/.pyenv/versions/3.13*/bin/python3 /root/.pyenv/versions/3.12*/bin/python3; do
    if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
      PYTHON=$candidate
      break
    fi
  done
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$VERSION"
fi

cargo build --quiet -p cli --bin tenantry
BIN=${CARGO_TARGET_DIR:-target}/debug/tenantry

WORK=$(mktemp -d)
SERVER_PID=
cleanup() {
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
API="http://127.0.0.1:$PORT"
TENANTRY_LOG=warn "$BIN" serve --data "$WORK/data" --listen "127.0.0.1:$PORT" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!

python3 - "$API" <<'PY'
import sys, time, urllib.request
for _ in range(300):
    try:
        urllib.request.urlopen(sys.argv[1] + "/readyz", timeout=1).read()
        sys.exit(0)
    except Exception:
        time.sleep(0.1)
sys.exit("the server did not become ready")
PY

# A tenant on the Enterprise plan (overage, never blocked: fuzzing spends many units), and an
# operator token for the platform routes, issued by the CLI while the server runs.
read -r TENANT_ID TENANT_TOKEN < <(python3 - "$API" <<'PY'
import json, sys, urllib.request
api = sys.argv[1]
def call(method, path, body, token=None):
    req = urllib.request.Request(api + path, data=json.dumps(body).encode(), method=method,
                                 headers={"content-type": "application/json"})
    if token:
        req.add_header("authorization", "Bearer " + token)
    return json.load(urllib.request.urlopen(req))
signed = call("POST", "/v1/signup", {"tenant_name": "Fuzz", "email": "fuzz@example.com", "name": "Fuzz"})
call("POST", "/v1/tenant/plan", {"plan": "enterprise"}, signed["token"])
# The platform routes fuzz another tenant's flags, so that turning a feature off does not hide
# the fuzzed tenant's routes behind 403 `feature-disabled`.
other = call("POST", "/v1/signup", {"tenant_name": "Flags", "email": "flags@example.com", "name": "Flags"})
print(other["tenant_id"], signed["token"])
PY
)
OPS_TOKEN=$("$BIN" operator token --role ops --data "$WORK/data" | python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')
export TENANT_ID TENANT_TOKEN OPS_TOKEN

set +e
"$VENV/bin/schemathesis" --config-file scripts/schemathesis.toml run "$API/openapi.json" \
  --checks all --phases examples,coverage,fuzzing,stateful \
  --max-examples "$MAX_EXAMPLES" --seed "${TENANTRY_SCHEMATHESIS_SEED:-1}" \
  --exclude-path /v1/tokens/current \
  --workers 2 --no-color --output-truncate true \
  --report junit --report-dir "${TENANTRY_SCHEMATHESIS_REPORT:-$WORK/report}"
status=$?
set -e
if [ $status -ne 0 ]; then
  echo "schemathesis found failures; the server's log:" >&2
  tail -n 50 "$WORK/server.log" >&2
fi
exit $status
