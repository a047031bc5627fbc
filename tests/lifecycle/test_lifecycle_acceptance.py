"""Observe, learn, replay, ship: the FastAPI example served by `endpointsec serve` over
real mTLS, real client certificates for three workloads, real tokens from a local issuer.

1. Observe: a dry-run policy with no rules; a scripted session; every decision written
   as a decision record by the server process.
2. Learn: `endpointsec learn` with the app's own route templates.
3. Check and replay: the learned policy passes `endpointsec check`, and replayed against
   its own input changes nothing; a policy missing a rule is caught by `replay`.
4. Ship: served again with the learned policy enforcing, the same session gets the same
   answers and calls outside it are refused with 403.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from endpointsec.cli.demo import prepare_example
from endpointsec.lifecycle.records import read_records
from endpointsec.testing.pki import CertificateAuthority
from endpointsec.testing.tokens import TokenIssuer

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fastapi_app"

HERE = Path(__file__).resolve().parent
WEB = "spiffe://shop.local/ns/shop/sa/web"
WAREHOUSE = "spiffe://shop.local/ns/shop/sa/warehouse"
ADMIN = "spiffe://shop.local/ns/shop/sa/admin-console"
SRC = Path(__file__).resolve().parents[2] / "src"

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Call:
    cert: str | None
    user: str | None
    method: str
    path: str
    status: int
    body: dict[str, object] | None = None


#: The observed session: who calls what, and the answer it gets.
SESSION = (
    Call("web", None, "GET", "/orders", 200),
    Call("web", None, "GET", "/orders/1", 200),
    Call("web", None, "GET", "/orders/2", 200),
    Call("web", "alice", "GET", "/orders", 200),
    Call("web", "alice", "POST", "/orders", 201, {"item": "pen"}),
    Call("warehouse", None, "GET", "/orders/1", 200),
    Call("admin-console", "carol", "GET", "/admin/stats", 200),
    Call("admin-console", "carol", "DELETE", "/orders/2", 200),
    Call(None, None, "GET", "/healthz", 200),
    Call(None, None, "GET", "/orders", 401),  # no certificate: never an authorization question
)

#: Calls the session never made: refused once the learned policy is enforced.
OUTSIDE = (
    Call("web", None, "DELETE", "/orders/1", 403),
    Call("web", None, "GET", "/admin/stats", 403),
    Call("warehouse", None, "GET", "/orders", 403),
    Call("warehouse", None, "GET", "/admin/stats", 403),
    Call("web", "alice", "DELETE", "/orders/1", 403),
    Call("admin-console", None, "GET", "/admin/stats", 403),
)

USERS = {"alice": ["customer"], "carol": ["admin"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.pop("ENDPOINTSEC_CONFIG", None)  # each command is given its configuration
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), e.get("PYTHONPATH")]))
    return e


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("lifecycle")
    pki = d / "pki"
    ca = CertificateAuthority.create()
    ca.write(pki)
    ca.issue_server().write(pki, "server")
    for name, spiffe in (("web", WEB), ("warehouse", WAREHOUSE), ("admin-console", ADMIN)):
        ca.issue_client(spiffe_id=spiffe).write(pki, name)
    return d


@pytest.fixture(scope="module")
def issuer() -> Iterator[TokenIssuer]:
    issuer = TokenIssuer(algorithm="ES256", audience="orders")
    with issuer.serve():
        yield issuer


@pytest.fixture(scope="module")
def tokens(issuer: TokenIssuer) -> dict[str, str]:
    return {name: issuer.issue(sub=name, roles=roles) for name, roles in USERS.items()}


def configure(work: Path, issuer: TokenIssuer, *, policy: str, dry_run: bool) -> tuple[Path, int]:
    port = free_port()
    config = prepare_example(work, EXAMPLE, issuer_url=issuer.issuer,
                             port=port)
    text = config.read_text()
    text = text.replace('[policy]\npolicy = "policy.csv"',
                        f'[policy]\npolicy = "policy.csv"\ndry_run = {str(dry_run).lower()}')
    assert f"dry_run = {str(dry_run).lower()}" in text
    config.write_text(text)
    (work / "policy.csv").write_text(policy)
    return config, port


@pytest.fixture
def serve(work: Path) -> Iterator[object]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(config: Path, port: int, records: Path) -> str:
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "record_server.py"), str(records), "serve", "app:app",
             "--config", str(config), "--app-dir", str(EXAMPLE)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env(), cwd=work)
        procs.append(proc)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return f"https://127.0.0.1:{port}"
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    out = proc.stdout.read().decode() if proc.stdout else ""
                    pytest.fail(f"server did not start:\n{out}")
                time.sleep(0.1)

    try:
        yield start
    finally:
        for proc in procs:
            stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
            proc.wait()
    if proc.stdout:
        proc.stdout.close()


def call(work: Path, url: str, c: Call, tokens: dict[str, str]) -> int:
    ctx = ssl.create_default_context(cafile=str(work / "pki" / "ca.pem"))
    if c.cert:
        ctx.load_cert_chain(work / "pki" / f"{c.cert}.pem", work / "pki" / f"{c.cert}.key")
    headers = {"authorization": f"Bearer {tokens[c.user]}"} if c.user else {}
    with httpx.Client(verify=ctx, timeout=10) as client:
        return client.request(c.method, url + c.path, headers=headers, json=c.body).status_code


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "endpointsec.cli", *args], cwd=cwd, env=env(),
                          capture_output=True, text=True, timeout=60, check=False)


def rules(policy: str) -> set[tuple[str, ...]]:
    return {tuple(c.strip() for c in line.split(",")) for line in policy.splitlines()
            if line.startswith("p,")}


def test_observe_learn_replay_ship(work: Path, issuer: TokenIssuer, tokens: dict[str, str],
                                   serve: object) -> None:
    start = serve
    # 1. Observe: dry-run, no rules: every request is logged as "would deny" and served.
    config, port = configure(work, issuer, policy="# observation: no rules yet\n",
                             dry_run=True)
    observed = work / "observed.jsonl"
    url = start(config, port, observed)  # type: ignore[operator]
    assert [call(work, url, c, tokens) for c in SESSION] == [c.status for c in SESSION]
    records = read_records(observed)
    assert len(records) == len(SESSION)  # one per request (the dependency's re-decision too)
    assert {r.decision for r in records if r.status == 200 and r.subjects} == {"would_deny"}
    assert any(r.status == 401 for r in records)
    carol = next(r for r in records if r.method == "DELETE")
    assert carol.subjects[0] == ADMIN and "role:admin" in carol.subjects

    # 2. Learn, with the app's route templates.
    learned = work / "learned.csv"
    out = cli("learn", str(observed), "--routes-from", "app:app", "--app-dir",
              str(EXAMPLE), "--config", str(config), "-o", str(learned),
              cwd=work)
    assert out.returncode == 0, out.stderr
    policy = learned.read_text()
    assert rules(policy) == {
        ("p", WEB, "*", "/orders", "GET", "allow"),
        ("p", WEB, "*", "/orders/:order_id", "GET", "allow"),
        ("p", WAREHOUSE, "*", "/orders/:order_id", "GET", "allow"),
        ("p", "role:customer", "*", "/orders", "GET", "allow"),
        ("p", "role:customer", "*", "/orders", "POST", "allow"),
        ("p", "role:admin", "*", "/admin/stats", "GET", "allow"),
        ("p", "role:admin", "*", "/orders/:order_id", "DELETE", "allow"),
    }
    assert re.search(r"(?m)^# seen \d+ times?, last \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", policy)
    assert "with status 401 (not an authorization question)" in policy

    # 3. Check and replay.
    config, port = configure(work, issuer, policy=policy, dry_run=False)
    checked = cli("check", str(config), cwd=work)
    assert checked.returncode == 0, checked.stdout
    replayed = cli("replay", str(observed), "--policy", str(learned), cwd=work)
    assert replayed.returncode == 0, replayed.stdout
    assert " 0 newly denied, 0 newly allowed" in replayed.stdout
    assert "not replayed (" in replayed.stdout
    narrower = work / "narrower.csv"
    narrower.write_text("\n".join(line for line in policy.splitlines()
                                  if "role:admin" not in line) + "\n")
    caught = cli("replay", str(observed), "--policy", str(narrower), cwd=work)
    assert caught.returncode == 1, caught.stdout
    assert "NEWLY DENIED" in caught.stdout
    assert "DELETE /orders/2" not in caught.stdout  # grouped by route, not by path
    assert "DELETE /orders/{order_id}" in caught.stdout  # the app's route template
    assert "GET /admin/stats" in caught.stdout

    # 4. Ship: the learned policy enforcing.
    shipped = work / "shipped.jsonl"
    url = start(config, port, shipped)  # type: ignore[operator]
    assert [call(work, url, c, tokens) for c in SESSION] == [c.status for c in SESSION]
    assert [call(work, url, c, tokens) for c in OUTSIDE] == [c.status for c in OUTSIDE]
    enforced = read_records(shipped)
    assert "would_deny" not in {r.decision for r in enforced}
    assert sum(1 for r in enforced if r.decision == "deny" and r.status == 403) >= len(OUTSIDE)
