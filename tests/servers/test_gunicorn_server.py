"""gunicorn (gthread) with GunicornSource, over real mutual TLS on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from servers_support import (
    REFUSALS,
    SID,
    ServerPki,
    call,
    check_refusal,
    free_port,
    subprocess_server,
)


@pytest.fixture(scope="module")
def gunicorn_port(server_pki: ServerPki) -> Iterator[int]:
    port = free_port()
    args = [
        "gunicorn", "servers_app:make_gunicorn_app()",
        "--bind", f"127.0.0.1:{port}", "--workers", "1",
        "--worker-class", "gthread", "--threads", "2", "--keep-alive", "5",
        "--certfile", str(server_pki.server_cert),
        "--keyfile", str(server_pki.server_key),
        "--ca-certs", str(server_pki.server_tls_bundle),
        "--cert-reqs", "2", "--log-level", "warning",
    ]
    with subprocess_server(args, port, server_pki):
        yield port


def test_valid_svid_is_visible_to_the_handler(gunicorn_port: int,
                                               server_pki: ServerPki) -> None:
    [(status, body)] = call(gunicorn_port, server_pki, "valid")
    assert status == 200, body
    assert isinstance(body, dict)
    assert body["peer"] == SID
    assert body["source"] == "gunicorn"


def test_keep_alive(gunicorn_port: int, server_pki: ServerPki) -> None:
    outcomes = call(gunicorn_port, server_pki, "valid", n=3)
    assert [o[0] for o in outcomes] == [200, 200, 200], outcomes
    assert {o[1]["peer"] for o in outcomes} == {SID}  # type: ignore[index]


@pytest.mark.parametrize("client", list(REFUSALS))
def test_bad_client_certificates_are_refused(gunicorn_port: int, server_pki: ServerPki,
                                             client: str) -> None:
    [outcome] = call(gunicorn_port, server_pki, client)
    check_refusal(outcome, REFUSALS[client])


def test_leaf_only_needs_intermediates_in_the_bundle(gunicorn_port: int,
                                                     server_pki: ServerPki) -> None:
    """gunicorn exposes only the leaf (getpeercert): the intermediate is not seen."""
    [outcome] = call(gunicorn_port, server_pki, "valid-intermediate")
    assert outcome[0] == 401, outcome


def test_no_client_certificate_is_refused_by_tls(gunicorn_port: int,
                                                 server_pki: ServerPki) -> None:
    [outcome] = call(gunicorn_port, server_pki, None)
    assert outcome[0] == "refused", outcome
