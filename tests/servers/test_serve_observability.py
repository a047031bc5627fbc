"""`endpointsec serve` talks: the start-up summary, one line per denial at info (escaped),
JSON records, Prometheus metrics on their own port; and the one warning for TLS requests
without the ASGI TLS extension. Real uvicorn over real mutual TLS, in a subprocess whose
output is read back."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from servers_support import HERE, SID, ServerPki, client_context, free_port, wait_for_port

import endpointsec
from endpointsec.testing.tokens import TokenIssuer

SRC = Path(endpointsec.__file__).resolve().parents[1]
ISSUER = "https://issuer.example"
EVIL_SUB = "mallory\r\nFAKE allow 200\x1b[31m"
CONTRACT = ["time", "event", "request_id", "method", "path", "route", "domain", "peer",
            "request_principal", "subjects", "decision", "status", "rule", "reason",
            "dry_run", "duration_us", "level", "logger"]

APP = '''
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
'''


WSGI_APP = '''
def app(environ, start_response):
    start_response("200 OK", [("content-type", "text/plain")])
    return [b"ok"]
'''


@pytest.fixture(scope="module")
def served(server_pki: ServerPki, tmp_path_factory: pytest.TempPathFactory
           ) -> tuple[Path, TokenIssuer]:
    root = tmp_path_factory.mktemp("serve-observability")
    (root / "obs_app.py").write_text(APP)
    (root / "obs_wsgi.py").write_text(WSGI_APP)
    issuer = TokenIssuer(issuer=ISSUER)
    (root / "issuer.pem").write_bytes(issuer.public_key_pem)
    (root / "policy.csv").write_text(
        f"p, {SID}, *, /allowed, GET, allow\n"
        f"g, {SID}, role:orders, *\n")
    (root / "endpointsec.toml").write_text(f"""
[server]
certfile = "{server_pki.server_cert}"
keyfile = "{server_pki.server_key}"
client_ca = "{server_pki.server_tls_bundle}"

[identity]
sources = ["asgi-tls"]
trust_domains."example.org".bundle = "{server_pki.ca_bundle}"

[[tokens.issuers]]
issuer = "{ISSUER}"
audiences = ["endpointsec"]
algorithms = ["ES256"]
public_key = "issuer.pem"

[policy]
policy = "policy.csv"
""")
    toml = (root / "endpointsec.toml").read_text()
    (root / "gunicorn.toml").write_text(toml.replace('sources = ["asgi-tls"]',
                                                     'sources = ["gunicorn"]'))
    return root, issuer


@contextlib.contextmanager
def serve(root: Path, *extra: str, app: str = "obs_app:app",
          config: str = "endpointsec.toml") -> Iterator[tuple[int, int, Path]]:
    port, metrics_port = free_port(), free_port()
    out = root / f"serve-{port}.log"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "endpointsec.cli", "serve", app, "--wrap",
             "--app-dir", str(root), "--config", str(root / config),
             "--port", str(port), "--metrics-port", str(metrics_port), *extra],
            cwd=root, env=env, stdout=sink, stderr=subprocess.STDOUT)
        try:
            wait_for_port(port, proc)
            yield port, metrics_port, out
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def get(port: int, pki: ServerPki, path: str, token: str | None = None) -> int:
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10,
                                       context=client_context(pki, "valid"))
    try:
        conn.request("GET", path, headers={"authorization": f"Bearer {token}"} if token
                     else {})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        assert resp.status == 200
        text = resp.read().decode()
    finally:
        conn.close()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def output(path: Path, *, until: str, timeout: float = 10) -> str:
    """The server's output, once ``until`` is in it (logs are flushed per record)."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = path.read_bytes().decode("utf-8", "replace")
        if until in text:
            break
        time.sleep(0.05)
    return text


def _requests(port: int, pki: ServerPki, issuer: TokenIssuer) -> None:
    assert get(port, pki, "/allowed") == 200
    assert get(port, pki, "/forbidden") == 403
    assert get(port, pki, "/forbidden", issuer.issue(sub=EVIL_SUB)) == 403


def test_text_log_start_up_summary_and_metrics(served: tuple[Path, TokenIssuer],
                                               server_pki: ServerPki) -> None:
    pytest.importorskip("prometheus_client")
    root, issuer = served
    with serve(root, "--log-level", "info") as (port, metrics_port, out):
        _requests(port, server_pki, issuer)
        parsed = scrape(metrics_port)
        text = output(out, until="mallory")
    lines = text.splitlines()
    assert f"endpointsec serve: listening on https://127.0.0.1:{port} (uvicorn, ASGI, " \
        "client certificate required)" in lines
    assert f"  config:        {root / 'endpointsec.toml'}" in lines
    assert f"  policy:        1 rule, 1 role from {root / 'policy.csv'}" in lines
    assert "  trust domains: example.org" in lines
    assert f"  metrics:       http://127.0.0.1:{metrics_port}/metrics" in lines
    denials = [line for line in lines if " endpointsec.decision: " in line]
    assert len(denials) == 2, text
    first, second = denials
    assert re.search(r"INFO endpointsec\.decision: deny 403 GET /forbidden reason=\S", first)
    assert f"peer={SID}" in first
    assert f"user={ISSUER}#mallory\\r\\nFAKE allow 200\\x1b[31m" in second
    assert "\x1b" not in text
    assert "FAKE allow" not in "".join(line.split("user=")[0] for line in lines)

    def value(name: str, **labels: str) -> float:
        return parsed.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("endpointsec_decisions_total", decision="allow", status="200",
                 reason="policy_allow") == 1
    assert value("endpointsec_decisions_total", decision="deny", status="403",
                 reason="policy_deny") == 2
    assert value("endpointsec_decision_duration_seconds_count") == 3
    assert value("endpointsec_policy_rules") == 1
    assert value("endpointsec_policy_roles") == 1


def test_json_records(served: tuple[Path, TokenIssuer], server_pki: ServerPki) -> None:
    root, issuer = served
    with serve(root, "--log-level", "info", "--log-format", "json") as (port, _, out):
        _requests(port, server_pki, issuer)
        text = output(out, until="mallory")
    records: list[dict[str, Any]] = []
    for line in text.splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    decisions = [r for r in records if r.get("event") == "endpointsec.decision"]
    assert [(r["decision"], r["status"], r["path"]) for r in decisions] == [
        ("deny", 403, "/forbidden"), ("deny", 403, "/forbidden")]
    assert all(list(r) == CONTRACT for r in decisions)
    assert decisions[0]["peer"]["spiffe_id"] == SID
    assert decisions[1]["request_principal"] == {"issuer": ISSUER, "subject": EVIL_SUB}
    assert "\x1b" not in text


def test_gunicorn_worker_serves_its_metrics(served: tuple[Path, TokenIssuer],
                                            server_pki: ServerPki) -> None:
    """WSGI under gunicorn: the worker holds the counts, so it serves the metrics."""
    pytest.importorskip("prometheus_client")
    pytest.importorskip("gunicorn")
    root, issuer = served
    with serve(root, "--log-level", "info", app="obs_wsgi:app",
               config="gunicorn.toml") as (port, metrics_port, out):
        _requests(port, server_pki, issuer)
        wait_for_port(metrics_port, None)
        parsed = scrape(metrics_port)
        text = output(out, until="mallory")
    assert "(gunicorn, WSGI, client certificate required)" in text
    assert parsed[("endpointsec_decisions_total", (("decision", "allow"),
                                                   ("reason", "policy_allow"),
                                                   ("status", "200")))] == 1
    assert parsed[("endpointsec_decisions_total", (("decision", "deny"),
                                                   ("reason", "policy_deny"),
                                                   ("status", "403")))] == 2
    assert len([line for line in text.splitlines() if " endpointsec.decision: deny 403"
                in line]) == 2, text


def test_warning_level_is_quiet(served: tuple[Path, TokenIssuer],
                                server_pki: ServerPki) -> None:
    root, issuer = served
    with serve(root) as (port, _, out):
        _requests(port, server_pki, issuer)
        time.sleep(0.2)
        text = out.read_text(errors="replace")
    assert "endpointsec.decision" not in text
    assert "endpointsec serve: listening on" in text


def test_missing_tls_extension_warns_once_over_real_tls(server_pki: ServerPki) -> None:
    """Plain uvicorn (its own protocol class) over TLS: the 'asgi-tls' source sees no
    TLS extension; one warning names the protocol class to use."""
    port = free_port()
    env = dict(os.environ)
    env["ENDPOINTSEC_TEST_BUNDLE"] = str(server_pki.ca_bundle)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(SRC)])
    log = server_pki.directory / f"uvicorn-{port}.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "servers_app:make_asgi_app", "--factory",
             "--host", "127.0.0.1", "--port", str(port),
             "--ssl-certfile", str(server_pki.server_cert),
             "--ssl-keyfile", str(server_pki.server_key),
             "--ssl-ca-certs", str(server_pki.server_tls_bundle), "--ssl-cert-reqs", "2",
             "--lifespan", "off", "--log-level", "warning", "--no-access-log"],
            cwd=HERE, env=env, stdout=sink, stderr=subprocess.STDOUT)
        try:
            wait_for_port(port, proc)
            statuses = [get(port, server_pki, "/whoami") for _ in range(3)]
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    assert statuses == [401, 401, 401]
    text = output(log, until="TLS extension")
    assert text.count("no TLS extension") == 1, text
    assert "--http endpointsec.servers.uvicorn:HttpToolsProtocol" in text
