"""Real parts for the fault tests: a key-set endpoint that misbehaves on demand, a token
issuer whose keys rotate, and the ASGI middleware under uvicorn over real mutual TLS
(in a thread of the test process, so that ``caplog`` sees the server's log lines)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from endpointsec.testing.pki import CertificateAuthority

AUDIENCE = "orders"
WEB = "spiffe://shop.local/ns/shop/sa/web"

#: The policy of the fault tests (the web workload may read orders, not admin pages).
POLICY = """\
p, web, *, /orders, GET, allow
p, web, *, /orders/:id, GET, allow
p, web, *, /admin/*, GET, deny
g, spiffe://shop.local/ns/shop/sa/web, web, *
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def replace_file(path: Path, data: bytes) -> None:
    """Atomic replacement (write a sibling, rename over)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def wait_for(check: Callable[[], bool], *, timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        time.sleep(0.02)


# -- tokens -------------------------------------------------------------------------------


class RotatingIssuer:
    """ES256 signing keys that are published, used and retired as real issuers do."""

    def __init__(self, issuer: str) -> None:
        self.issuer = issuer
        self._lock = threading.Lock()
        self._keys: dict[str, ec.EllipticCurvePrivateKey] = {}
        self.signing_kid = self.publish()

    def publish(self) -> str:
        """Add a new key to the key set (not yet used for signing)."""
        kid = uuid.uuid4().hex[:12]
        with self._lock:
            self._keys = {kid: ec.generate_private_key(ec.SECP256R1()), **self._keys}
        return kid

    def rotate(self) -> str:
        """Publish a new key and sign with it from now on (the old keys stay published)."""
        self.signing_kid = self.publish()
        return self.signing_kid

    def retire(self, kid: str) -> None:
        with self._lock:
            self._keys = {k: v for k, v in self._keys.items() if k != kid}

    @property
    def kids(self) -> list[str]:
        with self._lock:
            return list(self._keys)

    def jwks(self) -> dict[str, Any]:
        with self._lock:
            keys = dict(self._keys)
        out = []
        for kid, key in keys.items():
            jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
            jwk.update({"kid": kid, "alg": "ES256", "use": "sig"})
            out.append(jwk)
        return {"keys": out}

    def token(self, *, sub: str, roles: Sequence[str] = (), kid: str | None = None,
              lifetime: float = 600.0) -> str:
        kid = kid or self.signing_kid
        with self._lock:
            key = self._keys[kid]
        now = int(time.time())
        claims = {"iss": self.issuer, "sub": sub, "aud": AUDIENCE, "iat": now,
                  "exp": now + int(lifetime), "roles": list(roles)}
        return jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid})

    def forged(self, *, sub: str, kid: str | None = None) -> str:
        """Signed by a key that was never published, under ``kid`` (default: the
        current one)."""
        now = int(time.time())
        claims = {"iss": self.issuer, "sub": sub, "aud": AUDIENCE, "iat": now,
                  "exp": now + 600}
        return jwt.encode(claims, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256",
                          headers={"kid": kid or self.signing_kid})


# -- a key-set endpoint that fails on demand ------------------------------------------------

MODES = ("ok", "500", "html", "redirect-away", "redirect-same", "slow", "reset", "down")


@dataclass
class JWKSEndpoint:
    """A real HTTP server on 127.0.0.1 serving ``issuer``'s key set, or failing as
    ``mode`` says: ``500``, ``html`` (a 200 login page), ``redirect-away`` (to another
    origin), ``redirect-same`` (to a path of the same origin, then ok), ``slow``
    (answers after ``slow_seconds``), ``reset`` (closes the connection), ``down``
    (nothing listens)."""

    issuer: RotatingIssuer
    port: int = field(default_factory=free_port)
    mode: str = "ok"
    slow_seconds: float = 3.0
    hits: int = 0
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _release: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/jwks"

    def set_mode(self, mode: str) -> None:
        assert mode in MODES, mode
        if mode == "down":
            self.stop()
        elif self._server is None:
            self.start()
        self.mode = mode

    def start(self) -> JWKSEndpoint:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def _send(self, status: int, body: bytes, ctype: str,
                      extra: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                with contextlib.suppress(OSError):
                    self.wfile.write(body)

            def do_GET(self) -> None:
                with endpoint._lock:
                    endpoint.hits += 1
                mode = endpoint.mode
                keys = json.dumps(endpoint.issuer.jwks()).encode()
                if self.path == "/moved" or mode == "ok":
                    self._send(200, keys, "application/json")
                elif mode == "500":
                    self._send(500, b'{"error": "internal"}', "application/json")
                elif mode == "html":
                    self._send(200, b"<!doctype html><title>Sign in</title><form></form>",
                               "text/html")
                elif mode == "redirect-away":
                    self._send(302, b"", "text/plain",
                               {"Location": f"http://localhost:{endpoint.port}/moved"})
                elif mode == "redirect-same":
                    self._send(302, b"", "text/plain", {"Location": "/moved"})
                elif mode == "slow":
                    endpoint._release.wait(endpoint.slow_seconds)
                    self._send(200, keys, "application/json")
                elif mode == "reset":
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self._release.clear()
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True,
                                        name="faults-jwks")
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        self._release.set()
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


# -- PKI and the server under test --------------------------------------------------------


@dataclass
class FaultsPki:
    directory: Path
    ca: CertificateAuthority
    ca2: CertificateAuthority
    server_ca: Path
    server_cert: Path
    server_key: Path
    tls_client_ca: Path  #: the server's TLS layer trusts both CAs: endpointsec decides
    bundle: Path         #: endpointsec's trust bundle (replaced by the tests)
    clients: dict[str, tuple[Path, Path]]


def build_pki(directory: Path) -> FaultsPki:
    ca = CertificateAuthority.create(name="faults CA 1")
    ca2 = CertificateAuthority.create(name="faults CA 2")
    server_ca = ca.write_bundle(directory / "server-ca.pem")
    cert, key = ca.issue_server(hostnames=["localhost", "127.0.0.1"]).write(directory,
                                                                           "server")
    tls_client_ca = directory / "tls-client-ca.pem"
    tls_client_ca.write_bytes(ca.cert_pem + ca2.cert_pem)
    bundle = ca.write_bundle(directory / "bundle.pem")
    clients = {
        "web": ca.issue_client(spiffe_id=WEB).write(directory, "web"),
        "web-ca2": ca2.issue_client(spiffe_id=WEB).write(directory, "web-ca2"),
    }
    return FaultsPki(directory=directory, ca=ca, ca2=ca2, server_ca=server_ca,
                     server_cert=cert, server_key=key, tls_client_ca=tls_client_ca,
                     bundle=bundle, clients=clients)


async def whoami(scope: Any, receive: Any, send: Any) -> None:
    """The protected app: who the middleware says is calling."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    principal = scope["endpointsec"].principal
    body = json.dumps({"peer": principal.peer.id if principal.peer else None,
                       "user": principal.request.id if principal.request else None}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


@contextlib.contextmanager
def mtls_server(app: Any, pki: FaultsPki) -> Iterator[str]:
    """uvicorn + endpointsec's protocol class over real mTLS, in a thread; yields the URL."""
    import uvicorn

    from endpointsec.servers.uvicorn import HttpToolsProtocol

    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http=HttpToolsProtocol, lifespan="on",
        ssl_certfile=str(pki.server_cert), ssl_keyfile=str(pki.server_key),
        ssl_ca_certs=str(pki.tls_client_ca), ssl_cert_reqs=ssl.CERT_REQUIRED,
        log_level="warning", access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True, name="faults-uvicorn")
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), what="uvicorn to start")
        assert server.started, "uvicorn did not start"
        yield f"https://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def client(pki: FaultsPki, name: str = "web") -> httpx.Client:
    """A keep-alive HTTP/1.1 client with the named client certificate."""
    ctx = ssl.create_default_context(cafile=str(pki.server_ca))
    cert, key = pki.clients[name]
    ctx.load_cert_chain(cert, key)
    return httpx.Client(verify=ctx, timeout=15)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}
