"""``[policy]``: the Casbin model and policy, and ``[policy.paths]``: path normalization.

::

    [policy]
    policy = "policy.csv"          # Casbin policy lines (p, g)
    # model = "model.conf"         # default: the shipped zero-trust model
    dry_run = false                # log "would deny" and let the request through
    watch = true                   # reload the files when they change
    watch_interval = 2.0           # seconds between checks
    domain_header = "x-tenant"     # optional: the Casbin domain (tenant)
    cache_size = 10000             # decisions kept per policy snapshot (0: no cache)

    # Instead of a file: rules in PostgreSQL, changes announced to every replica
    # database = "postgresql://endpointsec@db:5432/policy"   # no password here
    # database_password_env = "POLICY_DB_PASSWORD"          # or database_password_file
    # table = "casbin_rule"
    # watcher = "postgres"           # "postgres" (default with a database) | "redis" | "none"
    # redis_url = "redis://redis:6379/0"                    # no password here
    # redis_password_env = "REDIS_PASSWORD"                 # or redis_password_file
    # channel = "endpointsec_policy"

    [policy.paths]
    merge_slashes = true
    decode_encoded_slashes = false
    reject_encoded_slashes = false
    backslash = "slash"            # "slash" | "reject" | "keep"

Every key is documented in ``docs/policy.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from endpointsec._config import Table
from endpointsec.errors import ConfigurationError
from endpointsec.policy.paths import BACKSLASH_CHOICES, PathOptions

__all__ = ["PathOptions", "PolicyConfig"]


def _paths_from_table(t: Table) -> PathOptions:
    return t.build(
        PathOptions,
        merge_slashes=t.boolean("merge_slashes", True),
        decode_encoded_slashes=t.boolean("decode_encoded_slashes", False),
        reject_encoded_slashes=t.boolean("reject_encoded_slashes", False),
        backslash=t.choice("backslash", BACKSLASH_CHOICES, "slash"),
    )


@dataclass(frozen=True, kw_only=True)
class PolicyConfig:
    """Authorization configuration (``[policy]``); every field has a secure default.

    Either a Casbin policy (``policy`` file or an ``adapter``) or the explicit
    ``allow_authenticated = true`` must be chosen: there is no implicit "allow all".
    """

    #: Allow every authenticated caller (no Casbin policy). Must be chosen explicitly.
    allow_authenticated: bool = False
    #: A Casbin model file; ``None`` means the shipped default model (``model.conf``).
    model: Path | None = None
    #: A Casbin policy CSV file (``p`` and ``g`` lines).
    policy: Path | None = None
    #: Any Casbin adapter (Python only), instead of ``policy``.
    adapter: Any = field(default=None, compare=False, repr=False)
    #: Compute and log decisions, but let denied requests proceed ("would deny").
    dry_run: bool = False
    #: Watch the model and policy files and reload them when they change.
    watch: bool = False
    #: Seconds between two checks of the watched files.
    watch_interval: float = 2.0
    #: A request header carrying the Casbin domain (tenant); ``None``: no domain.
    domain_header: str | None = None
    #: Decisions cached per policy snapshot (0 disables the cache).
    cache_size: int = 10_000
    #: Path normalization (``[policy.paths]``).
    paths: PathOptions = field(default_factory=PathOptions)
    #: A PostgreSQL connection string (URL or ``key=value``) without a password: the rules
    #: live in ``table`` instead of a file (the ``postgres`` extra).
    database: str | None = None
    #: The environment variable holding the database password.
    database_password_env: str | None = None
    #: A file holding the database password (a mounted secret; re-read at each connection).
    database_password_file: Path | None = None
    #: The rules table (Casbin's ``casbin_rule`` layout: ptype, v0..v5).
    table: str = "casbin_rule"
    #: How replicas learn of a change: ``"postgres"`` (LISTEN/NOTIFY, the default with a
    #: database), ``"redis"`` (pub/sub) or ``"none"``.
    watcher: str | None = None
    #: The Redis URL for ``watcher = "redis"`` (without a password).
    redis_url: str | None = None
    #: The environment variable holding the Redis password.
    redis_password_env: str | None = None
    #: A file holding the Redis password.
    redis_password_file: Path | None = None
    #: The notification channel shared by the replicas.
    channel: str = "endpointsec_policy"
    #: Seconds between two full reloads of a database policy while its watcher is
    #: connected (0: never): corrects any change announcement missed or misordered.
    resync_interval: float = 60.0

    def __post_init__(self) -> None:
        if self.watch_interval <= 0:
            raise ConfigurationError("must be greater than 0", key="policy.watch_interval")
        if self.cache_size < 0:
            raise ConfigurationError("must be at least 0", key="policy.cache_size")
        if self.policy is not None and self.adapter is not None:
            raise ConfigurationError("give either a policy file or an adapter, not both",
                                     key="policy.policy")
        if self.allow_authenticated and (
            self.policy is not None or self.adapter is not None or self.model is not None
        ):
            raise ConfigurationError(
                "allow_authenticated cannot be combined with a Casbin model or policy",
                key="policy.allow_authenticated",
            )
        if self.domain_header is not None and not self.domain_header.strip():
            raise ConfigurationError("must not be empty", key="policy.domain_header")
        self._check_storage()

    def _check_storage(self) -> None:
        from endpointsec.policy.store import check_identifier, check_redis_url

        if self.database is None:
            for name in ("database_password_env", "database_password_file", "watcher",
                         "redis_url", "redis_password_env", "redis_password_file"):
                if getattr(self, name) is not None:
                    raise ConfigurationError("needs database = \"postgresql://...\"",
                                             key=f"policy.{name}")
            return
        if self.policy is not None or self.adapter is not None:
            raise ConfigurationError("give either a policy file, an adapter or a database",
                                     key="policy.database")
        if self.allow_authenticated:
            raise ConfigurationError(
                "allow_authenticated cannot be combined with a Casbin model or policy",
                key="policy.allow_authenticated")
        if self.watch:
            raise ConfigurationError("watch follows files; a database policy follows its "
                                     "watcher", key="policy.watch")
        if self.database_password_env is not None and self.database_password_file is not None:
            raise ConfigurationError("give either database_password_env or "
                                     "database_password_file, not both",
                                     key="policy.database_password_env")
        if self.redis_password_env is not None and self.redis_password_file is not None:
            raise ConfigurationError("give either redis_password_env or redis_password_file, "
                                     "not both", key="policy.redis_password_env")
        from endpointsec.policy.store import _psycopg, check_dsn

        _psycopg()
        check_dsn(self.database)
        check_identifier(self.table, key="policy.table")
        check_identifier(self.channel, key="policy.channel")
        if self.watcher not in (None, "postgres", "redis", "none"):
            raise ConfigurationError(f"must be 'postgres', 'redis' or 'none', not "
                                     f"{self.watcher!r}", key="policy.watcher")
        if self.watcher == "redis":
            if self.redis_url is None:
                raise ConfigurationError("watcher = \"redis\" needs redis_url",
                                         key="policy.redis_url")
            check_redis_url(self.redis_url)
        elif self.redis_url is not None:
            raise ConfigurationError("redis_url is used only with watcher = \"redis\"",
                                     key="policy.redis_url")

    @classmethod
    def from_table(cls, t: Table) -> PolicyConfig:
        """Read ``[policy]`` (and ``[policy.paths]``); unknown keys are an error."""
        paths_t = t.table("paths")
        paths = paths_t.read(_paths_from_table, PathOptions()) if paths_t else PathOptions()
        return t.build(
            cls,
            allow_authenticated=t.boolean("allow_authenticated", False),
            model=t.path("model", None),
            policy=t.path("policy", None),
            dry_run=t.boolean("dry_run", False),
            watch=t.boolean("watch", False),
            watch_interval=t.number("watch_interval", 2.0, minimum=0.01),
            domain_header=t.string("domain_header", None),
            cache_size=t.integer("cache_size", 10_000, minimum=0),
            paths=paths,
            database=t.string("database", None),
            database_password_env=t.string("database_password_env", None),
            database_password_file=t.path("database_password_file", None, must_exist=False),
            table=t.string("table", "casbin_rule"),
            watcher=t.string("watcher", None),
            redis_url=t.string("redis_url", None),
            redis_password_env=t.string("redis_password_env", None),
            redis_password_file=t.path("redis_password_file", None, must_exist=False),
            channel=t.string("channel", "endpointsec_policy"),
            resync_interval=t.number("resync_interval", 60.0, minimum=0.0),
        )
