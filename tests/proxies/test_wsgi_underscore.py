"""What real WSGI servers do with ``X-SSL-Client_DER`` (the underscore spelling that
WSGI folds into the same ``HTTP_X_SSL_CLIENT_DER`` key): gunicorn drops it by default
(``header_map = "drop"``) and folds it with ``"dangerous"``, where the folded value is
refused. The request comes straight from the test client, which plays the trusted proxy
(127.0.0.1) that forgot to remove the underscore spelling."""

from __future__ import annotations

import base64
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from proxy_support import CALLER, Files, free_port, make_files, proxy_process

pytestmark = pytest.mark.slow

APP = '''
import json, os
from endpointsec import WSGIMiddleware, load_config

def inner(environ, start_response):
    ctx = environ["endpointsec"]
    peer = ctx.principal.peer
    body = {"peer": peer.id if peer else None,
            "der": environ.get("HTTP_X_SSL_CLIENT_DER")}
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(body).encode()]

app = WSGIMiddleware(inner, config=load_config(os.environ["ENDPOINTSEC_TEST_CONFIG"]))
'''

CONFIG = '''
[identity]
trust_bundles = ["{bundle}"]

[proxy]
trusted = ["127.0.0.1/32"]
sources = ["haproxy"]

[policy]
allow_authenticated = true

[[routes]]
path = "/raw"
public = true
'''


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    return make_files(tmp_path_factory.mktemp("wsgi-pki"))


@contextlib.contextmanager
def gunicorn(tmp_path: Path, files: Files, header_map: str) -> Iterator[int]:
    """gunicorn serving the app above with the given ``--header-map``; yields the port."""
    (tmp_path / "esapp.py").write_text(APP)
    cfg = tmp_path / "endpointsec.toml"
    cfg.write_text(CONFIG.format(bundle=files.ca_pem))
    port = free_port()
    argv = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers",
            "1", "--chdir", str(tmp_path), "--header-map", header_map, "esapp:app"]
    env = {**os.environ, "ENDPOINTSEC_TEST_CONFIG": str(cfg)}
    with proxy_process(argv, port=port, log=tmp_path / "gunicorn.out", env=env):
        yield port


def _cert(files: Files) -> str:
    cert = x509.load_pem_x509_certificate(files.client[0].read_bytes())
    return base64.b64encode(cert.public_bytes(Encoding.DER)).decode()


def test_gunicorn_drops_underscore_headers_by_default(files: Files, tmp_path: Path) -> None:
    forged = base64.b64encode(files.victim.der).decode()
    with gunicorn(tmp_path, files, "drop") as port:
        raw = httpx.get(f"http://127.0.0.1:{port}/raw",
                        headers={"X-SSL-Client_DER": forged}, timeout=10)
        assert raw.status_code == 200
        assert raw.json()["der"] is None
        ok = httpx.get(f"http://127.0.0.1:{port}/orders",
                       headers={"X-SSL-Client-DER": _cert(files), "X-SSL-Client-Verify": "0",
                                "X-SSL-Client_DER": forged, "X-SSL-Client_Verify": "0"},
                       timeout=10)
        assert ok.status_code == 200
        assert ok.json()["peer"] == CALLER


def test_gunicorn_dangerous_header_map_folds_and_is_refused(files: Files,
                                                            tmp_path: Path) -> None:
    forged = base64.b64encode(files.victim.der).decode()
    with gunicorn(tmp_path, files, "dangerous") as port:
        raw = httpx.get(f"http://127.0.0.1:{port}/raw",
                        headers={"X-SSL-Client_DER": forged}, timeout=10)
        # Folded: the forged underscore spelling now *is* HTTP_X_SSL_CLIENT_DER ...
        assert raw.json()["der"] == forged
        both = httpx.get(f"http://127.0.0.1:{port}/orders",
                         headers={"X-SSL-Client-DER": _cert(files),
                                  "X-SSL-Client-Verify": "0",
                                  "X-SSL-Client_DER": forged}, timeout=10)
        # ... and next to the proxy's value it makes "a,b", which is refused.
        assert both.status_code == 401
