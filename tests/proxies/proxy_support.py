"""Helpers for the real-proxy tests: a PKI on disk, app servers in threads (uvicorn,
werkzeug) running the middleware, proxy processes with generated configurations, and
an mTLS client. Every server binds 127.0.0.1 on a free port and is stopped on exit."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from endpointsec import ASGIMiddleware, Gatekeeper, WSGIMiddleware
from endpointsec.identity.config import IdentityConfig
from endpointsec.identity.forwarded import ProxyConfig, build_proxy_sources
from endpointsec.identity.verify import X509ChainVerifier
from endpointsec.policy import AllowAuthenticated
from endpointsec.testing.pki import CertificateAuthority, IssuedCertificate

CALLER = "spiffe://example.org/ns/shop/sa/orders"
VICTIM = "spiffe://example.org/ns/shop/sa/admin"
#: Header names the echo apps report back (lower case).
REPORTED = ("x-ssl-client-cert", "x-ssl-client-verify", "x-ssl-client-der",
            "x-ssl-client_cert", "x-ssl-client_der", "x-forwarded-client-cert")


@dataclass(frozen=True)
class Files:
    """The PKI, written to a temporary directory."""

    ca: CertificateAuthority
    ca_pem: Path
    server_pem: Path
    server_key: Path
    #: Certificate + key in one file (HAProxy ``crt``).
    server_combined: Path
    client: tuple[Path, Path]
    stranger: tuple[Path, Path]
    #: The victim's certificate is public; its key is not given to the attacker.
    victim: IssuedCertificate


def make_files(d: Path) -> Files:
    ca = CertificateAuthority.create(name="proxy test root")
    other = CertificateAuthority.create(name="someone else's root")
    server = ca.issue_server(hostnames=["localhost", "127.0.0.1"])
    server_pem, server_key = server.write(d, "server")
    combined = d / "server-combined.pem"
    combined.write_bytes(server.cert_pem + server.key_pem)
    return Files(
        ca=ca,
        ca_pem=ca.write_bundle(d / "ca.pem"),
        server_pem=server_pem,
        server_key=server_key,
        server_combined=combined,
        client=ca.issue_client(spiffe_id=CALLER).write(d, "client"),
        stranger=other.issue_client(spiffe_id=CALLER).write(d, "stranger"),
        victim=ca.issue_client(spiffe_id=VICTIM),
    )


def require_binary(name: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists()
                                  else None)
    if path is None:
        pytest.skip(f"{name} is not installed (apt-get install {name}); CI installs it")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, *, proc: subprocess.Popen[bytes] | None = None,
                  log: Path | None = None, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            detail = log.read_text(errors="replace") if log and log.exists() else ""
            raise RuntimeError(f"process exited with {proc.returncode}: {detail}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port),
                                                                      timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def gatekeeper(files: Files, proxy: ProxyConfig) -> Gatekeeper:
    return Gatekeeper(
        policy=AllowAuthenticated(),
        sources=build_proxy_sources(proxy),
        verifier=X509ChainVerifier(config=IdentityConfig(trust_bundles=(files.ca_pem,))),
    )


# -- apps that report what they saw ------------------------------------------------------


def echo_asgi(gk: Gatekeeper) -> ASGIMiddleware:
    async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        peer = scope["endpointsec"].principal.peer
        seen = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]
                if k.decode("latin-1") in REPORTED}
        body = json.dumps({"peer": peer.id if peer else None, "headers": seen}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    return ASGIMiddleware(app, gatekeeper=gk)


def echo_wsgi(gk: Gatekeeper) -> WSGIMiddleware:
    def app(environ: MutableMapping[str, Any], start_response: Any) -> list[bytes]:
        peer = environ["endpointsec"].principal.peer
        seen = {k: v for k, v in environ.items() if k.startswith("HTTP_X_SSL")
                or k == "HTTP_X_FORWARDED_CLIENT_CERT"}
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({"peer": peer.id if peer else None, "headers": seen}).encode()]

    return WSGIMiddleware(app, gatekeeper=gk)


@contextlib.contextmanager
def uvicorn_server(app: Any, *, uds: Path | None = None, **options: Any) -> Iterator[int]:
    """uvicorn (plain HTTP, httptools) in a thread; yields the port (0 with ``uds``:
    then it listens on that Unix socket only)."""
    import uvicorn

    port = 0 if uds is not None else free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                            uds=str(uds) if uds is not None else None,
                            log_level="warning", lifespan="off", ws="none",
                            loop="asyncio", http="httptools", **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextlib.contextmanager
def werkzeug_server(app: Any) -> Iterator[int]:
    """werkzeug's threaded development server in a thread; yields the port."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    port = int(server.server_port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextlib.contextmanager
def proxy_process(argv: Sequence[str], *, port: int, log: Path,
                  env: dict[str, str] | None = None) -> Iterator[None]:
    """Start a proxy (or server) in the foreground, wait for its port, stop it on exit."""
    with log.open("wb") as out:
        proc = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for_port(port, proc=proc, log=log)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def client(files: Files, cert: tuple[Path, Path] | None, *,
           local_address: str | None = None) -> httpx.Client:
    """An HTTPS client that trusts the test CA and presents ``cert`` (or none),
    connecting from ``local_address`` (another loopback address) if given."""
    ctx = ssl.create_default_context(cafile=str(files.ca_pem))
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    transport = httpx.HTTPTransport(verify=ctx, local_address=local_address)
    return httpx.Client(transport=transport, timeout=10.0)
