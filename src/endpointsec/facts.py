"""The values that flow from *gather* to *decide*.

Everything here is a frozen dataclass: built once by the gather step (the only place
with I/O), then read by the pure :func:`endpointsec.decide`. Nothing in this module
performs I/O or verification.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryptography import x509

    from endpointsec.errors import EndpointSecError
    from endpointsec.identity.spiffe import SpiffeId

__all__ = [
    "CERTIFICATE_SUBJECT_PREFIXES",
    "MTLS",
    "TOKEN_SUBJECT_PREFIXES",
    "USER_SUBJECT_SEPARATOR",
    "Decision",
    "PeerIdentity",
    "PolicyResult",
    "PresentedCertificate",
    "Principal",
    "RequestFacts",
    "RequestPrincipal",
    "Requirements",
    "TokenUse",
]


class MTLS(enum.StrEnum):
    """Whether a route needs a verified client certificate."""

    REQUIRED = "required"
    OPTIONAL = "optional"
    NONE = "none"


class TokenUse(enum.StrEnum):
    """Whether a route needs a verified bearer token."""

    REQUIRED = "required"
    OPTIONAL = "optional"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class PresentedCertificate:
    """A certificate chain as handed over by a server or a proxy, not yet verified.

    ``leaf`` and ``intermediates`` are DER bytes, leaf first. ``upstream_verified`` is
    what the server or proxy said of its own verification (``None``: it said nothing).
    """

    leaf: bytes
    intermediates: tuple[bytes, ...] = ()
    source: str = "unknown"
    upstream_verified: bool | None = None
    #: Extra facts the source is sure of (for example an XFCC ``Hash``), checked later.
    claimed_sha256: str | None = None
    #: The chain was verified by a trusted proxy *and* the configuration says to rely on
    #: that verification: the gatekeeper then identifies without re-verifying the chain.
    trusted_upstream: bool = False


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """Who is on the other end of the TLS connection, from a verified certificate."""

    subject: str
    fingerprint_sha256: str
    spiffe_id: SpiffeId | None = None
    uri_sans: tuple[str, ...] = ()
    dns_sans: tuple[str, ...] = ()
    #: The earliest ``notAfter`` of the verified chain (the leaf's when only it is known).
    not_after: datetime | None = None
    source: str = "unknown"
    #: The verified chain, leaf first (``cryptography`` certificates).
    chain: tuple[x509.Certificate, ...] = field(default=(), repr=False, compare=False)
    _id: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.spiffe_id is not None:
            ident = str(self.spiffe_id)
        elif self.uri_sans:
            ident = f"uri:{self.uri_sans[0]}"
        elif self.dns_sans:
            ident = f"dns:{self.dns_sans[0]}"
        else:
            ident = f"sha256:{self.fingerprint_sha256}"
        object.__setattr__(self, "_id", ident)

    @property
    def id(self) -> str:
        """The peer principal used in policy, a *certificate subject*: the SPIFFE ID,
        else ``uri:<first URI SAN>``, else ``dns:<first DNS SAN>``, else
        ``sha256:<fingerprint>``. No token can yield a subject of these forms."""
        return self._id


#: Prefixes of the subjects a certificate yields; a token never yields one of them.
CERTIFICATE_SUBJECT_PREFIXES = ("spiffe://", "uri:", "dns:", "sha256:")
#: Prefixes of the subjects a token's roles, scopes and groups yield.
TOKEN_SUBJECT_PREFIXES = ("role:", "scope:", "group:")
#: Separates the issuer from the subject in a token's user subject (``<iss>#<sub>``);
#: configured issuers may not contain it, so the split is unambiguous.
USER_SUBJECT_SEPARATOR = "#"


@dataclass(frozen=True, slots=True)
class RequestPrincipal:
    """Who the request is on behalf of, from a verified bearer token."""

    issuer: str
    subject: str
    audience: tuple[str, ...] = ()
    roles: frozenset[str] = frozenset()
    scopes: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    expires_at: float | None = None
    #: RFC 8705 ``cnf.x5t#S256`` (base64url SHA-256 thumbprint) if the token is bound.
    cnf_x5t_s256: str | None = None
    claims: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    _subjects: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Worked out once per verified token (the token cache keeps this object).
        subjects = [f"{self.issuer}{USER_SUBJECT_SEPARATOR}{self.subject}"]
        subjects.extend(f"role:{r}" for r in sorted(self.roles))
        subjects.extend(f"scope:{s}" for s in sorted(self.scopes))
        subjects.extend(f"group:{g}" for g in sorted(self.groups))
        object.__setattr__(self, "_subjects", tuple(subjects))

    @property
    def id(self) -> str:
        """The user subject used in policy: ``<iss>#<sub>``."""
        return self._subjects[0]

    @property
    def token_subjects(self) -> tuple[str, ...]:
        """The token's policy subjects: ``<iss>#<sub>``, then ``role:``, ``scope:`` and
        ``group:`` names, each sorted."""
        return self._subjects


@dataclass(frozen=True, slots=True)
class Principal:
    """Everything known about the caller: the peer and the request principal."""

    peer: PeerIdentity | None = None
    request: RequestPrincipal | None = None

    @property
    def authenticated(self) -> bool:
        return self.peer is not None or self.request is not None

    def subjects(self) -> tuple[str, ...]:
        """The policy subjects, most specific first.

        The certificate subject (:attr:`PeerIdentity.id`), the user subject
        ``<iss>#<sub>``, then ``role:<r>``, ``scope:<s>`` and ``group:<g>`` for each role,
        scope and group mapped from the token. The two namespaces are disjoint: a
        certificate cannot yield a token subject, nor a token a certificate subject.
        """
        peer, request = self.peer, self.request
        if request is None:
            return () if peer is None else (peer._id,)
        if peer is None:
            return request._subjects
        return (peer._id, *request._subjects)


@dataclass(frozen=True, slots=True)
class Requirements:
    """What a route asks of a request before the policy is consulted.

    Route requirements only narrow: they never allow what the global policy denies,
    unless ``public`` is set, which skips authentication and policy for the route.
    """

    mtls: MTLS = MTLS.REQUIRED
    token: TokenUse = TokenUse.OPTIONAL
    public: bool = False
    #: Token-bound (RFC 8705) access tokens required.
    bound_token: bool = False
    #: Extra subjects/roles the caller must hold (any of), checked after the policy allows.
    roles: frozenset[str] = frozenset()
    #: Policy object/action overrides (default: normalized path and method).
    resource: str | None = None
    action: str | None = None
    #: Decisions for this route are logged as "would deny" but not enforced.
    dry_run: bool = False


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """Everything *gather* learned about one request; the only input of :func:`decide`.

    Failures found while gathering are recorded here (``peer_error``, ``token_error``)
    instead of raised, so that the single :func:`decide` function turns them into a
    :class:`Decision`.
    """

    method: str
    #: The path as sent on the wire (percent-encoded, without the query string).
    raw_path: str
    #: The normalized path used for route selection and policy (``None`` if it failed).
    path: str | None = None
    #: The request itself is malformed (bad path or method): a 400.
    request_error: EndpointSecError | None = None
    principal: Principal = field(default_factory=Principal)
    requirements: Requirements = field(default_factory=Requirements)
    #: A certificate was presented but could not be read or verified.
    peer_error: EndpointSecError | None = None
    #: A token was presented but could not be read or verified (or keys were unavailable).
    token_error: EndpointSecError | None = None
    #: A token was presented (even if it failed).
    token_presented: bool = False
    #: Optional tenant / Casbin domain.
    domain: str | None = None
    #: The request is a websocket handshake.
    websocket: bool = False


@dataclass(frozen=True, slots=True)
class PolicyResult:
    """What the policy engine answered for a set of subjects."""

    allowed: bool
    #: The rule that decided (a Casbin policy line as a tuple), if any.
    matched_rule: tuple[str, ...] | None = None
    #: The subjects that were tried, in order.
    subjects: tuple[str, ...] = ()
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of :func:`endpointsec.decide` for one request."""

    allowed: bool
    #: 200 when allowed; 400, 401, 403 or 503 otherwise.
    status: int
    #: Specific, for logs and ``explain``; never sent on the wire.
    reason: str
    principal: Principal = field(default_factory=Principal)
    #: The policy object and action that were checked (normalized path, method).
    resource: str | None = None
    action: str | None = None
    matched_rule: tuple[str, ...] | None = None
    subjects: tuple[str, ...] = ()
    #: RFC 6750 ``error`` code for the challenge (``invalid_token``, ``insufficient_scope``).
    oauth_error: str | None = None
    #: Which scheme the 401 challenges: ``"Bearer"`` or ``"mTLS"``.
    challenge: str | None = None
    #: The request proceeds only because the route or policy is in dry-run mode.
    would_deny: bool = False

    def explain(self) -> str:
        """A one-paragraph human explanation (used by logs, the CLI and test failures)."""
        verdict = "ALLOW" if self.allowed else "DENY"
        if self.would_deny:
            verdict = "ALLOW (dry-run: would deny)"
        rule = ", ".join(self.matched_rule) if self.matched_rule else "no rule matched"
        subjects = ", ".join(self.subjects) if self.subjects else "(none)"
        return (
            f"{verdict} {self.status} {self.action or '-'} {self.resource or '-'}\n"
            f"  reason:   {self.reason}\n"
            f"  subjects: {subjects}\n"
            f"  rule:     {rule}"
        )
