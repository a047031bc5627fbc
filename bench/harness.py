"""The pieces of the contrast benchmark (``bench/contrast.py`` drives them).

- :func:`make_material` -- a CA, server and client certificates, an RS256 token and
  its public key, the Casbin policy padded to N lines, the endpointsec configurations;
- :func:`build_shim` -- the wrk LD_PRELOAD shim that loads the client certificate;
- :func:`nginx_conf` / :func:`haproxy_cfg` -- the sidecar configurations;
- :class:`Proc` -- a started server process, stopped by :meth:`Proc.stop`;
- :func:`cpu_ticks` / :func:`rss_kib` / :func:`process_tree` -- ``/proc`` accounting
  over every process of a configuration (children included);
- :func:`run_wrk` / :func:`parse_wrk` -- one bounded wrk run and its summary;
- :func:`median` / :func:`ratio` -- the statistics of the report.

Everything binds and targets 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"
ISSUER = "https://issuer.bench.test"
AUDIENCE = "orders-api"
CLIENT_SPIFFE = "spiffe://bench.test/ns/shop/sa/frontend"
CLIENT_CN = "frontend"
ORDER_PATH = "/orders/42"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


# --------------------------------------------------------------------------- material


@dataclass(frozen=True)
class Material:
    """Files generated for one benchmark run (all under ``root``)."""

    root: Path
    ca: Path
    server_cert: Path
    server_key: Path
    server_combined: Path  # HAProxy: certificate + key in one file
    client_cert: Path
    client_key: Path
    jwt_public: Path
    token: str
    policy_files: Mapping[int, Path] = field(default_factory=dict)


def policy_lines(n: int) -> list[str]:
    """A Casbin policy of ``n`` ``p`` lines; the one rule the benchmark needs is in the
    middle, the rest are rules for other services and paths."""
    n = max(n, 1)
    lines = [f"p, spiffe://bench.test/ns/filler/sa/svc-{i}, *, /filler{i}/:id, GET, allow"
             for i in range(n - 1)]
    lines.insert(len(lines) // 2, f"p, {CLIENT_SPIFFE}, *, /orders/:id, GET, allow")
    return lines


def make_token(key_pem: bytes, *, lifetime: int = 7200, roles: Sequence[str] = ("reader",),
               sub: str = "user-1") -> str:
    """An RS256 access token for the benchmark's issuer and audience."""
    import jwt

    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now, "nbf": now,
              "exp": now + lifetime, "roles": list(roles)}
    return jwt.encode(claims, key_pem, algorithm="RS256", headers={"kid": "bench"})


def make_material(root: Path, *, policy_sizes: Iterable[int] = (1000,)) -> Material:
    """Generate the PKI, token, policies and endpointsec configurations under ``root``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from endpointsec.testing.pki import CertificateAuthority

    root.mkdir(parents=True, exist_ok=True)
    ca = CertificateAuthority.create(name="endpointsec bench CA")
    ca_path, _ = ca.write(root, "ca")
    server = ca.issue_server(hostnames=("localhost", HOST))
    server_cert, server_key = server.write(root, "server")
    combined = root / "server-combined.pem"
    combined.touch(mode=0o600)
    combined.write_bytes(server.chain_pem + server.key_pem)
    client = ca.issue_client(spiffe_id=CLIENT_SPIFFE, common_name=CLIENT_CN)
    client_cert, client_key = client.write(root, "client")

    signing = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_pem = signing.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    jwt_public = root / "jwt-public.pem"
    jwt_public.write_bytes(signing.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    token = make_token(key_pem)

    policies: dict[int, Path] = {}
    for n in policy_sizes:
        path = root / f"policy-{n}.csv"
        path.write_text("\n".join(policy_lines(n)) + "\n", encoding="utf-8")
        policies[n] = path
    return Material(root=root, ca=ca_path, server_cert=server_cert, server_key=server_key,
                    server_combined=combined, client_cert=client_cert,
                    client_key=client_key, jwt_public=jwt_public, token=token,
                    policy_files=policies)


def endpointsec_toml(m: Material, *, policy: Path, source: str) -> str:
    """The endpointsec configuration shared by every endpointsec configuration.

    ``source`` is ``"asgi-tls"``, ``"gunicorn"``, ``"wsgi-environ"`` (the app terminates
    TLS) or ``"nginx"`` (nginx terminates TLS and forwards the certificate).
    """
    if source == "nginx":
        identity = (f'[identity]\ntrust_bundles = ["{m.ca}"]\n\n'
                    f'[proxy]\ntrusted = ["127.0.0.1/32"]\nsources = ["nginx"]\n')
    else:
        identity = f'[identity]\nsources = ["{source}"]\ntrust_bundles = ["{m.ca}"]\n'
    return (
        f"{identity}\n"
        f"[[tokens.issuers]]\nissuer = \"{ISSUER}\"\naudiences = [\"{AUDIENCE}\"]\n"
        f"algorithms = [\"RS256\"]\npublic_key = \"{m.jwt_public}\"\n\n"
        f"[policy]\npolicy = \"{policy}\"\n\n"
        f"[defaults]\nmtls = \"required\"\ntoken = \"required\"\n"
    )


def write_config(m: Material, name: str, *, policy: Path, source: str) -> Path:
    """Write :func:`endpointsec_toml` to ``ROOT/NAME.toml``."""
    path = m.root / f"{name}.toml"
    path.write_text(endpointsec_toml(m, policy=policy, source=source), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- sidecars


def nginx_conf(m: Material, *, name: str, port: int, upstream_port: int,
               forward_cert: bool, authz_port: int | None = None) -> str:
    """nginx terminating mTLS on ``port`` in front of ``upstream_port``.

    ``forward_cert``: pass the verified certificate to the app (configuration 5).
    ``authz_port``: ask an ext-authz service first (``auth_request``, configuration 7).
    """
    tmp = m.root / f"nginx-{name}"
    cert_headers = (
        "      proxy_set_header X-SSL-Client-Cert $ssl_client_escaped_cert;\n"
        "      proxy_set_header X-SSL-Client-Verify $ssl_client_verify;\n"
    )
    authz_upstream = authz_location = auth_request = ""
    if authz_port is not None:
        authz_upstream = (f"  upstream authz {{ server {HOST}:{authz_port}; "
                          f"keepalive 32; }}\n")
        auth_request = "      auth_request /_endpointsec_authz;\n"
        authz_location = (
            "    location = /_endpointsec_authz {\n"
            "      internal;\n"
            "      proxy_pass http://authz$request_uri;\n"
            "      proxy_method $request_method;\n"
            "      proxy_pass_request_body off;\n"
            "      proxy_set_header Content-Length \"\";\n"
            "      proxy_http_version 1.1;\n"
            "      proxy_set_header Connection \"\";\n"
            + cert_headers +
            "    }\n"
        )
    return (
        "worker_processes 1;\n"
        "daemon off;\n"
        "master_process on;\n"
        f"pid {tmp}/nginx.pid;\n"
        f"error_log {tmp}/error.log warn;\n"
        "events { worker_connections 1024; }\n"
        "http {\n"
        "  access_log off;\n"
        f"  client_body_temp_path {tmp}/body;\n"
        f"  proxy_temp_path {tmp}/proxy;\n"
        f"  fastcgi_temp_path {tmp}/fastcgi;\n"
        f"  uwsgi_temp_path {tmp}/uwsgi;\n"
        f"  scgi_temp_path {tmp}/scgi;\n"
        "  keepalive_requests 1000000;\n"
        f"  upstream app {{ server {HOST}:{upstream_port}; keepalive 32; }}\n"
        + authz_upstream +
        "  server {\n"
        f"    listen {HOST}:{port} ssl;\n"
        f"    ssl_certificate {m.server_cert};\n"
        f"    ssl_certificate_key {m.server_key};\n"
        f"    ssl_client_certificate {m.ca};\n"
        "    ssl_verify_client on;\n"
        "    location / {\n"
        + auth_request +
        "      proxy_pass http://app;\n"
        "      proxy_http_version 1.1;\n"
        "      proxy_set_header Connection \"\";\n"
        + (cert_headers if forward_cert else "") +
        "    }\n"
        + authz_location +
        "  }\n"
        "}\n"
    )


def haproxy_cfg(m: Material, *, port: int, upstream_port: int) -> str:
    """HAProxy 2.6 doing mTLS, native ``jwt_verify`` (RS256, iss, aud, exp) and an ACL
    equivalent to the Casbin rule, in front of the bare app on ``upstream_port``."""
    return f"""global
  nbthread 1
  maxconn 2000
  log stderr format short local0 err

defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  timeout http-keep-alive 30s
  option http-keep-alive

frontend bench
  bind {HOST}:{port} ssl crt {m.server_combined} ca-file {m.ca} verify required
  http-request set-var(txn.bearer) http_auth_bearer
  http-request set-var(txn.jwt_alg) var(txn.bearer),jwt_header_query('$.alg')
  http-request deny deny_status 401 unless {{ var(txn.jwt_alg) -m str RS256 }}
  http-request deny deny_status 401 unless {{ var(txn.bearer),\
jwt_verify(txn.jwt_alg,"{m.jwt_public}") -m int 1 }}
  http-request set-var(txn.iss) var(txn.bearer),jwt_payload_query('$.iss')
  http-request set-var(txn.aud) var(txn.bearer),jwt_payload_query('$.aud')
  http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('$.exp','int')
  http-request set-var(txn.now) date()
  http-request deny deny_status 401 unless {{ var(txn.iss) -m str {ISSUER} }}
  http-request deny deny_status 401 unless {{ var(txn.aud) -m str {AUDIENCE} }}
  http-request deny deny_status 401 if {{ var(txn.exp),sub(txn.now) -m int le 0 }}
  acl peer_ok ssl_c_s_dn(CN) -m str {CLIENT_CN}
  acl order_path path_reg ^/orders/[^/]+$
  http-request deny deny_status 403 unless METH_GET order_path peer_ok
  default_backend app

backend app
  http-reuse always
  server app {HOST}:{upstream_port}
"""


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, *, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None
              = None) -> None:
    """Wait until something accepts TCP connections on ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {HOST}:{port} after {timeout}s")


@dataclass
class Proc:
    """A server process started in its own session (stopped with its whole group)."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, name: str, argv: Sequence[str], *, log_dir: Path,
              env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Proc:
        log = log_dir / f"{name}.log"
        full_env = dict(os.environ)
        full_env.update(env or {})
        with log.open("wb") as out:
            popen = subprocess.Popen(
                list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=full_env, cwd=cwd, start_new_session=True)
        return cls(name=name, popen=popen, log=log)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, *, timeout: float = 5.0) -> None:
        """SIGTERM the process group, then SIGKILL after ``timeout``."""
        if self.popen.poll() is not None:
            return
        pgid = self.popen.pid  # start_new_session: the group is ours alone
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            self.popen.wait(timeout=timeout)
        # Workers may outlive a master that died first: end what is left of the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)

    def tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def pinned(argv: Sequence[str], cpus: str | None) -> list[str]:
    """``argv`` run on the CPUs ``cpus`` (a taskset list such as ``"0"``), when given and
    taskset exists; children inherit the affinity."""
    taskset = shutil.which("taskset")
    if not cpus or taskset is None:
        return list(argv)
    return [taskset, "-c", cpus, *argv]


def uvicorn_argv(app: str, *, port: int, tls: Material | None = None,
                 http: str = "httptools", factory: bool = False) -> list[str]:
    """One uvicorn worker serving ``app`` (``module:name`` in bench/)."""
    argv = [sys.executable, "-m", "uvicorn", app, "--app-dir", str(HERE),
            "--host", HOST, "--port", str(port), "--workers", "1", "--no-access-log",
            "--log-level", "warning", "--http", http, "--loop", "asyncio",
            "--lifespan", "off", "--timeout-keep-alive", "30"]
    if factory:
        argv.append("--factory")
    if tls is not None:
        argv += ["--ssl-certfile", str(tls.server_cert), "--ssl-keyfile", str(tls.server_key),
                 "--ssl-ca-certs", str(tls.ca), "--ssl-cert-reqs", str(int(ssl.CERT_REQUIRED))]
    return argv


def gunicorn_argv(app: str, *, port: int, tls: Material) -> list[str]:
    """One gunicorn gthread worker (keep-alive capable) serving ``app`` over mTLS."""
    return [sys.executable, "-m", "gunicorn", app, "--chdir", str(HERE),
            "--bind", f"{HOST}:{port}", "--workers", "1", "--worker-class", "gthread",
            "--threads", "4", "--keep-alive", "30", "--log-level", "warning",
            "--certfile", str(tls.server_cert), "--keyfile", str(tls.server_key),
            "--ca-certs", str(tls.ca), "--cert-reqs", str(int(ssl.CERT_REQUIRED))]


# --------------------------------------------------------------------------- /proc


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        rest = stat[stat.rfind(b")") + 2:].split()
        children.setdefault(int(rest[1]), []).append(int(entry))
    return children


def process_tree(roots: Iterable[int]) -> list[int]:
    """``roots`` and all their descendants that are alive now."""
    children = _children_map()
    out: list[int] = []
    stack = list(roots)
    while stack:
        pid = stack.pop()
        if pid in out or not os.path.exists(f"/proc/{pid}"):
            continue
        out.append(pid)
        stack.extend(children.get(pid, ()))
    return out


def parse_stat_ticks(stat: bytes) -> int:
    """utime + stime + cutime + cstime (clock ticks) from one ``/proc/PID/stat`` line.

    The reaped children's time (cutime, cstime) counts too: a configuration's cost
    includes whatever its processes started and waited for.
    """
    rest = stat[stat.rfind(b")") + 2:].split()
    # rest[0] is field 3 (state); utime is field 14, stime 15, cutime 16, cstime 17.
    return int(rest[11]) + int(rest[12]) + int(rest[13]) + int(rest[14])


def cpu_ticks(pids: Iterable[int]) -> dict[int, int]:
    """CPU ticks used so far by each process in ``pids`` (gone processes are skipped)."""
    out: dict[int, int] = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                out[pid] = parse_stat_ticks(f.read())
        except OSError:
            continue
    return out


def cpu_seconds_between(before: Mapping[int, int], after: Mapping[int, int]) -> float:
    """CPU seconds used between two :func:`cpu_ticks` snapshots (processes that
    appeared in between count from zero)."""
    ticks = sum(after[pid] - before.get(pid, 0) for pid in after)
    return ticks / CLK_TCK


def parse_status_rss(status: str) -> int:
    """VmRSS in KiB from a ``/proc/PID/status`` text (0 when absent: a zombie)."""
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def rss_kib(pids: Iterable[int]) -> int:
    """The summed resident set size of ``pids``, in KiB."""
    total = 0
    for pid in pids:
        try:
            total += parse_status_rss(Path(f"/proc/{pid}/status").read_text())
        except OSError:
            continue
    return total


# --------------------------------------------------------------------------- wrk


def build_shim(out_dir: Path) -> Path:
    """Compile the wrk client-certificate shim (needs gcc and the OpenSSL headers)."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise RuntimeError("gcc is needed to build the wrk client-certificate shim")
    out = out_dir / "wrk_client_cert.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(out),
                    str(HERE / "wrk_client_cert.c"), "-ldl", "-lssl"],
                   check=True, capture_output=True, timeout=60)
    return out


@dataclass(frozen=True)
class WrkResult:
    """One wrk run's summary (latencies in microseconds)."""

    requests: int
    duration_s: float
    errors: int
    non2xx: int
    p50: float
    p90: float
    p99: float
    max: float

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0


def parse_wrk(output: str) -> WrkResult:
    """Read the ``ENDPOINTSEC_BENCH {json}`` line that ``bench/report.lua`` prints."""
    for line in output.splitlines():
        if line.startswith("ENDPOINTSEC_BENCH "):
            data = json.loads(line.split(" ", 1)[1])
            errors = sum(int(data[k]) for k in ("connect_errors", "read_errors",
                                                 "write_errors", "timeouts"))
            return WrkResult(requests=int(data["requests"]),
                             duration_s=int(data["duration_us"]) / 1e6,
                             errors=errors, non2xx=int(data["status_errors"]),
                             p50=float(data["p50"]), p90=float(data["p90"]),
                             p99=float(data["p99"]), max=float(data["max"]))
    raise ValueError("no ENDPOINTSEC_BENCH line in wrk output:\n" + output[-2000:])


def wrk_argv(url: str, *, duration: float, connections: int, threads: int = 1,
             token: str | None = None, keepalive: bool = True) -> list[str]:
    """A bounded wrk run (``--timeout`` bounds each request, ``-d`` the run)."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    argv = [wrk, "-t", str(threads), "-c", str(connections), "-d", f"{max(duration, 1):.0f}s",
            "--timeout", "5s", "-s", str(HERE / "report.lua")]
    if token is not None:
        argv += ["-H", f"Authorization: Bearer {token}"]
    if not keepalive:
        argv += ["-H", "Connection: close"]
    return [*argv, url]


def run_wrk(url: str, *, duration: float, connections: int, shim: Path | None,
            material: Material | None, token: str | None, keepalive: bool = True,
            threads: int = 1, cpus: str | None = None) -> WrkResult:
    """Run wrk once against ``url``, with the client certificate when ``shim`` is given."""
    env = dict(os.environ)
    if shim is not None and material is not None:
        env["LD_PRELOAD"] = str(shim)
        env["WRK_CLIENT_CERT"] = str(material.client_cert)
        env["WRK_CLIENT_KEY"] = str(material.client_key)
    proc = subprocess.run(
        pinned(wrk_argv(url, duration=duration, connections=connections, threads=threads,
                        token=token, keepalive=keepalive), cpus),
        capture_output=True, text=True, env=env, timeout=duration + 30)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr[-1000:]}")
    return parse_wrk(proc.stdout)


# --------------------------------------------------------------------------- probes


def probe(port: int, *, tls: Material | None, path: str = ORDER_PATH,
          token: str | None = None, method: str = "GET", client_cert: bool = True,
          timeout: float = 5.0) -> int:
    """One request with Python's http.client; returns the status (0: the handshake or
    the connection failed)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    conn: http.client.HTTPConnection
    if tls is not None:
        ctx = ssl.create_default_context(cafile=str(tls.ca))
        if client_cert:
            ctx.load_cert_chain(str(tls.client_cert), str(tls.client_key))
        conn = http.client.HTTPSConnection(HOST, port, context=ctx, timeout=timeout)
    else:
        conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except (OSError, http.client.HTTPException):
        return 0
    finally:
        conn.close()


# --------------------------------------------------------------------------- statistics


def median(values: Iterable[float]) -> float:
    """The median (``nan`` for no values)."""
    vals = [v for v in values if v == v]
    return statistics.median(vals) if vals else float("nan")


def ratio(value: float, base: float) -> float:
    """``value / base`` (``nan`` when either is missing or ``base`` is 0)."""
    if value != value or base != base or base == 0:
        return float("nan")
    return value / base
