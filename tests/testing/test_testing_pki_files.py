"""The development PKI's file writing: private modes, no symlinks, no widening."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from endpointsec.testing.pki import CertificateAuthority, safe_write


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("open_umask")
def test_new_key_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    ca = CertificateAuthority.create()
    cert, key = ca.write(tmp_path)
    assert mode(key) == 0o600
    assert mode(cert) == 0o644
    issued = ca.issue_client(spiffe_id="spiffe://example.org/a")
    cert, key = issued.write(tmp_path / "sub", "a")
    assert mode(key) == 0o600


@pytest.mark.parametrize(("before", "after"), [
    pytest.param(0o644, 0o600, id="world-readable-narrowed"),
    pytest.param(0o666, 0o600, id="world-writable-narrowed"),
    pytest.param(0o600, 0o600, id="private-kept"),
    pytest.param(0o400, 0o400, id="read-only-kept"),
])
def test_existing_mode_is_never_widened(tmp_path: Path, before: int, after: int) -> None:
    target = tmp_path / "k.key"
    target.write_bytes(b"old")
    os.chmod(target, before)
    safe_write(target, b"new")
    assert mode(target) == after
    assert target.read_bytes() == b"new"


def test_symlink_is_refused_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    link = tmp_path / "k.key"
    link.symlink_to(victim)
    with pytest.raises(FileExistsError, match="symbolic link"):
        safe_write(link, b"new")
    assert victim.read_bytes() == b"precious"
    dangling = tmp_path / "d.key"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileExistsError, match="symbolic link"):
        safe_write(dangling, b"new")
    assert not (tmp_path / "nowhere").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.key", "k.key", "victim"]


def test_a_directory_at_the_name_is_refused(tmp_path: Path) -> None:
    (tmp_path / "k.key").mkdir()
    with pytest.raises(FileExistsError, match="not a regular file"):
        safe_write(tmp_path / "k.key", b"new")
