"""The in-process micro-benchmark: the middleware called directly, no network.

::

    python bench/micro.py [--quick] [--sizes 10,1000,100000] [--tokens 500] [--gc on]

For the ASGI and the WSGI middleware, and a Casbin policy of 10, 1,000 and 100,000
lines, measures per request:

- **miss** (the headline): a new path every time (``GET /orders/{n}``, ``n`` never
  repeated), a bearer token drawn at random from a pool (500 by default, every one
  verified once before timing: the token is known, the request is not), the same
  client certificate (a known connection). What a service with many callers and many
  resources pays on most requests;
- **deny miss**: the same, with ``DELETE``, which the policy denies (403): a denial
  should cost no more than an allow;
- **forwarded miss** (at the 1,000-line policy, or the largest size below it): the
  miss with the certificate forwarded by a trusted proxy instead of the TLS layer, read
  through ``[proxy]``: nginx's escaped PEM (``X-SSL-Client-Cert``; verified again, and
  with ``verify_again = false``) and RFC 9440 ``Client-Cert`` (base64 DER);
- **steady** (secondary): the same request again and again (every cache warm);
- **cold**: the first request of a new middleware (nothing cached), and the start-up
  (configuration read, policy loaded, middleware built).

Each figure is the middleware's time minus the bare app's, called the same way with the
same prepared requests (building the request is in both). Times are process CPU time
(``time.process_time_ns``), medians of alternating repeats. The garbage collector is
disabled while timing (and run before each timed loop) unless ``--gc on``; the output
says which. The certificate reaches the ASGI middleware in the ASGI TLS extension (one
per connection, copied per request as uvicorn does) and the WSGI middleware in
``SSL_CLIENT_CERT``. Uses only the public API (``load_config``, ``ASGIMiddleware``,
``WSGIMiddleware``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import itertools
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))

import apps
import harness as h

#: Order ids for the miss cases: never repeated within a process.
_IDS = itertools.count(10_000_000)

#: Whether the collector runs while timing (``--gc on``); see :func:`_timed`.
GC_DURING_TIMING = False

Make = Callable[[int], dict[str, Any]]


def gc_note() -> str:
    return ("garbage collector enabled while timing" if GC_DURING_TIMING else
            "garbage collector disabled while timing (collected before each timed loop)")


def asgi_scope(m: h.Material, *, path: str, client_pem: str, token: str | None = None,
               method: str = "GET") -> dict[str, Any]:
    """An HTTP scope as uvicorn with endpointsec's protocol class builds it."""
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1", "method": method, "scheme": "https", "path": path,
        "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"127.0.0.1:8443"), (b"user-agent", b"bench"),
                    (b"authorization", f"Bearer {token or m.token}".encode())],
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8443),
        "extensions": {"tls": {
            "server_cert": None, "client_cert_chain": [client_pem],
            "client_cert_name": f"CN={h.CLIENT_CN}", "client_cert_error": None,
            "tls_version": 0x0304, "cipher_suite": 0x1302}},
    }


def wsgi_environ(m: h.Material, *, path: str, client_pem: str, token: str | None = None,
                 method: str = "GET") -> dict[str, Any]:
    """A WSGI environ as a TLS-terminating server that exports the certificate builds it."""
    return {
        "REQUEST_METHOD": method, "SCRIPT_NAME": "", "PATH_INFO": path, "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8443", "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": "127.0.0.1:8443",
        "HTTP_AUTHORIZATION": f"Bearer {token or m.token}",
        "SSL_CLIENT_CERT": client_pem, "SSL_CLIENT_VERIFY": "SUCCESS",
        "wsgi.version": (1, 0), "wsgi.url_scheme": "https", "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


class _Send:
    """Records the statuses that differ from the expected one."""

    def __init__(self, expect: int) -> None:
        self.expect = expect
        self.status = 0
        self.wrong = 0

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            if self.status != self.expect:
                self.wrong += 1


class _StartResponse:
    def __init__(self, expect: int) -> None:
        self.prefix = f"{expect} "
        self.status = ""
        self.wrong = 0

    def __call__(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
                 ) -> Any:
        self.status = status
        if not status.startswith(self.prefix):
            self.wrong += 1
        return None


def _timed(loop: Callable[[], None]) -> int:
    """Process CPU nanoseconds of ``loop()``, the collector off unless ``--gc on``."""
    gc.collect()
    was = gc.isenabled()
    if not GC_DURING_TIMING:
        gc.disable()
    try:
        t0 = time.process_time_ns()
        loop()
        return time.process_time_ns() - t0
    finally:
        if was:
            gc.enable()


def time_asgi(app: Any, make_scope: Make, n: int, *, expect: int = 200) -> float:
    """Microseconds per call of ``app`` over ``n`` calls (every status must be
    ``expect``)."""
    send = _Send(expect)

    async def calls() -> None:
        for i in range(n):
            await app(make_scope(i), _receive, send)

    ns = _timed(lambda: asyncio.run(calls()))
    if send.wrong:
        raise RuntimeError(f"{send.wrong} ASGI requests were not answered {expect} "
                           f"(last: {send.status})")
    return ns / 1000 / n


def time_wsgi(app: Any, make_environ: Make, n: int, *, expect: int = 200) -> float:
    """Microseconds per call of the WSGI ``app`` (body consumed; every status must be
    ``expect``)."""
    start = _StartResponse(expect)

    def calls() -> None:
        for i in range(n):
            body = app(make_environ(i), start)
            for _ in body:
                pass

    ns = _timed(calls)
    if start.wrong:
        raise RuntimeError(f"{start.wrong} WSGI requests were not answered {expect} "
                           f"(last: {start.status!r})")
    return ns / 1000 / n


def _client_pem(m: h.Material) -> str:
    """The leaf alone, as a server passes it (the chain file may hold intermediates)."""
    end = "-----END CERTIFICATE-----"
    return m.client_cert.read_text().split(end)[0] + end + "\n"


def _client_der_b64(m: h.Material) -> str:
    body = _client_pem(m).split("-----")[2]
    return "".join(body.split())


@dataclass(frozen=True)
class Stack:
    """How to build, call and feed one kind of middleware with one certificate source."""

    kind: str  # "asgi" or "wsgi"
    source: str  # "tls" or a forwarded format: "nginx", "client-cert"
    bare: Any
    build: Callable[[], Any]
    #: make(method, new_path, pick_token) -> a request maker for the timer.
    make: Callable[[str, bool, bool], Make]
    tokens: tuple[str, ...]

    def time(self, app: Any, make: Make, n: int, *, expect: int = 200) -> float:
        timer = time_asgi if self.kind == "asgi" else time_wsgi
        return timer(app, make, n, expect=expect)


def _forwarded_headers(m: h.Material, source: str) -> list[tuple[str, str]]:
    if source == "nginx":
        return [("x-ssl-client-cert", quote(_client_pem(m), safe="")),
                ("x-ssl-client-verify", "SUCCESS")]
    if source == "client-cert":
        return [("client-cert", f":{_client_der_b64(m)}:")]
    raise ValueError(source)


def asgi_stack(m: h.Material, cfg: Path, *, source: str = "tls",
               tokens: Sequence[str] = ()) -> Stack:
    """The ASGI middleware around :func:`apps.bare`; the certificate in the TLS extension
    (``source="tls"``) or in a trusted proxy's header."""
    import endpointsec

    pool = tuple(tokens) or (m.token,)
    auth = [f"Bearer {t}".encode() for t in pool]
    base = asgi_scope(m, path=h.ORDER_PATH, client_pem=_client_pem(m))
    tls = base["extensions"]["tls"]
    common = [(b"host", b"127.0.0.1:8443"), (b"user-agent", b"bench")]
    if source != "tls":
        common += [(k.encode(), v.encode("latin-1")) for k, v in _forwarded_headers(m, source)]
        base["scheme"] = "http"
        base["extensions"] = {}
    rnd = random.Random(7)

    def make(method: str, new_path: bool, pick_token: bool) -> Make:
        def scope(i: int) -> dict[str, Any]:
            s = dict(base)
            if source == "tls":  # one extension per connection, copied per request
                s["extensions"] = {"tls": {**tls, "client_cert_chain":
                                           list(tls["client_cert_chain"])}}
            if new_path:
                path = f"/orders/{next(_IDS)}"
                s["path"] = path
                s["raw_path"] = path.encode()
            s["method"] = method
            token = auth[rnd.randrange(len(auth))] if pick_token else auth[0]
            s["headers"] = [*common, (b"authorization", token)]
            return s
        return scope

    def build() -> Any:
        return endpointsec.ASGIMiddleware(apps.bare, config=endpointsec.load_config(cfg))

    return Stack("asgi", source, apps.bare, build, make, pool)


def wsgi_stack(m: h.Material, cfg: Path, *, source: str = "tls",
               tokens: Sequence[str] = ()) -> Stack:
    """The WSGI middleware around :func:`apps.bare_wsgi`; the certificate in
    ``SSL_CLIENT_CERT`` (``source="tls"``) or in a trusted proxy's header."""
    import endpointsec

    pool = tuple(tokens) or (m.token,)
    auth = [f"Bearer {t}" for t in pool]
    base = wsgi_environ(m, path=h.ORDER_PATH, client_pem=_client_pem(m))
    if source != "tls":
        del base["SSL_CLIENT_CERT"], base["SSL_CLIENT_VERIFY"]
        base["wsgi.url_scheme"] = "http"
        for k, v in _forwarded_headers(m, source):
            base["HTTP_" + k.upper().replace("-", "_")] = v
    rnd = random.Random(7)

    def make(method: str, new_path: bool, pick_token: bool) -> Make:
        def environ(i: int) -> dict[str, Any]:
            e = dict(base)
            if new_path:
                e["PATH_INFO"] = f"/orders/{next(_IDS)}"
            e["REQUEST_METHOD"] = method
            e["HTTP_AUTHORIZATION"] = auth[rnd.randrange(len(auth))] if pick_token else auth[0]
            return e
        return environ

    def build() -> Any:
        return endpointsec.WSGIMiddleware(apps.bare_wsgi, config=endpointsec.load_config(cfg))

    return Stack("wsgi", source, apps.bare_wsgi, build, make, pool)


def _warm_tokens(st: Stack, mw: Any) -> None:
    """Every token of the pool through the middleware once (each on a new path), in
    one loop."""
    one = st.make("GET", True, False)
    if st.kind == "asgi":
        headers = [(b"authorization", f"Bearer {t}".encode()) for t in st.tokens]

        def scope(i: int) -> dict[str, Any]:
            s = one(i)
            s["headers"] = [*s["headers"][:-1], headers[i]]
            return s
        st.time(mw, scope, len(headers))
    else:
        values = [f"Bearer {t}" for t in st.tokens]

        def environ(i: int) -> dict[str, Any]:
            e = one(i)
            e["HTTP_AUTHORIZATION"] = values[i]
            return e
        st.time(mw, environ, len(values))


#: (case, method, new path, token from the pool, expected status)
CASES = (
    ("miss", "GET", True, True, 200),
    ("deny miss", h.DENY_METHOD, True, True, 403),
    ("steady", "GET", False, False, 200),
)


#: Forwarded-certificate misses: (configuration source in harness.PROXY_SOURCES, the
#: header format sent, a suffix for the case name).
FORWARDED = (
    ("nginx", "nginx", ""),
    ("nginx-noverify", "nginx", " (verify_again = false)"),
    ("client-cert", "client-cert", ""),
)


def bench_stack(st: Stack, n_lines: int, *, quick: bool, cold: bool = True,
                cases: Sequence[tuple[str, str, bool, bool, int]] = CASES,
                n: int | None = None, repeats: int | None = None) -> list[dict[str, Any]]:
    """Cold, miss, deny-miss and steady figures for one stack and policy size (``n``
    calls per timed loop, ``repeats`` alternating loops: defaults by ``quick``)."""
    n = n or (2000 if quick else 10000)
    repeats = repeats or (3 if quick else 5)
    label = "" if st.source == "tls" else f", forwarded {st.source}"
    rows: list[dict[str, Any]] = []
    mw: Any = None
    if cold:
        cold_samples = 1 if n_lines >= 100_000 else 2 if quick else 5
        startups: list[float] = []
        firsts: list[float] = []
        first = st.make("GET", False, False)
        bare_first = st.time(st.bare, first, 1)
        for _ in range(cold_samples):
            mw = None
            gc.collect()
            t0 = time.perf_counter()
            mw = st.build()
            startups.append((time.perf_counter() - t0) * 1000)
            firsts.append(st.time(mw, first, 1))
        c = statistics.median(firsts)
        rows.append({"kind": st.kind, "policy_lines": n_lines, "case": "cold" + label,
                     "bare_us": bare_first, "mw_us": c, "added_us": c - bare_first,
                     "startup_ms": statistics.median(startups)})
    else:
        mw = st.build()
    _warm_tokens(st, mw)
    st.time(mw, st.make("GET", False, False), 200)
    for case, method, new_path, pick_token, expect in cases:
        make = st.make(method, new_path, pick_token)
        st.time(mw, make, 50, expect=expect)
        bare_us: list[float] = []
        mw_us: list[float] = []
        for _ in range(repeats):
            bare_us.append(st.time(st.bare, make, n))
            mw_us.append(st.time(mw, make, n, expect=expect))
        b, w = statistics.median(bare_us), statistics.median(mw_us)
        rows.append({"kind": st.kind, "policy_lines": n_lines, "case": case + label,
                     "bare_us": b, "mw_us": w, "added_us": w - b})
    return rows


def bench_size(m: h.Material, policy: Path, n_lines: int, *, quick: bool,
               kinds: Sequence[str] = ("asgi", "wsgi"), forwarded: bool = False,
               tokens: Sequence[str] = (), n: int | None = None,
               repeats: int | None = None) -> list[dict[str, Any]]:
    """All cases for one policy size (and the forwarded-certificate misses when
    ``forwarded``)."""
    sizing = {"n": n, "repeats": repeats}
    rows: list[dict[str, Any]] = []
    for kind in kinds:
        build_stack = asgi_stack if kind == "asgi" else wsgi_stack
        source = "asgi-tls" if kind == "asgi" else "wsgi-environ"
        cfg = h.write_config(m, f"micro-{kind}-{n_lines}", policy=policy, source=source)
        rows.extend(bench_stack(build_stack(m, cfg, tokens=tokens), n_lines, quick=quick,
                                **sizing))
        if forwarded:
            for config_source, header, suffix in FORWARDED:
                cfg = h.write_config(m, f"micro-{kind}-{n_lines}-{config_source}",
                                     policy=policy, source=config_source)
                st = build_stack(m, cfg, source=header, tokens=tokens)
                rows.extend(bench_stack(st, n_lines, quick=quick, cold=False,
                                        cases=[(f"miss{suffix}", *CASES[0][1:])],
                                        **sizing))
    return rows


def run(m: h.Material, *, sizes: Sequence[int], quick: bool,
        tokens: int | None = None) -> list[dict[str, Any]]:
    """The micro-benchmark for each policy size in ``sizes`` (files from ``m``)."""
    pool = m.tokens[:tokens] if tokens else m.tokens
    smaller = [s for s in sizes if s <= 1000]
    fwd_size = max(smaller) if smaller else min(sizes)
    rows: list[dict[str, Any]] = []
    print(f"  {gc_note()}; {len(pool)} tokens in the pool", flush=True)
    for n in sizes:
        policy = m.policy_files.get(n)
        if policy is None:
            policy = m.root / f"policy-{n}.csv"
            policy.write_text("\n".join(h.policy_lines(n)) + "\n", encoding="utf-8")
        new = bench_size(m, policy, n, quick=quick, forwarded=n == fwd_size, tokens=pool)
        for r in new:
            print(f"  {r['kind']:4} {n:>7} lines {r['case']:30} bare {r['bare_us']:7.1f} µs  "
                  f"endpointsec {r['mw_us']:8.1f} µs  added {r['added_us']:8.1f} µs"
                  + (f"  start-up {r['startup_ms']:.0f} ms" if "startup_ms" in r else ""),
                  flush=True)
        rows.extend(new)
    return rows


_ORDER = ("miss", "deny miss", "miss, forwarded nginx",
          "miss (verify_again = false), forwarded nginx", "miss, forwarded client-cert",
          "steady", "cold")


def table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a Markdown table, the miss first, then the start-up times."""
    def fmt(v: float) -> str:
        return "n/a" if v != v else f"{v:,.1f}"

    def rank(r: dict[str, Any]) -> tuple[int, int, str]:
        case = r["case"]
        return (_ORDER.index(case) if case in _ORDER else len(_ORDER), r["policy_lines"],
                r["kind"])

    ordered = sorted(rows, key=rank)
    head = (f"Added cost per request: the middleware minus the bare app; {gc_note()}. "
            "*miss*: a new path, a known token (pool, all warmed), a known connection; "
            "*deny miss*: the same, denied by the policy (403); *forwarded*: the "
            "certificate in a trusted proxy's header; *steady*: the identical request; "
            "*cold*: the first request of a new middleware.\n\n"
            "| stack | policy lines | case | bare µs | with endpointsec µs | added µs |\n"
            "|---|---:|---|---:|---:|---:|\n")
    lines = [f"| {r['kind'].upper()} | {r['policy_lines']:,} | {r['case']} "
             f"| {fmt(r['bare_us'])} | {fmt(r['mw_us'])} | **{fmt(r['added_us'])}** |"
             if r["case"] == "miss" else
             f"| {r['kind'].upper()} | {r['policy_lines']:,} | {r['case']} "
             f"| {fmt(r['bare_us'])} | {fmt(r['mw_us'])} | {fmt(r['added_us'])} |"
             for r in ordered]
    startup = [r for r in rows if "startup_ms" in r]
    tail = ""
    if startup:
        tail = ("\nStart-up (configuration read, policy loaded, middleware built): "
                + ", ".join(f"{r['kind'].upper()} {r['policy_lines']:,} lines "
                            f"{r['startup_ms']:,.1f} ms" for r in startup) + ".\n")
    return head + "\n".join(lines) + "\n" + tail


def main(argv: Sequence[str] | None = None) -> int:
    global GC_DURING_TIMING
    p = argparse.ArgumentParser(description="endpointsec in-process micro-benchmark")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--sizes", default="10,1000,100000")
    p.add_argument("--tokens", type=int, default=500,
                   help="the miss cases' token pool (every one warmed)")
    p.add_argument("--gc", choices=("off", "on"), default="off",
                   help="the garbage collector while timing (default off)")
    args = p.parse_args(argv)
    GC_DURING_TIMING = args.gc == "on"
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    with tempfile.TemporaryDirectory(prefix="endpointsec-micro-") as tmp:
        m = h.make_material(Path(tmp), policy_sizes=sizes, tokens=args.tokens)
        rows = run(m, sizes=sizes, quick=args.quick)
    print()
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
