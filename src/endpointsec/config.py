"""One declarative configuration: ``endpointsec.toml``, or the same in Python.

::

    config = endpointsec.load_config("endpointsec.toml")
    config = endpointsec.Config(identity=IdentityConfig(...), policy=PolicyConfig(...))

Sections (every key is documented in ``docs/configuration.md``):

``[identity]``  where client certificates come from and how they are verified;
``[proxy]``     certificates forwarded by trusted TLS-terminating proxies;
``[tokens]``    bearer-token issuers;
``[policy]``    the Casbin model and policy;
``[defaults]`` and ``[[routes]]``  what each route requires;
``[server]``    ``endpointsec serve``: the server certificate, key and client CA.

An invalid configuration raises :class:`endpointsec.errors.ConfigurationError` at
start-up with a message that names the offending key.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from endpointsec._config import Table
from endpointsec.errors import ConfigurationError
from endpointsec.facts import MTLS, Requirements, TokenUse
from endpointsec.identity.config import IdentityConfig
from endpointsec.identity.forwarded import ProxyConfig
from endpointsec.policy.config import PolicyConfig
from endpointsec.tokens.config import TokensConfig

__all__ = [
    "Config",
    "RouteConfig",
    "ServerConfig",
    "load_config",
    "requirements_from_table",
]

_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT")


def requirements_from_table(t: Table, *, base: Requirements | None = None) -> Requirements:
    """Read the requirement keys shared by ``[defaults]`` and ``[[routes]]``."""
    base = base or Requirements()
    return Requirements(
        mtls=MTLS(t.choice("mtls", [m.value for m in MTLS], base.mtls.value)),
        token=TokenUse(t.choice("token", [u.value for u in TokenUse], base.token.value)),
        public=t.boolean("public", base.public),
        bound_token=t.boolean("bound_token", base.bound_token),
        roles=frozenset(t.str_list("roles", tuple(base.roles))),
        resource=t.string("resource", base.resource),
        action=t.string("action", base.action),
        dry_run=t.boolean("dry_run", base.dry_run),
    )


@dataclass(frozen=True, kw_only=True)
class RouteConfig:
    """Requirements for the routes whose normalized path matches ``path``.

    ``path`` is a template: ``/orders/{id}`` or ``/orders/:id`` match one segment,
    a trailing ``/*`` matches ``/prefix/`` and everything below it, not the bare
    ``/prefix`` (frameworks route that to another handler). The first matching route
    wins; no match means ``[defaults]``.
    """

    path: str
    methods: frozenset[str] = frozenset()
    requirements: Requirements = field(default_factory=Requirements)

    @classmethod
    def from_table(cls, t: Table, *, defaults: Requirements) -> RouteConfig:
        path = t.string("path")
        if not path.startswith("/"):
            raise ConfigurationError("must start with '/'", key=t.name("path"))
        methods = frozenset(m for m in t.str_list("methods", ()))
        for m in methods:
            if m not in _METHODS:
                raise ConfigurationError(f"unknown HTTP method {m!r} (use upper case)",
                                         key=t.name("methods"))
        route = cls(path=path, methods=methods,
                    requirements=requirements_from_table(t, base=defaults))
        t.finish()
        return route


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """``endpointsec serve``: a correct mTLS server from the same file."""

    host: str = "127.0.0.1"
    port: int = 8443
    certfile: Path | None = None
    keyfile: Path | None = None
    client_ca: Path | None = None
    #: "required" (default): the handshake fails without a valid client certificate.
    client_cert: str = "required"
    workers: int = 1

    @classmethod
    def from_table(cls, t: Table) -> ServerConfig:
        cfg = cls(
            host=t.string("host", "127.0.0.1"),
            port=t.integer("port", 8443, minimum=0),
            certfile=t.path("certfile", None),
            keyfile=t.path("keyfile", None),
            client_ca=t.path("client_ca", None),
            client_cert=t.choice("client_cert", ["required", "optional"], "required"),
            workers=t.integer("workers", 1, minimum=1),
        )
        t.finish()
        return cfg


@dataclass(frozen=True, kw_only=True)
class Config:
    """The whole configuration. Every field has a secure default."""

    identity: IdentityConfig = field(default_factory=IdentityConfig)
    proxy: ProxyConfig | None = None
    tokens: TokensConfig = field(default_factory=TokensConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    defaults: Requirements = field(default_factory=Requirements)
    routes: tuple[RouteConfig, ...] = ()
    server: ServerConfig = field(default_factory=ServerConfig)
    #: Where the configuration was read from (``None`` when built in Python).
    source: Path | None = None

    @classmethod
    def from_mapping(cls, data: dict[str, Any], *, base_dir: Path | None = None,
                     source: Path | None = None) -> Config:
        root = Table(data, base_dir=base_dir)
        identity_t = root.table("identity")
        proxy_t = root.table("proxy")
        tokens_t = root.table("tokens")
        policy_t = root.table("policy")
        defaults_t = root.table("defaults")
        server_t = root.table("server")
        defaults = Requirements()
        if defaults_t is not None:
            defaults = requirements_from_table(defaults_t)
            defaults_t.finish()
        routes = tuple(
            RouteConfig.from_table(rt, defaults=defaults) for rt in root.tables("routes")
        )
        root.finish()
        return cls(
            identity=IdentityConfig.from_table(identity_t) if identity_t else IdentityConfig(),
            proxy=ProxyConfig.from_table(proxy_t) if proxy_t else None,
            tokens=TokensConfig.from_table(tokens_t) if tokens_t else TokensConfig(),
            policy=PolicyConfig.from_table(policy_t) if policy_t else PolicyConfig(),
            defaults=defaults,
            routes=routes,
            server=ServerConfig.from_table(server_t) if server_t else ServerConfig(),
            source=source,
        )


def load_config(path: str | Path) -> Config:
    """Read and validate ``endpointsec.toml``. Relative paths in it are relative to it."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigurationError(f"configuration file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path} is not valid TOML: {exc}") from None
    return Config.from_mapping(data, base_dir=path.resolve().parent, source=path)
