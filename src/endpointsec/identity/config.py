"""``[identity]``: where client certificates come from and how they are verified."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from endpointsec._config import Table
from endpointsec.errors import ConfigurationError

__all__ = ["SERVER_SOURCES", "IdentityConfig"]

#: Certificate sources a server provides directly, enabled by name.
SERVER_SOURCES = ("asgi-tls", "wsgi-environ", "gunicorn")


@dataclass(frozen=True, kw_only=True)
class IdentityConfig:
    """How client certificates are read and verified.

    ``sources`` names what is in front of the app: ``"asgi-tls"`` (the ASGI TLS
    extension: uvicorn with endpointsec's protocol classes, hypercorn, granian ASGI),
    ``"wsgi-environ"`` (``SSL_CLIENT_CERT`` from werkzeug's server or mod_wsgi) and
    ``"gunicorn"`` (the certificate of gunicorn's TLS socket). Nothing is read unless
    named: a bare ``SSL_CLIENT_CERT`` is not evidence of anything.
    """

    sources: tuple[str, ...] = ()
    #: CA bundles (PEM files) that anchor every client certificate without a SPIFFE ID
    #: (and those whose trust domain has no bundle of its own).
    trust_bundles: tuple[Path, ...] = ()
    #: One bundle per SPIFFE trust domain (federation): a SPIFFE ID in trust domain X
    #: verifies only against X's bundle.
    trust_domains: Mapping[str, Path] = field(default_factory=dict)
    #: Trust domains accepted (empty: those in ``trust_domains``, or any if none).
    allowed_trust_domains: tuple[str, ...] = ()
    #: Refuse certificates without a valid SPIFFE ID.
    require_spiffe: bool = False
    #: Seconds between checks of the bundle files for changes.
    reload_interval: float = 2.0
    #: Verified chains kept in memory.
    cache_size: int = 4096
    max_chain_depth: int = 8

    def __post_init__(self) -> None:
        for s in self.sources:
            if s not in SERVER_SOURCES:
                raise ConfigurationError(
                    f"unknown source {s!r}; expected one of {', '.join(SERVER_SOURCES)}",
                    key="identity.sources",
                )

    @classmethod
    def from_table(cls, t: Table) -> IdentityConfig:
        trust_domains: dict[str, Path] = {}
        for name, sub in t.named_tables("trust_domains"):
            bundle = sub.path("bundle")
            sub.finish()
            trust_domains[name] = bundle
        return t.build(
            cls,
            sources=t.str_list("sources", (), choices=SERVER_SOURCES, what="source"),
            trust_bundles=t.path_list("trust_bundles", ()),
            trust_domains=trust_domains,
            allowed_trust_domains=t.str_list("allowed_trust_domains", ()),
            require_spiffe=t.boolean("require_spiffe", False),
            reload_interval=t.number("reload_interval", 2.0, minimum=0.0),
            cache_size=t.integer("cache_size", 4096, minimum=0),
            max_chain_depth=t.integer("max_chain_depth", 8, minimum=1),
        )
