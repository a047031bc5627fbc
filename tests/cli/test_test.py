"""``endpointsec test``: suites run offline, a report, and the exit status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from endpointsec.cli import main

ORDERS = "spiffe://example.org/ns/shop/sa/orders"

POLICY = f"p, {ORDERS}, *, /orders/:id, GET, allow\n"

SUITE_YAML = f"""\
policy: policy.csv
now: 2026-06-01T12:00:00Z
principals:
  orders:
    peer: {ORDERS}
cases:
  - name: orders reads an order
    principal: orders
    path: /orders/1
    expect: allow
  - name: orders cannot delete
    principal: orders
    method: DELETE
    path: /orders/1
    expect: deny
    status: 403
"""


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    (tmp_path / "policy.csv").write_text(POLICY)
    path = tmp_path / "orders.suite.yaml"
    path.write_text(SUITE_YAML)
    return path


def test_passing_suite_exits_0(suite: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["test", str(suite)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"suite {suite} (now: 2026-06-01T12:00:00Z)",
        "  PASS  orders reads an order",
        "  PASS  orders cannot delete",
        "  2 passed, 0 failed",
        "2 passed, 0 failed",
    ]


def test_verbose_explains_every_case(suite: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["test", "--verbose", str(suite)]) == 0
    out = capsys.readouterr().out
    assert out.count("reason:") == 2
    assert f"rule:     p, {ORDERS}, *, /orders/:id, GET, allow" in out


def test_failing_case_exits_1_with_the_explanation(
    suite: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    failing = tmp_path / "failing.suite.json"
    failing.write_text(json.dumps({
        "policy": "policy.csv",
        "cases": [{"name": "billing reads", "principal": {"peer": "spiffe://example.org/b"},
                   "path": "/orders/1", "expect": "allow"}],
    }))
    assert main(["test", str(suite), str(failing)]) == 1
    out = capsys.readouterr().out
    assert "  FAIL  billing reads\n        expected ALLOW, got DENY 403\n" in out
    assert "          subjects: spiffe://example.org/b\n" in out
    assert "(now: the real clock)" in out
    assert out.endswith("2 passed, 1 failed\n")


@pytest.mark.parametrize(
    ("name", "text"),
    [
        pytest.param("bad.yaml", "cases: [{path: /, expect: sometimes}]\n", id="invalid"),
        pytest.param("missing.yaml", None, id="missing"),
    ],
)
def test_broken_suite_exits_2(suite: Path, tmp_path: Path, name: str, text: str | None,
                              capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    assert main(["test", str(path), str(suite)]) == 2
    captured = capsys.readouterr()
    assert f"suite {path}\n  ERROR " in captured.err
    assert "2 passed, 0 failed, some suites could not run" in captured.out


def test_console_script_runs_the_suite(suite: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "endpointsec.cli", "test", str(suite)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "2 passed, 0 failed" in proc.stdout


def test_junit_xml_report(suite: Path, tmp_path: Path) -> None:
    import xml.etree.ElementTree as ET

    failing = tmp_path / "failing.suite.json"
    failing.write_text(json.dumps({
        "policy": "policy.csv",
        "cases": [{"name": "billing reads", "principal": {"peer": "spiffe://example.org/b"},
                   "path": "/orders/1", "expect": "allow"}],
    }))
    broken = tmp_path / "broken.suite.json"
    broken.write_text("{}")
    report = tmp_path / "junit.xml"
    assert main(["test", str(suite), str(failing), str(broken),
                 "--junit-xml", str(report)]) == 2
    root = ET.parse(report).getroot()
    suites = root.findall("testsuite")
    assert [s.get("tests") for s in suites] == ["2", "1", "1"]
    assert [c.get("name") for c in suites[0]] == ["orders reads an order",
                                                  "orders cannot delete"]
    failure = suites[1].find("testcase/failure")
    assert failure is not None
    assert failure.get("message") == "expected ALLOW, got DENY 403"
    assert "subjects: spiffe://example.org/b" in (failure.text or "")
    error = suites[2].find("testcase/error")
    assert error is not None and "at least one case" in (error.get("message") or "")


def test_coverage_reports_unused_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "policy.csv").write_text(POLICY + "p, role:admin, *, /admin/*, *, allow\n")
    path = tmp_path / "orders.suite.yaml"
    path.write_text(SUITE_YAML)
    assert main(["test", "--coverage", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-2:] == [
        "policy coverage: 1 of 2 rules decided at least one case (50.0%)",
        f"  unused       {tmp_path / 'policy.csv'}:2  p, role:admin, *, /admin/*, *, allow",
    ]
    assert main(["test", "--coverage-min", "50", str(path)]) == 0
    capsys.readouterr()
    assert main(["test", "--coverage-min", "75", str(path)]) == 1
    assert "policy coverage 50.0% is under --coverage-min 75%" in capsys.readouterr().out
