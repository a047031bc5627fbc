"""Real nginx terminating mTLS on 127.0.0.1 in front of uvicorn (and werkzeug) running
the middleware with the ``nginx`` forwarded source. The configuration is the one in
docs/proxies/nginx.md."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

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

pytestmark = [pytest.mark.nginx, pytest.mark.slow]

PROXY = ProxyConfig(trusted=("127.0.0.1/32",), sources=("nginx",))

# What docs/proxies/nginx.md tells users to write; {placeholders} filled per test.
NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp-body;
    proxy_temp_path {d}/tmp-proxy;
    fastcgi_temp_path {d}/tmp-fastcgi;
    uwsgi_temp_path {d}/tmp-uwsgi;
    scgi_temp_path {d}/tmp-scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {server_pem};
        ssl_certificate_key {server_key};
        ssl_client_certificate {ca_pem};
        ssl_verify_client {verify};
        ssl_verify_depth 3;
        location / {{
            proxy_pass {upstream};
{set_headers}
        }}
    }}
}}
"""

SET_HEADERS = """\
            proxy_set_header X-SSL-Client-Cert   $ssl_client_escaped_cert;
            proxy_set_header X-SSL-Client-Verify $ssl_client_verify;"""


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    return make_files(tmp_path_factory.mktemp("nginx-pki"))


def run_nginx(d: Path, files: Files, *, app_port: int = 0, verify: str = "optional",
              set_headers: bool | str = True, uds: Path | None = None
              ) -> tuple[list[str], int, Path]:
    nginx = require_binary("nginx")
    port = free_port()
    conf = d / "nginx.conf"
    conf.write_text(NGINX_CONF.format(
        d=d, port=port, verify=verify,
        upstream=f"http://unix:{uds}:" if uds else f"http://127.0.0.1:{app_port}",
        server_pem=files.server_pem,
        server_key=files.server_key, ca_pem=files.ca_pem,
        set_headers=(set_headers if isinstance(set_headers, str)
                     else SET_HEADERS if set_headers else ""),
    ))
    return [nginx, "-p", str(d), "-c", str(conf), "-e", str(d / "error.log")], port, \
        d / "nginx.out"


@pytest.fixture
def asgi_behind_nginx(tmp_path: Path, files: Files) -> Iterator[int]:
    with uvicorn_server(echo_asgi(gatekeeper(files, PROXY))) as app_port:
        argv, port, log = run_nginx(tmp_path, files, app_port=app_port)
        with proxy_process(argv, port=port, log=log):
            yield port


def victim_header(files: Files) -> str:
    """The victim's certificate (public) as nginx would forward it."""
    return quote(files.victim.cert_pem.decode(), safe="")


def test_client_certificate_reaches_the_app(files: Files, asgi_behind_nginx: int) -> None:
    with client(files, files.client) as c:
        r = c.get(f"https://127.0.0.1:{asgi_behind_nginx}/orders")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["peer"] == CALLER
    # The trusted proxy's headers stay visible to the app.
    assert body["headers"]["x-ssl-client-verify"] == "SUCCESS"
    assert "BEGIN%20CERTIFICATE" in body["headers"]["x-ssl-client-cert"]


def test_forged_header_with_a_real_certificate_is_overwritten(
        files: Files, asgi_behind_nginx: int) -> None:
    with client(files, files.client) as c:
        r = c.get(f"https://127.0.0.1:{asgi_behind_nginx}/orders",
                  headers={"X-SSL-Client-Cert": victim_header(files),
                           "X-SSL-Client-Verify": "SUCCESS"})
    assert r.status_code == 200
    assert r.json()["peer"] == CALLER


def test_forged_header_without_a_certificate_is_dropped(
        files: Files, asgi_behind_nginx: int) -> None:
    # $ssl_client_escaped_cert is empty: nginx sends no header, and it never passes the
    # client's own header of a name it sets (even to an empty value).
    with client(files, None) as c:
        r = c.get(f"https://127.0.0.1:{asgi_behind_nginx}/orders",
                  headers={"X-SSL-Client-Cert": victim_header(files),
                           "X-SSL-Client-Verify": "SUCCESS"})
    assert r.status_code == 401
    assert VICTIM not in r.text


def test_underscore_spelling_does_not_pass_nginx(files: Files, asgi_behind_nginx: int) -> None:
    # nginx drops header names with '_' (underscores_in_headers off, the default).
    with client(files, None) as c:
        r = c.get(f"https://127.0.0.1:{asgi_behind_nginx}/orders",
                  headers={"X-SSL-Client_Cert": victim_header(files),
                           "X-SSL-Client_Verify": "SUCCESS"})
    assert r.status_code == 401


def test_direct_request_to_the_app_is_not_trusted(files: Files, tmp_path: Path) -> None:
    # The app listens on 127.0.0.1 too; trust only a different address for the proxy.
    proxy = ProxyConfig(trusted=("127.0.0.2/32",), sources=("nginx",))
    with uvicorn_server(echo_asgi(gatekeeper(files, proxy))) as app_port:
        r = httpx.get(f"http://127.0.0.1:{app_port}/orders",
                      headers={"X-SSL-Client-Cert": victim_header(files),
                               "X-SSL-Client-Verify": "SUCCESS"}, timeout=10)
    assert r.status_code == 401


def test_optional_no_ca_is_caught(files: Files, tmp_path: Path) -> None:
    # ssl_verify_client optional_no_ca lets any certificate through the handshake;
    # nginx then reports FAILED:... and the app refuses it.
    with uvicorn_server(echo_asgi(gatekeeper(files, PROXY))) as app_port:
        argv, port, log = run_nginx(tmp_path, files, app_port=app_port,
                                    verify="optional_no_ca")
        with proxy_process(argv, port=port, log=log), client(files, files.stranger) as c:
            r = c.get(f"https://127.0.0.1:{port}/orders")
    assert r.status_code == 401


def test_misconfigured_nginx_lets_a_client_spoof_identity(files: Files,
                                                          tmp_path: Path) -> None:
    # Without proxy_set_header, nginx passes the client's own headers: anyone who has a
    # copy of the victim's (public) certificate becomes the victim. This is why the
    # proxy configuration in docs/proxies/nginx.md is not optional.
    with uvicorn_server(echo_asgi(gatekeeper(files, PROXY))) as app_port:
        argv, port, log = run_nginx(tmp_path, files, app_port=app_port, set_headers=False)
        with proxy_process(argv, port=port, log=log), client(files, None) as c:
            r = c.get(f"https://127.0.0.1:{port}/orders",
                      headers={"X-SSL-Client-Cert": victim_header(files),
                               "X-SSL-Client-Verify": "SUCCESS"})
    assert r.status_code == 200
    assert r.json()["peer"] == VICTIM


def test_wsgi_behind_nginx(files: Files, tmp_path: Path) -> None:
    with werkzeug_server(echo_wsgi(gatekeeper(files, PROXY))) as app_port:
        argv, port, log = run_nginx(tmp_path, files, app_port=app_port)
        with proxy_process(argv, port=port, log=log):
            with client(files, files.client) as c:
                ok = c.get(f"https://127.0.0.1:{port}/orders")
            with client(files, None) as c:
                forged = c.get(f"https://127.0.0.1:{port}/orders",
                               headers={"X-SSL-Client-Cert": victim_header(files),
                                        "X-SSL-Client-Verify": "SUCCESS"})
    assert ok.status_code == 200 and ok.json()["peer"] == CALLER
    assert forged.status_code == 401


def test_der_of_victim_is_not_accepted_as_pem(files: Files, asgi_behind_nginx: int) -> None:
    # A forged value in another format from a client without a certificate: still
    # dropped by nginx before it can even fail to parse.
    with client(files, None) as c:
        r = c.get(f"https://127.0.0.1:{asgi_behind_nginx}/orders",
                  headers={"X-SSL-Client-Cert": base64.b64encode(files.victim.der).decode()})
    assert r.status_code == 401


def test_unix_socket_upstream(files: Files, tmp_path: Path) -> None:
    # uvicorn --uds puts client=None in the scope: trusted only with "unix".
    sock = tmp_path / "app.sock"
    for trusted, expected in [(("unix",), 200), (("127.0.0.1/32",), 401)]:
        proxy = ProxyConfig(trusted=trusted, sources=("nginx",))
        with uvicorn_server(echo_asgi(gatekeeper(files, proxy)), uds=sock):
            argv, port, log = run_nginx(tmp_path, files, uds=sock)
            with proxy_process(argv, port=port, log=log), client(files, files.client) as c:
                r = c.get(f"https://127.0.0.1:{port}/orders")
        assert r.status_code == expected, trusted
        if expected == 200:
            assert r.json()["peer"] == CALLER


# Other sources' formats produced by a real nginx from $ssl_client_escaped_cert: the
# same bytes on the wire as Envoy (a Cert-only XFCC element) and the ALB.
EMULATED = [
    pytest.param("xfcc", 'proxy_set_header X-Forwarded-Client-Cert '
                 '"By=spiffe://example.org/nginx;Cert=\\"$ssl_client_escaped_cert\\"";',
                 id="xfcc"),
    pytest.param("alb", "proxy_set_header X-Amzn-Mtls-Clientcert-Leaf "
                 "$ssl_client_escaped_cert;", id="alb-verify"),
    pytest.param("alb-passthrough", "proxy_set_header X-Amzn-Mtls-Clientcert "
                 "$ssl_client_escaped_cert;", id="alb-passthrough"),
]


@pytest.mark.parametrize(("source", "directive"), EMULATED)
def test_other_formats_end_to_end(files: Files, tmp_path: Path, source: str,
                                  directive: str) -> None:
    proxy = ProxyConfig(trusted=("127.0.0.1/32",), sources=(source,))
    with uvicorn_server(echo_asgi(gatekeeper(files, proxy))) as app_port:
        argv, port, log = run_nginx(tmp_path, files, app_port=app_port,
                                    verify="on", set_headers="            " + directive)
        with proxy_process(argv, port=port, log=log), client(files, files.client) as c:
            r = c.get(f"https://127.0.0.1:{port}/orders")
    assert r.status_code == 200, (r.text, (tmp_path / "error.log").read_text())
    assert r.json()["peer"] == CALLER


# uvicorn rewrites scope["client"] from X-Forwarded-For when the peer is in
# --forwarded-allow-ips (default 127.0.0.1). The immediate peer is then no longer in the
# scope: run uvicorn with --no-proxy-headers behind a certificate-forwarding proxy.
XFF = SET_HEADERS + "\n            proxy_set_header X-Forwarded-For $remote_addr;"


@pytest.mark.parametrize(("proxy_headers", "expected"), [(True, 401), (False, 200)],
                         ids=["uvicorn-proxy-headers-fails-closed", "no-proxy-headers"])
def test_uvicorn_proxy_headers_hide_the_peer(files: Files, tmp_path: Path,
                                             proxy_headers: bool, expected: int) -> None:
    with uvicorn_server(echo_asgi(gatekeeper(files, PROXY)),
                        proxy_headers=proxy_headers) as app_port:
        argv, port, log = run_nginx(tmp_path, files, app_port=app_port, set_headers=XFF)
        with proxy_process(argv, port=port, log=log), \
                client(files, files.client, local_address="127.0.0.2") as c:
            r = c.get(f"https://127.0.0.1:{port}/orders")
    assert r.status_code == expected


@pytest.mark.parametrize(("proxy_headers", "expected"), [(True, 200), (False, 401)],
                         ids=["forwarded-allow-ips-star-is-spoofable", "no-proxy-headers"])
def test_uvicorn_forwarded_allow_all_lets_a_client_pose_as_the_proxy(
        files: Files, proxy_headers: bool, expected: int) -> None:
    # With --forwarded-allow-ips='*' any client can claim to be 127.0.0.1.
    with uvicorn_server(echo_asgi(gatekeeper(files, PROXY)), proxy_headers=proxy_headers,
                        forwarded_allow_ips="*") as app_port:
        transport = httpx.HTTPTransport(local_address="127.0.0.2")
        with httpx.Client(transport=transport, timeout=10) as c:
            r = c.get(f"http://127.0.0.1:{app_port}/orders",
                      headers={"X-Forwarded-For": "127.0.0.1",
                               "X-SSL-Client-Cert": victim_header(files),
                               "X-SSL-Client-Verify": "SUCCESS"})
    assert r.status_code == expected
    if expected == 200:
        assert r.json()["peer"] == VICTIM
