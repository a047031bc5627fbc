"""The pluggable parts of endpointsec, as :class:`typing.Protocol` classes.

The gatekeeper is assembled from these; the shipped implementations live in
``identity/``, ``tokens/`` and ``policy/``, and any object of the right shape can
replace them.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any, Protocol, runtime_checkable

from endpointsec.facts import PeerIdentity, PolicyResult, PresentedCertificate, RequestPrincipal

__all__ = [
    "CertificateSource",
    "ChainVerifier",
    "Policy",
    "TokenVerifier",
]

Scope = MutableMapping[str, Any]
Environ = MutableMapping[str, Any]


@runtime_checkable
class CertificateSource(Protocol):
    """Where a client certificate comes from: the server itself, or a trusted proxy.

    Each method returns ``None`` when no certificate was presented through this source,
    a :class:`PresentedCertificate` when one was, and raises
    :class:`endpointsec.errors.CertificateError` when what was presented is malformed
    or cannot be trusted (a proxy header from a peer that is not a trusted proxy is
    *not* an error: it is ignored, and removed by :meth:`scrub_asgi` / :meth:`scrub_wsgi`).
    """

    name: str

    def from_asgi(self, scope: Scope) -> PresentedCertificate | None: ...

    def from_wsgi(self, environ: Environ) -> PresentedCertificate | None: ...

    def scrub_asgi(self, scope: Scope) -> None:
        """Remove, in place, headers this source must not let the app see."""

    def scrub_wsgi(self, environ: Environ) -> None:
        """Remove, in place, environ keys this source must not let the app see."""


@runtime_checkable
class ChainVerifier(Protocol):
    """Turns a presented chain into a verified :class:`PeerIdentity`.

    Raises :class:`endpointsec.errors.CertificateError` when the chain does not verify
    (at the current time, for client authentication, against the trust bundles).
    """

    def verify(self, presented: PresentedCertificate) -> PeerIdentity: ...

    def identify(self, presented: PresentedCertificate) -> PeerIdentity:
        """Build the identity *without* chain verification (for a proxy whose own
        verification is explicitly trusted); identity checks still apply."""
        ...


@runtime_checkable
class TokenVerifier(Protocol):
    """Verifies bearer tokens.

    Raises :class:`endpointsec.errors.TokenError` (401) for a bad token and
    :class:`endpointsec.errors.KeySetUnavailable` (503) when no usable key exists.
    ``verify`` is for threads (WSGI); ``averify`` never blocks the event loop.
    """

    def verify(self, token: str) -> RequestPrincipal: ...

    async def averify(self, token: str) -> RequestPrincipal: ...


@runtime_checkable
class Policy(Protocol):
    """The authorization policy: pure and synchronous, safe to call from any thread."""

    def normalize(self, raw_path: str) -> str:
        """Normalize a wire path for matching; raise :class:`endpointsec.errors.PathError`."""
        ...

    def evaluate(
        self,
        *,
        subjects: Sequence[str],
        resource: str,
        action: str,
        domain: str | None = None,
    ) -> PolicyResult: ...

    def roles_for(self, *, subjects: Sequence[str], domain: str | None = None) -> frozenset[str]:
        """Every role the subjects hold, directly or through role inheritance."""
        ...

    @property
    def dry_run(self) -> bool: ...


#: Header mapping helpers share this shape: lowercase names to values, in order.
Headers = Sequence[tuple[bytes, bytes]]
HeaderMap = Mapping[str, Sequence[str]]
