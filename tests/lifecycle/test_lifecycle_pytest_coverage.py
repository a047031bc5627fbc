"""The pytest plugin's policy coverage (--endpointsec-coverage), in inner pytest runs."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

POLICY = """\
p, spiffe://example.org/ns/shop/sa/orders, *, /orders/:id, GET, allow
p, role:admin, *, /orders/*, *, allow
p, role:admin, *, /orders/vault, *, deny
"""

TESTS = """
    import pytest
    from endpointsec.testing import assert_allowed, assert_denied

    ORDERS = "spiffe://example.org/ns/shop/sa/orders"
    pytestmark = pytest.mark.endpointsec_policy(policy="policy.csv")

    def test_orders_reads(endpointsec_policy):
        assert_allowed(endpointsec_policy, path="/orders/1", peer=ORDERS)

    def test_orders_cannot_delete(endpointsec_policy):
        assert_denied(endpointsec_policy, method="DELETE", path="/orders/1", peer=ORDERS)
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makefile(".csv", policy=POLICY)
    pytester.makepyfile(TESTS)
    return pytester


def ini(pytester: pytest.Pytester, extra: str = "") -> None:
    pytester.makeini("[pytest]\naddopts = --strict-markers -p no:cacheprovider\n"
                     "filterwarnings = error\n" + extra)


def test_report_lists_the_unused_rules(project: pytest.Pytester) -> None:
    ini(project)
    result = project.runpytest("--endpointsec-coverage", "policy.csv")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([
        "*endpointsec policy coverage*",
        "policy coverage: 1 of 3 rules decided at least one request (33.3%)",
        "  unused       policy.csv:2  p, role:admin, *, /orders/*, *, allow",
        "  unused       policy.csv:3  p, role:admin, *, /orders/vault, *, deny",
    ])
    assert result.ret == 0


def test_minimum_fails_the_run(project: pytest.Pytester) -> None:
    ini(project)
    result = project.runpytest("--endpointsec-coverage", "policy.csv",
                               "--endpointsec-coverage-min", "50")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["FAIL: policy coverage 33.3% is under the required 50%"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_ini_options(project: pytest.Pytester) -> None:
    ini(project, "endpointsec_coverage = policy.csv\nendpointsec_coverage_min = 30\n")
    result = project.runpytest()
    result.stdout.fnmatch_lines(["policy coverage: 1 of 3 rules *"])
    assert result.ret == 0


def test_off_by_default(project: pytest.Pytester) -> None:
    ini(project)
    result = project.runpytest()
    assert "policy coverage" not in result.stdout.str()
    assert result.ret == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--endpointsec-coverage-min", "50"], "needs the policy files to cover"),
     (["--endpointsec-coverage", "missing.csv"], "cannot read policy")],
    ids=["min-without-policy", "missing-policy"],
)
def test_usage_errors(project: pytest.Pytester, args: list[str], message: str) -> None:
    ini(project)
    result = project.runpytest(*args)
    assert message in result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
