"""A driver's erasure request, served at the site where the vehicle's data was recorded, and
the copies it reaches at the parties that received them.

At the origin (:func:`erase_vehicle`), in this order, each step safe to repeat:

1. One transaction records the request (``erasures``, the vehicle named by its keyed hash),
   deletes every catalogue row of the vehicle's clips (their frames, labels and de-identified
   outputs under every profile, the vehicle, and the upload files marked ``erased`` so they are
   never ingested again) and appends ``erasure`` to the ledger, listing the objects to delete
   and the parties that received any of them. The transfers are read inside that transaction,
   after its first write: a transfer of the same clips either was recorded before (and the
   erasure reaches its copy, or refuses while it is unconfirmed) or finds the clips gone.
2. The objects go from the store: the clips, their frames, the outputs and their masked frames,
   the detections and check results made of them, every cached training sample set, and any
   quarantined upload naming the VIN, and the uploads wholly erased from the inbox they were
   ingested from (when still there with the same content). The database is scrubbed (SQLite's
   log truncated over zeroed pages, PostgreSQL vacuumed), so nothing is left in its free pages.
3. Each recipient is asked, through its service, to erase what it received; it answers with
   its own signed ``erasure_in`` listing what it deleted, and the origin appends
   ``erasure_confirmed``. A recipient that does not answer is asked again on the next run.
4. Once every recipient confirmed, ``erasure_completed``.

A rerun picks up an unfinished request where it stopped; a request already completed answers
``already_erased``. A released model trained on the data stays as it was (there is no
unlearning); ``onshore release verify`` lists the erasures made after its training run.

At a recipient (:func:`erase_received`), one transaction appends ``erasure_in`` and drops the
rows of what it received, then the objects go; asked again, it answers with the same entry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence, Set
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import httpx
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import BigInteger, Column, DateTime, MetaData, String, Table, Text, select, update
from sqlalchemy.engine import Connection

from onshore.classify.scan import DETECTIONS_DIR
from onshore.deidentify.video import CHECKS_DIR
from onshore.errors import ErasureBlocked, OnshoreError, RequestRefused, UnknownVehicle
from onshore.forecast.dataset import CACHE_DIR
from onshore.gate.site import OpenSite
from onshore.ledger import Entry
from onshore.ledger.entry import RECEIVED_DIR
from onshore.processes import failpoint
from onshore.rights.vin import check_vin, vehicle_key
from onshore.settings import Project
from onshore.store.catalogue import ClipRecord, DeidentifiedRecord, create_tables
from onshore.store.objects import QUARANTINE_DIR, ObjectStore
from onshore.transfer.inbound import received_path, received_table

__all__ = [
    "Carried",
    "ErasureReport",
    "delete_upload",
    "erase_received",
    "erase_vehicle",
    "erasures",
    "erasures_table",
    "transfers_carrying",
]

_metadata = MetaData()
erasures_table: Final = Table(
    "erasures",
    _metadata,
    Column("site", String(64), primary_key=True),
    Column("request", String(64), primary_key=True),
    Column("vehicle", String(64), nullable=False, index=True),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("erasure_seq", BigInteger, nullable=False),
    Column("clips", BigInteger, nullable=False),
    Column("objects", Text, nullable=False),
    Column("peers", Text, nullable=False),
)
"""One row per erasure request at the origin: the vehicle's keyed hash (never its VIN), the
objects to delete (JSON: path, sha256, kind) and, per recipient, the paths it received and the
seq of its confirmation once it came (JSON)."""

_NAMED: Final = frozenset({"upload", "quarantined"})
"""Kinds of objects whose names are not content hashes (and may hold the VIN): never in the
ledger, and dropped from the request once deleted."""


@dataclass(slots=True)
class ErasureReport:
    """What an erasure did, as ``onshore erase`` prints it."""

    site: str
    request: str
    vehicle: str
    """The vehicle's keyed hash (the ledger's name for it)."""
    status: str
    """``erased`` (everywhere), ``incomplete`` (a recipient is still to confirm; rerun) or
    ``already_erased``."""
    started_at: str
    finished_at: str | None = None
    clips: int = 0
    objects: int = 0
    """Objects this site deleted (clips, frames, outputs, caches, quarantined uploads)."""
    scrubbed: bool = True
    recipients: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per recipient: ``objects`` it held, ``status`` (``confirmed``, ``unreachable``,
    ``refused``), its ``erasure_in`` seq and, when it did not confirm, ``reason``."""
    ledger: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "request": self.request,
            "vehicle": self.vehicle,
            "status": self.status,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "clips": self.clips,
            "objects": self.objects,
            "scrubbed": self.scrubbed,
            "recipients": self.recipients,
            "ledger": self.ledger,
        }


class _Raced(Exception):
    """Another request for the same vehicle was recorded first (its transaction rolls this
    one's back)."""

    def __init__(self, request: str) -> None:
        super().__init__(request)
        self.request = request


def _tables(site: OpenSite) -> None:
    create_tables(_metadata, site.store.catalogue.engine)


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat(timespec="seconds")


def erase_vehicle(
    project: Project,
    vin: str,
    *,
    reason: str | None = None,
    site_id: str | None = None,
    http: Callable[[str], httpx.Client | None] | None = None,
    say: Callable[[str], None] = lambda _m: None,
) -> ErasureReport:
    """Erase the vehicle ``vin`` at this site and ask each recipient of its data to erase its
    copies (see the module's description). ``http(peer)`` may give a client for a peer's
    service (tests drive it in process). Raises :class:`InvalidVin`, :class:`UnknownVehicle`
    for a vehicle the site never held, :class:`ErasureBlocked` while a transfer of its data
    is unconfirmed."""
    vin = check_vin(vin)
    with OpenSite.open(project, site_id) as site:
        _tables(site)
        key = vehicle_key(site.keys.hmac_secret.reveal(), vin)
        row = _open_request(site, key)
        if row is None:
            clips = site.store.catalogue.clips_of([vin])
            outputs = site.store.catalogue.outputs_of_vehicle(vin)
            if not clips and not outputs:
                last = _last_request(site, key)
                if last is not None:
                    return _report(site, last, "already_erased")
                raise UnknownVehicle(
                    f"{site.id} holds no data of vehicle {vin}, and erased none",
                    hint="check the VIN against the vehicle's papers; 'onshore access --vin' "
                    "lists what the site holds of a vehicle",
                )
            say(
                f"{site.id}: recording the request and removing {len(clips)} clips from its "
                "catalogue"
            )
            try:
                row = _start(site, key, vin, clips, outputs, reason)
            except _Raced as raced:  # a request for the same vehicle began meanwhile: join it
                row = _load(site, raced.request)
        failpoint("erase.recorded")
        report = _report(site, row, "incomplete")
        report.recipients = {}  # from here on: the recipients that did not confirm, and why
        say(f"{site.id}: deleting {report.objects} objects from the store")
        _delete(site.store.objects, orjson.loads(row.objects))
        _drop_names(site, row.request)
        report.scrubbed = site.store.catalogue.scrub()
        failpoint("erase.deleted")
        peers: dict[str, dict[str, Any]] = orjson.loads(row.peers)
        for peer_id in sorted(peers):
            held = peers[peer_id]
            if held.get("confirmed") is not None:
                continue
            say(f"{peer_id}: asking it to erase the {len(held['paths'])} objects it received")
            try:
                held["confirmed"] = _ask(project, site, row.request, peer_id, held, http)
            except OnshoreError as exc:
                report.recipients[peer_id] = {
                    "objects": len(held["paths"]),
                    "status": "refused" if isinstance(exc, RequestRefused) else "unreachable",
                    "reason": exc.message,
                }
                say(f"{peer_id}: not confirmed ({exc.message}); rerun to ask again")
                continue
            failpoint("erase.confirmed")
        row = _load(site, row.request)
        if all(p.get("confirmed") is not None for p in orjson.loads(row.peers).values()):
            row = _finish(site, row)
        done = _report(site, row, "erased" if row.finished_at is not None else "incomplete")
        done.recipients = {**done.recipients, **report.recipients}
        done.scrubbed = report.scrubbed
        return done


def _open_request(site: OpenSite, key: str) -> Any:
    t = erasures_table.c
    with site.store.catalogue.engine.connect() as conn:
        return conn.execute(
            select(erasures_table).where(
                t.site == site.id, t.vehicle == key, t.finished_at.is_(None)
            )
        ).first()


def _last_request(site: OpenSite, key: str) -> Any:
    t = erasures_table.c
    with site.store.catalogue.engine.connect() as conn:
        return conn.execute(
            select(erasures_table)
            .where(t.site == site.id, t.vehicle == key)
            .order_by(t.started_at.desc())
            .limit(1)
        ).first()


def _load(site: OpenSite, request: str) -> Any:
    t = erasures_table.c
    with site.store.catalogue.engine.connect() as conn:
        return conn.execute(
            select(erasures_table).where(t.site == site.id, t.request == request)
        ).one()


def _objects(
    site: OpenSite, clips: Sequence[ClipRecord], outputs: Sequence[DeidentifiedRecord]
) -> list[dict[str, str]]:
    """Every object of the site made of these clips (and of these outputs, whose raw clips
    may be gone), as (path, sha256, kind) records."""
    catalogue, objects = site.store.catalogue, site.store.objects
    ids = [c.clip_id for c in clips]
    found = [{"path": c.path, "sha256": c.sha256, "kind": "clip"} for c in clips]
    frames = catalogue.frames(ids)
    found += [{"path": f.path, "sha256": f.sha256, "kind": "frames"} for f in frames]
    for output in [*catalogue.deidentified_of(ids), *outputs]:
        found.append({"path": output.path, "sha256": output.sha256, "kind": "deidentified"})
        masked = orjson.loads(output.detail).get("frames")
        if isinstance(masked, dict) and masked.get("path"):
            found.append(
                {
                    "path": str(masked["path"]),
                    "sha256": str(masked.get("sha256", "")),
                    "kind": "deidentified_frames",
                }
            )
    images = [
        d for o in found if o["kind"] == "deidentified_frames" for d in _images(objects, o["path"])
    ]
    derived = _keyed(objects, DETECTIONS_DIR, [f.sha256 for f in frames])
    # Checks of masked images are kept by the image's hash, those of masked video streams by
    # the raw frames object's (see CheckMemo).
    derived += _keyed(objects, CHECKS_DIR, [*images, *(f.sha256 for f in frames)])
    found += [{"path": p, "sha256": "", "kind": "derived"} for p in derived]
    found += [{"path": p, "sha256": "", "kind": "training_cache"} for p in objects.find(CACHE_DIR)]
    unique: dict[str, dict[str, str]] = {}
    for item in found:
        unique.setdefault(item["path"], item)
    return list(unique.values())


def _keyed(objects: ObjectStore, folder: str, digests: Iterable[str]) -> list[str]:
    """The objects under ``folder`` named by one of ``digests`` (``<folder>/<d[:2]>/<d>-...``,
    as detections and check results are kept), each sub-folder listed once."""
    by_prefix: dict[str, set[str]] = {}
    for digest in digests:
        by_prefix.setdefault(digest[:2], set()).add(digest)
    found = []
    for prefix, wanted in sorted(by_prefix.items()):
        for path in objects.find(f"{folder}/{prefix}"):
            if path.rsplit("/", 1)[-1][:64] in wanted:
                found.append(path)
    return found


def _images(objects: ObjectStore, masked_frames: str) -> list[str]:
    """The hashes of a masked frames object's images (what their check results are keyed
    by); none when it is gone (a rerun found its checks the first time)."""
    try:
        table = pq.read_table(pa.BufferReader(objects.read(masked_frames)), columns=["data"])
    except (OnshoreError, pa.ArrowInvalid, OSError):
        return []
    return [hashlib.sha256(image).hexdigest() for image in table["data"].to_pylist()]


def _quarantined(objects: ObjectStore, vin: str) -> list[str]:
    """Quarantined uploads (and their notes) that name the VIN in their bytes."""
    needle = vin.encode()
    found: list[str] = []
    for path in objects.find(QUARANTINE_DIR):
        if path.endswith(".reason.json"):
            continue
        note = f"{path}.reason.json"
        named = needle in objects.read(path)
        if not named and objects.exists(note):
            named = needle in objects.read(note)
        if named:
            found += [path, note]
    return found


@dataclass(frozen=True, slots=True)
class Carried:
    """A transfer out (from the ledger) that carried some given objects of the site."""

    entry: Entry
    """Its ``transfer_out`` entry."""
    paths: list[str]
    """The objects of those given that it carried, by path."""
    receipt: Entry | None
    """Its ``transfer_confirmed`` entry; None while the recipient has not confirmed it."""


def transfers_carrying(
    site: OpenSite, paths: Set[str], *, conn: Connection | None = None
) -> list[Carried]:
    """Every transfer out of the site that carried any of the objects at ``paths``, in ledger
    order, with its confirmation if it came."""
    confirmed = {
        e.data.get("transfer"): e for e in site.ledger.entries(kind="transfer_confirmed", conn=conn)
    }
    found = []
    for entry in site.ledger.entries(kind="transfer_out", conn=conn):
        sent = entry.data.get("sent") or []
        hit = sorted({s["path"] for s in sent if isinstance(s, dict) and s.get("path") in paths})
        if hit:
            found.append(Carried(entry, hit, confirmed.get(entry.data.get("transfer"))))
    return found


def _recipients(
    site: OpenSite, conn: Connection, objects: Sequence[dict[str, str]]
) -> dict[str, dict[str, Any]]:
    """Per party that received any of ``objects``: the paths it received and the transfers.
    Raises :class:`ErasureBlocked` for a transfer of any of them not confirmed yet."""
    peers: dict[str, dict[str, Any]] = {}
    for carried in transfers_carrying(site, {o["path"] for o in objects}, conn=conn):
        data = carried.entry.data
        transfer, to = str(data.get("transfer")), str(data.get("to"))
        if carried.receipt is None:
            raise ErasureBlocked(
                f"transfer {transfer} to {to} of this vehicle's data was sent (ledger entry "
                f"{carried.entry.seq}) but {to} has not confirmed it: a copy may still be "
                "arriving",
                hint=f"rerun that transfer ('onshore transfer --to {to} --dataset "
                f"{data.get('dataset')} --purpose {data.get('purpose')}') until it "
                "is confirmed, then erase: the erasure then reaches the copy",
            )
        held = peers.setdefault(to, {"paths": [], "transfers": [], "confirmed": None})
        held["paths"] = sorted(set(held["paths"]) | set(carried.paths))
        held["transfers"].append(transfer)
    return peers


def _start(
    site: OpenSite,
    key: str,
    vin: str,
    clips: Sequence[ClipRecord],
    outputs: Sequence[DeidentifiedRecord],
    reason: str | None,
) -> Any:
    """Step 1: the request, the catalogue's rows gone and ``erasure``, in one transaction."""
    catalogue = site.store.catalogue
    objects = _objects(site, clips, outputs)
    objects += [
        {"path": p, "sha256": "", "kind": "quarantined"}
        for p in _quarantined(site.store.objects, vin)
    ]
    sources = {c.source_sha256: catalogue.file(c.source_sha256) for c in clips}
    now = datetime.now(UTC)
    request = hashlib.sha256(f"{key}:{now.isoformat()}".encode()).hexdigest()[:32]
    with catalogue.transaction() as conn:
        # The first write takes the database's write lock: the transfers read below are all
        # there will be until this commits.
        conn.execute(
            erasures_table.insert().values(
                site=site.id,
                request=request,
                vehicle=key,
                started_at=now,
                finished_at=None,
                erasure_seq=-1,
                clips=len(clips),
                objects=orjson.dumps(objects).decode(),
                peers="{}",
            )
        )
        others = conn.execute(
            select(erasures_table.c.request).where(
                erasures_table.c.site == site.id,
                erasures_table.c.vehicle == key,
                erasures_table.c.request != request,
                erasures_table.c.finished_at.is_(None),
            )
        ).first()
        if others is not None:
            raise _Raced(str(others.request))
        left = catalogue.clip_hashes([c.clip_id for c in clips])
        if not left and not catalogue.outputs_of_vehicle(vin):  # erased, and done, meanwhile
            done = conn.execute(
                select(erasures_table.c.request)
                .where(
                    erasures_table.c.site == site.id,
                    erasures_table.c.vehicle == key,
                    erasures_table.c.request != request,
                )
                .order_by(erasures_table.c.started_at.desc())
                .limit(1)
            ).first()
            if done is not None:
                raise _Raced(str(done.request))
        peers = _recipients(site, conn, objects)
        catalogue.forget_clips(
            conn, sorted({c.clip_id for c in clips} | {o.clip_id for o in outputs})
        )
        catalogue.drop_withdrawals(conn, vin)
        # The uploads now wholly erased, where they were ingested from (the site's inbox).
        for digest in catalogue.files_with_status(conn, sources, "erased"):
            upload = sources[digest]
            if upload is not None and upload.path:
                objects.append({"path": upload.path, "sha256": digest, "kind": "upload"})
        entry = site.ledger.append(
            "erasure",
            {
                "request": request,
                "vehicle": key,
                "reason": reason,
                "clips": len(clips),
                "outputs": len({(o["path"]) for o in objects if o["kind"] == "deidentified"}),
                "erased": [
                    {"path": o["path"], "sha256": o["sha256"]}
                    for o in objects
                    if o["sha256"] and o["kind"] not in _NAMED
                ],
                "derived": sum(o["kind"] not in _NAMED and not o["sha256"] for o in objects),
                "quarantined": sum(o["kind"] == "quarantined" for o in objects) // 2,
                "uploads": sum(o["kind"] == "upload" for o in objects),
                "recipients": sorted(peers),
            },
            conn=conn,
        )
        conn.execute(
            update(erasures_table)
            .where(erasures_table.c.site == site.id, erasures_table.c.request == request)
            .values(
                erasure_seq=entry.seq,
                peers=orjson.dumps(peers).decode(),
                objects=orjson.dumps(objects).decode(),
            )
        )
    return _load(site, request)


def _delete(objects: ObjectStore, items: Sequence[dict[str, str]]) -> None:
    """Step 2: the objects go (each delete is a no-op for one already gone), and the uploads
    they came from, from the inbox they were ingested from, when they are still there with the
    same content."""
    for item in items:
        if not item["path"]:
            continue  # done on an earlier run, its name dropped
        if item["kind"] == "upload":
            delete_upload(Path(item["path"]), item["sha256"])
        else:
            objects.delete(item["path"])
    # A training cache built after the request was recorded (from the catalogue as it was
    # then) goes too: every sample set is built again from what is left.
    for path in objects.find(CACHE_DIR):
        objects.delete(path)


def delete_upload(path: Path, digest: str) -> None:
    """Delete the upload at ``path`` (absolute, as ingest recorded it) if it is still there
    with the content hash ``digest``; anything else is left alone."""
    if not path.is_absolute():
        return
    try:
        with path.open("rb") as source:
            if hashlib.file_digest(source, "sha256").hexdigest() != digest:
                return  # another file by that name now: not the vehicle's upload
        path.unlink()
    except FileNotFoundError:
        return  # gone already (moved away, or deleted by a run beside this one)


def _drop_names(site: OpenSite, request: str) -> None:
    """Once deleted, forget the names of the uploads and quarantined files (a file's name may
    hold the VIN): the request keeps how many there were."""
    with site.store.catalogue.transaction() as conn:
        t = erasures_table.c
        row = conn.execute(select(t.objects).where(t.site == site.id, t.request == request)).one()
        kept = [{**o, "path": ""} if o["kind"] in _NAMED else o for o in orjson.loads(row.objects)]
        conn.execute(
            update(erasures_table)
            .where(t.site == site.id, t.request == request)
            .values(objects=orjson.dumps(kept).decode())
        )


def _ask(
    project: Project,
    site: OpenSite,
    request: str,
    peer_id: str,
    held: dict[str, Any],
    http: Callable[[str], httpx.Client | None] | None,
) -> int:
    """Step 3 for one recipient: its signed ``erasure_in``, checked and confirmed in this
    site's ledger; returns the seq of ``erasure_confirmed``."""
    from onshore.parties.client import PeerClient
    from onshore.parties.identity import LocalParty, load_peers
    from onshore.transfer.outbound import verify_entry

    local = LocalParty.of(project)
    peer = load_peers(project).get_peer(peer_id)
    client_http = http(peer_id) if http is not None else None
    with PeerClient(local, peer, site.keys, head=site.ledger.head, http=client_http) as client:
        answer = client.post(
            "rights.erase",
            "/v1/rights/erase",
            {"request": request, "paths": held["paths"], "transfers": held["transfers"]},
        )
    receipt = verify_entry(answer.body.get("erasure_in") or {}, peer, "erasure_in")
    if receipt.data.get("request") != request or receipt.data.get("from") != site.id:
        raise RequestRefused(
            f"{peer_id}'s confirmation is for another request", reason="signature", party=peer_id
        )
    heads = [answer.head] if answer.head is not None else []
    with site.store.catalogue.transaction() as conn:
        _lock(conn, site, request)
        row = conn.execute(
            select(erasures_table.c.peers).where(
                erasures_table.c.site == site.id, erasures_table.c.request == request
            )
        ).one()
        peers = orjson.loads(row.peers)
        if peers[peer_id].get("confirmed") is not None:
            return int(peers[peer_id]["confirmed"])
        confirmed = site.ledger.append(
            "erasure_confirmed",
            {
                "request": request,
                "by": peer_id,
                "erasure_in": {"seq": receipt.seq, "hash": receipt.hash},
            },
            conn=conn,
            peer_heads=heads,
        )
        peers[peer_id]["confirmed"] = confirmed.seq
        peers[peer_id]["erasure_in"] = receipt.seq
        conn.execute(
            update(erasures_table)
            .where(erasures_table.c.site == site.id, erasures_table.c.request == request)
            .values(peers=orjson.dumps(peers).decode())
        )
    return confirmed.seq


def _lock(conn: Connection, site: OpenSite, request: str) -> None:
    """Take the request's row for this transaction before reading it (a write first: SQLite's
    write lock, PostgreSQL's row lock), so that two runs of the same request never both find
    a step undone and both record it."""
    t = erasures_table.c
    conn.execute(
        update(erasures_table)
        .where(t.site == site.id, t.request == request)
        .values(request=t.request)
    )


def _finish(site: OpenSite, row: Any) -> Any:
    """Step 4: ``erasure_completed`` once every recipient confirmed."""
    with site.store.catalogue.transaction() as conn:
        _lock(conn, site, row.request)
        current = conn.execute(
            select(erasures_table.c.finished_at).where(
                erasures_table.c.site == site.id, erasures_table.c.request == row.request
            )
        ).one()
        if current.finished_at is None:
            site.ledger.append(
                "erasure_completed",
                {"request": row.request, "recipients": sorted(orjson.loads(row.peers))},
                conn=conn,
            )
            conn.execute(
                update(erasures_table)
                .where(erasures_table.c.site == site.id, erasures_table.c.request == row.request)
                .values(finished_at=datetime.now(UTC))
            )
    return _load(site, row.request)


def _report(site: OpenSite, row: Any, status: str) -> ErasureReport:
    peers = orjson.loads(row.peers)
    objects = orjson.loads(row.objects)
    return ErasureReport(
        site=site.id,
        request=row.request,
        vehicle=row.vehicle,
        status=status,
        started_at=_iso(row.started_at) or "",
        finished_at=_iso(row.finished_at),
        clips=int(row.clips),
        objects=len(objects),
        recipients={
            peer: {
                "objects": len(held["paths"]),
                "status": "confirmed" if held.get("confirmed") is not None else "pending",
                "erasure_in": held.get("erasure_in"),
            }
            for peer, held in sorted(peers.items())
        },
        ledger={site.id: int(row.erasure_seq)},
    )


def erasures(site: OpenSite) -> list[dict[str, Any]]:
    """Every erasure request of the site, oldest first: request, vehicle key, when, clips,
    objects, recipients and whether each confirmed (for the reports and the console)."""
    _tables(site)
    t = erasures_table.c
    with site.store.catalogue.engine.connect() as conn:
        rows = conn.execute(
            select(erasures_table).where(t.site == site.id).order_by(t.started_at)
        ).all()
    return [
        _report(site, row, "erased" if row.finished_at else "incomplete").as_dict() for row in rows
    ]


# -- at a recipient ----------------------------------------------------------------------------


def erase_received(site: OpenSite, origin: str, body: dict[str, Any]) -> dict[str, Any]:
    """Erase what ``origin`` sent this site, as its request lists (origin paths), and answer
    with the signed ``erasure_in``. The same request again answers with the same entry (and
    deletes any object a crash left)."""
    request, paths = body.get("request"), body.get("paths")
    if not isinstance(request, str) or not request or not isinstance(paths, list):
        raise RequestRefused("an erasure names its request and the paths", reason="malformed")
    if not all(isinstance(p, str) and p and ".." not in p.split("/") for p in paths):
        raise RequestRefused("an erasure's paths are malformed", reason="malformed")
    targets = sorted({received_path(origin, p) for p in paths})
    objects = site.store.objects
    done = _erased_in(site, origin, request)
    if done is None:
        _received_tables(site)
        r = received_table.c
        with site.store.catalogue.transaction() as conn:
            rows: list[Any] = []
            for start in range(0, len(targets), 500):
                part = targets[start : start + 500]
                rows += conn.execute(
                    select(r.path, r.sha256, r.transfer).where(
                        r.site == site.id, r.origin == origin, r.path.in_(part)
                    )
                ).all()
            listed = {row.path for row in rows}
            erased = [{"path": row.path, "sha256": row.sha256} for row in rows]
            # Objects that arrived for a transfer never committed are erased too.
            erased += [
                {"path": p, "sha256": ""} for p in targets if p not in listed and objects.exists(p)
            ]
            done = site.ledger.append(
                "erasure_in",
                {
                    "request": request,
                    "from": origin,
                    "erased": sorted(erased, key=lambda e: e["path"]),
                    "transfers": sorted({str(row.transfer) for row in rows}),
                },
                conn=conn,
            )
            for start in range(0, len(targets), 500):
                part = targets[start : start + 500]
                conn.execute(
                    received_table.delete().where(
                        r.site == site.id, r.origin == origin, r.path.in_(part)
                    )
                )
        failpoint("erase_in.recorded")
    for path in targets:
        if path.startswith(f"{RECEIVED_DIR}/{origin}/"):
            objects.delete(path)
    site.store.catalogue.scrub()
    return {"status": "erased", "erasure_in": done.stored()}


def _received_tables(site: OpenSite) -> None:
    create_tables(received_table.metadata, site.store.catalogue.engine)


def _erased_in(site: OpenSite, origin: str, request: str) -> Entry | None:
    for entry in site.ledger.entries(kind="erasure_in"):
        if entry.data.get("request") == request and entry.data.get("from") == origin:
            return entry
    return None
