"""A failing assertion shows the explanation, not endpointsec's own frames."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

POLICY = "p, spiffe://example.org/ns/shop/sa/orders, *, /orders/:id, GET, allow\n"

USER_TESTS = """
from endpointsec.policy.enforcer import CasbinPolicy
from endpointsec.testing import assert_allowed, assert_denied, load_suite

ORDERS = "spiffe://example.org/ns/shop/sa/orders"


def test_delete_is_allowed():
    assert_allowed(CasbinPolicy(policy="policy.csv"), "DELETE", "/orders/1", peer=ORDERS)


def test_read_is_denied():
    assert_denied(CasbinPolicy(policy="policy.csv"), path="/orders/1", peer=ORDERS)


def test_bad_peer():
    assert_allowed(CasbinPolicy(policy="policy.csv"), "/orders/1", peer="orders")


def test_suite_case():
    suite = load_suite("orders.suite.json")
    suite.cases[0].check(suite.gatekeeper)
"""

SUITE = """{
  "policy": "policy.csv",
  "principals": {"orders": {"peer": "spiffe://example.org/ns/shop/sa/orders"}},
  "cases": [{"name": "orders deletes", "principal": "orders", "method": "DELETE",
             "path": "/orders/1", "expect": "allow"}]
}
"""


def _run(pytester: pytest.Pytester) -> pytest.RunResult:
    pytester.makefile(".csv", policy=POLICY)
    (pytester.path / "orders.suite.json").write_text(SUITE, encoding="utf-8")
    pytester.makeini("[pytest]\naddopts = -p no:cacheprovider\n")
    pytester.makepyfile(test_user=USER_TESTS)
    return pytester.runpytest()


def test_failures_show_the_explanation(pytester: pytest.Pytester) -> None:
    result = _run(pytester)
    result.assert_outcomes(failed=4)
    out = result.stdout.str()
    result.stdout.fnmatch_lines([
        "*test_delete_is_allowed*",
        "E * AssertionError: expected ALLOW, got DENY: DELETE /orders/1",
        "E * DENY 403 DELETE /orders/1",
        "E * subjects: spiffe://example.org/ns/shop/sa/orders",
    ])
    result.stdout.fnmatch_lines([
        "*test_read_is_denied*",
        "E * AssertionError: expected DENY, got ALLOW: GET /orders/1",
        "E * ALLOW 200 GET /orders/1",
    ])
    result.stdout.fnmatch_lines(["*test_suite_case*", "E * orders deletes: *"])
    # The user's line is shown; the helpers' frames are not.
    assert 'assert_allowed(CasbinPolicy(policy="policy.csv"), "DELETE"' in out
    for internal in ("endpointsec/testing/assertions.py", "endpointsec/testing/suites.py",
                     "endpointsec/testing/principals.py", "def assert_allowed",
                     "def evaluate", "raise AssertionError"):
        assert internal not in out, internal
    # a bad argument points at the user's line too
    assert "not a SPIFFE ID, a URI" in out
    assert 'assert_allowed(CasbinPolicy(policy="policy.csv"), "/orders/1", peer="orders")' \
        in out
    assert "endpointsec/testing/principals.py" not in out
