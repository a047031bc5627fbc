"""Both examples, served by `endpointsec serve` (uvicorn and gunicorn) over real mTLS,
with real client certificates and tokens from a local issuer."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from endpointsec.cli.demo import prepare_example
from endpointsec.testing.pki import CertificateAuthority
from endpointsec.testing.tokens import TokenIssuer

WEB = "spiffe://shop.local/ns/shop/sa/web"
WAREHOUSE = "spiffe://shop.local/ns/shop/sa/warehouse"
ADMIN = "spiffe://shop.local/ns/shop/sa/admin-console"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("work") / "pki"
    ca = CertificateAuthority.create()
    ca.write(d)
    ca.issue_server().write(d, "server")
    for name, spiffe in (("web", WEB), ("warehouse", WAREHOUSE), ("admin-console", ADMIN)):
        ca.issue_client(spiffe_id=spiffe).write(d, name)
    return d


@pytest.fixture(scope="module")
def issuer() -> Iterator[TokenIssuer]:
    issuer = TokenIssuer(algorithm="ES256", audience="inventory")
    with issuer.serve():
        yield issuer


def serve(example: str, pki: Path, issuer: TokenIssuer) -> Iterator[str]:
    work = pki.parent
    port = free_port()
    config = prepare_example(work, EXAMPLES / example, issuer_url=issuer.issuer, port=port)
    proc = subprocess.Popen(
        [sys.executable, "-m", "endpointsec.cli", "serve", "app:app", "--config", str(config),
         "--app-dir", str(EXAMPLES / example)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ},
    )
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
        yield f"https://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


def call(pki: Path, url: str, method: str, path: str, *, cert: str | None = None,
         token: str | None = None, json: object = None) -> httpx.Response:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if cert:
        ctx.load_cert_chain(pki / f"{cert}.pem", pki / f"{cert}.key")
    headers = {"authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(verify=ctx, timeout=10) as client:
        return client.request(method, url + path, headers=headers, json=json)


@pytest.fixture(scope="module")
def flask_url(pki: Path, issuer: TokenIssuer) -> Iterator[str]:
    yield from serve("flask_app", pki, issuer)


@pytest.fixture(scope="module")
def fastapi_url(pki: Path, issuer: TokenIssuer) -> Iterator[str]:
    issuer.audience = "orders"
    yield from serve("fastapi_app", pki, issuer)
    issuer.audience = "inventory"


@pytest.mark.slow
def test_flask_example_over_gunicorn(pki: Path, issuer: TokenIssuer, flask_url: str) -> None:
    r = call(pki, flask_url, "GET", "/stock", cert="web")
    assert r.status_code == 200
    assert r.json()["caller"]["peer"] == WEB
    assert call(pki, flask_url, "GET", "/healthz").status_code == 200
    assert call(pki, flask_url, "GET", "/stock").status_code == 401
    staff = issuer.issue(sub="dana", roles=["warehouse"])
    # web may read but not restock, whatever the token says
    assert call(pki, flask_url, "POST", "/stock/keyboard", cert="web", token=staff,
                json={"add": 1}).status_code == 403
    # the warehouse app restocks only with a warehouse user's token
    assert call(pki, flask_url, "POST", "/stock/keyboard", cert="warehouse",
                json={"add": 1}).status_code == 401
    clerk = issuer.issue(sub="erin", roles=["clerk"])
    assert call(pki, flask_url, "POST", "/stock/keyboard", cert="warehouse", token=clerk,
                json={"add": 1}).status_code == 403
    r = call(pki, flask_url, "POST", "/stock/keyboard", cert="warehouse", token=staff,
             json={"add": 2})
    assert r.status_code == 201
    assert r.json()["caller"] == {"peer": WAREHOUSE, "user": f"{issuer.issuer}#dana"}
    # a path the app would read differently from the authorized one is refused: encoded
    # dot segments, and an encoded slash (which Flask decodes into a separator)
    assert call(pki, flask_url, "GET", "/stock/%2e%2e/admin", cert="web").status_code == 400
    assert call(pki, flask_url, "GET", "/stock/..%2fadmin", cert="web").status_code == 400


@pytest.mark.slow
def test_fastapi_example_over_uvicorn(pki: Path, issuer: TokenIssuer, fastapi_url: str) -> None:
    r = call(pki, fastapi_url, "GET", "/orders", cert="web")
    assert r.status_code == 200
    assert r.json()["caller"]["peer"] == WEB
    assert call(pki, fastapi_url, "GET", "/admin/stats", cert="web").status_code == 403
    assert call(pki, fastapi_url, "GET", "/admin/stats", cert="admin-console").status_code == 200
    r = call(pki, fastapi_url, "GET", "/orders", cert="web", token="not-a-jwt")
    assert r.status_code == 401
    assert 'error="invalid_token"' in r.headers["www-authenticate"]
    assert "not-a-jwt" not in r.text
    # a user's token role cannot claim a workload's rules (workload:storefront may POST
    # /orders; a token saying roles=["storefront"] through another workload may not)
    impostor = issuer.issue(sub="mallory", roles=["storefront", "workload:storefront"])
    r = call(pki, fastapi_url, "POST", "/orders", cert="admin-console", token=impostor,
             json={"item": "x"})
    assert r.status_code == 403
    schema = call(pki, fastapi_url, "GET", "/openapi.json", cert="admin-console")
    assert schema.status_code == 403  # the schema is not public unless the policy says so
