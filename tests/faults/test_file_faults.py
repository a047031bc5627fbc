"""The policy file and the trust bundle go bad while requests are being served.

uvicorn serves the ASGI middleware over real mutual TLS; keep-alive clients keep
sending requests (allowed and denied ones) while the files are corrupted, removed and
replaced. Expectations: not one answer differs from the last good state while a bad
file is in place; a log line names what failed; a valid new file takes over.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from faults_support import (
    POLICY,
    FaultsPki,
    client,
    mtls_server,
    replace_file,
    wait_for,
    whoami,
)

from endpointsec import ASGIMiddleware, Config

pytestmark = pytest.mark.slow


def make_app(pki: FaultsPki, policy: Path, bundle: Path) -> ASGIMiddleware:
    return ASGIMiddleware(whoami, config=Config.from_mapping({
        "identity": {"sources": ["asgi-tls"], "trust_bundles": [str(bundle)],
                     "require_spiffe": True, "reload_interval": 0.1},
        "policy": {"policy": str(policy), "watch": True, "watch_interval": 0.05},
        "defaults": {"mtls": "required", "token": "none"},
    }))


#: (path, expected status) for the web workload under the good policy.
REQUESTS = [("/orders", 200), ("/orders/{n}", 200), ("/admin/stats", 403),
            ("/admin/debug/{n}", 403), ("/billing", 403)]


@contextmanager
def hammering(url: str, pki: FaultsPki, *, who: str = "web", expect: int | None = None,
              threads: int = 3) -> Iterator[Counter[str]]:
    """Keep-alive clients send REQUESTS until the block ends; yields the tally of
    ``"expected->got"`` (``expect`` overrides every expectation)."""
    tally: Counter[str] = Counter()
    stop = threading.Event()
    errors: list[BaseException] = []

    def run(seed: int) -> None:
        rng = random.Random(seed)
        try:
            with client(pki, who) as http:
                while not stop.is_set():
                    path, status = rng.choice(REQUESTS)
                    got = http.get(url + path.format(n=rng.randrange(10_000))).status_code
                    tally[f"{expect or status}->{got}"] += 1
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    try:
        yield tally
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=30)
    assert not errors, errors


def logged(caplog: pytest.LogCaptureFixture, logger: str, text: str) -> Callable[[], bool]:
    return lambda: any(r.name == logger and text in r.getMessage() for r in caplog.records)


def only_expected(tally: Counter[str]) -> None:
    wrong = {k: v for k, v in tally.items() if k.split("->")[0] != k.split("->")[1]}
    assert not wrong, tally
    assert sum(tally.values()) > 20, tally


POLICY_SAME_ANSWERS = "# reordered, one unrelated rule more\n" + "".join(
    reversed(POLICY.splitlines(keepends=True))) + "p, billing, *, /billing, GET, allow\n"

#: (id, bytes written in place, what the log line says)
CORRUPT_POLICIES = [
    ("too-few-fields", b"p, web, *, /admin/*\n", "has 3 values after 'p'"),
    ("truncated-mid-line", POLICY.encode()[:40], "has 2 values after 'p'"),
    ("not-utf8", b"\xff\xfe\x00p, web\n", "policy.csv:1: is not UTF-8"),
    ("deny-rule-type-damaged", POLICY.replace("p, web, *, /admin/*, GET, deny",
                                              "q, web, *, /admin/*, GET, deny").encode(),
     "has rule type 'q'"),
    ("emptied-mid-write", b"", "has no rules"),
    ("comments-only", b"# p, web, *, /orders, GET, allow\n", "has no rules"),
    ("removed", None, "file not found"),
]


def test_policy_corrupted_mid_load(pki: FaultsPki, policy_file: Path,
                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="endpointsec.policy")
    app = make_app(pki, policy_file, pki.bundle)
    with mtls_server(app, pki) as url:
        with hammering(url, pki) as tally:
            for generation, (name, data, reason) in enumerate(CORRUPT_POLICIES, start=1):
                caplog.clear()
                if data is None:
                    policy_file.unlink()
                else:
                    policy_file.write_bytes(data)
                wait_for(logged(caplog, "endpointsec.policy",
                                "policy reload failed; keeping the last good policy"),
                         what=f"the {name} policy to be refused")
                assert logged(caplog, "endpointsec.policy", reason)(), (
                    name, [r.getMessage() for r in caplog.records])
                assert logged(caplog, "endpointsec.policy", str(policy_file))(), name
                time.sleep(0.2)  # requests against the bad file in place
                # A valid version with the same answers is taken (and counted).
                replace_file(policy_file, (POLICY_SAME_ANSWERS if generation % 2 else
                                           POLICY).encode())
                wait_for(logged(caplog, "endpointsec.policy",
                                f"policy reloaded (generation {generation}"),
                         what="the valid policy to be loaded")
        only_expected(tally)
        # A valid version with other answers takes over, and keeps them.
        replace_file(policy_file, POLICY.replace("/admin/*, GET, deny",
                                                 "/admin/*, GET, allow").encode())
        with client(pki) as http:
            wait_for(lambda: http.get(url + "/admin/stats").status_code == 200,
                     what="the new policy")
            assert {http.get(url + "/admin/stats").status_code for _ in range(20)} == {200}
            assert http.get(url + "/billing").status_code == 403


def test_trust_bundle_replaced_mid_load(pki: FaultsPki, policy_file: Path, tmp_path: Path,
                                        caplog: pytest.LogCaptureFixture) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(pki.ca.cert_pem)
    app = make_app(pki, policy_file, bundle)
    with mtls_server(app, pki) as url:
        with hammering(url, pki) as tally, \
                hammering(url, pki, who="web-ca2", expect=401, threads=1) as refused:
            for name, data in (("garbage", b"-----BEGIN CERTIFICATE-----\nAAAA\n"),
                               ("empty", b""), ("not-pem", b"\x00" * 64)):
                caplog.clear()
                bundle.write_bytes(data)
                wait_for(logged(caplog, "endpointsec.identity",
                                "reload failed"), what=f"the {name} bundle to be refused")
                assert logged(caplog, "endpointsec.identity", str(bundle))(), (
                    name, [r.getMessage() for r in caplog.records])
                assert logged(caplog, "endpointsec.identity", "keeping the last good")()
                time.sleep(0.3)
        only_expected(tally)
        only_expected(refused)
        # A valid new bundle: CA 2 replaces CA 1.
        replace_file(bundle, pki.ca2.cert_pem)
        with client(pki, "web-ca2") as new, client(pki, "web") as old:
            wait_for(lambda: new.get(url + "/orders").status_code == 200,
                     what="the new bundle")
            # Once refused, never allowed again (a remembered decision, where the
            # middleware keeps one for a second, has expired after 1.1 s).
            wait_for(lambda: old.get(url + "/orders").status_code == 401,
                     what="the old CA to be refused")
            time.sleep(1.1)
            assert {old.get(url + p).status_code for p in ("/orders", "/orders/1")
                    for _ in range(5)} == {401}
            assert {new.get(url + "/orders/1").status_code for _ in range(5)} == {200}
