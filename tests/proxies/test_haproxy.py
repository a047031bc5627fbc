"""Real HAProxy terminating mTLS on 127.0.0.1 in front of uvicorn (and werkzeug)
running the middleware with the ``haproxy`` forwarded source. The configuration is the
one in docs/proxies/haproxy.md."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from proxy_support import (
    CALLER,
    VICTIM,
    Files,
    client,
    echo_asgi,
    echo_wsgi,
    free_port,
    gatekeeper,
    make_files,
    proxy_process,
    require_binary,
    uvicorn_server,
    werkzeug_server,
)

from endpointsec.identity.forwarded import ProxyConfig

pytestmark = [pytest.mark.haproxy, pytest.mark.slow]

PROXY = ProxyConfig(trusted=("127.0.0.1/32",), sources=("haproxy",))

HAPROXY_CFG = """\
global
    maxconn 64

defaults
    mode http
    timeout connect 5s
    timeout client 10s
    timeout server 10s

frontend mtls
    bind 127.0.0.1:{port} ssl crt {combined} ca-file {ca_pem} verify {verify}
{forward}
    default_backend app

backend app
    server app 127.0.0.1:{app_port}
"""

FORWARD = """\
    http-request del-header X-SSL-Client-DER
    http-request del-header X-SSL-Client-Verify
    http-request set-header X-SSL-Client-DER %[ssl_c_der,base64] if { ssl_c_used }
    http-request set-header X-SSL-Client-Verify %[ssl_c_verify] if { ssl_c_used }"""


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    return make_files(tmp_path_factory.mktemp("haproxy-pki"))


def run_haproxy(d: Path, files: Files, *, app_port: int, verify: str = "optional",
                forward: bool | str = True) -> tuple[list[str], int, Path]:
    haproxy = require_binary("haproxy")
    port = free_port()
    cfg = d / "haproxy.cfg"
    cfg.write_text(HAPROXY_CFG.format(
        port=port, app_port=app_port, combined=files.server_combined, ca_pem=files.ca_pem,
        verify=verify,
        forward=forward if isinstance(forward, str) else FORWARD if forward else "",
    ))
    return [haproxy, "-f", str(cfg), "-db"], port, d / "haproxy.out"


@pytest.fixture
def asgi_behind_haproxy(tmp_path: Path, files: Files) -> Iterator[int]:
    with uvicorn_server(echo_asgi(gatekeeper(files, PROXY))) as app_port:
        argv, port, log = run_haproxy(tmp_path, files, app_port=app_port)
        with proxy_process(argv, port=port, log=log):
            yield port


def victim_der(files: Files) -> str:
    """The victim's certificate (public) as HAProxy would forward it."""
    return base64.b64encode(files.victim.der).decode()


def test_client_certificate_reaches_the_app(files: Files, asgi_behind_haproxy: int) -> None:
    with client(files, files.client) as c:
        r = c.get(f"https://127.0.0.1:{asgi_behind_haproxy}/orders")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["peer"] == CALLER
    assert body["headers"]["x-ssl-client-verify"] == "0"


def test_forged_header_with_a_real_certificate_is_replaced(
        files: Files, asgi_behind_haproxy: int) -> None:
    with client(files, files.client) as c:
        r = c.get(f"https://127.0.0.1:{asgi_behind_haproxy}/orders",
                  headers={"X-SSL-Client-DER": victim_der(files),
                           "X-SSL-Client-Verify": "0"})
    assert r.status_code == 200
    assert r.json()["peer"] == CALLER


def test_forged_header_without_a_certificate_is_deleted(
        files: Files, asgi_behind_haproxy: int) -> None:
    with client(files, None) as c:
        r = c.get(f"https://127.0.0.1:{asgi_behind_haproxy}/orders",
                  headers={"X-SSL-Client-DER": victim_der(files),
                           "X-SSL-Client-Verify": "0"})
    assert r.status_code == 401
    assert VICTIM not in r.text


def test_underscore_spelling_passes_haproxy_but_not_the_app(
        files: Files, asgi_behind_haproxy: int) -> None:
    # HAProxy forwards X-SSL-Client_DER untouched (del-header matches the exact name).
    # The source reads only the exact name, and the middleware removes the '_'
    # spelling before the app (or a WSGI bridge that would fold it) sees it.
    with client(files, files.client) as c:
        r = c.get(f"https://127.0.0.1:{asgi_behind_haproxy}/orders",
                  headers={"X-SSL-Client_DER": victim_der(files)})
    assert r.status_code == 200
    body = r.json()
    assert body["peer"] == CALLER
    assert "x-ssl-client_der" not in body["headers"]
    with client(files, None) as c:
        r = c.get(f"https://127.0.0.1:{asgi_behind_haproxy}/orders",
                  headers={"X-SSL-Client_DER": victim_der(files),
                           "X-SSL-Client_Verify": "0"})
    assert r.status_code == 401


def test_underscore_spelling_behind_werkzeug(files: Files, tmp_path: Path) -> None:
    # werkzeug's server drops header names with '_' (gunicorn does too, by default:
    # header_map = "drop"), so the forged spelling never reaches HTTP_X_SSL_CLIENT_DER.
    with werkzeug_server(echo_wsgi(gatekeeper(files, PROXY))) as app_port:
        argv, port, log = run_haproxy(tmp_path, files, app_port=app_port)
        with proxy_process(argv, port=port, log=log):
            with client(files, None) as c:
                forged = c.get(f"https://127.0.0.1:{port}/orders",
                               headers={"X-SSL-Client_DER": victim_der(files),
                                        "X-SSL-Client_Verify": "0"})
            with client(files, files.client) as c:
                ok = c.get(f"https://127.0.0.1:{port}/orders",
                           headers={"X-SSL-Client_DER": victim_der(files)})
    assert forged.status_code == 401
    assert ok.status_code == 200
    assert ok.json()["peer"] == CALLER
    # The app sees HAProxy's value only, not the forged one folded into the same key.
    assert ok.json()["headers"]["HTTP_X_SSL_CLIENT_DER"] != victim_der(files)
    assert "," not in ok.json()["headers"]["HTTP_X_SSL_CLIENT_DER"]


def test_ignored_verification_errors_are_caught(files: Files, tmp_path: Path) -> None:
    # crt-ignore-err/ca-ignore-err let a certificate of another CA through the
    # handshake; ssl_c_verify is then non-zero and the app refuses it.
    with uvicorn_server(echo_asgi(gatekeeper(files, PROXY))) as app_port:
        argv, port, log = run_haproxy(tmp_path, files, app_port=app_port,
                                      verify="optional crt-ignore-err all ca-ignore-err all")
        with proxy_process(argv, port=port, log=log), client(files, files.stranger) as c:
            r = c.get(f"https://127.0.0.1:{port}/orders")
    assert r.status_code == 401


def test_misconfigured_haproxy_lets_a_client_spoof_identity(files: Files,
                                                            tmp_path: Path) -> None:
    # Without del-header/set-header the client's own headers pass: whoever holds a
    # copy of the victim's (public) certificate becomes the victim.
    with uvicorn_server(echo_asgi(gatekeeper(files, PROXY))) as app_port:
        argv, port, log = run_haproxy(tmp_path, files, app_port=app_port, forward=False)
        with proxy_process(argv, port=port, log=log), client(files, None) as c:
            r = c.get(f"https://127.0.0.1:{port}/orders",
                      headers={"X-SSL-Client-DER": victim_der(files),
                               "X-SSL-Client-Verify": "0"})
    assert r.status_code == 200
    assert r.json()["peer"] == VICTIM


def test_direct_request_to_the_app_is_not_trusted(files: Files) -> None:
    proxy = ProxyConfig(trusted=("127.0.0.2/32",), sources=("haproxy",))
    with uvicorn_server(echo_asgi(gatekeeper(files, proxy))) as app_port:
        r = httpx.get(f"http://127.0.0.1:{app_port}/orders",
                      headers={"X-SSL-Client-DER": victim_der(files),
                               "X-SSL-Client-Verify": "0"}, timeout=10)
    assert r.status_code == 401


# Other sources' formats produced by a real HAProxy from ssl_c_der: RFC 9440 byte
# sequences, and the base64 DER of Caddy and Traefik v3.
EMULATED = [
    pytest.param("client-cert", "Client-Cert :%[ssl_c_der,base64]:", id="rfc9440"),
    pytest.param("caddy", "X-Client-Cert-Der %[ssl_c_der,base64]", id="caddy"),
    pytest.param("traefik", "X-Forwarded-Tls-Client-Cert %[ssl_c_der,base64]", id="traefik"),
]


@pytest.mark.parametrize(("source", "header"), EMULATED)
def test_other_formats_end_to_end(files: Files, tmp_path: Path, source: str,
                                  header: str) -> None:
    name = header.split()[0]
    forward = (f"    http-request del-header {name}\n"
               f"    http-request set-header {header} if {{ ssl_c_used }}")
    proxy = ProxyConfig(trusted=("127.0.0.1/32",), sources=(source,))
    with uvicorn_server(echo_asgi(gatekeeper(files, proxy))) as app_port:
        argv, port, log = run_haproxy(tmp_path, files, app_port=app_port,
                                      verify="required", forward=forward)
        with proxy_process(argv, port=port, log=log), client(files, files.client) as c:
            r = c.get(f"https://127.0.0.1:{port}/orders")
    assert r.status_code == 200, r.text
    assert r.json()["peer"] == CALLER
