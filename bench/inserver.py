"""Where the in-process time goes *inside a loaded server* (configuration 3).

::

    python bench/inserver.py [--duration 5] [--policy-lines 1000]

Runs uvicorn (endpointsec's ``HttpToolsProtocol``, the ASGI middleware) in this process,
loads it with wrk as ``contrast.py`` does, and times each step of the middleware with the
thread's CPU clock: the certificate source, chain verification, token reading and
verification, path routing, the whole gather, decide, and the app itself. The
micro-benchmark (``micro.py``) times the same steps in a hot loop; inside a server
that also runs TLS and sockets between two requests they cost more, and this shows by
how much. Steps whose part changed shape are left out. Diagnostic only: the wrappers
add about a microsecond each.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import os
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import apps
import harness as h

_clock = time.thread_time_ns


def _wrap(acc: dict[str, int], obj: Any, name: str, label: str) -> None:
    fn = getattr(obj, name, None)
    if fn is None:
        return
    if inspect.iscoroutinefunction(fn):
        async def awrapper(*a: Any, **k: Any) -> Any:
            t0 = _clock()
            try:
                return await fn(*a, **k)
            finally:
                acc[label] = acc.get(label, 0) + _clock() - t0
        wrapper: Any = awrapper
    else:
        def wrapper(*a: Any, **k: Any) -> Any:
            t0 = _clock()
            try:
                return fn(*a, **k)
            finally:
                acc[label] = acc.get(label, 0) + _clock() - t0
    with contextlib.suppress(AttributeError, TypeError):  # slotted or frozen: not timed
        setattr(obj, name, wrapper)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--policy-lines", type=int, default=1000)
    p.add_argument("--connections", type=int, default=16)
    args = p.parse_args(argv)
    import uvicorn

    from endpointsec.servers.uvicorn import HttpToolsProtocol

    with tempfile.TemporaryDirectory(prefix="endpointsec-inserver-") as tmp:
        m = h.make_material(Path(tmp), policy_sizes=(args.policy_lines,))
        shim = h.build_shim(Path(tmp))
        cfg = h.write_config(m, "inserver", policy=m.policy_files[args.policy_lines],
                             source="asgi-tls")
        os.environ["ENDPOINTSEC_BENCH_CONFIG"] = str(cfg)
        mw = apps.make_inproc()
        gk = mw.gatekeeper
        acc: dict[str, int] = {}
        for obj, name, label in (
            (gk.sources[0] if gk.sources else None, "from_asgi", "certificate source"),
            (gk.verifier, "verify", "chain verification"),
            (gk, "_read_token", "token read"),
            (gk.token_verifier, "averify", "token verification"),
            (gk, "_route", "path normalization + route"),
            (gk, "gather_asgi", "gather (all of the above and more)"),
            (gk, "decide", "decide"),
        ):
            if obj is not None:
                _wrap(acc, obj, name, label)
        inner = mw.app

        async def app_timed(scope: Any, receive: Any, send: Any) -> None:
            t0 = _clock()
            await inner(scope, receive, send)
            acc["the app (includes uvicorn's TLS write)"] = (
                acc.get("the app (includes uvicorn's TLS write)", 0) + _clock() - t0)

        mw.app = app_timed
        count = [0]

        async def timed(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await mw(scope, receive, send)
                return
            t0 = _clock()
            await mw(scope, receive, send)
            acc["middleware + app"] = acc.get("middleware + app", 0) + _clock() - t0
            count[0] += 1

        port = h.free_port()
        server = uvicorn.Server(uvicorn.Config(
            timed, host=h.HOST, port=port, http=HttpToolsProtocol, loop="asyncio",
            lifespan="off", log_level="warning", access_log=False,
            ssl_certfile=str(m.server_cert), ssl_keyfile=str(m.server_key),
            ssl_ca_certs=str(m.ca), ssl_cert_reqs=2))
        result: dict[str, Any] = {}

        def load() -> None:
            try:
                h.wait_port(port)
                url = f"https://{h.HOST}:{port}{h.ORDER_PATH}"
                h.run_wrk(url, duration=1, connections=args.connections, shim=shim,
                          material=m, token=m.token)
                acc.clear()
                count[0] = 0
                t0 = time.process_time()
                r = h.run_wrk(url, duration=args.duration, connections=args.connections,
                              shim=shim, material=m, token=m.token)
                result["cpu_us"] = (time.process_time() - t0) * 1e6 / max(r.requests, 1)
                result["requests"] = r.requests
            finally:
                server.should_exit = True

        loader = threading.Thread(target=load, daemon=True)
        loader.start()
        server.run()
        loader.join(timeout=args.duration + 60)
    n = max(count[0], 1)
    print(f"{result.get('requests', 0)} requests; server process CPU "
          f"{result.get('cpu_us', float('nan')):.1f} µs per request\n")
    print("| step | µs per request |\n|---|---:|")
    for label, ns in sorted(acc.items(), key=lambda kv: -kv[1]):
        print(f"| {label} | {ns / 1000 / n:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
