"""`endpointsec serve`: app detection and configuration errors (real serving is in
tests/examples/)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from starlette.applications import Starlette

from endpointsec.cli import main
from endpointsec.cli.serve import import_app, is_asgi


async def asgi_function(scope: Any, receive: Any, send: Any) -> None:
    return None


def wsgi_function(environ: Any, start_response: Any) -> Iterable[bytes]:
    return []


@pytest.mark.parametrize(
    ("app", "expected"),
    [(Starlette(), True), (Flask(__name__), False), (asgi_function, True),
     (wsgi_function, False)],
    ids=["starlette", "flask", "asgi-function", "wsgi-function"],
)
def test_is_asgi(app: Any, expected: bool) -> None:
    assert is_asgi(app) is expected


def test_import_app_rejects_bad_spec() -> None:
    from endpointsec import ConfigurationError

    with pytest.raises(ConfigurationError, match="module:attribute"):
        import_app("no_colon")


def test_serve_requires_server_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "endpointsec.toml"
    cfg.write_text("[policy]\nallow_authenticated = true\n")
    assert main(["serve", "app:app", "--config", str(cfg)]) == 2
    assert "server.certfile" in capsys.readouterr().err
