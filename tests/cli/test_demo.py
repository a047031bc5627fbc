"""`endpointsec demo` (the README's first command) runs end to end over real mTLS."""

from __future__ import annotations

import pytest

from endpointsec.cli import main


@pytest.mark.slow
def test_demo_exits_zero_and_explains(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "15 of 15 requests got the answer the policy promises." in out
    assert "p, workload:backoffice, *, /admin/debug/*, *, deny" in out
    assert "TLS refused" in out
    # The demo never prints a token or a key.
    assert "eyJ" not in out and "PRIVATE KEY" not in out
