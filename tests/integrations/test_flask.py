"""The Flask extension: before_request enforcement, @require narrowing, @public."""

from __future__ import annotations

import pytest
from flask import Flask

from endpointsec import Gatekeeper
from endpointsec.integrations.flask import EndpointSec, current_principal, public, require


def make_app(gk: Gatekeeper) -> Flask:
    app = Flask(__name__)
    sec = EndpointSec(gatekeeper=gk)
    sec.init_app(app)

    @app.get("/orders")
    def orders() -> dict[str, str]:
        return {"caller": current_principal.peer.id if current_principal.peer else ""}

    @app.get("/ws")
    @require(roles=["ops"])
    def narrowed() -> str:
        return "never"

    @app.get("/open")
    @public
    def open_route() -> str:
        return "open"

    @app.get("/admin")
    @require(resource="/orders", action="GET")
    def admin() -> str:
        return "admin"

    return app


@pytest.mark.parametrize(
    ("path", "cert", "status"),
    [
        ("/orders", "orders", 200),
        ("/orders", None, 401),
        ("/orders", "bad", 401),
        ("/orders", "billing", 403),
        ("/ws", "orders", 403),       # allowed globally, narrowed by @require(roles)
        ("/open", None, 200),         # public: nothing needed
        ("/admin", "orders", 403),    # the global check on /admin denies: never widened
        ("/missing", None, 401),      # 404s are checked too
        ("/missing", "orders", 403),
    ],
    ids=["allowed", "no-cert", "bad-cert", "forbidden", "narrowed", "public", "no-widening",
         "404-unauthenticated", "404-forbidden"],
)
def test_flask(gatekeeper: Gatekeeper, path: str, cert: str | None, status: int) -> None:
    client = make_app(gatekeeper).test_client()
    headers = {"X-Test-Cert": cert} if cert else {}
    r = client.get(path, headers=headers)
    assert r.status_code == status
    if status >= 400:
        assert r.content_type == "application/problem+json"
        assert r.get_json()["status"] == status
    if path == "/orders" and status == 200:
        assert r.get_json() == {"caller": "spiffe://test/orders"}


def test_current_principal_outside_request_context_fails_loudly() -> None:
    app = Flask(__name__)
    with app.test_request_context("/"), pytest.raises(RuntimeError, match="endpointsec"):
        _ = current_principal.peer


# -- the application-factory pattern -------------------------------------------------

def _factory_config(bundle: str, *, public_open: bool) -> dict[str, object]:
    return {
        "identity": {"sources": ["wsgi-environ"], "trust_bundles": [bundle]},
        "policy": {"allow_authenticated": True},
        "routes": [{"path": "/open", "public": True}] if public_open else [],
    }


def _toml(data: dict[str, object]) -> str:
    identity = data["identity"]
    assert isinstance(identity, dict)
    text = (f'[identity]\nsources = ["wsgi-environ"]\n'
            f'trust_bundles = ["{identity["trust_bundles"][0]}"]\n'
            "[policy]\nallow_authenticated = true\n")
    if data["routes"]:
        text += '[[routes]]\npath = "/open"\npublic = true\n'
    return text


def _factory(sec: EndpointSec, setting: object | None) -> Flask:
    app = Flask(__name__)
    if setting is not None:
        app.config["ENDPOINTSEC_CONFIG"] = setting
    sec.init_app(app)

    @app.get("/open")
    def open_route() -> str:
        return "open"

    @app.get("/me")
    def me() -> dict[str, str]:
        return {"caller": current_principal.peer.id if current_principal.peer else ""}

    return app


@pytest.mark.parametrize("form", ["path", "str", "mapping", "config"])
def test_init_app_reads_app_config(tmp_path, endpointsec_ca_bundle, endpointsec_client_cert,
                                   endpointsec_wsgi_client, form: str) -> None:
    from endpointsec import Config

    sec = EndpointSec()   # no configuration yet: one per application
    with_public = _factory_config(str(endpointsec_ca_bundle), public_open=True)
    toml = tmp_path / "endpointsec.toml"
    toml.write_text(_toml(with_public))
    setting = {"path": toml, "str": str(toml), "mapping": with_public,
               "config": Config.from_mapping(with_public)}[form]
    app_a = _factory(sec, setting)
    app_b = _factory(sec, _factory_config(str(endpointsec_ca_bundle), public_open=False))

    assert endpointsec_wsgi_client(app_a).get("/open").status_code == 200
    assert endpointsec_wsgi_client(app_b).get("/open").status_code == 401
    cert = endpointsec_client_cert("spiffe://example.org/ns/shop/sa/orders")
    for app in (app_a, app_b):
        r = endpointsec_wsgi_client(app, cert=cert).get("/me")
        assert r.json == {"caller": "spiffe://example.org/ns/shop/sa/orders"}
        with app.app_context():
            assert sec.gatekeeper is app.extensions["endpointsec"].gatekeeper
    assert app_a.extensions["endpointsec"].gatekeeper is not \
        app_b.extensions["endpointsec"].gatekeeper


def test_init_app_falls_back_to_load_config(tmp_path, monkeypatch, endpointsec_ca_bundle,
                                            endpointsec_wsgi_client) -> None:
    toml = tmp_path / "service.toml"
    toml.write_text(_toml(_factory_config(str(endpointsec_ca_bundle), public_open=True)))
    monkeypatch.setenv("ENDPOINTSEC_CONFIG", str(toml))
    app = _factory(EndpointSec(), None)
    assert endpointsec_wsgi_client(app).get("/open").status_code == 200
    assert endpointsec_wsgi_client(app).get("/me").status_code == 401


def test_init_app_without_any_configuration(tmp_path, monkeypatch) -> None:
    from endpointsec import ConfigurationError

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ENDPOINTSEC_CONFIG", raising=False)
    with pytest.raises(ConfigurationError, match="no configuration file"):
        _factory(EndpointSec(), None)


def test_init_app_refuses_two_configurations(gatekeeper: Gatekeeper) -> None:
    from endpointsec import ConfigurationError

    with pytest.raises(ConfigurationError, match="both set"):
        _factory(EndpointSec(gatekeeper=gatekeeper), {"policy": {"allow_authenticated": True}})


def test_init_app_refuses_an_odd_setting() -> None:
    from endpointsec import ConfigurationError

    with pytest.raises(ConfigurationError, match=r"app\.config\['ENDPOINTSEC_CONFIG'\]"):
        _factory(EndpointSec(), 42)


def test_init_app_reports_every_configuration_error() -> None:
    from endpointsec import ConfigurationError

    with pytest.raises(ConfigurationError) as info:
        _factory(EndpointSec(), {"defaults": {"mtls": "maybe"}, "polcy": {}})
    assert [e.key for e in info.value.errors] == ["defaults.mtls", "polcy"]


def test_gatekeeper_needs_an_application() -> None:
    with pytest.raises(RuntimeError, match="init_app"):
        _ = EndpointSec().gatekeeper


def test_require_scopes(endpointsec_issuer, endpointsec_wsgi_client, tmp_path) -> None:
    from endpointsec import Config

    config = Config.from_mapping({
        "tokens": {"issuers": [endpointsec_issuer.issuer_table()]},
        "policy": {"allow_authenticated": True},
        "defaults": {"mtls": "none", "token": "required"},
    })
    app = Flask(__name__)
    EndpointSec(app, config=config)

    @app.post("/orders")
    @require(scopes=["orders:read", "orders:write"])
    def create() -> str:
        return "created"

    def post(scopes: list[str]) -> int:
        token = endpointsec_issuer.issue("alice", scopes=scopes)
        return int(endpointsec_wsgi_client(app, token=token).post("/orders").status_code)

    assert post(["orders:read", "orders:write"]) == 200
    assert post(["orders:write", "orders:read", "other"]) == 200
    assert post(["orders:read"]) == 403
    assert post(["orders:write"]) == 403
    assert post([]) == 403
