"""A site's ledger: append-only, hash-chained, signed entries in the site's catalogue database.

The ledger keeps its own tables beside the catalogue's, in the same database, so that one
transaction can register what a transfer brought and write the entry that says so: pass the
connection of :meth:`Catalogue.transaction` as ``conn`` and both commit or neither does.

Appenders never fork the chain. Each append first writes the site's row in ``ledger_heads`` (a
no-op update) and only then reads the head: that write is a row lock on PostgreSQL and the
database write lock on SQLite, held to the end of the transaction, so a second appender waits
and then reads the head the first one left. ``(site, seq)`` is the primary key besides, so a
writer that bypassed the lock could not slip a second entry in at the same place. (On SQLite the
catalogue's connections begin a transaction at its first write, so reads a caller made earlier
in its transaction hold no snapshot that the lock could find stale.)

The head row also lets ``verify`` see a truncated tail: the chain must end where the head says.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import BigInteger, Column, Engine, Index, MetaData, String, Table, Text, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError, SQLAlchemyError

from onshore.errors import CatalogueError, LedgerError, LedgerTampered
from onshore.ledger.entry import (
    GENESIS,
    GENESIS_PREV_HASH,
    KIND_PATTERN,
    PEER_HEADS_FIELD,
    SIGNATURE_CONTEXT,
    Entry,
    Head,
    canonical_json,
    entry_bytes,
    fingerprint,
    format_time,
    is_hex64,
    public_key_hex,
)
from onshore.sites.keystore import SiteKeys
from onshore.store.catalogue import Catalogue

__all__ = ["Ledger", "PinnedKey", "entries_table", "genesis_payload", "heads_table", "pinned_by"]

_RETRIES: Final = 5

_metadata = MetaData()

entries_table = Table(
    "ledger_entries",
    _metadata,
    Column("site", String(64), primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("time", String(32), nullable=False),
    Column("kind", String(64), nullable=False),
    Column("payload", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Column("signature", String(128), nullable=False),
    Index("ix_ledger_entries_kind", "site", "kind"),
)
"""One row per entry. Every column is text or an integer: the bytes hashed are the bytes kept."""

heads_table = Table(
    "ledger_heads",
    _metadata,
    Column("site", String(64), primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)
"""One row per site: where its chain ends. Appenders lock it; ``verify`` checks the chain ends
there."""


@dataclass(frozen=True, slots=True)
class PinnedKey:
    """What the genesis entry pins: the site's public key and its fingerprint."""

    key: Ed25519PublicKey
    fingerprint: str


class Ledger:
    """The ledger of ``site`` in ``engine``'s database. Open it with :meth:`open`.

    With ``keys`` the ledger can append, and opening it writes the genesis entry if the site has
    none; without, it is read-only (``show``, ``verify``, a peer's ledger) and opening it writes
    nothing but its tables, so verifying a ledger can never re-create one that was deleted.
    """

    def __init__(self, engine: Engine, site: str, keys: SiteKeys | None = None) -> None:
        self.engine = engine
        self.site = site
        self._keys = keys
        self._pinned: PinnedKey | None = None

    @classmethod
    def open(cls, catalogue: Catalogue, keys: SiteKeys | None = None) -> Ledger:
        """The ledger of ``catalogue``'s site, in its database (tables created on first use).

        With ``keys``, writes the genesis entry if the site has no ledger yet, and raises
        :class:`LedgerTampered` if the ledger pins another key than ``keys`` holds: a site must
        not extend a chain it cannot sign as its own.
        """
        ledger = cls(catalogue.engine, catalogue.site, keys)
        ledger.create_tables()
        if keys is not None:
            ledger._ensure_genesis(keys)
            pinned = ledger.pinned_fingerprint()
            if pinned != fingerprint(keys.public_key):
                raise LedgerTampered(
                    f"{ledger.site}: the ledger's genesis pins key {pinned and pinned[:16]}..., "
                    f"but the keystore holds {fingerprint(keys.public_key)[:16]}...",
                    hint="restore the site's keystore, or run 'onshore ledger verify' to see "
                    "what changed",
                )
        return ledger

    def create_tables(self) -> None:
        """Create the ledger's tables if missing (two processes may race; both end up fine)."""
        for attempt in range(_RETRIES):
            try:
                _metadata.create_all(self.engine)
                return
            except (OperationalError, ProgrammingError, IntegrityError) as exc:
                if attempt == _RETRIES - 1:
                    raise CatalogueError(f"cannot create the ledger tables: {exc}") from exc

    # -- reading ----------------------------------------------------------------------------

    @contextmanager
    def _connect(self, conn: Connection | None) -> Iterator[Connection]:
        """``conn`` as it is, or a transaction of our own (committed on exit)."""
        if conn is not None:
            yield conn
            return
        try:
            with self.engine.begin() as own:
                yield own
        except OperationalError as exc:
            raise CatalogueError(f"ledger of {self.site}: database failed: {exc.orig}") from exc

    def head(self, *, conn: Connection | None = None) -> Head | None:
        """The last entry of the chain as peers record it, or None when the site has no ledger.

        Raises :class:`LedgerTampered` if the genesis entry no longer names a usable key."""
        with self._connect(conn) as c:
            row = c.execute(
                select(heads_table.c.seq, heads_table.c.hash).where(heads_table.c.site == self.site)
            ).first()
            if row is None:
                return None
            key = self.pinned_fingerprint(conn=c)
        if key is None:
            raise LedgerTampered(f"{self.site}: the ledger has a head but no genesis entry")
        return Head(self.site, int(row.seq), str(row.hash), key)

    def entries(
        self,
        *,
        since: int | None = None,
        since_time: datetime | None = None,
        kind: str | None = None,
        limit: int | None = None,
        conn: Connection | None = None,
    ) -> list[Entry]:
        """Entries in order of ``seq``: from entry ``since`` on, written at or after
        ``since_time``, of one ``kind``, at most ``limit``. (The gate counts earlier transfers in
        a window this way; times are stored in a form whose text order is time order.)"""
        query = select(entries_table).where(entries_table.c.site == self.site)
        if since is not None:
            query = query.where(entries_table.c.seq >= since)
        if since_time is not None:
            query = query.where(entries_table.c.time >= format_time(since_time))
        if kind is not None:
            query = query.where(entries_table.c.kind == kind)
        query = query.order_by(entries_table.c.seq)
        if limit is not None:
            query = query.limit(limit)
        with self._connect(conn) as c:
            rows = c.execute(query).all()
        return [Entry(**row._mapping) for row in rows]

    def entry(self, seq: int, *, conn: Connection | None = None) -> Entry | None:
        """The entry at ``seq``, if there is one."""
        with self._connect(conn) as c:
            row = c.execute(
                select(entries_table).where(
                    entries_table.c.site == self.site, entries_table.c.seq == seq
                )
            ).first()
        return None if row is None else Entry(**row._mapping)

    def last_peer_head(self, peer: str, *, conn: Connection | None = None) -> Head | None:
        """The latest head of ``peer``'s ledger that this ledger recorded (in any entry's
        ``peer_heads``), or None. By the hash chain, that one head vouches for the whole of
        the peer's history up to it."""
        query = (
            select(entries_table.c.payload)
            .where(
                entries_table.c.site == self.site,
                entries_table.c.payload.contains(f'"{PEER_HEADS_FIELD}"'),
                entries_table.c.payload.contains(f'"site":"{peer}"'),
            )
            .order_by(entries_table.c.seq.desc())
        )
        with self._connect(conn) as c:
            for (payload,) in c.execute(query):
                try:
                    records = orjson.loads(payload).get(PEER_HEADS_FIELD) or []
                    heads = [Head.from_dict(r) for r in records if isinstance(r, dict)]
                except (orjson.JSONDecodeError, AttributeError, LedgerError):
                    continue
                found = [h for h in heads if h.site == peer]
                if found:
                    return max(found, key=lambda h: h.seq)
        return None

    def pinned_fingerprint(self, *, conn: Connection | None = None) -> str | None:
        """Fingerprint of the key the genesis entry pins, or None if it pins none (no genesis,
        or a genesis that was altered so it names no valid key)."""
        pinned = self._pinned_key(conn)
        return None if pinned is None else pinned.fingerprint

    def pinned_key(self, *, conn: Connection | None = None) -> Ed25519PublicKey | None:
        """The public key the genesis entry pins (see :meth:`pinned_fingerprint`)."""
        pinned = self._pinned_key(conn)
        return None if pinned is None else pinned.key

    def _pinned_key(self, conn: Connection | None) -> PinnedKey | None:
        if self._pinned is None:
            genesis = self.entry(0, conn=conn)
            self._pinned = None if genesis is None else pinned_by(genesis)
        return self._pinned

    # -- writing ----------------------------------------------------------------------------

    def append(
        self,
        kind: str,
        payload: Mapping[str, Any],
        *,
        conn: Connection | None = None,
        peer_heads: Sequence[Head] = (),
    ) -> Entry:
        """Append one signed entry and return it.

        ``conn`` is a caller's open transaction (from :meth:`Catalogue.transaction`): the entry
        commits with it, or rolls back with it. Without, the entry commits on its own.
        ``peer_heads`` are heads of other sites' ledgers to record in the payload (see
        :data:`~onshore.ledger.entry.PEER_HEADS_FIELD`). Raises :class:`LedgerError` for a kind
        or payload the ledger refuses, or when it was opened without keys.
        """
        if any(h.site == self.site for h in peer_heads):
            raise LedgerError(f"{self.site} cannot record its own head as a peer's")
        if peer_heads:
            payload = {**payload, PEER_HEADS_FIELD: [h.as_dict() for h in peer_heads]}
        (entry,) = self.append_many([(kind, payload)], conn=conn)
        return entry

    def record_peer_head(self, head: Head, *, conn: Connection | None = None) -> Entry:
        """Append a ``peer_head`` entry recording another site's head, so that a later rewrite
        of that site's history up to ``head`` is caught when this ledger is verified."""
        return self.append("peer_head", {}, conn=conn, peer_heads=[head])

    def append_many(
        self, items: Sequence[tuple[str, Mapping[str, Any]]], *, conn: Connection | None = None
    ) -> list[Entry]:
        """Append several entries, in order, under one lock and one insert; see :meth:`append`.

        This is how a busy writer keeps up: one transaction for many entries costs little more
        than the signatures themselves.
        """
        keys = self._require_keys()
        prepared = [self._prepare(kind, payload) for kind, payload in items]
        if not prepared:
            return []
        with self._connect(conn) as c:
            return self._append_locked(c, keys, prepared)

    def _require_keys(self) -> SiteKeys:
        if self._keys is None:
            raise LedgerError(
                f"the ledger of {self.site} was opened without its keys: it cannot sign",
                hint="open it with the site's keystore: Ledger.open(catalogue, keys)",
            )
        return self._keys

    def _prepare(self, kind: str, payload: Mapping[str, Any]) -> tuple[str, str]:
        if not isinstance(kind, str) or not KIND_PATTERN.fullmatch(kind):
            raise LedgerError(
                f"ledger kind {kind!r} is not valid",
                hint="a kind is lower case letters, digits and _, starting with a letter",
            )
        if kind == GENESIS:
            raise LedgerError("only a new ledger's first entry is a genesis entry")
        if not isinstance(payload, Mapping):
            raise LedgerError(f"a ledger payload is a JSON object, not {type(payload).__name__}")
        return kind, canonical_json(payload)

    def _append_locked(
        self, conn: Connection, keys: SiteKeys, prepared: Sequence[tuple[str, str]]
    ) -> list[Entry]:
        # Lock first, read after: see the module docstring.
        locked = conn.execute(
            heads_table.update()
            .where(heads_table.c.site == self.site)
            .values(seq=heads_table.c.seq)
        )
        if locked.rowcount != 1:
            raise LedgerTampered(
                f"{self.site}: the ledger has no head record",
                hint="run 'onshore ledger verify' to see what happened to it",
            )
        seq, prev = conn.execute(
            select(heads_table.c.seq, heads_table.c.hash).where(heads_table.c.site == self.site)
        ).one()
        now = format_time(datetime.now(UTC))
        entries = []
        for kind, payload in prepared:
            seq += 1
            entry = _signed(keys, self.site, seq, now, kind, payload, prev)
            entries.append(entry)
            prev = entry.hash
        _insert(conn, entries)
        conn.execute(
            heads_table.update()
            .where(heads_table.c.site == self.site)
            .values(seq=entries[-1].seq, hash=entries[-1].hash)
        )
        return entries

    def _ensure_genesis(self, keys: SiteKeys) -> None:
        """Write entry 0, pinning the site's public key, unless the site has a ledger. Done in a
        transaction of its own at open, never inside a caller's, so racing openers can retry."""
        for attempt in range(_RETRIES):
            try:
                with self._connect(None) as conn:
                    has_head = conn.execute(
                        select(heads_table.c.seq).where(heads_table.c.site == self.site)
                    ).first()
                    has_entries = conn.execute(
                        select(entries_table.c.seq)
                        .where(entries_table.c.site == self.site)
                        .limit(1)
                    ).first()
                    if has_head is not None or has_entries is not None:
                        return  # a ledger exists (verify judges whether it is whole)
                    genesis = _signed(
                        keys,
                        self.site,
                        0,
                        format_time(datetime.now(UTC)),
                        GENESIS,
                        canonical_json(genesis_payload(self.site, keys.public_key)),
                        GENESIS_PREV_HASH,
                    )
                    conn.execute(
                        heads_table.insert().values(site=self.site, seq=0, hash=genesis.hash)
                    )
                    conn.execute(entries_table.insert().values(**_row(genesis)))
                    return
            except IntegrityError as exc:
                # Another process started this site's ledger between our read and our insert.
                if attempt == _RETRIES - 1:
                    raise CatalogueError(
                        f"{self.site}: cannot start the ledger: {exc.orig}"
                    ) from exc
            except SQLAlchemyError as exc:
                raise CatalogueError(f"{self.site}: cannot start the ledger: {exc}") from exc


def genesis_payload(site: str, key: Ed25519PublicKey) -> dict[str, Any]:
    """What entry 0 says: the site, its raw public key and the key's fingerprint."""
    return {
        "site": site,
        "algorithm": "ed25519",
        "public_key": public_key_hex(key),
        "key": fingerprint(key),
    }


def pinned_by(genesis: Entry) -> PinnedKey | None:
    """The key a genesis entry pins, if it names a valid one whose fingerprint matches."""
    try:
        data = genesis.data
    except (ValueError, LedgerError):
        return None
    raw, claimed = data.get("public_key"), data.get("key")
    if not isinstance(raw, str) or not is_hex64(claimed):
        return None
    try:
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(raw))
    except ValueError:
        return None
    if fingerprint(key) != claimed:
        return None
    return PinnedKey(key, str(claimed))


def _signed(
    keys: SiteKeys, site: str, seq: int, time: str, kind: str, payload: str, prev: str
) -> Entry:
    digest = hashlib.sha256(entry_bytes(site, seq, time, kind, payload, prev)).digest()
    signature = keys.sign(SIGNATURE_CONTEXT + digest)
    return Entry(site, seq, time, kind, payload, prev, digest.hex(), signature.hex())


def _row(entry: Entry) -> dict[str, Any]:
    return {
        "site": entry.site,
        "seq": entry.seq,
        "time": entry.time,
        "kind": entry.kind,
        "payload": entry.payload,
        "prev_hash": entry.prev_hash,
        "hash": entry.hash,
        "signature": entry.signature,
    }


_FIELDS: Final = ("site", "seq", "time", "kind", "payload", "prev_hash", "hash", "signature")
"""The columns :func:`_insert` fills, in the order of the tuples it passes."""
_INSERT: Final = (
    f"INSERT INTO {entries_table.name} ({', '.join(_FIELDS)}) "
    f"VALUES ({', '.join(['{0}'] * len(_FIELDS))})"
)
_POSITIONAL: Final = {"qmark": "?", "format": "%s", "pyformat": "%s"}


def _insert(conn: Connection, entries: Sequence[Entry]) -> None:
    """Insert rows straight through the driver where it takes positional parameters: per row,
    SQLAlchemy's parameter handling cost a third as much as signing the entry."""
    marker = _POSITIONAL.get(conn.dialect.paramstyle)
    if marker is None:
        conn.execute(entries_table.insert(), [_row(e) for e in entries])
        return
    conn.exec_driver_sql(
        _INSERT.format(marker),
        [
            (e.site, e.seq, e.time, e.kind, e.payload, e.prev_hash, e.hash, e.signature)
            for e in entries
        ],
    )
