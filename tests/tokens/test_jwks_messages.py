"""Key-set fetch failures are logged with the issuer, the URL and the cause."""

from __future__ import annotations

import logging
import socket

import pytest

from endpointsec.errors import KeySetUnavailable
from endpointsec.tokens.config import IssuerConfig
from endpointsec.tokens.jwks import BackgroundLoop, RemoteKeySource


def test_fetch_failure_names_issuer_url_and_cause(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/jwks.json"
    config = IssuerConfig(issuer="https://idp.example", audiences=("api",),
                          algorithms=("ES256",), jwks_url=url, allow_http=True,
                          jwks_timeout=2.0)
    loop = BackgroundLoop()
    source = RemoteKeySource(config=config, loop=loop)
    try:
        with caplog.at_level(logging.WARNING, logger="endpointsec.tokens"), \
                pytest.raises(KeySetUnavailable):
            source.resolve("kid", "ES256")
    finally:
        loop.close()
    [record] = [r for r in caplog.records if r.name == "endpointsec.tokens"]
    message = record.getMessage()
    assert "'https://idp.example'" in message
    assert url in message
    assert "ConnectError" in message
    assert source.fetch_count == 1
    assert source.failure_count == 1
