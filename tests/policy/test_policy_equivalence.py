"""The indexed evaluator answers exactly what a plain ``casbin.Enforcer`` answers.

Random small policies (allow/deny rules, keyMatch2 templates, wildcards, roles across
domains, role cycles) and random requests, evaluated by :class:`CasbinPolicy` (indexed
path, with and without its cache) and by ``casbin.Enforcer`` with the same model file.
"""

from __future__ import annotations

import re
from typing import Any

import casbin
import pytest
from casbin.util import key_match2
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from policy_support import ListAdapter

from endpointsec.errors import ConfigurationError
from endpointsec.policy import DEFAULT_MODEL_PATH, CasbinPolicy
from endpointsec.policy.enforcer import _IndexedSnapshot, _is_literal
from endpointsec.policy.rules import unmatchable_path

NAMES = ["alice", "bob", "spiffe://example.org/web", "admin", "ops", "role:dev", "viewer"]
DOMAINS = ["*", "acme", "globex"]
ACTIONS = ["GET", "POST", "*"]
#: The documented keyMatch2 forms only: never refused.
DOCUMENTED_SEGMENTS = ["a", "b", ":id", "a.b", "x-y", "", ":k_2", "c.d", ".", "ab."]
documented_object = st.one_of(
    st.lists(st.sampled_from(DOCUMENTED_SEGMENTS), min_size=1, max_size=3).map(
        lambda s: "/" + "/".join(s)),
    st.lists(st.sampled_from(DOCUMENTED_SEGMENTS), max_size=3).map(
        lambda s: "".join("/" + x for x in s) + "/*"),
    st.lists(st.sampled_from(["a", "b.c", "orders"]), min_size=1, max_size=2).map("/".join),
    st.just("*"))
#: Anything Casbin accepts, regex-shaped objects included: accepted and answered as
#: Casbin answers, or refused at load; never answered differently.
TEMPLATE_PIECES = ["/a", "/b", "/:id", "/*", "/a.b", "*", "/", "/c:x", "a", "/x-y", "\n",
                   "/:", "/:*", "//", ":k",
                   "|", "/x|/a/*", "/?.*", "?", "/{id}", "{", "}", "(a)", "[0-9]", "+",
                   "^", "$", "\\", "/:id.b", "/a:b", "/a*", "/*/b"]
PATH_PIECES = ["/a", "/b", "/x", "/a.b", "/axb", "/", "a", "/c", "/cat", "/x-y", "\n", "/7",
               "/reports", "/admin", "/internal", "/{id}", "/a:b", "/aaa", "|", "?"]

def _p_rule(objects: st.SearchStrategy[str]) -> st.SearchStrategy[tuple[str, str, str, str, str]]:
    return st.tuples(
        st.sampled_from(NAMES), st.sampled_from(DOMAINS), objects,
        st.sampled_from(ACTIONS), st.sampled_from(["allow", "deny"]),
    )


p_rule = _p_rule(documented_object)
any_object = st.lists(st.sampled_from(TEMPLATE_PIECES), min_size=1, max_size=3).map("".join)
#: Mostly documented rules, and at most two drawn from anything Casbin accepts.
p_rules = st.tuples(st.lists(p_rule, max_size=10),
                    st.lists(_p_rule(any_object), max_size=2),
                    st.randoms(use_true_random=False)).map(
    lambda t: t[2].sample(t[0] + t[1], len(t[0]) + len(t[1])))
g_rule = st.tuples(st.sampled_from(NAMES), st.sampled_from(NAMES), st.sampled_from(DOMAINS))
request = st.tuples(
    st.lists(st.sampled_from(NAMES), min_size=1, max_size=3, unique=True),
    st.lists(st.sampled_from(PATH_PIECES), min_size=1, max_size=3).map("".join),
    st.sampled_from(["GET", "POST", "PUT", "*"]),
    st.sampled_from([None, "acme", "globex", "*", "other"]),
)


def _reference(p: list[Any], g: list[Any]) -> Any:
    return casbin.Enforcer(str(DEFAULT_MODEL_PATH), ListAdapter(p, g))


def _expected(ref: Any, subjects: list[str], obj: str, act: str,
              dom: str | None) -> tuple[bool, tuple[str, ...] | None]:
    """Per-subject Casbin answers combined: allowed if one subject is allowed and no
    subject hits a deny rule; the deny rule is Casbin's own explanation."""
    allowed = False
    deny: tuple[str, ...] | None = None
    for s in subjects:
        ok, rule = ref.enforce_ex(s, dom or "*", obj, act)
        if ok:
            allowed = True
        elif rule and deny is None:
            deny = ("p", *rule)
    return (allowed and deny is None), deny


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(p=p_rules, g=st.lists(g_rule, max_size=8),
       requests=st.lists(request, min_size=1, max_size=8))
def test_indexed_evaluation_equals_casbin(p: list[Any], g: list[Any],
                                          requests: list[Any]) -> None:
    """Agreement with Casbin on every accepted policy, or a refusal at load: an object
    outside the documented keyMatch2 forms (regex syntax, ``{id}``, a ``*`` or ``:``
    elsewhere; also every template that is not a valid regular expression, on which
    Casbin would raise at request time) is refused, naming the rule."""
    bad = [i for i, r in enumerate(p) if not _documented(r[2])]
    if bad:  # only undocumented forms are refused, and every one of them, by number
        event("refused at load")
        with pytest.raises(ConfigurationError, match=r"not a valid keyMatch2 pattern|never "
                           r"matches a request path") as info:
            CasbinPolicy(adapter=ListAdapter(p, g))
        for i in bad:
            assert f"adapter: policy rule {i + 1}:" in str(info.value)
        return
    event("accepted")
    ours = CasbinPolicy(adapter=ListAdapter(p, g))
    assert all(_compiles(r[2]) for r in p)
    uncached = CasbinPolicy(adapter=ListAdapter(p, g), cache_size=0)
    assert ours.engine == "indexed"
    ref = _reference(p, g)
    for subjects, obj, act, dom in requests:
        expected, deny_rule = _expected(ref, subjects, obj, act, dom)
        for policy in (ours, uncached, ours):  # the second `ours` answers from the cache
            result = policy.evaluate(subjects=subjects, resource=obj, action=act, domain=dom)
            assert result.allowed is expected, (subjects, obj, act, dom, result)
            if not expected and deny_rule is not None and len(subjects) == 1:
                assert result.matched_rule == deny_rule
            if expected:
                assert result.matched_rule is not None
                assert result.matched_rule[-1] == "allow"
        for s in subjects:
            single = ours.evaluate(subjects=[s], resource=obj, action=act, domain=dom)
            assert single.allowed is ref.enforce(s, dom or "*", obj, act)


@settings(max_examples=100, deadline=None)
@given(g=st.lists(g_rule, max_size=10), subject=st.sampled_from(NAMES),
       dom=st.sampled_from(DOMAINS))
def test_roles_for_equals_casbin_implicit_roles(g: list[Any], subject: str, dom: str) -> None:
    ours = CasbinPolicy(adapter=ListAdapter([], g))
    ref = _reference([], g)
    expected = {r for r in NAMES if r != subject and (
        ref.get_role_manager().has_link(subject, r, dom)
        or ref.get_role_manager().has_link(subject, r, "*"))}
    assert ours.roles_for(subjects=[subject], domain=dom) == expected


def _documented(template: str) -> bool:
    """The documented keyMatch2 forms: literal text without regex syntax (``.`` allowed),
    ``:name`` as a whole segment, a final ``/*``, or ``*`` alone; a path object written
    as a normalized request path is (no raw control character, space or non-ASCII)."""
    if template == "*":
        return True
    if unmatchable_path(template) is not None:
        return False
    body = template[:-2] if template.endswith("/*") else template
    for seg in body.split("/"):
        if seg.startswith(":"):
            if not re.fullmatch(r":[A-Za-z_][A-Za-z0-9_-]*", seg):
                return False
        elif any(c in "^$+?{}[]\\|()*:" for c in seg):
            return False
    return True


@settings(max_examples=300, deadline=None)
@given(obj=documented_object)
def test_documented_keymatch2_forms_are_accepted(obj: str) -> None:
    policy = CasbinPolicy(adapter=ListAdapter([("alice", "*", obj, "GET", "allow")], []))
    assert policy.engine == "indexed"


def _compiles(template: str) -> bool:
    key2 = template.replace("/*", "/.*")
    key2 = re.sub(r"(.*?):[^\/]+(.*?)", r"\g<1>[^\/]+\g<2>", key2)
    try:
        re.compile("^" + ("(.*)" if key2 == "*" else key2) + "$")
    except re.error:
        return False
    return True


@pytest.mark.parametrize("depth", [1, 5, 8, 9, 10, 11, 12], ids=lambda d: f"depth-{d}")
def test_role_inheritance_depth_limit_matches_casbin(depth: int) -> None:
    """Casbin's role manager follows at most 9 steps; so does the index."""
    chain = ["user"] + [f"r{i}" for i in range(1, depth + 1)]
    g = [(chain[i], chain[i + 1], "*") for i in range(depth)]
    p = [(chain[-1], "*", "/x", "GET", "allow")]
    ours = CasbinPolicy(adapter=ListAdapter(p, g))
    ref = _reference(p, g)
    expected = ref.enforce("user", "*", "/x", "GET")
    assert expected is (depth <= 9)
    assert ours.evaluate(subjects=["user"], resource="/x", action="GET").allowed is expected


SEGMENTS = ["a", "b", ":id", ":x.y", "*", "", ".", "a.b", "c:x", ":", "\n", "a\n"]


@settings(max_examples=2000, deadline=None)
@given(template=st.one_of(
           st.lists(st.sampled_from(SEGMENTS), max_size=4).map("/".join),
           st.lists(st.sampled_from(SEGMENTS), max_size=4).map(lambda s: "/" + "/".join(s)),
       ),
       path=st.one_of(
           st.lists(st.sampled_from(["a", "b", "", "7", "a.b", "axb", "\n", "c", "cx"]),
                    max_size=5).map("/".join),
           st.text(alphabet="/ab.\n:", max_size=8),
       ))
def test_object_matcher_equals_casbin_key_match2(template: str, path: str) -> None:
    """Each compiled template (segment matcher or regex) answers as keyMatch2."""
    if not _compiles(template):
        with pytest.raises(ConfigurationError, match="not a valid keyMatch2 pattern"):
            _IndexedSnapshot._matcher(template, "test")
        return
    expected = key_match2(path, template)
    if _is_literal(template):
        got = path == template or (path.endswith("\n") and path[:-1] == template)
    else:
        got = bool(_IndexedSnapshot._matcher(template, "test")(path))
    assert got is expected, (template, path)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(phases=st.lists(
           st.tuples(st.lists(p_rule, max_size=10), st.lists(g_rule, max_size=6),
                     st.lists(request, min_size=1, max_size=6)),
           min_size=2, max_size=4))
def test_views_follow_every_reload(phases: list[Any]) -> None:
    """The views of the indexed engine (per subjects, action and domain) are answered
    from the policy in force: interleaved reloads and repeated requests answer as a
    fresh ``casbin.Enforcer`` of the current rules, never from an older policy."""
    adapter = ListAdapter([], [])
    ours = CasbinPolicy(adapter=adapter)
    seen: list[Any] = []
    for p, g, requests in phases:
        if not all(_compiles(r[2]) for r in p):
            continue
        adapter.p, adapter.g = list(p), list(g)
        ours.reload()
        ref = _reference(p, g)
        for subjects, obj, act, dom in requests + seen[-6:]:  # new requests and old ones
            expected, _ = _expected(ref, subjects, obj, act, dom)
            for _ in range(2):  # a miss, then a hit on the same view
                result = ours.evaluate(subjects=subjects, resource=obj, action=act, domain=dom)
                assert result.allowed is expected, (p, g, subjects, obj, act, dom)
        seen.extend(requests)
