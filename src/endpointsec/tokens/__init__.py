"""Bearer tokens: JWT verification against pinned issuers, JWKS key sets, token reading.

* :func:`build_token_verifier` -> :class:`JWTVerifier` (``verify`` for threads,
  ``averify`` for the event loop), or ``None`` when no issuer is configured;
* :func:`build_token_reader` -> :class:`BearerReader`, or ``None`` likewise;
* :class:`TokensConfig` / :class:`IssuerConfig`: the ``[tokens]`` table.

See ``docs/tokens.md`` for the checks and the key-rotation behaviour.
"""

from __future__ import annotations

from endpointsec.tokens.config import IssuerConfig, TokensConfig
from endpointsec.tokens.extract import BearerReader
from endpointsec.tokens.keys import KeySet, KeySetError, key_set_from_jwks, key_set_from_pem
from endpointsec.tokens.verifier import JWTVerifier

__all__ = [
    "BearerReader",
    "IssuerConfig",
    "JWTVerifier",
    "KeySet",
    "KeySetError",
    "TokensConfig",
    "build_token_reader",
    "build_token_verifier",
    "key_set_from_jwks",
    "key_set_from_pem",
]


def build_token_verifier(config: TokensConfig) -> JWTVerifier | None:
    """The verifier for the configured issuers; ``None`` when there is none."""
    if not config.issuers:
        return None
    return JWTVerifier(config=config)


def build_token_reader(config: TokensConfig) -> BearerReader | None:
    """The bearer-token reader; ``None`` when no issuer is configured (tokens are not read)."""
    if not config.issuers:
        return None
    return BearerReader(max_token_bytes=config.max_token_bytes, cookie=config.cookie,
                        query_param=config.query_param)
