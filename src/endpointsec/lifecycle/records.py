"""Decision records: one JSON object per line, the decision log's format.

::

    {"time": "2026-11-27T10:00:00.123456Z", "event": "endpointsec.decision",
     "request_id": "...", "method": "GET", "path": "/orders/42",
     "route": "/orders/{order_id}", "domain": null,
     "peer": {"id": "spiffe://...", "spiffe_id": "spiffe://...",
              "fingerprint_sha256": "ab12..."},
     "request_principal": {"issuer": "https://issuer.example", "subject": "alice"},
     "subjects": ["spiffe://...", "https://issuer.example#alice", "role:reader"],
     "decision": "allow", "status": 200,
     "rule": ["p", "role:reader", "*", "/orders/:id", "GET", "allow"],
     "reason": "...", "dry_run": false, "duration_us": 12.3}

:func:`read_records` reads that format: extra fields are ignored, lines of another
``event`` are skipped, and a line that is not a well-formed decision record is refused
with its line number (:class:`~endpointsec.errors.ConfigurationError`). ``subjects``
lists the certificate subject first (when there is a ``peer``), then the token's.

:func:`record_from` builds a record from a :class:`~endpointsec.facts.Decision` (and the
request's facts when known), and :class:`DecisionRecordHandler` writes one record per
``endpointsec.decision`` log record to a file.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from endpointsec.errors import ConfigurationError

if TYPE_CHECKING:
    from endpointsec.facts import Decision, RequestFacts

__all__ = [
    "EVENT",
    "NOT_AUTHORIZATION",
    "DecisionRecord",
    "DecisionRecordHandler",
    "format_time",
    "iter_records",
    "one_per_request",
    "parse_time",
    "read_records",
    "record_from",
]

#: The ``event`` field of a decision record.
EVENT = "endpointsec.decision"
#: Statuses that answer no authorization question (bad request, unauthenticated,
#: upstream failure): never learned from, never replayed.
NOT_AUTHORIZATION = frozenset({400, 401, 503})
_DECISIONS = ("allow", "deny", "would_deny")
_MAX_OPEN_REQUESTS = 4096
_TOKEN_PREFIXES = ("role:", "scope:", "group:")


def parse_time(value: str, *, where: str = "time") -> dt.datetime:
    """An RFC 3339 time with a zone (``2026-11-27T10:00:00Z``), as an aware datetime."""
    try:
        parsed = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise ConfigurationError(f"not an RFC 3339 time: {value!r}", key=where) from None
    if parsed.tzinfo is None:
        raise ConfigurationError(f"{value!r} has no time zone (add a trailing Z)",
                                 key=where)
    return parsed.astimezone(dt.UTC)


def format_time(when: dt.datetime) -> str:
    """``2026-11-27T10:00:00Z`` (UTC, whole seconds)."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True, kw_only=True)
class DecisionRecord:
    """One decision, as read from the decision log."""

    time: dt.datetime
    method: str
    path: str
    subjects: tuple[str, ...]
    decision: str
    status: int
    route: str | None = None
    domain: str | None = None
    request_id: str | None = None
    #: The certificate subject (the peer principal), when a certificate identified one.
    peer: str | None = None
    #: The token's ``(issuer, subject)``, when a token was verified.
    user: tuple[str, str] | None = None
    rule: tuple[str, ...] | None = None
    reason: str = ""
    dry_run: bool = False
    #: Where it was read (``file:line``), for messages.
    where: str = ""

    @property
    def served(self) -> bool:
        """The request reached the application (allowed, or only "would deny")."""
        return self.decision in ("allow", "would_deny") and self.status < 400

    @property
    def workload(self) -> str | None:
        """The certificate subject (listed first in ``subjects``)."""
        if self.peer is not None and self.subjects:
            return self.subjects[0]
        return None

    @property
    def token_subjects(self) -> tuple[str, ...]:
        """The subjects that came from the token."""
        return self.subjects[1:] if self.workload is not None else self.subjects

    @property
    def user_subject(self) -> str | None:
        """The token's user subject (``<issuer>#<sub>``) as the record lists it."""
        if self.user is None:
            return None
        for s in self.token_subjects:
            if not s.startswith(_TOKEN_PREFIXES):
                return s
        return None

    @property
    def roles(self) -> tuple[str, ...]:
        """The token's ``role:`` subjects."""
        return tuple(s for s in self.token_subjects if s.startswith("role:"))


_NOT_JSON_HINT = (
    " (decision records are one JSON object per line; the standard error of "
    "'endpointsec serve --log-format json' also holds the server's own lines: keep "
    "only those starting with '{')")


def _fail(where: str, message: str) -> ConfigurationError:
    return ConfigurationError(f"{where}: {message}")


def _opt_str(data: Mapping[str, Any], key: str, where: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _fail(where, f"'{key}' must be a string or null")
    return value


def _record(data: Any, where: str) -> DecisionRecord | None:
    if not isinstance(data, dict):
        raise _fail(where, "a decision record is a JSON object")
    # Records of endpointsec's other loggers, as JSONFormatter writes them next to the
    # decisions (a key-set warning ...), have a 'logger' and no 'event': not decisions.
    event = data.get("event", data.get("logger", EVENT))
    if event != EVENT:
        return None
    for key in ("time", "method", "path", "decision"):
        if not isinstance(data.get(key), str):
            raise _fail(where, f"'{key}' is missing or not a string")
    try:
        when = parse_time(data["time"])
    except ConfigurationError as exc:
        raise _fail(where, str(exc)) from None
    decision = data["decision"]
    if decision not in _DECISIONS:
        raise _fail(where, f"'decision' must be one of {', '.join(_DECISIONS)}, "
                           f"not {decision!r}")
    status = data.get("status")
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        raise _fail(where, "'status' is missing or not an HTTP status")
    subjects = data.get("subjects", [])
    if not isinstance(subjects, list) or not all(isinstance(s, str) for s in subjects):
        raise _fail(where, "'subjects' must be a list of strings")
    rule = data.get("rule")
    if rule is not None and (not isinstance(rule, list) or not rule
                             or not all(isinstance(s, str) for s in rule)):
        raise _fail(where, "'rule' must be a list of strings or null")
    peer = data.get("peer")
    peer_id: str | None = None
    if peer is not None:
        if not isinstance(peer, dict) or not isinstance(peer.get("id"), str):
            raise _fail(where, "'peer' must be null or an object with an 'id' string")
        peer_id = peer["id"]
    principal = data.get("request_principal")
    user: tuple[str, str] | None = None
    if principal is not None:
        if (not isinstance(principal, dict) or not isinstance(principal.get("issuer"), str)
                or not isinstance(principal.get("subject"), str)):
            raise _fail(where, "'request_principal' must be null or an object with "
                               "'issuer' and 'subject' strings")
        user = (principal["issuer"], principal["subject"])
    if peer_id is not None and (not subjects or subjects[0] != peer_id):
        raise _fail(where, "'subjects' must list the certificate subject ('peer.id') first")
    dry_run = data.get("dry_run", False)
    reason = data.get("reason", "")
    return DecisionRecord(
        time=when, method=data["method"], path=data["path"], subjects=tuple(subjects),
        decision=decision, status=status, route=_opt_str(data, "route", where),
        domain=_opt_str(data, "domain", where),
        request_id=_opt_str(data, "request_id", where), peer=peer_id, user=user,
        rule=tuple(rule) if rule is not None else None,
        reason=reason if isinstance(reason, str) else "",
        dry_run=dry_run is True, where=where,
    )


def iter_records(lines: Iterable[str], *, source: str = "<records>") -> Iterator[DecisionRecord]:
    """Decision records from JSON lines; blank lines and other events are skipped."""
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text:
            continue
        where = f"{source}:{number}"
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise _fail(where, f"not JSON: {exc}{_NOT_JSON_HINT}") from None
        record = _record(data, where)
        if record is not None:
            yield record


def one_per_request(records: Iterable[DecisionRecord]) -> list[DecisionRecord]:
    """One record per request: of the records sharing a ``request_id`` (a middleware's
    decision and a route dependency's), the last one; records without one all count."""
    out: list[DecisionRecord] = []
    index: dict[str, int] = {}
    for r in records:
        if r.request_id is None:
            out.append(r)
        elif r.request_id in index:
            out[index[r.request_id]] = r
        else:
            index[r.request_id] = len(out)
            out.append(r)
    return out


def read_records(path: str | Path, *, since: dt.datetime | None = None,
                 until: dt.datetime | None = None) -> list[DecisionRecord]:
    """The decision records in ``path`` (``-``: standard input) with
    ``since <= time < until``, one per request (see :func:`one_per_request`)."""
    import sys

    p = Path(path)
    try:
        if str(path) == "-":
            lines: list[str] = sys.stdin.read().splitlines()
        else:
            lines = p.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ConfigurationError(f"decision records not found: {p}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"{p}: cannot be read: {exc}") from None
    return one_per_request(
        r for r in iter_records(lines, source=p.name)
        if (since is None or r.time >= since) and (until is None or r.time < until))


# -- writing records ------------------------------------------------------------------------


def _verdict(decision: Decision) -> str:
    if decision.would_deny:
        return "would_deny"
    return "allow" if decision.allowed else "deny"


def record_from(decision: Decision, facts: RequestFacts | None = None, *,
                when: dt.datetime | None = None, request_id: str | None = None,
                route: str | None = None, duration_us: float | None = None,
                dry_run: bool | None = None) -> dict[str, Any]:
    """The decision record (a JSON-ready dict) for ``decision``.

    ``facts`` supplies the request's method, normalized path and domain; without it they
    come from the decision (its action and resource, no domain).
    """
    principal = facts.principal if facts is not None else decision.principal
    peer = principal.peer
    token = principal.request
    if facts is not None:
        method = facts.method
        path = facts.path if facts.path is not None else facts.raw_path
        domain = facts.domain
    else:
        method = decision.action or ""
        path = decision.resource or ""
        domain = None
    subjects = list(decision.subjects) if decision.subjects else list(principal.subjects())
    return {
        "time": (when or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
        .strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "event": EVENT,
        "request_id": request_id or uuid.uuid4().hex,
        "method": method,
        "path": path,
        "route": route,
        "domain": domain,
        "peer": None if peer is None else {
            "id": peer.id,
            "spiffe_id": str(peer.spiffe_id) if peer.spiffe_id is not None else None,
            "fingerprint_sha256": peer.fingerprint_sha256,
        },
        "request_principal": None if token is None else {
            "issuer": token.issuer, "subject": token.subject,
        },
        "subjects": subjects,
        "decision": _verdict(decision),
        "status": decision.status,
        "rule": list(decision.matched_rule) if decision.matched_rule else None,
        "reason": decision.reason,
        "dry_run": decision.would_deny if dry_run is None else dry_run,
        "duration_us": duration_us,
    }


class DecisionRecordHandler(logging.Handler):
    """A logging handler writing one decision record (a JSON line) per log record that
    carries a decision (``record.endpointsec_decision``); other records are ignored.

    ``target`` is a path (appended to; reopened if a logging reconfiguration, such as
    uvicorn's ``dictConfig``, closed it) or a text stream; each line is flushed.
    Decisions about the same request (the middleware's, then a route dependency's) share
    a ``request_id``: they carry the same caller object. A log record that also carries
    the request's facts (``record.endpointsec_facts``) gives the method, path and domain
    from them::

        handler = DecisionRecordHandler("decisions.jsonl")
        log = logging.getLogger("endpointsec.decision")
        log.addHandler(handler)
        log.setLevel(logging.DEBUG)   # allowed requests are logged at DEBUG
    """

    def __init__(self, target: str | Path | IO[str], *, level: int = logging.DEBUG) -> None:
        super().__init__(level=level)
        self._path = Path(target) if isinstance(target, str | Path) else None
        self._stream: IO[str] | None = None if isinstance(target, str | Path) else target
        self._write_lock = threading.Lock()
        # id(principal) -> (principal, request id); the principal is kept so that its
        # id cannot be reused while it is in the table.
        self._ids: OrderedDict[int, tuple[object, str]] = OrderedDict()

    def _request_id(self, decision: Decision) -> str:
        key = id(decision.principal)
        hit = self._ids.get(key)
        if hit is not None and hit[0] is decision.principal:
            self._ids.move_to_end(key)
            return hit[1]
        rid = uuid.uuid4().hex
        self._ids[key] = (decision.principal, rid)
        if len(self._ids) > _MAX_OPEN_REQUESTS:
            self._ids.popitem(last=False)
        return rid

    def emit(self, record: logging.LogRecord) -> None:
        decision = getattr(record, "endpointsec_decision", None)
        if decision is None:
            return
        try:
            facts = getattr(record, "endpointsec_facts", None)
            when = dt.datetime.fromtimestamp(record.created, dt.UTC)
            with self._write_lock:
                audit = getattr(record, "endpointsec_record", None)
                # The decision log's own record (request id from the header, the app's
                # route template) when there is one; else built from the decision.
                data = audit if isinstance(audit, dict) else record_from(
                    decision, facts, when=when, request_id=self._request_id(decision))
                line = json.dumps(data, separators=(",", ":"))
                if self._stream is None or self._stream.closed:
                    if self._path is None:
                        return
                    self._stream = open(self._path, "a", encoding="utf-8")  # noqa: SIM115
                self._stream.write(line + "\n")
                self._stream.flush()
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        with self._write_lock:
            if self._path is not None and self._stream is not None:
                self._stream.close()
                self._stream = None
        super().close()
