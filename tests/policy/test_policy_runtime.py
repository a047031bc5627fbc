"""Run-time rule changes answer exactly what a ``casbin.Enforcer`` given the same changes
answers, after every change, and never from a view cached before it.

Random initial policies, then random interleavings of add/remove/update of ``p`` rules,
add/delete of ``g`` rules and requests. The reference is a plain ``casbin.Enforcer`` that
gets the same changes through its management API (a rule is in the policy or not:
removal removes every copy). Each change must also leave the old snapshot untouched
(copy-on-write): requests answered before the change are answered the same way by the
snapshot that was in force then.
"""

from __future__ import annotations

from typing import Any

import casbin
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from policy_support import ListAdapter
from test_policy_equivalence import _compiles, _expected, g_rule, p_rule, request

from endpointsec.errors import ConfigurationError, PolicyStoreUnavailable
from endpointsec.policy import DEFAULT_MODEL_PATH, CasbinPolicy

change = st.one_of(
    st.tuples(st.just("add"), st.lists(p_rule, min_size=1, max_size=3)),
    st.tuples(st.just("remove"), st.lists(p_rule, min_size=1, max_size=2)),
    st.tuples(st.just("remove-existing"), st.integers(0, 50)),
    st.tuples(st.just("update-existing"), st.integers(0, 50), p_rule),
    st.tuples(st.just("update"), p_rule, p_rule),
    st.tuples(st.just("add-role"), g_rule),
    st.tuples(st.just("delete-role"), g_rule),
    st.tuples(st.just("delete-existing-role"), st.integers(0, 50)),
)


def _reference(p: list[Any], g: list[Any]) -> Any:
    ref = casbin.Enforcer(str(DEFAULT_MODEL_PATH), ListAdapter(p, g))
    ref.enable_auto_save(False)  # the changes live in the reference's memory
    return ref


def _ref_remove(ref: Any, rule: list[str]) -> None:
    while ref.remove_policy(*rule):
        pass


def _apply(ours: CasbinPolicy, ref: Any, step: Any) -> None:
    kind = step[0]
    if kind == "add":
        ours.add_rules(step[1])
        for r in step[1]:
            ref.add_policy(*r)
    elif kind in ("remove", "remove-existing"):
        rules = step[1] if kind == "remove" else (
            [ref.get_policy()[step[1] % len(ref.get_policy())]] if ref.get_policy() else [])
        ours.remove_rules(rules)
        for r in rules:
            _ref_remove(ref, list(r))
    elif kind in ("update", "update-existing"):
        if kind == "update":
            old, new = list(step[1]), list(step[2])
        else:
            policy = ref.get_policy() or [["nobody", "*", "/none", "GET", "allow"]]
            old, new = list(policy[step[1] % len(policy)]), list(step[2])
        ours.update_rules([old], [new])
        if old != new and ref.has_policy(*old):
            ref.update_policy(old, new)
            while ref.get_policy().count(old):  # every copy of the old rule is replaced
                _ref_remove(ref, old)
    elif kind == "add-role":
        ours.add_role_for(step[1][0], step[1][1], domain=step[1][2])
        ref.add_grouping_policy(*step[1])
    elif kind in ("delete-role", "delete-existing-role"):
        if kind == "delete-role":
            rule = list(step[1])
        else:
            roles = ref.get_grouping_policy()
            if not roles:
                return
            rule = list(roles[step[1] % len(roles)])
        ours.delete_role_for(rule[0], rule[1], domain=rule[2])
        while ref.remove_grouping_policy(*rule):
            pass


def _fresh(ref: Any) -> Any:
    """A reference built from the rules alone (no incremental role-manager state)."""
    return _reference([list(r) for r in ref.get_policy()],
                      [list(r) for r in ref.get_grouping_policy()])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(p=st.lists(p_rule, max_size=10, unique=True), g=st.lists(g_rule, max_size=6, unique=True),
       steps=st.lists(st.tuples(change, st.lists(request, min_size=1, max_size=4)),
                      min_size=1, max_size=8))
def test_runtime_changes_answer_as_casbin(p: list[Any], g: list[Any], steps: list[Any]) -> None:
    p = [r for r in p if _compiles(r[2])]
    ours = CasbinPolicy(adapter=ListAdapter(p, g))
    ref = _reference(p, g)
    asked: list[Any] = []
    for step, requests in steps:
        rules = [r for r in (step[1] if step[0] == "add" else ())]
        news = [step[2]] if step[0] in ("update", "update-existing") else []
        if not all(_compiles(r[2]) for r in [*rules, *news]):
            generation = ours.generation
            with pytest.raises(ConfigurationError, match="not a valid keyMatch2 pattern"):
                _apply(ours, ref, step)
            assert ours.generation == generation  # refused whole, nothing applied
            continue
        before = ours._snapshot
        before_answers = [before.evaluate(tuple(s), o, a, d).allowed for s, o, a, d in asked]
        generation = ours.generation
        _apply(ours, ref, step)
        assert ours.generation in (generation, generation + 1)
        # Copy-on-write: the snapshot in force before the change still answers as before.
        assert [before.evaluate(tuple(s), o, a, d).allowed
                for s, o, a, d in asked] == before_answers
        fresh = _fresh(ref)
        for subjects, obj, act, dom in requests + asked[-6:]:
            expected, deny_rule = _expected(ref, subjects, obj, act, dom)
            assert _expected(fresh, subjects, obj, act, dom)[0] is expected
            for _ in range(2):  # a miss, then a hit on the same view
                result = ours.evaluate(subjects=subjects, resource=obj, action=act, domain=dom)
                assert result.allowed is expected, (step, subjects, obj, act, dom, result)
                if not expected and deny_rule is not None and len(subjects) == 1:
                    assert result.matched_rule == deny_rule
        asked.extend(requests)
    # After all the changes, a full reload of the same rules answers the same.
    reloaded = CasbinPolicy(adapter=ListAdapter(ref.get_policy(), ref.get_grouping_policy()))
    for subjects, obj, act, dom in asked:
        assert (reloaded.evaluate(subjects=subjects, resource=obj, action=act, domain=dom)
                .allowed is ours.evaluate(subjects=subjects, resource=obj, action=act,
                                          domain=dom).allowed)
    # A rule is held once (an update onto a present rule leaves Casbin with two copies).
    assert ours._snapshot.rule_count == len({tuple(r) for r in ref.get_policy()})
    assert ours._snapshot.role_count == len({tuple(r) for r in ref.get_grouping_policy()})


def test_change_counts_and_generation() -> None:
    ours = CasbinPolicy(adapter=ListAdapter([("alice", "*", "/a", "GET", "allow")], []))
    assert ours.generation == 0
    assert ours.add_rules([("alice", "*", "/a", "GET", "allow")]) == 0  # present
    assert ours.generation == 0
    assert ours.add_rules([("bob", "*", "/b/:id", "GET", "allow"),
                           ("bob", "*", "/b/:id", "GET", "allow")]) == 1
    assert ours.generation == 1
    assert ours.evaluate(subjects=["bob"], resource="/b/7", action="GET").allowed
    assert ours.update_rules([("bob", "*", "/b/:id", "GET", "allow")],
                             [("bob", "*", "/b/:id", "GET", "deny")]) == 1
    assert not ours.evaluate(subjects=["bob"], resource="/b/7", action="GET").allowed
    assert ours.add_role_for("carol", "bob") is True
    assert ours.add_role_for("carol", "bob") is False
    assert ours.roles_for(subjects=["carol"]) == {"bob"}
    assert ours.delete_role_for("carol", "bob") is True
    assert ours.roles_for(subjects=["carol"]) == frozenset()
    assert ours.remove_rules([("bob", "*", "/b/:id", "GET", "deny")]) == 1
    assert ours.generation == 5


@pytest.mark.parametrize(("rule", "message"), [
    (("alice", "*", "/a", "GET"), "needs 5"),
    (("alice", "*", "/a", "GET", "maybe"), "use 'allow' or 'deny'"),
    (("alice", "*", "/a/(", "GET", "allow"), "not a valid keyMatch2 pattern"),
    ("alice, *, /a, GET, allow", "not a string"),
], ids=["four-values", "bad-effect", "bad-template", "a-string"])
def test_invalid_rule_is_refused_and_nothing_changes(rule: Any, message: str) -> None:
    ours = CasbinPolicy(adapter=ListAdapter([("alice", "*", "/a", "GET", "allow")], []))
    with pytest.raises(ConfigurationError, match=message):
        ours.add_rules([("bob", "*", "/b", "GET", "allow"), rule])
    assert ours.generation == 0
    assert not ours.evaluate(subjects=["bob"], resource="/b", action="GET").allowed


class _FailingAdapter(ListAdapter):
    def add_policies(self, sec: str, ptype: str, rules: Any) -> None:
        raise OSError("disk on fire")


def test_failed_write_through_changes_nothing() -> None:
    ours = CasbinPolicy(adapter=_FailingAdapter([("alice", "*", "/a", "GET", "allow")], []))
    with pytest.raises(PolicyStoreUnavailable, match="disk on fire"):
        ours.add_rules([("bob", "*", "/b", "GET", "allow")])
    assert ours.generation == 0
    assert not ours.evaluate(subjects=["bob"], resource="/b", action="GET").allowed


def test_custom_model_refuses_runtime_changes(tmp_path: Any) -> None:
    model = tmp_path / "model.conf"
    model.write_text(DEFAULT_MODEL_PATH.read_text() + "\n# a copy of the model\n")
    ours = CasbinPolicy(model=model, adapter=ListAdapter([("a", "*", "/a", "GET", "allow")]))
    assert ours.engine == "enforcer"
    with pytest.raises(ConfigurationError, match="default model"):
        ours.add_rules([("b", "*", "/b", "GET", "allow")])
