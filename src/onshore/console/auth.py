"""Who may sign in to the console, in what role, and the signed session that says so.

Users live in ``console/users.sqlite`` under the project (one row each: name, role, the site of a
site operator, a scrypt hash of the password). A session is a cookie holding the user's name and
an expiry, signed with HMAC-SHA256 under ``console/session.key`` (random, mode 0600). Passwords and
the key never reach a log, a page or an export.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Final

import orjson

from onshore.errors import ConfigError
from onshore.settings import Project

__all__ = [
    "SESSION_SECONDS",
    "Role",
    "Sessions",
    "User",
    "UserStore",
    "console_folder",
]

CONSOLE_DIR: Final = "console"
SESSION_SECONDS: Final = 8 * 3600
"""A session lasts a working day; then the user signs in again."""

_SCRYPT: Final = {"n": 2**14, "r": 8, "p": 1}
_NAME_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-@")


class Role(StrEnum):
    """What a user of the console is."""

    SITE_OPERATOR = "site-operator"
    """Runs one site: sees that site's rows, nothing of another site."""
    COORDINATOR_ENGINEER = "coordinator-engineer"
    """Works for the coordinator: sees every site's metadata and aggregates; another
    jurisdiction's rows only as the site's gate allows, like any transfer."""
    AUDITOR = "auditor"
    """Sees everything, read-only."""


@dataclass(frozen=True, slots=True)
class User:
    """A console user."""

    name: str
    role: Role
    site: str | None = None
    """The site a site operator runs (None for the other roles)."""

    def describe(self) -> str:
        return f"{self.name} ({self.role}{', ' + self.site if self.site else ''})"


def console_folder(project: Project) -> Path:
    """``console/`` under the project, created private (0700) on first use."""
    folder = project.root / CONSOLE_DIR
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder


def _hash(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, dklen=32, maxmem=64 << 20, **_SCRYPT)


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    return f"scrypt${salt.hex()}${_hash(password, salt).hex()}"


def password_matches(password: str, stored: str) -> bool:
    scheme, salt, digest = stored.split("$")
    if scheme != "scrypt":
        return False
    return hmac.compare_digest(_hash(password, bytes.fromhex(salt)).hex(), digest)


_DUMMY: Final = hash_password(secrets.token_urlsafe(16))
"""Compared against when the name is unknown, so a wrong name takes as long as a wrong
password and timing does not tell which names exist."""


class UserStore:
    """The console's users, in ``console/users.sqlite`` of a project."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self.path = console_folder(project) / "users.sqlite"
        with self._db() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY, role TEXT NOT NULL,"
                " site TEXT, password TEXT NOT NULL, created REAL NOT NULL)"
            )
        self.path.chmod(0o600)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.path, timeout=30)) as db, db:
            yield db

    def add(self, name: str, role: Role, password: str, *, site: str | None = None) -> User:
        """Add a user. Raises :class:`ConfigError` for a name taken or badly formed, a site
        operator without a site of the project (or another role with one), a short password."""
        if not name or len(name) > 64 or not set(name) <= _NAME_CHARS:
            raise ConfigError(
                f"user name {name!r}: use 1 to 64 lower-case letters, digits and . _ - @"
            )
        if role is Role.SITE_OPERATOR:
            # The sites this console knows: a lab project's, or this party's own and its peers'.
            from onshore.console.access import all_sites

            known = all_sites(self.project)
            if site is None:
                raise ConfigError(
                    f"user {name}: a site operator needs --site",
                    hint=f"sites: {', '.join(known)}",
                )
            if site not in known:
                raise ConfigError(
                    f"user {name}: no site {site!r}", hint=f"sites: {', '.join(known)}"
                )
        elif site is not None:
            raise ConfigError(f"user {name}: only a site operator has a --site (role {role})")
        if len(password) < 12:
            raise ConfigError(f"user {name}: the password must have at least 12 characters")
        try:
            with self._db() as db:
                db.execute(
                    "INSERT INTO users VALUES (?, ?, ?, ?, ?)",
                    (name, str(role), site, hash_password(password), time.time()),
                )
        except sqlite3.IntegrityError:
            raise ConfigError(
                f"user {name} already exists",
                hint=f"remove it first: onshore console users remove {name}",
            ) from None
        return User(name, role, site)

    def remove(self, name: str) -> None:
        with self._db() as db:
            if db.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount == 0:
                raise ConfigError(f"no console user {name!r}")

    def users(self) -> list[User]:
        with self._db() as db:
            rows = db.execute("SELECT name, role, site FROM users ORDER BY name").fetchall()
        return [User(n, Role(r), s) for n, r, s in rows]

    def get(self, name: str) -> User | None:
        with self._db() as db:
            row = db.execute("SELECT role, site FROM users WHERE name = ?", (name,)).fetchone()
        return None if row is None else User(name, Role(row[0]), row[1])

    def sign_in(self, name: str, password: str) -> User | None:
        """The user, if the password is theirs; else None (which of the two was wrong is not
        said)."""
        with self._db() as db:
            row = db.execute(
                "SELECT role, site, password FROM users WHERE name = ?", (name,)
            ).fetchone()
        if row is None:
            password_matches(password, _DUMMY)
            return None
        if not password_matches(password, row[2]):
            return None
        return User(name, Role(row[0]), row[1])


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sessions:
    """Signed session tokens: ``payload.signature``, both base64url; the payload is the user's
    name and the expiry time."""

    def __init__(self, project: Project) -> None:
        path = console_folder(project) / "session.key"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(secrets.token_bytes(32))
        self._key = path.read_bytes()
        if len(self._key) < 32:
            raise ConfigError(f"{path}: the session key is too short; delete it to make a new one")

    def _sign(self, payload: bytes) -> str:
        return _b64(hmac.new(self._key, payload, hashlib.sha256).digest())

    def issue(self, user: User, *, now: float | None = None) -> str:
        expires = int((time.time() if now is None else now) + SESSION_SECONDS)
        payload = orjson.dumps({"user": user.name, "exp": expires})
        return f"{_b64(payload)}.{self._sign(payload)}"

    def user_name(self, token: str, *, now: float | None = None) -> str | None:
        """The name a valid, unexpired token carries; None for anything else."""
        try:
            payload_text, signature = token.split(".")
            payload = _unb64(payload_text)
            if not hmac.compare_digest(self._sign(payload), signature):
                return None
            data = orjson.loads(payload)
        except (ValueError, orjson.JSONDecodeError):
            return None
        now = time.time() if now is None else now
        if not isinstance(data, dict) or data.get("exp", 0) < now:
            return None
        name = data.get("user")
        return name if isinstance(name, str) else None
