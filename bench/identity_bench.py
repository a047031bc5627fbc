"""Per-request cost of the certificate identity step (a printed table, not a test).

    .venv/bin/python bench/identity_bench.py

Measures, in µs per operation (median of several rounds, each the mean of many calls):

* the warm path of a request on a reused connection: ``ASGITLSSource.from_asgi`` on a
  scope carrying the TLS extension, then ``X509ChainVerifier.verify`` hitting its cache;
* the same through ``Gatekeeper.gather_asgi`` + ``decide`` (AllowAuthenticated);
* the per-request work of the uvicorn protocol add-on (copying the per-connection TLS
  facts into the scope) and its once-per-connection work (``tls_extension``);
* a cold verification (cache cleared): P-256 leaf under a root, under an intermediate,
  an RSA-2048 leaf; and building one ``ClientVerifier`` (done on every cold check).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from endpointsec.facts import PresentedCertificate
from endpointsec.gatekeeper import Gatekeeper
from endpointsec.identity.config import IdentityConfig
from endpointsec.identity.sources import ASGITLSSource
from endpointsec.identity.verify import X509ChainVerifier, policy_builder
from endpointsec.policy import AllowAuthenticated
from endpointsec.routing import RouteTable
from endpointsec.testing.pki import CertificateAuthority, IssuedCertificate

SID = "spiffe://example.org/ns/shop/sa/orders"


def measure(fn: Callable[[], object], *, number: int, rounds: int = 7) -> float:
    """Median over ``rounds`` of the mean time of ``number`` calls, in µs."""
    fn()
    results = []
    for _ in range(rounds):
        start = time.perf_counter_ns()
        for _ in range(number):
            fn()
        results.append((time.perf_counter_ns() - start) / number / 1000)
    return statistics.median(results)


def presented(cert: IssuedCertificate) -> PresentedCertificate:
    return PresentedCertificate(
        leaf=cert.der,
        intermediates=tuple(c.public_bytes(serialization.Encoding.DER)
                            for c in cert.intermediates),
        source="asgi-tls")


def scope_for(cert: IssuedCertificate) -> dict[str, Any]:
    chain = [ssl.DER_cert_to_PEM_cert(cert.der)] + [
        c.public_bytes(serialization.Encoding.PEM).decode() for c in cert.intermediates]
    return {"type": "http", "method": "GET", "path": "/orders", "raw_path": b"/orders",
            "query_string": b"", "headers": [(b"host", b"svc")],
            "client": ("127.0.0.1", 5000),
            "extensions": {"tls": {"server_cert": None, "client_cert_chain": chain,
                                   "client_cert_name": "", "client_cert_error": None,
                                   "tls_version": 0x0304, "cipher_suite": 0x1302}}}


class _FakeSSL:
    def __init__(self, der: bytes) -> None:
        self.der = der

    def getpeercert(self, binary_form: bool = False) -> bytes:
        return self.der

    def version(self) -> str:
        return "TLSv1.3"

    def cipher(self) -> tuple[str, str, int]:
        return ("TLS_AES_256_GCM_SHA384", "TLSv1.3", 256)


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    ca = CertificateAuthority.create()
    inter = ca.intermediate()
    bundle = ca.write_bundle(tmp / "ca.pem")
    config = IdentityConfig(sources=("asgi-tls",), trust_bundles=(bundle,), require_spiffe=True)
    verifier = X509ChainVerifier(config=config)
    source = ASGITLSSource()
    leaf = ca.issue_client(spiffe_id=SID)
    leaf_i = inter.issue_client(spiffe_id=SID)
    leaf_rsa = ca.issue_client(spiffe_id=SID, key_kind="rsa")
    scope = scope_for(leaf)
    gk = Gatekeeper(policy=AllowAuthenticated(), sources=[source], verifier=verifier,
                    routes=RouteTable())

    rows: list[tuple[str, float]] = []

    # -- warm: a request on a reused connection ----------------------------------------
    p = presented(leaf)
    verifier.verify(p)
    rows.append(("source: ASGITLSSource.from_asgi, same connection (memo hit)",
                 measure(lambda: source.from_asgi(scope), number=20000)))
    rows.append(("source: ASGITLSSource.from_asgi, new chain (PEM -> DER)",
                 measure(lambda: source._from_asgi(scope), number=20000)))
    rows.append(("verify: X509ChainVerifier.verify, cache hit",
                 measure(lambda: verifier.verify(p), number=20000)))
    rows.append(("identity step per request (source + verify, warm)",
                 measure(lambda: verifier.verify(source.from_asgi(scope)),  # type: ignore[arg-type]
                         number=20000)))

    loop = asyncio.new_event_loop()

    async def gather_many(n: int) -> None:
        for _ in range(n):
            gk.decide(await gk.gather_asgi(scope))

    def gather_decide() -> None:
        loop.run_until_complete(gather_many(1000))

    rows.append(("whole gather_asgi + decide (AllowAuthenticated), warm",
                 measure(gather_decide, number=5) / 1000))

    from endpointsec.servers.uvicorn import _with_tls, tls_extension

    async def noop(scope: Any, receive: Any, send: Any) -> None:
        return None

    tls = tls_extension(_FakeSSL(leaf.der))  # type: ignore[arg-type]
    assert tls is not None
    wrapped = _with_tls(noop, tls)

    async def run_wrapped() -> None:
        await wrapped({"type": "http"}, None, None)

    def per_request_addon() -> None:
        coro = run_wrapped()
        with contextlib.suppress(StopIteration):
            coro.send(None)

    rows.append(("uvicorn add-on per request (copy TLS facts into scope)",
                 measure(per_request_addon, number=20000)))
    rows.append(("uvicorn add-on per connection (tls_extension)",
                 measure(lambda: tls_extension(_FakeSSL(leaf.der)),  # type: ignore[arg-type]
                         number=2000)))

    # -- cold ----------------------------------------------------------------------------
    store, _ = verifier.bundles["identity.trust_bundles"].current()
    now = dt.datetime.now(dt.UTC)
    rows.append(("build one ClientVerifier (per cold check)",
                 measure(lambda: policy_builder(store=store, now=now,
                                                max_chain_depth=8).build_client_verifier(),
                         number=5000)))
    for label, cert in (("P-256 leaf <- root", leaf),
                        ("P-256 leaf <- intermediate <- root", leaf_i),
                        ("RSA-2048 leaf <- root", leaf_rsa)):
        pc = presented(cert)

        def cold(pc: PresentedCertificate = pc) -> None:
            verifier.clear_cache()
            verifier.verify(pc)

        rows.append((f"cold verify: {label}", measure(cold, number=300)))
    loop.close()

    width = max(len(r[0]) for r in rows)
    print(f"endpointsec identity benchmark (Python {sys.version.split()[0]}, "
          f"median of 7 rounds)")
    print(f"{'operation':<{width}}  {'µs/op':>9}")
    print(f"{'-' * width}  {'-' * 9}")
    for name, us in rows:
        print(f"{name:<{width}}  {us:>9.2f}")


if __name__ == "__main__":
    main()
