"""schemathesis hooks for scripts/schemathesis.sh: two answers a schema cannot predict, dropped narrowly."""

import json
import os
import sys

import schemathesis
from schemathesis.core.parameters import ParameterLocation


def _problem_type(response):
    try:
        return json.loads(response.content).get("type", "")
    except (ValueError, AttributeError):
        return ""


@schemathesis.hook
def filter_failure(context, failure, case, response):
    keep = _keep(failure, case, response)
    if not keep and os.environ.get("TENANTRY_SCHEMATHESIS_SHOW_DROPPED"):
        print(f"dropped: {type(failure).__name__} {case.method} {case.operation.path} "
              f"{response.status_code} {_problem_type(response)}", file=sys.stderr)
    return keep


CSV_BODIES = {("POST", "/v1/datasets"), ("POST", "/v1/invites/csv")}


def _keep(failure, case, response):
    """Keep every failure but these two.

    1. A reused `Idempotency-Key` with another request is 422 `idempotency-key-reused` (SPEC §13,
       and the IETF Idempotency-Key draft): whether a key was used before is the server's state,
       not the request's shape, and the fuzzer reuses short keys across different bodies.
    2. A CSV body (an upload, an invite file) whose only "invalid" part is a non-string body:
       schemathesis sends a non-string body of a text media type as its text (`false` becomes the
       bytes `false`, a valid CSV); it knows this for text/plain but not for text/csv.
    """
    name = type(failure).__name__
    if name == "RejectedPositiveData":
        return not (
            response.status_code == 422
            and _problem_type(response) == "https://tenantry.dev/problems/idempotency-key-reused"
        )
    if name != "AcceptedNegativeData":
        return True
    if (case.method.upper(), case.operation.path) not in CSV_BODIES:
        return True
    if isinstance(case.body, (str, bytes)) or case.meta is None:
        return True
    negative = {loc for loc, c in case.meta.components.items() if c.mode.is_negative}
    return negative != {ParameterLocation.BODY}
