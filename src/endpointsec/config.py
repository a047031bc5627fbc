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
``[server]``    ``endpointsec serve``: the server certificate, key and client CA;
``[audit]``     the decision log, metrics and tracing.

An invalid configuration raises :class:`endpointsec.errors.ConfigurationError` at
start-up with a message that names the offending key.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from endpointsec._config import Table
from endpointsec.audit import AuditConfig
from endpointsec.errors import ConfigurationError
from endpointsec.facts import MTLS, Requirements, TokenUse
from endpointsec.identity.config import IdentityConfig
from endpointsec.identity.forwarded import ProxyConfig
from endpointsec.policy.config import PolicyConfig
from endpointsec.policy.rules import unmatchable_path
from endpointsec.tokens.config import TokensConfig

#: A ``{name}`` parameter of a route template (one segment).
_ROUTE_PARAM = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG",
    "Config",
    "RouteConfig",
    "ServerConfig",
    "config_path",
    "config_schema",
    "load_config",
    "requirements_from_table",
]

T = TypeVar("T")

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
        if path and not path.startswith("/"):
            t.error("must start with '/'", key="path")
        elif path:
            # Templates match normalized paths: a literal part written otherwise (a
            # space, non-ASCII text, a lower-case escape) matches nothing, and the
            # requirements the route narrows would silently not apply.
            why = unmatchable_path(_ROUTE_PARAM.sub("p", path))
            if why is not None:
                t.error(f"never matches a request path: {why}", key="path")
        methods = frozenset(t.str_list("methods", (), choices=_METHODS,
                                       what="HTTP method (upper case)"))
        return t.build(cls, path=path, methods=methods,
                       requirements=requirements_from_table(t, base=defaults))


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
    #: Seconds between two checks of the certificate, key and client CA files; a change
    #: is used for new handshakes without a restart. 0 turns the check off.
    reload_interval: float = 5.0

    @classmethod
    def from_table(cls, t: Table) -> ServerConfig:
        return t.build(
            cls,
            host=t.string("host", "127.0.0.1"),
            port=t.integer("port", 8443, minimum=0, maximum=65535),
            certfile=t.path("certfile", None),
            keyfile=t.path("keyfile", None),
            client_ca=t.path("client_ca", None),
            client_cert=t.choice("client_cert", ["required", "optional"], "required"),
            workers=t.integer("workers", 1, minimum=1),
            reload_interval=t.number("reload_interval", 5.0, minimum=0.0),
        )


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
    audit: AuditConfig = field(default_factory=AuditConfig)
    #: Where the configuration was read from (``None`` when built in Python).
    source: Path | None = None

    @classmethod
    def from_mapping(cls, data: dict[str, Any], *, base_dir: Path | None = None,
                     source: Path | None = None) -> Config:
        """Validate a parsed ``endpointsec.toml``; every invalid key is reported at once
        (:attr:`ConfigurationError.errors`)."""
        root = Table(data, base_dir=base_dir, collect=True)
        config = _read_root(root, source=source)
        root.raise_errors()
        return config


def _read_root(root: Table, *, source: Path | None) -> Config:
    """Read the whole file: the one definition the loader and :func:`config_schema`
    share."""

    def section(name: str, reader: Callable[[Table], T], fallback: T) -> T:
        t = root.table(name)
        return fallback if t is None else t.read(reader, fallback)

    identity = section("identity", IdentityConfig.from_table, IdentityConfig())
    proxy = section("proxy", ProxyConfig.from_table, None)
    tokens = section("tokens", TokensConfig.from_table, TokensConfig())
    policy = section("policy", PolicyConfig.from_table, PolicyConfig())

    def read_defaults(t: Table) -> Requirements:
        value = requirements_from_table(t)
        return t.build(lambda: value)

    defaults = section("defaults", read_defaults, Requirements())
    routes = tuple(
        r for r in (rt.read(lambda rt: RouteConfig.from_table(rt, defaults=defaults), None)
                    for rt in root.tables("routes"))
        if r is not None
    )
    server = section("server", ServerConfig.from_table, ServerConfig())
    audit = section("audit", AuditConfig.from_table, AuditConfig())
    root.finish()
    return Config(identity=identity, proxy=proxy, tokens=tokens, policy=policy,
                  defaults=defaults, routes=routes, server=server, audit=audit,
                  source=source)


def config_schema() -> dict[str, Any]:
    """The JSON Schema of ``endpointsec.toml``, declared by the same readers that
    validate the file (so it accepts exactly the keys the loader accepts).

    Point an editor at it with a ``#:schema`` comment (Taplo, Even Better TOML); the
    loader still checks what a schema cannot (files exist, issuers agree, ...).
    """
    from endpointsec import __version__

    root = Table.schema_root()
    _read_root(root, source=None)
    out: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://endpointsec.invalid/schema/{__version__}/endpointsec.toml.json",
        "title": "endpointsec.toml",
        "description": "endpointsec configuration (see docs/configuration.md).",
    }
    out.update(root.json_schema())
    return out


#: The environment variable naming the configuration file (set by ``endpointsec serve``).
CONFIG_ENV = "ENDPOINTSEC_CONFIG"
#: The file read when neither a path nor ``ENDPOINTSEC_CONFIG`` is given.
DEFAULT_CONFIG = "endpointsec.toml"


def config_path(path: str | Path | None = None) -> Path:
    """The configuration file to read: ``path``, else ``$ENDPOINTSEC_CONFIG``, else
    ``./endpointsec.toml``; a :class:`ConfigurationError` when there is none."""
    if path is not None:
        return Path(path)
    env = os.environ.get(CONFIG_ENV, "")
    if env:
        found = Path(env)
        if not found.is_file():
            raise ConfigurationError(
                f"{CONFIG_ENV} names {found}, which is not a file", key=CONFIG_ENV)
        return found
    found = Path(DEFAULT_CONFIG)
    if not found.is_file():
        raise ConfigurationError(
            f"no configuration file: {CONFIG_ENV} is not set and there is no "
            f"{DEFAULT_CONFIG} in {Path.cwd()}; pass a path (load_config(path); on the "
            f"command line, --config FILE) or set {CONFIG_ENV}")
    return found


def load_config(path: str | Path | None = None) -> Config:
    """Read and validate ``endpointsec.toml``. Relative paths in it are relative to it.

    Without ``path``: the file named by ``$ENDPOINTSEC_CONFIG`` (``endpointsec serve
    --config`` sets it for the app it serves), else ``./endpointsec.toml``. Every
    invalid key is reported in one :class:`ConfigurationError`.
    """
    path = config_path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigurationError(f"configuration file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigurationError(f"configuration path is a directory: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path} is not valid TOML: {exc}") from None
    return Config.from_mapping(data, base_dir=path.resolve().parent, source=path)
