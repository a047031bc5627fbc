"""What the decision log, metrics and tracing add per request (in-process, no network).

::

    python bench/observability_bench.py [--n 10000] [--repeats 3]

The ASGI middleware is called directly (like ``bench/micro.py``) with a warm client
certificate and token, on a mix of 90 % allowed and 10 % denied requests (distinct
paths). Each configuration is compared with the same middleware built with
``[audit] log = false`` (no observer at all: one attribute check per request). Log
records go through a real ``StreamHandler`` with :class:`endpointsec.audit.JSONFormatter`
to ``/dev/null``. Figures are CPU time per request (median of the repeats); the
configurations are interleaved so that machine load affects them alike.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from endpointsec import ASGIMiddleware, Config
from endpointsec.audit import JSONFormatter
from endpointsec.testing.clients import tls_extension
from endpointsec.testing.pki import CertificateAuthority
from endpointsec.testing.tokens import TokenIssuer

ISSUER = "https://issuer.bench.test"
SID = "spiffe://bench.test/ns/shop/sa/frontend"
POLICY = """\
p, role:reader, *, /orders/:id, GET, allow
p, role:reader, *, /orders/denied, GET, deny
"""


async def _app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: Any) -> None:
    return None


def _material(root: Path) -> tuple[dict[str, Any], Callable[[int], dict[str, Any]]]:
    ca = CertificateAuthority.create(name="bench CA")
    bundle = ca.write_bundle(root / "ca.pem")
    client = ca.issue_client(spiffe_id=SID)
    issuer = TokenIssuer(issuer=ISSUER)
    (root / "issuer.pem").write_bytes(issuer.public_key_pem)
    (root / "policy.csv").write_text(POLICY)
    token = issuer.issue(sub="alice", roles=["reader"], exp=dt.timedelta(hours=1))
    base: dict[str, Any] = {
        "identity": {"sources": ["asgi-tls"], "trust_bundles": [str(bundle)]},
        "tokens": {"issuers": [{"issuer": ISSUER, "audiences": ["endpointsec"],
                                "algorithms": ["ES256"],
                                "public_key": str(root / "issuer.pem")}]},
        "policy": {"policy": str(root / "policy.csv")},
    }
    tls = tls_extension(client)
    headers = [(b"host", b"bench"), (b"authorization", f"Bearer {token}".encode())]

    def scope(i: int) -> dict[str, Any]:
        path = "/orders/denied" if i % 10 == 9 else f"/orders/{i % 500}"
        return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                "method": "GET", "scheme": "https", "path": path,
                "raw_path": path.encode(), "query_string": b"", "root_path": "",
                "headers": headers, "client": ("127.0.0.1", 5000),
                "server": ("127.0.0.1", 443), "extensions": {"tls": dict(tls)}}

    return base, scope


def _time(app: Any, scope: Callable[[int], dict[str, Any]], n: int) -> float:
    async def loop() -> float:
        t0 = time.process_time_ns()
        for i in range(n):
            await app(scope(i), _receive, _send)
        return (time.process_time_ns() - t0) / 1000 / n

    return asyncio.run(loop())


CASES: list[tuple[str, dict[str, Any], int]] = [
    # name, [audit], decision-log level (logging.WARNING = records not enabled)
    ("baseline: no observer ([audit] log = false)", {"log": False}, logging.WARNING),
    ("default: log on, logger not enabled", {}, logging.WARNING),
    ("(a) metrics only", {"log": False, "metrics": True}, logging.WARNING),
    ("(b) decision log, denials only (10 %)", {}, logging.INFO),
    ("(a)+(b) metrics + denials-only log", {"metrics": True}, logging.INFO),
    ("(c) allows sampled at 1 %", {"allow_sample_rate": 0.01}, logging.INFO),
    ("(c) allows sampled at 100 %", {"allow_sample_rate": 1.0}, logging.INFO),
    ("otel attributes (no span recording)", {"log": False, "otel": True}, logging.WARNING),
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    logger = logging.getLogger("endpointsec.decision")
    sink = open(os.devnull, "w")  # noqa: SIM115 - closed below
    handler = logging.StreamHandler(sink)
    handler.setFormatter(JSONFormatter())
    logger.addHandler(handler)
    logger.propagate = False
    with tempfile.TemporaryDirectory(prefix="endpointsec-obs-bench-") as tmp:
        base, scope = _material(Path(tmp))
        apps = []
        for name, audit, level in CASES:
            app = ASGIMiddleware(_app, config=Config.from_mapping({**base, "audit": audit}))
            logger.setLevel(level)
            _time(app, scope, 1000)  # warm: certificate, token, policy views
            apps.append((name, app, level))
        results: dict[str, list[float]] = {name: [] for name, _, _ in apps}
        for _ in range(args.repeats):
            for name, app, level in apps:
                logger.setLevel(level)
                results[name].append(_time(app, scope, args.n))
    logger.removeHandler(handler)
    sink.close()
    baseline = statistics.median(results[CASES[0][0]])
    print(f"{'configuration':48} {'µs/request':>11} {'added µs':>9}")
    for name, values in results.items():
        us = statistics.median(values)
        print(f"{name:48} {us:11.2f} {us - baseline:9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
