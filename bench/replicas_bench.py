"""Policy across replicas: propagation delay, decision cost, reload and incremental change.

Run:  .venv/bin/python bench/replicas_bench.py [--changes 60] [--replicas 3] [--quick]

Starts its own throwaway PostgreSQL (as the tests do: initdb into a temporary directory,
``runuser -u nobody`` when run as root). Prints four tables:

1. **Propagation delay**: ``--replicas`` processes each load the policy (1,000 rules)
   from PostgreSQL and follow it through the LISTEN/NOTIFY watcher; the writer (another
   process) adds one rule per change through ``CasbinPolicy.add_rules`` and each replica
   records the moment its policy first allows the new rule. Delay = that moment minus the
   moment the writer started the change (same machine clock), per replica and change;
   p50/p99/max over all of them. The receivers reload in full, so a larger policy adds
   its reload time (table 3).
2. **Decision cost**: ``evaluate()`` of the same mixed requests (many subjects and
   paths, a third denied; views cached and not) on a file-backed and a database-backed
   policy of the same rules: the same engine, so the same cost is expected.
3. **Full reload** of the policy from PostgreSQL (fetch + index) and from a CSV file.
4. **Incremental change**: ``add_rules`` of one rule on the 100,000-rule policy (engine
   only: copy-on-write snapshot; and written through to PostgreSQL with its NOTIFY)
   against a full reload.

Figures are medians unless said otherwise. Not run by the test suite.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the throwaway server helpers of the tests

from endpointsec.policy import CasbinPolicy, PolicyConfig, build_policy  # noqa: E402
from endpointsec.policy.store import PostgresAdapter, secret_reader  # noqa: E402
from storage_support import Postgres, postgres_server  # noqa: E402

PW_ENV = "ENDPOINTSEC_BENCH_DB_PASSWORD"
RULES_PER_SERVICE = 10


def rules(n: int) -> list[tuple[str, list[str]]]:
    """~n p rules over n/10 services (templates, exact paths, some denies) + g rules."""
    out: list[tuple[str, list[str]]] = []
    services = max(1, n // RULES_PER_SERVICE)
    for k in range(services):
        sub = f"spiffe://example.org/ns/ns{k}/sa/svc{k}"
        for j in range(RULES_PER_SERVICE):
            if len(out) >= n:
                break
            obj = f"/api/svc{k}/res{j}/:id" if j % 3 else f"/api/svc{k}/static{j}"
            eft = "deny" if j == RULES_PER_SERVICE - 1 else "allow"
            out.append(("p", [sub, "*", obj, "GET" if j % 2 == 0 else "POST", eft]))
        if k % 10 == 0:
            out.append(("g", [sub, f"role{k % 50}", "*"]))
    return out


def requests(n: int, count: int = 3000) -> list[tuple[tuple[str, ...], str, str]]:
    services = max(1, n // RULES_PER_SERVICE)
    out = []
    for i in range(count):
        k = (i * 7919) % services
        sub = f"spiffe://example.org/ns/ns{k}/sa/svc{k}"
        j = i % RULES_PER_SERVICE
        kind = i % 3
        if kind == 0:  # allowed template
            out.append(((sub,), f"/api/svc{k}/res{j if j % 3 else 1}/{i}", "GET"))
        elif kind == 1:  # exact path
            out.append(((sub, "role:viewer"), f"/api/svc{k}/static{(j // 3) * 3}", "GET"))
        else:  # nothing matches
            out.append(((sub,), f"/api/other/{i}", "DELETE"))
    return out


def adapter(pg: Postgres, table: str, channel: str | None = None) -> PostgresAdapter:
    return PostgresAdapter(dsn=pg.dsn, table=table, notify_channel=channel,
                           password=secret_reader(env=PW_ENV, file=None, key="bench"))


def seed(pg: Postgres, table: str, n: int, tmp: Path) -> Path:
    a = adapter(pg, table)
    all_rules = rules(n)
    a.replace_rules(all_rules)
    a.close()
    csv = tmp / f"policy-{n}.csv"
    csv.write_text("".join(", ".join([t, *v]) + "\n" for t, v in all_rules))
    return csv


def evaluate_us(policy: CasbinPolicy, reqs: list[Any], rounds: int = 5) -> float:
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for subjects, path, action in reqs:
            policy.evaluate(subjects=subjects, resource=path, action=action)
        samples.append((time.perf_counter() - t0) / len(reqs) * 1e6)
    return statistics.median(samples)


def timed(fn: Any, rounds: int = 5) -> float:
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


# -- propagation (replica processes) -------------------------------------------------------

REPLICA = r"""
import json, sys, time
from endpointsec.policy import PolicyConfig, build_policy
from endpointsec.policy.watcher import PostgresWatcher
cfg = json.loads(sys.argv[1])
changes = int(sys.argv[2])
policy = build_policy(PolicyConfig(**cfg, watcher="none"))  # a watcher of our own below
SUB = "spiffe://example.org/bench/writer"
seen = set()
def hook(payloads):
    ok = policy._on_announcements(payloads)
    now = time.time()
    for i in range(changes):
        if i not in seen and policy.evaluate(subjects=[SUB], resource=f"/marker/{i}",
                                             action="GET").allowed:
            seen.add(i)
            print(json.dumps({"change": i, "t": now}), flush=True)
    return ok
watcher = PostgresWatcher(connect=policy._adapter.connect, channel=cfg["channel"])
policy._policy_watcher = watcher
watcher.start(hook)
while not watcher.connected.is_set():
    time.sleep(0.01)
print("ready", flush=True)
sys.stdin.read()
"""


def propagation(pg: Postgres, table: str, channel: str, replicas: int,
                changes: int) -> list[float]:
    cfg = {"database": pg.dsn, "database_password_env": PW_ENV, "table": table,
           "channel": channel}
    procs = [subprocess.Popen([sys.executable, "-c", REPLICA, json.dumps(cfg), str(changes)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(replicas)]
    try:
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            while line and line.strip() != "ready":
                line = p.stdout.readline()
            if not line:
                raise RuntimeError("a replica process exited before it was ready")
        writer = build_policy(PolicyConfig(**cfg))  # notifies in its write transaction
        assert isinstance(writer, CasbinPolicy)
        # The writer's own catch-up reload (after its watcher connects) holds the policy
        # lock: wait for it, so that the delays measure the replicas only.
        while not writer._policy_watcher.connected.is_set():  # type: ignore[attr-defined]
            time.sleep(0.01)
        started: list[float] = []
        for i in range(changes):
            started.append(time.time())
            writer.add_rules([("spiffe://example.org/bench/writer", "*", f"/marker/{i}",
                               "GET", "allow")])
            time.sleep(0.05)
        writer.close()
        delays: list[float] = []
        for p in procs:
            assert p.stdout is not None
            lines: list[str] = []
            reader = threading.Thread(target=_read_lines, args=(p.stdout, lines, changes),
                                      daemon=True)
            reader.start()
            reader.join(timeout=60)
            for line in lines:
                rec = json.loads(line)
                delays.append(rec["t"] - started[rec["change"]])
        return delays
    finally:
        for p in procs:
            if p.stdin is not None:
                p.stdin.close()
            p.terminate()
            p.wait(timeout=10)


def _read_lines(stream: Any, out: list[str], count: int) -> None:
    while len(out) < count:
        line = stream.readline()
        if not line:
            return
        out.append(line)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--changes", type=int, default=60)
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="10,000 rules instead of 100,000")
    args = ap.parse_args()
    big = 10_000 if args.quick else 100_000
    with postgres_server() as pg, tempfile.TemporaryDirectory() as tmpdir:
        os.environ[PW_ENV] = pg.password
        tmp = Path(tmpdir)

        print(f"## 1. Propagation delay ({args.replicas} replica processes, "
              f"{args.changes} changes of one rule through add_rules, PostgreSQL "
              "LISTEN/NOTIFY)\n")
        print("| rules | observations | p50 | p99 | max |\n|---:|---:|---:|---:|---:|")
        for n in (1000, big):
            seed(pg, f"prop_{n}", n, tmp)
            delays = propagation(pg, f"prop_{n}", f"bench_{n}", args.replicas, args.changes)
            expected = args.replicas * args.changes
            print(f"| {n:,} | {len(delays)}/{expected} | {pct(delays, .5) * 1e3:.1f} ms | "
                  f"{pct(delays, .99) * 1e3:.1f} ms | {max(delays) * 1e3:.1f} ms |")
        print()

        print("## 2. Decision cost, evaluate() in-process (µs per decision, "
              "mixed requests)\n")
        print("| rules | file-backed | database-backed |\n|---:|---:|---:|")
        loaded: dict[int, tuple[CasbinPolicy, Path]] = {}
        for n in (1000, big):
            csv = seed(pg, f"rules_{n}", n, tmp)
            file_policy = CasbinPolicy(policy=csv)
            db_policy = CasbinPolicy(adapter=adapter(pg, f"rules_{n}"))
            reqs = requests(n)
            cold_file = CasbinPolicy(policy=csv, cache_size=0)
            cold_db = CasbinPolicy(adapter=adapter(pg, f"rules_{n}"), cache_size=0)
            for p in (file_policy, db_policy):
                evaluate_us(p, reqs, rounds=1)  # warm the views
            gc.collect()
            times: dict[str, list[float]] = {"f": [], "d": [], "cf": [], "cd": []}
            for _ in range(9):  # interleaved, so that both meet the same machine state
                times["f"].append(evaluate_us(file_policy, reqs, rounds=1))
                times["d"].append(evaluate_us(db_policy, reqs, rounds=1))
                times["cf"].append(evaluate_us(cold_file, reqs, rounds=1))
                times["cd"].append(evaluate_us(cold_db, reqs, rounds=1))
            f_us, d_us, cold_f, cold_d = (statistics.median(times[k])
                                          for k in ("f", "d", "cf", "cd"))
            print(f"| {n:,} | {f_us:.2f} (uncached {cold_f:.2f}) | "
                  f"{d_us:.2f} (uncached {cold_d:.2f}) |")
            loaded[n] = (db_policy, csv)
        print()

        db_policy, csv = loaded[big]
        file_policy = CasbinPolicy(policy=csv)
        print(f"## 3. Full reload of {big:,} rules\n")
        t_db = timed(db_policy.reload, rounds=3)
        t_file = timed(file_policy.reload, rounds=3)
        print("| from | time |\n|---|---:|")
        print(f"| PostgreSQL (fetch + index) | {t_db * 1e3:.0f} ms |")
        print(f"| CSV file | {t_file * 1e3:.0f} ms |\n")

        print(f"## 4. Incremental add of 1 rule on {big:,} rules vs full reload\n")
        counter = iter(range(10**9))

        def add_engine() -> None:
            file_policy.add_rules([("spiffe://x/new", "*", f"/n/{next(counter)}", "GET",
                                    "allow")])

        def add_db() -> None:
            db_policy.add_rules([("spiffe://x/new", "*", f"/n/{next(counter)}", "GET",
                                  "allow")])

        t_eng = timed(add_engine, rounds=7)
        t_add_db = timed(add_db, rounds=7)
        print("| operation | time |\n|---|---:|")
        print(f"| add_rules, engine only (copy-on-write snapshot) | {t_eng * 1e3:.2f} ms |")
        print(f"| add_rules written through to PostgreSQL (+ NOTIFY) | "
              f"{t_add_db * 1e3:.2f} ms |")
        print(f"| full reload from PostgreSQL | {t_db * 1e3:.0f} ms |")
        db_policy.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
