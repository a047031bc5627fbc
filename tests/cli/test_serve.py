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


# -- the app reads the file the server reads -------------------------------------------

APP = '''
import os

from endpointsec import load_config

config = load_config()   # no argument: what `endpointsec serve` exported


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = f"{config.source}|{os.environ['ENDPOINTSEC_CONFIG']}".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})
'''


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_config(path: Path, pki: Path, port: int) -> Path:
    path.write_text(f'''
[policy]
allow_authenticated = true

[server]
certfile = "{pki / 'server.pem'}"
keyfile = "{pki / 'server.key'}"
client_ca = "{pki / 'ca.pem'}"
port = {port}
''')
    return path


def _served_config(tmp_path: Path, args: list[str], env: dict[str, str], port: int) -> str:
    """Run `endpointsec serve` over real mTLS and ask the app which file it loaded."""
    import os
    import socket
    import ssl
    import subprocess
    import sys
    import time

    import httpx

    import endpointsec

    pki = tmp_path / "pki"
    (tmp_path / "probe_app.py").write_text(APP)
    # the endpointsec under test, whatever the working directory
    src = str(Path(endpointsec.__file__).resolve().parent.parent)
    pythonpath = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    proc = subprocess.Popen(
        [sys.executable, "-m", "endpointsec.cli", "serve", "probe_app:app",
         "--app-dir", str(tmp_path), "--http", "h11", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": pythonpath, **env},
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
        ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        ctx.load_cert_chain(pki / "client.pem", pki / "client.key")
        with httpx.Client(verify=ctx, timeout=10) as client:
            r = client.get(f"https://127.0.0.1:{port}/")
        assert r.status_code == 200
        return r.text
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


@pytest.fixture
def served_pki(tmp_path: Path) -> Path:
    from endpointsec.testing.pki import CertificateAuthority

    pki = tmp_path / "pki"
    ca = CertificateAuthority.create()
    ca.write(pki)
    ca.issue_server().write(pki, "server")
    ca.issue_client(spiffe_id="spiffe://example.org/client").write(pki, "client")
    return pki


def test_serve_config_is_the_one_the_app_loads(tmp_path: Path, served_pki: Path) -> None:
    # a stale ENDPOINTSEC_CONFIG and a ./endpointsec.toml: --config wins for both the
    # server and the app's load_config()
    port = _free_port()
    chosen = _write_config(tmp_path / "chosen.toml", served_pki, port)
    _write_config(tmp_path / "endpointsec.toml", served_pki, _free_port())
    stale = _write_config(tmp_path / "stale.toml", served_pki, _free_port())
    loaded, exported = _served_config(
        tmp_path, ["--config", "chosen.toml"], {"ENDPOINTSEC_CONFIG": str(stale)}, port,
    ).split("|")
    assert Path(loaded) == chosen.resolve()
    assert exported == str(chosen.resolve())


def test_serve_without_config_uses_the_environment(tmp_path: Path, served_pki: Path) -> None:
    port = _free_port()
    _write_config(tmp_path / "endpointsec.toml", served_pki, _free_port())
    named = _write_config(tmp_path / "named.toml", served_pki, port)
    loaded, _ = _served_config(tmp_path, [], {"ENDPOINTSEC_CONFIG": str(named)},
                               port).split("|")
    assert Path(loaded) == named.resolve()


def test_serve_without_any_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ENDPOINTSEC_CONFIG", raising=False)
    assert main(["serve", "app:app"]) == 2
    assert "no configuration file" in capsys.readouterr().err


# -- a source that cannot see the server's certificates is named at start --------------

@pytest.mark.parametrize(
    ("identity", "asgi", "warned"),
    [
        ('sources = ["asgi-tls"]', True, None),
        ('sources = ["gunicorn"]', False, None),
        ('sources = ["asgi-tls"]', False, "'gunicorn'"),
        ('sources = ["wsgi-environ"]', False, "'gunicorn'"),
        ('sources = ["gunicorn"]', True, "'asgi-tls'"),
        ("", True, "'asgi-tls'"),
    ],
    ids=["uvicorn-asgi-tls", "gunicorn-gunicorn", "gunicorn-asgi-tls",
         "gunicorn-wsgi-environ", "uvicorn-gunicorn", "uvicorn-none"],
)
def test_source_warning(tmp_path: Path, identity: str, asgi: bool,
                        warned: str | None) -> None:
    from endpointsec import load_config
    from endpointsec.cli.serve import source_warning

    cfg = tmp_path / "endpointsec.toml"
    cfg.write_text(f"[identity]\n{identity}\n[policy]\nallow_authenticated = true\n")
    message = source_warning(load_config(cfg), asgi=asgi)
    if warned is None:
        assert message is None
    else:
        assert message is not None
        assert f"add {warned} to [identity] sources" in message


def test_source_warning_leaves_a_proxy_alone(tmp_path: Path) -> None:
    from endpointsec import Config
    from endpointsec.cli.serve import source_warning

    config = Config.from_mapping({
        "proxy": {"trusted": ["127.0.0.1/32"], "sources": ["xfcc"]},
        "policy": {"allow_authenticated": True},
    })
    assert source_warning(config, asgi=False) is None


def test_serve_warns_when_gunicorn_certificates_are_not_read(
        tmp_path: Path, served_pki: Path) -> None:
    """A Flask app served with the ASGI quickstart's sources: the warning is printed."""
    import os
    import subprocess
    import sys

    import endpointsec

    port = _free_port()
    cfg = _write_config(tmp_path / "endpointsec.toml", served_pki, port)
    cfg.write_text('[identity]\nsources = ["asgi-tls"]\n' + cfg.read_text())
    (tmp_path / "flask_probe.py").write_text(
        "from flask import Flask\napp = Flask(__name__)\n")
    src = str(Path(endpointsec.__file__).resolve().parent.parent)
    pythonpath = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    proc = subprocess.Popen(
        [sys.executable, "-m", "endpointsec.cli", "serve", "flask_probe:app",
         "--app-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": pythonpath}, text=True,
    )
    import socket
    import time

    deadline = time.monotonic() + 30
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            try:  # listening: the banner has been printed
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    lines = out.splitlines()
    assert "(gunicorn, WSGI" in lines[0]
    assert any(line.startswith("  warning:") and "add 'gunicorn'" in line
               for line in lines), lines
