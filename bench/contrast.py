"""In-process vs out-of-process sidecars: the contrast benchmark (issue 8).

::

    python bench/contrast.py [--quick] --out bench/results/

Starts every configuration on 127.0.0.1 (same app, same policy, same client
certificate and token), checks that each answers the good request with 200 and, where
it checks, refuses a request without a token (401) and a request outside the policy
(403); then loads each with wrk (HTTP/1.1 keep-alive, 16 connections, one thread) in
several rounds that alternate the configurations, and once more with a TLS handshake
per request (``Connection: close``). Measures req/s, p50/p90/p99, server CPU per request
(utime + stime over every process of the configuration, children included) and the
summed RSS. Then the in-process micro-benchmark (``bench/micro.py``). Writes
``report.md``, ``results.json`` and PNG charts to ``--out`` and prints the table.

Configurations (the issue's numbering; ``2p``, ``2n`` and ``4r`` are references):

1. uvicorn, plain HTTP (the floor);
2. uvicorn mTLS, no checks (the limit, the base of every ratio);
   (``2p``: the same with endpointsec's certificate-passing protocol class, no middleware:
   what passing the certificate to the app costs);
3. endpointsec in-process: uvicorn with the certificate-passing protocol and the ASGI
   middleware (certificate + JWT + Casbin), its recent-decisions cache on (the default);
4. the same for WSGI: gunicorn (gthread) + Flask + the WSGI middleware
   (``4r``: gunicorn + Flask mTLS, no checks);
5. nginx terminating mTLS, the app with endpointsec reading the forwarded certificate
   (``2n``: nginx mTLS sidecar in front of the bare app, no checks);
6. HAProxy 2.6 doing mTLS + native ``jwt_verify`` + an ACL;
7. ext-authz: nginx ``auth_request`` to a separate endpointsec process (the OPA
   pattern), then the bare app.

Needs wrk, nginx, haproxy and gcc (``apt-get install wrk nginx haproxy gcc libssl-dev``);
a configuration whose program is missing is skipped and reported as such.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as h

TARGETS_TEXT = {
    "cpu_vs_2": "in-process CPU per request <= 1.15x configuration 2",
    "cpu_vs_6": "in-process CPU per request <= 0.7x the HAProxy sidecar (6)",
    "rps_vs_2": "in-process req/s >= 0.9x configuration 2",
    "p99_vs_2": "in-process p99 <= 1.2x configuration 2",
    "added_us": "steady-state added cost in-process <= 15 us per request (micro-benchmark)",
}


@dataclass(frozen=True)
class Setup:
    """One configuration: how to start it and what it must answer."""

    key: str
    label: str
    tls: bool
    checks: bool
    needs: tuple[str, ...]
    start: Callable[[Context], tuple[int, list[h.Proc]]]


@dataclass
class Context:
    """What the start functions share."""

    material: h.Material
    policy: Path
    log_dir: Path
    #: CPUs the servers run on (taskset list), None: anywhere.
    server_cpus: str | None = None
    procs: list[h.Proc] = field(default_factory=list)

    def spawn(self, name: str, argv: Sequence[str], *, port: int,
              env: dict[str, str] | None = None) -> h.Proc:
        proc = h.Proc.start(name, h.pinned(argv, self.server_cpus), log_dir=self.log_dir,
                            env=env)
        self.procs.append(proc)
        try:
            h.wait_port(port, proc=proc.popen)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{name} did not start: {exc}\n{proc.tail()}") from None
        return proc

    def config(self, name: str, source: str) -> dict[str, str]:
        path = h.write_config(self.material, name, policy=self.policy, source=source)
        return {"ENDPOINTSEC_BENCH_CONFIG": str(path)}


UVICORN_TLS_PROTOCOL = "endpointsec.servers.uvicorn:HttpToolsProtocol"


def _c1(ctx: Context) -> tuple[int, list[h.Proc]]:
    port = h.free_port()
    return port, [ctx.spawn("c1-uvicorn-http", h.uvicorn_argv("apps:bare", port=port),
                            port=port)]


def _c2(ctx: Context) -> tuple[int, list[h.Proc]]:
    port = h.free_port()
    return port, [ctx.spawn("c2-uvicorn-mtls",
                            h.uvicorn_argv("apps:bare", port=port, tls=ctx.material),
                            port=port)]


def _c2p(ctx: Context) -> tuple[int, list[h.Proc]]:
    port = h.free_port()
    argv = h.uvicorn_argv("apps:bare", port=port, tls=ctx.material, http=UVICORN_TLS_PROTOCOL)
    return port, [ctx.spawn("c2p-uvicorn-mtls-protocol", argv, port=port)]


def _c3(ctx: Context) -> tuple[int, list[h.Proc]]:
    port = h.free_port()
    argv = h.uvicorn_argv("apps:make_inproc", port=port, tls=ctx.material, factory=True,
                          http=UVICORN_TLS_PROTOCOL)
    return port, [ctx.spawn("c3-inprocess-asgi", argv, port=port,
                            env=ctx.config("c3", "asgi-tls"))]


def _c4r(ctx: Context) -> tuple[int, list[h.Proc]]:
    port = h.free_port()
    argv = h.gunicorn_argv("apps:make_flask()", port=port, tls=ctx.material)
    return port, [ctx.spawn("c4r-gunicorn-flask-mtls", argv, port=port)]


def _c4(ctx: Context) -> tuple[int, list[h.Proc]]:
    port = h.free_port()
    argv = h.gunicorn_argv("apps:make_flask_inproc()", port=port, tls=ctx.material)
    return port, [ctx.spawn("c4-inprocess-wsgi", argv, port=port,
                            env=ctx.config("c4", "gunicorn"))]


def _nginx(ctx: Context, name: str, *, upstream_port: int, forward_cert: bool,
           authz_port: int | None = None) -> tuple[int, h.Proc]:
    port = h.free_port()
    m = ctx.material
    tmp = m.root / f"nginx-{name}"
    tmp.mkdir(parents=True, exist_ok=True)
    conf = tmp / "nginx.conf"
    conf.write_text(h.nginx_conf(m, name=name, port=port, upstream_port=upstream_port,
                                 forward_cert=forward_cert, authz_port=authz_port))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = ctx.spawn(f"{name}-nginx", [nginx, "-p", str(tmp), "-c", str(conf),
                                       "-e", str(tmp / "error.log")], port=port)
    return port, proc


def _c2n(ctx: Context) -> tuple[int, list[h.Proc]]:
    up = h.free_port()
    app = ctx.spawn("c2n-app", h.uvicorn_argv("apps:bare", port=up), port=up)
    port, nginx = _nginx(ctx, "c2n", upstream_port=up, forward_cert=False)
    return port, [nginx, app]


def _c5(ctx: Context) -> tuple[int, list[h.Proc]]:
    up = h.free_port()
    app = ctx.spawn("c5-app", h.uvicorn_argv("apps:make_inproc", port=up, factory=True),
                    port=up, env=ctx.config("c5", "nginx"))
    port, nginx = _nginx(ctx, "c5", upstream_port=up, forward_cert=True)
    return port, [nginx, app]


def _c6(ctx: Context) -> tuple[int, list[h.Proc]]:
    up = h.free_port()
    app = ctx.spawn("c6-app", h.uvicorn_argv("apps:bare", port=up), port=up)
    port = h.free_port()
    cfg = ctx.material.root / "haproxy.cfg"
    cfg.write_text(h.haproxy_cfg(ctx.material, port=port, upstream_port=up))
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    proxy = ctx.spawn("c6-haproxy", [haproxy, "-db", "-f", str(cfg)], port=port)
    return port, [proxy, app]


def _c7(ctx: Context) -> tuple[int, list[h.Proc]]:
    up = h.free_port()
    app = ctx.spawn("c7-app", h.uvicorn_argv("apps:bare", port=up), port=up)
    az = h.free_port()
    authz = ctx.spawn("c7-authz", h.uvicorn_argv("apps:make_inproc", port=az, factory=True),
                      port=az, env=ctx.config("c7", "nginx"))
    port, nginx = _nginx(ctx, "c7", upstream_port=up, forward_cert=False, authz_port=az)
    return port, [nginx, authz, app]


SETUPS: tuple[Setup, ...] = (
    Setup("1", "uvicorn HTTP (floor)", False, False, (), _c1),
    Setup("2", "uvicorn mTLS, no checks", True, False, (), _c2),
    Setup("2p", "uvicorn mTLS + endpointsec protocol, no checks", True, False, (), _c2p),
    Setup("3", "endpointsec in-process (uvicorn)", True, True, (), _c3),
    Setup("4r", "gunicorn+Flask mTLS, no checks", True, False, (), _c4r),
    Setup("4", "endpointsec in-process (gunicorn+Flask)", True, True, (), _c4),
    Setup("2n", "nginx mTLS sidecar, no checks", True, False, ("nginx",), _c2n),
    Setup("5", "nginx mTLS + endpointsec (forwarded cert)", True, True, ("nginx",), _c5),
    Setup("6", "HAProxy mTLS + jwt_verify + ACL", True, True, ("haproxy",), _c6),
    Setup("7", "nginx + ext-authz (endpointsec service)", True, True, ("nginx",), _c7),
)


@dataclass
class Running:
    setup: Setup
    port: int
    procs: list[h.Proc]
    probes: dict[str, int]

    @property
    def url(self) -> str:
        scheme = "https" if self.setup.tls else "http"
        return f"{scheme}://{h.HOST}:{self.port}{h.ORDER_PATH}"

    def pids(self) -> list[int]:
        return h.process_tree(p.pid for p in self.procs)


def run_probes(r: Running, m: h.Material) -> list[str]:
    """Check the configuration answers as it should; returns the problems found."""
    tls = m if r.setup.tls else None
    good = h.probe(r.port, tls=tls, token=m.token)
    r.probes["good"] = good
    problems = [] if good == 200 else [f"good request answered {good}, not 200"]
    if r.setup.checks:
        no_token = h.probe(r.port, tls=tls)
        outside = h.probe(r.port, tls=tls, token=m.token, path="/admin/users")
        r.probes["no_token"] = no_token
        r.probes["outside_policy"] = outside
        if no_token != 401:
            problems.append(f"request without a token answered {no_token}, not 401")
        if outside != 403:
            problems.append(f"request outside the policy answered {outside}, not 403")
    if r.setup.tls:
        no_cert = h.probe(r.port, tls=tls, token=m.token, client_cert=False)
        r.probes["no_client_cert"] = no_cert
        if no_cert not in (0, 400, 401, 403, 495, 496):
            problems.append(f"request without a client certificate answered {no_cert}")
    return problems


@dataclass
class Sample:
    key: str
    mode: str
    round: int
    rps: float
    p50: float
    p90: float
    p99: float
    cpu_us: float
    rss_kib: int
    processes: int
    requests: int
    errors: int
    non2xx: int


def measure(r: Running, m: h.Material, shim: Path, *, mode: str, rnd: int, duration: float,
            connections: int, client_cpus: str | None) -> Sample:
    pids = r.pids()
    before = h.cpu_ticks(pids)
    res = h.run_wrk(r.url, duration=duration, connections=connections,
                    shim=shim if r.setup.tls else None, material=m, token=m.token,
                    keepalive=(mode == "keepalive"), cpus=client_cpus)
    after = h.cpu_ticks(r.pids())
    cpu = h.cpu_seconds_between(before, after)
    return Sample(key=r.setup.key, mode=mode, round=rnd, rps=res.rps, p50=res.p50,
                  p90=res.p90, p99=res.p99,
                  cpu_us=cpu * 1e6 / res.requests if res.requests else float("nan"),
                  rss_kib=h.rss_kib(r.pids()), processes=len(pids), requests=res.requests,
                  errors=res.errors, non2xx=res.non2xx)


def summarize(samples: list[Sample], keys: list[str], mode: str) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for key in keys:
        ss = [s for s in samples if s.key == key and s.mode == mode]
        if not ss:
            continue
        out[key] = {f: h.median(getattr(s, f) for s in ss)
                    for f in ("rps", "p50", "p90", "p99", "cpu_us", "rss_kib")}
        out[key]["rounds"] = len(ss)
        out[key]["errors"] = sum(s.errors + s.non2xx for s in ss)
    base = out.get("2")
    for row in out.values():
        for f in ("rps", "p50", "p99", "cpu_us"):
            row[f"{f}_x2"] = h.ratio(row[f], base[f]) if base else float("nan")
    return out


def evaluate_targets(summary: dict[str, dict[str, float]],
                     micro: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    c3 = summary.get("3")
    c6 = summary.get("6")
    res: dict[str, dict[str, Any]] = {}

    def put(name: str, value: float, limit: float, *, upper: bool) -> None:
        met = (value <= limit) if upper else (value >= limit)
        res[name] = {"value": value, "limit": limit,
                     "met": bool(met) if value == value else None}

    if c3:
        put("cpu_vs_2", c3["cpu_us_x2"], 1.15, upper=True)
        if c6:
            put("cpu_vs_6", h.ratio(c3["cpu_us"], c6["cpu_us"]), 0.7, upper=True)
        put("rps_vs_2", c3["rps_x2"], 0.9, upper=False)
        put("p99_vs_2", c3["p99_x2"], 1.2, upper=True)
    steady = [row["added_us"] for row in micro
              if row["kind"] == "asgi" and row["case"] == "steady"]
    if steady:
        put("added_us", max(steady), 15.0, upper=True)
    return res


# --------------------------------------------------------------------------- output


def _fmt(v: float, digits: int = 0) -> str:
    if v != v:
        return "n/a"
    return f"{v:,.{digits}f}"


def table(summary: dict[str, dict[str, float]], labels: dict[str, str]) -> str:
    head = ("| # | configuration | req/s | p50 ms | p90 ms | p99 ms | CPU µs/req | RSS MiB "
            "| req/s vs 2 | p99 vs 2 | CPU vs 2 |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    rows = []
    for key, r in summary.items():
        rows.append(
            f"| {key} | {labels[key]} | {_fmt(r['rps'])} | {_fmt(r['p50'] / 1000, 2)} "
            f"| {_fmt(r['p90'] / 1000, 2)} | {_fmt(r['p99'] / 1000, 2)} "
            f"| {_fmt(r['cpu_us'])} | {_fmt(r['rss_kib'] / 1024, 1)} "
            f"| {_fmt(r['rps_x2'], 2)} | {_fmt(r['p99_x2'], 2)} | {_fmt(r['cpu_us_x2'], 2)} |")
    return head + "\n".join(rows) + "\n"


def micro_table(micro: list[dict[str, Any]]) -> str:
    head = ("| stack | policy lines | case | bare µs | with endpointsec µs | added µs |\n"
            "|---|---:|---|---:|---:|---:|\n")
    rows = [f"| {r['kind'].upper()} | {r['policy_lines']:,} | {r['case']} "
            f"| {_fmt(r['bare_us'], 1)} | {_fmt(r['mw_us'], 1)} | {_fmt(r['added_us'], 1)} |"
            for r in micro]
    return head + "\n".join(rows) + "\n"


def steps_table(steps: list[tuple[str, float]]) -> str:
    return ("| step | µs |\n|---|---:|\n"
            + "\n".join(f"| {name} | {_fmt(us, 1)} |" for name, us in steps) + "\n")


def targets_md(targets: dict[str, dict[str, Any]]) -> str:
    lines = ["| target | measured | limit | result |", "|---|---:|---:|---|"]
    for name, t in targets.items():
        unit = " µs" if name == "added_us" else "x"
        verdict = {True: "met", False: "**missed**", None: "n/a"}[t["met"]]
        lines.append(f"| {TARGETS_TEXT[name]} | {_fmt(t['value'], 2)}{unit} "
                     f"| {t['limit']}{unit} | {verdict} |")
    return "\n".join(lines) + "\n"


def charts(summary: dict[str, dict[str, float]], labels: dict[str, str], out: Path,
           *, suffix: str = "", stem: str = "") -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no charts (pip install matplotlib)",
              file=sys.stderr)
        return []
    keys = list(summary)
    names = [f"{k}: {labels[k]}" for k in keys]
    ys = list(range(len(keys)))[::-1]
    written: list[Path] = []

    fig, ax = plt.subplots(figsize=(8, 0.42 * len(keys) + 1.2), dpi=80)
    cpu = [summary[k]["cpu_us"] for k in keys]
    colors = ["#2b7bba" if k in ("3", "4", "5") else
              "#c0504d" if k in ("6", "7") else "#9a9a9a" for k in keys]
    ax.barh(ys, cpu, color=colors)
    for y, v in zip(ys, cpu, strict=True):
        ax.text(v, y, f" {v:.0f}", va="center", fontsize=8)
    if "2" in summary:
        ax.axvline(summary["2"]["cpu_us"], color="#555555", linestyle="--", linewidth=0.8)
    ax.set_yticks(ys, names, fontsize=8)
    ax.set_xlabel("server CPU per request (µs, all processes; lower is better)")
    ax.set_title("CPU per request by configuration" + suffix, fontsize=10)
    ax.margins(x=0.15)
    fig.tight_layout()
    path = out / f"cpu_per_request{stem}.png"
    fig.savefig(path)
    plt.close(fig)
    written.append(path)

    fig, ax = plt.subplots(figsize=(8, 0.42 * len(keys) + 1.2), dpi=80)
    height = 0.27
    for i, (f, color) in enumerate((("p50", "#7fb3d5"), ("p90", "#2b7bba"),
                                    ("p99", "#1b4f72"))):
        vals = [summary[k][f] / 1000 for k in keys]
        ax.barh([y + (1 - i) * height for y in ys], vals, height=height, color=color,
                label=f)
    ax.set_yticks(ys, names, fontsize=8)
    ax.set_xlabel("latency (ms, 16 connections; lower is better)")
    ax.set_title("Latency percentiles by configuration" + suffix, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / f"latency{stem}.png"
    fig.savefig(path)
    plt.close(fig)
    written.append(path)
    return written


def write_report(out: Path, *, args: argparse.Namespace, labels: dict[str, str],
                 summaries: dict[str, dict[str, dict[str, float]]],
                 micro: list[dict[str, Any]], steps: list[tuple[str, float]],
                 targets: dict[str, dict[str, Any]],
                 probes: dict[str, dict[str, int]], skipped: dict[str, str],
                 chart_files: list[Path], started: float, env: dict[str, str]) -> Path:
    parts = [
        "# endpointsec contrast benchmark: in-process vs sidecars\n",
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}, "
        f"{'quick' if args.quick else 'full'} mode, {time.time() - started:.0f} s. "
        f"{env['machine']}. wrk {args.connections} connections, 1 thread, "
        f"{args.duration:.0f} s per run, {args.rounds} keep-alive rounds alternating "
        "the configurations; medians. Ratios (\"vs 2\") against configuration 2 of the "
        f"same run. CPU pinning: {env['pinning']}.\n",
        "## Targets\n", targets_md(targets) if targets else "No target could be evaluated.\n",
        "## Keep-alive (HTTP/1.1, one TLS handshake per connection)\n",
        table(summaries["keepalive"], labels),
    ]
    if summaries.get("close"):
        parts += ["\n## A TLS handshake per request (`Connection: close`)\n",
                  table(summaries["close"], labels)]
    if micro:
        parts += ["\n## In-process micro-benchmark (no network)\n",
                  "The middleware called directly with a prepared request (certificate "
                  "in the ASGI TLS extension or `SSL_CLIENT_CERT`, bearer token), against "
                  "the bare app called the same way. *steady*: the same request again and "
                  "again; *distinct paths*: a new path each time (the decision cache "
                  "misses); *cold*: the first request of a new middleware (start-up "
                  "excluded; start-up time is the next column).\n",
                  micro_table(micro)]
        startup = [r for r in micro if r["case"] == "cold"]
        if startup:
            parts.append("\nStart-up (configuration read, policy loaded, middleware built): "
                         + ", ".join(f"{r['kind'].upper()} {r['policy_lines']:,} lines "
                                     f"{_fmt(r['startup_ms'], 1)} ms" for r in startup)
                         + ".\n")
    if steps:
        parts += ["\n### Where the steady-state ASGI time goes\n",
                  f"Each step timed alone, caches warm, {args.policy_lines:,}-line policy "
                  "(process CPU time).\n", steps_table(steps)]
    parts.append("\n## Checks before measuring\n")
    for key, p in probes.items():
        parts.append(f"- {key}: " + ", ".join(f"{k} → {v or 'refused'}" for k, v in p.items()))
    for key, why in skipped.items():
        parts.append(f"- {key}: **skipped**: {why}")
    if chart_files:
        parts.append("\n## Charts\n")
        parts += [f"![{c.stem}]({c.name})" for c in chart_files]
    parts.append("\n## Method\n\n" + METHOD)
    path = out / "report.md"
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path


METHOD = """\
Same app (a pure ASGI endpoint, or the same endpoint in Flask), same Casbin policy
(the one rule that allows the client among filler rules), same client certificate
(EC P-256, SPIFFE ID and CN) and the same RS256 token on every request, all on
127.0.0.1. Every server runs one worker process (nginx one worker, HAProxy one
thread, gunicorn one gthread worker with 4 threads). wrk runs one thread with the
client certificate loaded through an LD_PRELOAD shim (`bench/wrk_client_cert.c`).
CPU per request is the utime + stime of every process of the configuration (the
proxy's master and worker, the app, the ext-authz service; reaped children included)
over the wrk run, divided by the requests served; the load generator's own CPU is
not counted. RSS is the sum of VmRSS over those processes after the run. Before the
measurement every configuration must answer the good request with 200 and, where it
checks, a request without a token with 401 and a request outside the policy with 403.
The machine has 2 cores shared by wrk and the servers: absolute figures are
indicative; the ratios within one run are the result.
"""


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="about 1-2 minutes")
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    p.add_argument("--only", default="", help="comma-separated configuration keys")
    p.add_argument("--duration", type=float, default=None, help="seconds per wrk run")
    p.add_argument("--rounds", type=int, default=None, help="keep-alive rounds")
    p.add_argument("--close-rounds", type=int, default=None,
                   help="rounds with a handshake per request (0: none)")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--policy-lines", type=int, default=1000,
                   help="policy size for the load runs")
    p.add_argument("--no-micro", action="store_true", help="skip the micro-benchmark")
    p.add_argument("--pin", default="auto",
                   help="CPU pinning: auto (servers on CPU 0, wrk on CPU 1), none, or "
                        "SERVER:CLIENT taskset lists")
    p.add_argument("--docs", type=Path, default=None,
                   help="also copy the charts to this folder (e.g. docs/img)")
    args = p.parse_args(argv)
    if args.duration is None:
        args.duration = 3.0 if args.quick else 8.0
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.close_rounds is None:
        args.close_rounds = 1 if args.quick else 2
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    only = {k.strip() for k in args.only.split(",") if k.strip()}
    setups = [s for s in SETUPS if not only or s.key in only]
    labels = {s.key: s.label for s in SETUPS}
    for tool in ("wrk",):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed (apt-get install wrk)", file=sys.stderr)
            return 2
    micro_sizes = (10, 1000) if args.quick else (10, 1000, 100_000)
    server_cpus, client_cpus = _pinning(args.pin)
    with tempfile.TemporaryDirectory(prefix="endpointsec-bench-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)
        m = h.make_material(root, policy_sizes=sorted({args.policy_lines, *micro_sizes}))
        shim = h.build_shim(root)
        ctx = Context(material=m, policy=m.policy_files[args.policy_lines], log_dir=root,
                      server_cpus=server_cpus)
        running: list[Running] = []
        skipped: dict[str, str] = {}
        samples: list[Sample] = []
        micro: list[dict[str, Any]] = []
        steps: list[tuple[str, float]] = []
        try:
            for s in setups:
                missing = [t for t in s.needs if shutil.which(t) is None
                           and not Path(f"/usr/sbin/{t}").exists()]
                if missing:
                    skipped[s.key] = f"{', '.join(missing)} not installed"
                    continue
                try:
                    port, procs = s.start(ctx)
                except (RuntimeError, OSError) as exc:
                    skipped[s.key] = f"did not start: {str(exc)[:300]}"
                    print(f"[{s.key}] {skipped[s.key]}", file=sys.stderr)
                    continue
                r = Running(setup=s, port=port, procs=procs, probes={})
                problems = run_probes(r, m)
                if problems:
                    skipped[s.key] = "; ".join(problems)
                    print(f"[{s.key}] not measured: {skipped[s.key]}", file=sys.stderr)
                    for proc in procs:
                        print(f"--- {proc.name}\n{proc.tail(8)}", file=sys.stderr)
                    continue
                running.append(r)
                print(f"[{s.key}] {s.label}: ready on {r.port} {r.probes}", flush=True)

            modes = [("keepalive", args.rounds)]
            if args.close_rounds:
                modes.append(("close", args.close_rounds))
            for mode, rounds in modes:
                dur = args.duration if mode == "keepalive" else max(2.0, args.duration / 2)
                for r in running:  # warm-up: caches, lazy imports, connection pools
                    h.run_wrk(r.url, duration=1, connections=args.connections,
                              shim=shim if r.setup.tls else None, material=m,
                              token=m.token, keepalive=(mode == "keepalive"),
                              cpus=client_cpus)
                for rnd in range(rounds):
                    order = running if rnd % 2 == 0 else running[::-1]
                    for r in order:
                        smp = measure(r, m, shim, mode=mode, rnd=rnd, duration=dur,
                                      connections=args.connections, client_cpus=client_cpus)
                        samples.append(smp)
                        print(f"  {mode:9} round {rnd + 1}/{rounds} [{r.setup.key:>2}] "
                              f"{smp.rps:8.0f} req/s  p99 {smp.p99 / 1000:6.2f} ms  "
                              f"{smp.cpu_us:6.0f} µs CPU/req  errors {smp.errors + smp.non2xx}",
                              flush=True)
        finally:
            for proc in ctx.procs:
                proc.stop()
        if not args.no_micro:
            import micro as micro_bench

            print("micro-benchmark ...", flush=True)
            micro = micro_bench.run(m, sizes=micro_sizes, quick=args.quick)
            steps = micro_bench.breakdown(m, m.policy_files[args.policy_lines])
    keys = [r.setup.key for r in running]
    summaries = {mode: summarize(samples, keys, mode) for mode in ("keepalive", "close")}
    targets = evaluate_targets(summaries["keepalive"], micro)
    chart_files: list[Path] = []
    if summaries["keepalive"]:
        chart_files = charts(summaries["keepalive"], labels, out)
    if summaries["close"]:
        chart_files += charts(summaries["close"], labels, out,
                              suffix=" (a TLS handshake per request)", stem="_handshake")
    if args.docs is not None and chart_files:
        args.docs.mkdir(parents=True, exist_ok=True)
        for c in chart_files:
            shutil.copy(c, args.docs / c.name)
    env = {"machine": _machine(),
           "pinning": (f"every server process on CPU {server_cpus}, wrk on CPU {client_cpus}"
                       if server_cpus else "none")}
    probes = {r.setup.key: r.probes for r in running}
    report = write_report(out, args=args, labels=labels, summaries=summaries, micro=micro,
                          steps=steps, targets=targets, probes=probes, skipped=skipped,
                          chart_files=chart_files, started=started, env=env)
    (out / "results.json").write_text(json.dumps({
        "args": {k: str(v) for k, v in vars(args).items()},
        "labels": labels, "summaries": summaries, "targets": targets, "micro": micro,
        "samples": [asdict(s) for s in samples], "skipped": skipped, "probes": probes,
        "machine": env["machine"],
    }, indent=1, default=str), encoding="utf-8")
    print()
    print(table(summaries["keepalive"], labels))
    if summaries["close"]:
        print("A handshake per request:")
        print(table(summaries["close"], labels))
    if micro:
        print(micro_table(micro))
    if steps:
        print(steps_table(steps))
    if targets:
        print(targets_md(targets))
    for key, why in skipped.items():
        print(f"skipped {key}: {why}")
    print(f"report: {report}")
    return 0


def _pinning(spec: str) -> tuple[str | None, str | None]:
    """``"auto"``: servers on CPU 0 and wrk on CPU 1 when there are two CPUs or more;
    ``"none"``; or ``"SERVER:CLIENT"`` taskset lists such as ``"0:1"``."""
    import os

    if spec == "none":
        return None, None
    if spec == "auto":
        return ("0", "1") if (os.cpu_count() or 1) >= 2 else (None, None)
    server, _, client = spec.partition(":")
    return server or None, client or None


def _machine() -> str:
    import os
    import platform

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{os.cpu_count()} CPUs ({cpu or platform.machine()}), Python "
            f"{platform.python_version()}")


if __name__ == "__main__":
    sys.exit(main())
