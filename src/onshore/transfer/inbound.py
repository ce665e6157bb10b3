"""A transfer, as the destination's service receives it: the only code that writes what another
site sent into this site's store.

The destination trusts nothing it cannot check. An offer carries the origin's ``transfer_out``
entry, whose hash and signature it recomputes with the origin's ledger key (from the origin's
identity on file): the origin's gate allowed it and the origin's ledger holds it. Each object
that arrives must be one that entry lists, with the bytes its hash names; it is stored under
``received/<origin>/`` only then, atomically. The commit appends ``transfer_in`` in the same
transaction that registers the objects, so the store, the catalogue and the ledger agree; a
second commit of the same transfer answers with the first one's entry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    MetaData,
    String,
    Table,
    Text,
    select,
    update,
)
from sqlalchemy.engine import Connection

from onshore.errors import RequestRefused
from onshore.gate.site import OpenSite
from onshore.ledger import Entry, Head
from onshore.ledger.entry import RECEIVED_DIR, is_hex64
from onshore.parties.identity import Identity
from onshore.store.catalogue import create_tables
from onshore.store.objects import StoredObject
from onshore.transfer.outbound import verify_entry

__all__ = [
    "Expected",
    "commit",
    "expected",
    "incoming_table",
    "offer",
    "received_path",
    "received_table",
    "store_objects",
]

_metadata = MetaData()
received_table: Final = Table(
    "received_objects",
    _metadata,
    Column("site", String(64), primary_key=True),
    Column("transfer", String(64), primary_key=True),
    Column("path", Text, primary_key=True),
    Column("origin", String(64), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
)
"""What a site received, object by object, beside the ``transfer_in`` entry that vouches for it."""

incoming_table: Final = Table(
    "incoming_transfers",
    _metadata,
    Column("site", String(64), primary_key=True),
    Column("transfer", String(64), primary_key=True),
    Column("origin", String(64), nullable=False),
    Column("entry", Text, nullable=False),
    Column("offered_at", DateTime(timezone=True), nullable=False),
    Column("transfer_in", BigInteger, nullable=True),
)
"""Transfers offered to this site: the origin's ``transfer_out`` entry as offered (JSON), and
the seq of this site's ``transfer_in`` once committed."""


def received_path(origin: str, path: str) -> str:
    """Where an object ``origin`` sent from its ``path`` lives in this site's store."""
    return f"{RECEIVED_DIR}/{origin}/{path}"


@dataclass(frozen=True, slots=True)
class Expected:
    """An object a transfer lists: where it came from and must land, its hash and size."""

    index: int
    path: str
    sha256: str
    bytes: int
    kind: str

    def target(self, origin: str) -> str:
        return received_path(origin, self.path)


def _tables(site: OpenSite) -> None:
    create_tables(_metadata, site.store.catalogue.engine)


def _offered(site: OpenSite, sender: str, transfer: str) -> tuple[Entry, int | None]:
    _tables(site)
    t = incoming_table
    with site.store.catalogue.engine.connect() as conn:
        row = conn.execute(
            select(t.c.entry, t.c.origin, t.c.transfer_in).where(
                t.c.site == site.id, t.c.transfer == transfer
            )
        ).first()
    if row is None or row.origin != sender:
        raise RequestRefused(
            f"no transfer {transfer} was offered by {sender}",
            hint="offer it first: rerun 'onshore transfer' at the origin",
            reason="unknown_transfer",
        )
    return Entry(**orjson.loads(row.entry)), row.transfer_in


def _objects(entry: Entry) -> list[Expected]:
    sent = entry.data.get("sent")
    if not isinstance(sent, list):
        raise RequestRefused("the transfer_out entry lists no objects", reason="malformed")
    out = []
    for index, item in enumerate(sent):
        if not isinstance(item, dict):
            raise RequestRefused(f"object {index} of the transfer is malformed", reason="malformed")
        path, digest, size = item.get("path"), item.get("sha256"), item.get("bytes")
        kind = item.get("kind", "object")
        if (
            not isinstance(path, str)
            or not path
            or path.startswith("/")
            or ".." in path.split("/")
            or not is_hex64(digest)
            or not isinstance(size, int)
            or size < 0
            or not isinstance(kind, str)
        ):
            raise RequestRefused(f"object {index} of the transfer is malformed", reason="malformed")
        out.append(Expected(index, path, str(digest), size, kind))
    return out


def _committed_entry(site: OpenSite, seq: int) -> Entry:
    entry = site.ledger.entry(seq)
    assert entry is not None, "a committed transfer's entry is in the ledger"
    return entry


def offer(site: OpenSite, sender: Identity, body: dict[str, Any]) -> dict[str, Any]:
    """Take an offer: check the origin's signed ``transfer_out``, keep it, and answer which
    objects are still missing (or, for a transfer committed before, its ``transfer_in``)."""
    transfer = body.get("transfer")
    if not isinstance(transfer, str) or not transfer:
        raise RequestRefused("the offer names no transfer", reason="malformed")
    entry = verify_entry(body.get("entry") or {}, sender, "transfer_out")
    data = entry.data
    if (
        data.get("transfer") != transfer
        or data.get("to") != site.id
        or data.get("from") != sender.id
    ):
        raise RequestRefused(
            f"the transfer_out entry is for transfer {data.get('transfer')} from "
            f"{data.get('from')} to {data.get('to')}, not this offer",
            reason="malformed",
        )
    if not (data.get("decision") or {}).get("allowed"):
        raise RequestRefused("the origin's gate did not allow this transfer", reason="denied")
    expected = _objects(entry)
    _tables(site)
    t = incoming_table
    with site.store.catalogue.transaction() as conn:
        row = conn.execute(
            select(t.c.transfer_in, t.c.origin).where(t.c.site == site.id, t.c.transfer == transfer)
        ).first()
        if row is None:
            conn.execute(
                t.insert().values(
                    site=site.id,
                    transfer=transfer,
                    origin=sender.id,
                    entry=orjson.dumps(entry.stored()).decode(),
                    offered_at=datetime.now(UTC),
                    transfer_in=None,
                )
            )
        elif row.origin != sender.id:
            raise RequestRefused(f"transfer {transfer} was offered by another party")
    if row is not None and row.transfer_in is not None:
        return {
            "status": "committed",
            "transfer_in": _committed_entry(site, int(row.transfer_in)).stored(),
        }
    objects = site.store.objects
    missing = [e.index for e in expected if not objects.exists(e.target(sender.id))]
    return {"status": "offered", "missing": missing, "objects": len(expected)}


def expected(
    site: OpenSite, sender: Identity, transfer: str, indices: Sequence[int]
) -> list[Expected]:
    """The objects of ``transfer`` that ``sender`` is about to stream, in order. Raises
    :class:`RequestRefused` for a transfer not offered, or an index it does not list."""
    entry, committed = _offered(site, sender.id, transfer)
    if committed is not None:
        raise RequestRefused(f"transfer {transfer} is committed already", reason="committed")
    listed = _objects(entry)
    out = []
    for index in indices:
        if not 0 <= index < len(listed):
            raise RequestRefused(f"transfer {transfer} has no object {index}", reason="malformed")
        out.append(listed[index])
    return out


def store_objects(
    site: OpenSite, sender: Identity, arrived: Sequence[tuple[Expected, Path]]
) -> list[StoredObject]:
    """Store objects whose bytes (each in a file from :meth:`ObjectStore.incoming_file`, made
    durable) the service checked against their hashes and sizes: moved into place under
    ``received/<origin>/``, each folder synced once for the lot."""
    if not arrived:
        return []
    return site.store.objects.receive(
        [(item.target(sender.id), file) for item, file in arrived], synced=True
    )


def commit(
    site: OpenSite, sender: Identity, transfer: str, origin_head: Head | None
) -> dict[str, Any]:
    """Register every object of ``transfer`` and append ``transfer_in``, in one transaction;
    answer with the entry. A transfer committed before answers with its entry again. Raises
    :class:`RequestRefused` (``incomplete``) while an object is missing."""
    entry, committed = _offered(site, sender.id, transfer)
    if committed is not None:
        return {"status": "committed", "transfer_in": _committed_entry(site, committed).stored()}
    listed = _objects(entry)
    objects = site.store.objects
    missing = [e for e in listed if not objects.exists(e.target(sender.id))]
    if missing:
        raise RequestRefused(
            f"{len(missing)} of the {len(listed)} objects of transfer {transfer} have not "
            f"arrived (first: {missing[0].path})",
            hint="send them, then commit",
            reason="incomplete",
        )
    data = entry.data
    now = datetime.now(UTC)
    rows = [
        {
            "site": site.id,
            "transfer": transfer,
            "path": e.target(sender.id),
            "origin": sender.id,
            "sha256": e.sha256,
            "bytes": e.bytes,
            "kind": e.kind,
            "received_at": now,
        }
        for e in listed
    ]
    decided = data.get("decision") or {}
    heads = [origin_head] if origin_head is not None else []
    with site.store.catalogue.transaction() as conn:
        row = conn.execute(
            select(incoming_table.c.transfer_in).where(
                incoming_table.c.site == site.id, incoming_table.c.transfer == transfer
            )
        ).first()
        if row is not None and row.transfer_in is not None:  # a concurrent commit won
            return {
                "status": "committed",
                "transfer_in": _committed_entry(site, int(row.transfer_in)).stored(),
            }
        _register(conn, rows)
        received = site.ledger.append(
            "transfer_in",
            {
                "transfer": transfer,
                "from": sender.id,
                "dataset": data.get("dataset"),
                "purpose": data.get("purpose"),
                "decision": {
                    key: decided.get(key) for key in ("allowed", "approval", "rulebook_versions")
                },
                "transfer_out": {"seq": entry.seq, "hash": entry.hash},
                "objects": [{"path": r["path"], "sha256": r["sha256"]} for r in rows],
            },
            conn=conn,
            peer_heads=heads,
        )
        conn.execute(
            update(incoming_table)
            .where(incoming_table.c.site == site.id, incoming_table.c.transfer == transfer)
            .values(transfer_in=received.seq)
        )
    return {"status": "committed", "transfer_in": received.stored()}


def _register(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    known = {
        (r.transfer, r.path)
        for r in conn.execute(
            select(received_table.c.transfer, received_table.c.path).where(
                received_table.c.site == rows[0]["site"]
            )
        )
    }
    new = [r for r in rows if (r["transfer"], r["path"]) not in known]
    if new:
        conn.execute(received_table.insert(), new)
