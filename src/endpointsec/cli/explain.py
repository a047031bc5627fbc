"""``endpointsec explain``: the decision for one request described on the command line.

::

    endpointsec explain --config endpointsec.toml --method GET --path /orders/42 \\
        --cert orders.pem
    endpointsec explain --config endpointsec.toml --method DELETE --path /orders/42 \\
        --iss https://idp.example.com --sub alice --role admin
    endpointsec explain --config endpointsec.toml --path /orders --token "$JWT"

The certificate is verified against ``[identity]`` trust bundles when there are any
(``--no-verify`` skips that and only reads the identity); a ``--token`` is verified by
the ``[tokens]`` issuers (this may fetch their key sets); ``--iss/--sub/--role``
describe a request principal directly, unverified. The decision is the one
:func:`endpointsec.decide` makes for the configured routes and policy, for the path as
the server receives it: a path the server refuses with 400 (dot segments, encoded
slashes, backslashes, ``//``) is a 400 here too. ``--method`` is upper-cased.

Exit status: 0 allowed, 1 denied, 2 the configuration or an argument is invalid.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

from endpointsec.errors import CertificateError, ConfigurationError, EndpointSecError
from endpointsec.facts import PeerIdentity, RequestPrincipal

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add the ``explain`` subcommand."""
    p: argparse.ArgumentParser = sub.add_parser(
        "explain", help="explain the decision for one request",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path,
                   help="endpointsec.toml (default: $ENDPOINTSEC_CONFIG, else "
                        "./endpointsec.toml)")
    p.add_argument("--method", default="GET",
                   help="HTTP method (default GET; upper-cased, with a note)")
    p.add_argument("--path", required=True, help="request path as sent (percent-encoded)")
    p.add_argument("--domain", help="the tenant / Casbin domain")
    p.add_argument("--cert", type=Path, help="client certificate (PEM: leaf then chain)")
    p.add_argument("--no-verify", action="store_true",
                   help="read the certificate's identity without verifying its chain")
    p.add_argument("--token", help="a bearer token (JWT), verified by [tokens]")
    p.add_argument("--iss", help="request principal issuer (unverified)")
    p.add_argument("--sub", help="request principal subject (unverified)")
    p.add_argument("--role", action="append", default=[], help="role (repeatable)")
    p.add_argument("--scope", action="append", default=[], help="scope (repeatable)")
    p.add_argument("--group", action="append", default=[], help="group (repeatable)")
    p.set_defaults(handler=run)


def _peer(args: argparse.Namespace, config: Any) -> tuple[PeerIdentity | None,
                                                           EndpointSecError | None, str]:
    if args.cert is None:
        return None, None, "none"
    from cryptography import x509

    from endpointsec.facts import PresentedCertificate
    from endpointsec.testing.principals import peer_identity

    try:
        chain = x509.load_pem_x509_certificates(args.cert.read_bytes())
    except OSError as exc:
        raise ConfigurationError(f"cannot read {args.cert}: {exc.strerror}",
                                 key="--cert") from None
    except ValueError:
        raise ConfigurationError(f"{args.cert} holds no PEM certificate", key="--cert") from None
    identity = config.identity
    if args.no_verify or not (identity.trust_bundles or identity.trust_domains):
        why = "--no-verify" if args.no_verify else "no [identity] trust bundles"
        return peer_identity(chain[0]), None, f"read, NOT verified ({why})"
    from cryptography.hazmat.primitives.serialization import Encoding

    from endpointsec.identity.verify import X509ChainVerifier

    presented = PresentedCertificate(
        leaf=chain[0].public_bytes(Encoding.DER),
        intermediates=tuple(c.public_bytes(Encoding.DER) for c in chain[1:]),
        source="cli",
    )
    try:
        return X509ChainVerifier(config=identity).verify(presented), None, "verified"
    except CertificateError as exc:
        return None, exc, "rejected"


def _token(args: argparse.Namespace, config: Any) -> tuple[RequestPrincipal | None,
                                                            EndpointSecError | None, str]:
    described = args.iss or args.sub or args.role or args.scope or args.group
    if args.token and described:
        raise ConfigurationError("give --token or --iss/--sub/--role, not both", key="--token")
    if args.token:
        from endpointsec.tokens import build_token_verifier

        verifier = build_token_verifier(config.tokens)
        if verifier is None:
            raise ConfigurationError(
                "no [tokens] issuers are configured to verify --token; describe the caller "
                "with --iss/--sub/--role instead", key="--token")
        try:
            return verifier.verify(args.token), None, "verified"
        except EndpointSecError as exc:
            return None, exc, "rejected"
    if described:
        if not (args.iss and args.sub):
            raise ConfigurationError("a request principal needs both --iss and --sub",
                                     key="--sub")
        principal = RequestPrincipal(
            issuer=args.iss, subject=args.sub, roles=frozenset(args.role),
            scopes=frozenset(args.scope), groups=frozenset(args.group))
        return principal, None, "described, NOT verified"
    return None, None, "none"


def run(args: argparse.Namespace) -> int:
    """Print the decision; 0 if allowed, 1 if denied."""
    from endpointsec.config import config_path, load_config
    from endpointsec.testing.suites import offline_gatekeeper

    config_file = config_path(args.config)
    config = load_config(config_file)
    gk = offline_gatekeeper(config=config_file)
    peer, peer_error, peer_how = _peer(args, config)
    token, token_error, token_how = _token(args, config)
    method = args.method.upper()
    # The path as the server receives it (wire=True): what it refuses before
    # normalizing (dot segments, encoded slashes, backslashes, '//'), explain refuses too.
    facts = gk.facts_for(method=method, path=args.path, peer=peer, token=token,
                         domain=args.domain, wire=True)
    if peer_error is not None or token_error is not None:
        facts = replace(facts, peer_error=peer_error, token_error=token_error,
                        token_presented=token is not None or token_error is not None)
    decision = gk.decide(facts)
    req = facts.requirements
    if method != args.method:
        print(f"note:         method {args.method!r} read as {method!r} (servers and "
              "frameworks route upper-case methods)")
    print(f"request:      {method} {args.path}"
          + (f" (domain {args.domain})" if args.domain else ""))
    print(f"normalized:   {facts.path if facts.path is not None else '(invalid)'}")
    route = ("public" if req.public else
             f"mtls={req.mtls.value} token={req.token.value}"
             + (f" roles={sorted(req.roles)}" if req.roles else "")
             + (" bound_token" if req.bound_token else "")
             + (" dry_run" if req.dry_run else ""))
    print(f"requirements: {route}")
    print(f"peer:         {peer.id if peer else '-'} ({peer_how})")
    print(f"token:        {token.id if token else '-'} ({token_how})")
    print(decision.explain())
    return 0 if decision.allowed and not decision.would_deny else 1
