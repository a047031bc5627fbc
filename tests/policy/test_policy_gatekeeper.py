"""The policy inside the gatekeeper: normalization decides the route and the object.

Regression tests for path-confusion bypasses (Istio's ``/public/../private`` family):
a public route must not be reachable as a way around a protected one, and the policy
must see the path the route table saw.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from policy_support import csv_lines

from endpointsec.facts import MTLS, PeerIdentity, Requirements
from endpointsec.gatekeeper import Gatekeeper
from endpointsec.identity.spiffe import parse_spiffe_id
from endpointsec.policy import CasbinPolicy, PathOptions
from endpointsec.routing import RouteTable

WEB = "spiffe://example.org/ns/shop/sa/web"


@pytest.fixture
def gatekeeper(tmp_path: Path) -> Gatekeeper:
    policy_file = tmp_path / "policy.csv"
    policy_file.write_text(csv_lines([
        (WEB, "*", "/public/*", "GET", "allow"),
        (WEB, "*", "/private", "GET", "deny"),
        (WEB, "*", "/orders/:id", "GET", "allow"),
    ]), encoding="utf-8")
    routes = RouteTable(
        [("/public/*", frozenset(), Requirements(public=True))],
        defaults=Requirements(mtls=MTLS.REQUIRED),
    )
    return Gatekeeper(policy=CasbinPolicy(policy=policy_file), routes=routes)


def _peer() -> PeerIdentity:
    return PeerIdentity(subject="CN=web", fingerprint_sha256="ab" * 32, uri_sans=(WEB,),
                        spiffe_id=parse_spiffe_id(WEB))


BYPASS_ATTEMPTS = [
    ("dotdot", "/public/../private"),
    ("encoded-dotdot", "/public/%2e%2e/private"),
    ("encoded-dotdot-upper", "/public/%2E%2E/private"),
    ("double-slash", "//private"),
    ("backslash", "/public\\..\\private"),
    ("dot-segments", "/./public/./../private/."),
]


@pytest.mark.parametrize("raw", [c[1] for c in BYPASS_ATTEMPTS],
                         ids=[c[0] for c in BYPASS_ATTEMPTS])
def test_public_prefix_is_not_a_way_into_private(gatekeeper: Gatekeeper, raw: str) -> None:
    anonymous = gatekeeper.decide(gatekeeper.facts_for(method="GET", path=raw))
    assert anonymous.status == 401, anonymous.explain()
    with_cert = gatekeeper.decide(gatekeeper.facts_for(method="GET", path=raw, peer=_peer()))
    assert with_cert.status == 403, with_cert.explain()
    assert with_cert.resource in ("/private", "/private/")


def test_encoded_slash_left_by_the_normalizer_is_refused(gatekeeper: Gatekeeper) -> None:
    """The normalizer keeps ``%2F`` encoded; the gatekeeper then refuses it, because the
    frameworks behind it route on the decoded path where it is a separator."""
    decision = gatekeeper.decide(
        gatekeeper.facts_for(method="GET", path="/public/..%2Fprivate"))
    assert decision.status == 400
    assert "encoded slash" in decision.reason


def test_decoded_encoded_slash_reaches_the_policy(tmp_path: Path) -> None:
    policy_file = tmp_path / "policy.csv"
    policy_file.write_text(csv_lines([(WEB, "*", "/private", "GET", "deny"),
                                      (WEB, "*", "/public/*", "GET", "allow")]),
                           encoding="utf-8")
    policy = CasbinPolicy(policy=policy_file, paths=PathOptions(decode_encoded_slashes=True))
    gk = Gatekeeper(policy=policy)
    decision = gk.decide(gk.facts_for(method="GET", path="/public/..%2Fprivate", peer=_peer()))
    assert decision.status == 403
    assert decision.resource == "/private"


def test_encoded_slash_rejected_when_configured(tmp_path: Path) -> None:
    policy_file = tmp_path / "policy.csv"
    policy_file.write_text(csv_lines([(WEB, "*", "/*", "GET", "allow")]), encoding="utf-8")
    policy = CasbinPolicy(policy=policy_file, paths=PathOptions(reject_encoded_slashes=True))
    gk = Gatekeeper(policy=policy)
    decision = gk.decide(gk.facts_for(method="GET", path="/public/..%2Fprivate", peer=_peer()))
    assert decision.status == 400
    assert "encoded slash" in decision.reason


@pytest.mark.parametrize("raw", ["/orders/1%00", "/orders/%G1", "/orders/%C0%AE"],
                         ids=["nul", "malformed", "overlong"])
def test_bad_paths_are_a_400(gatekeeper: Gatekeeper, raw: str) -> None:
    decision = gatekeeper.decide(gatekeeper.facts_for(method="GET", path=raw, peer=_peer()))
    assert decision.status == 400


def test_lowercase_method_is_a_400(gatekeeper: Gatekeeper) -> None:
    decision = gatekeeper.decide(
        gatekeeper.facts_for(method="get", path="/orders/1", peer=_peer()))
    assert decision.status == 400


def test_allowed_through_template(gatekeeper: Gatekeeper) -> None:
    decision = gatekeeper.decide(
        gatekeeper.facts_for(method="GET", path="/orders/%34%32", peer=_peer()))
    assert decision.allowed, decision.explain()
    assert decision.resource == "/orders/42"
    assert decision.matched_rule == ("p", WEB, "*", "/orders/:id", "GET", "allow")
