#!/usr/bin/env bash
# Validate the OpenAPI 3.1 document with openapi-spec-validator (from PyPI, in a private venv).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${TENANTRY_TOOLS_VENV:-/var/tmp/tenantry-tools-venv}
if [ ! -x "$VENV/bin/openapi-spec-validator" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "openapi-spec-validator>=0.7,<1"
fi
doc=$(mktemp --suffix=.json)
trap 'rm -f "$doc"' EXIT
cargo run --quiet -p cli --bin tenantry -- docs openapi > "$doc"
"$VENV/bin/openapi-spec-validator" "$doc"
