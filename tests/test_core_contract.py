"""The decision core's output contract, field by field: status, challenge, OAuth error,
reason, resource, action and principal of every kind of refusal (what the adapters turn
into a response and the logs show). Complements the table in ``test_core.py``."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from endpointsec import (
    MTLS,
    CertificateError,
    EndpointSecError,
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
from endpointsec.core import decide_route
from endpointsec.errors import AuthorizationError, RequestError, UpstreamError

FP = hashlib.sha256(b"leaf").hexdigest()
PEER = PeerIdentity(subject="CN=orders", fingerprint_sha256=FP, uri_sans=("spiffe://a/b",))
TOKEN = RequestPrincipal(issuer="https://idp", subject="alice")


class Allow:
    """Allows every subject; counts evaluations."""

    dry_run = False

    def __init__(self) -> None:
        self.calls = 0

    def normalize(self, raw_path: str) -> str:
        return raw_path

    def roles_for(self, *, subjects: object, domain: str | None = None) -> frozenset[str]:
        return frozenset()

    def evaluate(self, *, subjects: tuple[str, ...], resource: str, action: str,
                 domain: str | None = None) -> PolicyResult:
        self.calls += 1
        return PolicyResult(allowed=True, matched_rule=("p", "*"), subjects=tuple(subjects),
                            reason="allowed")


def facts(**kw: object) -> RequestFacts:
    base: dict[str, object] = {"method": "POST", "raw_path": "/orders", "path": "/orders"}
    base.update(kw)
    return RequestFacts(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(("error", "status"), [
    pytest.param(CertificateError("expired"), 401, id="certificate-401"),
    pytest.param(RequestError("malformed"), 400, id="request-error-400"),
    pytest.param(AuthorizationError("no"), 403, id="authorization-error-403"),
    pytest.param(UpstreamError("bundle store down"), 503, id="upstream-503"),
    pytest.param(EndpointSecError("odd"), 401, id="root-error-is-401-never-500"),
])
def test_peer_error_status_is_kept_when_it_is_a_refusal_status(error: EndpointSecError,
                                                                status: int) -> None:
    d = decide(facts(peer_error=error), Allow())
    assert (d.allowed, d.status, d.challenge) == (False, status, "mTLS")


@pytest.mark.parametrize(("error", "status"), [
    pytest.param(TokenError("bad signature"), 401, id="token-401"),
    pytest.param(RequestError("two authorization headers"), 400, id="request-error-400"),
    pytest.param(AuthorizationError("no"), 403, id="authorization-error-403"),
    pytest.param(EndpointSecError("odd"), 401, id="root-error-is-401-never-500"),
])
def test_token_error_status_is_kept_when_it_is_a_refusal_status(error: EndpointSecError,
                                                                 status: int) -> None:
    d = decide(facts(principal=Principal(peer=PEER), token_error=error), Allow())
    assert (d.allowed, d.status, d.challenge) == (False, status, "Bearer")
    assert isinstance(d.reason, str) and d.reason
    # Only authentication errors carry an RFC 6750 error code.
    expected = "invalid_token" if isinstance(error, TokenError) else None
    assert d.oauth_error == expected
    assert d.principal.peer == PEER  # what was established is kept for the logs


BOUND = replace(TOKEN, cnf_x5t_s256="A" * 43)

REFUSALS = [
    # id, facts, status, challenge, oauth_error, peer kept
    ("bad-method", facts(method="get"), 400, None, None, False),
    ("no-path", facts(path=None), 400, None, None, False),
    ("path-error", facts(path=None, request_error=PathError("%00")), 400, None, None, False),
    ("cert-rejected", facts(peer_error=CertificateError("x")), 401, "mTLS", None, False),
    ("cert-missing", facts(), 401, "mTLS", None, False),
    ("keys-unavailable", facts(principal=Principal(peer=PEER),
                               token_error=KeySetUnavailable("down")), 503, None, None, True),
    ("token-missing", facts(principal=Principal(peer=PEER),
                            requirements=Requirements(token=TokenUse.REQUIRED)),
     401, "Bearer", None, True),
    ("route-wants-bound-token", facts(principal=Principal(peer=PEER, request=TOKEN),
                                      requirements=Requirements(bound_token=True)),
     401, "Bearer", "invalid_token", True),
    ("bound-token-without-cert", facts(principal=Principal(request=BOUND),
                                       requirements=Requirements(mtls=MTLS.OPTIONAL)),
     401, "Bearer", "invalid_token", False),
    ("bound-token-other-cert", facts(principal=Principal(peer=PEER, request=BOUND)),
     401, "Bearer", "invalid_token", True),
    ("nothing-presented", facts(requirements=Requirements(mtls=MTLS.OPTIONAL)),
     401, "mTLS", None, False),
]


@pytest.mark.parametrize(("f", "status", "challenge", "oauth_error", "peer_kept"),
                         [c[1:] for c in REFUSALS], ids=[c[0] for c in REFUSALS])
def test_refusal_fields(f: RequestFacts, status: int, challenge: str | None,
                        oauth_error: str | None, peer_kept: bool) -> None:
    policy = Allow()
    d = decide(f, policy)
    assert (d.allowed, d.status) == (False, status)
    assert (d.challenge, d.oauth_error) == (challenge, oauth_error)
    assert isinstance(d.reason, str) and d.reason
    assert (d.resource, d.action) == (f.path, f.method)
    assert isinstance(d.principal, Principal)
    assert d.principal.peer == (PEER if peer_kept else None)
    if status == 401 and challenge == "Bearer":
        # A token refusal keeps the token it refused (for the logs and explain).
        assert d.principal.request == f.principal.request
    assert policy.calls == 0  # refused before the policy was asked


def test_public_route_decision_fields() -> None:
    f = facts(principal=Principal(peer=PEER), requirements=Requirements(public=True))
    d = decide(f, Allow())
    assert (d.allowed, d.status) == (True, 200)
    assert isinstance(d.reason, str) and d.reason
    assert (d.resource, d.action, d.principal) == ("/orders", "POST", f.principal)


def test_decide_route_allows_what_both_requirement_sets_allow() -> None:
    policy = Allow()
    f = facts(principal=Principal(peer=PEER))
    route = replace(f.requirements, token=TokenUse.OPTIONAL)
    d = decide_route(f, policy, route)
    assert (d.allowed, d.status) == (True, 200)
    assert policy.calls == 2  # the global requirements, then the route's
    narrowed = decide_route(f, policy, replace(route, token=TokenUse.REQUIRED))
    assert (narrowed.allowed, narrowed.status) == (False, 401)
    public = decide_route(facts(), policy, Requirements(public=True))
    assert (public.allowed, public.status) == (True, 200)


class Rules:
    """A policy of (action, domain, effect) rules for one resource, first deny wins;
    ``subjects_out`` is what it reports as the subjects it considered."""

    dry_run = False

    def __init__(self, rules: list[tuple[str, str, str]], *, roles: frozenset[str] = frozenset(),
                 raises: Exception | None = None,
                 subjects_out: tuple[str, ...] | None = None) -> None:
        self.rules = rules
        self.roles = roles
        self.raises = raises
        self.subjects_out = subjects_out

    def normalize(self, raw_path: str) -> str:
        return raw_path

    def roles_for(self, *, subjects: object, domain: str | None = None) -> frozenset[str]:
        return self.roles

    def evaluate(self, *, subjects: tuple[str, ...], resource: str, action: str,
                 domain: str | None = None) -> PolicyResult:
        if self.raises is not None:
            raise self.raises
        out = tuple(subjects) if self.subjects_out is None else self.subjects_out
        matching = [r for r in self.rules if r[0] in (action, "*") and r[1] in (domain, "*")]
        for r in matching:
            if r[2] == "deny":
                return PolicyResult(allowed=False, matched_rule=("p", *r), subjects=out,
                                    reason=f"denied by {r}")
        for r in matching:
            return PolicyResult(allowed=True, matched_rule=("p", *r), subjects=out,
                                reason=f"allowed by {r}")
        return PolicyResult(allowed=False, subjects=out, reason="")


def head(**kw: object) -> RequestFacts:
    return facts(method="HEAD", principal=Principal(peer=PEER), **kw)


@pytest.mark.parametrize(("rules", "f", "allowed", "why"), [
    pytest.param([("*", "*", "allow"), ("GET", "*", "deny")], head(), False, "HEAD runs",
                 id="get-denied-head-denied"),
    pytest.param([("HEAD", "*", "allow")], head(), True, None,
                 id="head-allowed-no-get-rule"),
    pytest.param([("*", "*", "allow"), ("GET", "t1", "deny")], head(domain="t2"), True, None,
                 id="get-denied-in-another-domain"),
    pytest.param([("*", "*", "allow"), ("GET", "t1", "deny")], head(domain="t1"), False,
                 "HEAD runs", id="get-denied-in-this-domain"),
    pytest.param([("*", "*", "allow"), ("GET", "*", "deny")],
                 facts(principal=Principal(peer=PEER)), True, None,
                 id="post-unaffected-by-a-get-deny"),
    pytest.param([("*", "*", "allow"), ("GET", "*", "deny")],
                 head(requirements=Requirements(action="read")), True, None,
                 id="route-action-override-is-not-head"),
])
def test_head_follows_get_rules(rules: list[tuple[str, str, str]], f: RequestFacts,
                                allowed: bool, why: str | None) -> None:
    d = decide(f, Rules(rules))
    assert (d.allowed, d.status) == (allowed, 200 if allowed else 403)
    if why is not None:
        assert d.reason is not None and d.reason.startswith(why)
        assert "denied by" in d.reason  # the GET rule's own reason is kept
        assert d.matched_rule is not None and d.matched_rule[1] == "GET"


def test_policy_error_decision_fields() -> None:
    f = facts(principal=Principal(peer=PEER))
    d = decide(f, Rules([], raises=RuntimeError("matcher exploded")))
    assert (d.allowed, d.status) == (False, 403)
    assert d.reason is not None and "RuntimeError" in d.reason and "matcher exploded" in d.reason
    assert (d.resource, d.action, d.principal) == ("/orders", "POST", f.principal)
    assert d.subjects == f.principal.subjects()


@pytest.mark.parametrize("reported", [None, ()], ids=["policy-reports-subjects",
                                                      "policy-reports-none"])
def test_policy_deny_and_allow_decision_fields(reported: tuple[str, ...] | None) -> None:
    f = facts(principal=Principal(peer=PEER))
    subjects = f.principal.subjects()
    deny = decide(f, Rules([("*", "*", "deny")], subjects_out=reported))
    assert (deny.allowed, deny.status, deny.would_deny) == (False, 403, False)
    assert (deny.resource, deny.action, deny.principal) == ("/orders", "POST", f.principal)
    assert deny.matched_rule == ("p", "*", "*", "deny")
    assert deny.subjects == subjects
    nothing = decide(f, Rules([], subjects_out=reported))
    assert nothing.reason and nothing.matched_rule is None and nothing.subjects == subjects
    allow = decide(f, Rules([("*", "*", "allow")], subjects_out=reported))
    assert (allow.allowed, allow.status) == (True, 200)
    assert (allow.resource, allow.action, allow.principal) == ("/orders", "POST", f.principal)
    assert allow.matched_rule == ("p", "*", "*", "allow")
    assert allow.subjects == subjects
    assert allow.reason == "allowed by ('*', '*', 'allow')"


@pytest.mark.parametrize(("token", "oauth_error"), [
    pytest.param(None, None, id="certificate-caller"),
    pytest.param(TOKEN, "insufficient_scope", id="token-caller"),
])
def test_route_roles_refusal_fields(token: RequestPrincipal | None,
                                    oauth_error: str | None) -> None:
    f = facts(principal=Principal(peer=PEER, request=token),
              requirements=Requirements(roles=frozenset({"ops"})))
    subjects = f.principal.subjects()
    d = decide(f, Rules([("*", "*", "allow")], subjects_out=()))
    assert (d.allowed, d.status, d.would_deny) == (False, 403, False)
    assert d.oauth_error == oauth_error
    assert d.reason is not None and "ops" in d.reason
    assert (d.resource, d.action, d.principal) == ("/orders", "POST", f.principal)
    assert d.matched_rule == ("p", "*", "*", "allow")
    assert d.subjects == subjects
    dry = decide(replace(f, requirements=Requirements(roles=frozenset({"ops"}), dry_run=True)),
                 Rules([("*", "*", "allow")]))
    assert (dry.allowed, dry.status, dry.would_deny) == (True, 200, True)
    assert dry.reason is not None and "ops" in dry.reason
