"""The decision log (endpointsec.audit): the record contract, sampling, request ids,
route templates and log-injection safety, through the real middleware and adapters."""

from __future__ import annotations

import json
import logging
import logging.config
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from endpointsec import ASGIMiddleware, ConfigurationError, Gatekeeper, WSGIMiddleware
from endpointsec.audit import JSONFormatter, TextFormatter, escape_text, valid_request_id
from endpointsec.testing.clients import asgi_client, wsgi_client
from obs_support import (
    ISSUER,
    SID,
    Material,
    asgi_scope,
    call_asgi,
    capture,
    make_material,
    ok_app,
)

#: The record keys shared with ``endpointsec learn``/``replay``, in order.
CONTRACT = ["time", "event", "request_id", "method", "path", "route", "domain", "peer",
            "request_principal", "subjects", "decision", "status", "rule", "reason",
            "dry_run", "duration_us"]
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
GENERATED_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]+$")
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    return make_material(tmp_path_factory.mktemp("audit"))


def test_denial_record_has_exactly_the_contract_keys(material: Material) -> None:
    app = ASGIMiddleware(ok_app, config=material.config())
    token = material.issuer.issue(sub="alice", roles=["reader"])
    with capture() as log:
        assert call_asgi(app, asgi_scope("/orders/7", cert=material.client, token=token)) == 403
    [record] = log.fields
    assert list(record) == CONTRACT
    assert TIME.match(record["time"])
    assert record["event"] == "endpointsec.decision"
    assert record["method"] == "GET"
    assert record["path"] == "/orders/7"
    assert record["route"] is None  # no [[routes]] entry, no framework route
    assert record["peer"]["id"] == SID
    assert record["peer"]["spiffe_id"] == SID
    assert record["peer"]["fingerprint_sha256"] == material.client.fingerprint_sha256
    assert record["request_principal"] == {"issuer": ISSUER, "subject": "alice"}
    assert record["subjects"] == [SID, f"{ISSUER}#alice", "role:reader"]
    assert record["decision"] == "deny"
    assert record["status"] == 403
    assert record["rule"] == ["p", "role:reader", "*", "/orders/7", "GET", "deny"]
    assert record["dry_run"] is False
    assert isinstance(record["duration_us"], float) and record["duration_us"] > 0
    assert GENERATED_ID.match(record["request_id"])
    # Nothing of the token, nor the certificate, is in the record.
    text = json.dumps(record)
    assert token not in text and token.split(".")[2] not in text
    assert "BEGIN CERTIFICATE" not in text


def test_allows_are_off_by_default_and_denials_always_logged(material: Material) -> None:
    app = ASGIMiddleware(ok_app, config=material.config())
    token = material.issuer.issue(sub="alice", roles=["reader"])
    with capture() as log:
        assert call_asgi(app, asgi_scope("/orders/1", cert=material.client, token=token)) == 200
        assert call_asgi(app, asgi_scope("/orders/1", cert=None, token=token)) == 401
        assert call_asgi(app, asgi_scope("/admin", cert=material.client)) == 403
    assert [(r["decision"], r["status"]) for r in log.fields] == [("deny", 401), ("deny", 403)]
    assert all(r.levelno == logging.INFO for r in log.records)


def test_allows_at_debug_when_the_logger_is_enabled_for_it(material: Material) -> None:
    app = ASGIMiddleware(ok_app, config=material.config())
    with capture(logging.DEBUG) as log:
        assert call_asgi(app, asgi_scope("/health", cert=material.client)) == 200
    [record] = log.records
    assert record.levelno == logging.DEBUG
    assert log.fields[0]["decision"] == "allow"


@pytest.mark.parametrize(("rate", "expected"), [(1.0, 20), (0.0, 0)], ids=["all", "none"])
def test_allow_sample_rate(material: Material, rate: float, expected: int) -> None:
    app = ASGIMiddleware(ok_app, config=material.config(audit={"allow_sample_rate": rate}))
    with capture() as log:
        for _ in range(20):
            assert call_asgi(app, asgi_scope("/health", cert=material.client)) == 200
    assert len(log.fields) == expected
    assert all(r["decision"] == "allow" and r["status"] == 200 for r in log.fields)


def test_allow_sample_rate_samples(material: Material) -> None:
    app = ASGIMiddleware(ok_app, config=material.config(audit={"allow_sample_rate": 0.5}))
    with capture() as log:
        for _ in range(400):
            call_asgi(app, asgi_scope("/health", cert=material.client))
    assert 100 < len(log.fields) < 300  # 200 expected; bounds far outside chance


def test_log_false_and_nothing_else_means_no_observer(material: Material) -> None:
    gk = Gatekeeper.from_config(material.config(audit={"log": False}))
    assert gk.observer is None
    with capture(logging.DEBUG) as log:
        app = ASGIMiddleware(ok_app, gatekeeper=gk)
        assert call_asgi(app, asgi_scope("/admin", cert=material.client)) == 403
    assert log.records == []


@pytest.mark.parametrize(
    ("value", "kept"),
    [(b"req-42.abc_DEF:1", True), (b"x" * 128, True), (b"x" * 129, False),
     (b"has space", False), (b"cr\rlf\n", False), (b"\x1b[31m", False),
     ("caf\u00e9".encode(), False), (b"", False)],
    ids=["printable", "128-chars", "129-chars", "space", "crlf", "ansi", "non-ascii",
         "empty"],
)
def test_request_id_from_header_is_validated(material: Material, value: bytes,
                                              kept: bool) -> None:
    app = ASGIMiddleware(ok_app, config=material.config())
    scope = asgi_scope("/admin", cert=material.client, headers=[(b"x-request-id", value)])
    with capture() as log:
        call_asgi(app, scope)
    [record] = log.fields
    if kept:
        assert record["request_id"] == value.decode()
    else:
        assert GENERATED_ID.match(record["request_id"]), record["request_id"]
    assert scope["endpointsec.request_id"] == record["request_id"]


def test_request_id_header_is_configurable(material: Material) -> None:
    app = ASGIMiddleware(ok_app, config=material.config(
        audit={"request_id_header": "traceparent-id"}))
    with capture() as log:
        call_asgi(app, asgi_scope("/admin", cert=material.client,
                                  headers=[(b"x-request-id", b"ignored"),
                                           (b"traceparent-id", b"chosen")]))
    assert log.fields[0]["request_id"] == "chosen"


def test_generated_request_ids_are_unique(material: Material) -> None:
    app = ASGIMiddleware(ok_app, config=material.config())
    with capture() as log:
        for _ in range(50):
            call_asgi(app, asgi_scope("/admin", cert=material.client))
    ids = [r["request_id"] for r in log.fields]
    assert len(set(ids)) == 50


@pytest.mark.parametrize(
    ("audit", "key"),
    [({"colour": "red"}, "audit.colour"),
     ({"allow_sample_rate": 1.5}, "audit.allow_sample_rate"),
     ({"allow_sample_rate": -0.1}, "audit.allow_sample_rate"),
     ({"allow_sample_rate": "all"}, "audit.allow_sample_rate"),
     ({"request_id_header": "x request id"}, "audit.request_id_header"),
     ({"otel": "yes"}, "audit.otel"),
     ({"metrics": 1}, "audit.metrics")],
    ids=["unknown-key", "rate-above-1", "rate-negative", "rate-string", "bad-header",
         "otel-string", "metrics-int"],
)
def test_audit_section_is_validated(material: Material, audit: dict[str, Any],
                                    key: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        material.config(audit=audit)
    assert key in str(info.value)


# -- route templates -----------------------------------------------------------------


def test_route_from_configured_routes(material: Material) -> None:
    config = material.config(routes=[{"path": "/orders/{order_id}", "methods": ["GET"]}],
                             audit={"allow_sample_rate": 1.0})
    app = ASGIMiddleware(ok_app, config=config)
    token = material.issuer.issue(sub="alice", roles=["reader"])
    with capture() as log:
        assert call_asgi(app, asgi_scope("/orders/42", cert=material.client, token=token)) \
            == 200
    [record] = log.fields
    assert record["route"] == "/orders/{order_id}"
    assert record["decision"] == "allow"
    assert record["rule"] == ["p", "role:reader", "*", "/orders/:id", "GET", "allow"]
    assert record["reason"]


def test_route_from_fastapi(material: Material) -> None:
    from fastapi import FastAPI

    from endpointsec.integrations.fastapi import EndpointSec

    sec = EndpointSec(config=material.config(audit={"allow_sample_rate": 1.0}))
    app = FastAPI()
    sec.install(app)

    @app.get("/orders/{order_id}")
    async def order(order_id: int) -> dict[str, int]:
        return {"order": order_id}

    token = material.issuer.issue(sub="alice", roles=["reader"])
    with capture() as log, asgi_client(app, cert=material.client, token=token) as client:
        assert client.get("/orders/42").status_code == 200
        assert client.get("/orders/7").status_code == 403
        assert client.get("/nowhere").status_code == 403
    assert [(r["route"], r["status"]) for r in log.fields] == [
        ("/orders/{order_id}", 200), ("/orders/{order_id}", 403), (None, 403)]


def test_route_from_flask(material: Material) -> None:
    from flask import Flask

    from endpointsec.integrations.flask import EndpointSec

    app = Flask(__name__)
    EndpointSec(app, config=material.config(sources="wsgi-environ",
                                             audit={"allow_sample_rate": 1.0}))

    @app.get("/orders/<int:order_id>")
    def order(order_id: int) -> dict[str, int]:
        return {"order": order_id}

    token = material.issuer.issue(sub="alice", roles=["reader"])
    with capture() as log:
        client = wsgi_client(app, cert=material.client, token=token)
        assert client.get("/orders/42").status_code == 200
        assert client.get("/orders/7").status_code == 403
    assert [(r["route"], r["status"]) for r in log.fields] == [
        ("/orders/{order_id}", 200), ("/orders/{order_id}", 403)]


def test_wsgi_request_id_from_environ(material: Material) -> None:
    config = material.config(sources="wsgi-environ")
    app = WSGIMiddleware(lambda environ, start: [b""], config=config)
    with capture() as log:
        client = wsgi_client(app, cert=material.client)
        client.get("/admin", headers={"X-Request-Id": "abc-123"})
    assert log.fields[0]["request_id"] == "abc-123"
    assert log.fields[0]["status"] == 403


# -- log injection ---------------------------------------------------------------------


EVIL = "\r\nFAKE deny 200 \x1b[31mred\x1b[0m\u2028\x85\x00"


def test_log_injection_in_path_and_token_subject(material: Material) -> None:
    app = ASGIMiddleware(ok_app, config=material.config())
    token = material.issuer.issue(sub=f"mallory{EVIL}", roles=["writer"])
    raw = f"/orders/{EVIL}".encode("latin-1", "replace")
    with capture(formatter=JSONFormatter()) as json_log:
        status = call_asgi(app, asgi_scope("/orders/x", raw_path=raw, cert=material.client,
                                           token=token))
    assert status in (400, 403)
    token2 = material.issuer.issue(sub=f"mallory{EVIL}", roles=["writer"])
    with capture(formatter=json_log.formatter) as json_log2:
        assert call_asgi(app, asgi_scope("/admin", cert=material.client, token=token2)) == 403

    for log in (json_log, json_log2):
        output = log.stream.getvalue()
        lines = output.splitlines()
        assert len(lines) == 1  # one record, one line
        assert not CONTROL.search(output.replace("\n", ""))
        assert "\u2028" not in output
        parsed = json.loads(lines[0])
        assert parsed["level"] == "INFO" and parsed["logger"] == "endpointsec.decision"
    # JSON escaping round-trips: the subject is there, exactly.
    assert json.loads(json_log2.stream.getvalue())["request_principal"]["subject"] \
        == f"mallory{EVIL}"

    # The plain-text form: one line, every control character escaped.
    with capture(formatter=TextFormatter()) as text_log:
        call_asgi(app, asgi_scope("/admin", cert=material.client, token=token2))
    line = text_log.stream.getvalue()
    assert line.count("\n") == 1 and line.endswith("\n")
    assert not CONTROL.search(line[:-1])
    assert "mallory\\r\\nFAKE deny 200 \\x1b[31mred\\x1b[0m\\u2028\\x85\\x00" in line
    assert line.split(": ", 1)[1].startswith("deny 403 GET /admin reason=")


def test_escape_text() -> None:
    assert escape_text("a\rb\nc\td\x1be\x7ff\\g\u2029") == \
        "a\\rb\\nc\\td\\x1be\\x7ff\\\\g\\u2029"
    assert escape_text("caf\u00e9 \u4e16\u754c") == "caf\u00e9 \u4e16\u754c"


@pytest.mark.parametrize("value", ["ok-1", "A" * 128])
def test_valid_request_id(value: str) -> None:
    assert valid_request_id(value) == value
    assert valid_request_id(value.encode()) == value


def test_json_formatter_from_dict_config(material: Material,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    logging.config.dictConfig({
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "endpointsec.audit.JSONFormatter"}},
        "handlers": {"stdout": {"class": "logging.StreamHandler", "formatter": "json",
                                "stream": "ext://sys.stdout"}},
        "loggers": {"endpointsec": {"handlers": ["stdout"], "level": "INFO",
                                    "propagate": False}},
    })
    try:
        app = ASGIMiddleware(ok_app, config=material.config())
        call_asgi(app, asgi_scope("/admin", cert=material.client))
        logging.getLogger("endpointsec.identity").warning("plain\nrecord")
    finally:
        logger = logging.getLogger("endpointsec")
        for h in list(logger.handlers):
            logger.removeHandler(h)
        logger.setLevel(logging.NOTSET)
        logger.propagate = True
    decision, other = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert list(decision) == [*CONTRACT, "level", "logger"]
    assert decision["status"] == 403
    assert other["message"] == "plain\nrecord"
    assert other["logger"] == "endpointsec.identity"
    assert TIME.match(other["time"])


def test_dry_run_is_would_deny(material: Material) -> None:
    app = ASGIMiddleware(ok_app, config=material.config(policy={"dry_run": True}))
    with capture() as log:
        assert call_asgi(app, asgi_scope("/admin", cert=material.client)) == 200
    [record] = log.fields
    assert record["decision"] == "would_deny"
    assert record["status"] == 200
    assert record["dry_run"] is True


def test_missing_tls_extension_warns_once(material: Material,
                                          caplog: pytest.LogCaptureFixture) -> None:
    app = ASGIMiddleware(ok_app, config=material.config())
    with caplog.at_level(logging.WARNING, logger="endpointsec.identity"):
        for _ in range(3):
            assert call_asgi(app, asgi_scope("/health", cert=None)) == 401
    warnings = [r for r in caplog.records if r.name == "endpointsec.identity"]
    assert len(warnings) == 1
    assert "--http endpointsec.servers.uvicorn:HttpToolsProtocol" in warnings[0].getMessage()


def test_no_warning_without_tls(material: Material, caplog: pytest.LogCaptureFixture) -> None:
    app = ASGIMiddleware(ok_app, config=material.config())
    scope = asgi_scope("/health", cert=None)
    scope["scheme"] = "http"
    with caplog.at_level(logging.WARNING, logger="endpointsec.identity"):
        assert call_asgi(app, scope) == 401
    assert not [r for r in caplog.records if r.name == "endpointsec.identity"]


def test_docs_sample_record_matches_the_contract() -> None:
    docs = Path(__file__).resolve().parents[1] / "docs" / "observability.md"
    text = docs.read_text(encoding="utf-8")
    block = text.split("```json\n", 1)[1].split("```", 1)[0]
    assert list(json.loads(block)) == [*CONTRACT, "level", "logger"]


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_record_time_is_the_datetime_rendering(epoch: float) -> None:
    import datetime as dt

    from endpointsec.audit import _iso

    expected = dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert _iso(epoch) == expected


def test_text_line_of_a_policy_denial_names_the_subjects(material: Material) -> None:
    """'no rule matched ... for 3 subject(s)' is answerable from the text line alone."""
    app = ASGIMiddleware(ok_app, config=material.config())
    token = material.issuer.issue(sub="bob", roles=["viewer"])
    with capture(formatter=TextFormatter()) as text_log:
        assert call_asgi(app, asgi_scope("/admin", cert=material.client, token=token)) == 403
    line = text_log.stream.getvalue()
    subjects = line.split(" subjects=", 1)[1].split(" ", 1)[0].split(",")
    assert subjects == [SID, f"{ISSUER}#bob", "role:viewer"]
    # bounded: a token with many roles does not make a long line
    token = material.issuer.issue(sub="bob", roles=[f"r{i}" for i in range(10)])
    with capture(formatter=TextFormatter()) as text_log:
        assert call_asgi(app, asgi_scope("/admin", cert=material.client, token=token)) == 403
    line = text_log.stream.getvalue()
    assert f"subjects={SID},{ISSUER}#bob,role:r0,role:r1,role:r2,role:r3,role:r4,role:r5,"\
           "+4 more " in line
    # a 401 has no policy subjects to show
    with capture(formatter=TextFormatter()) as text_log:
        assert call_asgi(app, asgi_scope("/admin", cert=None)) == 401
    assert "subjects=" not in text_log.stream.getvalue()
