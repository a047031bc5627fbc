"""Loading endpointsec.toml: valid files, and invalid ones that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from endpointsec import MTLS, Config, ConfigurationError, TokenUse, load_config


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "endpointsec.toml"
    p.write_text(text)
    return p


def test_minimal(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "[policy]\nallow_authenticated = true\n"))
    assert cfg.policy.allow_authenticated
    assert cfg.defaults.mtls is MTLS.REQUIRED
    assert cfg.source == tmp_path / "endpointsec.toml"


def test_routes_and_defaults(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    cfg = load_config(write(tmp_path, """
[identity]
sources = ["asgi-tls"]
trust_bundles = ["ca.pem"]

[defaults]
token = "required"

[[routes]]
path = "/healthz"
public = true

[[routes]]
path = "/admin/*"
methods = ["POST"]
roles = ["admin"]
"""))
    assert cfg.identity.trust_bundles == (tmp_path / "ca.pem",)
    assert cfg.defaults.token is TokenUse.REQUIRED
    assert cfg.routes[0].requirements.public
    # routes inherit the defaults they do not override
    assert cfg.routes[1].requirements.token is TokenUse.REQUIRED
    assert cfg.routes[1].requirements.roles == frozenset({"admin"})
    assert cfg.routes[1].methods == frozenset({"POST"})


BAD = [
    ("unknown-top-level", "[polcy]\n", "polcy"),
    ("unknown-identity-key", "[identity]\nsourcez = []\n", "identity.sourcez"),
    ("bad-source", '[identity]\nsources = ["envoy"]\n', "identity.sources"),
    ("missing-bundle-file", '[identity]\ntrust_bundles = ["nope.pem"]\n',
     "identity.trust_bundles"),
    ("bad-mtls-value", '[defaults]\nmtls = "maybe"\n', "defaults.mtls"),
    ("bool-not-string", "[defaults]\nmtls = true\n", "defaults.mtls"),
    ("route-without-path", "[[routes]]\npublic = true\n", "routes[0].path"),
    ("route-relative-path", '[[routes]]\npath = "x"\n', "routes[0].path"),
    ("route-lowercase-method", '[[routes]]\npath = "/x"\nmethods = ["get"]\n',
     "routes[0].methods"),
    ("route-unknown-key", '[[routes]]\npath = "/x"\npublik = true\n', "routes[0].publik"),
    ("int-not-bool", "[policy]\nallow_authenticated = 1\n", "policy.allow_authenticated"),
    ("server-port-negative", "[server]\nport = -1\n", "server.port"),
    ("identity-not-a-table", "identity = 3\n", "identity"),
]


@pytest.mark.parametrize(("text", "key"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_invalid_config_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        load_config(write(tmp_path, text))
    assert key in str(info.value)
    assert isinstance(info.value, ValueError)


def test_not_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="not valid TOML"):
        load_config(write(tmp_path, "[[[\n"))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="not found"):
        load_config(tmp_path / "absent.toml")


def test_constructible_in_python() -> None:
    from endpointsec.identity.config import IdentityConfig

    cfg = Config(identity=IdentityConfig(sources=("asgi-tls",)))
    assert cfg.identity.sources == ("asgi-tls",)
    with pytest.raises(ConfigurationError, match=r"identity\.sources"):
        IdentityConfig(sources=("bogus",))
