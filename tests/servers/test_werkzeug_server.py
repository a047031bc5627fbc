"""werkzeug's development server with WSGIEnvironSource, over real mutual TLS.

werkzeug's request handler sets ``SSL_CLIENT_CERT`` (PEM, leaf only) from
``getpeercert(binary_form=True)`` when the server has an ``ssl_context``; a context that
requests client certificates is all that is needed (no handler subclass).
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator

import pytest
from servers_app import make_werkzeug_app
from servers_support import REFUSALS, SID, ServerPki, call, check_refusal
from werkzeug.serving import make_server


@pytest.fixture(scope="module", params=["required", "optional"])
def werkzeug_port(request: pytest.FixtureRequest, server_pki: ServerPki) -> Iterator[int]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(server_pki.server_cert), str(server_pki.server_key))
    ctx.load_verify_locations(str(server_pki.server_tls_bundle))
    ctx.verify_mode = ssl.CERT_REQUIRED if request.param == "required" else ssl.CERT_OPTIONAL
    server = make_server("127.0.0.1", 0, make_werkzeug_app(server_pki.ca_bundle),
                         threaded=True, ssl_context=ctx)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_valid_svid_is_visible_to_the_handler(werkzeug_port: int,
                                               server_pki: ServerPki) -> None:
    [(status, body)] = call(werkzeug_port, server_pki, "valid")
    assert status == 200, body
    assert isinstance(body, dict)
    assert body["peer"] == SID
    assert body["source"] == "wsgi-environ"


def test_several_requests_on_one_connection(werkzeug_port: int,
                                            server_pki: ServerPki) -> None:
    outcomes = call(werkzeug_port, server_pki, "valid", n=3)
    assert [o[0] for o in outcomes] == [200, 200, 200], outcomes


@pytest.mark.parametrize("client", list(REFUSALS))
def test_bad_client_certificates_are_refused(werkzeug_port: int, server_pki: ServerPki,
                                             client: str) -> None:
    [outcome] = call(werkzeug_port, server_pki, client)
    check_refusal(outcome, REFUSALS[client])


def test_no_client_certificate(werkzeug_port: int, server_pki: ServerPki,
                               request: pytest.FixtureRequest) -> None:
    [outcome] = call(werkzeug_port, server_pki, None)
    if "optional" in request.node.callspec.id:
        assert outcome[0] == 401, outcome
    else:
        assert outcome[0] == "refused", outcome
