"""The decision core: ``decide(facts, policy) -> Decision``.

Pure and synchronous: no I/O, no clock, no globals. The middleware, the framework
adapters, the CLI's ``explain`` and the pytest fixtures all call this one function,
so a decision seen in a test is the decision made in production.

Order of checks (the first failure decides):

1. the request is well-formed (method, path) — else 400;
2. a public route skips authentication and policy — allow;
3. a presented certificate verified, and one is present if the route requires mTLS — else 401;
4. a presented token verified (503 if no key could be had), present if required,
   bound to the certificate if it carries ``cnf`` or the route demands binding — else 401;
5. the policy allows one of the caller's subjects and denies none — else 403;
6. the route's own role requirement (narrowing only) — else 403.

A policy (or route) in dry-run mode turns a 403 into an allowed decision marked
``would_deny``; authentication failures are never dry-run.
"""

from __future__ import annotations

import base64
from dataclasses import replace

from endpointsec.errors import AuthenticationError, EndpointSecError, UpstreamError
from endpointsec.facts import MTLS, Decision, Principal, RequestFacts, Requirements, TokenUse
from endpointsec.protocols import Policy

__all__ = ["decide", "decide_route"]

_VALID_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)


def _fail(
    facts: RequestFacts,
    status: int,
    reason: str,
    *,
    principal: Principal | None = None,
    challenge: str | None = None,
    oauth_error: str | None = None,
) -> Decision:
    return Decision(
        allowed=False,
        status=status,
        reason=reason,
        principal=principal if principal is not None else Principal(),
        resource=facts.path,
        action=facts.method,
        challenge=challenge,
        oauth_error=oauth_error,
    )


def _error_status(error: EndpointSecError) -> int:
    return error.status_code if error.status_code in (400, 401, 403, 503) else 401


def _thumbprint(fingerprint_hex: str) -> str:
    return base64.urlsafe_b64encode(bytes.fromhex(fingerprint_hex)).rstrip(b"=").decode()


def decide(facts: RequestFacts, policy: Policy) -> Decision:
    """Decide one request from its facts and a policy snapshot. Pure and synchronous."""
    req = facts.requirements

    # 1. A malformed request is a 400 before anything else is considered.
    if facts.request_error is not None:
        return _fail(facts, 400, str(facts.request_error))
    if facts.method not in _VALID_METHODS:
        return _fail(facts, 400, f"unsupported or non-canonical method {facts.method[:16]!r}")
    if facts.path is None:
        return _fail(facts, 400, "request path could not be normalized")

    # 2. Public routes skip authentication and policy altogether.
    if req.public:
        return Decision(
            allowed=True,
            status=200,
            reason="route is public",
            principal=facts.principal,
            resource=facts.path,
            action=facts.method,
        )

    principal = facts.principal

    # 3. The peer certificate.
    if facts.peer_error is not None and req.mtls is not MTLS.NONE:
        return _fail(
            facts,
            _error_status(facts.peer_error),
            f"client certificate rejected: {facts.peer_error}",
            challenge="mTLS",
        )
    if req.mtls is MTLS.REQUIRED and principal.peer is None:
        return _fail(facts, 401, "route requires a client certificate; none was presented",
                     challenge="mTLS")
    if req.mtls is MTLS.NONE and principal.peer is not None:
        principal = Principal(peer=None, request=principal.request)

    # 4. The bearer token.
    if facts.token_error is not None and req.token is not TokenUse.NONE:
        error = facts.token_error
        if isinstance(error, UpstreamError):
            return _fail(facts, 503, f"token could not be verified: {error}",
                         principal=principal)
        oauth_error = error.oauth_error if isinstance(error, AuthenticationError) else None
        return _fail(
            facts,
            _error_status(error),
            f"bearer token rejected: {error}",
            principal=principal,
            challenge="Bearer",
            oauth_error=oauth_error,
        )
    if req.token is TokenUse.REQUIRED and principal.request is None:
        return _fail(facts, 401, "route requires a bearer token; none was presented",
                     principal=principal, challenge="Bearer")
    if req.token is TokenUse.NONE and principal.request is not None:
        principal = Principal(peer=principal.peer, request=None)
    token = principal.request
    if token is not None and (token.cnf_x5t_s256 is not None or req.bound_token):
        if token.cnf_x5t_s256 is None:
            return _fail(facts, 401, "route requires a certificate-bound token (RFC 8705)",
                         principal=principal, challenge="Bearer", oauth_error="invalid_token")
        if principal.peer is None:
            return _fail(facts, 401,
                         "token is bound to a certificate (cnf.x5t#S256) but none was presented",
                         principal=principal, challenge="Bearer", oauth_error="invalid_token")
        if _thumbprint(principal.peer.fingerprint_sha256) != token.cnf_x5t_s256:
            return _fail(facts, 401,
                         "token's cnf.x5t#S256 does not match the client certificate",
                         principal=principal, challenge="Bearer", oauth_error="invalid_token")

    if not principal.authenticated:
        return _fail(facts, 401, "no credentials were presented", challenge="mTLS")

    # 5. The policy: default deny, deny overrides allow.
    subjects = principal.subjects()
    resource = req.resource if req.resource is not None else facts.path
    action = req.action if req.action is not None else facts.method
    try:
        result = policy.evaluate(
            subjects=subjects, resource=resource, action=action, domain=facts.domain
        )
        if result.allowed and action == "HEAD" and req.action is None:
            # Starlette and Flask answer HEAD with the GET handler: a rule that denies
            # GET denies HEAD too (advisory: HEAD walking around a GET deny rule).
            as_get = policy.evaluate(
                subjects=subjects, resource=resource, action="GET", domain=facts.domain
            )
            if not as_get.allowed and as_get.matched_rule is not None:
                result = replace(as_get, reason="HEAD runs the GET handler, and a rule "
                                 f"denies GET: {as_get.reason or 'denied'}")
    except Exception as exc:  # an enforcer error is a deny, never a 500
        return Decision(
            allowed=False, status=403,
            reason=f"policy evaluation failed ({type(exc).__name__}: {exc}); denied",
            principal=principal, resource=resource, action=action, subjects=subjects,
        )
    dry_run = req.dry_run or policy.dry_run
    if not result.allowed:
        return Decision(
            allowed=dry_run,
            status=200 if dry_run else 403,
            reason=result.reason or "no rule allows this request",
            principal=principal,
            resource=resource,
            action=action,
            matched_rule=result.matched_rule,
            subjects=result.subjects or subjects,
            would_deny=dry_run,
        )

    # 6. Route-level roles narrow what the policy allowed.
    if req.roles and req.roles.isdisjoint(subjects):
        try:
            held = policy.roles_for(subjects=subjects, domain=facts.domain)
        except Exception:  # a role lookup error holds no role (a deny), never a 500
            held = frozenset()
    else:
        held = req.roles
    if req.roles and req.roles.isdisjoint(held):
        reason = f"route requires one of {sorted(req.roles)}; caller holds {list(subjects)}"
        return Decision(
            allowed=dry_run, status=200 if dry_run else 403, reason=reason,
            principal=principal, resource=resource, action=action,
            matched_rule=result.matched_rule, subjects=result.subjects or subjects,
            oauth_error="insufficient_scope" if token is not None else None,
            would_deny=dry_run,
        )

    return Decision(
        allowed=True,
        status=200,
        reason=result.reason or "allowed by policy",
        principal=principal,
        resource=resource,
        action=action,
        matched_rule=result.matched_rule,
        subjects=result.subjects or subjects,
    )


def decide_route(facts: RequestFacts, policy: Policy, route: Requirements | None) -> Decision:
    """Decide with a route's own requirements composed onto the global ones.

    A route rule only narrows: the request must pass the global requirements (from the
    configuration) *and* the route's. The single exception is a route declared public,
    which skips both. ``route`` is usually built with ``dataclasses.replace`` of the
    global requirements, so that what the route does not mention is inherited.
    """
    if route is None:
        return decide(facts, policy)
    if route.public:
        return decide(replace(facts, requirements=route), policy)
    first = decide(facts, policy)
    if not first.allowed or first.would_deny:
        return first
    return decide(replace(facts, requirements=route), policy)
