"""The contrast benchmark's pieces work (bench/); no timing is asserted here."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str) -> ModuleType:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


@pytest.fixture(scope="module")
def h() -> ModuleType:
    return _load("harness")


@pytest.fixture(scope="module")
def material(h: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return h.make_material(tmp_path_factory.mktemp("bench"), policy_sizes=(10,))


# --------------------------------------------------------------------------- /proc


@pytest.mark.parametrize(
    ("line", "ticks"),
    [
        pytest.param(b"123 (python3) S 1 123 123 0 -1 4194560 100 0 0 0 "
                     b"250 40 7 3 20 0 1 0 100 1000 50", 300, id="plain-name"),
        pytest.param(b"77 (a) b (c)) R 1 77 77 0 -1 0 0 0 0 0 "
                     b"5 6 0 0 20 0 1 0 100 1000 50", 11, id="name-with-spaces-and-parens"),
    ],
)
def test_parse_stat_ticks_sums_utime_stime_and_children(h: ModuleType, line: bytes,
                                                        ticks: int) -> None:
    assert h.parse_stat_ticks(line) == ticks


def test_cpu_ticks_of_this_process_grow_with_work(h: ModuleType) -> None:
    import os

    pid = os.getpid()
    before = h.cpu_ticks([pid])
    x = 0
    for i in range(3_000_000):
        x += i * i
    after = h.cpu_ticks([pid])
    assert x > 0
    assert h.cpu_seconds_between(before, after) > 0


def test_cpu_ticks_skips_processes_that_are_gone(h: ModuleType) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    assert h.cpu_ticks([proc.pid]) == {}
    assert h.rss_kib([proc.pid]) == 0


def test_process_tree_finds_children(h: ModuleType) -> None:
    code = "import subprocess, sys; subprocess.run([sys.executable, '-c', " \
           "'import time; time.sleep(30)'])"
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        import time

        deadline = time.monotonic() + 20
        tree: list[int] = []
        while time.monotonic() < deadline:
            tree = h.process_tree([parent.pid])
            if len(tree) >= 2:
                break
            time.sleep(0.05)
        assert parent.pid in tree
        assert len(tree) == 2
        assert h.rss_kib(tree) > 0
    finally:
        for pid in h.process_tree([parent.pid])[::-1]:
            with __import__("contextlib").suppress(ProcessLookupError):
                __import__("os").kill(pid, 9)
        parent.wait(timeout=30)


def test_parse_status_rss(h: ModuleType) -> None:
    assert h.parse_status_rss("Name:\tx\nVmHWM:\t 900 kB\nVmRSS:\t  812 kB\n") == 812
    assert h.parse_status_rss("Name:\tzombie\nState:\tZ\n") == 0


# --------------------------------------------------------------------------- wrk output


def test_parse_wrk_reads_the_lua_summary(h: ModuleType) -> None:
    out = ("Running 1s test @ https://127.0.0.1:1/orders/42\n"
           'ENDPOINTSEC_BENCH {"requests": 500, "duration_us": 2000000, "bytes": 1, '
           '"connect_errors": 1, "read_errors": 0, "write_errors": 0, '
           '"status_errors": 3, "timeouts": 2, "p50": 100, "p90": 200, "p99": 900, '
           '"p999": 950, "max": 1000, "mean": 120.5}\n')
    r = h.parse_wrk(out)
    assert (r.requests, r.errors, r.non2xx) == (500, 3, 3)
    assert (r.p50, r.p90, r.p99) == (100.0, 200.0, 900.0)
    assert r.rps == 250.0


def test_parse_wrk_without_summary_raises(h: ModuleType) -> None:
    with pytest.raises(ValueError, match="ENDPOINTSEC_BENCH"):
        h.parse_wrk("Running 1s test\nunable to connect\n")


def test_wrk_keepalive_off_sends_connection_close(h: ModuleType) -> None:
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed")
    argv = h.wrk_argv("https://127.0.0.1:1/", duration=2, connections=4, token="t",
                      keepalive=False)
    assert "Connection: close" in argv
    assert "Authorization: Bearer t" in argv
    assert argv[-1] == "https://127.0.0.1:1/"


# --------------------------------------------------------------------------- statistics


@pytest.mark.parametrize(
    ("value", "base", "expected"),
    [
        pytest.param(150.0, 100.0, 1.5, id="ratio"),
        pytest.param(1.0, 0.0, None, id="zero-base"),
        pytest.param(float("nan"), 1.0, None, id="missing-value"),
    ],
)
def test_ratio(h: ModuleType, value: float, base: float, expected: float | None) -> None:
    r = h.ratio(value, base)
    if expected is None:
        assert r != r
    else:
        assert r == expected


def test_median_ignores_missing_values(h: ModuleType) -> None:
    assert h.median([3.0, float("nan"), 1.0, 2.0]) == 2.0
    assert h.median([]) != h.median([])  # nan


def test_targets_are_judged_against_configuration_2_and_6() -> None:
    contrast = _load("contrast")
    summary = {
        "2": {"cpu_us": 100.0, "rps": 1000.0, "p99": 10.0},
        "3": {"cpu_us": 110.0, "rps": 950.0, "p99": 13.0},
        "6": {"cpu_us": 160.0, "rps": 800.0, "p99": 9.0},
    }
    for row in summary.values():
        for f in ("rps", "p99", "cpu_us"):
            row[f"{f}_x2"] = row[f] / summary["2"][f]
    micro = [{"kind": "asgi", "case": "steady", "added_us": 12.0},
             {"kind": "asgi", "case": "steady", "added_us": 16.0},
             {"kind": "wsgi", "case": "steady", "added_us": 99.0}]
    t = contrast.evaluate_targets(summary, micro)
    assert t["cpu_vs_2"]["met"] is True      # 1.10 <= 1.15
    assert t["cpu_vs_6"]["met"] is True      # 0.69 <= 0.7
    assert t["rps_vs_2"]["met"] is True      # 0.95 >= 0.9
    assert t["p99_vs_2"]["met"] is False     # 1.3 > 1.2
    assert t["added_us"]["met"] is False     # the worst ASGI policy size counts
    assert "**missed**" in contrast.targets_md(t)


# --------------------------------------------------------------------------- material


def test_policy_lines_hold_the_rule_among_fillers(h: ModuleType) -> None:
    lines = h.policy_lines(1000)
    assert len(lines) == 1000
    assert sum(h.CLIENT_SPIFFE in line for line in lines) == 1


@pytest.mark.parametrize("source", ["asgi-tls", "gunicorn", "wsgi-environ", "nginx"])
def test_generated_configuration_is_valid(h: ModuleType, material: Any, source: str) -> None:
    import endpointsec

    path = h.write_config(material, f"cfg-{source}", policy=material.policy_files[10],
                          source=source)
    cfg = endpointsec.load_config(path)
    assert cfg.tokens.issuers[0].issuer == h.ISSUER
    assert (cfg.proxy is not None) == (source == "nginx")


@pytest.mark.parametrize(
    ("path", "with_token", "status"),
    [
        pytest.param("/orders/42", True, 200, id="allowed"),
        pytest.param("/admin/users", True, 403, id="outside-policy"),
        pytest.param("/orders/42", False, 401, id="no-token"),
    ],
)
def test_micro_requests_meet_the_policy(material: Any, path: str, with_token: bool,
                                        status: int) -> None:
    """The micro-benchmark's prepared ASGI and WSGI requests go through the real
    middleware; the benchmark refuses to time anything but a 200."""
    import endpointsec

    h = _load("harness")
    micro = _load("micro")
    apps = _load("apps")
    pem = material.client_cert.read_text()
    pem = pem.split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
    asgi_cfg = h.write_config(material, "t-asgi", policy=material.policy_files[10],
                              source="asgi-tls")
    wsgi_cfg = h.write_config(material, "t-wsgi", policy=material.policy_files[10],
                              source="wsgi-environ")
    asgi = endpointsec.ASGIMiddleware(apps.bare, config=endpointsec.load_config(asgi_cfg))
    wsgi = endpointsec.WSGIMiddleware(apps.bare_wsgi,
                                      config=endpointsec.load_config(wsgi_cfg))

    def scope(i: int) -> dict[str, Any]:
        s = micro.asgi_scope(material, path=path, client_pem=pem)
        if not with_token:
            s["headers"] = [hv for hv in s["headers"] if hv[0] != b"authorization"]
        return s

    def environ(i: int) -> dict[str, Any]:
        e = micro.wsgi_environ(material, path=path, client_pem=pem)
        if not with_token:
            del e["HTTP_AUTHORIZATION"]
        return e

    if status == 200:
        assert micro.time_asgi(asgi, scope, 3) > 0
        assert micro.time_wsgi(wsgi, environ, 3) > 0
    else:
        with pytest.raises(RuntimeError, match=str(status)):
            micro.time_asgi(asgi, scope, 1)
        with pytest.raises(RuntimeError, match=str(status)):
            micro.time_wsgi(wsgi, environ, 1)


# --------------------------------------------------------------------------- sidecars


@pytest.mark.nginx
@pytest.mark.parametrize("authz", [False, True], ids=["sidecar", "ext-authz"])
def test_nginx_configuration_is_accepted_by_nginx(h: ModuleType, material: Any,
                                                  authz: bool) -> None:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        pytest.skip("nginx is not installed")
    name = f"t-{authz}"
    tmp = material.root / f"nginx-{name}"
    tmp.mkdir(exist_ok=True)
    conf = tmp / "nginx.conf"
    conf.write_text(h.nginx_conf(material, name=name, port=h.free_port(),
                                 upstream_port=h.free_port(), forward_cert=True,
                                 authz_port=h.free_port() if authz else None))
    r = subprocess.run([nginx, "-t", "-p", str(tmp), "-c", str(conf), "-e",
                        str(tmp / "error.log")], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


@pytest.mark.haproxy
def test_haproxy_configuration_is_accepted_by_haproxy(h: ModuleType, material: Any) -> None:
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(haproxy).exists():
        pytest.skip("haproxy is not installed")
    cfg = material.root / "haproxy.cfg"
    cfg.write_text(h.haproxy_cfg(material, port=h.free_port(), upstream_port=h.free_port()))
    r = subprocess.run([haproxy, "-c", "-f", str(cfg)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_contrast_runs_end_to_end_on_two_configurations(tmp_path: Path) -> None:
    """A one-second run of configurations 2 and 3 writes the report and the results."""
    if shutil.which("wrk") is None or shutil.which("gcc") is None:
        pytest.skip("wrk and gcc are needed (apt-get install wrk gcc libssl-dev)")
    r = subprocess.run(
        [sys.executable, str(BENCH / "contrast.py"), "--only", "2,3", "--duration", "1",
         "--rounds", "1", "--close-rounds", "0", "--no-micro", "--policy-lines", "10",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    rows = results["summaries"]["keepalive"]
    assert set(rows) == {"2", "3"}
    assert rows["3"]["errors"] == 0
    assert rows["3"]["cpu_us"] > 0
    assert results["probes"]["3"] == {"good": 200, "no_token": 401, "outside_policy": 403,
                                      "no_client_cert": 0}
    report = (tmp_path / "report.md").read_text()
    assert "endpointsec in-process (uvicorn)" in report
