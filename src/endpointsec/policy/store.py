"""Policy in PostgreSQL: :class:`PostgresAdapter`, a Casbin adapter on psycopg 3.

The rules live in Casbin's standard table (``casbin_rule``: ``id``, ``ptype``, ``v0`` ..
``v5``), so any Casbin tool that uses that layout reads and writes the same rules.

Why not an adapter from PyPI: ``casbin-sqlalchemy-adapter`` depends on the older
``casbin`` distribution, which installs the same ``casbin`` import package as the
maintained ``pycasbin`` and would overwrite it; ``casbin-async-sqlalchemy-adapter``
depends on ``pycasbin`` but is asynchronous only (the policy is loaded and changed from
threads) and brings SQLAlchemy for six columns. This module is the small synchronous
adapter on psycopg 3 (the ``postgres`` extra), with a write and its notification in one
transaction.

Credentials: the DSN carries no password (:func:`check_dsn` refuses one); the password
is read at each connection from an environment variable or a file (a mounted secret,
re-read so a rotated secret is picked up).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from casbin.persist import Adapter

from endpointsec.errors import ConfigurationError, PolicyStoreUnavailable

if TYPE_CHECKING:
    import psycopg

    from endpointsec.policy.config import PolicyConfig
    from endpointsec.policy.enforcer import CasbinPolicy
    from endpointsec.policy.watcher import PostgresWatcher, RedisWatcher

__all__ = ["PostgresAdapter", "adapter_from_config", "check_dsn", "check_identifier",
           "check_redis_url", "open_database_policy", "secret_reader", "watcher_from_config"]

logger = logging.getLogger("endpointsec.policy.store")

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
#: Columns of Casbin's standard table after ``ptype``.
_COLUMNS = ("v0", "v1", "v2", "v3", "v4", "v5")


def check_identifier(value: str, *, key: str) -> str:
    """A table (optionally ``schema.table``) or channel name: plain SQL identifiers only."""
    parts = value.split(".")
    if len(parts) > 2 or not all(_IDENTIFIER.fullmatch(p) for p in parts):
        raise ConfigurationError(
            f"{value[:80]!r} is not a plain SQL identifier (letters, digits, '_'; "
            "optionally schema.name)", key=key)
    return value


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:  # pragma: no cover - depends on the installed extras
        raise ConfigurationError(
            "a database-backed policy needs psycopg: pip install 'endpointsec[postgres]'",
            key="policy.database") from None
    return psycopg


def check_dsn(dsn: str, *, key: str = "policy.database") -> str:
    """Refuse a PostgreSQL DSN (URL or ``key=value`` form) that carries a password."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(dsn)
    except Exception as exc:
        raise ConfigurationError(f"not a valid PostgreSQL connection string ({type(exc).__name__})",
                                 key=key) from None
    if params.get("password") or "passfile" in params:
        raise ConfigurationError(
            "the connection string must not carry a password: give it with "
            "database_password_env or database_password_file", key=key)
    return dsn


def check_redis_url(url: str, *, key: str = "policy.redis_url") -> str:
    """Refuse a Redis URL that carries a password (``redis://:secret@host``)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigurationError("must be a redis://, rediss:// or unix:// URL", key=key)
    query = urllib.parse.parse_qs(parts.query)
    if parts.password or "password" in query:
        raise ConfigurationError(
            "the URL must not carry a password: give it with redis_password_env or "
            "redis_password_file", key=key)
    return url


def secret_reader(*, env: str | None, file: Path | None,
                  key: str) -> Callable[[], str | None]:
    """A function that reads the secret now (from ``env`` or ``file``), or ``None``."""
    if env is not None and file is not None:
        raise ConfigurationError("give either a password environment variable or a "
                                 "password file, not both", key=key)

    def read() -> str | None:
        if env is not None:
            value = os.environ.get(env)
            if value is None:
                raise ConfigurationError(f"environment variable {env} is not set", key=key)
            return value
        if file is not None:
            try:
                return file.read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise ConfigurationError(f"cannot read password file {file}: "
                                         f"{exc.strerror or exc}", key=key) from None
        return None

    return read


def _row_rule(row: Sequence[str | None]) -> list[str]:
    """Casbin's values of one row: up to the last non-empty column."""
    values = ["" if v is None else v for v in row]
    while values and values[-1] == "":
        values.pop()
    return values


class PostgresAdapter(Adapter):  # type: ignore[misc]
    """Casbin adapter over one PostgreSQL table (``casbin_rule`` layout), psycopg 3.

    Every write is one transaction; with ``notify_channel`` the transaction also sends a
    PostgreSQL notification (delivered only if it commits), which replicas listening on
    that channel take as "reload the policy". One connection is kept and re-opened after
    an error; calls are serialized.
    """

    def __init__(self, *, dsn: str, password: Callable[[], str | None] | None = None,
                 table: str = "casbin_rule", notify_channel: str | None = None,
                 connect_timeout: float = 5.0, create_table: bool = True) -> None:
        self._psycopg = _psycopg()
        self.dsn = check_dsn(dsn)
        self.table = check_identifier(table, key="policy.table")
        self.notify_channel = (check_identifier(notify_channel, key="policy.channel")
                               if notify_channel is not None else None)
        #: A payload for our own notifications (set by the policy: its origin id).
        self.notify_payload = ""
        #: Whether the last write changed exactly the rows it was asked to (else the
        #: writer reloads too: another replica changed the same rules concurrently).
        self.last_write_exact = True
        self._password = password or (lambda: None)
        self._timeout = max(1, round(connect_timeout))
        self._create = create_table
        self._created = False
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        #: The last call failed because the database was unreachable.
        self.unavailable = False

    # -- connections -------------------------------------------------------------------

    def connect(self, **extra: Any) -> psycopg.Connection[Any]:
        """A new connection (the password read now); raises :class:`PolicyStoreUnavailable`."""
        kwargs: dict[str, Any] = {"connect_timeout": self._timeout, **extra}
        password = self._password()
        if password is not None:
            kwargs["password"] = password
        try:
            conn: psycopg.Connection[Any] = self._psycopg.connect(self.dsn, **kwargs)
        except self._psycopg.Error as exc:
            raise PolicyStoreUnavailable(f"cannot connect to the policy database: "
                                         f"{_reason(exc)}") from None
        return conn

    @contextmanager
    def _transaction(self, *, create: bool = False) -> Iterator[Any]:
        """A cursor inside one transaction on the kept connection."""
        with self._lock:
            try:
                conn = self._ready_connection(create=create)
                with conn.transaction(), conn.cursor() as cur:
                    yield cur
            except self._psycopg.Error as exc:
                self._drop()
                self.unavailable = isinstance(exc, self._psycopg.OperationalError)
                raise PolicyStoreUnavailable(
                    f"policy database error: {_reason(exc)}") from None
            except PolicyStoreUnavailable:
                self.unavailable = True
                raise
            self.unavailable = False

    def _ready_connection(self, *, create: bool) -> Any:
        """The kept connection, checked: one that the server dropped (a restart, an idle
        timeout) is replaced by a new one before the transaction starts."""
        conn = self._conn
        if conn is not None and not conn.closed:
            try:
                conn.execute("SELECT 1")
            except self._psycopg.Error:
                self._drop()
                conn = None
        if conn is None or conn.closed:
            conn = self._conn = self.connect(autocommit=True)
        if create:
            self._create_table(conn, force_index=True)
        elif self._create and not self._created:
            self._create_table(conn)
        return conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # a broken one is dropped anyway
                conn.close()

    def close(self) -> None:
        """Close the kept connection (a later call opens a new one)."""
        with self._lock:
            self._drop()

    def forget_after_fork(self) -> None:
        """In a forked child: never use (nor close) the parent's connection."""
        conn, self._conn = self._conn, None
        if conn is not None:
            _inherited.append(conn)  # closing it would end the parent's session
        self._lock = threading.Lock()

    def _create_table(self, conn: Any, *, force_index: bool = False) -> None:
        """Create the table if it is missing (a replica with a read-only role only
        checks that it exists: ``CREATE ... IF NOT EXISTS`` needs the CREATE right)."""
        sql = self._psycopg.sql
        name = self._ident().as_string(conn)
        row = conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()
        if row is None or row[0] is None or force_index:
            with conn.transaction():
                conn.execute(sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (id bigserial PRIMARY KEY, "
                    "ptype varchar(100) NOT NULL, v0 text, v1 text, v2 text, v3 text, "
                    "v4 text, v5 text)").format(self._ident()))
                # Finds a rule's rows (add, remove, update) without a scan of the table.
                index = self.table.split(".")[-1][:50] + "_rule_idx"
                conn.execute(sql.SQL(
                    "CREATE INDEX IF NOT EXISTS {} ON {} (ptype, COALESCE(v0, ''), "
                    "COALESCE(v1, ''), COALESCE(v2, ''))").format(
                        sql.Identifier(index), self._ident()))
        self._created = True

    def create_table(self) -> None:
        """Create the table if it does not exist (``endpointsec policy init``)."""
        with self._transaction(create=True):
            pass

    def _ident(self) -> Any:
        sql = self._psycopg.sql
        return sql.Identifier(*self.table.split("."))

    def _notify(self, cur: Any, *, exact: bool = True) -> None:
        """Announce the transaction's change. ``exact=False``: the rows changed are not
        the change asked for (another replica changed the same rules at the same time),
        so the announcement carries no change and every replica reloads the table."""
        self.last_write_exact = exact
        if self.notify_channel is None:
            return
        payload = self.notify_payload
        if not exact:
            try:
                message = json.loads(payload)
            except ValueError:
                message = None
            if isinstance(message, dict):
                message.pop("changes", None)
                payload = json.dumps(message, separators=(",", ":"))
        cur.execute("SELECT pg_notify(%s, %s)", (self.notify_channel, payload))

    # -- reading -----------------------------------------------------------------------

    def rows(self) -> list[tuple[str, list[str]]]:
        """Every rule as ``(ptype, values)``, in table order."""
        sql = self._psycopg.sql
        with self._transaction() as cur:
            cur.execute(sql.SQL("SELECT ptype, v0, v1, v2, v3, v4, v5 FROM {} ORDER BY id")
                        .format(self._ident()))
            return [(row[0], _row_rule(row[1:])) for row in cur.fetchall()]

    def load_policy(self, model: Any) -> None:
        """Load every rule into the Casbin model (rules of unknown types are refused)."""
        sections = model.model
        for ptype, values in self.rows():
            sec = ptype[:1]
            assertion = sections.get(sec, {}).get(ptype) if sec in sections else None
            if assertion is None:
                raise ConfigurationError(
                    f"the policy table {self.table} holds a rule of type {ptype[:20]!r}, "
                    "which the model does not define", key="policy.database")
            assertion.policy.append(values)

    # -- writing (Casbin's adapter interface) --------------------------------------------

    def _where(self) -> Any:
        sql = self._psycopg.sql
        return sql.SQL(" AND ").join(
            [sql.SQL("ptype = %s")]
            + [sql.SQL("COALESCE({}, '') = %s").format(sql.Identifier(c)) for c in _COLUMNS])

    @staticmethod
    def _padded(ptype: str, rule: Sequence[str], fill: str | None) -> tuple[str | None, ...]:
        if len(rule) > len(_COLUMNS):
            raise ConfigurationError(f"a rule has {len(rule)} values; the table holds "
                                     f"at most {len(_COLUMNS)}", key="policy.database")
        return (ptype, *rule, *([fill] * (len(_COLUMNS) - len(rule))))

    def _insert(self, cur: Any, ptype: str, rules: Iterable[Sequence[str]], *,
                unique: bool = False) -> int:
        """Insert rules (with ``unique``: only those not in the table yet)."""
        sql = self._psycopg.sql
        if unique:
            rows = [(*self._padded(ptype, r, None), *self._padded(ptype, r, "")) for r in rules]
            query = sql.SQL(
                "INSERT INTO {t} (ptype, v0, v1, v2, v3, v4, v5) "
                "SELECT %s, %s, %s, %s, %s, %s, %s WHERE NOT EXISTS "
                "(SELECT 1 FROM {t} WHERE {w})").format(t=self._ident(), w=self._where())
        else:
            rows = [self._padded(ptype, r, None) for r in rules]
            query = sql.SQL("INSERT INTO {} (ptype, v0, v1, v2, v3, v4, v5) "
                            "VALUES (%s, %s, %s, %s, %s, %s, %s)").format(self._ident())
        if not rows:
            return 0
        if not unique:
            cur.executemany(query, rows)
            return len(rows)
        inserted = 0
        for row in rows:  # one by one: how many were new is what is announced
            cur.execute(query, row)
            inserted += int(cur.rowcount)
        return inserted

    def _delete(self, cur: Any, ptype: str, rule: Sequence[str]) -> int:
        """Delete every row equal to ``rule`` (a rule is in the policy or not)."""
        sql = self._psycopg.sql
        cur.execute(sql.SQL("DELETE FROM {} WHERE {}").format(self._ident(), self._where()),
                    self._padded(ptype, rule, ""))
        return int(cur.rowcount)

    def _update(self, cur: Any, ptype: str, old: Sequence[str], new: Sequence[str]) -> int:
        """Rewrite the first row equal to ``old`` (it keeps its place), and drop the other
        rows equal to ``new`` (the rule is then held once, at the first place)."""
        sql = self._psycopg.sql
        if list(old) == list(new):
            return 0
        t, w = self._ident(), self._where()
        cur.execute(sql.SQL(
            "UPDATE {t} SET v0 = %s, v1 = %s, v2 = %s, v3 = %s, v4 = %s, v5 = %s "
            "WHERE id = (SELECT id FROM {t} WHERE {w} ORDER BY id LIMIT 1)")
            .format(t=t, w=w), (*self._padded(ptype, new, None)[1:],
                                *self._padded(ptype, old, "")))
        changed = int(cur.rowcount)
        key = self._padded(ptype, new, "")
        cur.execute(sql.SQL(
            "DELETE FROM {t} WHERE {w} AND id <> (SELECT min(id) FROM {t} WHERE {w})")
            .format(t=t, w=w), (*key, *key))
        if changed:
            # The rows equal to ``old`` after the first are dropped as well.
            cur.execute(sql.SQL("DELETE FROM {} WHERE {}").format(t, w),
                        self._padded(ptype, old, ""))
        return changed

    def save_policy(self, model: Any) -> bool:
        """Replace the whole table with the model's rules (one transaction)."""
        sql = self._psycopg.sql
        with self._transaction() as cur:
            cur.execute(sql.SQL("DELETE FROM {}").format(self._ident()))
            for sec in ("p", "g"):
                for ptype, assertion in model.model.get(sec, {}).items():
                    self._insert(cur, ptype, assertion.policy)
            self._notify(cur)
        return True

    def replace_rules(self, rules: Sequence[tuple[str, Sequence[str]]]) -> None:
        """Replace the whole table with ``(ptype, values)`` rules (one transaction, the
        rows sent with ``COPY``)."""
        sql = self._psycopg.sql
        with self._transaction() as cur:
            cur.execute(sql.SQL("DELETE FROM {}").format(self._ident()))
            with cur.copy(sql.SQL("COPY {} (ptype, v0, v1, v2, v3, v4, v5) FROM STDIN")
                          .format(self._ident())) as copy:
                for ptype, values in rules:
                    copy.write_row(self._padded(ptype, values, None))
            self._notify(cur)

    def add_policy(self, sec: str, ptype: str, rule: Sequence[str]) -> bool:
        return self.add_policies(sec, ptype, [rule])

    def add_policies(self, sec: str, ptype: str, rules: Sequence[Sequence[str]]) -> bool:
        with self._transaction() as cur:
            inserted = self._insert(cur, ptype, rules, unique=True)
            self._notify(cur, exact=inserted == len(rules))
        return True

    def remove_policy(self, sec: str, ptype: str, rule: Sequence[str]) -> bool:
        return self.remove_policies(sec, ptype, [rule])

    def remove_policies(self, sec: str, ptype: str, rules: Sequence[Sequence[str]]) -> bool:
        with self._transaction() as cur:
            counts = [self._delete(cur, ptype, rule) for rule in rules]
            self._notify(cur, exact=all(counts))
        return sum(counts) > 0

    def remove_filtered_policy(self, sec: str, ptype: str, field_index: int,
                               *field_values: str) -> bool:
        sql = self._psycopg.sql
        conds = [sql.SQL("ptype = %s")]
        params: list[str] = [ptype]
        for i, value in enumerate(field_values):
            if value:
                conds.append(sql.SQL("{} = %s").format(sql.Identifier(_COLUMNS[field_index + i])))
                params.append(value)
        with self._transaction() as cur:
            cur.execute(sql.SQL("DELETE FROM {} WHERE {}").format(
                self._ident(), sql.SQL(" AND ").join(conds)), params)
            removed = int(cur.rowcount)
            self._notify(cur)
        return removed > 0

    def update_policy(self, sec: str, ptype: str, old_rule: Sequence[str],
                      new_rule: Sequence[str]) -> bool:
        return self.update_policies(sec, ptype, [old_rule], [new_rule])

    def update_policies(self, sec: str, ptype: str, old_rules: Sequence[Sequence[str]],
                        new_rules: Sequence[Sequence[str]]) -> bool:
        with self._transaction() as cur:
            counts = [self._update(cur, ptype, o, n)
                      for o, n in zip(old_rules, new_rules, strict=True)]
            self._notify(cur, exact=all(counts))
        return sum(counts) > 0


#: Connections inherited from a parent process: kept referenced, never closed here.
_inherited: list[Any] = []


def _reason(exc: BaseException) -> str:
    """A one-line cause without the connection string (which names user and host only,
    but stays out of the message all the same)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def adapter_from_config(config: PolicyConfig) -> PostgresAdapter:
    """The adapter ``[policy] database`` describes (notifying when the watcher is
    PostgreSQL)."""
    if config.database is None:
        raise ConfigurationError("no database configured", key="policy.database")
    watcher = config.watcher or "postgres"
    return PostgresAdapter(
        dsn=config.database,
        password=secret_reader(env=config.database_password_env,
                               file=config.database_password_file,
                               key="policy.database_password_env"),
        table=config.table,
        notify_channel=config.channel if watcher == "postgres" else None,
    )


def watcher_from_config(config: PolicyConfig,
                        adapter: PostgresAdapter) -> PostgresWatcher | RedisWatcher | None:
    """The watcher ``[policy] watcher`` describes, or ``None`` for ``"none"``."""
    from endpointsec.policy.watcher import PostgresWatcher, RedisWatcher

    kind = config.watcher or "postgres"
    if kind == "none":
        return None
    if kind == "redis":
        if config.redis_url is None:
            raise ConfigurationError("watcher = \"redis\" needs redis_url",
                                     key="policy.redis_url")
        return RedisWatcher(url=config.redis_url, channel=config.channel,
                            resync_interval=config.resync_interval,
                            password=secret_reader(env=config.redis_password_env,
                                                   file=config.redis_password_file,
                                                   key="policy.redis_password_env"))
    return PostgresWatcher(connect=adapter.connect, channel=config.channel,
                           resync_interval=config.resync_interval)


def open_database_policy(config: PolicyConfig) -> CasbinPolicy:
    """A :class:`CasbinPolicy` loaded from the database, following its watcher.

    The first load must succeed (there is no last good policy yet): an unreachable
    database at start-up is a :class:`ConfigurationError`.
    """
    from endpointsec.policy.enforcer import CasbinPolicy

    adapter = adapter_from_config(config)
    policy = CasbinPolicy(model=config.model, adapter=adapter, dry_run=config.dry_run,
                          cache_size=config.cache_size, paths=config.paths)
    watcher = watcher_from_config(config, adapter)
    if watcher is not None:
        policy.attach_watcher(watcher)
    return policy
