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
    return h.make_material(tmp_path_factory.mktemp("bench"), policy_sizes=(10,), tokens=3)


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


def _sample(contrast: ModuleType, key: str, rnd: int, *, cpu: float, rps: float = 1000.0,
            p99: float = 10.0, app: float | None = None, problems: tuple[str, ...] = (),
            workload: str = "mix") -> Any:
    app_cpu = cpu if app is None else app
    roles = {"app": app_cpu} if app is None else {"app": app_cpu, "proxy": cpu - app_cpu}
    return contrast.Sample(
        key=key, workload=workload, mode="keepalive", round=rnd, rps=rps, p50=p99 / 2,
        p90=p99, p99=p99, cpu_us=cpu, cpu_role_us=roles, rss_kib=1000, rss_app_kib=900,
        processes=1, requests=1000, errors=0, statuses={200: 900, 403: 100},
        sent_allow=900, sent_deny=100, problems=list(problems))


def test_paired_ratio_is_the_median_of_per_round_ratios() -> None:
    contrast = _load("contrast")
    samples = [_sample(contrast, "B", 0, cpu=100.0), _sample(contrast, "E", 0, cpu=120.0),
               _sample(contrast, "B", 1, cpu=200.0), _sample(contrast, "E", 1, cpu=210.0),
               _sample(contrast, "B", 2, cpu=100.0), _sample(contrast, "E", 2, cpu=105.0),
               _sample(contrast, "E", 3, cpu=999.0)]  # no B in round 3: not paired
    assert contrast.paired_ratio(samples, "E", "B", "cpu_us", "mix") == pytest.approx(1.05)
    assert contrast.paired_ratio(samples, "E", "H", "cpu_us", "mix") != \
        contrast.paired_ratio(samples, "E", "H", "cpu_us", "mix")  # nan: no H


def _targets(contrast: ModuleType, samples: list[Any]) -> dict[str, dict[str, Any]]:
    keys = sorted({s.key for s in samples})
    summary = contrast.summarize(samples, keys, "mix")
    return {r["name"]: r for r in contrast.ratios(samples, summary, "mix")}


def test_targets_met_missed_and_the_cheapest_proxy_forwarded_configuration() -> None:
    contrast = _load("contrast")
    samples = [
        _sample(contrast, "B", 0, cpu=100.0, rps=1000.0, p99=10.0),
        _sample(contrast, "E", 0, cpu=109.0, rps=950.0, p99=13.0),
        _sample(contrast, "H", 0, cpu=120.0, app=40.0),
        _sample(contrast, "N", 0, cpu=80.0, app=40.0),
        _sample(contrast, "NE", 0, cpu=150.0, app=110.0),
        _sample(contrast, "HEd", 0, cpu=118.0, app=70.0),
        _sample(contrast, "WB", 0, cpu=300.0),
        _sample(contrast, "WE", 0, cpu=360.0),
    ]
    t = _targets(contrast, samples)
    assert t["E/B CPU per request"]["verdict"] == "MET"          # 1.09 <= 1.10
    assert t["E/B req/s"]["verdict"] == "MET"                    # 0.95 >= 0.90
    assert t["E/B p99"]["verdict"] == "MISSED"                   # 1.30 > 1.20
    assert t["E/H CPU per request"]["verdict"] == "MET"          # 0.91 <= 1.00
    assert t["NE/N app CPU per request"]["verdict"] == "MISSED"  # 2.75 > 1.10
    assert t["NE/N app CPU per request"]["value"] == pytest.approx(2.75)
    cheapest = t["cheapest proxy-forwarded/H CPU per request"]
    assert cheapest["num"] == "HEd"                               # not NE (1.25)
    assert cheapest["value"] == pytest.approx(118 / 120)
    assert cheapest["verdict"] == "MET"
    assert t["WE/WB CPU per request"]["verdict"] == "MISSED"     # 1.20 > 1.10
    assert t["NEu/H CPU per request"]["verdict"] == "n/a"
    md = contrast.targets_md(list(t.values()))
    assert "**MISSED**" in md
    assert "| MET |" in md
    assert "n/ax" not in md


def test_a_configuration_with_wrong_statuses_is_flagged_not_counted() -> None:
    contrast = _load("contrast")
    samples = [_sample(contrast, "B", 0, cpu=100.0),
               _sample(contrast, "E", 0, cpu=101.0, problems=("950 answered 200, 900 expected",)),
               _sample(contrast, "H", 0, cpu=150.0)]
    t = _targets(contrast, samples)
    assert t["E/B CPU per request"]["verdict"] == "FLAGGED"
    assert t["E/H CPU per request"]["flagged"] == ["E"]
    summary = contrast.summarize(samples, ["B", "E", "H"], "mix")
    assert summary["E"]["problems"] == ["950 answered 200, 900 expected"]
    assert "FLAGGED" in contrast.table(summary, {"B": "b", "E": "e", "H": "h"})
    assert "FLAGGED (wrong statuses: E)" in contrast.targets_md(list(t.values()))


def test_added_rss_is_e_minus_b_app_rss() -> None:
    contrast = _load("contrast")
    b = _sample(contrast, "B", 0, cpu=1.0)
    e = _sample(contrast, "E", 0, cpu=1.0)
    e.rss_app_kib = b.rss_app_kib + 20 * 1024
    assert contrast.added_rss_kib([b, e]) == 20 * 1024


@pytest.mark.parametrize(
    ("only", "everything", "expected"),
    [
        pytest.param("", False, None, id="default-skips-optional"),
        pytest.param("", True, "all", id="all"),
        pytest.param("B,E,H", False, ["B", "E", "H"], id="keys"),
        pytest.param("2,3,6", False, ["B", "E", "H"], id="former-numbers"),
    ],
)
def test_select_setups(only: str, everything: bool, expected: Any) -> None:
    contrast = _load("contrast")
    keys = [s.key for s in contrast.select_setups(only, everything=everything)]
    if expected is None:
        assert "P" not in keys and "BP" not in keys
        assert {"B", "E", "N", "NE", "HN", "HE", "H", "X", "WB", "WE"} <= set(keys)
    elif expected == "all":
        assert keys == [s.key for s in contrast.SETUPS]
    else:
        assert keys == expected


def test_select_setups_refuses_an_unknown_key() -> None:
    contrast = _load("contrast")
    with pytest.raises(SystemExit, match="Z9"):
        contrast.select_setups("B,Z9")


def test_extra_config_is_appended_to_the_named_configurations(h: ModuleType, material: Any,
                                                              tmp_path: Path) -> None:
    import endpointsec

    contrast = _load("contrast")
    extra = tmp_path / "extra.toml"
    extra.write_text('[[routes]]\npath = "/healthz"\npublic = true\n')
    parsed = contrast.parse_extra([f"E,NE={extra}"])
    assert set(parsed) == {"E", "NE"}
    ctx = contrast.Context(material=material, policy=material.policy_files[10],
                           log_dir=tmp_path, extra=parsed)
    with_extra = endpointsec.load_config(ctx.config("E", "asgi-tls")["ENDPOINTSEC_BENCH_CONFIG"])
    without = endpointsec.load_config(ctx.config("WE", "gunicorn")["ENDPOINTSEC_BENCH_CONFIG"])
    assert [r.path for r in with_extra.routes] == ["/healthz"]
    assert list(without.routes) == []
    assert set(contrast.parse_extra([str(extra)])) == {"*"}


def test_plans_put_the_mix_first_and_the_handshake_runs_last() -> None:
    contrast = _load("contrast")
    args = contrast.parse_args(["--paths", "1000", "--tokens", "20", "--deny-share", "0.25"])
    names = [p.name for p in contrast.plans(args)]
    assert names == ["mix", "identical", "mix-handshake"]
    mix = contrast.plans(args)[0].workload
    assert (mix.paths, mix.tokens, mix.deny_share) == (1000, 20, 0.25)
    quick = contrast.parse_args(["--quick"])
    assert [p.name for p in contrast.plans(quick)] == ["mix", "identical"]


@pytest.mark.parametrize("bad", [["--deny-share", "1"], ["--deny-share", "-0.1"],
                                 ["--tokens", "0"]])
def test_bad_workload_options_are_refused(bad: list[str]) -> None:
    contrast = _load("contrast")
    with pytest.raises(SystemExit):
        contrast.parse_args(bad)


# --------------------------------------------------------------------------- workloads


def test_workload_lua_carries_the_tokens_and_the_mix(h: ModuleType) -> None:
    w = h.Workload("mix", paths=1000, tokens=3, deny_share=0.2)
    lua = h.workload_lua(w, ["tok-a", "tok-b", "tok-c", "tok-unused"], keepalive=False)
    assert all(f'"tok-{x}"' in lua for x in "abc")
    assert "tok-unused" not in lua
    assert "local n_paths = 1000" in lua
    assert "local deny_share = 0.2" in lua
    assert 'local deny_method = "DELETE"' in lua
    assert r'local extra = "Connection: close\r\n"' in lua
    assert "function response(status" in lua
    assert "local seed = 1\n" in lua
    assert "local seed = 7\n" in h.workload_lua(w, ["a", "b", "c"], seed=7)
    keepalive = h.workload_lua(h.IDENTICAL, ["only"])
    assert 'local extra = ""' in keepalive
    assert "local n_paths = 1\n" in keepalive


def test_workload_lua_refuses_what_it_cannot_quote(h: ModuleType) -> None:
    w = h.Workload("mix", paths=10, tokens=1, deny_share=0.1)
    with pytest.raises(ValueError, match="printable ASCII"):
        h.workload_lua(w, ['tok"\nos.exit()'])
    with pytest.raises(ValueError, match="needs 2 tokens"):
        h.workload_lua(h.Workload("mix", paths=10, tokens=2, deny_share=0.1), ["one"])


@pytest.mark.parametrize(
    ("paths", "tokens", "share"),
    [pytest.param(0, 1, 0.1, id="no-path"), pytest.param(1, 0, 0.1, id="no-token"),
     pytest.param(1, 1, 1.0, id="all-denied"), pytest.param(1, 1, -0.5, id="negative")],
)
def test_workload_refuses_nonsense(h: ModuleType, paths: int, tokens: int,
                                   share: float) -> None:
    with pytest.raises(ValueError):
        h.Workload("mix", paths=paths, tokens=tokens, deny_share=share)


def _result(h: ModuleType, statuses: dict[int, int], *, allow: int, deny: int,
            errors: int = 0) -> Any:
    return h.WrkResult(requests=sum(statuses.values()), duration_s=1.0, errors=errors,
                       non2xx=0, p50=1.0, p90=1.0, p99=1.0, max=1.0, statuses=statuses,
                       sent_allow=allow, sent_deny=deny)


@pytest.mark.parametrize(
    ("statuses", "allow", "deny", "checks", "errors", "problem"),
    [
        pytest.param({200: 900, 403: 100}, 900, 100, True, 0, None, id="exact"),
        pytest.param({200: 890, 403: 95}, 900, 100, True, 0, None, id="in-flight"),
        pytest.param({200: 1000}, 900, 100, False, 0, None, id="no-checks-all-200"),
        pytest.param({200: 1000}, 900, 100, True, 0, "answered 200", id="denials-allowed"),
        pytest.param({200: 800, 403: 200}, 900, 100, True, 0, "answered 403",
                     id="allowed-denied"),
        pytest.param({200: 900, 401: 100}, 900, 100, True, 0, "100 answered 401",
                     id="other-status"),
        pytest.param({200: 900, 403: 100}, 900, 100, False, 0, "answered 403",
                     id="no-checks-but-403"),
        pytest.param({200: 850, 403: 100}, 900, 100, True, 0, "answered 200",
                     id="too-many-unanswered"),
        pytest.param({200: 850, 403: 100}, 900, 100, True, 40, None,
                     id="unanswered-socket-errors"),
        pytest.param({}, 0, 0, False, 0, "no request answered", id="nothing"),
    ],
)
def test_check_statuses(h: ModuleType, statuses: dict[int, int], allow: int, deny: int,
                        checks: bool, errors: int, problem: str | None) -> None:
    problems = h.check_statuses(_result(h, statuses, allow=allow, deny=deny, errors=errors),
                                checks=checks, connections=16)
    if problem is None:
        assert problems == []
    else:
        assert any(problem in p for p in problems), problems


def test_parse_wrk_reads_the_statuses_of_a_workload_script(h: ModuleType) -> None:
    out = ('ENDPOINTSEC_BENCH {"requests": 10, "duration_us": 1000000, "bytes": 1, '
           '"connect_errors": 0, "read_errors": 0, "write_errors": 0, '
           '"status_errors": 1, "timeouts": 0, "p50": 1, "p90": 2, "p99": 3, '
           '"p999": 4, "max": 5, "mean": 1.0, "sent_allow": 9, "sent_deny": 2, '
           '"statuses": {"200": 9, "403": 1}}\n')
    r = h.parse_wrk(out)
    assert r.statuses == {200: 9, 403: 1}
    assert (r.sent_allow, r.sent_deny) == (9, 2)


def test_the_mix_script_drives_a_real_server(h: ModuleType, material: Any,
                                             tmp_path: Path) -> None:
    """wrk runs the generated script for a second against the bare app (plain HTTP):
    distinct paths, both methods, the statuses counted and all 200."""
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (apt-get install wrk)")
    port = h.free_port()
    proc = h.Proc.start("bare", h.uvicorn_argv("apps:bare", port=port), log_dir=tmp_path)
    try:
        h.wait_port(port, proc=proc.popen)
        w = h.Workload("mix", paths=1_000_000, tokens=len(material.tokens), deny_share=0.3)
        script = tmp_path / "mix.lua"
        script.write_text(h.workload_lua(w, material.tokens))
        res = h.run_wrk(f"http://{h.HOST}:{port}/", duration=1, connections=4, shim=None,
                        material=None, script=script)
    finally:
        proc.stop()
    assert res.requests > 0
    assert set(res.statuses) == {200}
    assert res.sent_deny > 0 and res.sent_allow > res.sent_deny
    assert h.check_statuses(res, checks=False, connections=4) == []
    assert h.check_statuses(res, checks=True, connections=4) != []


# --------------------------------------------------------------------------- material


def test_policy_lines_hold_the_rules_among_fillers(h: ModuleType) -> None:
    lines = h.policy_lines(1000)
    assert len(lines) == 1000
    assert sum(h.CLIENT_SPIFFE in line for line in lines) == 1
    assert sum("role:reader" in line for line in lines) == 1
    assert not any("/orders" in line and h.DENY_METHOD in line for line in lines)


def test_material_tokens_are_distinct_callers(h: ModuleType, material: Any) -> None:
    import jwt

    subs = [jwt.decode(t, options={"verify_signature": False})["sub"]
            for t in material.tokens]
    assert len(set(subs)) == len(subs) == 3
    assert material.tokens[0] == material.token
    roles = {tuple(jwt.decode(t, options={"verify_signature": False})["roles"])
             for t in material.tokens}
    assert roles == {("reader",)}


@pytest.mark.parametrize("source", ["asgi-tls", "gunicorn", "wsgi-environ", "nginx",
                                    "nginx-noverify", "client-cert", "haproxy",
                                    "haproxy-noverify"])
def test_generated_configuration_is_valid(h: ModuleType, material: Any, source: str) -> None:
    import endpointsec

    path = h.write_config(material, f"cfg-{source}", policy=material.policy_files[10],
                          source=source)
    cfg = endpointsec.load_config(path)
    assert cfg.tokens.issuers[0].issuer == h.ISSUER
    assert (cfg.proxy is not None) == (source in h.PROXY_SOURCES)
    if cfg.proxy is not None:
        assert cfg.proxy.verify_again == (not source.endswith("-noverify"))


def test_generated_configuration_trusts_a_unix_socket_peer(h: ModuleType,
                                                           material: Any) -> None:
    import endpointsec

    path = h.write_config(material, "cfg-unix", policy=material.policy_files[10],
                          source="nginx-noverify", trusted="unix")
    assert endpointsec.load_config(path).proxy.trusted == ("unix",)


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


def test_micro_miss_cases_answer_as_the_policy_says(material: Any) -> None:
    """The micro-benchmark's miss, deny-miss and forwarded-certificate requests go
    through the real middleware with the statuses the benchmark expects (it refuses to
    time anything else)."""
    h = _load("harness")
    micro = _load("micro")
    policy = material.policy_files[10]
    for kind, build in (("asgi", micro.asgi_stack), ("wsgi", micro.wsgi_stack)):
        source = "asgi-tls" if kind == "asgi" else "wsgi-environ"
        cfg = h.write_config(material, f"m-{kind}", policy=policy, source=source)
        st = build(material, cfg, tokens=material.tokens)
        mw = st.build()
        assert st.time(mw, st.make("GET", True, True), 5) > 0
        assert st.time(mw, st.make(h.DENY_METHOD, True, True), 5, expect=403) > 0
        with pytest.raises(RuntimeError, match="403"):
            st.time(mw, st.make(h.DENY_METHOD, True, True), 1)
        for fwd in ("nginx", "client-cert"):
            cfg = h.write_config(material, f"m-{kind}-{fwd}", policy=policy, source=fwd)
            fst = build(material, cfg, source=fwd, tokens=material.tokens)
            assert fst.time(fst.build(), fst.make("GET", True, True), 3) > 0


def test_micro_rows_put_the_miss_first(material: Any) -> None:
    micro = _load("micro")
    rows = micro.bench_size(material, material.policy_files[10], 10, quick=True,
                            kinds=("asgi",), forwarded=True, tokens=material.tokens,
                            n=50, repeats=1)
    cases = [r["case"] for r in rows]
    assert {"miss", "deny miss", "steady", "cold", "miss, forwarded nginx",
            "miss, forwarded client-cert"} <= set(cases)
    table = micro.table(rows)
    body = [line for line in table.splitlines() if line.startswith("| ASGI")]
    assert body[0].startswith("| ASGI | 10 | miss |")
    assert "garbage collector" in table


# --------------------------------------------------------------------------- sidecars


@pytest.mark.nginx
@pytest.mark.parametrize(("authz", "unix"), [(False, False), (True, False), (False, True)],
                         ids=["sidecar", "ext-authz", "unix-upstream"])
def test_nginx_configuration_is_accepted_by_nginx(h: ModuleType, material: Any,
                                                  authz: bool, unix: bool) -> None:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        pytest.skip("nginx is not installed")
    name = f"t-{authz}-{unix}"
    tmp = material.root / f"nginx-{name}"
    tmp.mkdir(exist_ok=True)
    conf = tmp / "nginx.conf"
    text = h.nginx_conf(material, name=name, port=h.free_port(),
                        upstream_port=None if unix else h.free_port(),
                        upstream_unix=tmp / "app.sock" if unix else None, forward_cert=True,
                        authz_port=h.free_port() if authz else None)
    assert "proxy_http_version 1.1" in text and "keepalive 32" in text
    conf.write_text(text)
    r = subprocess.run([nginx, "-t", "-p", str(tmp), "-c", str(conf), "-e",
                        str(tmp / "error.log")], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


@pytest.mark.haproxy
@pytest.mark.parametrize(("checks", "forward"),
                         [(True, None), (False, None), (False, "client-cert"),
                          (False, "haproxy")],
                         ids=["H", "HN", "HE", "HEd"])
def test_haproxy_configuration_is_accepted_by_haproxy(h: ModuleType, material: Any,
                                                      checks: bool, forward: str | None
                                                      ) -> None:
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(haproxy).exists():
        pytest.skip("haproxy is not installed")
    cfg = material.root / "haproxy.cfg"
    text = h.haproxy_cfg(material, port=h.free_port(), upstream_port=h.free_port(),
                         checks=checks, forward=forward)
    assert ("jwt_verify" in text) == checks
    cfg.write_text(text)
    r = subprocess.run([haproxy, "-c", "-f", str(cfg)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_contrast_runs_end_to_end_on_two_configurations(tmp_path: Path) -> None:
    """A short run of configurations B and E on both workloads writes the report and the
    results, with the mix's statuses checked (E denies the denied share)."""
    if shutil.which("wrk") is None or shutil.which("gcc") is None:
        pytest.skip("wrk and gcc are needed (apt-get install wrk gcc libssl-dev)")
    r = subprocess.run(
        [sys.executable, str(BENCH / "contrast.py"), "--only", "B,E", "--duration", "1",
         "--rounds", "1", "--identical-rounds", "1", "--close-rounds", "0", "--no-micro",
         "--policy-lines", "10", "--tokens", "5", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    mix = results["summaries"]["mix"]
    assert set(mix) == {"B", "E"}
    assert set(results["summaries"]["identical"]) == {"B", "E"}
    assert mix["E"]["problems"] == [] and mix["B"]["problems"] == []
    assert mix["E"]["cpu_us"] > 0
    assert set(mix["E"]["statuses"]) == {"200", "403"}
    assert set(mix["B"]["statuses"]) == {"200"}
    assert results["probes"]["E"] == {"good": 200, "other_caller": 200, "deny": 403,
                                      "no_token": 401, "outside_policy": 403,
                                      "no_client_cert": 0}
    report = (tmp_path / "report.md").read_text()
    assert "endpointsec in-process (uvicorn)" in report
    assert "Targets (mix, keep-alive)" in report
