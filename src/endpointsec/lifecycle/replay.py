"""Replay recorded decisions against a candidate policy: what would change.

Each record's subjects, path, method and domain are evaluated by the candidate
(:meth:`endpointsec.policy.CasbinPolicy.evaluate`, the engine the service runs) and
compared with what happened: a request the service **served** (``allow``, or
``would_deny`` under a dry-run policy) that the candidate denies is *newly denied*
(narrowing: something that worked would break); a request that was refused (403)
and that the candidate allows is *newly allowed* (widening).

Records with status 400, 401 or 503 are not replayed (no authorization question was
asked), nor requests served without any subject (a public route: the policy was not
asked). A 403 that a route requirement gave after the policy allowed (the record's rule
is an ``allow`` rule) stays a 403 whatever the candidate says: route requirements are
not part of the policy.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from endpointsec.errors import PathError
from endpointsec.lifecycle.records import NOT_AUTHORIZATION, DecisionRecord
from endpointsec.lifecycle.routes import RouteTemplate

__all__ = ["Change", "ReplayReport", "replay", "routes_of_policy"]

NEWLY_DENIED = "newly denied"
NEWLY_ALLOWED = "newly allowed"


@dataclass(kw_only=True)
class Change:
    """Requests of one principal and route whose outcome the candidate changes."""

    direction: str
    subjects: tuple[str, ...]
    method: str
    route: str
    domain: str | None
    #: The candidate's deciding rule (``None``: no rule matched).
    rule: tuple[str, ...] | None
    reason: str
    #: The rule recorded with the original decision.
    was_rule: tuple[str, ...] | None
    count: int = 0
    paths: list[str] = field(default_factory=list)

    def render(self) -> list[str]:
        who = ", ".join(self.subjects) or "(no subject)"
        dom = f" (domain {self.domain})" if self.domain else ""
        rule = ", ".join(self.rule) if self.rule else "no rule matched"
        was = ", ".join(self.was_rule) if self.was_rule else "no rule"
        examples = ", ".join(self.paths[:3]) + (" ..." if len(self.paths) > 3 else "")
        return [
            f"  {self.count:>5}x  {self.method} {self.route}{dom}",
            f"          by:        {who}",
            f"          candidate: {rule}",
            f"          recorded:  {was}",
            f"          paths:     {examples}",
        ]


@dataclass(kw_only=True)
class ReplayReport:
    """Every changed outcome, grouped, and the counts."""

    changes: list[Change] = field(default_factory=list)
    records: int = 0
    replayed: int = 0
    unchanged: int = 0
    #: Records not replayed, by reason.
    skipped: Counter[str] = field(default_factory=Counter)
    source: str = ""
    candidate: str = ""

    @property
    def newly_denied(self) -> list[Change]:
        """Served requests the candidate denies (narrowing)."""
        return [c for c in self.changes if c.direction == NEWLY_DENIED]

    @property
    def newly_allowed(self) -> list[Change]:
        """Refused requests the candidate allows (widening)."""
        return [c for c in self.changes if c.direction == NEWLY_ALLOWED]

    def render(self) -> str:
        out = [f"replay {self.source or 'decision records'} against "
               f"{self.candidate or 'the candidate'}"]
        for title, changes in (
            ("NEWLY DENIED (served before; the candidate denies)", self.newly_denied),
            ("NEWLY ALLOWED (refused before; the candidate allows)", self.newly_allowed),
        ):
            if changes:
                n = sum(c.count for c in changes)
                out.append(f"{title}: {n} request{'s' if n != 1 else ''}")
                for c in changes:
                    out += c.render()
        denied = sum(c.count for c in self.newly_denied)
        allowed = sum(c.count for c in self.newly_allowed)
        line = (f"{self.records} requests: {self.replayed} replayed ({self.unchanged} "
                f"unchanged, {denied} newly denied, {allowed} newly allowed)")
        if self.skipped:
            why = ", ".join(f"{n} {s}" for s, n in sorted(self.skipped.items()))
            line += f"; {sum(self.skipped.values())} not replayed ({why})"
        out.append(line)
        return "\n".join(out)


def _route_label(record: DecisionRecord, rule: tuple[str, ...] | None, path: str,
                 routes: Sequence[RouteTemplate]) -> str:
    if record.route:
        return record.route
    for r in (rule, record.rule):
        if r is not None and len(r) >= 6 and r[0] == "p" and r[3].startswith("/"):
            return r[3]
    best: RouteTemplate | None = None
    for t in routes:
        if t.matches(record.method, path) and (best is None
                                               or t.specificity > best.specificity):
            best = t
    return best.object if best is not None else path


def routes_of_policy(policy_file: str | Path) -> list[RouteTemplate]:
    """The objects of a policy's rules, as route templates (to name the route of a
    request that no rule decided)."""
    from endpointsec.lifecycle.coverage import read_policy_lines

    objects = {line.rule[3] for line in read_policy_lines(policy_file)
               if len(line.rule) >= 6 and line.rule[3].startswith("/")}
    return [RouteTemplate(source=o, object=o) for o in sorted(objects)]


def replay(records: Iterable[DecisionRecord], policy: Any, *, source: str = "",
           candidate: str = "", routes: Sequence[RouteTemplate] = ()) -> ReplayReport:
    """Evaluate every record against ``policy`` (an :class:`endpointsec.protocols.Policy`)
    and collect what changes. A change is grouped under the record's ``route``, else the
    object of the rule that decides it, else the most specific of ``routes`` the path
    matches, else the path itself."""
    report = ReplayReport(source=source, candidate=candidate)
    groups: dict[tuple[Any, ...], Change] = {}
    for r in records:
        report.records += 1
        if r.status in NOT_AUTHORIZATION or not (r.served or r.decision == "deny"):
            report.skipped[f"with status {r.status}: no authorization question"] += 1
            continue
        if not r.subjects and r.served:
            report.skipped["served without a subject: a public route"] += 1
            continue
        try:
            path = policy.normalize(r.path)
        except PathError:
            report.skipped["with an invalid path"] += 1
            continue
        report.replayed += 1
        result = policy.evaluate(subjects=r.subjects, resource=path, action=r.method,
                                 domain=r.domain)
        route_refused = (r.decision == "deny" and r.rule is not None
                         and r.rule[-1:] == ("allow",))
        now_served = result.allowed and not route_refused
        if now_served == r.served:
            report.unchanged += 1
            continue
        direction = NEWLY_ALLOWED if now_served else NEWLY_DENIED
        rule = result.matched_rule
        key = (direction, r.subjects, r.method, _route_label(r, rule, path, routes), r.domain, rule)
        change = groups.get(key)
        if change is None:
            change = groups[key] = Change(
                direction=direction, subjects=r.subjects, method=r.method, route=key[3],
                domain=r.domain, rule=rule, reason=result.reason, was_rule=r.rule)
            report.changes.append(change)
        change.count += 1
        if path not in change.paths:
            change.paths.append(path)
    report.changes.sort(key=lambda c: (c.direction, c.subjects, c.route, c.method))
    return report
