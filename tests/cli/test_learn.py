"""``endpointsec learn``: the CLI over a records file, with routes from config or app."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from endpointsec.cli import main

WEB = "spiffe://shop.local/ns/shop/sa/web"


def record(path: str, *, method: str = "GET", time: str = "2026-11-27T10:00:00Z",
           status: int = 200, decision: str = "would_deny") -> str:
    return json.dumps({"time": time, "event": "endpointsec.decision", "method": method,
                       "path": path, "route": None, "domain": None, "peer": {"id": WEB},
                       "request_principal": None, "subjects": [WEB], "decision": decision,
                       "status": status, "rule": None})


@pytest.fixture
def records(tmp_path: Path) -> Path:
    f = tmp_path / "decisions.jsonl"
    f.write_text("\n".join([
        record("/reports/1", time="2026-11-27T09:00:00Z"),
        record("/reports/2"), record("/reports/3"), record("/health", status=401),
        record("/exact/path", time="2026-11-27T11:00:00Z"),
    ]) + "\n")
    return f


@pytest.fixture
def config(tmp_path: Path) -> Path:
    f = tmp_path / "endpointsec.toml"
    f.write_text(textwrap.dedent("""\
        [policy]
        allow_authenticated = true

        [[routes]]
        path = "/reports/{id}"
        methods = ["GET"]
        """))
    return f


def test_learn_with_config_routes(records: Path, config: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["learn", str(records), "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert ("# seen 3 times, last 2026-11-27T10:00:00Z\n"
            f"p, {WEB}, *, /reports/:id, GET, allow") in out
    assert f"p, {WEB}, *, /exact/path, GET, allow" in out
    assert "# ignored: 1 with status 401 (not an authorization question)" in out


def test_window_min_count_and_output_file(records: Path, config: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / "learned.csv"
    assert main(["learn", str(records), "--config", str(config), "--since",
                 "2026-11-27T09:30:00Z", "--until", "2026-11-27T10:30:00Z",
                 "--min-count", "3", "-o", str(out_file)]) == 0
    assert "learn: 0 rules from 2 served requests" in capsys.readouterr().err
    text = out_file.read_text()
    assert "/exact/path" not in text
    assert f"# p, {WEB}, *, /reports/:id, GET, allow" in text  # seen 2 < 3 times


def test_routes_from_an_app(records: Path, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "reports_app.py").write_text(textwrap.dedent("""\
        from fastapi import FastAPI
        app = FastAPI()

        @app.get("/reports/{report_id}")
        def report(report_id: int) -> dict:
            return {}
        """))
    assert main(["learn", str(records), "--routes-from", "reports_app:app",
                 "--app-dir", str(tmp_path)]) == 0
    assert f"p, {WEB}, *, /reports/:report_id, GET, allow" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--min-count", "0"], "--min-count: must be at least 1"),
     (["--since", "yesterday"], "--since: not an RFC 3339 time"),
     (["--routes-from", "no_such_module_here:app"], "cannot import"),
     (["--routes-from", "json:dumps"], "neither 'routes'")],
    ids=["min-count", "since", "import", "not-an-app"],
)
def test_errors_exit_2(records: Path, args: list[str], message: str,
                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["learn", str(records), *args]) == 2
    assert message in capsys.readouterr().err


def test_malformed_record_names_the_line(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "bad.jsonl"
    f.write_text(record("/a") + "\n" + '{"time": "2026-11-27T10:00:00Z"}\n')
    assert main(["learn", str(f)]) == 2
    assert "bad.jsonl:2: 'method' is missing or not a string" in capsys.readouterr().err
