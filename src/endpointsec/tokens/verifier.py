"""The JWT verifier: pick the issuer by ``iss``, find the key, check signature and claims.

One sans-I/O core (:meth:`JWTVerifier._prepare` and :meth:`JWTVerifier._finish`) shared
by the sync :meth:`~JWTVerifier.verify` (WSGI threads) and the async
:meth:`~JWTVerifier.averify` (ASGI); only the key lookup differs (it may fetch).

Checks, in order (each failure is a :class:`TokenError`, 401):

1. cache hit: a dict lookup and an expiry check, nothing else;
2. size, shape and header (see :mod:`endpointsec.tokens.jose`);
3. the unverified ``iss`` selects a configured issuer before any key is touched;
4. ``alg`` must be pinned for that issuer and fit the key found by ``kid``;
5. the signature;
6. ``typ`` if the issuer expects one (RFC 8725 §3.11, RFC 9068 ``at+jwt``);
7. the claims: ``exp`` required; ``exp``/``nbf``/``iat`` must be JSON numbers (not
   strings, booleans, NaN, infinities) within year 1970..9999; not expired, not before
   ``nbf``, ``iat`` not in the future (all with ``leeway``); lifetime at most
   ``max_lifetime``; ``aud`` (string or list of strings) must name a configured
   audience; ``sub`` a non-empty string; ``required_claims`` present; ``cnf.x5t#S256``
   (RFC 8705) a base64url SHA-256 thumbprint if present.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from endpointsec.errors import TokenError
from endpointsec.facts import RequestPrincipal
from endpointsec.tokens.cache import VerifiedTokenCache
from endpointsec.tokens.config import IssuerConfig, TokensConfig
from endpointsec.tokens.jose import ParsedJWS, parse_claims, parse_jws, verify_signature
from endpointsec.tokens.jwks import BackgroundLoop, KeySource, RemoteKeySource, build_key_source
from endpointsec.tokens.keys import VerificationKey

__all__ = ["JWTVerifier", "check_time_claim"]

#: 9999-12-31T23:59:59Z: any later time claim is absurd.
MAX_TIME = 253402300799.0


def check_time_claim(claims: Mapping[str, Any], name: str) -> float | None:
    """A NumericDate claim as a float; ``None`` if absent; :class:`TokenError` if bad."""
    if name not in claims:
        return None
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenError(f"token claim '{name}' must be a number (NumericDate)")
    if isinstance(value, float) and not math.isfinite(value):
        raise TokenError(f"token claim '{name}' is not finite")
    if isinstance(value, int) and abs(value) > MAX_TIME:  # avoid float overflow on huge ints
        raise TokenError(f"token claim '{name}' is out of range")
    result = float(value)
    if not 0 <= result <= MAX_TIME:
        raise TokenError(f"token claim '{name}' is out of range")
    return result


def _dotted(claims: Mapping[str, Any], path: str) -> Any:
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _str_set(value: Any, name: str, *, split: bool) -> frozenset[str]:
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset(value.split()) if split else frozenset((value,))
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return frozenset(value)
    raise TokenError(f"token claim '{name}' must be a string or a list of strings")


def _thumbprint_ok(value: str) -> bool:
    # base64url of 32 bytes: 43 characters, the last one from a 16-letter alphabet.
    if len(value) != 43 or value[-1] not in "AEIMQUYcgkosw048":
        return False
    return all(c.isascii() and (c.isalnum() or c in "-_") for c in value)


@dataclass(frozen=True, slots=True)
class _Issuer:
    config: IssuerConfig
    keys: KeySource
    algorithms: frozenset[str]
    audiences: frozenset[str]


class JWTVerifier:
    """Verifies bearer JWTs for the configured issuers (a :class:`TokenVerifier`).

    Build it with :func:`endpointsec.tokens.build_token_verifier`, or directly::

        JWTVerifier(config=TokensConfig(issuers=(IssuerConfig(...),)))

    Call :meth:`close` (or use it as a context manager) to stop the key-fetch thread.
    ``clock`` (wall time, for claims) and ``monotonic`` (key-set ages) are injectable
    for tests.
    """

    def __init__(self, *, config: TokensConfig,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._monotonic = monotonic
        self._cache = VerifiedTokenCache(max_size=config.cache_size, clock=clock)
        self._loop = BackgroundLoop()
        self._max_bytes = config.max_token_bytes
        self._issuers: dict[str, _Issuer] = {}
        #: Per issuer: how many times its key set changed (see :meth:`_keys_changed`).
        self._generations: dict[str, int] = {}
        for ic in config.issuers:
            source = build_key_source(ic, loop=self._loop, on_change=self._keys_changed,
                                      clock=monotonic)
            self._issuers[ic.issuer] = _Issuer(
                config=ic, keys=source, algorithms=frozenset(ic.algorithms),
                audiences=frozenset(ic.audiences))

    # -- public API ---------------------------------------------------------------------

    def verify(self, token: str) -> RequestPrincipal:
        """Verify ``token`` (may wait for a key fetch: for threads, e.g. WSGI)."""
        hit = self._cache.get(token)
        if hit is not None:
            return hit
        parsed, claims, issuer = self._prepare(token)
        generation = self._generations.get(issuer.config.issuer, 0)
        key = issuer.keys.resolve(parsed.kid, parsed.alg)
        return self._finish(token, parsed, claims, issuer, key, generation)

    async def averify(self, token: str) -> RequestPrincipal:
        """Verify ``token`` without blocking the event loop."""
        hit = self._cache.get(token)
        if hit is not None:
            return hit
        parsed, claims, issuer = self._prepare(token)
        generation = self._generations.get(issuer.config.issuer, 0)
        key = await issuer.keys.aresolve(parsed.kid, parsed.alg)
        return self._finish(token, parsed, claims, issuer, key, generation)

    def prefetch(self) -> None:
        """Start fetching every remote key set in the background (does not wait, never
        raises): call it at start-up so the first request does not wait for keys."""
        for issuer in self._issuers.values():
            if isinstance(issuer.keys, RemoteKeySource):
                issuer.keys.prefetch()

    def key_source(self, issuer: str) -> KeySource:
        """The key source of a configured issuer (for tests and diagnostics)."""
        return self._issuers[issuer].keys

    def close(self) -> None:
        """Stop the background key-fetch thread and forget cached tokens."""
        self._loop.close()
        self._cache.clear()

    def __enter__(self) -> JWTVerifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the shared, sans-I/O steps -----------------------------------------------------

    def _prepare(self, token: str) -> tuple[ParsedJWS, dict[str, Any], _Issuer]:
        parsed = parse_jws(token, max_bytes=self._max_bytes)
        claims = parse_claims(parsed)
        iss = claims.get("iss")
        if not isinstance(iss, str):
            raise TokenError("token has no 'iss' claim")
        issuer = self._issuers.get(iss)
        if issuer is None:
            raise TokenError(f"token issuer {iss[:100]!r} is not trusted")
        if parsed.alg not in issuer.algorithms:
            raise TokenError(f"token algorithm {parsed.alg[:20]!r} is not allowed for "
                             "this issuer")
        return parsed, claims, issuer

    def _finish(self, token: str, parsed: ParsedJWS, claims: dict[str, Any],
                issuer: _Issuer, key: VerificationKey,
                generation: int | None = None) -> RequestPrincipal:
        verify_signature(parsed, key, algorithms=issuer.algorithms)
        cfg = issuer.config
        if cfg.typ is not None:
            typ = parsed.header.get("typ")
            if not isinstance(typ, str) or typ.lower().removeprefix("application/") != \
                    cfg.typ.lower().removeprefix("application/"):
                raise TokenError(f"token 'typ' must be {cfg.typ!r}")
        exp = self._check_times(claims, cfg)
        audience = self._check_audience(claims, issuer)
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise TokenError("token 'sub' must be a non-empty string")
        for name in cfg.required_claims:
            if name not in claims:
                raise TokenError(f"token is missing the required claim {name[:40]!r}")
        cnf_x5t = self._check_cnf(claims)
        principal = RequestPrincipal(
            issuer=cfg.issuer,
            subject=sub,
            audience=audience,
            roles=_str_set(_dotted(claims, cfg.roles_claim), cfg.roles_claim, split=False)
            if cfg.roles_claim else frozenset(),
            scopes=_str_set(_dotted(claims, cfg.scope_claim), cfg.scope_claim, split=True)
            if cfg.scope_claim else frozenset(),
            groups=_str_set(_dotted(claims, cfg.groups_claim), cfg.groups_claim, split=False)
            if cfg.groups_claim else frozenset(),
            expires_at=exp,
            cnf_x5t_s256=cnf_x5t,
            claims=MappingProxyType(claims),
        )
        self._cache.put(token, principal, expires_at=self._remember_until(exp, issuer))
        if generation is not None and self._generations.get(cfg.issuer, 0) != generation:
            # The issuer's keys changed since the key was looked up (the change may have
            # removed it): forget its tokens again, this one included. A change after
            # this check drops this token itself (it is cached by then).
            self._cache.drop_issuer(cfg.issuer)
        return principal

    def _keys_changed(self, issuer: str) -> None:
        """An issuer's key set changed: count it, then forget the issuer's tokens (in that
        order, for the check in :meth:`_finish`)."""
        self._generations[issuer] = self._generations.get(issuer, 0) + 1
        self._cache.drop_issuer(issuer)

    def _remember_until(self, exp: float, issuer: _Issuer) -> float:
        """A verified token is remembered until its ``exp``, and never past the moment
        its issuer's fetched keys stop being usable (then the next request re-verifies,
        and gets a 503 if no fresh keys can be had)."""
        usable_until = getattr(issuer.keys, "usable_until", None)
        until = usable_until() if callable(usable_until) else None
        if not isinstance(until, float | int):
            return exp
        return min(exp, self._clock() + (float(until) - self._monotonic()))

    def _check_times(self, claims: Mapping[str, Any], cfg: IssuerConfig) -> float:
        exp = check_time_claim(claims, "exp")
        nbf = check_time_claim(claims, "nbf")
        iat = check_time_claim(claims, "iat")
        if exp is None:
            raise TokenError("token is missing the 'exp' claim")
        now = self._clock()
        leeway = cfg.leeway
        if exp <= now - leeway:
            raise TokenError("token has expired")
        if nbf is not None and nbf > now + leeway:
            raise TokenError("token is not valid yet (nbf)")
        if iat is not None and iat > now + leeway:
            raise TokenError("token was issued in the future (iat)")
        if nbf is not None and nbf > exp:
            raise TokenError("token 'nbf' is after its 'exp'")
        start = iat if iat is not None else now
        if exp - start > cfg.max_lifetime:
            raise TokenError(f"token lifetime exceeds {cfg.max_lifetime:g}s")
        return exp

    @staticmethod
    def _check_audience(claims: Mapping[str, Any], issuer: _Issuer) -> tuple[str, ...]:
        aud = claims.get("aud")
        if isinstance(aud, str):
            audience: tuple[str, ...] = (aud,)
        elif isinstance(aud, list) and aud and all(isinstance(a, str) for a in aud):
            audience = tuple(aud)
        elif aud is None:
            raise TokenError("token has no 'aud' claim")
        else:
            raise TokenError("token 'aud' must be a string or a list of strings")
        if issuer.audiences.isdisjoint(audience):
            raise TokenError("token audience is not accepted here")
        return audience

    @staticmethod
    def _check_cnf(claims: Mapping[str, Any]) -> str | None:
        if "cnf" not in claims:
            return None
        cnf = claims["cnf"]
        if not isinstance(cnf, Mapping):
            raise TokenError("token 'cnf' must be an object")
        if "x5t#S256" not in cnf:
            # Bound to something we cannot check (e.g. a DPoP 'jkt'): fail closed.
            raise TokenError("token is bound by 'cnf' to a key this service cannot check")
        value = cnf["x5t#S256"]
        if not isinstance(value, str) or not _thumbprint_ok(value):
            raise TokenError("token 'cnf.x5t#S256' is not a base64url SHA-256 thumbprint")
        return value
