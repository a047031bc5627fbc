"""Cost of reading a forwarded client certificate, per header (µs), printed as a table.

::

    .venv/bin/python bench/forwarded_bench.py [--number N]

Three rows per proxy format: the bare parser on one header value, the source's
``from_asgi`` on a realistic scope from a trusted peer (header scan + trust check +
parse), and the same scope from an untrusted peer (the header is ignored). The chain
verification that follows (identity/verify.py) is not included: it is the same for
every source and is cached per chain.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import timeit
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from cryptography.hazmat.primitives.serialization import Encoding

from endpointsec.identity.forwarded import ProxyConfig, build_proxy_sources
from endpointsec.identity.forwarded_parsers import (
    parse_base64_der,
    parse_escaped_pem,
    parse_sf_binary,
    parse_sf_binary_list,
    parse_traefik,
    parse_xfcc,
)
from endpointsec.testing.pki import CertificateAuthority


def _pem(der: bytes) -> str:
    body = base64.b64encode(der).decode()
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"


def _time(fn: Callable[[], Any], number: int) -> float:
    """Best of 7 runs, µs per call (the minimum is the least disturbed by other load)."""
    runs = timeit.repeat(fn, number=number, repeat=7)
    return min(runs) / number * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--number", type=int, default=2000)
    args = ap.parse_args()

    ca = CertificateAuthority.create()
    inter = ca.intermediate()
    leaf = inter.issue_client(spiffe_id="spiffe://example.org/ns/shop/sa/orders").der
    inter_der = inter.certificate.public_bytes(Encoding.DER)
    b64 = base64.b64encode
    digest = hashlib.sha256(leaf).hexdigest()
    xfcc = (f'By=spiffe://example.org/ns/shop/sa/api;Hash={digest};'
            f'Cert="{quote(_pem(leaf), safe="")}";'
            f'Subject="";URI=spiffe://example.org/ns/shop/sa/orders')
    xfcc_chain = (f'By=spiffe://example.org/ns/shop/sa/api;Hash={digest};'
                  f'Chain="{quote(_pem(leaf) + _pem(inter_der), safe="")}"')

    cases: list[tuple[str, str, Callable[[str], Any], list[tuple[str, str]]]] = [
        ("xfcc", "XFCC Cert (1 element)", parse_xfcc,
         [("x-forwarded-client-cert", xfcc)]),
        ("xfcc", "XFCC Chain (leaf + 1)", parse_xfcc,
         [("x-forwarded-client-cert", xfcc_chain)]),
        ("client-cert", "RFC 9440 Client-Cert", parse_sf_binary,
         [("client-cert", f":{b64(leaf).decode()}:")]),
        ("client-cert", "RFC 9440 + Client-Cert-Chain", parse_sf_binary_list,
         [("client-cert", f":{b64(leaf).decode()}:"),
          ("client-cert-chain", f":{b64(inter_der).decode()}:")]),
        ("nginx", "nginx escaped PEM", parse_escaped_pem,
         [("x-ssl-client-cert", quote(_pem(leaf), safe="")),
          ("x-ssl-client-verify", "SUCCESS")]),
        ("traefik", "Traefik (v2 escaped, leaf + 1)", parse_traefik,
         [("x-forwarded-tls-client-cert",
           quote(f"{b64(leaf).decode()},{b64(inter_der).decode()}", safe=""))]),
        ("haproxy", "HAProxy base64 DER", parse_base64_der,
         [("x-ssl-client-der", b64(leaf).decode()), ("x-ssl-client-verify", "0")]),
        ("alb", "ALB verify (leaf PEM)", parse_escaped_pem,
         [("x-amzn-mtls-clientcert-leaf", quote(_pem(leaf), safe="+=/"))]),
        ("alb-passthrough", "ALB passthrough (leaf + 1)", parse_escaped_pem,
         [("x-amzn-mtls-clientcert", quote(_pem(leaf) + _pem(inter_der), safe="+=/"))]),
        ("caddy", "Caddy base64 DER", parse_base64_der,
         [("x-client-cert-der", b64(leaf).decode())]),
    ]
    # Typical other request headers, so the header scan is realistic.
    other = [(b"host", b"api.example.org"), (b"user-agent", b"python-httpx/0.28"),
             (b"accept", b"*/*"), (b"accept-encoding", b"gzip, deflate"),
             (b"authorization", b"Bearer " + b"x" * 600), (b"x-request-id", b"abc123")]

    rows = []
    for kind, label, parser, headers in cases:
        (source,) = build_proxy_sources(ProxyConfig(trusted=("10.0.0.0/8",), sources=(kind,)))
        value = headers[-1][1] if parser is parse_sf_binary_list else headers[0][1]
        scope_headers = other + [(k.encode(), v.encode("latin-1")) for k, v in headers]
        trusted = {"type": "http", "client": ("10.1.2.3", 50000), "headers": scope_headers}
        untrusted = {"type": "http", "client": ("203.0.113.7", 50000),
                     "headers": scope_headers}
        assert source.from_asgi(trusted) is not None
        assert source.from_asgi(untrusted) is None
        rows.append((
            label,
            len(value),
            _time(lambda p=parser, v=value: p(v), args.number),
            _time(lambda s=source, sc=trusted: s.from_asgi(sc), args.number),
            _time(lambda s=source, sc=untrusted: s.from_asgi(sc), args.number),
        ))

    print(f"{'format':34} {'bytes':>6} {'parse µs':>9} {'trusted µs':>11} "
          f"{'untrusted µs':>13}")
    print("-" * 77)
    for label, size, parse, trusted_us, untrusted_us in rows:
        print(f"{label:34} {size:>6} {parse:>9.2f} {trusted_us:>11.2f} {untrusted_us:>13.2f}")


if __name__ == "__main__":
    main()
