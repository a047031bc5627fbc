"""``endpointsec demo``: the whole product in one command.

Creates a throwaway PKI and token issuer in a temporary directory, starts the FastAPI
orders example over real mutual TLS on 127.0.0.1 with uvicorn and endpointsec's
certificate-passing protocol, sends requests as several callers, prints a table of what
happened and why (each decision's explanation), then stops everything. The exit status
is 0 when every request got the answer the example's policy promises.

The example ships inside the package (``endpointsec/cli/_demo``, the same files as the
repository's ``examples/fastapi_app``), so the demo runs from an installed wheel. It
never runs code found outside the package unless ``--example DIR`` names it.

Needs FastAPI and uvicorn: ``pip install 'endpointsec[fastapi,uvicorn]'``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
import logging
import os
import re
import shutil
import socket
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from endpointsec.facts import Decision

__all__ = ["DEMO_EXAMPLE", "prepare_example", "register", "run_demo"]

TRUST_DOMAIN = "shop.local"
WEB = f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/web"
ADMIN = f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/admin-console"

#: The orders example shipped with the package: ``app.py``, ``endpointsec.toml``,
#: ``policy.csv``. The demo runs this copy, never one found next to the installation.
DEMO_EXAMPLE = Path(__file__).resolve().parent / "_demo"


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "demo", help="run the FastAPI example over real mTLS and show the decisions",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--example", type=Path, default=None, metavar="DIR",
                   help="run the app.py, endpointsec.toml and policy.csv of this directory "
                        "(its code is executed) instead of the example shipped with "
                        "endpointsec")
    p.add_argument("--keep", type=Path, default=None, metavar="DIR",
                   help="also copy the generated PKI and configuration to this directory")
    p.set_defaults(handler=lambda args: run_demo(example=args.example, keep=args.keep))


@dataclass(frozen=True)
class Scenario:
    caller: str
    method: str
    path: str
    expect: int | str
    cert: str | None = None
    token: str | None = None
    body: dict[str, Any] | None = None


class _DecisionLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.decisions: list[Decision] = []
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        decision = getattr(record, "endpointsec_decision", None)
        if isinstance(decision, Decision):
            with self._lock:
                self.decisions.append(decision)

    def take(self) -> Decision | None:
        with self._lock:
            last = self.decisions[-1] if self.decisions else None
            self.decisions.clear()
        return last


def _require_server_stack() -> None:
    missing = [name for name in ("fastapi", "uvicorn", "httptools")
               if importlib.util.find_spec(name) is None]
    if missing:
        raise SystemExit(
            f"endpointsec demo: {', '.join(missing)} not installed; the demo serves a FastAPI "
            "app with uvicorn: pip install 'endpointsec[fastapi,uvicorn]'")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _load_app(example: Path, config: Path) -> Any:
    """Execute ``example/app.py`` (the packaged example unless ``--example`` named another
    directory) with ``ENDPOINTSEC_CONFIG`` pointing at the demo's configuration."""
    spec = importlib.util.spec_from_file_location("endpointsec_demo_app", example / "app.py")
    if spec is None or spec.loader is None:
        raise SystemExit(f"endpointsec demo: cannot load {example / 'app.py'}")
    module = importlib.util.module_from_spec(spec)
    previous = os.environ.get("ENDPOINTSEC_CONFIG")
    os.environ["ENDPOINTSEC_CONFIG"] = str(config)
    try:
        spec.loader.exec_module(module)
    finally:
        if previous is None:
            del os.environ["ENDPOINTSEC_CONFIG"]
        else:
            os.environ["ENDPOINTSEC_CONFIG"] = previous
    return module.app


@contextlib.contextmanager
def _serve(app: Any, *, port: int, pki: Path) -> Iterator[None]:
    import uvicorn

    from endpointsec.servers.uvicorn import HttpToolsProtocol

    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="error", lifespan="off",
        http=HttpToolsProtocol, ssl_certfile=str(pki / "server.pem"),
        ssl_keyfile=str(pki / "server.key"), ssl_ca_certs=str(pki / "ca.pem"),
        ssl_cert_reqs=ssl.CERT_OPTIONAL, proxy_headers=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="endpointsec-demo-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise SystemExit("endpointsec demo: the server did not start")
        time.sleep(0.05)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def prepare_example(work: Path, example: Path, *, issuer_url: str, port: int) -> Path:
    """Copy an example's configuration and policy to ``work``, pointing its token issuer
    at ``issuer_url`` and its server at ``port``; return the configuration path."""
    text = (example / "endpointsec.toml").read_text()
    text = re.sub(r'(?m)^issuer = ".*"$', f'issuer = "{issuer_url}"', text)
    text = re.sub(r'(?m)^jwks_url = ".*"$',
                  f'jwks_url = "{issuer_url}/.well-known/jwks.json"', text)
    text = re.sub(r"(?m)^port = \d+$", f"port = {port}", text)
    config = work / "endpointsec.toml"
    config.write_text(text)
    shutil.copy(example / "policy.csv", work / "policy.csv")
    return config


def run_demo(*, example: Path | None = None, keep: Path | None = None) -> int:
    """Run the demo; return 0 when every answer matched the example's policy."""
    import httpx

    from endpointsec.testing.pki import CertificateAuthority
    from endpointsec.testing.tokens import TokenIssuer

    _require_server_stack()
    example = DEMO_EXAMPLE if example is None else example
    log = _DecisionLog()
    decision_logger = logging.getLogger("endpointsec.decision")
    decision_logger.addHandler(log)
    old_level = decision_logger.level
    decision_logger.setLevel(logging.DEBUG)
    decision_logger.propagate = False
    try:
        with tempfile.TemporaryDirectory(prefix="endpointsec-demo-") as tmp:
            work = Path(tmp)
            pki = work / "pki"
            print("endpointsec demo: creating a throwaway PKI and token issuer in", work)
            ca = CertificateAuthority.create(name="shop.local demo CA")
            ca.write(pki)
            ca.issue_server(hostnames=["localhost", "127.0.0.1"]).write(pki, "server")
            ca.issue_client(spiffe_id=WEB).write(pki, "web")
            ca.issue_client(spiffe_id=ADMIN).write(pki, "admin-console")
            CertificateAuthority.create(name="rogue CA").issue_client(spiffe_id=WEB).write(
                pki, "impostor")
            issuer = TokenIssuer(algorithm="ES256", audience="orders")
            with issuer.serve():
                forger = TokenIssuer(algorithm="ES256", audience="orders", issuer=issuer.issuer)
                port = _free_port()
                config = prepare_example(work, example, issuer_url=issuer.issuer, port=port)
                app = _load_app(example, config)
                if keep is not None:
                    shutil.copytree(work, keep, dirs_exist_ok=True)
                alice = issuer.issue(sub="alice", roles=["customer"])
                bob = issuer.issue(sub="bob", roles=["support"])
                carol = issuer.issue(sub="carol", roles=["admin"])
                expired = issuer.issue(sub="alice", roles=["customer"],
                                       exp=dt.timedelta(minutes=-10))
                forged = forger.issue(sub="mallory", roles=["admin"])
                scenarios = [
                    Scenario("web", "GET", "/orders", 200, cert="web"),
                    Scenario("web + alice (customer)", "POST", "/orders", 201, cert="web",
                             token=alice, body={"item": "mouse"}),
                    Scenario("web + alice (customer)", "DELETE", "/orders/1", 403,
                             cert="web", token=alice),
                    Scenario("admin-console + bob (support)", "DELETE", "/orders/1", 403,
                             cert="admin-console", token=bob),
                    Scenario("admin-console + carol (admin)", "DELETE", "/orders/1", 200,
                             cert="admin-console", token=carol),
                    Scenario("admin-console", "GET", "/admin/stats", 200,
                             cert="admin-console"),
                    Scenario("admin-console", "GET", "/admin/debug/vars", 403,
                             cert="admin-console"),
                    Scenario("web", "GET", "/admin/stats", 403, cert="web"),
                    Scenario("(no certificate)", "GET", "/orders", 401),
                    Scenario("(no certificate)", "GET", "/healthz", 200),
                    Scenario("web + expired token", "POST", "/orders", 401, cert="web",
                             token=expired, body={"item": "mouse"}),
                    Scenario("web + forged token", "GET", "/orders", 401, cert="web",
                             token=forged),
                    Scenario("web, path trick", "GET", "/healthz/%2e%2e/admin/stats", 400,
                             cert="web"),
                    Scenario("web, NUL in path", "GET", "/orders/1%00", 400, cert="web"),
                    Scenario("impostor (rogue CA, web's SPIFFE ID)", "GET", "/orders",
                             "TLS refused", cert="impostor"),
                ]
                with _serve(app, port=port, pki=pki):
                    rows = [_run(s, pki=pki, port=port, log=log, httpx=httpx)
                            for s in scenarios]
    finally:
        decision_logger.removeHandler(log)
        decision_logger.setLevel(old_level)
        decision_logger.propagate = True
    return _report(rows)


def _run(s: Scenario, *, pki: Path, port: int, log: _DecisionLog, httpx: Any) -> tuple[
    Scenario, str, Decision | None
]:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if s.cert:
        ctx.load_cert_chain(pki / f"{s.cert}.pem", pki / f"{s.cert}.key")
    headers = {"authorization": f"Bearer {s.token}"} if s.token else {}
    log.take()
    try:
        with httpx.Client(verify=ctx, timeout=10) as client:
            r = client.request(s.method, f"https://127.0.0.1:{port}{s.path}", headers=headers,
                               json=s.body)
        got = str(r.status_code)
    except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError, ssl.SSLError):
        got = "TLS refused"
    return s, got, log.take()


def _report(rows: list[tuple[Scenario, str, Decision | None]]) -> int:
    failures = 0
    print()
    print(f"{'#':>2}  {'caller':<38} {'request':<38} {'expect':>11} {'got':>11}  why")
    print("-" * 140)
    for i, (s, got, decision) in enumerate(rows, 1):
        ok = got == str(s.expect)
        failures += not ok
        why = _why(decision, got)
        mark = "" if ok else "   <-- UNEXPECTED"
        request = f"{s.method} {s.path}"
        print(f"{i:>2}  {s.caller:<38} {request:<38} {s.expect!s:>11} {got:>11}  {why}{mark}")
    print("-" * 140)
    total = len(rows)
    print(f"{total - failures} of {total} requests got the answer the policy promises.")
    print("Every decision above came from endpointsec.decide(); 'rule' is the Casbin rule "
          "that matched.")
    return 0 if failures == 0 else 1


def _why(decision: Decision | None, got: str) -> str:
    if decision is None:
        if got == "TLS refused":
            return "the TLS handshake failed: the certificate does not chain to the CA"
        return "(no decision logged)"
    rule = ", ".join(decision.matched_rule) if decision.matched_rule else None
    text = decision.reason
    if rule and rule not in text:
        text += f"  [rule: {rule}]"
    return text


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_demo())
