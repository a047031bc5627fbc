"""The pieces of the contrast benchmark (``bench/contrast.py`` drives them).

- :func:`make_material` -- a CA, server and client certificates, RS256 tokens (one
  per caller of the mix) and their public key, the Casbin policy padded to N lines, the
  endpointsec configurations;
- :func:`build_shim` -- the wrk LD_PRELOAD shim that loads the client certificate;
- :class:`Workload` / :func:`workload_lua` -- the requests wrk sends (the *mix*: random
  order ids, random callers, a share of requests the policy denies; or the *identical*
  request) and the Lua script that sends them and counts the statuses;
- :func:`check_statuses` -- whether a run's statuses are the ones its workload expects;
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
from typing import Any

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"
ISSUER = "https://issuer.bench.test"
AUDIENCE = "orders-api"
CLIENT_SPIFFE = "spiffe://bench.test/ns/shop/sa/frontend"
CLIENT_CN = "frontend"
ORDER_PATH = "/orders/42"
#: The request of the mix that every checking configuration denies (403): role reader
#: (and the client's workload) may only GET an order.
DENY_METHOD = "DELETE"
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
    #: Distinct valid tokens (distinct ``sub``, role reader) for the mix workload.
    tokens: tuple[str, ...] = ()


def policy_lines(n: int) -> list[str]:
    """A Casbin policy of ``n`` ``p`` lines; the two rules the benchmark needs are in the
    middle (the client's workload and role ``reader`` may GET an order; nothing else is
    allowed on orders, so ``DELETE /orders/{id}`` is denied), the rest are rules for
    other services and paths."""
    n = max(n, 2)
    lines = [f"p, spiffe://bench.test/ns/filler/sa/svc-{i}, *, /filler{i}/:id, GET, allow"
             for i in range(n - 2)]
    mid = len(lines) // 2
    lines[mid:mid] = [f"p, {CLIENT_SPIFFE}, *, /orders/:id, GET, allow",
                      "p, role:reader, *, /orders/:id, GET, allow"]
    return lines


def make_token(key_pem: Any, *, lifetime: int = 7200, roles: Sequence[str] = ("reader",),
               sub: str = "user-1") -> str:
    """An RS256 access token for the benchmark's issuer and audience (``key_pem``: the
    PEM bytes or, much faster for many tokens, the loaded private key)."""
    import jwt

    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now, "nbf": now,
              "exp": now + lifetime, "roles": list(roles)}
    return jwt.encode(claims, key_pem, algorithm="RS256", headers={"kid": "bench"})


def make_material(root: Path, *, policy_sizes: Iterable[int] = (1000,),
                  tokens: int = 0) -> Material:
    """Generate the PKI, tokens, policies and endpointsec configurations under ``root``.

    ``tokens``: how many distinct tokens to make for the mix (``sub`` ``user-1`` ...,
    role reader); the first is also :attr:`Material.token`."""
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
    jwt_public = root / "jwt-public.pem"
    jwt_public.write_bytes(signing.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    token = make_token(signing)
    many = (token, *(make_token(signing, sub=f"user-{i}") for i in range(2, tokens + 1)))

    policies: dict[int, Path] = {}
    for n in policy_sizes:
        path = root / f"policy-{n}.csv"
        path.write_text("\n".join(policy_lines(n)) + "\n", encoding="utf-8")
        policies[n] = path
    return Material(root=root, ca=ca_path, server_cert=server_cert, server_key=server_key,
                    server_combined=combined, client_cert=client_cert,
                    client_key=client_key, jwt_public=jwt_public, token=token,
                    policy_files=policies, tokens=many[:max(tokens, 1)])


#: Forwarded-certificate set-ups for :func:`endpointsec_toml`: ``[proxy]`` source and
#: whether endpointsec verifies the forwarded chain again.
PROXY_SOURCES = {
    "nginx": ("nginx", True),             # escaped PEM + X-SSL-Client-Verify
    "nginx-noverify": ("nginx", False),   # the same, relying on nginx's SUCCESS
    "client-cert": ("client-cert", True),  # RFC 9440 Client-Cert (no status: always)
    "haproxy": ("haproxy", True),         # base64 DER + X-SSL-Client-Verify
    "haproxy-noverify": ("haproxy", False),
}


def endpointsec_toml(m: Material, *, policy: Path, source: str, trusted: str = "127.0.0.1/32",
                     extra: str = "") -> str:
    """The endpointsec configuration shared by every endpointsec configuration.

    ``source`` is ``"asgi-tls"``, ``"gunicorn"``, ``"wsgi-environ"`` (the app terminates
    TLS) or a key of :data:`PROXY_SOURCES` (a proxy terminates TLS and forwards the
    certificate from ``trusted``, an address range or ``"unix"``). ``extra`` is
    appended as it is (more sections: a decision log, metrics ...).
    """
    if source in PROXY_SOURCES:
        name, again = PROXY_SOURCES[source]
        identity = (f'[identity]\ntrust_bundles = ["{m.ca}"]\n\n'
                    f'[proxy]\ntrusted = ["{trusted}"]\nsources = ["{name}"]\n'
                    + ("" if again else "verify_again = false\n"))
    else:
        identity = f'[identity]\nsources = ["{source}"]\ntrust_bundles = ["{m.ca}"]\n'
    text = (
        f"{identity}\n"
        f"[[tokens.issuers]]\nissuer = \"{ISSUER}\"\naudiences = [\"{AUDIENCE}\"]\n"
        f"algorithms = [\"RS256\"]\npublic_key = \"{m.jwt_public}\"\n\n"
        f"[policy]\npolicy = \"{policy}\"\n\n"
        f"[defaults]\nmtls = \"required\"\ntoken = \"required\"\n"
    )
    if extra:
        text += "\n" + extra.rstrip("\n") + "\n"
    return text


def write_config(m: Material, name: str, *, policy: Path, source: str,
                 trusted: str = "127.0.0.1/32", extra: str = "") -> Path:
    """Write :func:`endpointsec_toml` to ``ROOT/NAME.toml``."""
    path = m.root / f"{name}.toml"
    path.write_text(endpointsec_toml(m, policy=policy, source=source, trusted=trusted,
                                     extra=extra), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- sidecars


def nginx_conf(m: Material, *, name: str, port: int, upstream_port: int | None = None,
               forward_cert: bool, authz_port: int | None = None,
               upstream_unix: Path | None = None) -> str:
    """nginx terminating mTLS on ``port`` in front of ``upstream_port`` (or the Unix
    socket ``upstream_unix``), HTTP/1.1 keep-alive to the upstream.

    ``forward_cert``: pass the verified certificate to the app (``$ssl_client_escaped_cert``
    and ``$ssl_client_verify``, configurations NE*).
    ``authz_port``: ask an ext-authz service first (``auth_request``, configuration X).
    """
    if (upstream_port is None) == (upstream_unix is None):
        raise ValueError("give exactly one of upstream_port and upstream_unix")
    upstream = (f"{HOST}:{upstream_port}" if upstream_port is not None
                else f"unix:{upstream_unix}")
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
        f"  upstream app {{ server {upstream}; keepalive 32; }}\n"
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


#: What HAProxy forwards to the app: the RFC 9440 ``Client-Cert`` header, or its own
#: base64 DER header with its verification result (``[proxy] sources = ["haproxy"]``).
HAPROXY_FORWARD = {
    "client-cert": ("  http-request del-header Client-Cert\n"
                    "  http-request del-header Client-Cert-Chain\n"
                    "  http-request set-header Client-Cert :%[ssl_c_der,base64]:\n"),
    "haproxy": ("  http-request del-header X-SSL-Client-DER\n"
                "  http-request del-header X-SSL-Client-Verify\n"
                "  http-request set-header X-SSL-Client-DER %[ssl_c_der,base64]\n"
                "  http-request set-header X-SSL-Client-Verify %[ssl_c_verify]\n"),
}


def haproxy_cfg(m: Material, *, port: int, upstream_port: int, checks: bool = True,
                forward: str | None = None) -> str:
    """HAProxy 2.6 terminating mTLS on ``port`` in front of the app on ``upstream_port``
    (one thread, keep-alive to the app).

    ``checks``: native ``jwt_verify`` (RS256, iss, aud, exp) and an ACL equivalent to
    the Casbin policy (configuration H); ``forward``: a key of :data:`HAPROXY_FORWARD`,
    pass the certificate to endpointsec in the app (configurations HE*).
    """
    rules = ""
    if checks:
        rules = f"""  http-request set-var(txn.bearer) http_auth_bearer
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
"""
    if forward is not None:
        rules += HAPROXY_FORWARD[forward]
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
{rules}  default_backend app

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


def wait_unix(path: Path, *, timeout: float = 20.0,
              proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until something accepts connections on the Unix socket ``path``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
            s.settimeout(0.2)
            s.connect(str(path))
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {path} after {timeout}s")


@dataclass
class Proc:
    """A server process started in its own session (stopped with its whole group)."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    #: What the process is in its configuration ("app", "proxy", "authz"): CPU is
    #: reported per role.
    role: str = "app"

    @classmethod
    def start(cls, name: str, argv: Sequence[str], *, log_dir: Path,
              env: Mapping[str, str] | None = None, cwd: Path | None = None,
              role: str = "app") -> Proc:
        log = log_dir / f"{name}.log"
        full_env = dict(os.environ)
        full_env.update(env or {})
        with log.open("wb") as out:
            popen = subprocess.Popen(
                list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=full_env, cwd=cwd, start_new_session=True)
        return cls(name=name, popen=popen, log=log, role=role)

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


def uvicorn_argv(app: str, *, port: int | None, tls: Material | None = None,
                 http: str = "httptools", factory: bool = False,
                 uds: Path | None = None) -> list[str]:
    """One uvicorn worker serving ``app`` (``module:name`` in bench/) on ``port``, or on
    the Unix socket ``uds``."""
    bind = ["--uds", str(uds)] if uds is not None else ["--host", HOST, "--port", str(port)]
    argv = [sys.executable, "-m", "uvicorn", app, "--app-dir", str(HERE),
            *bind, "--workers", "1", "--no-access-log",
            "--log-level", "warning", "--http", http, "--loop", "asyncio",
            "--lifespan", "off", "--timeout-keep-alive", "30",
            # The peer must stay the connection's own (a proxy's forwarded headers count
            # only from a trusted peer): no X-Forwarded-For rewriting.
            "--no-proxy-headers"]
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
class Workload:
    """What wrk sends.

    *mix* (the headline): ``GET /orders/{id}`` with ``id`` drawn from ``1..paths``, a
    bearer token drawn from ``tokens`` distinct ones, and a share ``deny_share`` of
    ``DELETE /orders/{id}`` that every checking configuration must refuse with 403.
    *identical*: ``paths=1, tokens=1, deny_share=0``, the same ``GET /orders/42`` again
    and again (what a cache keyed on the whole request flatters).
    """

    name: str
    paths: int
    tokens: int
    deny_share: float

    def __post_init__(self) -> None:
        if self.paths < 1 or self.tokens < 1:
            raise ValueError("paths and tokens must be at least 1")
        if not 0.0 <= self.deny_share < 1.0:
            raise ValueError("deny_share must be in [0, 1)")


IDENTICAL = Workload("identical", paths=1, tokens=1, deny_share=0.0)


def _lua_string(value: str) -> str:
    """A Lua string literal (the values here are tokens and host names: printable
    ASCII; anything else is refused rather than escaped wrongly)."""
    if not value.isascii() or not value.isprintable():
        raise ValueError("only printable ASCII goes into the wrk script")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


_LUA_BODY = r"""
local n_tokens = #heads
local pick_token = function() return heads[math.random(n_tokens)] end
local pick_id = function() return math.random(n_paths) end
if n_paths == 1 then
   pick_id = function() return 42 end
end

counts = {}
sent_allow = 0
sent_deny = 0
local threads = {}

function setup(thread)
   table.insert(threads, thread)
   thread:set("thread_no", #threads)
end

function init(args)
   math.randomseed(seed + (thread_no or 0) * 7919)
   local host = "Host: " .. wrk.headers["Host"] .. "\r\n"
   for i = 1, n_tokens do
      heads[i] = host .. "Authorization: Bearer " .. heads[i] .. "\r\n" .. extra .. "\r\n"
   end
   if n_tokens == 1 then
      local only = heads[1]
      pick_token = function() return only end
   end
end

function request()
   local id = pick_id()
   if deny_share > 0 and math.random() < deny_share then
      sent_deny = sent_deny + 1
      return deny_method .. " /orders/" .. id .. " HTTP/1.1\r\n" .. pick_token()
   end
   sent_allow = sent_allow + 1
   return "GET /orders/" .. id .. " HTTP/1.1\r\n" .. pick_token()
end

function response(status, headers, body)
   counts[status] = (counts[status] or 0) + 1
end

function done(summary, latency, requests)
   local total = {}
   local allow, deny = 0, 0
   for _, t in ipairs(threads) do
      for status, n in pairs(t:get("counts")) do
         total[status] = (total[status] or 0) + n
      end
      allow = allow + t:get("sent_allow")
      deny = deny + t:get("sent_deny")
   end
   local parts = {}
   for status, n in pairs(total) do
      table.insert(parts, string.format("\"%d\": %d", status, n))
   end
   local e = summary.errors
   io.write(string.format(
      "ENDPOINTSEC_BENCH {\"requests\": %d, \"duration_us\": %d, \"bytes\": %d, " ..
      "\"connect_errors\": %d, \"read_errors\": %d, \"write_errors\": %d, " ..
      "\"status_errors\": %d, \"timeouts\": %d, \"p50\": %d, \"p90\": %d, " ..
      "\"p99\": %d, \"p999\": %d, \"max\": %d, \"mean\": %.1f, " ..
      "\"sent_allow\": %d, \"sent_deny\": %d, \"statuses\": {%s}}\n",
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9), latency.max, latency.mean,
      allow, deny, table.concat(parts, ", ")))
end
"""


def workload_lua(w: Workload, tokens: Sequence[str], *, keepalive: bool = True,
                 seed: int = 1) -> str:
    """The wrk script for ``w``: ``request()`` draws the order id, the token and (with
    probability ``deny_share``) the denied method for each request; ``response()``
    counts the statuses; ``done()`` prints one ``ENDPOINTSEC_BENCH {json}`` line with
    wrk's percentiles, the statuses and how many allowed / denied requests were sent.

    The tokens are written into the script: it is generated at run time into the
    run's temporary folder, never committed."""
    if len(tokens) < w.tokens:
        raise ValueError(f"the workload needs {w.tokens} tokens, {len(tokens)} given")
    heads = ",\n".join(_lua_string(t) for t in tokens[:w.tokens])
    extra = "" if keepalive else r'"Connection: close\r\n"'
    return (
        f"-- wrk script generated by bench/harness.py: workload {w.name!r}\n"
        f"local heads = {{\n{heads}\n}}\n"
        f"local n_paths = {int(w.paths)}\n"
        f"local deny_share = {float(w.deny_share)!r}\n"
        f"local deny_method = {_lua_string(DENY_METHOD)}\n"
        f"local extra = {extra or chr(34) * 2}\n"
        f"local seed = {int(seed)}\n"
        + _LUA_BODY
    )


@dataclass(frozen=True)
class WrkResult:
    """One wrk run's summary (latencies in microseconds).

    ``statuses``, ``sent_allow`` and ``sent_deny`` come from a :func:`workload_lua`
    script (empty / 0 with ``report.lua``)."""

    requests: int
    duration_s: float
    errors: int
    non2xx: int
    p50: float
    p90: float
    p99: float
    max: float
    statuses: Mapping[int, int] = field(default_factory=dict)
    sent_allow: int = 0
    sent_deny: int = 0

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0


def parse_wrk(output: str) -> WrkResult:
    """Read the ``ENDPOINTSEC_BENCH {json}`` line that ``bench/report.lua`` or a
    :func:`workload_lua` script prints."""
    for line in output.splitlines():
        if line.startswith("ENDPOINTSEC_BENCH "):
            data = json.loads(line.split(" ", 1)[1])
            errors = sum(int(data[k]) for k in ("connect_errors", "read_errors",
                                                 "write_errors", "timeouts"))
            return WrkResult(requests=int(data["requests"]),
                             duration_s=int(data["duration_us"]) / 1e6,
                             errors=errors, non2xx=int(data["status_errors"]),
                             p50=float(data["p50"]), p90=float(data["p90"]),
                             p99=float(data["p99"]), max=float(data["max"]),
                             statuses={int(k): int(v)
                                       for k, v in data.get("statuses", {}).items()},
                             sent_allow=int(data.get("sent_allow", 0)),
                             sent_deny=int(data.get("sent_deny", 0)))
    raise ValueError("no ENDPOINTSEC_BENCH line in wrk output:\n" + output[-2000:])


def check_statuses(res: WrkResult, *, checks: bool, connections: int) -> list[str]:
    """What is wrong with ``res``'s statuses for its workload (empty: nothing).

    A configuration that checks must answer the denied requests 403 and the others 200;
    one that does not check must answer everything 200. Requests still in flight when
    wrk stopped (at most one per connection) and requests lost to socket errors were
    sent but not answered, and wrk calls ``request()`` once more at start-up to check
    the script: the counts may differ by that much, no more. Any other status is a
    problem."""
    slack = connections + 1 + res.errors
    got = dict(res.statuses)
    ok200 = got.pop(200, 0)
    ok403 = got.pop(403, 0) if checks else 0
    problems = [f"{n} answered {status}" for status, n in sorted(got.items()) if n]
    expect200 = res.sent_allow if checks else res.sent_allow + res.sent_deny
    expect403 = res.sent_deny if checks else 0
    if not 0 <= expect200 - ok200 <= slack:
        problems.append(f"{ok200} answered 200, {expect200} expected")
    if not 0 <= expect403 - ok403 <= slack:
        problems.append(f"{ok403} answered 403, {expect403} expected")
    if res.requests == 0:
        problems.append("no request answered")
    return problems


def wrk_argv(url: str, *, duration: float, connections: int, threads: int = 1,
             token: str | None = None, keepalive: bool = True,
             script: Path | None = None) -> list[str]:
    """A bounded wrk run (``--timeout`` bounds each request, ``-d`` the run).

    With ``script`` (a :func:`workload_lua` file) the script writes every request;
    otherwise ``report.lua`` and the same request each time (``token``, ``keepalive``).
    """
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    argv = [wrk, "-t", str(threads), "-c", str(connections), "-d", f"{max(duration, 1):.0f}s",
            "--timeout", "5s", "-s", str(script or HERE / "report.lua")]
    if script is None:
        if token is not None:
            argv += ["-H", f"Authorization: Bearer {token}"]
        if not keepalive:
            argv += ["-H", "Connection: close"]
    return [*argv, url]


def wrk_env(shim: Path | None, material: Material | None) -> dict[str, str]:
    """wrk's environment: the client-certificate shim when ``shim`` is given."""
    env = dict(os.environ)
    if shim is not None and material is not None:
        env["LD_PRELOAD"] = str(shim)
        env["WRK_CLIENT_CERT"] = str(material.client_cert)
        env["WRK_CLIENT_KEY"] = str(material.client_key)
    return env


def run_wrk(url: str, *, duration: float, connections: int, shim: Path | None,
            material: Material | None, token: str | None = None, keepalive: bool = True,
            threads: int = 1, cpus: str | None = None,
            script: Path | None = None) -> WrkResult:
    """Run wrk once against ``url``, with the client certificate when ``shim`` is given."""
    proc = subprocess.run(
        pinned(wrk_argv(url, duration=duration, connections=connections, threads=threads,
                        token=token, keepalive=keepalive, script=script), cpus),
        capture_output=True, text=True, env=wrk_env(shim, material), timeout=duration + 30)
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
