"""``[tokens]``: bearer-token issuers, where tokens are read, and the verified-token cache.

Everything is checked here, at start-up, so that a bad configuration fails before the
first request: unknown keys, algorithms that do not exist or mix HMAC with public-key
algorithms (RFC 8725 §3.1/§3.2), an issuer without audiences, a key source that is not
exactly one of ``jwks_url`` / ``discovery_url`` / ``public_key`` / ``jwks_file``, and
plain-http key URLs that are not explicitly allowed (and then only to a loopback host).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from endpointsec._config import Table
from endpointsec.errors import ConfigurationError
from endpointsec.facts import (
    CERTIFICATE_SUBJECT_PREFIXES,
    TOKEN_SUBJECT_PREFIXES,
    USER_SUBJECT_SEPARATOR,
)

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "HMAC_ALGORITHMS",
    "SUPPORTED_ALGORITHMS",
    "IssuerConfig",
    "TokensConfig",
]

#: Public-key JWS algorithms (RFC 7518 §3, RFC 8037, RFC 8812).
ASYMMETRIC_ALGORITHMS: frozenset[str] = frozenset({
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
    "ES256", "ES384", "ES512", "ES256K", "EdDSA",
})
#: Shared-secret JWS algorithms: only with a local ``jwks_file``, never mixed with the above.
HMAC_ALGORITHMS: frozenset[str] = frozenset({"HS256", "HS384", "HS512"})
SUPPORTED_ALGORITHMS: frozenset[str] = ASYMMETRIC_ALGORITHMS | HMAC_ALGORITHMS

_SOURCES = ("jwks_url", "discovery_url", "public_key", "jwks_file")


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_url(url: str, *, allow_http: bool, key: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigurationError(f"must be an absolute http(s) URL, not {url!r}", key=key)
    if parts.username or parts.password:
        raise ConfigurationError("must not carry credentials in the URL", key=key)
    if parts.scheme == "http":
        if not allow_http:
            raise ConfigurationError(
                "plain http is refused for key material (set allow_http = true for a "
                "loopback test server)", key=key)
        if not _is_loopback(parts.hostname):
            raise ConfigurationError(
                "allow_http only permits loopback hosts (127.0.0.0/8, ::1, localhost)", key=key)


@dataclass(frozen=True, kw_only=True)
class IssuerConfig:
    """One trusted token issuer (``[[tokens.issuers]]``).

    Exactly one key source: ``jwks_url``, ``discovery_url`` (OIDC discovery document
    whose ``issuer`` must equal :attr:`issuer`), ``public_key`` (PEM file) or
    ``jwks_file`` (a local JWK set, the only place HMAC secrets are accepted).
    """

    issuer: str
    audiences: tuple[str, ...]
    algorithms: tuple[str, ...]
    jwks_url: str | None = None
    discovery_url: str | None = None
    public_key: Path | None = None
    jwks_file: Path | None = None
    #: Seconds of clock skew tolerated on ``exp``, ``nbf`` and ``iat``.
    leeway: float = 30.0
    #: Longest accepted lifetime (``exp - iat``, or ``exp - now`` without ``iat``).
    max_lifetime: float = 86400.0
    #: Expected ``typ`` header (e.g. ``"at+jwt"``, RFC 9068); ``None`` accepts any.
    typ: str | None = None
    #: Claims that must be present (``exp``, ``iss``, ``sub`` always are).
    required_claims: tuple[str, ...] = ()
    #: Claim (dotted path allowed, e.g. ``realm_access.roles``) holding roles.
    roles_claim: str | None = "roles"
    #: Claim holding scopes: a space-separated string (``scope``) or a list (``scp``).
    scope_claim: str | None = "scope"
    groups_claim: str | None = "groups"
    #: Remote key sets: seconds a fetched set is fresh; after that it is refreshed in
    #: the background while still used.
    jwks_ttl: float = 300.0
    #: Minimum seconds between two fetches triggered by an unknown ``kid``.
    jwks_cooldown: float = 30.0
    #: How long past its TTL the last good set keeps being used while fetches fail.
    jwks_max_stale: float = 3600.0
    #: Seconds for one whole fetch (connect, redirects, body).
    jwks_timeout: float = 5.0
    #: Largest accepted key-set / discovery response body.
    jwks_max_bytes: int = 262144
    #: Largest accepted number of keys in a set.
    jwks_max_keys: int = 32
    #: PEM CA bundle that verifies the key endpoint's TLS certificate (default: the
    #: public web PKI, via certifi).
    jwks_ca_file: Path | None = None
    #: Permit ``http://`` key URLs, to a loopback host only (tests).
    allow_http: bool = False
    #: Smallest accepted RSA modulus.
    min_rsa_bits: int = 2048

    def __post_init__(self) -> None:
        key = f"tokens.issuers[{self.issuer!r}]"
        if not self.issuer:
            raise ConfigurationError("must not be empty", key="tokens.issuers.issuer")
        if USER_SUBJECT_SEPARATOR in self.issuer:
            # The user subject is "<iss>#<sub>": an issuer with "#" could collide with
            # another issuer's users (and OpenID issuers have no fragment anyway).
            raise ConfigurationError(f"must not contain {USER_SUBJECT_SEPARATOR!r}",
                                     key="tokens.issuers.issuer")
        if self.issuer.startswith(CERTIFICATE_SUBJECT_PREFIXES + TOKEN_SUBJECT_PREFIXES):
            raise ConfigurationError(
                "must not start with a subject prefix (spiffe://, uri:, dns:, sha256:, "
                "role:, scope:, group:): its users' subjects would look like those of "
                "certificates or roles", key="tokens.issuers.issuer")
        if not self.audiences or not all(isinstance(a, str) and a for a in self.audiences):
            raise ConfigurationError("at least one non-empty audience is required "
                                     "(RFC 8725 §3.9)", key=f"{key}.audiences")
        if not self.algorithms:
            raise ConfigurationError("at least one algorithm is required",
                                     key=f"{key}.algorithms")
        for alg in self.algorithms:
            if alg not in SUPPORTED_ALGORITHMS:
                raise ConfigurationError(
                    f"unsupported algorithm {alg!r} (supported: "
                    f"{', '.join(sorted(SUPPORTED_ALGORITHMS))})", key=f"{key}.algorithms")
        algs = set(self.algorithms)
        if algs & HMAC_ALGORITHMS and algs & ASYMMETRIC_ALGORITHMS:
            raise ConfigurationError("HMAC and public-key algorithms must not be mixed "
                                     "(RFC 8725 §2.1 key confusion)", key=f"{key}.algorithms")
        sources = [s for s in _SOURCES if getattr(self, s) is not None]
        if len(sources) != 1:
            raise ConfigurationError(
                f"exactly one of {', '.join(_SOURCES)} is required (got {len(sources)})",
                key=key)
        if algs & HMAC_ALGORITHMS and self.jwks_file is None:
            raise ConfigurationError("HMAC algorithms need a local jwks_file (a shared "
                                     "secret is never fetched)", key=f"{key}.algorithms")
        for url_key in ("jwks_url", "discovery_url"):
            url = getattr(self, url_key)
            if url is not None:
                _check_url(url, allow_http=self.allow_http, key=f"{key}.{url_key}")
        if self.jwks_ca_file is not None and self.jwks_url is None \
                and self.discovery_url is None:
            raise ConfigurationError("only applies to jwks_url / discovery_url",
                                     key=f"{key}.jwks_ca_file")
        for name in ("leeway", "jwks_cooldown"):
            if not 0 <= getattr(self, name) < 1e9:
                raise ConfigurationError("must be >= 0", key=f"{key}.{name}")
        for name in ("max_lifetime", "jwks_ttl", "jwks_timeout"):
            if not 0 < getattr(self, name) < 1e9:
                raise ConfigurationError("must be > 0", key=f"{key}.{name}")
        if not 0 <= self.jwks_max_stale < 1e9:
            raise ConfigurationError("must be >= 0", key=f"{key}.jwks_max_stale")
        if self.jwks_max_bytes < 256 or self.jwks_max_keys < 1:
            raise ConfigurationError("jwks_max_bytes must be >= 256 and jwks_max_keys >= 1",
                                     key=key)
        if self.min_rsa_bits < 2048:
            raise ConfigurationError("must be at least 2048", key=f"{key}.min_rsa_bits")

    @classmethod
    def from_table(cls, t: Table) -> IssuerConfig:
        """Read one ``[[tokens.issuers]]`` table."""
        d = IssuerConfig.__dataclass_fields__

        def opt_claim(name: str) -> str | None:
            value = t.string(name, d[name].default)
            return value or None

        public_key = t.path("public_key", None)
        jwks_file = t.path("jwks_file", None)
        return t.build(
            cls,
            issuer=t.string("issuer"),
            audiences=t.str_list("audiences"),
            algorithms=t.str_list("algorithms", choices=sorted(SUPPORTED_ALGORITHMS),
                                  what="algorithm"),
            jwks_url=t.string("jwks_url", None),
            discovery_url=t.string("discovery_url", None),
            public_key=public_key,
            jwks_file=jwks_file,
            leeway=t.number("leeway", 30.0, minimum=0),
            max_lifetime=t.number("max_lifetime", 86400.0, minimum=1),
            typ=t.string("typ", None),
            required_claims=t.str_list("required_claims", ()),
            roles_claim=opt_claim("roles_claim"),
            scope_claim=opt_claim("scope_claim"),
            groups_claim=opt_claim("groups_claim"),
            jwks_ttl=t.number("jwks_ttl", 300.0, minimum=1),
            jwks_cooldown=t.number("jwks_cooldown", 30.0, minimum=0),
            jwks_max_stale=t.number("jwks_max_stale", 3600.0, minimum=0),
            jwks_timeout=t.number("jwks_timeout", 5.0, minimum=0.1),
            jwks_max_bytes=t.integer("jwks_max_bytes", 262144, minimum=256),
            jwks_max_keys=t.integer("jwks_max_keys", 32, minimum=1),
            jwks_ca_file=t.path("jwks_ca_file", None),
            allow_http=t.boolean("allow_http", False),
            min_rsa_bits=t.integer("min_rsa_bits", 2048, minimum=2048),
        )


@dataclass(frozen=True, kw_only=True)
class TokensConfig:
    """Bearer-token configuration; no issuer configured means tokens are not read."""

    issuers: tuple[IssuerConfig, ...] = ()
    #: Tokens longer than this are rejected before any parsing.
    max_token_bytes: int = 8192
    #: Also read the token from this cookie (off by default).
    cookie: str | None = None
    #: Also read the token from this query parameter (off by default; RFC 6750 §2.3
    #: discourages it: URLs end up in logs).
    query_param: str | None = None
    #: Verified tokens kept (0 disables the cache).
    cache_size: int = 10000
    issuer_names: tuple[str, ...] = field(default=(), init=False, repr=False)

    def __post_init__(self) -> None:
        names = tuple(i.issuer for i in self.issuers)
        if len(set(names)) != len(names):
            raise ConfigurationError("the same issuer is configured twice",
                                     key="tokens.issuers")
        object.__setattr__(self, "issuer_names", names)
        if not 512 <= self.max_token_bytes <= 1 << 20:
            raise ConfigurationError("must be between 512 and 1048576",
                                     key="tokens.max_token_bytes")
        if self.cache_size < 0:
            raise ConfigurationError("must be >= 0", key="tokens.cache_size")
        for name in ("cookie", "query_param"):
            value = getattr(self, name)
            if value is not None and (not value or not value.isascii()
                                      or any(c in value for c in ' ;,="&')):
                raise ConfigurationError("must be a plain ASCII name", key=f"tokens.{name}")

    @classmethod
    def from_table(cls, t: Table) -> TokensConfig:
        """Read ``[tokens]`` (and its ``[[tokens.issuers]]``)."""
        issuers = tuple(
            i for i in (it.read(IssuerConfig.from_table, None) for it in t.tables("issuers"))
            if i is not None
        )
        return t.build(
            cls,
            issuers=issuers,
            max_token_bytes=t.integer("max_token_bytes", 8192, minimum=512, maximum=1 << 20),
            cookie=t.string("cookie", None),
            query_param=t.string("query_param", None),
            cache_size=t.integer("cache_size", 10000, minimum=0),
        )
