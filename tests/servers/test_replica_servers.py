"""Several uvicorn workers behind one port, one policy in PostgreSQL (real mTLS, a real
throwaway database): a change made through one worker, or in the table followed by
``NOTIFY``, is decided by every worker; a database outage with requests flowing changes
no decision, and changes propagate again after it."""

from __future__ import annotations

import http.client
import json
import os
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from servers_support import SID, ServerPki, client_context, free_port, subprocess_server

from storage_support import Postgres

pytest.importorskip("psycopg", reason="needs the postgres extra (psycopg)")

PW_ENV = "ENDPOINTSEC_TEST_POLICY_DB_PASSWORD"


def _get(port: int, pki: ServerPki, path: str) -> tuple[int, dict[str, Any]]:
    """One request on a new connection (so that the workers share the requests)."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10,
                                       context=client_context(pki, "valid"))
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    try:
        body = json.loads(raw) if raw else {}
    except ValueError:
        body = {}
    return resp.status, body


def _every_worker_decides(port: int, pki: ServerPki, path: str, expected: bool,
                          workers: int = 2, timeout: float = 15.0) -> dict[int, bool]:
    """Ask until each of the ``workers`` answered ``expected`` for ``GET path`` (a bounded
    wait; the last answer of every worker seen is returned)."""
    last: dict[int, bool] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = _get(port, pki, f"/_decide?path={path}")
        assert status == 200, body
        last[body["pid"]] = body["allowed"]
        if len(last) >= workers and all(v is expected for v in last.values()):
            break
        time.sleep(0.01)
    return last


@pytest.fixture
def replica_server(postgres: Postgres, pg_table: str, server_pki: ServerPki,
                   monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[int, str]]:
    channel = "ch_" + secrets.token_hex(4)
    postgres.execute(f'CREATE TABLE "{pg_table}" (id bigserial PRIMARY KEY, ptype '
                     "varchar(100) NOT NULL, v0 text, v1 text, v2 text, v3 text, v4 text, "
                     "v5 text)")
    for path in ("/_decide", "/_grant", "/p/1"):
        postgres.execute(f'INSERT INTO "{pg_table}" (ptype, v0, v1, v2, v3, v4) '
                         "VALUES ('p', %s, '*', %s, 'GET', 'allow')", (SID, path))
    monkeypatch.setenv(PW_ENV, postgres.password)
    monkeypatch.setenv("ENDPOINTSEC_TEST_PG_DSN", postgres.dsn)
    monkeypatch.setenv("ENDPOINTSEC_TEST_PG_TABLE", pg_table)
    monkeypatch.setenv("ENDPOINTSEC_TEST_PG_CHANNEL", channel)
    port = free_port()
    args = [
        "uvicorn", "replica_app:make_replica_app", "--factory", "--workers", "2",
        "--host", "127.0.0.1", "--port", str(port),
        "--http", "endpointsec.servers.uvicorn:HttpToolsProtocol",
        "--ssl-certfile", str(server_pki.server_cert),
        "--ssl-keyfile", str(server_pki.server_key),
        "--ssl-ca-certs", str(server_pki.server_tls_bundle), "--ssl-cert-reqs", "2",
        "--lifespan", "off", "--log-level", "warning", "--no-access-log",
    ]
    with subprocess_server(args, port, server_pki):
        yield port, channel


def test_changes_reach_every_worker_and_an_outage_changes_no_decision(
        replica_server: tuple[int, str], postgres: Postgres, pg_table: str,
        server_pki: ServerPki) -> None:
    port, channel = replica_server
    seen = _every_worker_decides(port, server_pki, "/p/2", False)
    assert len(seen) == 2 and not any(seen.values()), seen  # two workers, both deny

    # A change made through one worker reaches both.
    status, body = _get(port, server_pki, "/_grant?path=/p/2")
    assert (status, body["added"]) == (200, 1)
    seen = _every_worker_decides(port, server_pki, "/p/2", True)
    assert len(seen) == 2 and all(seen.values()), seen
    assert {_get(port, server_pki, "/p/2")[0] for _ in range(6)} == {200}

    # A change made in the table, announced with NOTIFY, reaches both.
    postgres.execute(f'INSERT INTO "{pg_table}" (ptype, v0, v1, v2, v3, v4) '
                     "VALUES ('p', %s, '*', '/p/3', 'GET', 'allow')", (SID,))
    postgres.execute(f"NOTIFY {channel}")
    seen = _every_worker_decides(port, server_pki, "/p/3", True)
    assert len(seen) == 2 and all(seen.values()), seen

    # The database stops and restarts while requests flow: no wrong decision.
    wrong: list[Any] = []
    served = [0]
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            for path, expected in (("/p/1", 200), ("/p/4", 403)):
                try:
                    status, _ = _get(port, server_pki, path)
                except OSError as exc:
                    wrong.append((path, type(exc).__name__))
                    continue
                served[0] += 1
                if status != expected:
                    wrong.append((path, status))

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        time.sleep(0.3)
        postgres.stop()
        time.sleep(2.0)  # requests keep flowing while the watchers retry
        postgres.start()
        time.sleep(0.5)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert wrong == [] and served[0] > 20, (wrong, served)

    # After the restart a change propagates again (the workers reconnected).
    deadline = time.monotonic() + 20
    while True:
        status, body = _get(port, server_pki, "/_grant?path=/p/4")
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)  # the worker's first write may meet the restarting database
    assert status == 200, body
    seen = _every_worker_decides(port, server_pki, "/p/4", True, timeout=20)
    assert len(seen) == 2 and all(seen.values()), seen
    assert os.getpid() not in seen
