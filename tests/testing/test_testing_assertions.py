"""assert_allowed / assert_denied / evaluate: the real decide(), explained on failure."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from endpointsec import MTLS, ConfigurationError, Gatekeeper, Requirements, TokenUse
from endpointsec.policy.enforcer import CasbinPolicy
from endpointsec.routing import RouteTable
from endpointsec.testing import (
    POLICY_ONLY,
    CertificateAuthority,
    assert_allowed,
    assert_denied,
    evaluate,
)

ORDERS = "spiffe://example.org/ns/shop/sa/orders"
IDP = "https://idp.example.com"

ALICE = {"iss": IDP, "sub": "alice"}
NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


@pytest.fixture
def policy(policy_file: Path) -> CasbinPolicy:
    return CasbinPolicy(policy=policy_file)


def test_allowed_request_returns_the_decision(policy: CasbinPolicy) -> None:
    decision = assert_allowed(policy, path="/orders/7", peer=ORDERS)
    assert decision.matched_rule == ("p", ORDERS, "*", "/orders/:id", "GET", "allow")
    assert decision.subjects == (ORDERS,)


def test_failed_assert_allowed_shows_the_explanation(policy: CasbinPolicy) -> None:
    with pytest.raises(AssertionError) as info:
        assert_allowed(policy, method="DELETE", path="/orders/7", peer=ORDERS)
    message = str(info.value)
    assert message.startswith("expected ALLOW, got DENY: DELETE /orders/7\nDENY 403")
    assert "reason:" in message
    assert f"subjects: {ORDERS}" in message
    assert "rule:     no rule matched" in message


def test_failed_assert_denied_shows_the_allowing_rule(policy: CasbinPolicy) -> None:
    with pytest.raises(AssertionError, match=r"(?s)expected DENY, got ALLOW.*role:admin"):
        assert_denied(policy, method="DELETE", path="/orders/7", token=ALICE)


def test_deny_rule_and_status_are_checked(policy: CasbinPolicy) -> None:
    rule = ["role:admin", "*", "/orders/secret", "*", "deny"]
    decision = assert_denied(policy, path="/orders/secret", token=ALICE, status=403, rule=rule)
    assert decision.status == 403
    assert_denied(policy, path="/orders/secret", token=ALICE, rule=["p", *rule])
    with pytest.raises(AssertionError, match="expected DENY 401, got 403"):
        assert_denied(policy, path="/orders/secret", token=ALICE, status=401)
    with pytest.raises(AssertionError, match="expected rule"):
        assert_denied(policy, path="/orders/secret", token=ALICE, rule=["other"])
    with pytest.raises(AssertionError, match="expected rule"):
        assert_allowed(policy, path="/orders/1", token=ALICE, rule=["x"])


def test_bare_policy_is_tested_alone(policy: CasbinPolicy) -> None:
    # No certificate and no mTLS requirement: POLICY_ONLY lets a token reach the policy.
    assert POLICY_ONLY.mtls is MTLS.OPTIONAL
    assert_allowed(policy, method="PUT", path="/orders/7", token=ALICE)
    assert_denied(policy, path="/orders/7", status=401)  # nobody at all


def test_gatekeeper_routes_apply(policy: CasbinPolicy) -> None:
    gk = Gatekeeper(policy=policy, routes=RouteTable(
        [("/health", frozenset(), Requirements(public=True))],
        defaults=Requirements(mtls=MTLS.REQUIRED, token=TokenUse.OPTIONAL)))
    decision = assert_denied(gk, path="/orders/7", token=ALICE, status=401)
    assert "client certificate" in decision.reason
    assert_allowed(gk, path="/health")
    assert_allowed(gk, path="/orders/7", peer=ORDERS, token=ALICE,
                   requirements=Requirements(mtls=MTLS.OPTIONAL))


def test_dry_run_would_deny_counts_as_denied(policy_file: Path) -> None:
    policy = CasbinPolicy(policy=policy_file, dry_run=True)
    decision = evaluate(policy, method="DELETE", path="/orders/7", peer=ORDERS)
    assert decision.allowed and decision.would_deny
    assert_denied(policy, method="DELETE", path="/orders/7", peer=ORDERS, status=403)
    with pytest.raises(AssertionError):
        assert_allowed(policy, method="DELETE", path="/orders/7", peer=ORDERS)


@pytest.mark.parametrize(
    ("token", "allowed"),
    [
        pytest.param({**ALICE, "exp": NOW.timestamp() + 60}, True, id="valid"),
        pytest.param({**ALICE, "exp": NOW.timestamp()}, False, id="expires-now"),
        pytest.param({**ALICE, "exp": NOW.timestamp() + 60, "nbf": NOW.timestamp() + 30},
                     False, id="not-yet-valid"),
    ],
)
def test_now_checks_token_times(policy: CasbinPolicy, token: dict[str, object],
                                allowed: bool) -> None:
    decision = evaluate(policy, path="/orders/1", token=token, now=NOW)
    assert decision.allowed is allowed
    if not allowed:
        assert decision.status == 401
        assert "bearer token rejected" in decision.reason


def test_now_checks_certificate_validity(policy: CasbinPolicy) -> None:
    ca = CertificateAuthority.create(not_before=NOW - dt.timedelta(days=400),
                                     not_after=NOW + dt.timedelta(days=400))
    cert = ca.issue_client(spiffe_id=ORDERS, not_before=NOW - dt.timedelta(days=2),
                           not_after=NOW - dt.timedelta(days=1))
    assert_denied(policy, path="/orders/1", peer=cert, now=NOW, status=401)
    assert_allowed(policy, path="/orders/1", peer=cert, now=NOW - dt.timedelta(hours=36))
    decision = assert_denied(policy, path="/orders/1", peer=cert,
                             now=NOW - dt.timedelta(days=3), status=401)
    assert "not yet valid" in decision.reason


def test_jwt_string_needs_a_verifier(policy: CasbinPolicy) -> None:
    with pytest.raises(ConfigurationError, match="token verifier"):
        evaluate(policy, path="/orders/1", token="eyJhbGciOiJub25lIn0.e30.")


@pytest.mark.parametrize("target", [None, "policy", 3], ids=["none", "string", "int"])
def test_target_must_be_a_gatekeeper_or_policy(target: object) -> None:
    with pytest.raises(ConfigurationError, match="Gatekeeper or a Policy"):
        evaluate(target, path="/")  # type: ignore[arg-type]


def test_naive_now_is_refused(policy: CasbinPolicy) -> None:
    with pytest.raises(ConfigurationError, match="timezone"):
        evaluate(policy, path="/orders/1", peer=ORDERS, now=dt.datetime(2026, 1, 1))


@pytest.mark.parametrize("path", ["/orders/x/../7", "/orders/7%2Fx", "/orders\\7",
                                  "//orders/7", "/orders/./7"],
                         ids=["dot-dot", "encoded-slash", "backslash", "double-slash", "dot"])
def test_paths_the_server_refuses_are_refused(policy: CasbinPolicy, path: str) -> None:
    # the same 400 the middleware answers, not a decision on the normalized path
    decision = assert_denied(policy, path=path, peer=ORDERS, status=400)
    assert decision.status == 400
