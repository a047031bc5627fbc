"""Policy change announcements between replicas: PostgreSQL LISTEN/NOTIFY or Redis pub/sub.

A watcher runs one daemon thread that listens on a channel. Each announcement (any
payload; a replica's own are recognised by its origin) makes the policy reload from its
store, several pending announcements at once making one reload. After every (re)connection
the policy is reloaded in full as well, since announcements sent while disconnected are
lost.

While the database or Redis is unreachable the replica keeps deciding with its last good
policy: the outage is logged once (``WARNING``, with its cause), the thread retries with
a capped exponential backoff, and the recovery is logged (``WARNING``) before the
catch-up reload.

Why not ``casbin-postgresql-watcher`` / ``casbin-redis-watcher``: the first runs a
``multiprocessing`` process per watcher and uses psycopg2, the second depends on the
older ``casbin`` distribution (which replaces the maintained ``pycasbin``) and pins an
old ``redis``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from endpointsec.errors import ConfigurationError, PolicyStoreUnavailable

__all__ = ["DEFAULT_CHANNEL", "PolicyWatcher", "PostgresWatcher", "RedisWatcher"]

logger = logging.getLogger("endpointsec.policy.watcher")

#: The channel (PostgreSQL) or pub/sub channel (Redis) announcements go through.
DEFAULT_CHANNEL = "endpointsec_policy"

#: Called with the payloads received; returns ``False`` if the store was unreachable.
OnAnnouncements = Callable[[Sequence[str]], bool]


class PolicyWatcher(Protocol):
    """What :meth:`CasbinPolicy.attach_watcher` needs from a watcher."""

    def start(self, on_announcements: OnAnnouncements) -> None:
        """Start listening; call ``on_announcements(payloads)`` from the thread."""

    def publish(self, payload: str) -> None:
        """Announce a change (errors are logged, never raised)."""

    def after_fork(self) -> None:
        """In a forked child: drop inherited connections, restart the thread."""

    def close(self) -> None:
        """Stop the thread (idempotent)."""


class _ListeningThread:
    """The reconnect loop shared by both watchers; subclasses connect and wait."""

    kind = "watcher"

    def __init__(self, *, channel: str, backoff_initial: float = 0.2,
                 backoff_max: float = 5.0, poll: float = 1.0,
                 resync_interval: float = 60.0) -> None:
        if backoff_initial <= 0 or backoff_max < backoff_initial:
            raise ConfigurationError("backoff must be positive and its cap at least the "
                                     "first delay", key="policy.watcher")
        if resync_interval < 0:
            raise ConfigurationError("must be at least 0", key="policy.resync_interval")
        self.channel = channel
        #: Seconds between two full reloads while connected (0: never). A safety net:
        #: an announcement missed or applied out of order is corrected within it.
        self.resync_interval = resync_interval
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.poll = poll
        self._callback: OnAnnouncements | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Set while listening, once caught up (tests and health checks can wait on it).
        self.connected = threading.Event()
        #: Reconnections since start (each followed by a full reload).
        self.reconnects = 0
        self._outage_since: float | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, on_announcements: OnAnnouncements) -> None:
        self._callback = on_announcements
        # A thread of its own stop event: a previous thread that has not ended yet
        # (close() waits a bounded time) can never be revived by a later start().
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(self._stop,), daemon=True,
                                        name=f"endpointsec-policy-{self.kind}")
        self._thread.start()

    def after_fork(self) -> None:
        self._forget_connections()
        self.connected.clear()
        if self._callback is not None and not self._stop.is_set():
            self.start(self._callback)

    def close(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self.poll + 5)
        self._close_connections()
        self.connected.clear()

    # -- the loop ------------------------------------------------------------------------

    def _run(self, stop: threading.Event) -> None:
        delay = self.backoff_initial
        while not stop.is_set():
            try:
                self._connect()
                if self._outage_since is not None:
                    logger.warning("policy %s: %s is reachable again after %.1f s; "
                                   "reloading the policy in full", self.kind, self._what(),
                                   time.monotonic() - self._outage_since)
                    self._outage_since = None
                self.reconnects += 1
                delay = self.backoff_initial
                # Announcements made before we listened are lost: reload in full.
                self._deliver([""])
                self.connected.set()  # listening and caught up
                synced = time.monotonic()
                while not stop.is_set():
                    payloads = self._wait()
                    if self.resync_interval and (
                            time.monotonic() - synced >= self.resync_interval):
                        payloads = [*payloads, ""]  # a full reload (anti-entropy)
                        synced = time.monotonic()
                    if payloads:
                        self._deliver(payloads)
            except Exception as exc:
                self.connected.clear()
                self._close_connections()
                if stop.is_set():
                    break
                if self._outage_since is None:
                    self._outage_since = time.monotonic()
                    logger.warning(
                        "policy %s: lost %s (%s); serving the last good policy and "
                        "retrying (backoff up to %.1f s)", self.kind, self._what(),
                        _cause(exc), self.backoff_max)
                stop.wait(delay)
                delay = min(delay * 2, self.backoff_max)

    def _deliver(self, payloads: Sequence[str]) -> None:
        """Hand the payloads to the policy; a store it could not reach counts as an
        outage (reconnect with backoff, then reload in full)."""
        callback = self._callback
        if callback is None:
            return
        try:
            reached = callback(payloads)
        except Exception as exc:  # the policy logs its own failures; never kill the thread
            logger.error("policy %s: handling an announcement failed: %s", self.kind,
                         _cause(exc))
            return
        if reached is False:
            raise PolicyStoreUnavailable("the policy could not be reloaded from its store")

    # -- per transport -------------------------------------------------------------------

    def _what(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def _connect(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _wait(self) -> list[str]:  # pragma: no cover - abstract
        """Payloads received within ``poll`` seconds (all pending ones at once)."""
        raise NotImplementedError

    def _close_connections(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _forget_connections(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


def _cause(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


#: Connections inherited from a parent process: kept referenced, never closed here.
_inherited: list[Any] = []


class PostgresWatcher(_ListeningThread):
    """``LISTEN`` on a PostgreSQL channel (psycopg 3). A write through
    :class:`~endpointsec.policy.store.PostgresAdapter` notifies in its own transaction;
    a change made directly in the table is announced with ``NOTIFY <channel>``."""

    kind = "watcher (PostgreSQL)"

    def __init__(self, *, connect: Callable[..., Any], channel: str = DEFAULT_CHANNEL,
                 **options: Any) -> None:
        from endpointsec.policy.store import check_identifier

        super().__init__(channel=check_identifier(channel, key="policy.channel"), **options)
        self._connect_fn = connect
        self._conn: Any = None
        self._last_check = 0.0

    def _what(self) -> str:
        return "the policy database"

    def _connect(self) -> None:
        conn = self._connect_fn(autocommit=True, keepalives=1, keepalives_idle=5,
                                keepalives_interval=2, keepalives_count=3)
        self._conn = conn
        conn.execute(f'LISTEN "{self.channel}"')
        self._last_check = time.monotonic()

    def _wait(self) -> list[str]:
        conn = self._conn
        payloads = [n.payload for n in conn.notifies(timeout=self.poll, stop_after=1)]
        if payloads:
            # Coalesce: everything already pending makes one reload.
            payloads += [n.payload for n in conn.notifies(timeout=0.001)]
        elif time.monotonic() - self._last_check >= 5 * self.poll:
            conn.execute("SELECT 1")  # a silent network loss shows up here
            self._last_check = time.monotonic()
        return payloads

    def publish(self, payload: str) -> None:
        try:
            conn = self._connect_fn(autocommit=True)
            try:
                conn.execute("SELECT pg_notify(%s, %s)", (self.channel, payload))
            finally:
                conn.close()
        except Exception as exc:
            logger.error("policy %s: could not announce a change: %s", self.kind, _cause(exc))

    def _close_connections(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # a broken one is dropped anyway
                conn.close()

    def _forget_connections(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            _inherited.append(conn)


class RedisWatcher(_ListeningThread):
    """Redis pub/sub (the ``redis`` package). Replicas subscribe to ``channel``; a change
    made through one replica is published after its write committed."""

    kind = "watcher (Redis)"

    def __init__(self, *, url: str, password: Callable[[], str | None] | None = None,
                 channel: str = DEFAULT_CHANNEL, **options: Any) -> None:
        from endpointsec.policy.store import check_redis_url

        try:
            import redis  # noqa: F401
        except ImportError:  # pragma: no cover - depends on the installed extras
            raise ConfigurationError("the Redis watcher needs redis: pip install "
                                     "'endpointsec[redis]'", key="policy.watcher") from None
        super().__init__(channel=channel, **options)
        self.url = check_redis_url(url)
        self._password = password or (lambda: None)
        self._client: Any = None
        self._pubsub: Any = None

    def _what(self) -> str:
        return "Redis"

    def _new_client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url, password=self._password(), socket_timeout=5,
                                    socket_connect_timeout=5, health_check_interval=10)

    def _connect(self) -> None:
        self._client = self._new_client()
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(self.channel)
        # The subscription is confirmed by the server before we count as listening.
        deadline = time.monotonic() + 5
        while self._pubsub.get_message(timeout=0.2) is None and not self._pubsub.subscribed:
            if time.monotonic() > deadline:
                raise PolicyStoreUnavailable("Redis did not confirm the subscription")
        self._client.ping()

    def _wait(self) -> list[str]:
        pubsub = self._pubsub
        payloads: list[str] = []
        message = pubsub.get_message(timeout=self.poll)
        while message is not None:
            if message.get("type") == "message":
                data = message.get("data")
                payloads.append(data.decode("utf-8", "replace")
                                if isinstance(data, bytes) else str(data))
            message = pubsub.get_message(timeout=0.0)
        if not payloads:
            pubsub.check_health()
        return payloads

    def publish(self, payload: str) -> None:
        try:
            client = self._new_client()
            try:
                client.publish(self.channel, payload)
            finally:
                client.close()
        except Exception as exc:
            logger.error("policy %s: could not announce a change: %s", self.kind, _cause(exc))

    def _close_connections(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        client, self._client = self._client, None
        for thing in (pubsub, client):
            if thing is not None:
                with contextlib.suppress(Exception):  # a broken one is dropped anyway
                    thing.close()

    def _forget_connections(self) -> None:
        _inherited.extend(x for x in (self._pubsub, self._client) if x is not None)
        self._pubsub = self._client = None
