"""Signed messages between parties: every request and every answer carries a stamp.

A stamp says who sends what to whom, when, in answer to what, the SHA-256 of the body and the
sender's ledger head; it travels as two HTTP headers, the stamp's canonical JSON (base64url) and
the sender's Ed25519 signature over :data:`MESSAGE_CONTEXT` and its hash::

    Onshore-Stamp: eyJib2R5IjoiLi4uIn0
    Onshore-Signature: 3q2-7w...

The receiver checks, in this order, and refuses with one word for scripts (the ``reason`` of
:class:`~onshore.errors.RequestRefused`):

- ``malformed``: no stamp, or not one;
- ``untrusted``: the sender is not a peer on file, or its TLS certificate is another peer's;
- ``misdirected``: the stamp is for another party;
- ``signature``: the signature is not the sender's ledger key's;
- ``clock``: the stamp's time is further from the receiver's clock than the skew allowed;
- ``replay``: a stamp with this id was received before (ids are kept in the receiver's
  catalogue, :data:`seen_table`, longer than the skew, so a replay is caught after a restart);
- ``body``: the body is not the one the stamp hashes.

The sender's head is the witness: each side learns the other's head on every exchange.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson
from cryptography.exceptions import InvalidSignature
from sqlalchemy import Column, DateTime, MetaData, String, Table, delete
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from onshore.errors import LedgerError, RequestRefused
from onshore.ledger.entry import Head, canonical_json
from onshore.parties.identity import Identity
from onshore.sites.keystore import SiteKeys

__all__ = [
    "MESSAGE_CONTEXT",
    "SIGNATURE_HEADER",
    "STAMP_HEADER",
    "STREAMED",
    "ReplayGuard",
    "Stamp",
    "body_digest",
    "new_stamp",
    "open_stamp",
    "seal",
    "seen_table",
]

MESSAGE_CONTEXT: Final = b"onshore.party.message.v1\x00"
"""Prefix of every signed message: never valid as a ledger entry's or an identity's signature."""
STAMP_HEADER: Final = "onshore-stamp"
SIGNATURE_HEADER: Final = "onshore-signature"
STREAMED: Final = "streamed"
"""``body_sha256`` of a streamed body: its objects are checked one by one against the hashes a
signed message listed before."""

_metadata = MetaData()
seen_table: Final = Table(
    "party_messages_seen",
    _metadata,
    Column("party", String(64), primary_key=True),
    Column("id", String(64), primary_key=True),
    Column("sender", String(64), nullable=False),
    Column("sent_at", DateTime(timezone=True), nullable=False),
)
"""The stamps a party received, by id, so that a replayed message is refused."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


@dataclass(frozen=True, slots=True)
class Stamp:
    """The signed facts of one message."""

    id: str
    sender: str
    recipient: str
    kind: str
    """What the message is, e.g. ``transfer.offer`` or ``transfer.offer.answer``."""
    time: str
    """UTC, ISO 8601 with microseconds."""
    body_sha256: str
    head: Head | None
    """The sender's ledger head when it sent the message."""
    reply_to: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "from": self.sender,
            "to": self.recipient,
            "kind": self.kind,
            "time": self.time,
            "body_sha256": self.body_sha256,
            "head": None if self.head is None else self.head.as_dict(),
            "reply_to": self.reply_to,
        }

    @property
    def moment(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.time)

    def encoded(self) -> bytes:
        return canonical_json(self.as_dict()).encode()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Stamp:
        head = data.get("head")
        try:
            stamp = cls(
                id=str(data["id"]),
                sender=str(data["from"]),
                recipient=str(data["to"]),
                kind=str(data["kind"]),
                time=str(data["time"]),
                body_sha256=str(data["body_sha256"]),
                head=None if head is None else Head.from_dict(head),
                reply_to=None if data.get("reply_to") is None else str(data["reply_to"]),
            )
            stamp.moment  # noqa: B018 - parse the time now, so a bad one is malformed
        except (KeyError, TypeError, ValueError, LedgerError) as exc:
            raise RequestRefused(f"the stamp is malformed: {exc}", reason="malformed") from None
        return stamp


def new_stamp(
    sender: str,
    recipient: str,
    kind: str,
    body: bytes | None,
    *,
    head: Head | None,
    reply_to: str | None = None,
    now: dt.datetime | None = None,
) -> Stamp:
    """A fresh stamp for ``body`` (``None``: a streamed body, see :data:`STREAMED`)."""
    moment = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    return Stamp(
        id=secrets.token_hex(16),
        sender=sender,
        recipient=recipient,
        kind=kind,
        time=moment.isoformat(timespec="microseconds"),
        body_sha256=STREAMED if body is None else body_digest(body),
        head=head,
        reply_to=reply_to,
    )


def seal(stamp: Stamp, keys: SiteKeys) -> dict[str, str]:
    """The two headers that carry ``stamp`` and the sender's signature of it."""
    encoded = stamp.encoded()
    signature = keys.sign(MESSAGE_CONTEXT + hashlib.sha256(encoded).digest())
    return {STAMP_HEADER: _b64(encoded), SIGNATURE_HEADER: _b64(signature)}


def open_stamp(
    headers: Mapping[str, str],
    *,
    receiver: str,
    peers: Mapping[str, Identity],
    skew: float,
    body: bytes | None,
    tls_peer: str | None = None,
    now: dt.datetime | None = None,
) -> tuple[Stamp, Identity]:
    """Check a message's stamp (see the module's description) and return it with its sender.

    ``tls_peer``: the fingerprint of the certificate the connection presented, which must be
    the sender's (None when there is no TLS connection, as in tests driving an app in process).
    ``body``: the body as received, or None for a streamed body. Raises
    :class:`RequestRefused` with the reason.
    """
    raw, signature = headers.get(STAMP_HEADER), headers.get(SIGNATURE_HEADER)
    if not raw or not signature:
        raise RequestRefused("the message has no stamp or no signature", reason="malformed")
    try:
        encoded = _unb64(raw)
        data = orjson.loads(encoded)
        signed = _unb64(signature)
    except (ValueError, orjson.JSONDecodeError):
        raise RequestRefused("the stamp is not base64url JSON", reason="malformed") from None
    if not isinstance(data, dict):
        raise RequestRefused("the stamp is not a JSON object", reason="malformed")
    stamp = Stamp.from_dict(data)
    if stamp.encoded() != encoded:
        raise RequestRefused("the stamp is not in canonical form", reason="malformed")
    sender = peers.get(stamp.sender)
    if sender is None:
        raise RequestRefused(f"{stamp.sender!r} is not a peer on file here", reason="untrusted")
    if tls_peer is not None and tls_peer != sender.tls_fingerprint:
        raise RequestRefused(
            f"the message says it is from {stamp.sender}, but the connection presented "
            "another party's certificate",
            reason="untrusted",
        )
    if stamp.recipient != receiver:
        raise RequestRefused(
            f"the message is for {stamp.recipient}, not {receiver}", reason="misdirected"
        )
    try:
        sender.key.verify(signed, MESSAGE_CONTEXT + hashlib.sha256(encoded).digest())
    except InvalidSignature:
        raise RequestRefused(
            f"the signature is not {stamp.sender}'s (its ledger key "
            f"{sender.key_fingerprint[:16]}...)",
            reason="signature",
        ) from None
    moment = now or dt.datetime.now(dt.UTC)
    off = (stamp.moment - moment).total_seconds()
    if abs(off) > skew:
        raise RequestRefused(
            f"{stamp.sender}'s clock is {abs(off):.0f} s {'ahead of' if off > 0 else 'behind'} "
            f"{receiver}'s; at most {skew:g} s is accepted",
            hint="synchronise both machines' clocks (NTP)",
            reason="clock",
        )
    if stamp.head is not None and stamp.head.site != stamp.sender:
        raise RequestRefused("the stamp's head is another party's", reason="malformed")
    if body is None:
        if stamp.body_sha256 != STREAMED:
            raise RequestRefused("a streamed body was stamped as a whole", reason="body")
    elif stamp.body_sha256 != body_digest(body):
        raise RequestRefused(
            "the body is not the one the stamp hashes: it was changed or cut short",
            reason="body",
        )
    return stamp, sender


class ReplayGuard:
    """The ids of the stamps a party received, in its catalogue database."""

    def __init__(self, engine: Engine, party: str, *, keep: float) -> None:
        self.engine = engine
        self.party = party
        self.keep = dt.timedelta(seconds=max(keep, 60.0))
        """How long ids are kept: longer than any stamp's time is accepted."""
        _metadata.create_all(engine, tables=[seen_table])
        self._checks = 0

    def check(self, stamp: Stamp) -> None:
        """Record ``stamp``'s id; raises :class:`RequestRefused` (``replay``) if it was seen."""
        moment = stamp.moment
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    seen_table.insert().values(
                        party=self.party, id=stamp.id, sender=stamp.sender, sent_at=moment
                    )
                )
                self._checks += 1
                if self._checks % 200 == 1:
                    cutoff = dt.datetime.now(dt.UTC) - 2 * self.keep
                    conn.execute(
                        delete(seen_table).where(
                            seen_table.c.party == self.party, seen_table.c.sent_at < cutoff
                        )
                    )
        except IntegrityError:
            raise RequestRefused(
                f"message {stamp.id} from {stamp.sender} was received before: a replay",
                reason="replay",
            ) from None
