"""The endpointsec pytest plugin (registered through the ``pytest11`` entry point).

Fixtures:

``endpointsec_ca``
    A fresh :class:`CertificateAuthority` for the test.
``endpointsec_ca_bundle``
    Its certificate written as a PEM trust bundle (a path under ``tmp_path``).
``endpointsec_client_cert``
    A factory issuing client certificates from ``endpointsec_ca``: SPIFFE ID, SANs,
    validity and EKU chosen per call.
``endpointsec_issuer``
    A :class:`TokenIssuer` serving its JWKS and OIDC discovery on 127.0.0.1 for the test.
``endpointsec_asgi_client`` / ``endpointsec_wsgi_client``
    Factories of identity-aware test clients (closed after the test).
``endpointsec_policy`` / ``endpointsec_gatekeeper``
    The policy (or an offline gatekeeper) named by the marker
    ``@pytest.mark.endpointsec_policy(model=..., policy=..., config=..., rules=[...])``;
    paths are relative to the test file.

Options: ``--endpointsec-coverage POLICY`` (repeatable; ini ``endpointsec_coverage``)
reports which lines of these policy files decided a request during the run and which
never did; ``--endpointsec-coverage-min PCT`` (ini ``endpointsec_coverage_min``) fails
the run when fewer than PCT percent of the rules did.

pytest loads this module in every run of a project that has endpointsec installed, so it
imports nothing heavy itself: each fixture imports what it needs when it is used.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import datetime as dt

    from cryptography import x509

    from endpointsec.gatekeeper import Gatekeeper
    from endpointsec.protocols import Policy
    from endpointsec.testing.pki import CertificateAuthority, IssuedCertificate
    from endpointsec.testing.tokens import TokenIssuer

__all__ = [
    "endpointsec_asgi_client",
    "endpointsec_ca",
    "endpointsec_ca_bundle",
    "endpointsec_client_cert",
    "endpointsec_gatekeeper",
    "endpointsec_issuer",
    "endpointsec_policy",
    "endpointsec_wsgi_client",
    "pytest_addoption",
    "pytest_configure",
]

MARKER = "endpointsec_policy"


def pytest_addoption(parser: pytest.Parser) -> None:
    """The policy coverage options (``--endpointsec-coverage``)."""
    group = parser.getgroup("endpointsec", "endpointsec policy coverage")
    group.addoption("--endpointsec-coverage", action="append", default=[], metavar="POLICY",
                    help="report which lines of this Casbin policy file decided a request "
                         "(repeatable)")
    group.addoption("--endpointsec-coverage-min", type=float, default=None, metavar="PCT",
                    help="fail when under PCT percent of the policy rules decided a request")
    parser.addini("endpointsec_coverage", type="paths", default=[],
                  help="policy files to report coverage for (relative to the ini file)")
    parser.addini("endpointsec_coverage_min", default="",
                  help="minimum policy coverage in percent")


def _start_coverage(config: pytest.Config) -> None:
    policies = [Path(p) for p in config.getoption("endpointsec_coverage", None) or []]
    policies += [Path(p) for p in config.getini("endpointsec_coverage") or []]
    minimum = config.getoption("endpointsec_coverage_min", None)
    if minimum is None:
        raw = str(config.getini("endpointsec_coverage_min") or "").strip()
        if raw:
            try:
                minimum = float(raw)
            except ValueError:
                raise pytest.UsageError(
                    f"endpointsec_coverage_min must be a number, not {raw!r}") from None
    if not policies:
        if minimum is not None:
            raise pytest.UsageError(
                "--endpointsec-coverage-min needs the policy files to cover: "
                "--endpointsec-coverage POLICY (or the endpointsec_coverage ini option)")
        return
    from endpointsec.errors import ConfigurationError
    from endpointsec.lifecycle.pytest_coverage import PolicyCoveragePlugin

    try:
        plugin = PolicyCoveragePlugin(policies, minimum)
    except ConfigurationError as exc:
        raise pytest.UsageError(f"--endpointsec-coverage: {exc}") from None
    plugin.start()
    config.pluginmanager.register(plugin, "endpointsec-coverage")


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker so that ``--strict-markers`` accepts it, and start the policy
    coverage when it is asked for."""
    _start_coverage(config)
    config.addinivalue_line(
        "markers",
        f"{MARKER}(model=None, policy=None, config=None, rules=None): the Casbin model and "
        "policy files (or an endpointsec.toml, or inline policy lines) for the "
        "endpointsec_policy and endpointsec_gatekeeper fixtures; paths are relative to "
        "the test file",
    )


@pytest.fixture
def endpointsec_ca() -> CertificateAuthority:
    """A certificate authority created for this test."""
    from endpointsec.testing.pki import CertificateAuthority

    return CertificateAuthority.create(name="endpointsec test CA")


@pytest.fixture
def endpointsec_ca_bundle(endpointsec_ca: CertificateAuthority, tmp_path: Path) -> Path:
    """The test CA's certificate as a PEM trust bundle (``[identity] trust_bundles``)."""
    return endpointsec_ca.write_bundle(tmp_path / "endpointsec-ca.pem")


ClientCertFactory = Callable[..., "IssuedCertificate"]


@pytest.fixture
def endpointsec_client_cert(endpointsec_ca: CertificateAuthority) -> ClientCertFactory:
    """Issue client certificates from ``endpointsec_ca``::

        cert = endpointsec_client_cert("spiffe://example.org/ns/shop/sa/orders")
        expired = endpointsec_client_cert("spiffe://...", valid_for=timedelta(hours=-1))
        server_only = endpointsec_client_cert(dns_names=["svc"], eku=["server"])

    Keywords: ``spiffe_id`` (positional allowed), ``uris``, ``dns_names``,
    ``common_name``, ``not_before``/``not_after`` or ``valid_for`` (a timedelta from
    now; negative: already expired), ``eku`` (``"client"``, ``"server"`` or OIDs;
    empty: no EKU extension), ``key_kind`` (``"ec"``, ``"rsa"``, ``"ed25519"``),
    ``organizational_units`` (subject OUs).
    """
    import datetime as dt

    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    from endpointsec.errors import ConfigurationError

    known_eku = {
        "client": ExtendedKeyUsageOID.CLIENT_AUTH,
        "server": ExtendedKeyUsageOID.SERVER_AUTH,
    }

    def make(
        spiffe_id: str | None = None,
        *,
        uris: Sequence[str] = (),
        dns_names: Sequence[str] = (),
        common_name: str | None = None,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        valid_for: dt.timedelta | None = None,
        eku: Sequence[str | x509.ObjectIdentifier] = ("client",),
        key_kind: str = "ec",
        organizational_units: Sequence[str] = (),
    ) -> IssuedCertificate:
        now = dt.datetime.now(dt.UTC)
        if valid_for is not None:
            if not_after is not None:
                raise ConfigurationError("give not_after or valid_for, not both")
            not_after = now + valid_for
            if not_before is None and valid_for <= dt.timedelta(0):
                not_before = not_after - dt.timedelta(days=1)
        oids = []
        for e in eku:
            if isinstance(e, x509.ObjectIdentifier):
                oids.append(e)
            elif e in known_eku:
                oids.append(known_eku[e])
            else:
                raise ConfigurationError(f"unknown EKU {e!r}; use 'client', 'server' or an OID")
        all_uris = ([spiffe_id] if spiffe_id else []) + list(uris)
        if common_name is None and not all_uris and not dns_names:
            common_name = "endpointsec test client"
        return endpointsec_ca.issue(
            common_name=common_name, uris=all_uris, dns_names=dns_names,
            extended_key_usage=oids, not_before=not_before, not_after=not_after,
            key_kind=key_kind, organizational_units=organizational_units,
        )

    return make


@pytest.fixture
def endpointsec_issuer() -> Iterator[TokenIssuer]:
    """A token issuer (ES256) serving ``/.well-known/jwks.json`` and OIDC discovery on
    127.0.0.1 for the duration of the test; its ``issuer`` is the server's URL."""
    from endpointsec.testing.tokens import TokenIssuer

    issuer = TokenIssuer()
    with issuer.serve():
        yield issuer


@pytest.fixture
def endpointsec_asgi_client() -> Iterator[Callable[..., Any]]:
    """``make(app, *, cert=None, token=None, **kwargs)``: a Starlette ``TestClient``
    presenting ``cert`` through the ASGI TLS extension and ``token`` as a bearer token."""
    from endpointsec.testing.clients import asgi_client

    clients: list[Any] = []

    def make(app: Any, *, cert: IssuedCertificate | None = None, token: str | None = None,
             **kwargs: Any) -> Any:
        client = asgi_client(app, cert=cert, token=token, **kwargs)
        clients.append(client)
        return client

    try:
        yield make
    finally:
        for c in clients:
            c.close()


@pytest.fixture
def endpointsec_wsgi_client() -> Callable[..., Any]:
    """``make(app, *, cert=None, token=None)``: a Flask (or werkzeug) test client
    presenting ``cert`` through ``SSL_CLIENT_CERT`` and ``token`` as a bearer token."""
    from endpointsec.testing.clients import wsgi_client

    def make(app: Any, *, cert: IssuedCertificate | None = None,
             token: str | None = None) -> Any:
        return wsgi_client(app, cert=cert, token=token)

    return make


def _marked_gatekeeper(request: pytest.FixtureRequest, tmp_path: Path) -> Gatekeeper:
    from endpointsec.testing.suites import offline_gatekeeper

    marker = request.node.get_closest_marker(MARKER)
    if marker is None:
        # name the fixture the test asked for (endpointsec_policy uses this one)
        asked = ("endpointsec_policy"
                 if "endpointsec_policy" in getattr(request.node, "fixturenames", ())
                 else request.fixturename)
        raise pytest.UsageError(
            f"{asked} needs @pytest.mark.{MARKER}(model=..., policy=...) "
            "or (config=...) or (rules=[...]) on the test, its class or its module")
    if marker.args:
        raise pytest.UsageError(f"@pytest.mark.{MARKER} takes keyword arguments only")
    unknown = set(marker.kwargs) - {"model", "policy", "config", "rules"}
    if unknown:
        raise pytest.UsageError(f"@pytest.mark.{MARKER}: unknown argument {sorted(unknown)[0]!r}")
    base = request.path.parent

    def resolve(name: str) -> Path | None:
        value = marker.kwargs.get(name)
        if value is None:
            return None
        p = Path(value)
        return p if p.is_absolute() else base / p

    policy = resolve("policy")
    rules = marker.kwargs.get("rules")
    if rules is not None:
        if policy is not None:
            raise pytest.UsageError(f"@pytest.mark.{MARKER}: give policy= or rules=, not both")
        if isinstance(rules, str) or not all(isinstance(r, str) for r in rules):
            raise pytest.UsageError(f"@pytest.mark.{MARKER}: rules= is a list of CSV lines")
        policy = tmp_path / "endpointsec-policy.csv"
        policy.write_text("\n".join(rules) + "\n", encoding="utf-8")
    return offline_gatekeeper(config=resolve("config"), model=resolve("model"), policy=policy)


@pytest.fixture
def endpointsec_gatekeeper(request: pytest.FixtureRequest, tmp_path: Path) -> Gatekeeper:
    """An offline gatekeeper for the marker's configuration (its routes and policy, no
    certificate sources) or its model and policy tested alone."""
    return _marked_gatekeeper(request, tmp_path)


@pytest.fixture
def endpointsec_policy(endpointsec_gatekeeper: Gatekeeper) -> Policy:
    """The policy named by ``@pytest.mark.endpointsec_policy(...)``."""
    return endpointsec_gatekeeper.policy
