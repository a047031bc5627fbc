"""Policy suites: the file format (YAML, JSON, TOML), running, reporting, errors."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from endpointsec import ConfigurationError
from endpointsec.testing import CertificateAuthority, load_cases, load_suite
from endpointsec.testing.suites import parse_time, suite_from_mapping

ORDERS = "spiffe://example.org/ns/shop/sa/orders"
IDP = "https://idp.example.com"

SUITE: dict[str, Any] = {
    "policy": "policy.csv",
    "now": "2026-06-01T12:00:00Z",
    "principals": {
        "orders": {"peer": ORDERS},
        "alice": {"token": {"iss": IDP, "sub": "alice", "exp": "2026-07-01T00:00:00Z"}},
        "stale-alice": {"token": {"iss": IDP, "sub": "alice", "exp": "2026-05-01T00:00:00Z"}},
    },
    "cases": [
        {"name": "orders reads an order", "principal": "orders", "path": "/orders/1",
         "expect": "allow", "rule": [ORDERS, "*", "/orders/:id", "GET", "allow"]},
        {"principal": ["orders", "alice"], "method": "GET", "path": "/orders/2",
         "expect": "allow"},
        {"name": "admins cannot read the secret", "principal": "alice",
         "path": "/orders/secret", "expect": "deny", "status": 403},
        {"name": "an expired token is refused", "principal": "stale-alice",
         "path": "/orders/2", "expect": "deny", "status": 401},
        {"name": "nobody", "path": "/orders/2", "expect": "deny", "status": 401},
        {"name": "inline principal",
         "principal": {"token": {"iss": IDP, "sub": "bob", "roles": ["admin"]}},
         "method": "DELETE", "path": "/orders/2", "expect": "allow"},
    ],
}


def _dump(data: dict[str, Any], suffix: str) -> str:
    if suffix == ".json":
        return json.dumps(data)
    if suffix == ".yaml":
        return yaml.safe_dump(data)
    lines = [f"policy = {json.dumps(data['policy'])}", f"now = {data['now']}", ""]
    for name, p in data["principals"].items():
        if "peer" in p:
            lines += [f'[principals."{name}"]', f"peer = {json.dumps(p['peer'])}", ""]
        else:
            t = p["token"]
            lines += [f'[principals."{name}".token]'] + [
                f"{k} = {json.dumps(v)}" for k, v in t.items()] + [""]
    for case in data["cases"]:
        lines.append("[[cases]]")
        for k, v in case.items():
            if isinstance(v, dict):
                v = v["token"]
                inner = ", ".join(f"{kk} = {json.dumps(vv)}" for kk, vv in v.items())
                lines.append(f"{k} = {{ token = {{ {inner} }} }}")
            else:
                lines.append(f"{k} = {json.dumps(v)}")
        lines.append("")
    return "\n".join(lines)


@pytest.mark.parametrize("suffix", [".yaml", ".json", ".toml"])
def test_the_three_formats_pass(suffix: str, policy_file: Path,
                                write: Callable[[str, str], Path]) -> None:
    path = write(f"orders.suite{suffix}", _dump(SUITE, suffix))
    suite = load_suite(path)
    assert suite.now == dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC).timestamp()
    assert [c.id for c in suite.cases] == [
        "orders reads an order", "GET /orders/2 [orders]", "GET /orders/2 [alice]",
        "admins cannot read the secret", "an expired token is refused", "nobody",
        "inline principal"]
    result = suite.run()
    assert result.passed, result.report()
    report = result.report()
    assert report.splitlines()[0] == f"suite {path} (now: 2026-06-01T12:00:00Z)"
    assert report.splitlines()[-1] == "  7 passed, 0 failed"


def test_failures_are_reported_with_the_explanation(policy_file: Path,
                                                    write: Callable[[str, str], Path]) -> None:
    data = {**SUITE, "cases": [
        {"name": "wrong", "principal": "orders", "method": "DELETE", "path": "/orders/1",
         "expect": "allow"},
        {"name": "wrong status", "principal": "alice", "path": "/orders/secret",
         "expect": "deny", "status": 401},
        {"name": "wrong rule", "principal": "orders", "path": "/orders/1", "expect": "allow",
         "rule": ["x"]},
        {"name": "right", "principal": "orders", "path": "/orders/1", "expect": "allow"},
    ]}
    result = load_suite(write("s.json", json.dumps(data))).run()
    assert not result.passed
    assert [r.case.name for r in result.failures] == ["wrong", "wrong status", "wrong rule"]
    lines = result.report().splitlines()
    assert "  FAIL  wrong" in lines
    assert "        expected ALLOW, got DENY 403" in lines
    assert "        expected status 401, got 403" in lines
    assert any(line.startswith("        expected rule [x], got [p, spiffe://") for line in lines)
    assert "  PASS  right" in lines
    assert "          rule:     no rule matched" in lines
    assert lines[-1] == "  1 passed, 3 failed"
    verbose = result.report(verbose=True)
    assert verbose.count("reason:") == 4


def test_cases_parametrize_a_pytest_test(policy_file: Path,
                                         write: Callable[[str, str], Path]) -> None:
    path = write("s.yaml", yaml.safe_dump(SUITE))
    suite = load_suite(path)
    for case in load_cases(path):
        case.check(suite.gatekeeper)
    bad = suite.cases[0].__class__(name="n", principal=suite.principals["orders"],
                                   path="/orders/1", method="DELETE", expect="allow")
    with pytest.raises(AssertionError, match=r"(?s)^n: expected ALLOW, got DENY 403\nDENY"):
        bad.check(suite.gatekeeper)


def test_suite_with_a_config_uses_its_routes(policy_file: Path,
                                             write: Callable[[str, str], Path]) -> None:
    write("endpointsec.toml", '[policy]\npolicy = "policy.csv"\n\n'
          '[[routes]]\npath = "/health"\npublic = true\n')
    suite = load_suite(write("s.yaml", yaml.safe_dump({
        "config": "endpointsec.toml",
        "principals": {"alice": {"token": {"iss": IDP, "sub": "alice"}}},
        "cases": [
            {"path": "/health", "expect": "allow"},
            # [defaults] mtls = "required": a token alone does not reach the policy.
            {"principal": "alice", "path": "/orders/1", "expect": "deny", "status": 401},
            {"principal": {"peer": ORDERS}, "path": "/orders/1", "expect": "allow"},
        ]})))
    assert suite.run().passed, suite.run().report()


def test_certificate_principal_is_checked_at_now(tmp_path: Path, policy_file: Path,
                                                 write: Callable[[str, str], Path]) -> None:
    now = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
    ca = CertificateAuthority.create(not_before=now - dt.timedelta(days=30),
                                     not_after=now + dt.timedelta(days=30))
    cert = ca.issue_client(spiffe_id=ORDERS, not_before=now - dt.timedelta(days=2),
                           not_after=now - dt.timedelta(days=1))
    cert.write(tmp_path / "certs", "orders")
    data: dict[str, Any] = {
        "policy": "policy.csv", "principals": {"orders": {"cert": "certs/orders.pem"}},
        "cases": [{"principal": "orders", "path": "/orders/1", "expect": "deny",
                   "status": 401}]}
    assert load_suite(write("s.json", json.dumps({**data, "now": now.isoformat()}))).run().passed
    earlier = (now - dt.timedelta(hours=36)).isoformat()
    data["cases"][0] = {"principal": "orders", "path": "/orders/1", "expect": "allow"}
    assert load_suite(write("s.json", json.dumps({**data, "now": earlier}))).run().passed


@pytest.mark.parametrize(
    ("change", "key"),
    [
        pytest.param({"cases": [{"path": "/", "expct": "allow"}]}, "cases[0].expect",
                     id="misspelt-key-means-missing-expect"),
        pytest.param({"cases": [{"path": "/", "expect": "allow", "x": 1}]}, "cases[0].x",
                     id="unknown-case-key"),
        pytest.param({"cases": [{"path": "/", "expect": "maybe"}]}, "cases[0].expect",
                     id="bad-expect"),
        pytest.param({"cases": [{"path": "/", "expect": "allow", "status": 403}]},
                     "cases[0].status", id="allow-with-403"),
        pytest.param({"cases": [{"path": "/", "expect": "deny", "principal": "carol"}]},
                     "cases[0].principal", id="unknown-principal"),
        pytest.param({"cases": [{"path": "/", "expect": "deny", "principal": 5}]},
                     "cases[0].principal", id="principal-not-a-name"),
        pytest.param({"cases": []}, "cases", id="no-cases"),
        pytest.param({"now": "yesterday"}, "now", id="bad-now"),
        pytest.param({"now": "2026-01-01T00:00:00"}, "now", id="now-without-zone"),
        pytest.param({"principals": {"a": {"peer": "alice"}}}, None, id="bad-peer"),
        pytest.param({"principals": {"a": {"token": {"sub": "x"}}}}, "principals.a.token.iss",
                     id="token-without-iss"),
        pytest.param({"principals": {"a": {"token": {"iss": "i", "sub": "s",
                                                     "claims": {"exp": "soon"}}}}},
                     "principals.a.token.claims", id="bad-extra-claim"),
        pytest.param({"principals": {"a": {"tokn": {}}}}, "principals.a.tokn",
                     id="unknown-principal-key"),
        pytest.param({"principals": {"a": {"cert": "missing.pem"}}}, "principals.a.cert",
                     id="missing-cert"),
        pytest.param({"config": "endpointsec.toml"}, "config", id="config-and-policy"),
        pytest.param({"policy": "nope.csv"}, "policy", id="missing-policy"),
    ],
)
def test_invalid_suites_name_the_key(change: dict[str, Any], key: str | None,
                                     policy_file: Path,
                                     write: Callable[[str, str], Path]) -> None:
    write("endpointsec.toml", "")
    data = {"policy": "policy.csv", "cases": [{"path": "/", "expect": "deny"}], **change}
    with pytest.raises(ConfigurationError) as info:
        load_suite(write("s.json", json.dumps(data)))
    if key is not None:
        assert str(info.value).startswith(f"{key}: "), str(info.value)


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        pytest.param("s.txt", "{}", "a suite is a .yaml", id="suffix"),
        pytest.param("s.json", "{", "not valid JSON", id="json"),
        pytest.param("s.yaml", "a: [", "not valid YAML", id="yaml"),
        pytest.param("s.toml", "a = ", "not valid TOML", id="toml"),
        pytest.param("s.yaml", "- 1\n- 2\n", "mapping at the top level", id="not-a-mapping"),
    ],
)
def test_unreadable_suite_files(name: str, text: str, match: str,
                                write: Callable[[str, str], Path]) -> None:
    with pytest.raises(ConfigurationError, match=match):
        load_suite(write(name, text))


def test_missing_suite_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="not found"):
        load_suite(tmp_path / "nope.yaml")


def test_suite_without_target_needs_one(tmp_path: Path) -> None:
    suite = suite_from_mapping({"cases": [{"path": "/", "expect": "deny"}]}, base_dir=tmp_path)
    with pytest.raises(ConfigurationError, match="name a 'config' or a 'policy'"):
        suite.run()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("2026-01-01T00:00:00Z", 1767225600.0, id="rfc3339-z"),
        pytest.param("2026-01-01T01:00:00+01:00", 1767225600.0, id="offset"),
        pytest.param(1767225600, 1767225600.0, id="epoch"),
        pytest.param(dt.datetime(2026, 1, 1, tzinfo=dt.UTC), 1767225600.0, id="datetime"),
    ],
)
def test_parse_time(value: Any, expected: float) -> None:
    assert parse_time(value, key="now") == expected


_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=12))
_values = st.recursive(_scalars, lambda c: st.one_of(
    st.lists(c, max_size=3), st.dictionaries(st.sampled_from(
        ["path", "expect", "method", "principal", "peer", "token", "iss", "sub", "status",
         "rule", "name", "domain", "roles", "exp"]), c, max_size=4)), max_leaves=12)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["cases", "principals", "now", "policy", "x"]),
                       _values, max_size=4))
def test_suite_data_parses_or_raises_our_error(data: dict[str, Any]) -> None:
    try:
        suite = suite_from_mapping(data, base_dir=Path("/nonexistent"))
    except ConfigurationError:
        return
    assert suite.cases


@given(st.one_of(st.text(max_size=40), st.integers(), st.floats(), st.booleans(), st.none(),
                 st.datetimes(timezones=st.one_of(st.none(), st.timezones()))))
def test_parse_time_parses_or_raises_our_error(value: Any) -> None:
    try:
        parsed: float | str = parse_time(value, key="now")
    except ConfigurationError as exc:
        parsed = str(exc)
    assert isinstance(parsed, float) or parsed.startswith("now: ")


def test_offline_gatekeeper_never_watches(policy_file: Path,
                                          write: Callable[[str, str], Path]) -> None:
    import threading

    write("endpointsec.toml", '[policy]\npolicy = "policy.csv"\nwatch = true\n')
    before = threading.active_count()
    suite = load_suite(write("s.yaml", yaml.safe_dump(
        {"config": "endpointsec.toml", "cases": [{"path": "/", "expect": "deny"}]})))
    assert suite.run().passed
    assert threading.active_count() == before
    assert getattr(suite.gatekeeper.policy, "watching", False) is False


def test_docs_suite_example_runs(tmp_path: Path) -> None:
    """The suite shown in docs/testing.md, with the files it names."""
    docs = Path(__file__).resolve().parents[2] / "docs" / "testing.md"
    text = docs.read_text(encoding="utf-8")
    start = text.index("```yaml\n# policy/orders.suite.yaml\n") + len("```yaml\n")
    suite_text = text[start:text.index("```", start)]
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy.csv").write_text(
        f"p, {ORDERS}, *, /orders/:id, GET, allow\np, role:admin, *, /orders/*, *, allow\n")
    (tmp_path / "endpointsec.toml").write_text(
        '[policy]\npolicy = "policy.csv"\n[defaults]\nmtls = "optional"\n'
        '[[routes]]\npath = "/healthz"\npublic = true\n')
    when = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
    ca = CertificateAuthority.create(not_before=when - dt.timedelta(days=30))
    ca.issue_client(spiffe_id="spiffe://example.org/ns/shop/sa/billing",
                    not_before=when - dt.timedelta(days=1)).write(
        tmp_path / "policy" / "certs", "billing")
    suite_path = tmp_path / "policy" / "orders.suite.yaml"
    suite_path.write_text(suite_text)
    result = load_suite(suite_path).run()
    assert result.passed, result.report()
    assert len(result.results) == 4


def test_bound_token_and_extra_claims(tmp_path: Path, policy_file: Path,
                                      write: Callable[[str, str], Path]) -> None:
    ca = CertificateAuthority.create()
    cert = ca.issue_client(spiffe_id=ORDERS)
    other = ca.issue_client(spiffe_id=ORDERS)
    cert.write(tmp_path, "orders")
    from endpointsec.testing import cnf_thumbprint

    def token(bound_to: Any) -> dict[str, Any]:
        return {"iss": IDP, "sub": "alice", "cnf_x5t_s256": cnf_thumbprint(bound_to),
                "claims": {"tenant": "t1"}}

    suite = load_suite(write("s.yaml", yaml.safe_dump({
        "policy": "policy.csv",
        "principals": {"bound": {"cert": "orders.pem", "token": token(cert)},
                       "mismatch": {"cert": "orders.pem", "token": token(other)}},
        "cases": [{"principal": "bound", "path": "/orders/1", "expect": "allow"},
                  {"principal": "mismatch", "path": "/orders/1", "expect": "deny",
                   "status": 401}]})))
    result = suite.run()
    assert result.passed, result.report()
    assert "cnf.x5t#S256" in result.results[1].decision.reason
    assert suite.principals["bound"].token is not None
    assert suite.principals["bound"].token["tenant"] == "t1"


def test_without_now_the_real_clock_applies(policy_file: Path,
                                            write: Callable[[str, str], Path]) -> None:
    suite = load_suite(write("s.json", json.dumps({
        "policy": "policy.csv",
        "principals": {"stale": {"token": {"iss": IDP, "sub": "alice", "exp": 1000}}},
        "cases": [{"principal": "stale", "path": "/orders/1", "expect": "deny",
                   "status": 401}]})))
    assert suite.now is None
    assert suite.run().passed
