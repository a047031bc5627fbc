"""``endpointsec unused``: rules no recorded decision used."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from endpointsec.cli import main

WEB = "spiffe://shop.local/ns/shop/sa/web"
RULE = ["p", WEB, "*", "/orders", "GET", "allow"]


def record(path: str, time: str, rule: list[str] | None) -> str:
    return json.dumps({"time": time, "method": "GET", "path": path, "peer": {"id": WEB},
                       "subjects": [WEB], "decision": "allow", "status": 200, "rule": rule})


def test_unused_lists_rules_with_line_numbers(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "policy.csv"
    policy.write_text(f"p, {WEB}, *, /orders, GET, allow\n\np, {WEB}, *, /orders/:id, GET, allow\n")
    records = tmp_path / "d.jsonl"
    records.write_text(record("/orders", "2026-11-01T00:00:00Z", RULE) + "\n"
                       + record("/orders/1", "2026-11-20T00:00:00Z",
                                ["p", WEB, "*", "/orders/:id", "GET", "allow"]) + "\n")
    assert main(["unused", str(records), "--policy", str(policy),
                 "--since", "2026-11-10T00:00:00Z"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "policy coverage: 1 of 2 rules decided at least one of 1 requests since "
        "2026-11-10T00:00:00Z (50.0%)",
        f"  unused       {policy}:1  p, {WEB}, *, /orders, GET, allow",
    ]
    assert main(["unused", str(records), "--policy", str(policy), "--replay", "-v"]) == 0
    out = capsys.readouterr().out
    assert "2 of 2 rules" in out and f"used     1x  {policy}:3" in out
