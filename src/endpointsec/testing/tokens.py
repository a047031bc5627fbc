"""A token issuer for tests: signs JWTs and serves its JWKS on a real local endpoint.

::

    issuer = TokenIssuer()                       # ES256 key, generated in memory
    with issuer.serve():                         # http://127.0.0.1:<free port>
        token = issuer.issue(sub="alice", roles=["admin"])
        ...                                      # the app fetches issuer.jwks_url

Nothing here is meant for production: keys live in memory and the server is plain
HTTP on the loopback interface.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from endpointsec.errors import ConfigurationError
from endpointsec.testing.pki import CertificateLike
from endpointsec.testing.principals import cnf_thumbprint

__all__ = ["TokenIssuer"]

_ALGORITHMS = ("RS256", "ES256")
_DEFAULT_ISSUER = "https://issuer.endpointsec.test"

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def _generate(algorithm: str) -> SigningKey:
    if algorithm == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def _seconds(value: int | float | dt.datetime | dt.timedelta, *, now: float) -> int:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ConfigurationError("token times must be timezone-aware datetimes")
        return int(value.timestamp())
    if isinstance(value, dt.timedelta):
        return int(now + value.total_seconds())
    return int(value)


class TokenIssuer:
    """Signs JWTs with an in-memory RS256 or ES256 key and serves the public keys.

    ``issuer`` is the ``iss`` claim; left ``None``, it is the base URL of the running
    server while :meth:`serve` is active (so OIDC discovery is self-consistent) and
    ``https://issuer.endpointsec.test`` otherwise.
    """

    def __init__(
        self,
        *,
        algorithm: str = "ES256",
        issuer: str | None = None,
        audience: str = "endpointsec",
        lifetime: float = 300.0,
        typ: str | None = "JWT",
    ) -> None:
        if algorithm not in _ALGORITHMS:
            raise ConfigurationError(
                f"algorithm must be one of {', '.join(_ALGORITHMS)}, not {algorithm!r}")
        self.algorithm = algorithm
        self.audience = audience
        self.lifetime = lifetime
        self.typ = typ
        self._issuer = issuer
        self._keys: list[tuple[str, SigningKey]] = [(uuid.uuid4().hex[:16], _generate(algorithm))]
        self._server: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()
        #: Paths requested from the server, in order (to test key-set caching).
        self.requests: list[str] = []

    # -- keys ------------------------------------------------------------------------

    @property
    def kid(self) -> str:
        """The key ID of the current signing key."""
        return self._keys[0][0]

    @property
    def public_key_pem(self) -> bytes:
        """The current public key as PEM (for a static-key issuer configuration)."""
        return self._keys[0][1].public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def rotate(self, *, keep_old: bool = True) -> str:
        """Switch to a new signing key; the old one stays in the JWKS if ``keep_old``."""
        with self._lock:
            new = (uuid.uuid4().hex[:16], _generate(self.algorithm))
            self._keys = [new, *self._keys] if keep_old else [new]
        return new[0]

    def jwks(self) -> dict[str, Any]:
        """The JSON Web Key Set of every key this issuer publishes."""
        keys = []
        with self._lock:
            current = list(self._keys)
        for kid, key in current:
            jwk: dict[str, Any] = json.loads(
                jwt.algorithms.get_default_algorithms()[self.algorithm].to_jwk(key.public_key())
            )
            jwk.update({"kid": kid, "use": "sig", "alg": self.algorithm})
            keys.append(jwk)
        return {"keys": keys}

    # -- tokens ----------------------------------------------------------------------

    @property
    def issuer(self) -> str:
        """The ``iss`` claim of the tokens issued now."""
        if self._issuer is not None:
            return self._issuer
        return self.base_url if self._server is not None else _DEFAULT_ISSUER

    def issue(
        self,
        sub: str,
        *,
        roles: Sequence[str] | None = None,
        scopes: Sequence[str] | None = None,
        aud: str | Sequence[str] | None = None,
        exp: int | float | dt.datetime | dt.timedelta | None = None,
        cnf_cert: CertificateLike | None = None,
        kid: str | None = None,
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """A signed JWT for ``sub`` (positional or keyword: ``issue("alice")``).

        ``exp`` defaults to now + ``lifetime``; a ``timedelta`` is relative to now (a
        negative one makes an expired token). ``aud`` defaults to :attr:`audience`.
        ``cnf_cert`` binds the token to a client certificate (RFC 8705 ``cnf.x5t#S256``):
        an issued certificate, or a PEM file path / PEM text.
        ``scopes`` become the space-separated ``scope`` claim. Extra ``claims`` are
        added as given (they override the defaults, ``iss`` and ``iat`` included).
        """
        now = time.time()
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "sub": sub,
            "aud": self.audience if aud is None else (aud if isinstance(aud, str) else list(aud)),
            "iat": int(now),
            "exp": _seconds(exp, now=now) if exp is not None else int(now + self.lifetime),
            "jti": uuid.uuid4().hex,
        }
        if roles is not None:
            payload["roles"] = list(roles)
        if scopes is not None:
            payload["scope"] = " ".join(scopes)
        if cnf_cert is not None:
            payload["cnf"] = {"x5t#S256": cnf_thumbprint(cnf_cert)}
        payload.update(claims)
        with self._lock:
            keys = dict(self._keys)
            signing_kid = kid if kid is not None else self._keys[0][0]
        if signing_kid not in keys:
            raise ConfigurationError(f"no key with kid {signing_kid!r}")
        header: dict[str, Any] = {"kid": signing_kid}
        if self.typ is not None:
            header["typ"] = self.typ
        header.update(headers or {})
        return jwt.encode(payload, keys[signing_kid], algorithm=self.algorithm, headers=header)

    # -- the local JWKS / discovery server ---------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>`` of the running server."""
        if self._server is None:
            raise ConfigurationError("the issuer is not serving; use 'with issuer.serve():'")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def jwks_url(self) -> str:
        return f"{self.base_url}/.well-known/jwks.json"

    @property
    def discovery_url(self) -> str:
        return f"{self.base_url}/.well-known/openid-configuration"

    def issuer_table(self, *, discovery: bool = False) -> dict[str, Any]:
        """A ``[[tokens.issuers]]`` entry trusting this (serving) issuer over local HTTP.

        ::

            config = Config.from_mapping({"tokens": {"issuers": [issuer.issuer_table()]},
                                          ...})
        """
        table: dict[str, Any] = {
            "issuer": self.issuer,
            "audiences": [self.audience],
            "algorithms": [self.algorithm],
            "allow_http": True,
        }
        if discovery:
            table["discovery_url"] = self.discovery_url
        else:
            table["jwks_url"] = self.jwks_url
        return table

    def _document(self, path: str) -> dict[str, Any] | None:
        if path == "/.well-known/jwks.json":
            return self.jwks()
        if path == "/.well-known/openid-configuration":
            return {
                "issuer": self.issuer,
                "jwks_uri": self.jwks_url,
                "id_token_signing_alg_values_supported": [self.algorithm],
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
            }
        return None

    @contextmanager
    def serve(self, *, port: int = 0) -> Iterator[TokenIssuer]:
        """Serve the JWKS and OIDC discovery on 127.0.0.1 in a thread (``port`` 0: a
        free port)."""
        if self._server is not None:
            raise ConfigurationError("the issuer is already serving")
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                issuer.requests.append(path)
                doc = issuer._document(path)
                body = json.dumps(doc if doc is not None else {"error": "not found"}).encode()
                self.send_response(200 if doc is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "max-age=300")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        server.daemon_threads = True
        server.timeout = 5
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                  name="endpointsec-token-issuer", daemon=True)
        self._server = server
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
            self._server = None
