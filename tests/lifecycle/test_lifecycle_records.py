"""Decision records: the reader (strict about what it needs, tolerant of the rest) and
the writer (record_from, DecisionRecordHandler)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from endpointsec.errors import ConfigurationError
from endpointsec.lifecycle.records import (
    DecisionRecordHandler,
    iter_records,
    one_per_request,
    read_records,
    record_from,
)
from endpointsec.testing import evaluate
from endpointsec.testing.suites import offline_gatekeeper

WEB = "spiffe://shop.local/ns/shop/sa/web"

GOOD: dict[str, Any] = {
    "time": "2026-11-27T10:00:00.123456Z", "event": "endpointsec.decision",
    "request_id": "r1", "method": "GET", "path": "/orders/42", "route": "/orders/{order_id}",
    "domain": None,
    "peer": {"id": WEB, "spiffe_id": WEB, "fingerprint_sha256": "ab12"},
    "request_principal": {"issuer": "https://issuer.example", "subject": "alice"},
    "subjects": [WEB, "https://issuer.example#alice", "role:reader", "scope:orders.read"],
    "decision": "allow", "status": 200,
    "rule": ["p", "role:reader", "*", "/orders/:id", "GET", "allow"],
    "reason": "allowed", "dry_run": False, "duration_us": 12.3,
}


def line(**changes: Any) -> str:
    data = {**GOOD, **changes}
    for k, v in changes.items():
        if v is ...:
            del data[k]
    return json.dumps(data)


def test_reads_the_contract() -> None:
    (r,) = iter_records([line()])
    assert r.method == "GET" and r.path == "/orders/42" and r.route == "/orders/{order_id}"
    assert r.workload == WEB
    assert r.user == ("https://issuer.example", "alice")
    assert r.user_subject == "https://issuer.example#alice"
    assert r.roles == ("role:reader",)
    assert r.rule == ("p", "role:reader", "*", "/orders/:id", "GET", "allow")
    assert r.served and r.where == "<records>:1"


def test_extra_fields_blank_lines_and_other_events() -> None:
    lines = [line(extra={"x": 1}, shard=3), "", "   ",
             json.dumps({"event": "endpointsec.reload", "time": "whenever"}), line()]
    records = list(iter_records(lines, source="d.jsonl"))
    assert [r.where for r in records] == ["d.jsonl:1", "d.jsonl:5"]


def test_records_of_other_endpointsec_loggers_are_skipped() -> None:
    """`endpointsec serve --log-format json` writes every endpointsec logger's records
    with the same formatter: a key-set warning has no 'event', only its 'logger'."""
    from endpointsec.audit import JSONFormatter

    warning = logging.LogRecord("endpointsec.tokens", logging.WARNING, __file__, 1,
                                "issuer 'x': key set fetch failed", None, None)
    other = JSONFormatter().format(warning)
    assert "event" not in json.loads(other)
    assert [r.request_id for r in iter_records([other, line()])] == ["r1"]
    # a record without 'event' that is not from another logger is still a decision
    assert len(list(iter_records([line(event=...)]))) == 1


def test_token_only_caller_has_no_workload() -> None:
    (r,) = iter_records([line(peer=None, subjects=["https://i#bob", "role:admin"])])
    assert r.workload is None and r.user_subject == "https://i#bob"
    assert r.roles == ("role:admin",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not JSON"),
        ("INFO:     Started server process [1]", "keep only those starting with '{'"),
        ("[1, 2]", "a decision record is a JSON object"),
        (line(time=...), "'time' is missing"),
        (line(time="yesterday"), "not an RFC 3339 time"),
        (line(time="2026-11-27T10:00:00"), "no time zone"),
        (line(method=7), "'method' is missing or not a string"),
        (line(path=...), "'path' is missing"),
        (line(decision="maybe"), "'decision' must be one of"),
        (line(status="200"), "'status' is missing or not an HTTP status"),
        (line(status=True), "'status'"),
        (line(status=99), "'status'"),
        (line(subjects="role:x"), "'subjects' must be a list of strings"),
        (line(subjects=[1]), "'subjects' must be a list of strings"),
        (line(rule=[]), "'rule' must be a list of strings or null"),
        (line(rule="p, a"), "'rule'"),
        (line(peer="spiffe://x"), "'peer' must be null or an object"),
        (line(request_principal={"issuer": "x"}), "'request_principal'"),
        (line(route=3), "'route' must be a string or null"),
        (line(subjects=["role:reader", WEB]), "certificate subject ('peer.id') first"),
    ],
    ids=["not-json", "server-log-line", "not-object", "no-time", "bad-time", "naive-time",
         "method-type",
         "no-path", "bad-decision", "status-string", "status-bool", "status-range",
         "subjects-string", "subjects-int", "rule-empty", "rule-string", "peer-string",
         "principal-incomplete", "route-type", "peer-not-first"],
)
def test_malformed_lines_are_refused_with_their_line_number(text: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=r"d\.jsonl:3: ") as info:
        list(iter_records([line(), "", text], source="d.jsonl"))
    assert message in str(info.value)


@given(st.text(max_size=200))
def test_any_line_parses_or_raises_our_error(text: str) -> None:
    with contextlib.suppress(ConfigurationError):
        list(iter_records([text]))


def test_read_records_window(tmp_path: Path) -> None:
    from endpointsec.lifecycle.records import parse_time

    f = tmp_path / "d.jsonl"
    f.write_text("\n".join(line(time=f"2026-11-27T10:0{i}:00Z", request_id=f"r{i}")
                           for i in range(5)) + "\n")
    got = read_records(f, since=parse_time("2026-11-27T10:01:00Z"),
                       until=parse_time("2026-11-27T10:03:00Z"))
    assert [r.time.minute for r in got] == [1, 2]
    with pytest.raises(ConfigurationError, match="not found"):
        read_records(tmp_path / "missing.jsonl")


def gatekeeper(tmp_path: Path, rules: str) -> Any:
    policy = tmp_path / "policy.csv"
    policy.write_text(rules)
    return offline_gatekeeper(policy=policy)


def test_record_from_a_decision_reads_back(tmp_path: Path) -> None:
    gk = gatekeeper(tmp_path, "p, role:reader, *, /orders/:id, GET, allow\n")
    decision = evaluate(gk, path="/orders/42", peer=WEB,
                        token={"iss": "https://issuer.example", "sub": "alice",
                               "roles": ["reader"]})
    data = record_from(decision)
    assert data["decision"] == "allow" and data["status"] == 200
    assert data["peer"]["id"] == WEB and data["subjects"][0] == WEB
    assert data["request_principal"] == {"issuer": "https://issuer.example", "subject": "alice"}
    (r,) = iter_records([json.dumps(data)])
    assert r.rule == ("p", "role:reader", "*", "/orders/:id", "GET", "allow")
    assert r.path == "/orders/42" and r.method == "GET" and r.roles == ("role:reader",)


def test_handler_writes_one_line_per_decision(tmp_path: Path) -> None:
    gk = gatekeeper(tmp_path, "p, role:reader, *, /orders/:id, GET, allow\n")
    out = tmp_path / "decisions.jsonl"
    handler = DecisionRecordHandler(out)
    log = logging.getLogger("endpointsec.decision")
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    try:
        evaluate(gk, path="/orders/1", peer=WEB)                          # denied
        evaluate(gk, path="/orders/2", token={"iss": "https://i", "sub": "a",
                                              "roles": ["reader"]})       # allowed
        handler.close()  # as logging.config.dictConfig does: the next record reopens
        evaluate(gk, method="DELETE", path="/orders/3", peer=WEB)         # denied
        log.info("not a decision")
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        handler.close()
    records = read_records(out)
    assert [(r.decision, r.status, r.path) for r in records] == [
        ("deny", 403, "/orders/1"), ("allow", 200, "/orders/2"), ("deny", 403, "/orders/3")]


def test_handler_on_a_stream() -> None:
    stream = io.StringIO()
    handler = DecisionRecordHandler(stream)
    handler.emit(logging.makeLogRecord({"msg": "no decision"}))
    assert stream.getvalue() == ""
    handler.close()
    assert not stream.closed


def test_decisions_about_one_request_share_its_id(tmp_path: Path) -> None:
    from dataclasses import replace

    gk = gatekeeper(tmp_path, "p, role:reader, *, /orders/:id, GET, allow\n")
    stream = io.StringIO()
    handler = DecisionRecordHandler(stream)
    log = logging.getLogger("endpointsec.decision")
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    try:
        token = {"iss": "https://i", "sub": "a", "roles": ["reader"]}
        from endpointsec.testing.assertions import facts_for

        first = facts_for(gk, method="GET", path="/orders/1", token=token)
        scope: dict[str, object] = {"type": "http", "headers": []}  # one request's scope
        gk.decide(first, carrier=scope)                                  # the middleware
        gk.decide_route(first, replace(first.requirements, roles=frozenset({"role:x"})),
                        carrier=scope)                                   # a dependency
        gk.decide(facts_for(gk, method="GET", path="/orders/2", token=token),
                  carrier={"type": "http", "headers": []})               # another request
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    ids = [json.loads(x)["request_id"] for x in lines]
    assert ids[0] == ids[1] != ids[2]
    one = one_per_request(iter_records(lines))
    assert [(r.path, r.decision) for r in one] == [("/orders/1", "deny"), ("/orders/2", "allow")]


def test_one_per_request_keeps_records_without_an_id() -> None:
    records = list(iter_records([line(request_id=None), line(request_id=None),
                                 line(request_id="a"), line(request_id="a", decision="deny",
                                                            status=403)]))
    assert [r.decision for r in one_per_request(records)] == ["allow", "allow", "deny"]
