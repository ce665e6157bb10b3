"""A party's TLS identity: its own key and certificate, and the contexts that trust only peers.

Each party makes its own key (EC P-256) and a self-signed certificate naming the hosts peers
reach it at (:func:`make_tls`). There is no certificate authority: a peer's certificate is part
of the identity the operator adds (``onshore party trust``), and a party trusts exactly the
certificates of the peers on file. So a stranger's certificate, or an expired one, is refused
during the handshake, in both directions: the service asks every client for a certificate
(:func:`server_context`), and a client checks that the service is the peer it meant to reach
(:func:`client_context`).

The keys are written owner-only, beside the party's ledger key in its keystore.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from onshore.errors import CertificateError, ConfigError

__all__ = [
    "NODE_KEY_FILE",
    "NODE_PUBLIC_FILE",
    "TLS_CERT_FILE",
    "TLS_KEY_FILE",
    "TlsFiles",
    "certificate_fingerprint",
    "certificate_hosts",
    "check_certificate",
    "client_context",
    "load_certificate",
    "make_node_key",
    "make_tls",
    "server_context",
]

TLS_KEY_FILE: Final = "tls.key"
TLS_CERT_FILE: Final = "tls.crt"
NODE_KEY_FILE: Final = "node.key"
"""The key a site's Flower SuperNode authenticates with at the SuperLink (OpenSSH, P-384)."""
NODE_PUBLIC_FILE: Final = "node.pub"

_HOST: Final = re.compile(r"(?=.{1,253}$)[A-Za-z0-9*]([A-Za-z0-9.-]*[A-Za-z0-9])?")


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where a party keeps its TLS key and certificate (its keystore folder)."""

    folder: Path

    @property
    def key(self) -> Path:
        return self.folder / TLS_KEY_FILE

    @property
    def cert(self) -> Path:
        return self.folder / TLS_CERT_FILE

    def exists(self) -> bool:
        return self.key.is_file() and self.cert.is_file()


def _names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    if not hosts:
        raise ConfigError("a party's certificate needs at least one host name or address")
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
            continue
        except ValueError:
            pass
        if not _HOST.fullmatch(host):
            raise ConfigError(
                f"{host!r} is not a host name or an IP address",
                hint="give a DNS name (shanghai.example.com) or an address, without scheme or port",
            )
        names.append(x509.DNSName(host))
    return names


def _write_private(path: Path, data: bytes) -> None:
    # Created 0600, never readable by others, not even between write and chmod.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def make_tls(folder: Path, party: str, hosts: Sequence[str], *, days: int = 825) -> TlsFiles:
    """Make the party's TLS key and certificate in ``folder``: valid for ``hosts`` for ``days``
    (the certificate serves the party's service and identifies it as a client). Raises
    :class:`ConfigError` for a host that is not one, or when a key is already there."""
    files = TlsFiles(folder)
    if files.key.exists() or files.cert.exists():
        raise ConfigError(
            f"a TLS key or certificate is already in {folder}",
            hint="keys are never overwritten; move them away first if you mean to replace them "
            "(then give every peer your new identity)",
        )
    names = _names(hosts)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, party),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "onshore party"),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    _write_private(
        files.key,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return files


def make_node_key(folder: Path) -> str:
    """Make a site's SuperNode key (EC P-384, OpenSSH format, as Flower reads it) in ``folder``
    unless one is there; returns the public key in OpenSSH form (``ecdsa-sha2-nistp384 ...``)."""
    private, public = folder / NODE_KEY_FILE, folder / NODE_PUBLIC_FILE
    if not private.exists():
        key = ec.generate_private_key(ec.SECP384R1())
        _write_private(
            private,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            ),
        )
        public.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
            )
            + b"\n"
        )
    return public.read_text(encoding="ascii").strip()


def load_certificate(pem: str | bytes, where: str) -> x509.Certificate:
    """A PEM certificate; raises :class:`CertificateError` naming ``where`` it came from."""
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise CertificateError(f"{where}: not a PEM certificate: {exc}") from None


def certificate_fingerprint(pem: str | bytes) -> str:
    """SHA-256 of the certificate's DER bytes, hex: how a party's TLS identity is named."""
    cert = load_certificate(pem, "certificate")
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def der_fingerprint(der: bytes) -> str:
    """SHA-256 of a certificate's DER bytes, as a TLS connection presents it."""
    return hashlib.sha256(der).hexdigest()


def certificate_hosts(pem: str | bytes) -> tuple[str, ...]:
    """The names and addresses a certificate is valid for."""
    cert = load_certificate(pem, "certificate")
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    hosts: list[str] = list(san.get_values_for_type(x509.DNSName))
    hosts += [str(a) for a in san.get_values_for_type(x509.IPAddress)]
    return tuple(hosts)


def check_certificate(pem: str | bytes, where: str, *, now: dt.datetime | None = None) -> None:
    """Raise :class:`CertificateError` when the certificate is expired or not yet valid."""
    cert = load_certificate(pem, where)
    moment = now or dt.datetime.now(dt.UTC)
    if moment > cert.not_valid_after_utc:
        raise CertificateError(
            f"{where}: the certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}",
            hint="make a new one (move tls.key and tls.crt away, run 'onshore party renew'), "
            "then give every peer your new identity",
        )
    if moment < cert.not_valid_before_utc:
        raise CertificateError(
            f"{where}: the certificate is valid only from "
            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC",
            hint="check this machine's clock",
        )


def _own_chain(context: ssl.SSLContext, files: TlsFiles) -> None:
    for path in (files.key, files.cert):
        if not path.is_file():
            raise CertificateError(
                f"missing {path}",
                hint="restore the party's keystore, or make its TLS identity with "
                "'onshore party renew'",
            )
    check_certificate(files.cert.read_bytes(), str(files.cert))
    try:
        context.load_cert_chain(files.cert, files.key)
    except (ssl.SSLError, OSError) as exc:
        raise CertificateError(f"{files.cert}: cannot be used with {files.key}: {exc}") from exc


def server_context(files: TlsFiles, trusted: Sequence[str]) -> ssl.SSLContext:
    """The service's TLS context: its own certificate, a client certificate required, and
    only the peers' certificates (``trusted``, PEM) accepted. TLS 1.2 at least."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _own_chain(context, files)
    context.verify_mode = ssl.CERT_REQUIRED
    if trusted:
        context.load_verify_locations(cadata="".join(trusted))
    return context


def client_context(files: TlsFiles, peer_certificate: str) -> ssl.SSLContext:
    """A client's TLS context towards one peer: its own certificate to present, and that peer's
    certificate as the only one it accepts (its host name checked against the certificate)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _own_chain(context, files)
    context.load_verify_locations(cadata=peer_certificate)
    return context
