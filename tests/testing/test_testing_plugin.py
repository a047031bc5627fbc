"""The pytest plugin, exercised in inner pytest runs (pytester)."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

POLICY = """\
p, spiffe://example.org/ns/shop/sa/orders, *, /orders/:id, GET, allow
p, role:admin, *, /orders/*, *, allow
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makefile(".csv", policy=POLICY)
    pytester.makeini("[pytest]\naddopts = --strict-markers -p no:cacheprovider\n"
                     "filterwarnings = error\n")
    return pytester


def test_marker_is_registered(project: pytest.Pytester) -> None:
    result = project.runpytest("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.endpointsec_policy(model=None, policy=None, *"])


def test_policy_marker_and_assertions(project: pytest.Pytester) -> None:
    project.makepyfile("""
        import pytest
        from endpointsec.testing import assert_allowed, assert_denied

        ORDERS = "spiffe://example.org/ns/shop/sa/orders"

        @pytest.mark.endpointsec_policy(policy="policy.csv")
        def test_file_policy(endpointsec_policy):
            assert_allowed(endpointsec_policy, path="/orders/1", peer=ORDERS)
            assert_denied(endpointsec_policy, method="DELETE", path="/orders/1", peer=ORDERS)

        @pytest.mark.endpointsec_policy(rules=["p, role:ops, *, /ops, POST, allow"])
        def test_inline_rules(endpointsec_policy):
            assert_allowed(endpointsec_policy, method="POST", path="/ops",
                           token={"iss": "https://idp", "sub": "x", "roles": ["ops"]})

        pytestmark = pytest.mark.endpointsec_policy(policy="policy.csv")

        def test_module_marker(endpointsec_gatekeeper):
            assert_allowed(endpointsec_gatekeeper, method="PUT", path="/orders/9",
                           token={"iss": "https://idp", "sub": "x", "roles": ["admin"]})
    """)
    project.runpytest().assert_outcomes(passed=3)


def test_failure_shows_the_explanation(project: pytest.Pytester) -> None:
    project.makepyfile("""
        import pytest
        from endpointsec.testing import assert_allowed

        @pytest.mark.endpointsec_policy(policy="policy.csv")
        def test_denied(endpointsec_policy):
            assert_allowed(endpointsec_policy, method="DELETE", path="/orders/1",
                           peer="spiffe://example.org/ns/shop/sa/orders")
    """)
    result = project.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*AssertionError: expected ALLOW, got DENY: DELETE /orders/1",
        "*DENY 403 DELETE /orders/1",
        "*reason:*",
        "*subjects: spiffe://example.org/ns/shop/sa/orders",
        "*rule:     no rule matched",
    ])


BAD_MARKERS = {
    "positional": ('"policy.csv"', "keyword arguments only"),
    "typo": ('polcy="policy.csv"', "unknown argument 'polcy'"),
    "policy_and_rules": ('policy="policy.csv", rules=["p, a, *, /, GET, allow"]', "not both"),
    "rules_string": ('rules="p, a, *, /, GET, allow"', "list of CSV lines"),
    "missing_file": ('policy="missing.csv"', "file not found"),
}


def test_missing_or_bad_marker_is_a_usage_error(project: pytest.Pytester) -> None:
    # One inner run for every case (each inner run costs a pytest start-up).
    tests = ["import pytest", "",
             "def test_no_marker(endpointsec_policy):", "    pass", ""]
    for name, (args, _) in BAD_MARKERS.items():
        tests += [f"@pytest.mark.endpointsec_policy({args})",
                  f"def test_{name}(endpointsec_policy):", "    pass", ""]
    project.makepyfile("\n".join(tests))
    result = project.runpytest()
    result.assert_outcomes(errors=1 + len(BAD_MARKERS))
    result.stdout.fnmatch_lines(["*ERROR at setup of test_no_marker*",
                                 "E *endpointsec_policy needs @pytest.mark.endpointsec_policy*"])
    for name, (_, message) in BAD_MARKERS.items():
        result.stdout.fnmatch_lines([f"*ERROR at setup of test_{name} *", f"E *{message}*"])


def test_pki_issuer_and_client_fixtures(project: pytest.Pytester) -> None:
    project.makepyfile("""
        import datetime as dt

        import httpx
        from cryptography import x509
        from cryptography.x509.oid import ExtendedKeyUsageOID
        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route

        from endpointsec import ASGIMiddleware, Config

        SVC = "spiffe://example.org/ns/shop/sa/orders"

        def test_certificates(endpointsec_ca, endpointsec_client_cert):
            cert = endpointsec_client_cert(SVC, dns_names=["orders.local"])
            san = cert.certificate.extensions.get_extension_for_class(
                x509.SubjectAlternativeName).value
            assert san.get_values_for_type(x509.UniformResourceIdentifier) == [SVC]
            assert san.get_values_for_type(x509.DNSName) == ["orders.local"]
            assert cert.certificate.issuer == endpointsec_ca.certificate.subject
            server = endpointsec_client_cert(SVC, eku=["server"])
            eku = server.certificate.extensions.get_extension_for_class(
                x509.ExtendedKeyUsage).value
            assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
            expired = endpointsec_client_cert(SVC, valid_for=dt.timedelta(hours=-1))
            assert expired.certificate.not_valid_after_utc < dt.datetime.now(dt.UTC)
            rsa = endpointsec_client_cert(SVC, key_kind="rsa", organizational_units=["ops"])
            assert rsa.certificate.public_key().key_size == 2048
            assert "OU=ops" in rsa.certificate.subject.rfc4514_string()
            no_eku = endpointsec_client_cert(SVC, eku=[])
            assert not any(isinstance(e.value, x509.ExtendedKeyUsage)
                           for e in no_eku.certificate.extensions)

        def test_issuer(endpointsec_issuer):
            jwks = httpx.get(endpointsec_issuer.jwks_url, timeout=5).json()
            assert jwks["keys"][0]["kid"] == endpointsec_issuer.kid

        async def hello(request):
            return PlainTextResponse(request.scope["endpointsec"].principal.request.subject)

        def test_asgi_client(endpointsec_issuer, endpointsec_ca_bundle,
                             endpointsec_asgi_client, tmp_path):
            (tmp_path / "p.csv").write_text("p, role:admin, *, /, GET, allow\\n")
            config = Config.from_mapping({
                "identity": {"sources": ["asgi-tls"],
                             "trust_bundles": [str(endpointsec_ca_bundle)]},
                "tokens": {"issuers": [endpointsec_issuer.issuer_table()]},
                "policy": {"policy": str(tmp_path / "p.csv")},
                "defaults": {"mtls": "optional"},
            })
            app = ASGIMiddleware(Starlette(routes=[Route("/", hello)]), config=config)
            token = endpointsec_issuer.issue(sub="alice", roles=["admin"])
            r = endpointsec_asgi_client(app, token=token).get("/")
            assert (r.status_code, r.text) == (200, "alice")
    """)
    project.runpytest().assert_outcomes(passed=3)


def test_unknown_eku_and_conflicting_validity(project: pytest.Pytester) -> None:
    project.makepyfile("""
        import datetime as dt
        import pytest
        from endpointsec import ConfigurationError

        def test_bad(endpointsec_client_cert):
            with pytest.raises(ConfigurationError, match="unknown EKU"):
                endpointsec_client_cert("spiffe://a/b", eku=["email"])
            with pytest.raises(ConfigurationError, match="not both"):
                endpointsec_client_cert("spiffe://a/b", valid_for=dt.timedelta(days=1),
                                        not_after=dt.datetime.now(dt.UTC))
    """)
    project.runpytest().assert_outcomes(passed=1)


USER_TEST = '''
from fastapi import FastAPI, Security

from endpointsec import Config
from endpointsec.integrations.fastapi import EndpointSec

ORDERS = "spiffe://example.org/ns/shop/sa/orders"


def make_app(config):
    sec = EndpointSec(config=config)
    app = FastAPI()
    sec.install(app)

    @app.get("/orders/{order_id}")
    async def get_order(order_id: int, caller=Security(sec.require())):
        return {"caller": caller.peer.id}

    @app.get("/admin")
    async def admin():
        return {"ok": True}

    return app


def test_orders_service(endpointsec_ca_bundle, endpointsec_client_cert,
                        endpointsec_issuer, endpointsec_asgi_client, tmp_path):
    (tmp_path / "policy.csv").write_text(
        f"p, {ORDERS}, *, /orders/:id, GET, allow\\n"
        "p, role:admin, *, /admin, GET, allow\\n")
    config = Config.from_mapping({
        "identity": {"sources": ["asgi-tls"],
                     "trust_bundles": [str(endpointsec_ca_bundle)]},
        "tokens": {"issuers": [endpointsec_issuer.issuer_table()]},
        "policy": {"policy": str(tmp_path / "policy.csv")},
        "defaults": {"mtls": "optional"},
    })
    app = make_app(config)

    orders = endpointsec_asgi_client(app, cert=endpointsec_client_cert(ORDERS))
    assert orders.get("/orders/1").json() == {"caller": ORDERS}
    assert orders.get("/admin").status_code == 403

    admin = endpointsec_issuer.issue(sub="alice", roles=["admin"])
    assert endpointsec_asgi_client(app, token=admin).get("/admin").status_code == 200
    assert endpointsec_asgi_client(app).get("/orders/1").status_code == 401
'''


def test_user_end_to_end_test_passes_with_warnings_as_errors(pytester: pytest.Pytester) -> None:
    """A user's end-to-end test (the one in docs/testing.md), in a project of its own
    with no configuration, run in a fresh interpreter with ``-W error``: nothing the
    plugin or its test client imports may warn."""
    pytester.makepyfile(test_orders=USER_TEST)
    result = pytester.runpytest_subprocess("-W", "error", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_pytest_extra_is_lean() -> None:
    """``endpointsec[pytest]`` is what the plugin needs (starlette's TestClient warns
    without httpx2), not the project's own development tools."""
    import tomllib
    from pathlib import Path

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    names = {req.split(">")[0].split("[")[0].strip() for req in extras["pytest"]}
    assert names == {"pytest", "httpx2"}
    assert "endpointsec[pytest]" in extras["dev"]
    assert extras["test"] == ["endpointsec[dev]"]
    assert "dev" in extras["all"][0]


HEAVY = ["casbin", "cryptography", "jwt", "starlette", "httpx", "werkzeug", "fastapi",
         "flask", "endpointsec.gatekeeper", "endpointsec.config", "endpointsec.core",
         "endpointsec.testing.pki", "endpointsec.testing.clients", "endpointsec.testing.suites"]


def test_loading_the_plugin_imports_nothing_heavy() -> None:
    """pytest loads the plugin in every run of every project with endpointsec installed;
    a session that uses no endpointsec fixture must not pay for endpointsec's imports."""
    import json
    import subprocess
    import sys

    code = ("import json, sys\n"
            "import pytest\n"
            "before = set(sys.modules)\n"
            "import endpointsec.testing.plugin\n"
            "print(json.dumps(sorted(set(sys.modules) - before)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    loaded = json.loads(out)
    assert "endpointsec.testing.plugin" in loaded
    heavy = [m for m in loaded if any(m == h or m.startswith(h + ".") for h in HEAVY)]
    assert heavy == []


def test_plugin_fixtures_still_work_when_loaded_lazily(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        def test_fixtures(endpointsec_ca, endpointsec_client_cert, endpointsec_issuer):
            cert = endpointsec_client_cert("spiffe://example.org/a", eku=["client", "server"])
            assert cert.certificate.issuer == endpointsec_ca.certificate.subject
            assert endpointsec_issuer.issue(sub="x").count(".") == 2
    """)
    pytester.runpytest_subprocess("-W", "error", "-p", "no:cacheprovider").assert_outcomes(
        passed=1)
