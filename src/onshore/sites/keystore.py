"""A site's keystore: its Ed25519 signing key and its HMAC pseudonymisation secret.

Both stay in the site. The files are created owner-only (0600, folder 0700) and refused when
anyone else can read them. :class:`Secret` keeps secret bytes out of reprs, logs and JSON.
"""

from __future__ import annotations

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
    "SIGNING_FILE",
    "Secret",
    "SiteKeys",
    "create_keystore",
    "load_keystore",
]

SIGNING_FILE: Final = "ed25519.key"
PUBLIC_FILE: Final = "ed25519.pub"
HMAC_FILE: Final = "hmac.secret"
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
