from __future__ import annotations

import json

import pytest

from endpointsec import Decision
from endpointsec.integrations.responses import error_response


@pytest.mark.parametrize(
    ("decision", "bearer", "challenges"),
    [
        (Decision(allowed=False, status=401, reason="x", challenge="mTLS"), False,
         ['MutualTLS realm="endpointsec"']),
        (Decision(allowed=False, status=401, reason="x", challenge="mTLS"), True,
         ['MutualTLS realm="endpointsec"', 'Bearer realm="endpointsec"']),
        (Decision(allowed=False, status=401, reason="x", challenge="Bearer",
                  oauth_error="invalid_token"), True,
         ['Bearer realm="endpointsec", error="invalid_token"']),
        (Decision(allowed=False, status=401, reason="x", challenge="Bearer"), True,
         ['Bearer realm="endpointsec"']),
        (Decision(allowed=False, status=403, reason="x"), True, []),
        (Decision(allowed=False, status=403, reason="x", oauth_error="insufficient_scope"),
         True, ['Bearer realm="endpointsec", error="insufficient_scope"']),
    ],
    ids=["mtls", "mtls-and-bearer", "invalid-token", "bearer-no-error", "forbidden",
         "insufficient-scope"],
)
def test_challenges(decision: Decision, bearer: bool, challenges: list[str]) -> None:
    resp = error_response(decision, bearer=bearer)
    assert [v for k, v in resp.headers if k == "www-authenticate"] == challenges


@pytest.mark.parametrize("status", [400, 401, 403, 503])
def test_problem_json(status: int) -> None:
    resp = error_response(Decision(allowed=False, status=status, reason="secret reason"))
    body = json.loads(resp.body)
    assert body["status"] == status == resp.status
    assert b"secret" not in resp.body
    assert ("content-type", "application/problem+json") in resp.headers
    assert ("retry-after", "5") in resp.headers if status == 503 else True


def test_unknown_status_becomes_403() -> None:
    assert error_response(Decision(allowed=False, status=418, reason="x")).status == 403
