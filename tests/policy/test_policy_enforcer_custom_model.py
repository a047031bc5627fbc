"""CasbinPolicy with a user-supplied model (the plain-enforcer path): deny overrides
allow across the caller's subjects, as with the shipped model."""

from __future__ import annotations

from pathlib import Path

import pytest

from endpointsec.policy import CasbinPolicy

#: Not the shipped model (no domain, its own matcher), with allow and deny effects.
DENY_MODEL = """
[request_definition]
r = sub, obj, act

[policy_definition]
p = sub, obj, act, eft

[role_definition]
g = _, _

[policy_effect]
e = some(where (p.eft == allow)) && !some(where (p.eft == deny))

[matchers]
m = g(r.sub, p.sub) && keyMatch2(r.obj, p.obj) && (r.act == p.act || p.act == "*")
"""

POLICY = """\
p, spiffe://example.org/web, /orders/*, GET, allow
p, role:suspended, /orders/*, *, deny
p, role:reader, /reports/*, GET, allow
g, alice, role:reader
"""


@pytest.fixture
def policy(tmp_path: Path) -> CasbinPolicy:
    model = tmp_path / "model.conf"
    model.write_text(DENY_MODEL, encoding="utf-8")
    rules = tmp_path / "policy.csv"
    rules.write_text(POLICY, encoding="utf-8")
    p = CasbinPolicy(model=model, policy=rules)
    assert p.engine == "enforcer"
    return p


@pytest.mark.parametrize("subjects", [
    pytest.param(("spiffe://example.org/web", "role:suspended"), id="allow-then-deny"),
    pytest.param(("role:suspended", "spiffe://example.org/web"), id="deny-then-allow"),
])
def test_deny_for_one_subject_overrides_allow_for_another(policy: CasbinPolicy,
                                                          subjects: tuple[str, ...]) -> None:
    result = policy.evaluate(subjects=subjects, resource="/orders/7", action="GET")
    assert result.allowed is False
    assert result.matched_rule == ("p", "role:suspended", "/orders/*", "*", "deny")
    assert "deny" in (result.reason or "")


def test_allow_alone_and_no_match(policy: CasbinPolicy) -> None:
    allowed = policy.evaluate(subjects=("spiffe://example.org/web", "bob"),
                              resource="/orders/7", action="GET")
    assert allowed.allowed is True
    assert allowed.matched_rule == ("p", "spiffe://example.org/web", "/orders/*", "GET", "allow")
    assert policy.evaluate(subjects=("alice",), resource="/reports/q1", action="GET").allowed
    nothing = policy.evaluate(subjects=("bob",), resource="/orders/7", action="GET")
    assert nothing.allowed is False
    assert nothing.matched_rule is None
