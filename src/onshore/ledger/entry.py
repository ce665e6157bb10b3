"""What one ledger entry is, byte for byte: its fields, its canonical encoding, its hash and the
message its site signs.

An entry's hash is SHA-256 over the canonical JSON of every field but ``hash`` and
``signature``: keys sorted, no whitespace, UTF-8, the payload embedded as the canonical JSON text
the ledger stores. Anyone holding the rows and the site's public key can recompute it without
onshore. The signature is Ed25519 over :data:`SIGNATURE_CONTEXT` followed by the 32 bytes of the
hash; the context keeps a ledger signature from ever passing for a signature the same key makes
on something else (a release bundle, say).

Conventions every writer follows, so that ``verify`` can check them:

- ``payload["objects"]`` (:data:`OBJECTS_FIELD`) lists ``{"path", "sha256"}`` of objects in *this*
  site's store that the entry vouches for: what a ``transfer_out`` sent, what a ``transfer_in``
  received, a model update's file. Each must exist there with that hash.
- ``payload["erased"]`` (:data:`ERASED_FIELD`) lists ``{"path", "sha256"}`` of objects this
  site deleted on purpose (a driver's erasure, a retention run): an entry that listed one
  before is accounted for, so ``verify`` tells an erased object from a lost one.
- Everything a site received from another site lives under :data:`RECEIVED_DIR` in its store and
  is listed by a ``transfer_in`` entry.
- ``payload["peer_heads"]`` (:data:`PEER_HEADS_FIELD`) lists the heads of other sites' ledgers
  (:class:`Head`: site, seq, hash, key fingerprint) that this site saw when it exchanged
  something with them. Any kind may carry it; ``peer_head`` entries carry only that.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from onshore.errors import LedgerError

__all__ = [
    "ERASED_FIELD",
    "GENESIS",
    "GENESIS_PREV_HASH",
    "KINDS",
    "KIND_PATTERN",
    "OBJECTS_FIELD",
    "PEER_HEADS_FIELD",
    "RECEIVED_DIR",
    "SIGNATURE_CONTEXT",
    "TIME_PATTERN",
    "Entry",
    "Head",
    "canonical_json",
    "entry_bytes",
    "entry_digest",
    "fingerprint",
    "format_time",
    "is_hex64",
    "parse_time",
    "public_key_hex",
]

RECEIVED_DIR: Final = "received"
"""Store prefix under which a site keeps everything that came from another site. Only the gate's
transfer writes there, and every object there must be listed by a ``transfer_in`` entry."""

ERASED_FIELD: Final = "erased"
"""Payload field listing ``{"path": ..., "sha256": ...}`` of objects this site deleted on
purpose; entries before it that list one no longer need it in the store."""

OBJECTS_FIELD: Final = "objects"
"""Payload field listing ``{"path": ..., "sha256": ...}`` of objects in this site's store."""

PEER_HEADS_FIELD: Final = "peer_heads"
"""Payload field listing the heads of other sites' ledgers this site recorded."""

GENESIS: Final = "genesis"
"""Kind of entry 0, which pins the site's public key."""

GENESIS_PREV_HASH: Final = "0" * 64
"""The ``prev_hash`` of entry 0: there is no entry before it."""

SIGNATURE_CONTEXT: Final = b"onshore.ledger.entry.v1\x00"
"""Prefix of every signed message, so ledger signatures are never valid for anything else."""

KIND_PATTERN: Final = re.compile(r"[a-z][a-z0-9_]{0,62}")
"""What a kind may look like (matched whole). Kinds are an open set: later stages add theirs."""

KINDS: Final = frozenset(
    {
        GENESIS,
        "gate_decision",
        "transfer_out",
        "transfer_in",
        "approval_added",
        "approval_revoked",
        "federated_update",
        "federated_run_started",
        "federated_round",
        "federated_run_resumed",
        "federated_run_finished",
        "release_created",
        "release_refused",
        "licence_granted",
        "licence_refused",
        "licence_revoked",
        "remote_read",
        "peer_head",
        "erasure",
        "erasure_in",
        "erasure_confirmed",
        "erasure_completed",
        "consent_withdrawn",
        "access_request",
        "retention_run",
    }
)
"""The kinds onshore itself writes (documentation; any kind matching the pattern is accepted)."""

TIME_PATTERN: Final = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z", re.ASCII)
"""The one text form of an entry's time (matched whole)."""
_HEX64: Final = re.compile(r"[0-9a-f]{64}")


def format_time(value: datetime) -> str:
    """The one text form of an entry's time: UTC, microseconds, ``Z``. Stored as text, so the
    bytes hashed are the bytes kept (a database's own time type may round or shift them)."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def canonical_json(value: Mapping[str, Any]) -> str:
    """``value`` as canonical JSON text: keys sorted, no whitespace.

    Raises :class:`LedgerError` for what has no exact JSON form: a non-string key, a float
    that is not finite (orjson would silently write ``null``), an unknown type.
    """
    try:
        text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError as exc:
        raise LedgerError(f"ledger payload is not JSON: {exc}") from exc
    if b"null" in text:
        # orjson writes NaN and infinities as null; walk the value only when that could be so.
        _refuse_non_finite(value)
    return text.decode()


def _refuse_non_finite(value: Any) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise LedgerError(f"ledger payload holds {item}, which JSON cannot represent")
        if isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)


def entry_bytes(site: str, seq: int, time: str, kind: str, payload: str, prev_hash: str) -> bytes:
    """The canonical encoding that an entry's hash covers. Equal to the sorted-key, no-whitespace
    JSON of the six fields with ``payload`` as a JSON object, built by formatting since the
    payload is already canonical text."""
    return (
        f'{{"kind":{_string(kind)},"payload":{payload},"prev_hash":{_string(prev_hash)},'
        f'"seq":{seq},"site":{_string(site)},"time":{_string(time)}}}'
    ).encode()


_PLAIN: Final = re.compile(r"[A-Za-z0-9_.:+-]*")
"""Strings whose JSON form is the string in quotes: every value of a well-formed entry."""


def _string(value: str) -> str:
    """``value`` as a JSON string. A well-formed field needs no escaping, so the encoder is only
    called for the rest (a damaged row being verified)."""
    if _PLAIN.fullmatch(value):
        return f'"{value}"'
    return orjson.dumps(value).decode()


def entry_digest(site: str, seq: int, time: str, kind: str, payload: str, prev_hash: str) -> bytes:
    """SHA-256 of :func:`entry_bytes`: the 32 bytes whose hex is the entry's ``hash``."""
    return hashlib.sha256(entry_bytes(site, seq, time, kind, payload, prev_hash)).digest()


def public_key_hex(key: Ed25519PublicKey) -> str:
    """The raw 32-byte public key in hex, as the genesis entry records it."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def fingerprint(key: Ed25519PublicKey) -> str:
    """SHA-256 (hex) of the raw public key: how entries and peers name a site's key."""
    return hashlib.sha256(bytes.fromhex(public_key_hex(key))).hexdigest()


def is_hex64(text: object) -> bool:
    return isinstance(text, str) and _HEX64.fullmatch(text) is not None


@dataclass(frozen=True, slots=True)
class Head:
    """The last entry of a site's ledger, as another site records it."""

    site: str
    seq: int
    hash: str
    key: str
    """Fingerprint of the key the site's genesis entry pins."""

    def as_dict(self) -> dict[str, Any]:
        return {"site": self.site, "seq": self.seq, "hash": self.hash, "key": self.key}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Head:
        """A head from a payload's ``peer_heads``; raises :class:`LedgerError` when malformed."""
        site, seq, digest, key = (data.get(k) for k in ("site", "seq", "hash", "key"))
        if (
            not isinstance(site, str)
            or not isinstance(seq, int)
            or isinstance(seq, bool)
            or seq < 0
            or not is_hex64(digest)
            or not is_hex64(key)
        ):
            raise LedgerError(f"malformed peer head {dict(data)!r}")
        return cls(site, seq, str(digest), str(key))


@dataclass(frozen=True, slots=True)
class Entry:
    """One ledger entry as stored. ``payload`` is the stored canonical JSON text; :attr:`data`
    parses it."""

    site: str
    seq: int
    time: str
    """UTC, ``YYYY-MM-DDTHH:MM:SS.ffffffZ``."""
    kind: str
    payload: str
    prev_hash: str
    hash: str
    signature: str
    """Ed25519 signature, hex."""

    @property
    def data(self) -> dict[str, Any]:
        """The payload as a dict."""
        value = orjson.loads(self.payload)
        if not isinstance(value, dict):
            raise LedgerError(f"{self.site} entry {self.seq}: payload is not a JSON object")
        return value

    @property
    def timestamp(self) -> datetime:
        return parse_time(self.time)

    def encoded(self) -> bytes:
        """The bytes this entry's hash covers."""
        return entry_bytes(self.site, self.seq, self.time, self.kind, self.payload, self.prev_hash)

    def head(self, key: str) -> Head:
        """This entry as the head of its ledger, under the site key fingerprint ``key``."""
        return Head(self.site, self.seq, self.hash, key)

    def stored(self) -> dict[str, Any]:
        """The entry's fields exactly as stored (the payload as its canonical text): what a
        party sends a peer who checks the entry's hash and signature itself."""
        return {
            "site": self.site,
            "seq": self.seq,
            "time": self.time,
            "kind": self.kind,
            "payload": self.payload,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
            "signature": self.signature,
        }

    def as_dict(self) -> dict[str, Any]:
        """The entry with its payload parsed, as ``onshore ledger show --json`` prints it. A
        damaged payload that is not a JSON object is given as its stored text."""
        try:
            payload: dict[str, Any] | str = self.data
        except (orjson.JSONDecodeError, LedgerError):
            payload = self.payload
        return {
            "site": self.site,
            "seq": self.seq,
            "time": self.time,
            "kind": self.kind,
            "payload": payload,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
            "signature": self.signature,
        }
