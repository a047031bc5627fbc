"""The decision log: one structured record per decision, through :mod:`logging`.

Every decision the gatekeeper makes goes to an *observer* (:class:`Observer`), called
after :func:`endpointsec.decide` with the request's facts, the decision and the time
spent gathering and deciding. The observer

* logs **every denial** (status 400/401/403/503, and dry-run "would deny") at ``INFO``
  on the ``endpointsec.decision`` logger, and a **sample of allows**
  (``[audit] allow_sample_rate``; ``0.0``, the default, logs none at ``INFO``; every
  allow is logged at ``DEBUG`` when that logger is enabled for it);
* counts the decision for Prometheus (:mod:`endpointsec.metrics`, ``[audit] metrics``);
* sets attributes on the current OpenTelemetry span (``[audit] otel``).

A record carries its fields as ``record.endpointsec_record`` (a dict, the keys below),
the :class:`~endpointsec.facts.Decision` as ``record.endpointsec_decision`` and the
request's :class:`~endpointsec.facts.RequestFacts` as ``record.endpointsec_facts``; its
message is the same decision on one line of plain text. :class:`JSONFormatter` writes
the dict as one JSON object per line::

    {"time": "2026-11-27T10:00:00.123456Z", "event": "endpointsec.decision",
     "request_id": "...", "method": "GET", "path": "/orders/42",
     "route": "/orders/{order_id}", "domain": null,
     "peer": {"id": "spiffe://...", "spiffe_id": "spiffe://...",
              "fingerprint_sha256": "ab12..."},
     "request_principal": {"issuer": "https://issuer.example", "subject": "alice"},
     "subjects": ["spiffe://...", "https://issuer.example#alice", "role:reader"],
     "decision": "allow", "status": 200,
     "rule": ["p", "role:reader", "*", "/orders/:id", "GET", "allow"],
     "reason": "...", "dry_run": false, "duration_us": 12.3,
     "level": "INFO", "logger": "endpointsec.decision"}

A record never holds a token, a key, a certificate or a header value other than the
request id. Everything a client controls (path, method, claims quoted in a reason) is
escaped: JSON escapes every control and non-ASCII character, and the one-line text form
writes CR, LF, ESC and every other control character as ``\\r``, ``\\n``, ``\\x1b``.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import time
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from endpointsec.errors import ConfigurationError

if TYPE_CHECKING:
    from endpointsec._config import Table
    from endpointsec.facts import Decision, RequestFacts
    from endpointsec.metrics import Metrics
    from endpointsec.routing import RouteTable

__all__ = [
    "REASON_CLASSES",
    "AuditConfig",
    "JSONFormatter",
    "Observer",
    "TextFormatter",
    "decision_record",
    "escape_text",
    "reason_class",
]

logger = logging.getLogger("endpointsec.decision")

#: The reason classes of :func:`reason_class` (a Prometheus label, a log field).
REASON_CLASSES = (
    "public", "policy_allow", "bad_request", "no_certificate", "bad_certificate",
    "no_token", "bad_token", "token_binding", "no_credentials", "keys_unavailable",
    "policy_deny", "policy_error", "missing_role",
)

#: Longest request id taken from a header (longer or non-printable: one is generated).
MAX_REQUEST_ID = 128
#: What a record keeps of the path and method a client sent.
_MAX_PATH = 2048
_MAX_METHOD = 32

#: Where a route adapter's template lookup comes from: ``route_of(carrier)``.
RouteOf = Callable[[Any], "str | None"]


@dataclass(frozen=True, kw_only=True)
class AuditConfig:
    """``[audit]``: the decision log, metrics and tracing (every key optional)."""

    #: Log decisions at all (``false``: no decision records; metrics and tracing still
    #: work if enabled).
    log: bool = True
    #: Fraction of allowed requests logged at ``INFO`` (0.0 to 1.0). Denials are always
    #: logged.
    allow_sample_rate: float = 0.0
    #: Header whose value becomes the record's ``request_id`` when it is printable
    #: ASCII of at most 128 characters (otherwise one is generated); ``""`` to always
    #: generate one.
    request_id_header: str = "x-request-id"
    #: Count decisions for Prometheus (``endpointsec[prometheus]``).
    metrics: bool = False
    #: Set ``endpointsec.*`` attributes on the current OpenTelemetry span
    #: (``endpointsec[otel]``).
    otel: bool = False

    def __post_init__(self) -> None:
        rate = self.allow_sample_rate
        if not isinstance(rate, int | float) or isinstance(rate, bool) or not 0.0 <= rate <= 1.0:
            raise ConfigurationError("must be a number from 0.0 to 1.0",
                                     key="audit.allow_sample_rate")
        header = self.request_id_header
        if header and (not header.isascii() or not all(
                c.isalnum() or c in "-_" for c in header)):
            raise ConfigurationError("must be a header name (letters, digits, '-', '_')",
                                     key="audit.request_id_header")

    @property
    def enabled(self) -> bool:
        """Whether an observer is needed at all."""
        return self.log or self.metrics or self.otel

    @classmethod
    def from_table(cls, t: Table) -> AuditConfig:
        return t.build(
            cls,
            log=t.boolean("log", True),
            allow_sample_rate=t.number("allow_sample_rate", 0.0, minimum=0.0, maximum=1.0),
            request_id_header=t.string("request_id_header", "x-request-id"),
            metrics=t.boolean("metrics", False),
            otel=t.boolean("otel", False),
        )


# -- escaping ---------------------------------------------------------------------------

_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_ESCAPES.update({0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r", 0x5C: "\\\\",
                 0x2028: "\\u2028", 0x2029: "\\u2029", 0x85: "\\x85"})


_CONTROL_ESCAPES = {c: e for c, e in _ESCAPES.items() if c != 0x5C}


def escape_text(value: str) -> str:
    """``value`` on one line: CR, LF, tab, ESC and every other C0/C1 control character,
    the Unicode line separators and the backslash are written as escapes."""
    return value.translate(_ESCAPES)


# -- classification -------------------------------------------------------------------


def reason_class(facts: RequestFacts, decision: Decision) -> str:
    """A small, fixed vocabulary for why a decision went the way it did."""
    status = decision.status
    if decision.allowed and not decision.would_deny:
        return "public" if facts.requirements.public else "policy_allow"
    if status == 400:
        return "bad_request"
    if status == 503:
        return "keys_unavailable"
    if status == 401:
        if decision.challenge == "Bearer":
            if facts.token_error is not None:
                return "bad_token"
            return "no_token" if decision.principal.request is None else "token_binding"
        if facts.peer_error is not None:
            return "bad_certificate"
        if decision.reason.startswith("no credentials"):
            return "no_credentials"
        return "no_certificate"
    if decision.reason.startswith("policy evaluation failed"):
        return "policy_error"
    if decision.reason.startswith("route requires one of"):
        return "missing_role"
    return "policy_deny"


def outcome(decision: Decision) -> str:
    """``"allow"``, ``"deny"`` or ``"would_deny"``."""
    if decision.would_deny:
        return "would_deny"
    return "allow" if decision.allowed else "deny"


# -- the record -------------------------------------------------------------------------


#: The last whole second formatted, with its text (one tuple: replaced atomically).
_second: tuple[int, str] = (-1, "")


def _iso(epoch: float) -> str:
    """``epoch`` as ``2026-11-27T10:00:00.123456Z`` (the prefix is formatted once per
    second)."""
    global _second
    whole = int(epoch)
    micros = round((epoch - whole) * 1_000_000)
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    cached = _second
    if cached[0] != whole:
        cached = _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{cached[1]}.{micros:06d}Z"


def decision_record(
    facts: RequestFacts,
    decision: Decision,
    *,
    duration_ns: int = 0,
    request_id: str | None = None,
    route: str | None = None,
    dry_run: bool = False,
    when: float | None = None,
) -> dict[str, Any]:
    """The decision record (the dict a :class:`JSONFormatter` writes, minus ``level`` and
    ``logger``). Shared with ``endpointsec learn``/``replay``: the keys are a contract."""
    principal = decision.principal
    peer = principal.peer
    token = principal.request
    subjects = decision.subjects or principal.subjects()
    rule = decision.matched_rule
    return {
        "time": _iso(time.time() if when is None else when),
        "event": "endpointsec.decision",
        "request_id": request_id,
        "method": facts.method[:_MAX_METHOD],
        "path": (facts.path if facts.path is not None else facts.raw_path)[:_MAX_PATH],
        "route": route,
        "domain": facts.domain,
        "peer": None if peer is None else {
            "id": peer.id,
            "spiffe_id": None if peer.spiffe_id is None else str(peer.spiffe_id),
            "fingerprint_sha256": peer.fingerprint_sha256,
        },
        "request_principal": None if token is None else {
            "issuer": token.issuer, "subject": token.subject,
        },
        "subjects": list(subjects),
        "decision": outcome(decision),
        "status": decision.status,
        "rule": None if rule is None else list(rule),
        "reason": decision.reason,
        "dry_run": dry_run or decision.would_deny,
        "duration_us": round(duration_ns / 1000, 1),
    }


#: Subjects written on a refusal's text line (the JSON record has all of them).
_TEXT_SUBJECTS = 8


def text_line(record: Mapping[str, Any]) -> str:
    """The record on one line of plain text, every client-controlled part escaped."""
    peer = record["peer"]
    token = record["request_principal"]
    rule = record["rule"]
    parts = [
        f"{record['decision']} {record['status']} {record['method']} {record['path']}",
        f"reason={record['reason']!s}",
    ]
    if peer is not None:
        parts.append(f"peer={peer['id']}")
    if token is not None:
        parts.append(f"user={token['issuer']}#{token['subject']}")
    if record["status"] == 403 or record["decision"] == "would_deny":
        # what the policy was asked about: the roles, scopes and groups that were held
        subjects = record["subjects"]
        if subjects:
            shown = ",".join(subjects[:_TEXT_SUBJECTS])
            more = len(subjects) - _TEXT_SUBJECTS
            parts.append(f"subjects={shown}" + (f",+{more} more" if more > 0 else ""))
    if rule is not None:
        parts.append("rule=" + ",".join(rule))
    if record["route"] is not None:
        parts.append(f"route={record['route']}")
    parts.append(f"request_id={record['request_id']}")
    return escape_text(" ".join(parts))


_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), default=str)


class _Line:
    """A decision record's log message: :func:`text_line`, worked out when formatted."""

    __slots__ = ("_record", "_text")

    def __init__(self, record: Mapping[str, Any]) -> None:
        self._record = record
        self._text: str | None = None

    def __str__(self) -> str:
        if self._text is None:
            self._text = text_line(self._record)
        return self._text


class JSONFormatter(logging.Formatter):
    """One JSON object per line.

    A decision record is written with the keys of :func:`decision_record`, then
    ``level`` and ``logger``; any other record as ``time``, ``level``, ``logger`` and
    ``message`` (plus ``exception`` when there is one). Every control and non-ASCII
    character is escaped. Usable from :func:`logging.config.dictConfig`::

        "formatters": {"json": {"()": "endpointsec.audit.JSONFormatter"}}
    """

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "endpointsec_record", None)
        if isinstance(fields, dict):
            out = dict(fields)
        else:
            out = {"time": _iso(record.created), "message": record.getMessage()}
            if record.exc_info:
                out["exception"] = self.formatException(record.exc_info)
        out["level"] = record.levelname
        out["logger"] = record.name
        return _ENCODER.encode(out)


class TextFormatter(logging.Formatter):
    """A :class:`logging.Formatter` whose output is always one line: control
    characters in the message (and in a traceback) are escaped. (A decision record's
    message is escaped already, backslashes included.)"""

    def __init__(self, fmt: str | None = None, datefmt: str | None = None) -> None:
        super().__init__(fmt or "%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt)

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).translate(_CONTROL_ESCAPES)


# -- request ids ------------------------------------------------------------------------

_ID_PREFIX = os.urandom(4).hex()
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    """A process-unique id: a random per-process prefix and a counter."""
    return f"{_ID_PREFIX}-{next(_ID_COUNTER):x}"


def valid_request_id(value: Any) -> str | None:
    """``value`` if it is printable ASCII (no space) of 1 to 128 characters."""
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_REQUEST_ID:
        return None
    if not all("!" <= c <= "~" for c in value):
        return None
    return value


# -- the observer -------------------------------------------------------------------------


class Observer:
    """Called by the gatekeeper after each decision (``observer(facts, decision,
    duration_ns, carrier, route_of)``): the decision log, metrics and tracing.

    ``carrier`` is the ASGI scope or WSGI environ (or ``None``): the request id and the
    route template are worked out from it only when a record is written.
    """

    __slots__ = ("_header_bytes", "_header_environ", "_log", "_metrics", "_otel", "_policy",
                 "_random", "_routes", "_sample", "config")

    def __init__(self, *, config: AuditConfig, policy: Any = None,
                 routes: RouteTable | None = None, metrics: Metrics | None = None) -> None:
        self.config = config
        self._log = config.log
        self._sample = config.allow_sample_rate
        self._random = random.random
        self._policy = policy
        self._routes = routes
        self._metrics = metrics
        self._otel = _otel_setter() if config.otel else None
        header = config.request_id_header
        self._header_bytes = header.lower().encode() if header else None
        self._header_environ = ("HTTP_" + header.upper().replace("-", "_")) if header else None

    @property
    def metrics(self) -> Metrics | None:
        return self._metrics

    def __call__(self, facts: RequestFacts, decision: Decision, duration_ns: int,
                 carrier: MutableMapping[str, Any] | None = None,
                 route_of: RouteOf | None = None) -> None:
        metrics = self._metrics
        if metrics is not None:
            metrics.observe(facts, decision, duration_ns)
        if self._otel is not None:
            self._otel(decision)
        if not self._log:
            return
        if decision.allowed and not decision.would_deny:
            sample = self._sample
            if sample <= 0.0 or (sample < 1.0 and self._random() >= sample):
                if logger.isEnabledFor(logging.DEBUG):
                    self._emit(logging.DEBUG, facts, decision, duration_ns, carrier, route_of)
                return
        if logger.isEnabledFor(logging.INFO):
            self._emit(logging.INFO, facts, decision, duration_ns, carrier, route_of)

    def _emit(self, level: int, facts: RequestFacts, decision: Decision, duration_ns: int,
              carrier: MutableMapping[str, Any] | None, route_of: RouteOf | None) -> None:
        try:
            record = decision_record(
                facts, decision, duration_ns=duration_ns,
                request_id=self.request_id(carrier),
                route=self._route(facts, carrier, route_of),
                dry_run=facts.requirements.dry_run or bool(getattr(self._policy, "dry_run",
                                                                   False)),
            )
        except Exception as exc:  # the log must never turn a decision into a 500
            logger.warning("decision record could not be built: %s", type(exc).__name__)
            return
        # makeRecord + handle: what logger.log does, minus the stack walk of findCaller
        # (the caller is always this line). The message is worked out when formatted.
        log_record = logger.makeRecord(
            logger.name, level, __file__, 0, _Line(record), (), None, "decision",
            {"endpointsec_record": record, "endpointsec_decision": decision,
             "endpointsec_facts": facts})
        logger.handle(log_record)

    def request_id(self, carrier: MutableMapping[str, Any] | None) -> str:
        """The request id: the configured header's value if valid, else a new one.
        Remembered in the carrier (``"endpointsec.request_id"``) so that every record
        of one request has the same id."""
        if carrier is None:
            return new_request_id()
        known = carrier.get("endpointsec.request_id")
        if isinstance(known, str):
            return known
        found: str | None = None
        if "type" in carrier and "headers" in carrier:  # an ASGI scope
            wanted = self._header_bytes
            if wanted is not None:
                try:
                    for name, value in carrier["headers"]:
                        if name.lower() == wanted:
                            found = valid_request_id(value)
                            break
                except (TypeError, ValueError, AttributeError):
                    found = None
        elif self._header_environ is not None:
            found = valid_request_id(carrier.get(self._header_environ))
        rid = found or new_request_id()
        carrier["endpointsec.request_id"] = rid
        return rid

    def _route(self, facts: RequestFacts, carrier: Any, route_of: RouteOf | None
               ) -> str | None:
        if route_of is not None:
            try:
                found = route_of(carrier)
            except Exception:  # an odd scope: fall back to the configured routes
                found = None
            if found is not None:
                return found
        if self._routes is not None and facts.path is not None:
            return self._routes.template_for(facts.method, facts.path)
        return None


def _otel_setter() -> Callable[[Decision], None]:
    try:
        from opentelemetry import trace
    except ImportError as exc:
        raise ConfigurationError(
            "needs the OpenTelemetry API: pip install 'endpointsec[otel]'",
            key="audit.otel") from exc
    get_span = trace.get_current_span

    def set_attributes(decision: Decision) -> None:
        span = get_span()
        if not span.is_recording():
            return
        principal = decision.principal
        attributes: dict[str, str | int] = {
            "endpointsec.decision": outcome(decision),
            "endpointsec.status": decision.status,
        }
        if principal.peer is not None:
            attributes["endpointsec.principal.peer"] = principal.peer.id
        if principal.request is not None:
            attributes["endpointsec.principal.subject"] = principal.request.id
        if decision.matched_rule is not None:
            attributes["endpointsec.rule"] = ", ".join(decision.matched_rule)
        span.set_attributes(attributes)

    return set_attributes


def build_observer(config: AuditConfig, *, policy: Any, routes: RouteTable | None,
                   token_verifier: Any = None, chain_verifier: Any = None,
                   force_metrics: bool = False) -> Observer | None:
    """The observer ``config`` asks for, or ``None`` when it asks for nothing."""
    from endpointsec import metrics as metrics_module

    metrics: Metrics | None = None
    if config.metrics or force_metrics or metrics_module.forced():
        metrics_module._prometheus()  # fail at start-up when prometheus_client is missing
        metrics = metrics_module.Metrics(policy=policy, token_verifier=token_verifier,
                          chain_verifier=chain_verifier)
    if not (config.log or config.otel or metrics is not None):
        return None
    return Observer(config=config, policy=policy, routes=routes, metrics=metrics)
