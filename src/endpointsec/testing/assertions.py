"""Decide a request described directly, and assert on the decision.

::

    assert_allowed(gatekeeper, method="GET", path="/orders/1",
                   peer="spiffe://example.org/ns/shop/sa/orders")
    assert_denied(policy, "DELETE", "/orders/1",
                  token={"iss": "https://idp", "sub": "alice", "roles": ["reader"]})

The request may be given by keyword (``method=``, ``path=``) or positionally:
``"/orders/1"``, ``"DELETE", "/orders/1"`` or ``"DELETE /orders/1"``.

The decision comes from the same :func:`endpointsec.decide` the middleware calls; a
failing assertion shows :meth:`Decision.explain`, and pytest hides these helpers'
frames (``__tracebackhide__``) so the explanation is what a failure shows.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import replace

from endpointsec.errors import (
    CertificateError,
    ConfigurationError,
    EndpointSecError,
    TokenError,
)
from endpointsec.facts import MTLS, Decision, RequestFacts, Requirements, TokenUse
from endpointsec.gatekeeper import Gatekeeper
from endpointsec.protocols import Policy
from endpointsec.testing.principals import PeerLike, TokenLike, peer_identity, request_principal

__all__ = ["POLICY_ONLY", "assert_allowed", "assert_denied", "evaluate", "facts_for"]

#: The requirements used when a bare policy (not a gatekeeper) is tested: any presented
#: credential is enough to reach the policy, so the test is about the policy alone.
POLICY_ONLY = Requirements(mtls=MTLS.OPTIONAL, token=TokenUse.OPTIONAL)


def _gatekeeper(target: Gatekeeper | Policy) -> Gatekeeper:
    __tracebackhide__ = True
    if isinstance(target, Gatekeeper):
        return target
    # The Policy protocol's shape, without a runtime-checkable isinstance (slow).
    if all(callable(getattr(target, name, None)) for name in ("evaluate", "normalize",
                                                             "roles_for")):
        from endpointsec.routing import RouteTable

        return Gatekeeper(policy=target, routes=RouteTable(defaults=POLICY_ONLY))
    raise ConfigurationError(
        f"expected a Gatekeeper or a Policy, not {type(target).__name__}")


def _when(now: dt.datetime | float | None) -> float | None:
    __tracebackhide__ = True
    if now is None or isinstance(now, int | float):
        return now
    if now.tzinfo is None:
        raise ConfigurationError("'now' must be a timezone-aware datetime")
    return now.timestamp()


def _request(request: tuple[str, ...], method: str | None,
             path: str | None) -> tuple[str, str]:
    """``(method, path)`` from positional ``request`` and the keywords."""
    __tracebackhide__ = True
    if len(request) == 1 and " " in request[0].strip():
        request = tuple(request[0].split(None, 1))
    if len(request) > 2 or not all(isinstance(r, str) for r in request):
        raise TypeError("give the request as (path), (method, path) or ('METHOD path')")
    pos_method: str | None = None
    pos_path: str | None = None
    if len(request) == 2:
        pos_method, pos_path = request
    elif len(request) == 1:
        if path is not None and not request[0].startswith("/"):
            pos_method = request[0]  # assert_allowed(policy, "GET", path="/orders")
        else:
            pos_path = request[0]
    if pos_method is not None and method is not None:
        raise TypeError("the method is given twice (positionally and as method=)")
    if pos_path is not None and path is not None:
        raise TypeError("the path is given twice (positionally and as path=)")
    path = path if path is not None else pos_path
    if path is None:
        raise TypeError("the request path is required (path=... or positionally)")
    return (method or pos_method or "GET"), path


def facts_for(
    target: Gatekeeper | Policy,
    *,
    method: str,
    path: str,
    peer: PeerLike | None = None,
    token: TokenLike | None = None,
    domain: str | None = None,
    requirements: Requirements | None = None,
    now: dt.datetime | float | None = None,
) -> RequestFacts:
    """The facts of a request described directly (see :func:`evaluate`)."""
    __tracebackhide__ = True
    gk = _gatekeeper(target)
    when = _when(now)
    peer_error: EndpointSecError | None = None
    identity = peer_identity(peer) if peer is not None else None
    if identity is not None and when is not None:
        cert = identity.chain[0] if identity.chain else None
        if identity.not_after is not None and identity.not_after.timestamp() < when:
            peer_error = CertificateError(
                f"certificate expired at {identity.not_after:%Y-%m-%dT%H:%M:%SZ}")
        elif cert is not None and cert.not_valid_before_utc.timestamp() > when:
            peer_error = CertificateError("certificate is not yet valid")
    token_error: EndpointSecError | None = None
    principal = None
    if isinstance(token, str):
        if gk.token_verifier is None:
            raise ConfigurationError(
                "a JWT string needs a gatekeeper with a token verifier; pass the claims "
                "as a mapping to test the policy alone")
        try:
            principal = gk.token_verifier.verify(token)
        except EndpointSecError as exc:
            token_error = exc
    elif token is not None:
        principal = request_principal(token)
        if when is not None:
            nbf = principal.claims.get("nbf")
            if principal.expires_at is not None and principal.expires_at <= when:
                token_error = TokenError("token has expired")
            elif isinstance(nbf, int | float) and nbf > when:
                token_error = TokenError("token is not yet valid (nbf)")
    # The path as a server receives it (wire=True): what the middleware refuses with a
    # 400 before normalizing (dot segments, encoded slashes, backslashes, '//') is
    # refused here too.
    facts = gk.facts_for(method=method, path=path, peer=None if peer_error else identity,
                         token=None if token_error else principal, domain=domain,
                         requirements=requirements, wire=True)
    if peer_error is not None or token_error is not None:
        facts = replace(facts, peer_error=peer_error, token_error=token_error,
                        token_presented=token is not None)
    return facts


def evaluate(
    target: Gatekeeper | Policy,
    *request: str,
    method: str | None = None,
    path: str | None = None,
    peer: PeerLike | None = None,
    token: TokenLike | None = None,
    domain: str | None = None,
    requirements: Requirements | None = None,
    now: dt.datetime | float | None = None,
) -> Decision:
    """The decision for one request, described directly (no server).

    ``target`` is a :class:`Gatekeeper` (its routes and token verifier apply) or a bare
    :class:`Policy` (tested alone: see :data:`POLICY_ONLY`). ``peer`` is a SPIFFE ID or
    other principal string, a certificate or an :class:`IssuedCertificate` (not
    chain-verified). ``token`` is a mapping of claims (``iss``, ``sub``, ``roles`` ...),
    a :class:`RequestPrincipal`, or a JWT string (verified by the gatekeeper's token
    verifier). With ``now``, an expired certificate or token is refused as it would be.
    """
    __tracebackhide__ = True
    method, path = _request(request, method, path)
    gk = _gatekeeper(target)
    return gk.decide(facts_for(gk, method=method, path=path, peer=peer, token=token,
                               domain=domain, requirements=requirements, now=now))


def rule_matches(expected: Sequence[str], matched: tuple[str, ...] | None) -> bool:
    """Whether ``matched`` is the ``expected`` rule (the leading ``p`` may be left out)."""
    __tracebackhide__ = True
    if matched is None:
        return False
    want = tuple(s.strip() for s in expected)
    return want == matched or (matched[:1] == ("p",) and want == matched[1:])


def _describe(method: str, path: str, decision: Decision) -> str:
    __tracebackhide__ = True
    return f"{method} {path}\n{decision.explain()}"


def assert_allowed(
    target: Gatekeeper | Policy,
    *request: str,
    method: str | None = None,
    path: str | None = None,
    peer: PeerLike | None = None,
    token: TokenLike | None = None,
    domain: str | None = None,
    requirements: Requirements | None = None,
    rule: Sequence[str] | None = None,
    now: dt.datetime | float | None = None,
) -> Decision:
    """Fail (``AssertionError`` with the explanation) unless the request is allowed.

    ``rule`` also checks the matched policy rule. A dry-run "would deny" is not allowed.
    """
    __tracebackhide__ = True
    method, path = _request(request, method, path)
    decision = evaluate(target, method=method, path=path, peer=peer, token=token,
                        domain=domain, requirements=requirements, now=now)
    if not decision.allowed or decision.would_deny:
        raise AssertionError(f"expected ALLOW, got DENY: {_describe(method, path, decision)}")
    if rule is not None and not rule_matches(rule, decision.matched_rule):
        raise AssertionError(
            f"expected rule {', '.join(rule)}: {_describe(method, path, decision)}")
    return decision


def assert_denied(
    target: Gatekeeper | Policy,
    *request: str,
    method: str | None = None,
    path: str | None = None,
    peer: PeerLike | None = None,
    token: TokenLike | None = None,
    domain: str | None = None,
    requirements: Requirements | None = None,
    status: int | None = None,
    rule: Sequence[str] | None = None,
    now: dt.datetime | float | None = None,
) -> Decision:
    """Fail (``AssertionError`` with the explanation) unless the request is denied.

    ``status`` also checks the refusal status (401, 403 ...); ``rule`` the matched (deny)
    rule. A dry-run "would deny" counts as denied.
    """
    __tracebackhide__ = True
    method, path = _request(request, method, path)
    decision = evaluate(target, method=method, path=path, peer=peer, token=token,
                        domain=domain, requirements=requirements, now=now)
    status_seen = 403 if decision.would_deny else decision.status
    if decision.allowed and not decision.would_deny:
        raise AssertionError(f"expected DENY, got ALLOW: {_describe(method, path, decision)}")
    if status is not None and status != status_seen:
        raise AssertionError(
            f"expected DENY {status}, got {status_seen}: {_describe(method, path, decision)}")
    if rule is not None and not rule_matches(rule, decision.matched_rule):
        raise AssertionError(
            f"expected rule {', '.join(rule)}: {_describe(method, path, decision)}")
    return decision

