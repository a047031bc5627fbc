"""docs/quickstart.md, run as written: its PKI commands, configuration, policy and app,
served by `endpointsec serve` over real mTLS, a token from its development issuer, and
the answers its curl lines promise."""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from endpointsec.cli import main
from endpointsec.testing import TokenIssuer

QUICKSTART = Path(__file__).resolve().parents[2] / "docs" / "quickstart.md"
DOC_ISSUER = "http://127.0.0.1:8081"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", QUICKSTART.read_text(), re.DOTALL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def curl_lines() -> list[tuple[int, str, str, bool, bool]]:
    """(status, method, path, with certificate, with token) for each commented curl."""
    calls = []
    text = next(b for b in blocks("bash") if "curl " in b).replace("\\\n", " ")
    for comment, line in re.findall(r"# (\d{3}):[^\n]*\n(curl [^\n]*)", text):
        method = re.search(r"-X (\w+)", line)
        path = re.search(r"https://127\.0\.0\.1:8443(\S*)", line)
        assert path is not None, line
        calls.append((int(comment), method.group(1) if method else "GET", path.group(1),
                      "--cert" in line, "$TOKEN" in line))
    return calls


@pytest.fixture
def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
            ) -> Iterator[tuple[Path, str, TokenIssuer]]:
    monkeypatch.chdir(tmp_path)
    for command in blocks("bash")[1].splitlines():
        args = command.split("#")[0].split()
        assert args[0] == "endpointsec", command
        assert main(args[1:]) == 0
    issuer = TokenIssuer(audience="orders")
    with issuer.serve():
        toml = blocks("toml")
        config = toml[0].replace(DOC_ISSUER, issuer.base_url) + "".join(toml[1:])
        port = free_port()
        config = config.replace("[server]", f"[server]\nport = {port}")
        (tmp_path / "endpointsec.toml").write_text(config)
        (tmp_path / "policy.csv").write_text(blocks("text")[0])
        (tmp_path / "app.py").write_text(blocks("python")[0])
        proc = subprocess.Popen(
            [sys.executable, "-m", "endpointsec.cli", "serve", "app:app", "--config",
             "endpointsec.toml"], cwd=tmp_path, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        out = proc.stdout.read().decode() if proc.stdout else ""
                        pytest.fail(f"server did not start:\n{out}")
                    time.sleep(0.1)
            yield tmp_path / "pki", f"https://127.0.0.1:{port}", issuer
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            if proc.stdout:
                proc.stdout.close()


def test_quickstart_answers_as_documented(service: tuple[Path, str, TokenIssuer]) -> None:
    pki, url, issuer = service
    # the token step: issuer.py's issue() call, made here with the running issuer
    issue = re.search(r"issuer\.issue\((.*?)\), flush", blocks("python")[1])
    assert issue is not None and 'roles=["admin"]' in issue.group(1)
    token = issuer.issue(sub="alice", roles=["admin"])
    calls = curl_lines()
    assert len(calls) == 5
    for status, method, path, with_cert, with_token in calls:
        ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        if with_cert:
            ctx.load_cert_chain(pki / "web.pem", pki / "web.key")
        headers = {"authorization": f"Bearer {token}"} if with_token else {}
        with httpx.Client(verify=ctx, timeout=10) as client:
            r = client.request(method, url + path, headers=headers)
        assert r.status_code == status, (method, path, with_cert, with_token, r.text)
    # the documentation routes made public by the page's last [[routes]] tables
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    with httpx.Client(verify=ctx, timeout=10) as client:
        for path in ("/docs", "/docs/oauth2-redirect", "/openapi.json"):
            assert client.get(url + path).status_code == 200, path
        assert client.get(url + "/orders").status_code == 401
