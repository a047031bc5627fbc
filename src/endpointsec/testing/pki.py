"""A development PKI: certificate authorities, server and client certificates.

Used by the test suite, the pytest plugin, ``endpointsec pki`` and the demo. Every key
is generated when it is needed; nothing here is meant for production.

::

    ca = CertificateAuthority.create()
    server = ca.issue_server(hostnames=["localhost", "127.0.0.1"])
    client = ca.issue_client("spiffe://example.org/ns/shop/sa/orders")
    client.write(tmp_path, "orders")   # orders.pem (leaf + intermediates), orders.key

What ``endpointsec pki`` wrote loads back, from paths or PEM text::

    ca = CertificateAuthority.load("pki")                     # pki/ca.pem + pki/ca.key
    web = IssuedCertificate.load("pki/web.pem")               # + pki/web.key
    web = IssuedCertificate.load(cert_pem_text, key=key_pem_text)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import secrets
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CertificateAuthority",
    "CertificateLike",
    "IssuedCertificate",
    "PemSource",
    "PrivateKey",
    "certificate_chain",
    "generate_key",
    "load_certificates",
    "load_private_key",
    "safe_write",
]

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
#: PEM text (``str`` or ``bytes``) or the path of a PEM file, as ``endpointsec pki`` writes.
PemSource = str | bytes | os.PathLike[str]

_UTC = dt.UTC


def generate_key(kind: str = "ec") -> PrivateKey:
    """``"ec"`` (P-256), ``"rsa"`` (2048) or ``"ed25519"``."""
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unknown key kind {kind!r}")


def _hash_for(key: PrivateKey) -> hashes.SHA256 | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def _ca_extensions(builder: x509.CertificateBuilder, key: PrivateKey) -> x509.CertificateBuilder:
    """The extensions of a CA certificate (root or intermediate)."""
    return (
        builder
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
    )


def safe_write(path: Path, data: bytes, *, mode: int = 0o600) -> Path:
    """Write ``data`` to ``path`` (a private key by default: mode ``0600``), safely.

    The file is created next to ``path`` with ``O_CREAT | O_EXCL | O_NOFOLLOW`` and mode
    ``mode``, written, then renamed over ``path``: no other user can read a partly
    written key, and a symlink planted at ``path`` is refused (:class:`FileExistsError`),
    never followed. An existing file's mode is never widened: if it is narrower
    (``0400``), the new file keeps that mode.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if stat.S_ISLNK(st.st_mode):
            raise FileExistsError(f"{path} is a symbolic link; refusing to write a key "
                                  "through it")
        if not stat.S_ISREG(st.st_mode):
            raise FileExistsError(f"{path} exists and is not a regular file")
        mode &= stat.S_IMODE(st.st_mode)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) \
        | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(tmp, flags, mode)
    try:
        # The umask may have narrowed the mode further; it must never be wider.
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            fd = -1
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # replaces the name itself, never a link's target
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem_bytes(source: PemSource, *, what: str) -> tuple[bytes, Path | None]:
    """The PEM bytes of ``source`` (PEM text, or a file path) and the file it came from."""
    if isinstance(source, bytes):
        if b"-----BEGIN" in source:
            return source, None
        source = source.decode("utf-8", "replace")
    if isinstance(source, str) and "-----BEGIN" in source:
        return source.encode("ascii", "replace"), None
    if not isinstance(source, str | os.PathLike):
        raise TypeError(f"{what} must be PEM text or a path to a PEM file, "
                        f"not {type(source).__name__}")
    path = Path(source)
    try:
        return path.read_bytes(), path
    except OSError as exc:
        raise ValueError(f"cannot read the {what} {path}: {exc.strerror}") from None


def load_certificates(source: PemSource) -> tuple[x509.Certificate, ...]:
    """Every certificate of a PEM file or PEM text, in order (leaf first)."""
    data, path = _pem_bytes(source, what="certificate")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise ValueError(f"no PEM certificate in {path if path else 'the given text'}")
    return tuple(certs)


def load_private_key(source: PemSource) -> PrivateKey:
    """An unencrypted PEM private key (PKCS#8 or traditional), from a file or PEM text."""
    data, path = _pem_bytes(source, what="private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        where = path if path else "the given text"
        raise ValueError(f"no unencrypted PEM private key in {where}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
                      | ed25519.Ed25519PrivateKey):
        raise ValueError(f"unsupported private key type {type(key).__name__}")
    return key


@dataclass(frozen=True)
class IssuedCertificate:
    """A certificate, its private key, and the intermediates between it and the root."""

    certificate: x509.Certificate
    key: PrivateKey = field(repr=False)
    intermediates: tuple[x509.Certificate, ...] = ()

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self.key)

    @property
    def der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    @property
    def chain_pem(self) -> bytes:
        """Leaf then intermediates, as a server or client presents them."""
        return self.cert_pem + b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in self.intermediates
        )

    @property
    def fingerprint_sha256(self) -> str:
        return self.certificate.fingerprint(hashes.SHA256()).hex()

    @classmethod
    def load(cls, cert: PemSource, key: PemSource | None = None) -> IssuedCertificate:
        """A certificate (leaf then intermediates) and its key, as ``endpointsec pki``
        writes them: paths or PEM text. Without ``key``, ``NAME.key`` next to a
        ``NAME.pem`` path is used."""
        chain = load_certificates(cert)
        if key is None:
            _, path = _pem_bytes(cert, what="certificate")
            if path is None:
                raise ValueError("give key= with a certificate given as PEM text")
            key = path.with_suffix(".key")
        private_key = load_private_key(key)
        leaf_key = chain[0].public_key()
        if private_key.public_key() != leaf_key:
            raise ValueError("the private key does not belong to the certificate")
        return cls(certificate=chain[0], key=private_key, intermediates=chain[1:])

    def write(self, directory: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
        """Write ``NAME.pem`` (leaf + intermediates) and ``NAME.key`` (mode 0600, see
        :func:`safe_write`)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        cert_path = directory / f"{name}.pem"
        key_path = directory / f"{name}.key"
        safe_write(cert_path, self.chain_pem, mode=0o644)
        safe_write(key_path, self.key_pem)
        return cert_path, key_path


#: What a test may give as a (client) certificate: an issued certificate, a
#: ``cryptography`` certificate, or PEM text / a PEM file (leaf then intermediates).
CertificateLike = IssuedCertificate | x509.Certificate | str | bytes | os.PathLike[str]


def certificate_chain(cert: CertificateLike) -> tuple[x509.Certificate, ...]:
    """The chain (leaf first) of anything :data:`CertificateLike`."""
    if isinstance(cert, IssuedCertificate):
        return (cert.certificate, *cert.intermediates)
    if isinstance(cert, x509.Certificate):
        return (cert,)
    return load_certificates(cert)


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA that issues certificates; root or intermediate."""

    certificate: x509.Certificate
    key: PrivateKey = field(repr=False)
    #: Intermediates between this CA and the root (this CA's own cert first), if any.
    path: tuple[x509.Certificate, ...] = ()

    @classmethod
    def create(
        cls,
        *,
        name: str = "endpointsec development CA",
        key_kind: str = "ec",
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> CertificateAuthority:
        key = generate_key(key_kind)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(_UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - dt.timedelta(hours=1))
            .not_valid_after(not_after or now + dt.timedelta(days=365))
        )
        cert = _ca_extensions(builder, key).sign(key, _hash_for(key))
        return cls(certificate=cert, key=key)

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str] | None = None,
        *,
        cert: PemSource | None = None,
        key: PemSource | None = None,
        cert_path: PemSource | None = None,
        key_path: PemSource | None = None,
    ) -> CertificateAuthority:
        """Load a CA: ``load("pki")`` reads ``pki/ca.pem`` and ``pki/ca.key`` (what
        ``endpointsec pki init`` and :meth:`write` create); or ``cert=`` and ``key=``
        (``cert_path=`` / ``key_path=``), each a path or PEM text."""
        cert = cert if cert is not None else cert_path
        key = key if key is not None else key_path
        if directory is not None:
            if cert is not None or key is not None:
                raise TypeError("give a directory or cert= and key=, not both")
            cert, key = Path(directory) / "ca.pem", Path(directory) / "ca.key"
        if cert is None or key is None:
            raise TypeError("CertificateAuthority.load needs a directory, or cert= and key=")
        chain = load_certificates(cert)
        private_key = load_private_key(key)
        if private_key.public_key() != chain[0].public_key():
            raise ValueError("the CA key does not belong to the CA certificate")
        return cls(certificate=chain[0], key=private_key, path=chain[1:])

    def write(self, directory: str | os.PathLike[str], name: str = "ca") -> tuple[Path, Path]:
        """Write ``NAME.pem`` (the CA certificate, a trust bundle) and ``NAME.key`` (0600,
        see :func:`safe_write`)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
        safe_write(cert_path, self.cert_pem, mode=0o644)
        safe_write(key_path, _key_pem(self.key))
        return cert_path, key_path

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def write_bundle(self, path: str | os.PathLike[str]) -> Path:
        """Write this CA's certificate as a PEM trust bundle."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.cert_pem)
        return path

    def _builder(
        self,
        *,
        subject: x509.Name,
        public_key: object,
        not_before: dt.datetime | None,
        not_after: dt.datetime | None,
    ) -> x509.CertificateBuilder:
        now = dt.datetime.now(_UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - dt.timedelta(minutes=5))
            .not_valid_after(not_after or now + dt.timedelta(days=30))
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self.key.public_key()
                ),
                critical=False,
            )
        )

    def intermediate(self, *, name: str = "endpointsec intermediate CA",
                     key_kind: str = "ec", not_before: dt.datetime | None = None,
                     not_after: dt.datetime | None = None) -> CertificateAuthority:
        """An intermediate CA under this one (valid for 180 days unless ``not_after``)."""
        key = generate_key(key_kind)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = self._builder(
            subject=subject, public_key=key.public_key(), not_before=not_before,
            not_after=not_after or dt.datetime.now(_UTC) + dt.timedelta(days=180))
        cert = _ca_extensions(builder, key).sign(self.key, _hash_for(self.key))
        return CertificateAuthority(certificate=cert, key=key, path=(cert, *self.path))

    def issue(
        self,
        *,
        common_name: str | None = None,
        uris: Sequence[str] = (),
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
        extended_key_usage: Iterable[x509.ObjectIdentifier] = (ExtendedKeyUsageOID.CLIENT_AUTH,),
        is_ca: bool = False,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        key_kind: str = "ec",
        organizational_units: Sequence[str] = (),
    ) -> IssuedCertificate:
        """Issue a certificate with exactly the extensions asked for (for edge cases too)."""
        key = generate_key(key_kind)
        attrs = []
        if common_name:
            attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        attrs.extend(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou)
                     for ou in organizational_units)
        builder = self._builder(
            subject=x509.Name(attrs), public_key=key.public_key(),
            not_before=not_before, not_after=not_after,
        )
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
        sans += [x509.DNSName(d) for d in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ip_addresses]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans),
                                            critical=not attrs)
        eku = list(extended_key_usage)
        if eku:
            builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        builder = builder.add_extension(
            x509.BasicConstraints(ca=is_ca, path_length=None), critical=True
        ).add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False,
                key_encipherment=isinstance(key, rsa.RSAPrivateKey),
                data_encipherment=False, key_agreement=False, key_cert_sign=is_ca,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        cert = builder.sign(self.key, _hash_for(self.key))
        return IssuedCertificate(certificate=cert, key=key, intermediates=self.path)

    def issue_client(
        self,
        spiffe_id: str | None = None,
        *,
        common_name: str | None = None,
        uris: Sequence[str] = (),
        dns_names: Sequence[str] = (),
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        key_kind: str = "ec",
        organizational_units: Sequence[str] = (),
    ) -> IssuedCertificate:
        """A client certificate (EKU clientAuth), optionally an X.509-SVID:
        ``issue_client("spiffe://example.org/ns/shop/sa/orders")``."""
        all_uris = ([spiffe_id] if spiffe_id else []) + list(uris)
        if common_name is None and not all_uris and not dns_names:
            common_name = "endpointsec client"
        return self.issue(
            common_name=common_name, uris=all_uris, dns_names=dns_names,
            not_before=not_before, not_after=not_after, key_kind=key_kind,
            organizational_units=organizational_units,
        )

    def issue_server(
        self,
        hostnames: str | Sequence[str] = ("localhost", "127.0.0.1"),
        *,
        key_kind: str = "ec",
    ) -> IssuedCertificate:
        """A server certificate (EKU serverAuth) for the given names and addresses
        (``issue_server("localhost")`` or a list)."""
        if isinstance(hostnames, str):
            hostnames = [hostnames]
        dns: list[str] = []
        ips: list[str] = []
        for h in hostnames:
            try:
                ipaddress.ip_address(h)
                ips.append(h)
            except ValueError:
                dns.append(h)
        return self.issue(
            common_name=hostnames[0] if hostnames else None,
            dns_names=dns, ip_addresses=ips,
            extended_key_usage=(ExtendedKeyUsageOID.SERVER_AUTH,),
            key_kind=key_kind,
        )
