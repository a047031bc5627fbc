"""Failure responses: RFC 9457 problem+json bodies and RFC 6750 challenges.

A body is the same for every failure of a kind: it never carries the reason (which
may quote a certificate subject or a claim), a token, a header or a stack.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

from endpointsec.facts import Decision

__all__ = ["ErrorResponse", "error_response"]

_TITLES = {
    400: ("Bad Request", "The request could not be processed."),
    401: ("Unauthorized", "Valid credentials are required to access this resource."),
    403: ("Forbidden", "The caller is not allowed to perform this request."),
    503: ("Service Unavailable", "The request cannot be authorized right now."),
}
REALM = "endpointsec"


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


def _body(status: int) -> bytes:
    title, detail = _TITLES.get(status, _TITLES[403])
    return json.dumps(
        {"type": "about:blank", "title": title, "status": status, "detail": detail},
        separators=(",", ":"),
    ).encode()


_BODIES = {status: _body(status) for status in _TITLES}


def _challenges(decision: Decision, *, bearer: bool) -> list[str]:
    out: list[str] = []
    if decision.challenge == "Bearer" or (bearer and decision.status == 401):
        value = f'Bearer realm="{REALM}"'
        if decision.challenge == "Bearer" and decision.oauth_error:
            value += f', error="{decision.oauth_error}"'
        out.append(value)
    if decision.status == 401 and decision.challenge != "Bearer":
        out.insert(0, f'MutualTLS realm="{REALM}"')
    if decision.status == 403 and decision.oauth_error == "insufficient_scope":
        out.append(f'Bearer realm="{REALM}", error="insufficient_scope"')
    return out


def error_response(decision: Decision, *, bearer: bool = False) -> ErrorResponse:
    """The response for a refused :class:`Decision`.

    ``bearer`` says whether the service accepts bearer tokens at all (so a 401 also
    challenges for one).
    """
    return _response(decision.status, decision.challenge, decision.oauth_error, bearer)


@functools.lru_cache(maxsize=128)
def _response(status: int, challenge: str | None, oauth_error: str | None,
              bearer: bool) -> ErrorResponse:
    """One response per kind of refusal, built once (a deny costs no more than an allow).
    Every argument comes from a small fixed set (statuses, schemes, RFC 6750 codes)."""
    decision = Decision(allowed=False, status=status, reason="", challenge=challenge,
                        oauth_error=oauth_error)
    status = decision.status if decision.status in _BODIES else 403
    body = _BODIES[status]
    headers = [
        ("content-type", "application/problem+json"),
        ("content-length", str(len(body))),
        ("cache-control", "no-store"),
    ]
    headers.extend(("www-authenticate", c) for c in _challenges(decision, bearer=bearer))
    if status == 503:
        headers.append(("retry-after", "5"))
    return ErrorResponse(status=status, headers=tuple(headers), body=body)
