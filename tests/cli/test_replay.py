"""``endpointsec replay``: the report and the exit status."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from endpointsec.cli import main

WEB = "spiffe://shop.local/ns/shop/sa/web"


def record(path: str, *, method: str = "GET", status: int = 200,
           decision: str = "allow") -> str:
    return json.dumps({"time": "2026-11-27T10:00:00Z", "method": method, "path": path,
                       "peer": {"id": WEB}, "subjects": [WEB], "decision": decision,
                       "status": status, "rule": None})


@pytest.fixture
def records(tmp_path: Path) -> Path:
    f = tmp_path / "decisions.jsonl"
    f.write_text("\n".join([record("/orders/1"), record("/orders/2", method="DELETE"),
                            record("/orders", status=401, decision="deny")]) + "\n")
    return f


def test_no_change_exits_0(records: Path, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "c.csv").write_text(f"p, {WEB}, *, /orders/:id, *, allow\n")
    assert main(["replay", str(records), "--policy", str(tmp_path / "c.csv")]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "replay decisions.jsonl against c.csv",
        "3 requests: 2 replayed (2 unchanged, 0 newly denied, 0 newly allowed); "
        "1 not replayed (1 with status 401: no authorization question)",
    ]


def test_narrowing_exits_1_unless_allowed(records: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "c.csv").write_text(f"p, {WEB}, *, /orders/:id, GET, allow\n")
    assert main(["replay", str(records), "--policy", str(tmp_path / "c.csv")]) == 1
    out = capsys.readouterr().out
    assert "NEWLY DENIED (served before; the candidate denies): 1 request" in out
    assert "      1x  DELETE /orders/:id" in out
    assert f"          by:        {WEB}" in out
    assert main(["replay", str(records), "--policy", str(tmp_path / "c.csv"),
                 "--allow-narrowing"]) == 0


def test_unreadable_candidate_exits_2(records: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(records), "--policy", str(tmp_path / "none.csv")]) == 2
    assert "file not found" in capsys.readouterr().err
