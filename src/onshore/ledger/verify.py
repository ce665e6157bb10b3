"""``verify``: whether a site's ledger is the one its site wrote, and whether its store agrees.

Checked on the site's own rows: entries numbered 0, 1, 2 ... without a gap; entry 0 a genesis
that pins a valid key; each ``prev_hash`` the hash of the entry before; each hash recomputed from
the stored fields; each signature valid under the pinned key; the chain ending where the head
record says; kinds, times and payloads in their one canonical form. And the pinned key must be
the key in the site's keystore, when that is given.

A site holds its own key, so it could rewrite its history and re-sign all of it, or swap its
key and start over; the rows alone cannot show that. Other sites can: each records the heads of
the ledgers it exchanges with (hash and key fingerprint). Given the peers' ledgers, ``verify``
checks both directions: every head this site recorded of a peer is still in the peer's chain
with that hash (else the peer rewrote or truncated its history), and every head a peer recorded
of this site is still in this chain with that hash and key (else this site did). What happened
after the last head a peer recorded is vouched for only by the site's own signatures, which is
why sites record each other's heads whenever they exchange anything.

Given the site's object store, ``verify`` also checks that store and ledger agree: every object
an entry lists exists with the listed hash, and everything under ``received/`` is listed by a
``transfer_in`` entry.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from onshore.checks import Check
from onshore.errors import LedgerError, LedgerTampered, OnshoreError
from onshore.ledger.chain import Ledger, PinnedKey, entries_table, heads_table, pinned_by
from onshore.ledger.entry import (
    ERASED_FIELD,
    GENESIS,
    GENESIS_PREV_HASH,
    KIND_PATTERN,
    OBJECTS_FIELD,
    PEER_HEADS_FIELD,
    RECEIVED_DIR,
    SIGNATURE_CONTEXT,
    TIME_PATTERN,
    Entry,
    Head,
    entry_bytes,
    fingerprint,
    is_hex64,
)
from onshore.store.objects import ObjectStore, sha256

__all__ = ["VerifyReport", "verify"]

_SIGNATURE_HEX: Final = re.compile(r"[0-9a-f]{128}")

_COLUMNS: Final = (
    entries_table.c.seq,
    entries_table.c.time,
    entries_table.c.kind,
    entries_table.c.payload,
    entries_table.c.prev_hash,
    entries_table.c.hash,
    entries_table.c.signature,
)


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What ``verify`` checked and found. ``ok`` when ``problems`` is empty."""

    site: str
    entries: int
    head: Head | None
    """The head of the chain as stored (None when the site has no ledger)."""
    peers: tuple[str, ...] = ()
    """Sites whose ledgers were compared with this one."""
    peer_heads: int = 0
    """Cross-recorded heads compared, in both directions."""
    objects: int = 0
    """Objects listed by entries whose existence (and hash) was checked."""
    received: int = 0
    """Objects found under ``received/``."""
    problems: tuple[Check, ...] = ()
    notes: tuple[str, ...] = ()
    """What could not be checked, and why (a peer out of reach, no keystore)."""

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        """The report as ``onshore ledger verify --json`` prints it."""
        return {
            "site": self.site,
            "ok": self.ok,
            "entries": self.entries,
            "head": None if self.head is None else self.head.as_dict(),
            "peers": list(self.peers),
            "peer_heads": self.peer_heads,
            "objects": self.objects,
            "received": self.received,
            "problems": [p.as_dict() for p in self.problems],
            "notes": list(self.notes),
        }

    def raise_for_problems(self) -> None:
        """Raise :class:`LedgerTampered` naming the first problem, if there is any."""
        if self.problems:
            first = self.problems[0]
            where = "" if first.seq is None else f" entry {first.seq}"
            raise LedgerTampered(
                f"{first.site}{where}: {first.reason}",
                hint=f"{len(self.problems)} problem(s) in all; run 'onshore ledger verify "
                f"--site {self.site}' to list them",
            )


@dataclass(slots=True)
class _Chain:
    """One site's rows, as far as the checks have made sense of them."""

    site: str
    rows: list[Any]
    head_row: Any
    pinned: PinnedKey | None = None
    computed: dict[int, str] = field(default_factory=dict)
    """seq -> hash recomputed from the stored fields."""
    intact_to: int = -1
    """Entries 0..intact_to are contiguous, each hashing to its stored hash and linked."""
    claims: dict[int, str] = field(default_factory=dict)
    """seq -> payload text, for the entries that list objects or peer heads. Kept as text, which
    the garbage collector never walks: holding every parsed payload made it the bottleneck."""
    by_seq: dict[int, Any] = field(default_factory=dict)
    problems: list[Check] = field(default_factory=list)

    def problem(self, seq: int | None, check: str, reason: str) -> None:
        self.problems.append(Check.failed(self.site, seq, check, reason))


def _load(ledger: Ledger, conn: Connection) -> _Chain:
    rows = conn.execute(
        select(*_COLUMNS).where(entries_table.c.site == ledger.site).order_by(entries_table.c.seq)
    ).all()
    head_row = conn.execute(
        select(heads_table.c.seq, heads_table.c.hash).where(heads_table.c.site == ledger.site)
    ).first()
    return _Chain(ledger.site, list(rows), head_row)


def _scan(chain: _Chain, *, signatures: bool, fallback_key: Ed25519PublicKey | None) -> None:
    """Check the chain's own rows: sequence, genesis, links, hashes, formats, signatures."""
    site, rows = chain.site, chain.rows
    if not rows:
        if chain.head_row is not None:
            chain.problem(
                None,
                "head",
                f"the head record says the chain ends at entry {chain.head_row.seq}, "
                "but the ledger has no entries: it was deleted",
            )
        return
    # Rows come in order of seq; one given a negative number would sort before entry 0.
    genesis = next((r for r in rows if int(r.seq) >= 0), None)
    if genesis is not None and int(genesis.seq) == 0:
        chain.pinned = pinned_by(Entry(site, *genesis))
        if genesis.kind != GENESIS:
            chain.problem(0, "genesis", f"entry 0 is a {genesis.kind!r} entry, not the genesis")
        if chain.pinned is None:
            chain.problem(0, "genesis", "the genesis entry does not pin a valid public key")
    else:
        chain.problem(0, "sequence", "entry 0, the genesis that pins the site's key, is missing")
    key = chain.pinned.key if chain.pinned is not None else fallback_key
    if signatures and key is None:
        chain.problem(None, "signature", "no key to check signatures against")
    expected, prev, intact = 0, None, True
    for row in rows:
        seq = int(row.seq)
        if seq > expected:
            intact = False
            missing = (
                f"entry {expected}" if seq == expected + 1 else f"entries {expected}..{seq - 1}"
            )
            chain.problem(expected, "sequence", f"{missing} missing before entry {seq}")
        elif seq < expected:  # a negative number: not part of the chain from entry 0
            chain.problem(seq, "sequence", f"entry number {seq} is out of sequence")
        if seq == 0:
            link: str | None = GENESIS_PREV_HASH
        elif prev is not None and int(prev.seq) == seq - 1:
            link = str(prev.hash)
        else:
            link = None  # the gap is reported above
        if link is not None and row.prev_hash != link:
            intact = False
            chain.problem(
                seq, "link", f"prev_hash is not the hash of entry {seq - 1}: the chain is broken"
            )
        if not KIND_PATTERN.fullmatch(str(row.kind)) or (row.kind == GENESIS) != (seq == 0):
            chain.problem(seq, "format", f"kind {row.kind!r} is not valid at entry {seq}")
        if not TIME_PATTERN.fullmatch(str(row.time)):
            chain.problem(seq, "format", f"time {row.time!r} is not a canonical UTC time")
        digest = hashlib.sha256(
            entry_bytes(
                site, seq, str(row.time), str(row.kind), str(row.payload), str(row.prev_hash)
            )
        ).digest()
        computed = digest.hex()
        chain.computed[seq] = computed
        chain.by_seq[seq] = row
        if computed != row.hash:
            intact = False
            chain.problem(seq, "hash", "the stored hash is not the hash of the entry's fields")
        if signatures and key is not None:
            _check_signature(chain, seq, key, digest, row.signature)
        _parse_payload(chain, seq, row.payload)
        if intact:
            chain.intact_to = seq
        expected, prev = max(expected, seq + 1), row
    last = rows[-1]
    head = chain.head_row
    if head is None:
        chain.problem(None, "head", "the ledger has entries but no head record")
    elif int(head.seq) != int(last.seq) or head.hash != last.hash:
        chain.problem(
            int(last.seq),
            "head",
            f"the head record says the chain ends at entry {head.seq} ({str(head.hash)[:12]}), "
            f"but it ends at entry {last.seq} ({str(last.hash)[:12]}): entries were removed or "
            "added outside the ledger",
        )


def _check_signature(
    chain: _Chain, seq: int, key: Ed25519PublicKey, digest: bytes, signature: object
) -> None:
    # Only the one text form: bytes.fromhex would take upper case too, so a changed letter
    # case would otherwise pass as the same signature.
    if not isinstance(signature, str) or not _SIGNATURE_HEX.fullmatch(signature):
        chain.problem(seq, "signature", "the signature is not 128 lower-case hex digits")
        return
    try:
        key.verify(bytes.fromhex(signature), SIGNATURE_CONTEXT + digest)
    except InvalidSignature:
        chain.problem(seq, "signature", "the signature is not the site's signature of this entry")


def _parse_payload(chain: _Chain, seq: int, text: object) -> None:
    try:
        value = orjson.loads(str(text))
    except orjson.JSONDecodeError:
        chain.problem(seq, "payload", "the payload is not JSON")
        return
    if not isinstance(value, dict):
        chain.problem(seq, "payload", "the payload is not a JSON object")
        return
    if orjson.dumps(value, option=orjson.OPT_SORT_KEYS) != str(text).encode():
        chain.problem(seq, "payload", "the payload is not in canonical form")
    if OBJECTS_FIELD in value or PEER_HEADS_FIELD in value or ERASED_FIELD in value:
        chain.claims[seq] = str(text)


def _claims(chain: _Chain) -> Iterator[tuple[int, dict[str, Any]]]:
    """(seq, payload) of the entries that list objects or peer heads."""
    for seq, text in chain.claims.items():
        yield seq, orjson.loads(text)


def _peer_heads(chain: _Chain) -> Iterator[tuple[int, Head]]:
    """(seq of the recording entry, head) for every head this chain recorded of another site;
    a malformed record is a problem of the recording entry."""
    for seq, payload in _claims(chain):
        records = payload.get(PEER_HEADS_FIELD)
        if records is None:
            continue
        if not isinstance(records, list):
            chain.problem(seq, "payload", f"{PEER_HEADS_FIELD} is not a list")
            continue
        for record in records:
            try:
                yield seq, Head.from_dict(record if isinstance(record, dict) else {})
            except LedgerError as exc:
                chain.problem(seq, "payload", exc.message)


def _compare_recorded(recorder: _Chain, seq: int, head: Head, target: _Chain) -> None:
    """Whether ``target``'s chain still holds the head ``recorder`` recorded of it in its entry
    ``seq``. A mismatch is ``target``'s problem: its history is not what it showed."""
    who, whose = recorder.site, target.site
    recorded = f"{who} recorded in its entry {seq}"
    computed = target.computed.get(head.seq)
    if computed is None:
        target.problem(
            head.seq,
            "peer_head",
            f"no entry {head.seq}, whose hash {recorded}: {whose}'s history was truncated",
        )
    elif computed != head.hash:
        target.problem(
            head.seq,
            "peer_head",
            f"entry {head.seq} hashes to {computed[:12]}, but {who} recorded {head.hash[:12]} "
            f"in its entry {seq}: {whose} rewrote its history",
        )
    elif target.intact_to < head.seq:
        target.problem(
            head.seq,
            "peer_head",
            f"entries 0..{head.seq} no longer hold together, though {recorded} the hash of "
            f"entry {head.seq}: {whose} changed its history",
        )
    pinned = target.pinned
    if pinned is not None and head.key != pinned.fingerprint:
        target.problem(
            0,
            "key",
            f"{who} recorded {whose}'s key as {head.key[:16]}... in its entry {seq}, but the "
            f"genesis pins {pinned.fingerprint[:16]}...: {whose}'s key was swapped",
        )


def _authentic(chain: _Chain, seq: int) -> bool:
    """Whether entry ``seq`` of a peer's chain is the peer's own (hash and signature), so what it
    records may be held against another site."""
    computed, row = chain.computed.get(seq), chain.by_seq.get(seq)
    if chain.pinned is None or computed is None or row is None or computed != row.hash:
        return False
    if not isinstance(row.signature, str) or not _SIGNATURE_HEX.fullmatch(row.signature):
        return False
    try:
        chain.pinned.key.verify(
            bytes.fromhex(row.signature), SIGNATURE_CONTEXT + bytes.fromhex(computed)
        )
    except InvalidSignature:
        return False
    return True


@contextmanager
def _reading(ledger: Ledger, conn: Connection | None) -> Iterator[Connection]:
    if conn is not None:
        yield conn
    else:
        with ledger.engine.connect() as own:
            yield own


def verify(
    ledger: Ledger,
    *,
    peers: Sequence[Ledger] = (),
    objects: ObjectStore | None = None,
    current_key: Ed25519PublicKey | None = None,
    check_hashes: bool = True,
    conn: Connection | None = None,
) -> VerifyReport:
    """Verify ``ledger`` and return what was checked and every problem found (never raises for
    a problem found; see :meth:`VerifyReport.raise_for_problems`).

    ``peers``: other sites' ledgers, to compare the heads each side recorded of the other.
    ``objects``: the site's object store, to check store and ledger agree (``check_hashes``
    re-hashes every listed object; without, only their presence is checked).
    ``current_key``: the public key in the site's keystore, which must be the pinned one.
    ``conn``: read the site's rows through this connection (e.g. inside a transaction).
    """
    with _reading(ledger, conn) as c:
        chain = _load(ledger, c)
    _scan(chain, signatures=True, fallback_key=current_key)
    current = None if current_key is None else fingerprint(current_key)
    if current is not None and chain.pinned is not None and current != chain.pinned.fingerprint:
        chain.problem(
            0,
            "key",
            f"the keystore's key {current[:16]}... is not the key the genesis pins "
            f"({chain.pinned.fingerprint[:16]}...): the site's key was swapped",
        )
    recorded = list(_peer_heads(chain))
    notes: list[str] = []
    checked_peers: list[str] = []
    compared = 0
    extra: list[Check] = []
    for peer in peers:
        if peer.site == ledger.site:
            continue
        try:
            with peer.engine.connect() as pc:
                other = _load(peer, pc)
        except (SQLAlchemyError, OnshoreError) as exc:  # a note, not a verdict on this site
            notes.append(f"peer {peer.site} could not be read: {exc}")
            continue
        checked_peers.append(peer.site)
        # The peer's own signatures are its verify's business; here its hashes and links tell
        # whether its history still holds what this site recorded.
        _scan(other, signatures=False, fallback_key=None)
        for seq, head in recorded:
            if head.site == peer.site:
                compared += 1
                _compare_recorded(chain, seq, head, other)
        for seq, head in _peer_heads(other):
            if head.site != ledger.site:
                continue
            if not _authentic(other, seq):
                other.problem(
                    seq,
                    "peer_head",
                    f"entry {seq} records a head of {ledger.site} but is not {peer.site}'s "
                    "own (hash or signature): the record was not used",
                )
                continue
            compared += 1
            _compare_recorded(other, seq, head, chain)
        extra.extend(p for p in other.problems if p.check in {"peer_head", "key"})
    unchecked = {h.site for _, h in recorded} - set(checked_peers) - {ledger.site}
    if unchecked:
        # A party's folder holds only its own ledger: its verify asks the peers over the
        # network instead (onshore.parties.witness).
        notes.append(
            f"heads recorded of {', '.join(sorted(unchecked))} not compared here: their "
            "ledgers are not at hand (onshore ledger verify, without --offline, asks them)"
        )
    listed = received = 0
    if objects is not None:
        listed, received = _check_store(chain, objects, check_hashes)
    stored_head = None
    if chain.head_row is not None and chain.pinned is not None:
        stored_head = Head(
            ledger.site, int(chain.head_row.seq), str(chain.head_row.hash), chain.pinned.fingerprint
        )
    return VerifyReport(
        site=ledger.site,
        entries=len(chain.rows),
        head=stored_head,
        peers=tuple(checked_peers),
        peer_heads=compared,
        objects=listed,
        received=received,
        problems=tuple(chain.problems + extra),
        notes=tuple(notes),
    )


def _check_store(chain: _Chain, objects: ObjectStore, check_hashes: bool) -> tuple[int, int]:
    """Store and ledger agree: listed objects exist with their hash; everything received is
    listed by a ``transfer_in``. Returns (objects listed, objects received)."""
    listed: dict[str, list[tuple[int, str]]] = {}
    erased: dict[str, int] = {}
    covered: set[str] = set()
    kinds = {int(r.seq): r.kind for r in chain.rows}
    for seq, payload in _claims(chain):
        gone = payload.get(ERASED_FIELD)
        if gone is not None:
            if not isinstance(gone, list):
                chain.problem(seq, "payload", f"{ERASED_FIELD} is not a list")
            for item in gone if isinstance(gone, list) else ():
                path = item.get("path") if isinstance(item, dict) else None
                if not isinstance(path, str):
                    chain.problem(seq, "payload", f"malformed erased object {item!r}")
                    continue
                erased[path] = max(erased.get(path, -1), seq)
        items = payload.get(OBJECTS_FIELD)
        if items is None:
            continue
        if not isinstance(items, list):
            chain.problem(seq, "payload", f"{OBJECTS_FIELD} is not a list")
            continue
        for item in items:
            path = item.get("path") if isinstance(item, dict) else None
            digest = item.get("sha256") if isinstance(item, dict) else None
            if not isinstance(path, str) or not is_hex64(digest):
                chain.problem(seq, "payload", f"malformed object {item!r}")
                continue
            listed.setdefault(path, []).append((seq, str(digest)))
            if kinds.get(seq) == "transfer_in":
                if path.startswith(f"{RECEIVED_DIR}/"):
                    covered.add(path)
                else:
                    chain.problem(
                        seq, "received", f"transfer_in lists {path}, outside {RECEIVED_DIR}/"
                    )
    for path, claims in sorted(listed.items()):
        # An object erased (a driver's request, a retention run) after an entry listed it is
        # accounted for: the erasing entry says so. One missing without such an entry is lost.
        claims = [(seq, digest) for seq, digest in claims if erased.get(path, -1) < seq]
        if not claims:
            continue
        if not objects.exists(path):
            for seq, _ in claims:
                chain.problem(seq, "object", f"{path}, which the entry lists, is not in the store")
            continue
        if not check_hashes:
            continue
        actual = sha256(objects.read(path))
        for seq, digest in claims:
            if actual != digest:
                chain.problem(
                    seq, "object", f"{path} has sha256 {actual[:12]}, the entry lists {digest[:12]}"
                )
    found = list(objects.find(RECEIVED_DIR))
    for path in found:
        if path not in covered:
            chain.problem(
                None,
                "received",
                f"{path} came from another site but no transfer_in entry lists it (a transfer "
                "cut short leaves this until it is run again, which completes it once; "
                "otherwise something wrote around the gate)",
            )
    return len(listed), len(found)
