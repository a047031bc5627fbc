"""learn: which records count, whom a rule is for, what object it names; and the
property: the learned policy allows exactly the observed (principal, route, method)."""

from __future__ import annotations

import datetime as dt
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from endpointsec.lifecycle.learn import learn
from endpointsec.lifecycle.records import DecisionRecord
from endpointsec.lifecycle.routes import RouteTemplate, keymatch2_object
from endpointsec.policy import CasbinPolicy

WEB = "spiffe://shop.local/ns/shop/sa/web"
ADMIN = "spiffe://shop.local/ns/shop/sa/admin-console"
T0 = dt.datetime(2026, 11, 27, 10, 0, tzinfo=dt.UTC)
ISS = "https://issuer.example"


def rec(path: str, *, method: str = "GET", peer: str | None = WEB, user: str | None = None,
        roles: Sequence[str] = (), decision: str = "would_deny", status: int = 200,
        route: str | None = None, domain: str | None = None, minute: int = 0) -> DecisionRecord:
    subjects = ([peer] if peer else []) + ([f"{ISS}#{user}"] if user else []) + [
        f"role:{r}" for r in roles]
    return DecisionRecord(time=T0 + dt.timedelta(minutes=minute), method=method, path=path,
                          subjects=tuple(subjects), decision=decision, status=status,
                          route=route, domain=domain, peer=peer,
                          user=(ISS, user) if user else None)


TEMPLATES = [RouteTemplate(source=s, object=o, methods=frozenset(m)) for s, o, m in [
    ("/orders", "/orders", {"GET", "POST"}),
    ("/orders/{order_id}", "/orders/:order_id", {"GET", "DELETE"}),
    ("/orders/feed", "/orders/feed", set()),
    ("/static/{p:path}", "/static/*", {"GET"}),
]]


def lines(result: object) -> set[tuple[str, ...]]:
    return result.lines  # type: ignore[attr-defined, no-any-return]


def test_which_records_count() -> None:
    result = learn([
        rec("/orders", decision="allow"),
        rec("/orders/1"),                                       # would_deny: served
        rec("/admin", decision="deny", status=403),             # refused: never learned
        rec("/orders", peer=None, decision="deny", status=401),
        rec("/orders", decision="deny", status=400),
        rec("/orders", decision="deny", status=503),
        rec("/healthz", peer=None, decision="allow"),           # public: no subject
    ], templates=TEMPLATES)
    assert lines(result) == {("p", WEB, "*", "/orders", "GET", "allow"),
                             ("p", WEB, "*", "/orders/:order_id", "GET", "allow")}
    assert result.learned == 2 and result.records == 7
    text = result.render()
    for n, why in ((1, "with status 401"), (1, "with status 400"), (1, "with status 503"),
                   (1, "refused under an enforcing policy"), (1, "served without a subject")):
        assert f"# ignored: {n} {why}" in text


def test_objects_templates_route_field_and_exact_paths() -> None:
    result = learn([
        rec("/orders/feed"),                                    # literal beats :order_id
        rec("/static/css/site.css"),
        rec("/static/app.js"),
        rec("/reports/q1"),                                     # no template: exact
        rec("/items/7", route="/items/{item_id}"),              # the record's route
        rec("/stock/9", route="/stock/<int:sku>"),              # a Flask route
        rec("/bad", route="/elsewhere/{x}"),                    # route not matching: exact
        rec("/a:b"),                                            # keyMatch2 cannot say it
        rec("/orders/%2e%2e/admin"),                            # normalized first
    ], templates=TEMPLATES)
    assert lines(result) == {
        ("p", WEB, "*", "/orders/feed", "GET", "allow"),
        ("p", WEB, "*", "/static/*", "GET", "allow"),
        ("p", WEB, "*", "/reports/q1", "GET", "allow"),
        ("p", WEB, "*", "/items/:item_id", "GET", "allow"),
        ("p", WEB, "*", "/stock/:sku", "GET", "allow"),
        ("p", WEB, "*", "/bad", "GET", "allow"),
        ("p", WEB, "*", "/admin", "GET", "allow"),
    }
    assert next(r for r in result.rules if r.object == "/static/*").count == 2
    assert [u.split()[-2:] for u in result.unexpressible] == [["GET", "/a:b"]]
    assert "/a:b" in result.render()


def test_methods_are_exact_and_a_template_needs_the_method() -> None:
    result = learn([rec("/orders/1", method="HEAD"), rec("/orders/2", method="PUT")],
                   templates=TEMPLATES)
    # HEAD is served by GET routes; PUT is no route's method: the exact path stays.
    assert lines(result) == {("p", WEB, "*", "/orders/:order_id", "HEAD", "allow"),
                             ("p", WEB, "*", "/orders/2", "PUT", "allow")}


@pytest.mark.parametrize(
    ("by", "expected"),
    [
        ("roles", {("p", "role:admin", "*", "/orders/:order_id", "DELETE", "allow"),
                   ("p", "role:customer", "*", "/orders", "GET", "allow"),
                   ("p", WEB, "*", "/orders", "GET", "allow"),
                   ("p", f"{ISS}#dave", "*", "/orders", "GET", "allow")}),
        ("users", {("p", f"{ISS}#carol", "*", "/orders/:order_id", "DELETE", "allow"),
                   ("p", f"{ISS}#alice", "*", "/orders", "GET", "allow"),
                   ("p", f"{ISS}#bob", "*", "/orders", "GET", "allow"),
                   ("p", WEB, "*", "/orders", "GET", "allow"),
                   ("p", f"{ISS}#dave", "*", "/orders", "GET", "allow")}),
        ("workloads", {("p", ADMIN, "*", "/orders/:order_id", "DELETE", "allow"),
                       ("p", WEB, "*", "/orders", "GET", "allow"),
                       ("p", f"{ISS}#dave", "*", "/orders", "GET", "allow")}),
    ],
)
def test_by(by: str, expected: set[tuple[str, ...]]) -> None:
    records = [
        rec("/orders/1", method="DELETE", peer=ADMIN, user="carol", roles=["admin", "customer"]),
        rec("/orders", user="alice", roles=["customer"]),
        rec("/orders", user="bob", roles=["customer"]),
        rec("/orders"),
        rec("/orders", peer=None, user="dave"),                 # a token without roles
    ]
    assert lines(learn(records, templates=TEMPLATES, by=by)) == expected


def test_several_roles_credit_the_narrowest_and_say_so() -> None:
    result = learn([
        rec("/orders/1", method="DELETE", user="carol", roles=["admin", "customer"]),
        rec("/orders", user="alice", roles=["customer"]),
    ], templates=TEMPLATES)
    (delete,) = [r for r in result.rules if r.action == "DELETE"]
    assert delete.subject == "role:admin" and delete.also == ("role:customer",)
    assert "those requests also carried role:customer" in result.render()


def test_domains_min_count_and_comments() -> None:
    result = learn([rec("/orders", domain="acme", minute=m) for m in range(3)]
                   + [rec("/orders/1", minute=7)], templates=TEMPLATES, min_count=2)
    assert lines(result) == {("p", WEB, "acme", "/orders", "GET", "allow")}
    text = result.render()
    assert "# seen 3 times, last 2026-11-27T10:02:00Z\np, " + WEB + ", acme, /orders, GET" in text
    assert "# seen 1 time, last 2026-11-27T10:07:00Z\n# p, " + WEB in text


def test_the_rendered_policy_loads_in_casbin_and_allows_the_observed(tmp_path: Path) -> None:
    records = [rec("/orders/1", method="DELETE", peer=ADMIN, user="carol", roles=["admin"]),
               rec("/static/x/y.css"), rec("/orders")]
    f = tmp_path / "learned.csv"
    f.write_text(learn(records, templates=TEMPLATES).render())
    policy = CasbinPolicy(policy=f)
    for r in records:
        assert policy.evaluate(subjects=r.subjects, resource=r.path, action=r.method).allowed
    assert not policy.evaluate(subjects=(WEB,), resource="/orders/1", action="GET").allowed
    assert not policy.evaluate(subjects=(WEB,), resource="/orders", action="POST").allowed


def test_unknown_by() -> None:
    from endpointsec.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="--by"):
        learn([], by="groups")


# -- property -------------------------------------------------------------------------------

WORKLOADS = [f"spiffe://t.local/w{i}" for i in range(3)]
ROLES = ["r0", "r1", "r2"]
METHODS = ["GET", "POST", "DELETE"]
LITERALS = ["a", "b", "c"]


@st.composite
def route_sets(draw: st.DrawFn) -> list[str]:
    """Starlette-style templates that never overlap (each has its own first segment)."""
    out = []
    for i in range(draw(st.integers(1, 4))):
        tail = draw(st.lists(st.sampled_from([*LITERALS, "{p}", "{q:int}"]), max_size=3))
        tail = [(f"{{x{j}}}" if s.startswith("{") else s) for j, s in enumerate(tail)]
        star = draw(st.booleans())
        out.append("/" + "/".join([f"r{i}", *tail] + (["{rest:path}"] if star else [])))
    return out


def concrete(template: str, n: int) -> str:
    out = []
    for seg in template.split("/")[1:]:
        if seg == "{rest:path}":
            out += ["deep", str(n)]
        elif seg.startswith("{"):
            out.append(str(n))
        else:
            out.append(seg)
    return "/" + "/".join(out)


# A request: (workload or None, role or None, route index, method, parameter value).
requests = st.tuples(st.sampled_from([None, *WORKLOADS]), st.sampled_from([None, *ROLES]),
                     st.integers(0, 3), st.sampled_from(METHODS), st.integers(0, 99))


@settings(max_examples=60, deadline=None)
@given(by=st.sampled_from(["roles", "users", "workloads"]), routes=route_sets(),
       traffic=st.lists(requests, max_size=25),
       noise=st.lists(st.tuples(requests, st.sampled_from([(403, "deny"), (401, "deny"),
                                                            (400, "deny"), (503, "deny")])),
                      max_size=6))
def test_learn_allows_exactly_the_observed(by: str, routes: list[str],
                                           traffic: list[tuple[object, ...]],
                                           noise: list[tuple[tuple[object, ...], tuple[int, str]]],
                                           ) -> None:
    templates = [RouteTemplate(source=r, object=keymatch2_object(r) or "", methods=frozenset())
                 for r in routes]

    def to_record(req: tuple[object, ...], status: int, decision: str) -> DecisionRecord | None:
        workload, role, index, method, n = req
        if workload is None and role is None:
            return None
        path = concrete(routes[int(index) % len(routes)], int(n))  # type: ignore[call-overload]
        return rec(path, method=str(method), peer=workload,  # type: ignore[arg-type]
                   user="u" if role else None, roles=[str(role)] if role else [],
                   status=status, decision=decision)

    observed: set[tuple[str, int, str]] = set()
    records = []
    for req in traffic:
        r = to_record(req, 200, "would_deny")
        if r is not None:
            records.append(r)
            workload, role = req[0], f"role:{req[1]}" if req[1] else None
            user = f"{ISS}#u" if req[1] else None
            order = {"roles": (role, workload), "users": (user, workload),
                     "workloads": (workload, role)}[by]
            principal = str(next(p for p in order if p is not None))
            observed.add((principal, int(req[2]) % len(routes), str(req[3])))  # type: ignore[call-overload]
    for req, (status, decision) in noise:
        r = to_record(req, status, decision)
        if r is not None:
            records.append(r)
    result = learn(records, templates=templates, by=by)
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "learned.csv"
        f.write_text(result.render())
        policy = CasbinPolicy(policy=f, cache_size=0)
        # Every served request is allowed, with its own subjects.
        for r in records:
            if r.status == 200:
                assert policy.evaluate(subjects=r.subjects, resource=r.path,
                                       action=r.method).allowed, r
        # Each single principal is allowed exactly the observed (route, method) pairs,
        # on any path of the route (a fresh parameter value).
        for principal in [*WORKLOADS, *(f"role:{r}" for r in ROLES), f"{ISS}#u"]:
            for index in range(len(routes)):
                for method in METHODS:
                    path = concrete(routes[index], 1000)
                    got = policy.evaluate(subjects=(principal,), resource=path,
                                          action=method).allowed
                    assert got == ((principal, index, method) in observed), (
                        principal, routes[index], method)
