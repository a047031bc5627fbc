"""A real configuration (certificates, a token issuer, a Casbin policy) for the decision
log, metrics and tracing tests; everything generated at run time in a temporary folder."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from endpointsec import Config
from endpointsec.testing.clients import tls_extension
from endpointsec.testing.pki import CertificateAuthority, IssuedCertificate
from endpointsec.testing.tokens import TokenIssuer

SID = "spiffe://example.org/ns/shop/sa/frontend"
ISSUER = "https://issuer.example"
POLICY = """\
p, role:reader, *, /orders/:id, GET, allow
p, spiffe://example.org/ns/shop/sa/frontend, *, /health, GET, allow
p, role:reader, *, /orders/7, GET, deny
"""


@dataclass
class Material:
    root: Path
    ca: CertificateAuthority
    client: IssuedCertificate
    issuer: TokenIssuer
    bundle: Path
    policy: Path
    public_key: Path

    def config(self, *, audit: dict[str, Any] | None = None, sources: str = "asgi-tls",
               routes: list[dict[str, Any]] | None = None,
               policy: dict[str, Any] | None = None) -> Config:
        data: dict[str, Any] = {
            "identity": {"sources": [sources], "trust_bundles": [str(self.bundle)]},
            "tokens": {"issuers": [{"issuer": ISSUER, "audiences": ["endpointsec"],
                                    "algorithms": ["ES256"],
                                    "public_key": str(self.public_key)}]},
            "policy": {"policy": str(self.policy), **(policy or {})},
            "defaults": {"mtls": "required", "token": "optional"},
        }
        if routes:
            data["routes"] = routes
        if audit is not None:
            data["audit"] = audit
        return Config.from_mapping(data, base_dir=self.root)


def make_material(root: Path) -> Material:
    ca = CertificateAuthority.create(name="audit test CA")
    bundle = ca.write_bundle(root / "ca.pem")
    issuer = TokenIssuer(issuer=ISSUER)
    public_key = root / "issuer.pem"
    public_key.write_bytes(issuer.public_key_pem)
    policy = root / "policy.csv"
    policy.write_text(POLICY)
    return Material(root=root, ca=ca, client=ca.issue_client(spiffe_id=SID), issuer=issuer,
                    bundle=bundle, policy=policy, public_key=public_key)


def asgi_scope(path: str, *, cert: IssuedCertificate | None, token: str | None = None,
               headers: list[tuple[bytes, bytes]] | None = None,
               raw_path: bytes | None = None) -> dict[str, Any]:
    hs = [(b"host", b"testserver"), *(headers or [])]
    if token is not None:
        hs.append((b"authorization", f"Bearer {token}".encode()))
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "https", "path": path, "raw_path": raw_path or path.encode(),
        "query_string": b"", "root_path": "", "headers": hs,
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 443),
        "extensions": {"tls": tls_extension(cert)} if cert is not None else {},
    }


async def _ok_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def call_asgi(app: Any, scope: dict[str, Any]) -> int:
    """Call an ASGI app directly; the response status."""
    status: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    asyncio.run(app(scope, receive, send))
    return status[0]


ok_app = _ok_app


class Records(logging.Handler):
    """Collects the decision records (and the formatted lines) of one test."""

    def __init__(self, formatter: logging.Formatter | None = None) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.stream = io.StringIO()
        if formatter is not None:
            self.setFormatter(formatter)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.stream.write(self.format(record) + "\n")

    @property
    def fields(self) -> list[dict[str, Any]]:
        return [r.endpointsec_record for r in self.records  # type: ignore[attr-defined]
                if hasattr(r, "endpointsec_record")]


@contextmanager
def capture(level: int = logging.INFO,
            formatter: logging.Formatter | None = None) -> Iterator[Records]:
    logger = logging.getLogger("endpointsec.decision")
    handler = Records(formatter)
    old_level, old_propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate
