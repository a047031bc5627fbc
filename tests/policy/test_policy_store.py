"""The policy in PostgreSQL (a real, throwaway server): the adapter, the configuration,
replicas following each other through LISTEN/NOTIFY and Redis pub/sub, and outages."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from endpointsec._config import Table
from endpointsec.errors import ConfigurationError, PolicyStoreUnavailable
from endpointsec.policy import CasbinPolicy, PolicyConfig, build_policy
from storage_support import Postgres, Redis, wait_until

pytest.importorskip("psycopg", reason="needs the postgres extra (psycopg)")

from endpointsec.policy.store import PostgresAdapter, check_dsn, check_redis_url
from endpointsec.policy.watcher import PostgresWatcher, RedisWatcher

ALICE = ("alice", "*", "/orders/:id", "GET", "allow")
BOB = ("bob", "*", "/admin/*", "*", "allow")
PW_ENV = "ENDPOINTSEC_TEST_POLICY_DB_PASSWORD"


def _allowed(policy: CasbinPolicy, subject: str, path: str, action: str = "GET") -> bool:
    return policy.evaluate(subjects=[subject], resource=path, action=action).allowed


# -- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize("dsn", [
    "postgresql://user:secret@db:5432/policy",
    "postgresql://user@db:5432/policy?password=secret",
    "host=db user=u password=secret dbname=policy",
], ids=["url-userinfo", "url-query", "key-value"])
def test_dsn_with_a_password_is_refused(dsn: str) -> None:
    with pytest.raises(ConfigurationError, match="must not carry a password") as info:
        check_dsn(dsn)
    assert "secret" not in str(info.value)
    with pytest.raises(ConfigurationError, match=r"policy\.database: .*password"):
        PolicyConfig.from_table(Table({"database": dsn}, key="policy"))


@pytest.mark.parametrize("url", ["redis://:secret@127.0.0.1:6379/0",
                                 "redis://user:secret@127.0.0.1/0",
                                 "redis://127.0.0.1/0?password=secret"],
                         ids=["password", "user-password", "query"])
def test_redis_url_with_a_password_is_refused(url: str) -> None:
    with pytest.raises(ConfigurationError, match="must not carry a password") as info:
        check_redis_url(url)
    assert "secret" not in str(info.value)


@pytest.mark.parametrize(("table", "match"), [
    ({"database": "postgresql://u@db/p", "policy": "p.csv"}, "either a policy file"),
    ({"database": "postgresql://u@db/p", "database_password_env": "A",
      "database_password_file": "/run/x"}, "not both"),
    ({"database": "postgresql://u@db/p", "watcher": "redis"}, "needs redis_url"),
    ({"database": "postgresql://u@db/p", "watcher": "kafka"}, "'postgres', 'redis' or 'none'"),
    ({"database": "postgresql://u@db/p", "table": "rules; drop"}, "plain SQL identifier"),
    ({"database": "postgresql://u@db/p", "channel": "a-b"}, "plain SQL identifier"),
    ({"database": "postgresql://u@db/p", "watch": True}, "watch follows files"),
    ({"watcher": "postgres"}, "needs database"),
    ({"redis_url": "redis://r/0"}, "needs database"),
], ids=["file-and-database", "two-passwords", "redis-without-url", "unknown-watcher",
        "bad-table", "bad-channel", "watch", "watcher-alone", "redis-alone"])
def test_storage_configuration_errors(table: dict[str, Any], match: str,
                                      tmp_path: Path) -> None:
    (tmp_path / "p.csv").write_text("p, a, *, /a, GET, allow\n")
    with pytest.raises(ConfigurationError, match=match):
        PolicyConfig.from_table(Table(table, key="policy", base_dir=tmp_path))


# -- the adapter --------------------------------------------------------------------------


@pytest.fixture
def adapter(postgres: Postgres, pg_table: str,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[PostgresAdapter]:
    from endpointsec.policy.store import secret_reader

    monkeypatch.setenv(PW_ENV, postgres.password)
    a = PostgresAdapter(dsn=postgres.dsn, table=pg_table,
                        password=secret_reader(env=PW_ENV, file=None, key="test"))
    yield a
    a.close()


def _rows(postgres: Postgres, table: str) -> list[tuple[Any, ...]]:
    return postgres.execute(f'SELECT ptype, v0, v1, v2, v3, v4, v5 FROM "{table}" ORDER BY id')


def test_table_is_created_on_first_use_and_changes_are_written_through(
        adapter: PostgresAdapter, postgres: Postgres, pg_table: str) -> None:
    policy = CasbinPolicy(adapter=adapter)  # an empty table: everything denied
    assert policy.engine == "indexed"
    assert not _allowed(policy, "alice", "/orders/1")
    assert policy.add_rules([ALICE, BOB]) == 2
    assert policy.add_role_for("carol", "bob") is True
    assert _rows(postgres, pg_table) == [
        ("p", *ALICE, None), ("p", *BOB, None), ("g", "carol", "bob", "*", None, None, None)]
    assert _allowed(policy, "carol", "/admin/x", "POST")
    assert policy.update_rules([ALICE], [("alice", "*", "/orders/:id", "GET", "deny")]) == 1
    assert policy.remove_rules([BOB]) == 1
    assert policy.delete_role_for("carol", "bob") is True
    assert _rows(postgres, pg_table) == [("p", "alice", "*", "/orders/:id", "GET", "deny", None)]
    # A fresh load from the table answers as the incrementally changed policy.
    fresh = CasbinPolicy(adapter=adapter)
    for subject, path in [("alice", "/orders/1"), ("carol", "/admin/x"), ("bob", "/admin/y")]:
        assert _allowed(fresh, subject, path) is _allowed(policy, subject, path)


def test_password_from_a_file(postgres: Postgres, pg_table: str, tmp_path: Path) -> None:
    secret = tmp_path / "db-password"
    secret.write_text(postgres.password + "\n")
    config = PolicyConfig.from_table(Table({
        "database": postgres.dsn, "database_password_file": str(secret), "table": pg_table,
        "watcher": "none"}, key="policy"))
    policy = build_policy(config)
    assert isinstance(policy, CasbinPolicy)
    with policy:
        assert policy.add_rules([ALICE]) == 1
        assert _allowed(policy, "alice", "/orders/7")


def test_wrong_password_or_no_database_at_start_up_is_a_configuration_error(
        postgres: Postgres, pg_table: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PW_ENV, "not-the-password")
    config = PolicyConfig.from_table(Table({
        "database": postgres.dsn, "database_password_env": PW_ENV, "table": pg_table},
        key="policy"))
    with pytest.raises(ConfigurationError, match="cannot connect") as info:
        build_policy(config)
    assert "not-the-password" not in str(info.value)
    monkeypatch.delenv(PW_ENV)
    with pytest.raises(ConfigurationError, match=f"{PW_ENV} is not set"):
        build_policy(config)


def test_a_rule_the_model_does_not_know_is_refused(adapter: PostgresAdapter, postgres: Postgres,
                                                  pg_table: str) -> None:
    adapter.create_table()
    postgres.execute(f'INSERT INTO "{pg_table}" (ptype, v0, v1) VALUES (%s, %s, %s)',
                     ("g2", "a", "b"))
    with pytest.raises(ConfigurationError, match="type 'g2'"):
        CasbinPolicy(adapter=adapter)


# -- replicas -----------------------------------------------------------------------------


def _replica(postgres: Postgres, table: str, channel: str, **extra: Any) -> CasbinPolicy:
    config = PolicyConfig.from_table(Table({
        "database": postgres.dsn, "database_password_env": PW_ENV, "table": table,
        "channel": channel, **extra}, key="policy"))
    policy = build_policy(config)
    assert isinstance(policy, CasbinPolicy)
    return policy


@pytest.fixture
def channel() -> str:
    return "ch_" + secrets.token_hex(4)


@pytest.fixture
def replicas(postgres: Postgres, pg_table: str, channel: str,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[list[CasbinPolicy]]:
    monkeypatch.setenv(PW_ENV, postgres.password)
    first = _replica(postgres, pg_table, channel)
    first.add_rules([ALICE])
    both = [first, _replica(postgres, pg_table, channel)]
    for p in both:
        assert wait_until(lambda p=p: p._policy_watcher.connected.is_set())
    yield both
    for p in both:
        p.close()


def test_a_change_through_one_replica_reaches_the_other(replicas: list[CasbinPolicy]) -> None:
    a, b = replicas
    assert _allowed(b, "alice", "/orders/1") and not _allowed(b, "bob", "/admin/x")
    a.add_rules([BOB])
    assert wait_until(lambda: _allowed(b, "bob", "/admin/x"))
    b.remove_rules([ALICE])
    assert wait_until(lambda: not _allowed(a, "alice", "/orders/1"))
    assert not _allowed(b, "alice", "/orders/1")


def test_a_change_made_in_the_table_with_notify_reaches_every_replica(
        replicas: list[CasbinPolicy], postgres: Postgres, pg_table: str, channel: str) -> None:
    generations = [p.generation for p in replicas]
    postgres.execute(f'INSERT INTO "{pg_table}" (ptype, v0, v1, v2, v3, v4) '
                     "VALUES ('p', 'bob', '*', '/admin/*', '*', 'allow')")
    postgres.execute(f"NOTIFY {channel}")
    for p, gen in zip(replicas, generations, strict=True):
        assert wait_until(lambda p=p: _allowed(p, "bob", "/admin/x"))
        assert p.generation > gen


def test_a_bad_policy_in_the_table_is_refused_and_the_last_good_one_kept(
        replicas: list[CasbinPolicy], postgres: Postgres, pg_table: str, channel: str,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="endpointsec.policy")
    postgres.execute(f'INSERT INTO "{pg_table}" (ptype, v0, v1, v2, v3, v4) '
                     "VALUES ('p', 'bob', '*', '/admin/(', '*', 'allow')")
    postgres.execute(f"NOTIFY {channel}")
    for p in replicas:
        assert wait_until(lambda p=p: p.last_reload_error is not None)
        assert "not a valid keyMatch2 pattern" in (p.last_reload_error or "")
        assert _allowed(p, "alice", "/orders/1")  # the last good policy
    assert any("keeping the last good policy" in r.getMessage() for r in caplog.records)


def test_database_outage_keeps_the_last_good_policy_and_catches_up(
        replicas: list[CasbinPolicy], postgres: Postgres, pg_table: str,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="endpointsec.policy")
    a, b = replicas
    postgres.stop()
    try:
        for p in replicas:
            assert wait_until(lambda p=p: not p._policy_watcher.connected.is_set())
        with pytest.raises(PolicyStoreUnavailable):
            a.add_rules([BOB])
        assert not _allowed(a, "bob", "/admin/x")  # a failed write changes nothing
        # Several retries later: still the last good policy, the outage logged once each.
        assert wait_until(lambda: all(p._policy_watcher.reconnects >= 1 for p in replicas))
        import time
        time.sleep(1.0)  # let the watchers retry a few times (backoff 0.2, 0.4, ...)
        for p in replicas:
            assert _allowed(p, "alice", "/orders/1")
        lost = [r for r in caplog.records if "lost the policy database" in r.getMessage()]
        assert len(lost) == 2, [r.getMessage() for r in lost]
        assert all(r.levelno == logging.WARNING for r in lost)
    finally:
        postgres.start()
    # A change made while the replicas were away, without any notification: caught up
    # by the full reload on reconnection.
    postgres.execute(f'INSERT INTO "{pg_table}" (ptype, v0, v1, v2, v3, v4) '
                     "VALUES ('p', 'bob', '*', '/admin/*', '*', 'allow')")
    for p in replicas:
        assert wait_until(lambda p=p: _allowed(p, "bob", "/admin/x"), timeout=20)
    assert sum("reachable again" in r.getMessage() for r in caplog.records) == 2
    # And changes propagate again.
    b.remove_rules([ALICE])
    assert wait_until(lambda: not _allowed(a, "alice", "/orders/1"))


def test_redis_watcher(postgres: Postgres, redis_service: Redis, pg_table: str, channel: str,
                       monkeypatch: pytest.MonkeyPatch,
                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="endpointsec.policy")
    monkeypatch.setenv(PW_ENV, postgres.password)
    monkeypatch.setenv("ENDPOINTSEC_TEST_REDIS_PASSWORD", redis_service.password)
    extra = {"watcher": "redis", "redis_url": redis_service.url,
             "redis_password_env": "ENDPOINTSEC_TEST_REDIS_PASSWORD"}
    a = _replica(postgres, pg_table, channel, **extra)
    b = _replica(postgres, pg_table, channel, **extra)
    try:
        assert isinstance(a._policy_watcher, RedisWatcher)
        assert a._adapter.notify_channel is None  # announced through Redis, not NOTIFY
        for p in (a, b):
            assert wait_until(lambda p=p: p._policy_watcher.connected.is_set())
        a.add_rules([ALICE])
        assert wait_until(lambda: _allowed(b, "alice", "/orders/1"))
        redis_service.stop()
        try:
            for p in (a, b):
                assert wait_until(lambda p=p: not p._policy_watcher.connected.is_set())
            a.add_rules([BOB])  # written to the database; the announcement is lost
            assert _allowed(b, "alice", "/orders/1")
        finally:
            redis_service.start()
        # The reconnection reloads in full: the missed change arrives.
        assert wait_until(lambda: _allowed(b, "bob", "/admin/x"), timeout=20)
        assert sum("lost Redis" in r.getMessage() for r in caplog.records) == 2
    finally:
        a.close()
        b.close()


def test_own_announcements_do_not_reload(replicas: list[CasbinPolicy]) -> None:
    a, b = replicas
    generation = a.generation
    a.add_rules([BOB])
    assert wait_until(lambda: _allowed(b, "bob", "/admin/x"))
    b_generation = b.generation
    a.add_rules([("dave", "*", "/x", "GET", "allow")])
    assert wait_until(lambda: b.generation > b_generation)
    assert a.generation == generation + 2  # its own two changes, no reload of its own


def test_watcher_classes_refuse_bad_options() -> None:
    with pytest.raises(ConfigurationError, match="plain SQL identifier"):
        PostgresWatcher(connect=lambda **_: None, channel="bad channel")
    with pytest.raises(ConfigurationError, match="backoff"):
        PostgresWatcher(connect=lambda **_: None, backoff_initial=0)


def test_announced_changes_are_applied_without_a_full_reload(
        replicas: list[CasbinPolicy], postgres: Postgres, channel: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = replicas
    reloads: list[int] = []
    original = CasbinPolicy.reload

    def counting_reload() -> None:
        reloads.append(1)
        original(b)

    monkeypatch.setattr(b, "reload", counting_reload)
    generation = b.generation
    a.add_rules([BOB])
    a.update_rules([ALICE], [("alice", "*", "/orders/:id", "GET", "deny")])
    a.add_role_for("carol", "bob")
    assert wait_until(lambda: _allowed(b, "carol", "/admin/x")
                      and not _allowed(b, "alice", "/orders/1"))
    assert reloads == []  # applied from the announcements themselves
    assert b.generation > generation
    postgres.execute(f"NOTIFY {channel}")  # no change in the announcement: reload in full
    assert wait_until(lambda: reloads == [1])


def test_concurrent_writers_converge_on_the_table(
        postgres: Postgres, pg_table: str, channel: str, adapter: PostgresAdapter,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Both replicas change the same few rules at once; when the writes stop, each one
    answers as a fresh load of the table within the resync interval.

    Changes are applied incrementally in commit order, and a write that changed other
    rows than asked makes every replica reload; a rare interleaving of the two still
    leaves a replica off by a rule until its next full reload (the resync interval is
    the bound on it)."""
    import random
    import threading

    monkeypatch.setenv(PW_ENV, postgres.password)
    replicas = [_replica(postgres, pg_table, channel, resync_interval=2.0)
                for _ in range(2)]
    for p in replicas:
        assert wait_until(lambda p=p: p._policy_watcher.connected.is_set())

    rules = [("s", "*", f"/r/{i}", "GET", "allow") for i in range(4)]

    def writer(policy: CasbinPolicy, seed: int) -> None:
        rnd = random.Random(seed)
        for _ in range(40):
            rule = rnd.choice(rules)
            if rnd.random() < 0.5:
                policy.add_rules([rule])
            else:
                policy.remove_rules([rule])

    threads = [threading.Thread(target=writer, args=(p, i)) for i, p in enumerate(replicas)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    def converged() -> bool:
        truth = CasbinPolicy(adapter=adapter)
        return all(_allowed(p, "s", f"/r/{i}") is _allowed(truth, "s", f"/r/{i}")
                   for p in replicas for i in range(4))

    try:
        assert wait_until(converged, timeout=15, interval=0.2)
    finally:
        for p in replicas:
            p.close()


def test_a_read_only_role_loads_and_follows(postgres: Postgres, pg_table: str,
                                            channel: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Replicas can run with a role that may only read the table (and LISTEN); writes
    then fail with PolicyStoreUnavailable and change nothing."""
    role, password = "reader_" + secrets.token_hex(3), secrets.token_urlsafe(12)
    monkeypatch.setenv(PW_ENV, postgres.password)
    writer = _replica(postgres, pg_table, channel)
    writer.add_rules([ALICE])
    postgres.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    postgres.execute(f'GRANT SELECT ON "{pg_table}" TO {role}')
    monkeypatch.setenv("ENDPOINTSEC_TEST_READER_PASSWORD", password)
    config = PolicyConfig.from_table(Table({
        "database": postgres.dsn.replace("endpointsec@", f"{role}@"),
        "database_password_env": "ENDPOINTSEC_TEST_READER_PASSWORD", "table": pg_table,
        "channel": channel}, key="policy"))
    reader = build_policy(config)
    assert isinstance(reader, CasbinPolicy)
    try:
        assert _allowed(reader, "alice", "/orders/1")
        assert wait_until(lambda: reader._policy_watcher.connected.is_set())
        writer.add_rules([BOB])
        assert wait_until(lambda: _allowed(reader, "bob", "/admin/x"))
        with pytest.raises(PolicyStoreUnavailable, match="permission denied"):
            reader.remove_rules([BOB])
        assert _allowed(reader, "bob", "/admin/x")
    finally:
        reader.close()
        writer.close()


def test_a_plain_casbin_enforcer_uses_the_adapter(adapter: PostgresAdapter, postgres: Postgres,
                                                  pg_table: str) -> None:
    import casbin

    from endpointsec.policy import DEFAULT_MODEL_PATH

    enforcer = casbin.Enforcer(str(DEFAULT_MODEL_PATH), adapter)
    assert enforcer.add_policy(*ALICE)
    assert enforcer.enforce("alice", "*", "/orders/1", "GET")
    assert _rows(postgres, pg_table) == [("p", *ALICE, None)]
    assert enforcer.remove_policy(*ALICE)
    assert _rows(postgres, pg_table) == []
