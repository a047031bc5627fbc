"""Coverage: decisions mapped back to policy lines; unused rules."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from endpointsec.errors import ConfigurationError
from endpointsec.lifecycle.coverage import Coverage, read_policy_lines
from endpointsec.lifecycle.records import DecisionRecord
from endpointsec.lifecycle.unused import unused_rules
from endpointsec.policy import CasbinPolicy
from endpointsec.testing import evaluate

WEB = "spiffe://shop.local/ns/shop/sa/web"
POLICY = f"""\
# the web storefront
p, {WEB}, *, /orders, GET, allow

p,{WEB},*,/orders/:id,GET,allow
p, role:admin, *, /admin/*, *, allow
p, role:admin, *, /admin/debug/*, *, deny
g, role:ops, role:admin, *
p, {WEB}, *, /orders, GET, allow
"""


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    f = tmp_path / "policy.csv"
    f.write_text(POLICY)
    return f


def test_read_policy_lines(policy_file: Path) -> None:
    got = [(line.number, line.rule[1]) for line in read_policy_lines(policy_file)]
    assert got == [(2, WEB), (4, WEB), (5, "role:admin"), (6, "role:admin"), (8, WEB)]
    with pytest.raises(ConfigurationError, match="cannot read policy"):
        read_policy_lines(policy_file.with_name("missing.csv"))


def test_decisions_map_to_lines(policy_file: Path) -> None:
    policy = CasbinPolicy(policy=policy_file)
    cov = Coverage([policy_file, policy_file])  # named twice: read once
    for path, subjects in (("/orders", (WEB,)), ("/orders", (WEB,)),
                           ("/admin/debug/x", ("role:ops",)), ("/nowhere", (WEB,))):
        cov.add(evaluate(policy, path=path, peer=subjects[0] if "://" in subjects[0] else None,
                         token=None if "://" in subjects[0] else
                         {"iss": "https://i", "sub": "s", "roles": ["ops"]}).matched_rule)
    cov.add(("p", "someone", "*", "/else", "GET", "allow"))
    assert {line.number: n for line, n in cov.used.items()} == {2: 2, 6: 1}
    assert [line.number for line in cov.unused] == [4, 5, 8]  # 8 duplicates 2: never decides
    assert cov.foreign == 1 and cov.decisions == 5
    assert cov.percent == pytest.approx(40.0)
    text = cov.render(verbose=True)
    assert text.splitlines()[0] == "policy coverage: 2 of 5 rules decided at least one case (40.0%)"
    assert f"  unused       {policy_file}:4  p, {WEB}, *, /orders/:id, GET, allow" in text
    assert f"  used     2x  {policy_file}:2" in text


def test_empty_policy_is_fully_covered(tmp_path: Path) -> None:
    f = tmp_path / "p.csv"
    f.write_text("# nothing\n")
    assert Coverage([f]).percent == 100.0


def rec(path: str, rule: tuple[str, ...] | None, *, status: int = 200,
        subjects: tuple[str, ...] = (WEB,)) -> DecisionRecord:
    return DecisionRecord(time=dt.datetime(2026, 11, 27, tzinfo=dt.UTC), method="GET",
                          path=path, subjects=subjects, decision="allow" if status == 200
                          else "deny", status=status, rule=rule, peer=WEB)


def test_unused_rules_from_recorded_rules_and_by_replay(policy_file: Path) -> None:
    rule2 = ("p", WEB, "*", "/orders", "GET", "allow")
    records = [rec("/orders", rule2), rec("/orders/1", None, status=401),
               rec("/orders/7", None, status=403)]
    recorded = unused_rules(records, policy_file)
    assert [line.number for line in recorded.unused] == [4, 5, 6, 8]
    replayed = unused_rules(records, policy_file,
                            evaluate_with=CasbinPolicy(policy=policy_file))
    assert [line.number for line in replayed.unused] == [5, 6, 8]  # /orders/7 -> line 4
