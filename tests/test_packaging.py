"""The wheel users install: built from this tree (in a copy, so the tree stays clean)
and inspected. It must carry the license, the demo's example and the declared extras."""

from __future__ import annotations

import email
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# pip builds in an isolated environment (setuptools from the package index): ~10 s.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    tree = tmp_path_factory.mktemp("tree")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, tree / name)
    shutil.copytree(ROOT / "src", tree / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(tree)],
        capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (built,) = out.glob("endpointsec-*.whl")
    return zipfile.ZipFile(built)


def _metadata(wheel: zipfile.ZipFile) -> email.message.Message:
    (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    return email.message_from_bytes(wheel.read(name))


def test_wheel_carries_the_apache_license(wheel: zipfile.ZipFile) -> None:
    (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/licenses/LICENSE")]
    text = wheel.read(name).decode()
    assert text == (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    meta = _metadata(wheel)
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta.get_all("License-File") == ["LICENSE"]


def test_wheel_carries_the_demo_example(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    for name in ("app.py", "endpointsec.toml", "policy.csv"):
        assert f"endpointsec/cli/_demo/{name}" in names
    assert "endpointsec/py.typed" in names
    assert not [n for n in names if n.startswith(("examples/", "tests/", "scripts/"))]


def test_wheel_declares_the_extras_and_the_plugin(wheel: zipfile.ZipFile) -> None:
    meta = _metadata(wheel)
    extras = set(meta.get_all("Provides-Extra") or [])
    assert {"pytest", "dev", "test", "all", "fastapi", "flask", "uvicorn"} <= extras
    requires = meta.get_all("Requires-Dist") or []
    pytest_extra = sorted(r.split(";")[0].strip() for r in requires if "extra == \"pytest\"" in r)
    assert pytest_extra == ["httpx2>=2.0", "pytest>=8"]
    (entry_points,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    text = wheel.read(entry_points).decode()
    assert "endpointsec = endpointsec.testing.plugin" in text
    assert "endpointsec = endpointsec.cli:main" in text
