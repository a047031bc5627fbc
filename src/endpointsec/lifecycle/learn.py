"""Learn the smallest policy that allows what the service was observed doing.

Which records count: a request the service **served** (status 200: decision ``allow``,
or ``would_deny`` under a dry-run policy) is something the service did, and must keep
working. A request refused under an enforcing policy (``deny``, 403) is never learned:
it would turn whatever a caller tried into a rule. Records with status 400, 401 or 503
answer no authorization question (a malformed request, no identity, a failed key
fetch) and are ignored. Every ignored record is counted in the output's header.

Who a rule is for (``by``):

* ``"roles"`` (default): a request with a token role is credited to its role (the
  narrowest one, the role fewest records carry, when it carried several), else to its
  workload (the certificate subject), else to the token's user;
* ``"users"``: to the token's user (``<issuer>#<sub>``), else to the workload;
* ``"workloads"``: to the workload, else to the narrowest role, else to the user.

What a rule is for: the request's method (exact), its domain (``*`` when it had none)
and an object: the record's ``route`` when keyMatch2 can express it, else the most
specific route template the request matches (see :mod:`endpointsec.lifecycle.routes`),
else the exact path. A path that keyMatch2 cannot express exactly (a ``:``, ``*``,
``(`` ...) is left out and reported.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from endpointsec.audit import escape_text
from endpointsec.errors import PathError
from endpointsec.lifecycle.records import NOT_AUTHORIZATION, DecisionRecord, format_time
from endpointsec.lifecycle.routes import (
    RouteTemplate,
    key_match2,
    keymatch2_object,
    literal_ok,
)

__all__ = ["BY_CHOICES", "LearnResult", "LearnedRule", "learn", "object_for"]

#: Who learned rules are granted to.
BY_CHOICES = ("roles", "users", "workloads")


@dataclass(frozen=True, slots=True, kw_only=True)
class LearnedRule:
    """One proposed allow rule and what was seen of it."""

    subject: str
    domain: str
    object: str
    action: str
    count: int
    last: dt.datetime
    #: Other roles the requests credited to this rule carried.
    also: tuple[str, ...] = ()

    @property
    def line(self) -> tuple[str, ...]:
        """The rule as Casbin's ``matched_rule`` names it."""
        return ("p", self.subject, self.domain, self.object, self.action, "allow")

    def csv(self) -> str:
        """The policy line."""
        return ", ".join(self.line)

    def comment(self) -> str:
        """``# seen 42 times, last 2026-11-27T10:00:00Z``."""
        times = "time" if self.count == 1 else "times"
        text = f"# seen {self.count} {times}, last {format_time(self.last)}"
        if self.also:
            text += f"; those requests also carried {escape_text(', '.join(self.also))}"
        return text


@dataclass(kw_only=True)
class LearnResult:
    """The proposed policy, and what was left out and why."""

    rules: list[LearnedRule]
    #: Rules seen fewer than ``min_count`` times (left out of the policy).
    rare: list[LearnedRule] = field(default_factory=list)
    #: Records not learned from, by reason.
    ignored: Counter[str] = field(default_factory=Counter)
    #: Served requests whose path keyMatch2 cannot express exactly (``file:line path``).
    unexpressible: list[str] = field(default_factory=list)
    records: int = 0
    learned: int = 0
    by: str = "roles"
    min_count: int = 1
    source: str = ""
    first: dt.datetime | None = None
    last: dt.datetime | None = None

    def render(self) -> str:
        """The policy file: a header, then the rules grouped by subject, each under its
        ``# seen N times`` comment."""
        window = (f"{format_time(self.first)} .. {format_time(self.last)}"
                  if self.first and self.last else "no records")
        how = {
            "roles": "a request with a token role is credited to its narrowest role, "
                     "else to its workload",
            "users": "a request with a token is credited to its user, else to its "
                     "workload",
            "workloads": "a request is credited to its workload (certificate), else to "
                         "its narrowest role",
        }[self.by]
        out = [
            f"# Learned by endpointsec from {self.source or 'decision records'}: "
            f"{self.records} requests, {window}.",
            f"# Grants by {self.by}: {how}.",
            f"# {self.learned} served requests learned, {len(self.rules)} rules.",
        ]
        for reason, n in sorted(self.ignored.items()):
            out.append(f"# ignored: {n} {reason}")
        out.append("# Review every rule: it allows what was observed, not what should be.")
        subject: str | None = None
        for rule in self.rules:
            if rule.subject != subject:
                subject = rule.subject
                out += ["", f"# -- {subject}"]
            out += [rule.comment(), rule.csv()]
        if self.rare:
            out += ["", f"# Seen fewer than {self.min_count} times: left out "
                        "(uncomment to keep)."]
            for rule in self.rare:
                out += [rule.comment(), "# " + rule.csv()]
        if self.unexpressible:
            out += ["", "# Paths keyMatch2 cannot express exactly (no rule proposed):"]
            out += [f"#   {escape_text(where)}" for where in self.unexpressible]
        return "\n".join(out) + "\n"

    @property
    def lines(self) -> set[tuple[str, ...]]:
        """The proposed rules as ``matched_rule`` tuples."""
        return {r.line for r in self.rules}


@dataclass(slots=True)
class _Seen:
    last: dt.datetime
    count: int = 0
    also: set[str] = field(default_factory=set)


def _normalize(path: str) -> str | None:
    from endpointsec.policy.paths import PathNormalizer

    try:
        return PathNormalizer().normalize(path)
    except PathError:
        return None


def object_for(record: DecisionRecord, templates: Sequence[RouteTemplate]
               ) -> tuple[str, str] | None:
    """``(object, action)`` for a served request, or ``None`` when keyMatch2 cannot
    express its path exactly."""
    path = _normalize(record.path)
    if path is None:
        return None
    if record.route is not None:
        for style in ("starlette", "flask"):
            obj = keymatch2_object(record.route, style=style)
            if obj is not None and key_match2(path, obj):
                return obj, record.method
    best: RouteTemplate | None = None
    for t in templates:
        if t.matches(record.method, path) and (best is None
                                               or t.specificity > best.specificity):
            best = t
    if best is not None:
        return best.object, best.action or record.method
    if all(literal_ok(seg) for seg in path.split("/")):
        return path, record.method
    return None


#: What a value on a policy line may not hold: Casbin splits on ",", does not split
#: inside brackets, keeps quotes, and a line ends at a line break (a role or group name
#: comes from a token claim, a domain from a request header).
_NOT_ON_A_LINE = frozenset(',"[]()\u2028\u2029') | frozenset(map(chr, range(0x20))) \
    | frozenset(map(chr, range(0x7F, 0xA0)))
_UNWRITABLE = "with a subject or domain a policy line cannot hold (',', a bracket, a quote " \
              "or a control character)"


def _writable(value: str) -> bool:
    """``value`` is read back from a policy line exactly as written."""
    return bool(value) and value == value.strip() and _NOT_ON_A_LINE.isdisjoint(value)


def _ignored_reason(record: DecisionRecord) -> str | None:
    if record.status in NOT_AUTHORIZATION:
        return (f"with status {record.status} (not an authorization question)")
    if record.decision == "deny":
        return "refused under an enforcing policy (403; never learned)"
    if not record.served:
        return f"with status {record.status} and decision {record.decision}"
    if not record.subjects:
        return "served without a subject (public route or anonymous caller)"
    return None


def learn(records: Iterable[DecisionRecord], *, templates: Sequence[RouteTemplate] = (),
          by: str = "roles", min_count: int = 1, source: str = "") -> LearnResult:
    """The smallest policy allowing every served request in ``records`` (see the module
    docstring for which records count and whom a rule is for)."""
    if by not in BY_CHOICES:
        from endpointsec.errors import ConfigurationError

        raise ConfigurationError(f"must be one of {', '.join(BY_CHOICES)}, not {by!r}",
                                 key="--by")
    all_records = list(records)
    result = LearnResult(rules=[], by=by, min_count=min_count, source=source,
                         records=len(all_records))
    if all_records:
        result.first = min(r.time for r in all_records)
        result.last = max(r.time for r in all_records)
    usable: list[DecisionRecord] = []
    for r in all_records:
        reason = _ignored_reason(r)
        if reason is None:
            usable.append(r)
        else:
            result.ignored[reason] += 1
    role_count: Counter[str] = Counter()
    for r in usable:
        role_count.update(set(r.roles))

    def narrowest(roles: Sequence[str]) -> str | None:
        return min(roles, key=lambda x: (role_count[x], x)) if roles else None

    seen: dict[tuple[str, str, str, str], _Seen] = {}
    for r in usable:
        target = object_for(r, templates)
        if target is None:
            result.unexpressible.append(f"{r.where} {r.method} {r.path}")
            result.ignored["with a path keyMatch2 cannot express exactly"] += 1
            continue
        role = narrowest([x for x in r.roles if _writable(x)])
        order = {
            "roles": (role, r.workload, r.user_subject),
            "users": (r.user_subject, r.workload, role),
            "workloads": (r.workload, role, r.user_subject),
        }[by]
        subject = next((s for s in order if s is not None), r.subjects[0])
        if not _writable(subject) or not _writable(r.domain or "*"):
            # Written as is it would end the line, or add or merge values: a role named
            # "x\np, role:reader, *, /*, *, allow" would have added that rule.
            result.ignored[_UNWRITABLE] += 1
            continue
        key = (subject, r.domain or "*", target[0], target[1])
        entry = seen.get(key)
        if entry is None:
            entry = seen[key] = _Seen(last=r.time)
        entry.count += 1
        entry.last = max(entry.last, r.time)
        if subject == role:
            entry.also.update(x for x in r.roles if x != role)
        result.learned += 1

    def kind(subject: str) -> int:
        return 1 if subject.startswith("role:") else 0 if "://" in subject else 2

    for (subject, domain, obj, act), entry in sorted(
        seen.items(), key=lambda kv: (kind(kv[0][0]), kv[0])
    ):
        rule = LearnedRule(subject=subject, domain=domain, object=obj, action=act,
                           count=entry.count, last=entry.last, also=tuple(sorted(entry.also)))
        (result.rules if rule.count >= min_count else result.rare).append(rule)
    return result
