"""PKI, subprocess servers and a TLS client for the real-server tests."""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.x509.oid import ExtendedKeyUsageOID

from endpointsec.testing.pki import CertificateAuthority, IssuedCertificate

HERE = Path(__file__).resolve().parent
SID = "spiffe://example.org/ns/shop/sa/orders"


@dataclass
class ServerPki:
    directory: Path
    ca_bundle: Path          #: what endpointsec trusts
    server_tls_bundle: Path  #: what the server's TLS layer trusts (ca + other CA)
    server_cert: Path
    server_key: Path
    clients: dict[str, tuple[Path, Path]] = field(default_factory=dict)


def build_pki(directory: Path) -> ServerPki:
    now = dt.datetime.now(dt.UTC)
    ca = CertificateAuthority.create(name="servers test root")
    other = CertificateAuthority.create(name="servers other root")
    ca_bundle = ca.write_bundle(directory / "ca.pem")
    tls_bundle = directory / "server-tls-bundle.pem"
    tls_bundle.write_bytes(ca.cert_pem + other.cert_pem)
    server_cert, server_key = ca.issue_server(hostnames=["localhost", "127.0.0.1"]).write(
        directory, "server")
    inter = ca.intermediate()
    issued: dict[str, IssuedCertificate] = {
        "valid": ca.issue_client(spiffe_id=SID),
        "valid-intermediate": inter.issue_client(spiffe_id=SID + "-i"),
        "expired": ca.issue_client(spiffe_id=SID, not_before=now - dt.timedelta(days=3),
                                   not_after=now - dt.timedelta(days=1)),
        "not-yet-valid": ca.issue_client(spiffe_id=SID, not_before=now + dt.timedelta(days=1),
                                         not_after=now + dt.timedelta(days=3)),
        # Trusted by the server's TLS layer, not by endpointsec: endpointsec must refuse.
        "unknown-ca": other.issue_client(spiffe_id=SID),
        "ca-flagged-leaf": ca.issue(uris=[SID], is_ca=True),
        "server-auth-only": ca.issue(uris=[SID],
                                     extended_key_usage=(ExtendedKeyUsageOID.SERVER_AUTH,)),
        "two-uri-sans": ca.issue_client(spiffe_id=SID, uris=["https://orders.example"]),
        "no-san": ca.issue_client(common_name="no-san"),
        "dns-san-only": ca.issue_client(dns_names=["orders.example"]),
    }
    pki = ServerPki(directory=directory, ca_bundle=ca_bundle, server_tls_bundle=tls_bundle,
                    server_cert=server_cert, server_key=server_key)
    for name, cert in issued.items():
        pki.clients[name] = cert.write(directory, f"client-{name}")
    return pki


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def client_context(pki: ServerPki, client: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca_bundle))
    if client is not None:
        cert, key = pki.clients[client]
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


Outcome = tuple[int, dict[str, Any]] | tuple[str, str]


def request(conn: http.client.HTTPSConnection, path: str = "/whoami") -> Outcome:
    """``(status, json body)``, or ``("refused", reason)`` if TLS refused the client."""
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        raw = resp.read()
    except (ssl.SSLError, ConnectionError, http.client.HTTPException, OSError) as exc:
        return ("refused", type(exc).__name__)
    try:
        body = json.loads(raw) if raw else {}
    except ValueError:
        body = {"raw": raw.decode("latin-1")}
    return resp.status, body


def call(port: int, pki: ServerPki, client: str | None, *, n: int = 1) -> list[Outcome]:
    """``n`` requests on one connection (keep-alive)."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10,
                                       context=client_context(pki, client))
    try:
        return [request(conn) for _ in range(n)]
    finally:
        conn.close()


def websocket_hello(port: int, pki: ServerPki, client: str | None,
                    path: str = "/ws") -> tuple[int | str, str]:
    """Open a websocket over TLS; ``(101, first text message)`` or ``(status, "")``.

    A minimal RFC 6455 client (handshake + one unfragmented server frame), so that the
    tests need no websocket client library.
    """
    import base64

    ctx = client_context(pki, client)
    try:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            key = base64.b64encode(os.urandom(16)).decode()
            sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                          "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                          f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                          "\r\n").encode())
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                buf += chunk
            head, _, rest = buf.partition(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            if status != 101:
                return status, ""
            while len(rest) < 2:
                rest += sock.recv(4096)
            length = rest[1] & 0x7F
            offset = 2
            if length == 126:
                while len(rest) < 4:
                    rest += sock.recv(4096)
                length = int.from_bytes(rest[2:4], "big")
                offset = 4
            while len(rest) < offset + length:
                rest += sock.recv(4096)
            return 101, rest[offset:offset + length].decode()
    except (ssl.SSLError, ConnectionError, OSError, IndexError, ValueError) as exc:
        return "refused", type(exc).__name__


def wait_for_port(port: int, proc: subprocess.Popen[bytes] | None, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise RuntimeError(f"server exited with {proc.returncode}:\n{out}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"server did not listen on {port} within {timeout}s")


@contextlib.contextmanager
def subprocess_server(args: list[str], port: int, pki: ServerPki) -> Iterator[int]:
    env = dict(os.environ)
    env["ENDPOINTSEC_TEST_BUNDLE"] = str(pki.ca_bundle)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    proc = subprocess.Popen([sys.executable, "-m", *args], cwd=HERE, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


#: Client certificate -> what endpointsec must answer. "401" is exact; "refused-or-401"
#: allows the server's own TLS layer to refuse the handshake first (OpenSSL checks
#: validity dates and the clientAuth purpose itself); never a 500, never a 200.
REFUSALS = {
    "expired": "refused-or-401",
    "not-yet-valid": "refused-or-401",
    "unknown-ca": "401",  # the server's TLS trusts that CA; endpointsec does not
    "ca-flagged-leaf": "refused-or-401",
    "server-auth-only": "refused-or-401",
    "two-uri-sans": "401",
    "no-san": "401",
    "dns-san-only": "401",  # require_spiffe
}


def check_refusal(outcome: Outcome, expected: str) -> None:
    status = outcome[0]
    if expected == "401":
        assert status == 401, outcome
        body = outcome[1]
        assert isinstance(body, dict)
        assert body.get("status") == 401, body
    else:
        assert status in ("refused", 401), outcome
