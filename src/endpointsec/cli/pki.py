"""``endpointsec pki``: a development PKI, in the spirit of mkcert.

::

    endpointsec pki init   --dir pki                      # pki/ca.pem, pki/ca.key
    endpointsec pki server --dir pki --host localhost --host 127.0.0.1
    endpointsec pki client --dir pki --name orders \\
        --spiffe-id spiffe://shop.local/ns/shop/sa/orders

For demos and tests only: keys are written unencrypted, mode 0600 (an existing key
file's narrower mode is kept). No file is written through a symbolic link: a link at
a target name is an error.

``--spiffe-id`` must be a valid SPIFFE ID (``spiffe://<trust domain>/<path>``); a URI
that is not one goes in with ``--uri-san``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from pathlib import Path
from typing import Any

from endpointsec.testing.pki import CertificateAuthority

__all__ = ["register"]


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "pki", help="create a development CA and certificates",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    psub = p.add_subparsers(dest="pki_command", metavar="ACTION", required=True)

    init = psub.add_parser("init", help="create a CA (ca.pem, ca.key)")
    init.add_argument("--dir", type=Path, default=Path("pki"), help=_DIR_HELP)
    init.add_argument("--name", default="endpointsec development CA",
                      help="the CA's subject common name")
    init.add_argument("--key", choices=["ec", "rsa", "ed25519"], default="ec",
                      help="key type (default: ec, P-256)")
    init.add_argument("--force", action="store_true", help="overwrite an existing CA")
    init.set_defaults(handler=_init)

    server = psub.add_parser("server", help="issue a server certificate (serverAuth)")
    server.add_argument("--dir", type=Path, default=Path("pki"), help=_DIR_HELP)
    server.add_argument("--name", default="server",
                        help="file name stem: NAME.pem and NAME.key (default: server)")
    server.add_argument("--host", action="append", dest="hosts", metavar="HOST",
                        help="DNS name or IP address (repeatable; default: localhost and "
                             "127.0.0.1)")
    server.set_defaults(handler=_server)

    client = psub.add_parser("client", help="issue a client certificate (clientAuth)")
    client.add_argument("--dir", type=Path, default=Path("pki"), help=_DIR_HELP)
    client.add_argument("--name", required=True,
                        help="file name stem: NAME.pem and NAME.key")
    client.add_argument("--spiffe-id", type=_spiffe_id,
                        help="the workload's SPIFFE ID, spiffe://<trust domain>/<path> "
                             "(checked; an X.509-SVID has it as its only URI SAN)")
    client.add_argument("--uri-san", "--uri", action="append", default=[], dest="uri",
                        metavar="URI",
                        help="a URI SAN taken as given, not checked as a SPIFFE ID "
                             "(repeatable)")
    client.add_argument("--dns", action="append", default=[], help="DNS SAN (repeatable)")
    client.add_argument("--cn", help="subject common name")
    client.add_argument("--ou", action="append", default=[],
                        help="subject organizational unit, e.g. a team or role (repeatable)")
    client.add_argument("--days", type=int, default=30, help="validity in days")
    client.set_defaults(handler=_client)


_DIR_HELP = "directory of the CA and the files written (default: pki)"


def _spiffe_id(value: str) -> str:
    from endpointsec.errors import CertificateError
    from endpointsec.identity.spiffe import parse_spiffe_id

    try:
        parse_spiffe_id(value)
        return value
    except CertificateError as exc:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a valid SPIFFE ID: {exc} (a URI that is not a SPIFFE ID "
            "goes in with --uri-san)") from None


def _refused(exc: OSError) -> int:
    print(f"endpointsec pki: {exc}", file=sys.stderr)
    return 1


def _load_ca(directory: Path) -> CertificateAuthority:
    cert, key = directory / "ca.pem", directory / "ca.key"
    if not cert.exists() or not key.exists():
        raise SystemExit(f"endpointsec pki: no CA in {directory}; run 'endpointsec pki init'")
    return CertificateAuthority.load(cert_path=cert, key_path=key)


def _init(args: argparse.Namespace) -> int:
    if os.path.lexists(args.dir / "ca.key") and not args.force:
        print(f"endpointsec pki: {args.dir / 'ca.key'} exists (use --force to replace it)")
        return 1
    ca = CertificateAuthority.create(name=args.name, key_kind=args.key)
    try:
        cert, key = ca.write(args.dir)
    except OSError as exc:
        return _refused(exc)
    print(f"CA certificate (trust bundle): {cert}\nCA key:                        {key}")
    return 0


def _server(args: argparse.Namespace) -> int:
    ca = _load_ca(args.dir)
    issued = ca.issue_server(hostnames=args.hosts or ["localhost", "127.0.0.1"])
    try:
        cert, key = issued.write(args.dir, args.name)
    except OSError as exc:
        return _refused(exc)
    print(f"server certificate: {cert}\nserver key:         {key}")
    return 0


def _client(args: argparse.Namespace) -> int:
    ca = _load_ca(args.dir)
    now = dt.datetime.now(dt.UTC)
    issued = ca.issue_client(
        spiffe_id=args.spiffe_id, uris=args.uri, dns_names=args.dns, common_name=args.cn,
        organizational_units=args.ou, not_after=now + dt.timedelta(days=args.days),
    )
    try:
        cert, key = issued.write(args.dir, args.name)
    except OSError as exc:
        return _refused(exc)
    print(f"client certificate: {cert}\nclient key:         {key}\n"
          f"sha256 fingerprint: {issued.fingerprint_sha256}")
    return 0
