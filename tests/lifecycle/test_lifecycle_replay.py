"""replay: every changed outcome, grouped by principal and route, with the deciding rule."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from endpointsec.lifecycle.records import DecisionRecord
from endpointsec.lifecycle.replay import replay, routes_of_policy
from endpointsec.policy import CasbinPolicy

WEB = "spiffe://shop.local/ns/shop/sa/web"
T0 = dt.datetime(2026, 11, 27, 10, 0, tzinfo=dt.UTC)


def rec(path: str, *, method: str = "GET", subjects: tuple[str, ...] = (WEB,),
        decision: str = "allow", status: int = 200, rule: tuple[str, ...] | None = None,
        route: str | None = None) -> DecisionRecord:
    return DecisionRecord(time=T0, method=method, path=path, subjects=subjects,
                          decision=decision, status=status, rule=rule, route=route,
                          peer=subjects[0] if subjects and "://" in subjects[0] else None)


def candidate(tmp_path: Path, text: str) -> tuple[CasbinPolicy, Path]:
    f = tmp_path / "candidate.csv"
    f.write_text(text)
    return CasbinPolicy(policy=f, cache_size=0), f


def test_narrowing_and_widening_grouped(tmp_path: Path) -> None:
    policy, f = candidate(tmp_path, f"p, {WEB}, *, /orders/:id, GET, allow\n"
                                    f"p, {WEB}, *, /admin/*, *, allow\n"
                                    f"p, {WEB}, *, /admin/keys, DELETE, deny\n")
    records = [
        rec("/orders/1"), rec("/orders/2"),                            # unchanged
        rec("/orders", decision="would_deny"),                         # served -> denied
        rec("/orders", decision="would_deny"),
        rec("/admin/keys", method="DELETE"),                           # served -> deny rule
        rec("/admin/users", decision="deny", status=403),              # refused -> allowed
        rec("/orders/3", method="GET", decision="deny", status=403,    # route requirement
            rule=("p", WEB, "*", "/orders/:id", "GET", "allow")),
        rec("/orders", status=401, decision="deny", subjects=()),      # not replayed
        rec("/healthz", subjects=()),                                  # public: not replayed
    ]
    report = replay(records, policy, source="d.jsonl", candidate="candidate.csv",
                    routes=routes_of_policy(f))
    assert report.records == 9 and report.replayed == 7 and report.unchanged == 3
    denied = {(c.method, c.route, c.count, c.rule) for c in report.newly_denied}
    assert denied == {
        ("GET", "/orders", 2, None),
        ("DELETE", "/admin/keys", 1, ("p", WEB, "*", "/admin/keys", "DELETE", "deny")),
    }
    (allowed,) = report.newly_allowed
    assert (allowed.route, allowed.paths, allowed.rule) == (
        "/admin/*", ["/admin/users"], ("p", WEB, "*", "/admin/*", "*", "allow"))
    text = report.render()
    assert "NEWLY DENIED (served before; the candidate denies): 3 requests" in text
    assert "NEWLY ALLOWED (refused before; the candidate allows): 1 request" in text
    assert ("9 requests: 7 replayed (3 unchanged, 3 newly denied, 1 newly allowed); "
            "2 not replayed (1 served without a subject: a public route, "
            "1 with status 401: no authorization question)") in text


def test_grouped_by_route_template_not_path(tmp_path: Path) -> None:
    policy, f = candidate(tmp_path, "p, role:admin, *, /orders/:id, DELETE, allow\n")
    records = [rec(f"/orders/{i}", method="DELETE", decision="would_deny") for i in range(4)]
    report = replay(records, policy, routes=routes_of_policy(f))
    (change,) = report.changes
    assert (change.route, change.count, change.paths[:2]) == ("/orders/:id", 4,
                                                              ["/orders/0", "/orders/1"])
    assert "/orders/0, /orders/1, /orders/2 ..." in report.render()


def test_record_route_names_the_group(tmp_path: Path) -> None:
    policy, _ = candidate(tmp_path, "p, role:admin, *, /x, GET, allow\n")
    (change,) = replay([rec("/items/9", route="/items/{item_id}")], policy).changes
    assert change.route == "/items/{item_id}"
