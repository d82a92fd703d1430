#!/usr/bin/env bash
# SCIM 2.0 conformance by an outside tool (issue 10, ADR 031): the PyPI package `scim2-tester`
# (python-scim; discovery, CRUD and PATCH checks of RFC 7643/7644) against the real
# `tenantry serve` on a fresh embedded store, with a tenant's SCIM token. It is installed into a
# throwaway virtual environment (TENANTRY_SCIM2_VENV, default /var/tmp/tenantry-scim2-venv),
# made again when missing. Fails on any check whose status is ERROR or CRITICAL (a MUST of the
# RFCs broken); DEVIATION lines (a SHOULD) are printed and allowed.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=0.5.2
VENV=${TENANTRY_SCIM2_VENV:-/var/tmp/tenantry-scim2-venv}
if ! "$VENV/bin/python" -c "import scim2_tester, httpx2" 2>/dev/null; then
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "scim2-tester[httpx2]==$VERSION"
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

set +e
"$VENV/bin/python" - "$API" <<'PY'
import json, sys, time, urllib.request

api = sys.argv[1]
for _ in range(300):
    try:
        urllib.request.urlopen(api + "/readyz", timeout=1).read()
        break
    except Exception:
        time.sleep(0.1)
else:
    sys.exit("the server did not become ready")

def call(method, path, body, token=None):
    req = urllib.request.Request(api + path, data=json.dumps(body).encode(), method=method,
                                 headers={"content-type": "application/json"})
    if token:
        req.add_header("authorization", "Bearer " + token)
    return json.load(urllib.request.urlopen(req))

# A tenant with room for the members SCIM makes, and its SCIM token.
owner = call("POST", "/v1/signup", {"tenant_name": "Scim", "email": "scim@example.com", "name": "Scim"})
call("POST", "/v1/tenant/plan", {"plan": "enterprise"}, owner["token"])
scim_token = call("POST", "/v1/scim/token", {}, owner["token"])["token"]

from httpx2 import Client
from scim2_client.engines.httpx2 import SyncSCIMClient
from scim2_tester import Status, check_server

client = SyncSCIMClient(Client(base_url=api + "/scim/v2",
                               headers={"Authorization": "Bearer " + scim_token}))
results = check_server(client)
bad = [r for r in results if r.status in (Status.ERROR, Status.CRITICAL)]
counts = {}
for r in results:
    counts[r.status.name] = counts.get(r.status.name, 0) + 1
    if r.status not in (Status.SUCCESS, Status.COMPLIANT, Status.ACCEPTABLE, Status.SKIPPED):
        print(f"{r.status.name:9} {r.title}: {r.reason}")
print("scim2-tester:", ", ".join(f"{n} {k.lower()}" for k, n in sorted(counts.items())))
sys.exit(1 if bad or not results else 0)
PY
status=$?
set -e
if [ $status -ne 0 ]; then
  echo "scim2-tester found failures; the server's log:" >&2
  tail -n 50 "$WORK/server.log" >&2
fi
exit $status
