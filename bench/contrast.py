"""In-process vs out-of-process sidecars: the contrast benchmark.

::

    python bench/contrast.py [--quick] --out bench/results/

Starts every configuration on 127.0.0.1 (same app, same 1,000-line policy, same client
certificate), checks that each answers the good request with 200 and, where it checks,
refuses a request without a token (401) and requests outside the policy (403); then
loads each with wrk (HTTP/1.1 keep-alive, 16 connections, one thread) in rounds that
alternate the configurations, with two workloads:

- **mix** (the headline): ``GET /orders/{random id in 1..1,000,000}`` with a bearer
  token drawn from 500 distinct valid RS256 tokens (distinct ``sub``, role reader), and
  10 % ``DELETE /orders/{id}``, which the policy (and HAProxy's ACL) denies with 403.
  wrk's Lua script draws each request and counts the statuses: a configuration whose
  statuses are not 200 for the allowed and 403 for the denied requests is flagged;
- **identical**: the same ``GET /orders/42`` with the same token again and again.

Then (full mode) the mix once more with a TLS handshake per request
(``Connection: close``). Measures req/s, p50/p90/p99, server CPU per request for the
whole configuration *and per process role* (the app apart from the proxy), RSS; prints
the ratios within the run (medians of the per-round ratios) and the targets, met or
missed. Then the in-process micro-benchmark (``bench/micro.py``). Writes ``report.md``,
``results.json`` and PNG charts to ``--out``.

``--soak SECONDS`` instead runs the mix against configuration E for that long and
reports the app's RSS over time.

Needs wrk, nginx, haproxy and gcc (``apt-get install wrk nginx haproxy gcc libssl-dev``);
a configuration whose program is missing is skipped and reported as such.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as h

UVICORN_TLS_PROTOCOL = "endpointsec.servers.uvicorn:HttpToolsProtocol"

# --------------------------------------------------------------------------- configurations


@dataclass(frozen=True)
class Setup:
    """One configuration: how to start it and what it must answer."""

    key: str
    label: str
    tls: bool
    checks: bool
    needs: tuple[str, ...]
    start: Callable[[Context], tuple[int, list[h.Proc]]]
    #: Run only when named in ``--only`` (or with ``--all``).
    optional: bool = False
    #: The configuration's former number in this benchmark (``--only`` accepts it).
    alias: str = ""


@dataclass
class Context:
    """What the start functions share."""

    material: h.Material
    policy: Path
    log_dir: Path
    #: CPUs the servers run on (taskset list), None: anywhere.
    server_cpus: str | None = None
    #: Extra endpointsec configuration text per configuration key ("*": every one).
    extra: dict[str, str] = field(default_factory=dict)
    procs: list[h.Proc] = field(default_factory=list)

    def spawn(self, name: str, argv: Sequence[str], *, port: int | None = None,
              uds: Path | None = None, env: dict[str, str] | None = None,
              role: str = "app") -> h.Proc:
        proc = h.Proc.start(name, h.pinned(argv, self.server_cpus), log_dir=self.log_dir,
                            env=env, role=role)
        self.procs.append(proc)
        try:
            if uds is not None:
                h.wait_unix(uds, proc=proc.popen)
            elif port is not None:
                h.wait_port(port, proc=proc.popen)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{name} did not start: {exc}\n{proc.tail()}") from None
        return proc

    def config(self, key: str, source: str, *, trusted: str = "127.0.0.1/32") -> dict[str, str]:
        extra = "\n".join(t for k, t in self.extra.items() if k in ("*", key))
        path = h.write_config(self.material, f"cfg-{key}", policy=self.policy, source=source,
                              trusted=trusted, extra=extra)
        return {"ENDPOINTSEC_BENCH_CONFIG": str(path)}


def _uvicorn(ctx: Context, name: str, app: str, *, tls: bool = False, protocol: bool = False,
             env: dict[str, str] | None = None, role: str = "app",
             uds: Path | None = None) -> tuple[int, h.Proc]:
    port = h.free_port()
    argv = h.uvicorn_argv(app, port=port, tls=ctx.material if tls else None,
                          http=UVICORN_TLS_PROTOCOL if protocol else "httptools",
                          factory=app.startswith("apps:make_"), uds=uds)
    return port, ctx.spawn(name, argv, port=port, uds=uds, env=env, role=role)


def _c_plain(ctx: Context) -> tuple[int, list[h.Proc]]:
    port, app = _uvicorn(ctx, "P-uvicorn-http", "apps:bare")
    return port, [app]


def _c_bare(ctx: Context) -> tuple[int, list[h.Proc]]:
    port, app = _uvicorn(ctx, "B-uvicorn-mtls", "apps:bare", tls=True)
    return port, [app]


def _c_bare_protocol(ctx: Context) -> tuple[int, list[h.Proc]]:
    port, app = _uvicorn(ctx, "BP-uvicorn-mtls-protocol", "apps:bare", tls=True, protocol=True)
    return port, [app]


def _c_inproc(ctx: Context) -> tuple[int, list[h.Proc]]:
    port, app = _uvicorn(ctx, "E-inprocess-asgi", "apps:make_inproc", tls=True, protocol=True,
                         env=ctx.config("E", "asgi-tls"))
    return port, [app]


def _c_wsgi_bare(ctx: Context) -> tuple[int, list[h.Proc]]:
    port = h.free_port()
    argv = h.gunicorn_argv("apps:make_flask()", port=port, tls=ctx.material)
    return port, [ctx.spawn("WB-gunicorn-flask-mtls", argv, port=port)]


def _c_wsgi_inproc(ctx: Context) -> tuple[int, list[h.Proc]]:
    port = h.free_port()
    argv = h.gunicorn_argv("apps:make_flask_inproc()", port=port, tls=ctx.material)
    return port, [ctx.spawn("WE-inprocess-wsgi", argv, port=port,
                            env=ctx.config("WE", "gunicorn"))]


def _nginx(ctx: Context, name: str, *, upstream_port: int | None = None,
           upstream_unix: Path | None = None, forward_cert: bool,
           authz_port: int | None = None) -> tuple[int, h.Proc]:
    port = h.free_port()
    m = ctx.material
    tmp = m.root / f"nginx-{name}"
    tmp.mkdir(parents=True, exist_ok=True)
    conf = tmp / "nginx.conf"
    conf.write_text(h.nginx_conf(m, name=name, port=port, upstream_port=upstream_port,
                                 upstream_unix=upstream_unix, forward_cert=forward_cert,
                                 authz_port=authz_port))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = ctx.spawn(f"{name}-nginx", [nginx, "-p", str(tmp), "-c", str(conf),
                                       "-e", str(tmp / "error.log")], port=port, role="proxy")
    return port, proc


def _c_nginx_bare(ctx: Context) -> tuple[int, list[h.Proc]]:
    up, app = _uvicorn(ctx, "N-app", "apps:bare")
    port, nginx = _nginx(ctx, "N", upstream_port=up, forward_cert=False)
    return port, [nginx, app]


def _nginx_endpointsec(key: str, source: str, *, unix: bool = False
                       ) -> Callable[[Context], tuple[int, list[h.Proc]]]:
    def start(ctx: Context) -> tuple[int, list[h.Proc]]:
        uds = ctx.material.root / f"{key}.sock" if unix else None
        env = ctx.config(key, source, trusted="unix" if unix else "127.0.0.1/32")
        up, app = _uvicorn(ctx, f"{key}-app", "apps:make_inproc", env=env, uds=uds)
        port, nginx = _nginx(ctx, key, upstream_port=None if unix else up,
                             upstream_unix=uds, forward_cert=True)
        return port, [nginx, app]
    return start


def _haproxy(ctx: Context, key: str, *, upstream_port: int, checks: bool,
             forward: str | None) -> tuple[int, h.Proc]:
    port = h.free_port()
    cfg = ctx.material.root / f"haproxy-{key}.cfg"
    cfg.write_text(h.haproxy_cfg(ctx.material, port=port, upstream_port=upstream_port,
                                 checks=checks, forward=forward))
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    return port, ctx.spawn(f"{key}-haproxy", [haproxy, "-db", "-f", str(cfg)], port=port,
                           role="proxy")


def _c_haproxy_bare(ctx: Context) -> tuple[int, list[h.Proc]]:
    up, app = _uvicorn(ctx, "HN-app", "apps:bare")
    port, proxy = _haproxy(ctx, "HN", upstream_port=up, checks=False, forward=None)
    return port, [proxy, app]


def _haproxy_endpointsec(key: str, forward: str, source: str
                         ) -> Callable[[Context], tuple[int, list[h.Proc]]]:
    def start(ctx: Context) -> tuple[int, list[h.Proc]]:
        up, app = _uvicorn(ctx, f"{key}-app", "apps:make_inproc", env=ctx.config(key, source))
        port, proxy = _haproxy(ctx, key, upstream_port=up, checks=False, forward=forward)
        return port, [proxy, app]
    return start


def _c_haproxy_checks(ctx: Context) -> tuple[int, list[h.Proc]]:
    up, app = _uvicorn(ctx, "H-app", "apps:bare")
    port, proxy = _haproxy(ctx, "H", upstream_port=up, checks=True, forward=None)
    return port, [proxy, app]


def _c_ext_authz(ctx: Context) -> tuple[int, list[h.Proc]]:
    up, app = _uvicorn(ctx, "X-app", "apps:bare")
    az, authz = _uvicorn(ctx, "X-authz", "apps:make_inproc", env=ctx.config("X", "nginx"),
                         role="authz")
    port, nginx = _nginx(ctx, "X", upstream_port=up, forward_cert=False, authz_port=az)
    return port, [nginx, authz, app]


SETUPS: tuple[Setup, ...] = (
    Setup("P", "uvicorn HTTP, no checks (floor)", False, False, (), _c_plain,
          optional=True, alias="1"),
    Setup("B", "uvicorn mTLS, no checks", True, False, (), _c_bare, alias="2"),
    Setup("BP", "uvicorn mTLS + endpointsec protocol, no checks", True, False, (),
          _c_bare_protocol, optional=True, alias="2p"),
    Setup("E", "endpointsec in-process (uvicorn)", True, True, (), _c_inproc, alias="3"),
    Setup("N", "nginx mTLS -> app, no checks", True, False, ("nginx",), _c_nginx_bare,
          alias="2n"),
    Setup("NE", "nginx mTLS -> app + endpointsec (escaped PEM, verified again)", True, True,
          ("nginx",), _nginx_endpointsec("NE", "nginx"), alias="5"),
    Setup("NEv", "nginx mTLS -> app + endpointsec (escaped PEM, nginx's verdict)", True,
          True, ("nginx",), _nginx_endpointsec("NEv", "nginx-noverify")),
    Setup("NEu", "nginx mTLS -> Unix socket -> app + endpointsec (nginx's verdict)", True,
          True, ("nginx",), _nginx_endpointsec("NEu", "nginx-noverify", unix=True)),
    Setup("HN", "HAProxy mTLS -> app, no checks", True, False, ("haproxy",),
          _c_haproxy_bare),
    Setup("HE", "HAProxy mTLS -> app + endpointsec (RFC 9440 Client-Cert)", True, True,
          ("haproxy",), _haproxy_endpointsec("HE", "client-cert", "client-cert")),
    Setup("HEd", "HAProxy mTLS -> app + endpointsec (base64 DER, HAProxy's verdict)", True,
          True, ("haproxy",), _haproxy_endpointsec("HEd", "haproxy", "haproxy-noverify")),
    Setup("H", "HAProxy mTLS + jwt_verify + ACL -> app", True, True, ("haproxy",),
          _c_haproxy_checks, alias="6"),
    Setup("X", "nginx + ext-authz (endpointsec service) -> app", True, True, ("nginx",),
          _c_ext_authz, alias="7"),
    Setup("WB", "gunicorn+Flask mTLS, no checks", True, False, (), _c_wsgi_bare, alias="4r"),
    Setup("WE", "endpointsec in-process (gunicorn+Flask)", True, True, (), _c_wsgi_inproc,
          alias="4"),
)

#: Configurations where a proxy terminates TLS and endpointsec checks in the app.
PROXY_FORWARDED = ("NE", "NEv", "NEu", "HE", "HEd")


def select_setups(only: str, *, everything: bool = False) -> list[Setup]:
    """The configurations named in ``only`` (keys or former numbers, comma-separated),
    else every one that is not optional (every one with ``everything``)."""
    names = {k.strip() for k in only.split(",") if k.strip()}
    known = {s.key for s in SETUPS} | {s.alias for s in SETUPS if s.alias}
    unknown = names - known
    if unknown:
        raise SystemExit(f"unknown configuration(s): {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(s.key for s in SETUPS)}")
    if names:
        return [s for s in SETUPS if s.key in names or s.alias in names]
    return [s for s in SETUPS if everything or not s.optional]


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

    def pids_by_role(self) -> dict[str, list[int]]:
        roles: dict[str, list[int]] = {}
        for p in self.procs:
            roles.setdefault(p.role, []).extend(h.process_tree([p.pid]))
        return roles


def run_probes(r: Running, m: h.Material) -> list[str]:
    """Check the configuration answers as it should; returns the problems found."""
    tls = m if r.setup.tls else None
    good = h.probe(r.port, tls=tls, token=m.token)
    other = h.probe(r.port, tls=tls, token=m.tokens[-1], path="/orders/999999")
    deny = h.probe(r.port, tls=tls, token=m.token, method=h.DENY_METHOD)
    r.probes.update(good=good, other_caller=other, deny=deny)
    problems = [f"{name} answered {got}, not 200" for name, got
                in (("good request", good), ("another caller", other)) if got != 200]
    expect_deny = 403 if r.setup.checks else 200
    if deny != expect_deny:
        problems.append(f"{h.DENY_METHOD} answered {deny}, not {expect_deny}")
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


# --------------------------------------------------------------------------- measuring


@dataclass
class Sample:
    key: str
    workload: str
    mode: str
    round: int
    rps: float
    p50: float
    p90: float
    p99: float
    cpu_us: float
    #: CPU µs per request per process role ("app", "proxy", "authz").
    cpu_role_us: dict[str, float]
    rss_kib: int
    rss_app_kib: int
    processes: int
    requests: int
    errors: int
    statuses: dict[int, int]
    sent_allow: int
    sent_deny: int
    problems: list[str]

    @property
    def cpu_app_us(self) -> float:
        return self.cpu_role_us.get("app", float("nan"))


@dataclass(frozen=True)
class Plan:
    """One series of runs: a workload, keep-alive or a handshake per request."""

    workload: h.Workload
    mode: str  # "keepalive" or "close"
    rounds: int
    duration: float

    @property
    def name(self) -> str:
        return self.workload.name + ("" if self.mode == "keepalive" else "-handshake")


def measure(r: Running, m: h.Material, shim: Path, script: Path, *, plan: Plan, rnd: int,
            connections: int, client_cpus: str | None) -> Sample:
    roles = r.pids_by_role()
    before = h.cpu_ticks(p for ps in roles.values() for p in ps)
    res = h.run_wrk(r.url, duration=plan.duration, connections=connections,
                    shim=shim if r.setup.tls else None, material=m, script=script,
                    cpus=client_cpus)
    after_roles = r.pids_by_role()
    after = h.cpu_ticks(p for ps in after_roles.values() for p in ps)
    n = res.requests

    def per_request(pids: Iterable[int]) -> float:
        pids = set(pids)
        cpu = h.cpu_seconds_between({p: t for p, t in before.items() if p in pids},
                                    {p: t for p, t in after.items() if p in pids})
        return cpu * 1e6 / n if n else float("nan")

    all_pids = [p for ps in after_roles.values() for p in ps]
    return Sample(
        key=r.setup.key, workload=plan.workload.name, mode=plan.mode, round=rnd,
        rps=res.rps, p50=res.p50, p90=res.p90, p99=res.p99, cpu_us=per_request(all_pids),
        cpu_role_us={role: per_request(pids) for role, pids in after_roles.items()},
        rss_kib=h.rss_kib(all_pids), rss_app_kib=h.rss_kib(after_roles.get("app", [])),
        processes=len(all_pids), requests=n, errors=res.errors,
        statuses=dict(res.statuses), sent_allow=res.sent_allow, sent_deny=res.sent_deny,
        problems=h.check_statuses(res, checks=r.setup.checks, connections=connections))


FIELDS = ("rps", "p50", "p90", "p99", "cpu_us", "cpu_app_us", "cpu_other_us", "rss_kib",
          "rss_app_kib")


def _value(s: Sample, f: str) -> float:
    if f == "cpu_app_us":
        return s.cpu_app_us
    if f == "cpu_other_us":
        return s.cpu_us - s.cpu_app_us
    return float(getattr(s, f))


def summarize(samples: Sequence[Sample], keys: Sequence[str], plan: str
              ) -> dict[str, dict[str, Any]]:
    """Medians per configuration for one plan, ratios against B (medians of the
    per-round ratios) and the status problems of any round."""
    out: dict[str, dict[str, Any]] = {}
    for key in keys:
        ss = [s for s in samples if s.key == key and _plan_of(s) == plan]
        if not ss:
            continue
        row: dict[str, Any] = {f: h.median(_value(s, f) for s in ss) for f in FIELDS}
        row["rounds"] = len(ss)
        row["errors"] = sum(s.errors for s in ss)
        statuses: dict[int, int] = {}
        for s in ss:
            for code, n in s.statuses.items():
                statuses[code] = statuses.get(code, 0) + n
        row["statuses"] = dict(sorted(statuses.items()))
        row["problems"] = sorted({p for s in ss for p in s.problems})
        for f in ("rps", "p99", "cpu_us"):
            row[f"{f}_xB"] = paired_ratio(samples, key, "B", f, plan)
        out[key] = row
    return out


def _plan_of(s: Sample) -> str:
    return s.workload + ("" if s.mode == "keepalive" else "-handshake")


def paired_ratio(samples: Sequence[Sample], a: str, b: str, f: str, plan: str) -> float:
    """The median over the rounds of ``a``'s ``f`` divided by ``b``'s in the same round
    (``nan`` when no round has both)."""
    by_round: dict[int, dict[str, float]] = {}
    for s in samples:
        if s.key in (a, b) and _plan_of(s) == plan:
            by_round.setdefault(s.round, {})[s.key] = _value(s, f)
    return h.median(h.ratio(v[a], v[b]) for v in by_round.values() if a in v and b in v)


# --------------------------------------------------------------------------- ratios, targets


@dataclass(frozen=True)
class RatioSpec:
    """A ratio of the report: ``num``'s ``field`` over ``den``'s (``num`` may name several
    configurations: the cheapest counts)."""

    name: str
    num: tuple[str, ...]
    den: str
    field: str
    limit: float | None = None
    upper: bool = True
    target: str = ""


RATIOS: tuple[RatioSpec, ...] = (
    RatioSpec("E/B CPU per request", ("E",), "B", "cpu_us", 1.10, True,
              "endpointsec in-process CPU/request <= 1.10x bare mTLS uvicorn"),
    RatioSpec("E/B req/s", ("E",), "B", "rps", 0.90, False,
              "endpointsec in-process req/s >= 0.90x bare mTLS uvicorn"),
    RatioSpec("E/B p99", ("E",), "B", "p99", 1.20, True,
              "endpointsec in-process p99 <= 1.20x bare mTLS uvicorn"),
    RatioSpec("E/H CPU per request", ("E",), "H", "cpu_us", 1.00, True,
              "endpointsec in-process CPU/request <= 1.00x HAProxy mTLS+jwt_verify+ACL"),
    RatioSpec("NE/N app CPU per request", ("NE",), "N", "cpu_app_us", 1.10, True,
              "app CPU/request behind nginx with endpointsec <= 1.10x without"),
    RatioSpec("NEv/N app CPU per request", ("NEv",), "N", "cpu_app_us"),
    RatioSpec("NEu/N app CPU per request", ("NEu",), "N", "cpu_app_us"),
    RatioSpec("HE/HN app CPU per request", ("HE",), "HN", "cpu_app_us"),
    RatioSpec("HEd/HN app CPU per request", ("HEd",), "HN", "cpu_app_us"),
    RatioSpec("cheapest proxy-forwarded/H CPU per request", PROXY_FORWARDED, "H", "cpu_us",
              1.00, True,
              "cheapest proxy terminating TLS + endpointsec in the app <= 1.00x H (whole CPU)"),
    RatioSpec("NE/H CPU per request", ("NE",), "H", "cpu_us"),
    RatioSpec("NEv/H CPU per request", ("NEv",), "H", "cpu_us"),
    RatioSpec("NEu/H CPU per request", ("NEu",), "H", "cpu_us"),
    RatioSpec("HE/H CPU per request", ("HE",), "H", "cpu_us"),
    RatioSpec("HEd/H CPU per request", ("HEd",), "H", "cpu_us"),
    RatioSpec("X/H CPU per request", ("X",), "H", "cpu_us"),
    RatioSpec("WE/WB CPU per request", ("WE",), "WB", "cpu_us", 1.10, True,
              "gunicorn+Flask+endpointsec CPU/request <= 1.10x the bare pair"),
    RatioSpec("WE/WB req/s", ("WE",), "WB", "rps"),
)


def ratios(samples: Sequence[Sample], summary: dict[str, dict[str, Any]], plan: str
           ) -> list[dict[str, Any]]:
    """Every :data:`RATIOS` entry for one plan: the value (medians of per-round ratios;
    the cheapest of several numerators), which configuration it is, the verdict against
    its limit, and whether a configuration involved had wrong statuses."""
    out: list[dict[str, Any]] = []
    for spec in RATIOS:
        values = {k: paired_ratio(samples, k, spec.den, spec.field, plan) for k in spec.num}
        values = {k: v for k, v in values.items() if v == v}
        if values:
            chosen = min(values, key=lambda k: values[k])
            value = values[chosen]
        else:
            chosen, value = ",".join(spec.num), float("nan")
        flagged = [k for k in (chosen, spec.den) if summary.get(k, {}).get("problems")]
        if value != value:
            verdict = "n/a"
        elif flagged:
            verdict = "FLAGGED"
        elif spec.limit is None:
            verdict = ""
        else:
            ok = value <= spec.limit if spec.upper else value >= spec.limit
            verdict = "MET" if ok else "MISSED"
        out.append({"name": spec.name, "num": chosen, "den": spec.den, "field": spec.field,
                    "value": value, "limit": spec.limit, "upper": spec.upper,
                    "target": spec.target, "verdict": verdict, "flagged": flagged,
                    "candidates": values})
    return out


# --------------------------------------------------------------------------- output


def _fmt(v: float, digits: int = 0) -> str:
    if v != v:
        return "n/a"
    return f"{v:,.{digits}f}"


def _times(v: float) -> str:
    return "n/a" if v != v else f"{v:,.2f}x"


def _statuses(row: dict[str, Any]) -> str:
    text = " / ".join(f"{code}: {n:,}" for code, n in row["statuses"].items()) or "none"
    return text + (" **FLAGGED**" if row["problems"] else " ok")


def table(summary: dict[str, dict[str, Any]], labels: dict[str, str]) -> str:
    head = ("| # | configuration | req/s | p50 ms | p99 ms | CPU µs/req | app CPU µs/req "
            "| proxy + authz CPU µs/req | app RSS MiB | RSS MiB | statuses | req/s vs B | p99 vs B "
            "| CPU vs B |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|\n")
    rows = []
    for key, r in summary.items():
        rows.append(
            f"| {key} | {labels[key]} | {_fmt(r['rps'])} | {_fmt(r['p50'] / 1000, 2)} "
            f"| {_fmt(r['p99'] / 1000, 2)} | {_fmt(r['cpu_us'])} | {_fmt(r['cpu_app_us'])} "
            f"| {_fmt(r['cpu_other_us'])} | {_fmt(r['rss_app_kib'] / 1024, 1)} "
            f"| {_fmt(r['rss_kib'] / 1024, 1)} | {_statuses(r)} "
            f"| {_fmt(r['rps_xB'], 2)} | {_fmt(r['p99_xB'], 2)} | {_fmt(r['cpu_us_xB'], 2)} |")
    return head + "\n".join(rows) + "\n"


def ratios_md(rows: list[dict[str, Any]]) -> str:
    lines = ["| ratio | configurations | value |", "|---|---|---:|"]
    for r in rows:
        if r["value"] != r["value"]:
            continue
        lines.append(f"| {r['name']} | {r['num']} / {r['den']} | {_times(r['value'])}"
                     + (" (statuses FLAGGED)" if r["flagged"] else "") + " |")
    return "\n".join(lines) + "\n"


def targets_md(rows: list[dict[str, Any]]) -> str:
    lines = ["| target | configurations | measured | limit | result |",
             "|---|---|---:|---:|---|"]
    for r in rows:
        if r["limit"] is None:
            continue
        sign = "<=" if r["upper"] else ">="
        verdict = r["verdict"]
        if verdict == "FLAGGED":
            verdict = f"FLAGGED (wrong statuses: {', '.join(r['flagged'])})"
        elif verdict == "MISSED":
            verdict = "**MISSED**"
        lines.append(f"| {r['target']} | {r['num']} / {r['den']} | {_times(r['value'])} "
                     f"| {sign} {r['limit']:.2f}x | {verdict} |")
    return "\n".join(lines) + "\n"


def micro_table(micro: list[dict[str, Any]]) -> str:
    import micro as micro_bench

    return micro_bench.table(micro)


def charts(summary: dict[str, dict[str, Any]], labels: dict[str, str], out: Path,
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

    fig, ax = plt.subplots(figsize=(9, 0.42 * len(keys) + 1.2), dpi=80)
    app = [summary[k]["cpu_app_us"] for k in keys]
    other = [summary[k]["cpu_other_us"] for k in keys]
    ax.barh(ys, app, color="#2b7bba", label="app process")
    ax.barh(ys, other, left=app, color="#c0504d", label="proxy / ext-authz processes")
    for y, k in zip(ys, keys, strict=True):
        ax.text(summary[k]["cpu_us"], y, f" {summary[k]['cpu_us']:.0f}", va="center",
                fontsize=8)
    if "B" in summary:
        ax.axvline(summary["B"]["cpu_us"], color="#555555", linestyle="--", linewidth=0.8)
    ax.set_yticks(ys, names, fontsize=7)
    ax.set_xlabel("server CPU per request (µs; lower is better)")
    ax.set_title("CPU per request by configuration" + suffix, fontsize=10)
    ax.legend(fontsize=8)
    ax.margins(x=0.15)
    fig.tight_layout()
    path = out / f"cpu_per_request{stem}.png"
    fig.savefig(path)
    plt.close(fig)
    written.append(path)

    fig, ax = plt.subplots(figsize=(9, 0.42 * len(keys) + 1.2), dpi=80)
    height = 0.27
    for i, (f, color) in enumerate((("p50", "#7fb3d5"), ("p90", "#2b7bba"),
                                    ("p99", "#1b4f72"))):
        vals = [summary[k][f] / 1000 for k in keys]
        ax.barh([y + (1 - i) * height for y in ys], vals, height=height, color=color,
                label=f)
    ax.set_yticks(ys, names, fontsize=7)
    ax.set_xlabel("latency (ms; lower is better)")
    ax.set_title("Latency percentiles by configuration" + suffix, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / f"latency{stem}.png"
    fig.savefig(path)
    plt.close(fig)
    written.append(path)
    return written


PLAN_TITLES = {
    "mix": "Mix (headline): distinct paths, many callers, a denied share; keep-alive",
    "identical": "Identical request (same path, same token); keep-alive",
    "mix-handshake": "Mix with a TLS handshake per request (`Connection: close`)",
}


def added_rss_kib(samples: Sequence[Sample]) -> float:
    """The library's added RSS: the median over the mix rounds of E's app RSS minus B's
    (both after the warm-up and the run)."""
    by_round: dict[int, dict[str, int]] = {}
    for s in samples:
        if s.key in ("E", "B") and _plan_of(s) == "mix":
            by_round.setdefault(s.round, {})[s.key] = s.rss_app_kib
    return h.median(float(v["E"] - v["B"]) for v in by_round.values() if len(v) == 2)


def write_report(out: Path, *, args: argparse.Namespace, labels: dict[str, str],
                 summaries: dict[str, dict[str, dict[str, Any]]],
                 ratio_rows: dict[str, list[dict[str, Any]]], added_rss: float,
                 micro: list[dict[str, Any]], probes: dict[str, dict[str, int]],
                 skipped: dict[str, str], chart_files: list[Path], started: float,
                 env: dict[str, str]) -> Path:
    parts = [
        "# endpointsec contrast benchmark: in-process vs sidecars\n",
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}, "
        f"{'quick' if args.quick else 'full'} mode, {time.time() - started:.0f} s. "
        f"{env['machine']}. wrk {args.connections} connections, 1 thread; "
        f"{args.policy_lines:,}-line policy. Mix: {args.paths:,} order ids, "
        f"{args.tokens} tokens, {args.deny_share:.0%} denied. Medians of rounds "
        "alternating the configurations; ratios are medians of the per-round ratios. "
        f"CPU pinning: {env['pinning']}."
        + (f" Extra endpointsec configuration: {env['extra']}." if env.get("extra") else "")
        + "\n",
        "## Targets (mix, keep-alive)\n", targets_md(ratio_rows.get("mix", [])),
    ]
    if added_rss == added_rss:
        parts.append(f"\nendpointsec's added RSS in the app at {args.policy_lines:,} policy "
                     f"lines (E minus B, after warm-up and load): "
                     f"{added_rss / 1024:.1f} MiB.\n")
    for plan, summary in summaries.items():
        if not summary:
            continue
        parts += [f"\n## {PLAN_TITLES.get(plan, plan)}\n", table(summary, labels),
                  "\nRatios (same run):\n", ratios_md(ratio_rows.get(plan, []))]
        flagged = {k: r["problems"] for k, r in summary.items() if r["problems"]}
        for k, problems in flagged.items():
            parts.append(f"- **{k}: statuses not as expected**: {'; '.join(problems)}")
    if micro:
        parts += ["\n## In-process micro-benchmark (no network)\n", micro_table(micro)]
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
(the client's workload and role `reader` may GET an order, among filler rules), same
client certificate (SPIFFE ID and CN), all on 127.0.0.1. The mix draws, for every
request, an order id, one of the tokens (distinct `sub`, role reader) and, with the
deny share, `DELETE` instead of `GET`; wrk's Lua `response()` counts the statuses, and
a configuration that checks must answer the denied requests 403 and the others 200
(one that does not check: everything 200), within the requests in flight when wrk
stopped; otherwise its row is flagged. Every server runs one worker process (nginx one
worker, HAProxy one thread, gunicorn one gthread worker with 4 threads); proxies keep
HTTP/1.1 connections to the app alive. wrk runs one thread with the client
certificate loaded through an LD_PRELOAD shim (`bench/wrk_client_cert.c`). CPU per
request is the utime + stime of the configuration's processes (reaped children
included) over the wrk run, divided by the requests answered, for the whole
configuration and per role (the app process apart from the proxy and the ext-authz
service); wrk's own CPU is not counted. RSS is VmRSS after the run. Before the
measurement every configuration must answer the good request with 200 and, where it
checks, a request without a token with 401 and requests outside the policy with 403.
The machine's cores are shared by wrk and the servers (servers pinned on one, wrk on
the other): absolute figures are indicative; the ratios within one run are the result.
"""


# --------------------------------------------------------------------------- soak


def soak(args: argparse.Namespace, ctx: Context, m: h.Material, shim: Path,
         client_cpus: str | None, out: Path) -> int:
    """The mix against E for ``args.soak`` seconds, the app's RSS sampled every
    ``args.soak_interval`` seconds."""
    setup = next(s for s in SETUPS if s.key == "E")
    port, procs = setup.start(ctx)
    r = Running(setup=setup, port=port, procs=procs, probes={})
    problems = run_probes(r, m)
    if problems:
        print(f"[E] not measured: {'; '.join(problems)}", file=sys.stderr)
        return 1
    workload = h.Workload("mix", paths=args.paths, tokens=args.tokens,
                          deny_share=args.deny_share)
    script = m.root / "soak.lua"
    script.write_text(h.workload_lua(workload, m.tokens), encoding="utf-8")
    h.run_wrk(r.url, duration=2, connections=args.connections, shim=shim, material=m,
              script=script, cpus=client_cpus)  # warm-up
    argv = h.pinned(h.wrk_argv(r.url, duration=args.soak, connections=args.connections,
                               script=script), client_cpus)
    series: list[tuple[float, int]] = []
    t0 = time.monotonic()
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=h.wrk_env(shim, m)) as wrk:
        while wrk.poll() is None and time.monotonic() - t0 < args.soak + 30:
            series.append((time.monotonic() - t0, h.rss_kib(r.pids_by_role()["app"])))
            print(f"  soak {series[-1][0]:6.0f} s  app RSS {series[-1][1] / 1024:7.1f} MiB",
                  flush=True)
            try:
                wrk.wait(timeout=args.soak_interval)
            except subprocess.TimeoutExpired:
                continue
        if wrk.poll() is None:
            wrk.kill()
        stdout, _stderr = wrk.communicate(timeout=30)
    series.append((time.monotonic() - t0, h.rss_kib(r.pids_by_role()["app"])))
    res = h.parse_wrk(stdout)
    status_problems = h.check_statuses(res, checks=True, connections=args.connections)
    rss = [v for _, v in series]
    # The caches fill during the first part of the run: the drift from the sample a
    # quarter into the run is the one that tells a leak.
    settled = next(v for t, v in series if t >= args.soak / 4 or (t, v) == series[-1])
    summary = {"seconds": args.soak, "requests": res.requests, "rps": res.rps,
               "statuses": res.statuses, "problems": status_problems,
               "first_kib": rss[0], "last_kib": rss[-1], "max_kib": max(rss),
               "drift_kib": rss[-1] - rss[0], "drift_after_quarter_kib": rss[-1] - settled,
               "series": series}
    (out / "soak.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    text = (f"# endpointsec soak: mix against E for {args.soak:.0f} s\n\n"
            f"{res.requests:,} requests ({res.rps:,.0f} req/s), statuses "
            f"{dict(sorted(res.statuses.items()))}"
            + (f" **FLAGGED**: {'; '.join(status_problems)}" if status_problems else " ok")
            + f".\n\nApp RSS: first {rss[0] / 1024:.1f} MiB, last {rss[-1] / 1024:.1f} MiB, "
            f"max {max(rss) / 1024:.1f} MiB, drift {(rss[-1] - rss[0]) / 1024:+.1f} MiB, "
            f"drift after the first quarter {(rss[-1] - settled) / 1024:+.1f} MiB "
            f"({len(rss)} samples every {args.soak_interval:g} s).\n")
    (out / "soak.md").write_text(text, encoding="utf-8")
    print()
    print(text)
    return 0 if not status_problems else 1


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="about 3 minutes")
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    p.add_argument("--only", default="",
                   help="comma-separated configuration keys (e.g. B,E,H)")
    p.add_argument("--all", action="store_true",
                   help="also the optional configurations (P, BP)")
    p.add_argument("--workloads", default="mix,identical",
                   help="which workloads to run, in order (mix, identical)")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds per mix run (identical and handshake runs: 0.6x)")
    p.add_argument("--rounds", type=int, default=None, help="mix keep-alive rounds")
    p.add_argument("--identical-rounds", type=int, default=None)
    p.add_argument("--close-rounds", type=int, default=None,
                   help="mix rounds with a handshake per request (0: none)")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--policy-lines", type=int, default=1000,
                   help="policy size for the load runs")
    p.add_argument("--paths", type=int, default=1_000_000,
                   help="mix: order ids drawn from 1..PATHS")
    p.add_argument("--tokens", type=int, default=500,
                   help="mix: distinct valid tokens (distinct sub, role reader)")
    p.add_argument("--deny-share", type=float, default=0.10,
                   help="mix: share of requests the policy denies (DELETE /orders/{id})")
    p.add_argument("--extra-config", action="append", default=[], metavar="[KEYS=]FILE",
                   help="append FILE to the endpointsec.toml of configurations KEYS "
                        "(comma-separated; all endpointsec configurations without KEYS); "
                        "repeatable")
    p.add_argument("--soak", type=float, default=0.0, metavar="SECONDS",
                   help="instead of the comparison, run the mix against E for SECONDS "
                        "and sample the app's RSS")
    p.add_argument("--soak-interval", type=float, default=5.0)
    p.add_argument("--no-micro", action="store_true", help="skip the micro-benchmark")
    p.add_argument("--pin", default="auto",
                   help="CPU pinning: auto (servers on CPU 0, wrk on CPU 1), none, or "
                        "SERVER:CLIENT taskset lists")
    p.add_argument("--docs", type=Path, default=None,
                   help="also copy the charts to this folder (e.g. docs/img)")
    args = p.parse_args(argv)
    if args.duration is None:
        args.duration = 3.0 if args.quick else 5.0
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.identical_rounds is None:
        args.identical_rounds = 1 if args.quick else 2
    if args.close_rounds is None:
        args.close_rounds = 0 if args.quick else 1
    if not 0.0 <= args.deny_share < 1.0:
        p.error("--deny-share must be in [0, 1)")
    if args.tokens < 1 or args.paths < 1:
        p.error("--tokens and --paths must be at least 1")
    return args


def parse_extra(specs: Sequence[str]) -> dict[str, str]:
    """``--extra-config`` values to {configuration key or "*": text}."""
    out: dict[str, str] = {}
    for spec in specs:
        keys, sep, file = spec.rpartition("=")
        path = Path(file)
        text = path.read_text(encoding="utf-8")
        for key in (keys.split(",") if sep and keys else ["*"]):
            out[key.strip()] = (out.get(key.strip(), "") + "\n" + text).strip("\n")
    return out


def plans(args: argparse.Namespace) -> list[Plan]:
    mix = h.Workload("mix", paths=args.paths, tokens=args.tokens, deny_share=args.deny_share)
    wanted = [w.strip() for w in args.workloads.split(",") if w.strip()]
    out: list[Plan] = []
    for w in wanted:
        if w == "mix":
            out.append(Plan(mix, "keepalive", args.rounds, args.duration))
        elif w == "identical":
            out.append(Plan(h.IDENTICAL, "keepalive", args.identical_rounds,
                            max(2.0, args.duration * 0.6)))
        else:
            raise SystemExit(f"unknown workload {w!r} (mix, identical)")
    if args.close_rounds and "mix" in wanted:
        out.append(Plan(mix, "close", args.close_rounds, max(2.0, args.duration * 0.6)))
    return [p for p in out if p.rounds > 0]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    setups = select_setups(args.only, everything=args.all)
    labels = {s.key: s.label for s in SETUPS}
    for tool in ("wrk",):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed (apt-get install wrk)", file=sys.stderr)
            return 2
    micro_sizes = (1000,) if args.quick else (10, 1000, 100_000)
    server_cpus, client_cpus = _pinning(args.pin)
    extra = parse_extra(args.extra_config)
    with tempfile.TemporaryDirectory(prefix="endpointsec-bench-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)
        t0 = time.monotonic()
        m = h.make_material(root, policy_sizes=sorted({args.policy_lines, *micro_sizes}),
                            tokens=max(args.tokens, 2))
        print(f"material: {len(m.tokens)} tokens in {time.monotonic() - t0:.1f} s", flush=True)
        shim = h.build_shim(root)
        ctx = Context(material=m, policy=m.policy_files[args.policy_lines], log_dir=root,
                      server_cpus=server_cpus, extra=extra)
        if args.soak > 0:
            try:
                return soak(args, ctx, m, shim, client_cpus, out)
            finally:
                for proc in ctx.procs:
                    proc.stop()
        running: list[Running] = []
        skipped: dict[str, str] = {}
        samples: list[Sample] = []
        micro: list[dict[str, Any]] = []
        the_plans = plans(args)

        def script_for(plan: Plan, rnd: int) -> Path:
            """The wrk script of one round: every configuration gets the same requests
            in a round, and each round (and the warm-up, ``rnd = -1``) other ones, so
            that no round replays what an earlier one left in a cache."""
            i = the_plans.index(plan)
            path = root / f"{plan.name}-{rnd + 1}.lua"
            if not path.exists():
                path.write_text(h.workload_lua(plan.workload, m.tokens,
                                               keepalive=plan.mode == "keepalive",
                                               seed=1 + 1000 * i + (rnd + 1)),
                                encoding="utf-8")
            return path

        phases: dict[str, float] = {"material": time.monotonic() - t0}
        t0 = time.monotonic()
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

            phases["start and probes"] = time.monotonic() - t0
            t0 = time.monotonic()
            for i, plan in enumerate(the_plans):
                if i == 0:
                    # Warm-up: lazy imports, connection pools, every token verified once.
                    for r in running:
                        h.run_wrk(r.url, duration=1 if args.quick else 2,
                                  connections=args.connections,
                                  shim=shim if r.setup.tls else None, material=m,
                                  script=script_for(plan, -1), cpus=client_cpus)
                for rnd in range(plan.rounds):
                    order = running if rnd % 2 == 0 else running[::-1]
                    for r in order:
                        smp = measure(r, m, shim, script_for(plan, rnd), plan=plan, rnd=rnd,
                                      connections=args.connections, client_cpus=client_cpus)
                        samples.append(smp)
                        flag = f"  FLAGGED: {'; '.join(smp.problems)}" if smp.problems else ""
                        print(f"  {plan.name:15} round {rnd + 1}/{plan.rounds} "
                              f"[{r.setup.key:>3}] {smp.rps:8.0f} req/s  "
                              f"p99 {smp.p99 / 1000:6.2f} ms  {smp.cpu_us:6.0f} µs CPU/req "
                              f"(app {smp.cpu_app_us:5.0f})  "
                              f"statuses {dict(sorted(smp.statuses.items()))}{flag}",
                              flush=True)
        finally:
            for proc in ctx.procs:
                proc.stop()
        phases["load runs"] = time.monotonic() - t0
        t0 = time.monotonic()
        if not args.no_micro:
            import micro as micro_bench

            print("micro-benchmark ...", flush=True)
            micro = micro_bench.run(m, sizes=micro_sizes, quick=args.quick)
            phases["micro-benchmark"] = time.monotonic() - t0
    keys = [r.setup.key for r in running]
    summaries = {p.name: summarize(samples, keys, p.name) for p in the_plans}
    ratio_rows = {p.name: ratios(samples, summaries[p.name], p.name) for p in the_plans}
    added = added_rss_kib(samples)
    chart_files: list[Path] = []
    for plan in the_plans:
        if summaries[plan.name]:
            chart_files += charts(summaries[plan.name], labels, out,
                                  suffix=f" ({plan.name})",
                                  stem="" if plan.name == "mix" else f"_{plan.name}")
    if args.docs is not None and chart_files:
        args.docs.mkdir(parents=True, exist_ok=True)
        for c in chart_files:
            shutil.copy(c, args.docs / c.name)
    env = {"machine": _machine(),
           "pinning": (f"every server process on CPU {server_cpus}, wrk on CPU {client_cpus}"
                       if server_cpus else "none"),
           "extra": ", ".join(args.extra_config)}
    probes = {r.setup.key: r.probes for r in running}
    report = write_report(out, args=args, labels=labels, summaries=summaries,
                          ratio_rows=ratio_rows, added_rss=added, micro=micro,
                          probes=probes, skipped=skipped, chart_files=chart_files,
                          started=started, env=env)
    (out / "results.json").write_text(json.dumps({
        "args": {k: str(v) for k, v in vars(args).items()},
        "labels": labels, "summaries": summaries, "ratios": ratio_rows,
        "added_rss_kib": added, "micro": micro,
        "samples": [asdict(s) for s in samples], "skipped": skipped, "probes": probes,
        "machine": env["machine"],
    }, indent=1, default=str), encoding="utf-8")
    print()
    for plan in the_plans:
        if summaries[plan.name]:
            print(PLAN_TITLES.get(plan.name, plan.name))
            print(table(summaries[plan.name], labels))
            print(ratios_md(ratio_rows[plan.name]))
    if micro:
        print(micro_table(micro))
    if added == added:
        print(f"endpointsec's added app RSS (E - B, {args.policy_lines:,} lines): "
              f"{added / 1024:.1f} MiB\n")
    if "mix" in ratio_rows:
        print("Targets (mix, keep-alive):")
        print(targets_md(ratio_rows["mix"]))
    for key, why in skipped.items():
        print(f"skipped {key}: {why}")
    flagged = sorted({k for s in summaries.values() for k, r in s.items() if r["problems"]})
    if flagged:
        print(f"FLAGGED (statuses not as expected): {', '.join(flagged)}")
    print("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in phases.items()))
    print(f"report: {report}  ({time.time() - started:.0f} s)")
    return 0


def _pinning(spec: str) -> tuple[str | None, str | None]:
    """``"auto"``: servers on CPU 0 and wrk on CPU 1 when there are two CPUs or more;
    ``"none"``; or ``"SERVER:CLIENT"`` taskset lists such as ``"0:1"``."""
    if spec == "none":
        return None, None
    if spec == "auto":
        return ("0", "1") if (os.cpu_count() or 1) >= 2 else (None, None)
    server, _, client = spec.partition(":")
    return server or None, client or None


def _machine() -> str:
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
