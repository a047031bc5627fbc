"""The in-process micro-benchmark: the middleware called directly, no network.

::

    python bench/micro.py [--quick] [--sizes 10,1000,100000]

For the ASGI and the WSGI middleware, and a Casbin policy of 10, 1,000 and 100,000
lines, measures per request:

- *steady*: the same request again and again (certificate, token and decision caches
  warm): the cost the middleware adds to every request of a long-lived service;
- *distinct paths*: a new path each time (the decision cache misses, the policy index
  is searched);
- *cold*: the first request of a new middleware (nothing cached), and the start-up
  (configuration read, policy loaded, middleware built).

Each figure is the middleware's time minus the bare app's, called the same way with the
same prepared request. The certificate reaches the ASGI middleware in the ASGI TLS
extension and the WSGI middleware in ``SSL_CLIENT_CERT``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import apps
import harness as h


def asgi_scope(m: h.Material, *, path: str, client_pem: str) -> dict[str, Any]:
    """An HTTP scope as uvicorn with endpointsec's protocol class builds it."""
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1", "method": "GET", "scheme": "https", "path": path,
        "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"127.0.0.1:8443"), (b"user-agent", b"bench"),
                    (b"authorization", f"Bearer {m.token}".encode())],
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8443),
        "extensions": {"tls": {
            "server_cert": None, "client_cert_chain": [client_pem],
            "client_cert_name": f"CN={h.CLIENT_CN}", "client_cert_error": None,
            "tls_version": 0x0304, "cipher_suite": 0x1302}},
    }


def wsgi_environ(m: h.Material, *, path: str, client_pem: str) -> dict[str, Any]:
    """A WSGI environ as a TLS-terminating server that exports the certificate builds it."""
    return {
        "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": path, "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8443", "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": "127.0.0.1:8443",
        "HTTP_AUTHORIZATION": f"Bearer {m.token}",
        "SSL_CLIENT_CERT": client_pem, "SSL_CLIENT_VERIFY": "SUCCESS",
        "wsgi.version": (1, 0), "wsgi.url_scheme": "https", "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


class _Send:
    status = 0

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]


def _start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
    _start_response.status = status  # type: ignore[attr-defined]
    return None


def time_asgi(app: Any, make_scope: Callable[[int], dict[str, Any]], n: int) -> float:
    """Microseconds per call of ``app`` over ``n`` calls (the status must be 200)."""
    send = _Send()

    async def loop() -> float:
        t0 = time.process_time_ns()
        for i in range(n):
            await app(make_scope(i), _receive, send)
        return (time.process_time_ns() - t0) / 1000 / n

    us = asyncio.run(loop())
    if send.status != 200:
        raise RuntimeError(f"the ASGI request was answered {send.status}, not 200")
    return us


def time_wsgi(app: Any, make_environ: Callable[[int], dict[str, Any]], n: int) -> float:
    """Microseconds per call of the WSGI ``app`` (body consumed, status must be 200)."""
    t0 = time.process_time_ns()
    for i in range(n):
        body = app(make_environ(i), _start_response)
        for _ in body:
            pass
    us = (time.process_time_ns() - t0) / 1000 / n
    status = getattr(_start_response, "status", "")
    if not status.startswith("200"):
        raise RuntimeError(f"the WSGI request was answered {status!r}, not 200")
    return us


@dataclass(frozen=True)
class Stack:
    """How to build, call and feed one kind of middleware."""

    kind: str
    bare: Any
    build: Callable[[], Any]
    same: Callable[[int], dict[str, Any]]
    distinct: Callable[[int], dict[str, Any]]
    timer: Callable[[Any, Callable[[int], dict[str, Any]], int], float]


def _client_pem(m: h.Material) -> str:
    """The leaf alone, as a server passes it (the chain file may hold intermediates)."""
    end = "-----END CERTIFICATE-----"
    return m.client_cert.read_text().split(end)[0] + end + "\n"


def asgi_stack(m: h.Material, cfg: Path) -> Stack:
    """The ASGI middleware around :func:`apps.bare`; the certificate in the TLS extension."""
    import endpointsec

    base = asgi_scope(m, path=h.ORDER_PATH, client_pem=_client_pem(m))

    def same(i: int) -> dict[str, Any]:
        s = dict(base)
        s["extensions"] = {"tls": dict(base["extensions"]["tls"])}
        return s

    def distinct(i: int) -> dict[str, Any]:
        s = same(i)
        s["path"] = f"/orders/{i}-{time.perf_counter_ns()}"
        s["raw_path"] = s["path"].encode()
        return s

    def build() -> Any:
        return endpointsec.ASGIMiddleware(apps.bare, config=endpointsec.load_config(cfg))

    return Stack("asgi", apps.bare, build, same, distinct, time_asgi)


def wsgi_stack(m: h.Material, cfg: Path) -> Stack:
    """The WSGI middleware around :func:`apps.bare_wsgi`; the certificate in
    ``SSL_CLIENT_CERT``."""
    import endpointsec

    base = wsgi_environ(m, path=h.ORDER_PATH, client_pem=_client_pem(m))

    def same(i: int) -> dict[str, Any]:
        return dict(base)

    def distinct(i: int) -> dict[str, Any]:
        e = dict(base)
        e["PATH_INFO"] = f"/orders/{i}-{time.perf_counter_ns()}"
        return e

    def build() -> Any:
        return endpointsec.WSGIMiddleware(apps.bare_wsgi, config=endpointsec.load_config(cfg))

    return Stack("wsgi", apps.bare_wsgi, build, same, distinct, time_wsgi)


def bench_stack(st: Stack, n_lines: int, *, quick: bool) -> list[dict[str, Any]]:
    """Cold, steady and distinct-path figures for one stack and policy size."""
    n = 2000 if quick else 10000
    repeats = 3 if quick else 5
    cold_samples = 2 if (quick or n_lines >= 100_000) else 5
    # Cold: a new middleware each time; start-up, then the first request.
    startups: list[float] = []
    firsts: list[float] = []
    bare_first = st.timer(st.bare, st.same, 1)
    mw: Any = None
    for _ in range(cold_samples):
        mw = None
        gc.collect()
        t0 = time.perf_counter()
        mw = st.build()
        startups.append((time.perf_counter() - t0) * 1000)
        firsts.append(st.timer(mw, st.same, 1))
    cold = statistics.median(firsts)
    rows: list[dict[str, Any]] = [{
        "kind": st.kind, "policy_lines": n_lines, "case": "cold", "bare_us": bare_first,
        "mw_us": cold, "added_us": cold - bare_first,
        "startup_ms": statistics.median(startups)}]
    # Steady state: warm the caches, then alternate the bare app and the middleware.
    st.timer(mw, st.same, 200)
    for case, make in (("steady", st.same), ("distinct paths", st.distinct)):
        bare_us: list[float] = []
        mw_us: list[float] = []
        for _ in range(repeats):
            bare_us.append(st.timer(st.bare, make, n))
            mw_us.append(st.timer(mw, make, n))
        b, w = statistics.median(bare_us), statistics.median(mw_us)
        rows.append({"kind": st.kind, "policy_lines": n_lines, "case": case,
                     "bare_us": b, "mw_us": w, "added_us": w - b})
    return rows


def bench_size(m: h.Material, policy: Path, n_lines: int, *, quick: bool,
               kinds: Iterable[str] = ("asgi", "wsgi")) -> list[dict[str, Any]]:
    """All cases for one policy size."""
    rows: list[dict[str, Any]] = []
    for kind in kinds:
        source = "asgi-tls" if kind == "asgi" else "wsgi-environ"
        cfg = h.write_config(m, f"micro-{kind}-{n_lines}", policy=policy, source=source)
        st = asgi_stack(m, cfg) if kind == "asgi" else wsgi_stack(m, cfg)
        rows.extend(bench_stack(st, n_lines, quick=quick))
    return rows


def breakdown(m: h.Material, policy: Path, *, n: int = 5000) -> list[tuple[str, float]]:
    """Where the steady-state ASGI time goes: each step of gather and decide timed alone
    (warm caches). Uses the Gatekeeper's parts directly; a step whose part changed shape
    is reported as ``nan`` rather than failing the benchmark."""
    import endpointsec

    cfg = h.write_config(m, "micro-breakdown", policy=policy, source="asgi-tls")
    st = asgi_stack(m, cfg)
    mw = st.build()
    gk = mw.gatekeeper
    st.timer(mw, st.same, 200)
    scope = st.same(0)
    headers = list(scope["headers"])

    def step(fn: Callable[[], Any]) -> float:
        try:
            fn()
            t0 = time.process_time_ns()
            for _ in range(n):
                fn()
            return (time.process_time_ns() - t0) / 1000 / n
        except Exception:
            return float("nan")

    def gather_loop() -> float:
        async def loop() -> float:
            await gk.gather_asgi(st.same(0))
            t0 = time.process_time_ns()
            for _ in range(n):
                await gk.gather_asgi(st.same(0))
            return (time.process_time_ns() - t0) / 1000 / n

        try:
            return asyncio.run(loop())
        except Exception:
            return float("nan")

    presented = gk.sources[0].from_asgi(scope)
    token = gk.token_reader.read(headers, b"") if gk.token_reader else None
    facts = asyncio.run(gk.gather_asgi(st.same(0)))
    rows = [
        ("certificate read from the TLS extension (PEM to DER)",
         step(lambda: gk.sources[0].from_asgi(scope))),
        ("chain verification (cached)", step(lambda: gk.verifier.verify(presented))),
        ("bearer token read from the headers", step(lambda: gk.token_reader.read(headers, b""))),
        ("token verification (cached)", step(lambda: gk.token_verifier.verify(token))),
        ("path normalization + route match",
         step(lambda: gk.routes.match("GET", gk.policy.normalize(h.ORDER_PATH)))),
        ("decide (policy, decision cache warm)", step(lambda: gk.decide(facts))),
        ("whole gather (async)", gather_loop()),
        ("whole middleware call, minus the bare app",
         statistics.median(st.timer(mw, st.same, n) - st.timer(st.bare, st.same, n)
                           for _ in range(3))),
    ]
    del endpointsec
    return rows


def run(m: h.Material, *, sizes: Sequence[int], quick: bool) -> list[dict[str, Any]]:
    """The micro-benchmark for each policy size in ``sizes`` (files from ``m``)."""
    rows: list[dict[str, Any]] = []
    for n in sizes:
        policy = m.policy_files.get(n)
        if policy is None:
            policy = m.root / f"policy-{n}.csv"
            policy.write_text("\n".join(h.policy_lines(n)) + "\n", encoding="utf-8")
        rows.extend(bench_size(m, policy, n, quick=quick))
        for r in rows[-6:]:
            print(f"  {r['kind']:4} {n:>7} lines {r['case']:15} bare {r['bare_us']:7.1f} µs  "
                  f"endpointsec {r['mw_us']:8.1f} µs  added {r['added_us']:8.1f} µs"
                  + (f"  start-up {r['startup_ms']:.0f} ms" if "startup_ms" in r else ""),
                  flush=True)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="endpointsec in-process micro-benchmark")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--sizes", default="10,1000,100000")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    with tempfile.TemporaryDirectory(prefix="endpointsec-micro-") as tmp:
        m = h.make_material(Path(tmp), policy_sizes=sizes)
        rows = run(m, sizes=sizes, quick=args.quick)
    import contrast

    print()
    print(contrast.micro_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
