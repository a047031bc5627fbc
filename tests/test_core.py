"""The pure decision core, as a table of facts and expected decisions."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import replace

import pytest

from endpointsec import (
    MTLS,
    CertificateError,
    KeySetUnavailable,
    PathError,
    PeerIdentity,
    PolicyResult,
    Principal,
    RequestFacts,
    RequestPrincipal,
    Requirements,
    TokenError,
    TokenUse,
    decide,
)
from endpointsec.identity.spiffe import SpiffeId

FP = hashlib.sha256(b"leaf").hexdigest()
PEER = PeerIdentity(subject="CN=orders", fingerprint_sha256=FP, uri_sans=("spiffe://a/b",),
                    spiffe_id=SpiffeId("a", "/b"))
TOKEN = RequestPrincipal(issuer="https://idp", subject="alice", roles=frozenset({"admin"}))
THUMB = base64.urlsafe_b64encode(bytes.fromhex(FP)).rstrip(b"=").decode()


class TablePolicy:
    """A tiny policy: subject -> allowed; 'deny:' prefix denies; raise on 'boom'."""

    def __init__(self, allowed: Sequence[str] = (), *, dry_run: bool = False,
                 roles: Sequence[str] = ()) -> None:
        self.allowed = set(allowed)
        self._dry_run = dry_run
        self.roles = frozenset(roles)
        self.calls = 0

    @property
    def dry_run(self) -> bool:
        return self._dry_run

    def normalize(self, raw_path: str) -> str:
        return raw_path

    def roles_for(self, *, subjects: Sequence[str], domain: str | None = None) -> frozenset[str]:
        return self.roles

    def evaluate(self, *, subjects: Sequence[str], resource: str, action: str,
                 domain: str | None = None) -> PolicyResult:
        self.calls += 1
        if resource == "/boom":
            raise RuntimeError("matcher error")
        for s in subjects:
            if s in self.allowed:
                return PolicyResult(allowed=True, matched_rule=(s, resource, action, "allow"),
                                    subjects=tuple(subjects), reason="allowed")
        return PolicyResult(allowed=False, subjects=tuple(subjects), reason="no rule matched")


def facts(**kw: object) -> RequestFacts:
    base: dict[str, object] = {"method": "GET", "raw_path": "/orders", "path": "/orders"}
    base.update(kw)
    return RequestFacts(**base)  # type: ignore[arg-type]


ALLOW_PEER = TablePolicy(["spiffe://a/b"])

CASES = [
    # id, facts, policy, status, allowed
    ("peer-allowed", facts(principal=Principal(peer=PEER)), ALLOW_PEER, 200, True),
    ("peer-not-in-policy", facts(principal=Principal(peer=PEER)), TablePolicy(), 403, False),
    ("no-cert-mtls-required", facts(), ALLOW_PEER, 401, False),
    ("cert-error", facts(peer_error=CertificateError("expired")), ALLOW_PEER, 401, False),
    ("cert-error-ignored-when-mtls-none",
     facts(peer_error=CertificateError("x"), principal=Principal(request=TOKEN),
           requirements=Requirements(mtls=MTLS.NONE)), TablePolicy(["https://idp#alice"]),
     200, True),
    ("bad-path", facts(path=None, request_error=PathError("%00")), ALLOW_PEER, 400, False),
    ("lowercase-method", facts(method="get", principal=Principal(peer=PEER)), ALLOW_PEER,
     400, False),
    ("unknown-method", facts(method="FOO", principal=Principal(peer=PEER)), ALLOW_PEER,
     400, False),
    ("public-route", facts(requirements=Requirements(public=True)), TablePolicy(), 200, True),
    ("public-route-bad-path-still-400",
     facts(path=None, request_error=PathError("x"), requirements=Requirements(public=True)),
     TablePolicy(), 400, False),
    ("token-required-missing", facts(principal=Principal(peer=PEER),
                                     requirements=Requirements(token=TokenUse.REQUIRED)),
     ALLOW_PEER, 401, False),
    ("token-invalid", facts(principal=Principal(peer=PEER), token_error=TokenError("bad sig")),
     ALLOW_PEER, 401, False),
    ("keys-unavailable", facts(principal=Principal(peer=PEER),
                               token_error=KeySetUnavailable("jwks down")), ALLOW_PEER, 503,
     False),
    ("token-role-allowed", facts(principal=Principal(peer=PEER, request=TOKEN)),
     TablePolicy(["role:admin"]), 200, True),
    ("bound-token-match",
     facts(principal=Principal(peer=PEER, request=replace(TOKEN, cnf_x5t_s256=THUMB))),
     ALLOW_PEER, 200, True),
    ("bound-token-mismatch",
     facts(principal=Principal(peer=PEER, request=replace(TOKEN, cnf_x5t_s256="AAAA"))),
     ALLOW_PEER, 401, False),
    ("bound-token-no-cert",
     facts(principal=Principal(request=replace(TOKEN, cnf_x5t_s256=THUMB)),
           requirements=Requirements(mtls=MTLS.OPTIONAL)),
     TablePolicy(["role:admin"]), 401, False),
    ("route-requires-bound-token",
     facts(principal=Principal(peer=PEER, request=TOKEN),
           requirements=Requirements(bound_token=True)), ALLOW_PEER, 401, False),
    ("optional-nothing-presented", facts(requirements=Requirements(mtls=MTLS.OPTIONAL)),
     ALLOW_PEER, 401, False),
    ("policy-raises-is-deny", facts(path="/boom", principal=Principal(peer=PEER)), ALLOW_PEER,
     403, False),
    ("route-roles-narrow",
     facts(principal=Principal(peer=PEER), requirements=Requirements(roles=frozenset({"ops"}))),
     ALLOW_PEER, 403, False),
    ("route-roles-from-policy-roles",
     facts(principal=Principal(peer=PEER), requirements=Requirements(roles=frozenset({"ops"}))),
     TablePolicy(["spiffe://a/b"], roles=["ops"]), 200, True),
    ("route-roles-from-token",
     facts(principal=Principal(peer=PEER, request=TOKEN),
           requirements=Requirements(roles=frozenset({"role:admin"}))), ALLOW_PEER, 200, True),
]


@pytest.mark.parametrize(("f", "policy", "status", "allowed"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decide_table(f: RequestFacts, policy: TablePolicy, status: int, allowed: bool) -> None:
    d = decide(f, policy)
    assert (d.status, d.allowed) == (status, allowed), d.explain()


def test_token_ignored_when_route_says_none() -> None:
    f = facts(principal=Principal(peer=PEER, request=TOKEN), token_error=None,
              requirements=Requirements(token=TokenUse.NONE))
    d = decide(f, TablePolicy(["role:admin"]))
    assert d.status == 403
    assert d.principal.request is None


def test_token_error_ignored_when_route_says_none() -> None:
    f = facts(principal=Principal(peer=PEER), token_error=TokenError("bad"),
              requirements=Requirements(token=TokenUse.NONE))
    assert decide(f, ALLOW_PEER).allowed


def test_dry_run_policy_lets_request_through_marked() -> None:
    d = decide(facts(principal=Principal(peer=PEER)), TablePolicy(dry_run=True))
    assert d.allowed and d.would_deny and d.status == 200
    assert "would deny" in d.explain()


def test_dry_run_never_covers_authentication() -> None:
    d = decide(facts(), TablePolicy(dry_run=True))
    assert not d.allowed and d.status == 401


def test_route_dry_run() -> None:
    d = decide(facts(principal=Principal(peer=PEER), requirements=Requirements(dry_run=True)),
               TablePolicy())
    assert d.allowed and d.would_deny


def test_explain_names_rule_and_subjects() -> None:
    d = decide(facts(principal=Principal(peer=PEER)), ALLOW_PEER)
    text = d.explain()
    assert "ALLOW" in text and "spiffe://a/b, /orders, GET, allow" in text


def test_challenge_kinds() -> None:
    assert decide(facts(), ALLOW_PEER).challenge == "mTLS"
    d = decide(facts(principal=Principal(peer=PEER), token_error=TokenError("expired")),
               ALLOW_PEER)
    assert (d.challenge, d.oauth_error) == ("Bearer", "invalid_token")


def test_resource_and_action_overrides() -> None:
    seen: list[tuple[str, str]] = []

    class Spy(TablePolicy):
        def evaluate(self, *, subjects: Sequence[str], resource: str, action: str,
                     domain: str | None = None) -> PolicyResult:
            seen.append((resource, action))
            return super().evaluate(subjects=subjects, resource=resource, action=action)

    req = Requirements(resource="orders", action="read")
    decide(facts(principal=Principal(peer=PEER), requirements=req), Spy(["spiffe://a/b"]))
    assert seen == [("orders", "read")]


def test_decide_does_not_mutate_and_is_repeatable() -> None:
    f = facts(principal=Principal(peer=PEER))
    assert decide(f, ALLOW_PEER) == decide(f, ALLOW_PEER)


def test_subjects_order() -> None:
    p = Principal(peer=PEER, request=replace(TOKEN, scopes=frozenset({"read"}),
                                             groups=frozenset({"g"})))
    assert p.subjects() == ("spiffe://a/b", "https://idp#alice", "role:admin", "scope:read",
                            "group:g")


def test_peer_id_fallbacks() -> None:
    assert PeerIdentity(subject="", fingerprint_sha256=FP, dns_sans=("x",)).id == "dns:x"
    assert PeerIdentity(subject="", fingerprint_sha256=FP).id == f"sha256:{FP}"
