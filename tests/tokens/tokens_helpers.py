"""Helpers for the token tests: keys generated per session, token minting, and a
real JWKS HTTP server on 127.0.0.1 whose behaviour each test sets."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm, get_default_algorithms

from endpointsec.tokens import IssuerConfig, JWTVerifier, TokensConfig

ISSUER = "https://issuer.example"
AUDIENCE = "api://orders"


@dataclass
class Signer:
    """A private key with its kid and algorithm."""

    private: Any
    alg: str
    kid: str

    def public_jwk(self) -> dict[str, Any]:
        pub = self.private.public_key()
        impl = {"RS": RSAAlgorithm, "PS": RSAAlgorithm, "ES": ECAlgorithm,
                "Ed": OKPAlgorithm}[self.alg[:2]]
        jwk: dict[str, Any] = json.loads(impl.to_jwk(pub))
        jwk.update(kid=self.kid, use="sig", alg=self.alg)
        return jwk

    def public_pem(self) -> bytes:
        key: bytes = self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        return key

    def sign(self, claims: dict[str, Any] | None = None, *, headers: dict[str, Any] | None
             = None, kid: str | bool | None = True, alg: str | None = None,
             **overrides: Any) -> str:
        body = claims if claims is not None else default_claims(**overrides)
        hdrs: dict[str, Any] = {"alg": alg or self.alg}
        if kid is True:
            hdrs["kid"] = self.kid
        elif isinstance(kid, str):
            hdrs["kid"] = kid
        hdrs.update(headers or {})
        return sign_raw(hdrs, body, self.private)


def sign_raw(header: dict[str, Any], claims: dict[str, Any] | bytes, key: Any) -> str:
    """Sign exactly this header and payload (no typ added, no claim checks)."""
    payload = claims if isinstance(claims, bytes) else json.dumps(claims).encode()
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(payload)}"
    impl = get_default_algorithms()[header["alg"]]
    sig = impl.sign(signing_input.encode(), key)
    return f"{signing_input}.{b64(sig)}"


def default_claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {"iss": ISSUER, "sub": "user-1", "aud": AUDIENCE,
                              "iat": now, "exp": now + 300}
    for k, v in overrides.items():
        if v is None:
            claims.pop(k, None)
        else:
            claims[k] = v
    return claims


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(header: dict[str, Any] | str, claims: dict[str, Any] | str,
              signature: bytes = b"sig") -> str:
    h = header if isinstance(header, str) else json.dumps(header)
    c = claims if isinstance(claims, str) else json.dumps(claims)
    return f"{b64(h.encode())}.{b64(c.encode())}.{b64(signature)}"


def x5t_s256(der: bytes) -> str:
    return b64(hashlib.sha256(der).digest())


@pytest.fixture(scope="session")
def rsa_key() -> Signer:
    return Signer(rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256",
                  "rsa-1")


@pytest.fixture(scope="session")
def rsa_key2() -> Signer:
    return Signer(rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256",
                  "rsa-2")


@pytest.fixture(scope="session")
def ec_key() -> Signer:
    return Signer(ec.generate_private_key(ec.SECP256R1()), "ES256", "ec-1")


@pytest.fixture(scope="session")
def ed_key() -> Signer:
    return Signer(ed25519.Ed25519PrivateKey.generate(), "EdDSA", "ed-1")


def issuer_config(**kw: Any) -> IssuerConfig:
    base: dict[str, Any] = {"issuer": ISSUER, "audiences": (AUDIENCE,),
                            "algorithms": ("RS256",)}
    base.update(kw)
    return IssuerConfig(**base)


@pytest.fixture
def jwks_file(tmp_path: Path, rsa_key: Signer, ec_key: Signer, ed_key: Signer) -> Path:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [rsa_key.public_jwk(), ec_key.public_jwk(),
                                         ed_key.public_jwk()]}))
    return path


@pytest.fixture
def make_verifier() -> Iterator[Any]:
    """Build verifiers that are all closed at teardown."""
    made: list[JWTVerifier] = []

    def make(*issuers: IssuerConfig, **kw: Any) -> JWTVerifier:
        clock = kw.pop("clock", None)
        monotonic = kw.pop("monotonic", None)
        extra: dict[str, Any] = {}
        if clock is not None:
            extra["clock"] = clock
        if monotonic is not None:
            extra["monotonic"] = monotonic
        v = JWTVerifier(config=TokensConfig(issuers=issuers, **kw), **extra)
        made.append(v)
        return v

    try:
        yield make
    finally:
        for v in made:
            v.close()


@pytest.fixture
def verifier(make_verifier: Any, jwks_file: Path) -> JWTVerifier:
    v: JWTVerifier = make_verifier(issuer_config(
        algorithms=("RS256", "ES256", "EdDSA"), jwks_file=jwks_file,
        roles_claim="realm_access.roles"))
    return v


# -- a real JWKS server ----------------------------------------------------------------

@dataclass
class JWKSServer:
    """State the handler reads; tests change ``mode`` and ``keys`` between requests."""

    port: int = 0
    mode: str = "ok"
    keys: list[dict[str, Any]] = field(default_factory=list)
    hits: int = 0
    paths: list[str] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    issuer: str = ISSUER
    discovery_jwks_path: str = "/jwks"

    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/jwks"

    @property
    def discovery_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/.well-known/openid-configuration"

    def jwks_hits(self) -> int:
        with self.lock:
            return sum(1 for p in self.paths if p.startswith("/jwks"))


def _handler(state: JWKSServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None
                  ) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            # The client may give up early (oversized bodies): expected.
            with contextlib.suppress(OSError):
                self.wfile.write(body)

        def do_GET(self) -> None:
            with state.lock:
                state.hits += 1
                state.paths.append(self.path)
                mode = state.mode
            if self.path.startswith("/.well-known/"):
                doc = {"issuer": state.issuer,
                       "jwks_uri": f"http://127.0.0.1:{state.port}{state.discovery_jwks_path}"}
                self._send(200, json.dumps(doc).encode(),
                           {"Content-Type": "application/json"})
                return
            if self.path == "/moved":
                self._send(200, json.dumps({"keys": state.keys}).encode())
                return
            if mode == "ok":
                self._send(200, json.dumps({"keys": state.keys}).encode(),
                           {"Content-Type": "application/json"})
            elif mode == "slow-ok":
                time.sleep(0.3)
                self._send(200, json.dumps({"keys": state.keys}).encode())
            elif mode == "500":
                self._send(500, b"oops")
            elif mode == "hang":
                state.release.wait(10)
                self._send(500, b"late")
            elif mode == "garbage":
                self._send(200, b"<html>not json</html>")
            elif mode == "oversized":
                self._send(200, b'{"keys": [' + b" " * 300_000 + b"]}")
            elif mode == "oversized-chunked":
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                chunk = b" " * 65536
                try:
                    for _ in range(8):
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:
                    pass
            elif mode == "redirect-other-host":
                self._send(302, b"", {"Location": f"http://localhost:{state.port}/moved"})
            elif mode == "redirect-same-host":
                self._send(302, b"", {"Location": "/moved"})
            elif mode == "weak-key":
                small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
                jwk = json.loads(RSAAlgorithm.to_jwk(small.public_key()))
                jwk["kid"] = "weak"
                self._send(200, json.dumps({"keys": [*state.keys, jwk]}).encode())
            else:  # pragma: no cover
                self._send(404, b"")

    return Handler


@contextlib.contextmanager
def serve(state: JWKSServer, tls: ssl.SSLContext | None = None) -> Iterator[JWKSServer]:
    """Run the JWKS handler on 127.0.0.1 (plain or TLS) until the block ends."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
        state.scheme = "https"
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def jwks_server() -> Iterator[JWKSServer]:
    with serve(JWKSServer()) as state:
        yield state
