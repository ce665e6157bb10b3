"""A site's keystore: its Ed25519 signing key, its HMAC pseudonymisation secret, and the
credentials of its S3-compatible store when it has them.

All stay in the site. The files are created owner-only (0600, folder 0700) and refused when
anyone else can read them. :class:`Secret` keeps secret bytes out of reprs, logs and JSON.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from onshore.errors import KeystoreError

__all__ = [
    "HMAC_FILE",
    "PUBLIC_FILE",
    "S3_FILE",
    "SIGNING_FILE",
    "S3Credentials",
    "Secret",
    "SiteKeys",
    "create_keystore",
    "load_keystore",
    "load_s3_credentials",
    "save_s3_credentials",
]

SIGNING_FILE: Final = "ed25519.key"
PUBLIC_FILE: Final = "ed25519.pub"
HMAC_FILE: Final = "hmac.secret"
S3_FILE: Final = "s3.json"
"""The site's S3 credentials (JSON), present only when the site keeps them in its keystore."""
_OWNER_ONLY: Final = 0o600


@dataclass(frozen=True, slots=True)
class Secret:
    """Secret bytes that never print."""

    _value: bytes = field(repr=False)

    def reveal(self) -> bytes:
        """The secret itself: call only where it is used, never to log or export it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret(**********)"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class SiteKeys:
    """A site's keys, loaded from its keystore."""

    signing_key: Ed25519PrivateKey = field(repr=False)
    hmac_secret: Secret

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.signing_key.public_key()

    def public_key_pem(self) -> str:
        """The public key in PEM, safe to publish."""
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()

    def sign(self, data: bytes) -> bytes:
        """An Ed25519 signature of ``data`` by the site."""
        return self.signing_key.sign(data)


@dataclass(frozen=True, slots=True)
class S3Credentials:
    """The credentials a site's S3-compatible store takes: an access key and its secret, and
    where the service is when it is not AWS's own S3."""

    access_key_id: str
    """The key's id (``AKIA...``): names the key, not secret, shown in reports."""
    secret_access_key: Secret
    endpoint_url: str | None = None
    """The service's URL, e.g. ``https://s3.eu-central-1.example.net``; none: AWS's S3 (or
    ``AWS_ENDPOINT_URL``)."""
    region: str | None = None
    """The region requests are signed for; none: ``AWS_REGION`` or the service's default."""

    def public(self) -> dict[str, str | None]:
        """What may be shown of these credentials: everything but the secret."""
        return {
            "access_key_id": self.access_key_id,
            "endpoint_url": self.endpoint_url,
            "region": self.region,
        }


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _OWNER_ONLY)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def create_keystore(folder: Path) -> SiteKeys:
    """Create a new keystore in ``folder``; raises :class:`KeystoreError` if one is there.

    The keys are written into a private folder beside it and renamed into place, so a process
    killed half-way leaves no half-made keystore that could be neither loaded nor re-created.
    """
    if folder.exists() and any(folder.iterdir()):
        raise KeystoreError(
            f"a keystore already exists in {folder}",
            hint="keys are never overwritten: move the folder away first if you mean to rotate",
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        staging.chmod(0o700)
        key = Ed25519PrivateKey.generate()
        _write_private(
            staging / SIGNING_FILE,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        _write_private(staging / HMAC_FILE, secrets.token_bytes(32))
        keys = load_keystore(staging)
        _write_private(staging / PUBLIC_FILE, keys.public_key_pem().encode())
        if folder.exists():
            folder.rmdir()  # empty, checked above
        staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return keys


def _read_private(path: Path) -> bytes:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise KeystoreError(
            f"missing key file {path}",
            hint="restore the site's keystore from its backup; keys cannot be re-created",
        ) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeystoreError(
            f"{path} can be read by others (mode {stat.filemode(mode)})",
            hint=f"chmod 600 {path}",
        )
    return path.read_bytes()


def load_keystore(folder: Path) -> SiteKeys:
    """Load a site's keys; raises :class:`KeystoreError` if missing, unreadable or exposed."""
    pem = _read_private(folder / SIGNING_FILE)
    secret = _read_private(folder / HMAC_FILE)
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except ValueError as exc:
        raise KeystoreError(f"{folder / SIGNING_FILE} is not a PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeystoreError(f"{folder / SIGNING_FILE} is not an Ed25519 key")
    if len(secret) < 32:
        raise KeystoreError(f"{folder / HMAC_FILE} is shorter than 32 bytes")
    return SiteKeys(key, Secret(secret))


def save_s3_credentials(folder: Path, credentials: S3Credentials) -> Path:
    """Keep ``credentials`` in the keystore at ``folder`` (replacing any the site had: S3 keys
    are rotated, unlike the site's own keys); returns the file written.

    The file is written owner-only beside its final name, made durable and renamed into
    place, so a reader finds the old credentials or the new ones, never half of either.
    Raises :class:`KeystoreError` when ``folder`` holds no keystore.
    """
    if not (folder / SIGNING_FILE).is_file():
        raise KeystoreError(
            f"no keystore in {folder}",
            hint="the site's keystore is made by 'onshore init'; check [sites.X] keystore",
        )
    secret = credentials.secret_access_key.reveal().decode()
    body = {**credentials.public(), "secret_access_key": secret}
    data = json.dumps({k: v for k, v in body.items() if v is not None}, indent=2).encode()
    target = folder / S3_FILE
    part = folder / f".{S3_FILE}.{secrets.token_hex(8)}.part"
    try:
        _write_private(part, data)
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)
    return target


def load_s3_credentials(folder: Path) -> S3Credentials | None:
    """The S3 credentials kept in the keystore at ``folder``, or None when it keeps none.

    Raises :class:`KeystoreError` when the file can be read by others or is not what
    :func:`save_s3_credentials` writes (the message names the file, never its content).
    """
    path = folder / S3_FILE
    if not path.exists():
        return None
    raw = _read_private(path)
    try:
        body = json.loads(raw)
    except ValueError:
        raise KeystoreError(f"{path} is not JSON", hint="write it again") from None
    if not isinstance(body, dict):
        raise KeystoreError(f"{path} is not a JSON object", hint="write it again")
    key_id, secret = body.get("access_key_id"), body.get("secret_access_key")
    optional = {k: body.get(k) for k in ("endpoint_url", "region")}
    if not (isinstance(key_id, str) and key_id and isinstance(secret, str) and secret) or any(
        v is not None and not isinstance(v, str) for v in optional.values()
    ):
        raise KeystoreError(
            f"{path} lacks access_key_id or secret_access_key, or a field is not a string",
            hint="write it again with 'onshore store credentials'",
        )
    return S3Credentials(
        key_id,
        Secret(secret.encode()),
        endpoint_url=optional["endpoint_url"],
        region=optional["region"],
    )
