"""`endpointsec demo` (the README's first command) runs end to end over real mTLS."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import endpointsec
from endpointsec.cli import main
from endpointsec.cli.demo import DEMO_EXAMPLE


@pytest.mark.slow
def test_demo_exits_zero_and_explains(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "15 of 15 requests got the answer the policy promises." in out
    assert "p, workload:backoffice, *, /admin/debug/*, *, deny" in out
    assert "TLS refused" in out
    # The demo never prints a token or a key.
    assert "eyJ" not in out and "PRIVATE KEY" not in out


@pytest.mark.parametrize("name", ["app.py", "endpointsec.toml", "policy.csv"])
def test_packaged_example_is_the_repository_example(name: str) -> None:
    """The demo ships its own copy of examples/fastapi_app; the two never drift apart."""
    repository = Path(__file__).resolve().parents[2] / "examples" / "fastapi_app"
    assert (DEMO_EXAMPLE / name).read_bytes() == (repository / name).read_bytes()


def test_packaged_example_lives_inside_the_package() -> None:
    package = Path(endpointsec.__file__).resolve().parent
    assert DEMO_EXAMPLE.resolve().is_relative_to(package)
    assert (DEMO_EXAMPLE / "app.py").is_file()


def test_demo_explains_what_is_missing_without_the_server_stack(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "uvicorn" else real_find_spec(name, *a))
    with pytest.raises(SystemExit, match=r"pip install 'endpointsec\[fastapi,uvicorn\]'"):
        main(["demo"])
