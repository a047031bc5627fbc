"""``endpointsec test``: run policy suites offline, for CI pipelines.

::

    endpointsec test policy/*.suite.yaml
    endpointsec test orders.suite.json --verbose

Each suite names what it tests (an endpointsec.toml, or a Casbin model and policy),
its principals, a fixed "now" and its cases; the format is in docs/testing.md. One
line per case (PASS/FAIL), the explanation under each failure, and exit status 1 if a
case failed, 2 if a suite could not be read. ``--junit-xml FILE`` also writes the
results for CI test reports.

``--coverage`` then reports which policy lines (``file:line``) decided at least one
case and lists those that never did; ``--coverage-min PCT`` (implies ``--coverage``)
exits 1 when fewer than PCT percent of the rules decided a case.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from endpointsec.errors import ConfigurationError

if TYPE_CHECKING:
    from endpointsec.testing.suites import SuiteResult

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add the ``test`` subcommand."""
    p: argparse.ArgumentParser = sub.add_parser(
        "test", help="run policy suites offline (exit 1 on a failure)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("suites", nargs="+", type=Path, metavar="SUITE",
                   help="suite files (.yaml, .yml, .json or .toml)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="print the explanation of every case, not only failures")
    p.add_argument("--junit-xml", type=Path, metavar="FILE",
                   help="also write the results as JUnit XML (for CI test reports)")
    p.add_argument("--coverage", action="store_true",
                   help="report which policy lines decided a case, and which never did")
    p.add_argument("--coverage-min", type=float, metavar="PCT",
                   help="fail (exit 1) when under PCT percent of the rules decided a case")
    p.set_defaults(handler=run)


def _policy_file(suite: Any) -> Path | None:
    if suite.policy is not None:
        return Path(suite.policy)
    if suite.config_path is not None:
        from endpointsec.config import load_config

        policy = getattr(load_config(suite.config_path).policy, "policy", None)
        return Path(policy) if policy is not None else None
    return None


def report_coverage(results: list[tuple[Path, SuiteResult | str]],
                    minimum: float | None) -> bool:
    """Print the policy coverage of the suites' cases; ``False`` if under ``minimum``."""
    from endpointsec.lifecycle.coverage import Coverage

    ran = [r for _, r in results if not isinstance(r, str)]
    files = [f for f in (_policy_file(r.suite) for r in ran) if f is not None]
    cov = Coverage(files)
    for r in ran:
        for case in r.results:
            cov.add(case.decision.matched_rule)
    print(cov.render())
    if minimum is not None and cov.percent < minimum:
        print(f"policy coverage {cov.percent:.1f}% is under --coverage-min {minimum:g}%")
        return False
    return True


def run(args: argparse.Namespace) -> int:
    """Run every suite; 0 if all cases pass, 1 if one fails, 2 if a suite is invalid."""
    from endpointsec.testing.suites import load_suite

    failed = passed = 0
    broken = False
    results: list[tuple[Path, SuiteResult | str]] = []
    for path in args.suites:
        try:
            suite = load_suite(path)
            result = suite.run()
        except ConfigurationError as exc:
            print(f"suite {path}\n  ERROR {exc}", file=sys.stderr)
            results.append((path, str(exc)))
            broken = True
            continue
        results.append((path, result))
        print(result.report(verbose=args.verbose))
        failed += len(result.failures)
        passed += len(result.results) - len(result.failures)
    print(f"{passed} passed, {failed} failed" + (", some suites could not run" if broken else ""))
    if args.junit_xml is not None:
        write_junit(args.junit_xml, results)
    if broken:
        return 2
    covered = True
    if args.coverage or args.coverage_min is not None:
        covered = report_coverage(results, args.coverage_min)
    return 1 if failed or not covered else 0


def write_junit(path: Path, results: list[tuple[Path, SuiteResult | str]]) -> None:
    """Write JUnit XML: one ``testsuite`` per suite file, one ``testcase`` per case."""
    import xml.etree.ElementTree as ET

    root = ET.Element("testsuites", name="endpointsec")
    for suite_path, outcome in results:
        ts = ET.SubElement(root, "testsuite", name=str(suite_path))
        if isinstance(outcome, str):
            ts.set("tests", "1")
            ts.set("errors", "1")
            case = ET.SubElement(ts, "testcase", name="load", classname=str(suite_path))
            ET.SubElement(case, "error", message=outcome)
            continue
        ts.set("tests", str(len(outcome.results)))
        ts.set("failures", str(len(outcome.failures)))
        for r in outcome.results:
            case = ET.SubElement(ts, "testcase", name=r.case.name, classname=str(suite_path))
            if r.failure is not None:
                failure = ET.SubElement(case, "failure", message=r.failure)
                failure.text = r.decision.explain()
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
