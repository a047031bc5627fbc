"""How fast the testing helpers are: what a policy test suite costs per case.

Run: ``.venv/bin/python bench/testing_bench.py``. Prints a table (µs per operation).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from endpointsec.policy.enforcer import CasbinPolicy
from endpointsec.testing import CertificateAuthority, TokenIssuer, evaluate, load_suite
from endpointsec.testing.clients import asgi_client

ORDERS = "spiffe://example.org/ns/shop/sa/orders"
IDP = "https://idp.example.com"


def per_op(fn: Callable[[], object], *, n: int, repeat: int = 5) -> float:
    """Median µs per call over ``repeat`` runs of ``n`` calls."""
    fn()
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(runs)


def main() -> None:
    rows: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        lines = [f"p, {ORDERS}, *, /orders/:id, GET, allow",
                 "p, role:admin, *, /orders/*, *, allow",
                 "p, role:admin, *, /orders/vault, *, deny",
                 f"g, {IDP}/alice, role:admin, *"]
        lines += [f"p, spiffe://example.org/ns/x/sa/s{i}, *, /svc{i}/:id, GET, allow"
                  for i in range(1000)]
        (tmp / "policy.csv").write_text("\n".join(lines) + "\n")
        policy = CasbinPolicy(policy=tmp / "policy.csv", cache_size=0)
        alice = {"iss": IDP, "sub": "alice"}
        rows.append(("evaluate(): peer string, 1k-line policy",
                     per_op(lambda: evaluate(policy, path="/orders/1", peer=ORDERS), n=2000)))
        rows.append(("evaluate(): token claims, role via g",
                     per_op(lambda: evaluate(policy, path="/orders/vault", token=alice), n=2000)))
        cases = [{"principal": {"peer": ORDERS}, "path": f"/orders/{i}", "expect": "allow"}
                 for i in range(200)]
        (tmp / "s.json").write_text(json.dumps({"policy": "policy.csv", "now": 1.8e9,
                                                "cases": cases}))
        suite = load_suite(tmp / "s.json")
        gk = suite.gatekeeper
        rows.append(("suite: per case (200-case JSON suite, run only)",
                     per_op(lambda: suite.run(gk), n=10) / len(cases)))
        rows.append(("suite: load + build + run, per case",
                     per_op(lambda: load_suite(tmp / "s.json").run(), n=3) / len(cases)))
        ca = CertificateAuthority.create()
        rows.append(("CertificateAuthority.issue_client (EC P-256)",
                     per_op(lambda: ca.issue_client(spiffe_id=ORDERS), n=200)))
        for alg in ("ES256", "RS256"):
            issuer = TokenIssuer(algorithm=alg)
            rows.append((f"TokenIssuer.issue ({alg})",
                         per_op(lambda issuer=issuer: issuer.issue(sub="alice"), n=500)))

        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route

        from endpointsec import ASGIMiddleware, Config

        bundle = ca.write_bundle(tmp / "ca.pem")
        config = Config.from_mapping({
            "identity": {"sources": ["asgi-tls"], "trust_bundles": [str(bundle)]},
            "policy": {"policy": str(tmp / "policy.csv")}})

        async def ok(request: object) -> PlainTextResponse:
            return PlainTextResponse("ok")

        app = ASGIMiddleware(Starlette(routes=[Route("/orders/{id}", ok)]), config=config)
        with asgi_client(app, cert=ca.issue_client(spiffe_id=ORDERS)) as client:
            rows.append(("asgi_client GET with certificate (TestClient, end to end)",
                         per_op(lambda: client.get("/orders/1"), n=300)))
    width = max(len(r[0]) for r in rows)
    print(f"{'operation':<{width}}  {'µs/op':>10}")
    print(f"{'-' * width}  {'-' * 10}")
    for name, us in rows:
        print(f"{name:<{width}}  {us:>10.1f}")


if __name__ == "__main__":
    main()
