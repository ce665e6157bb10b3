"""A transfer, as the origin runs it: its gate decides, then the objects go to the destination's
service over mutual TLS, and both ledgers record the one transfer.

The steps, each safe to kill and rerun (a rerun finds what was done and does the rest):

1. the origin's gate decides on exactly what would leave (:mod:`.selection`), counting the
   persons that crossed before (:mod:`onshore.gate.crossings`, leaving out this transfer's own);
   denied: a ``gate_decision`` entry at the origin, and nothing moves;
2. the destination is asked for its head (a witness exchange): a destination that is down is a
   clear error before anything is written;
3. the origin appends ``transfer_out`` (the decision, every object by path, hash and size, the
   destination's head) and records the crossing subjects, in one transaction, before a byte
   leaves;
4. the destination is offered the signed ``transfer_out`` entry; it checks the origin's signature
   and answers with the objects it does not hold yet;
5. those objects are streamed; the destination checks each against its hash and stores it
   under ``received/<origin>/`` (atomic, durable, never twice);
6. the destination commits: in one transaction it registers the objects and appends
   ``transfer_in`` (with the origin's head) and answers with that entry, signed, and its head;
7. the origin checks the destination's signature and appends ``transfer_confirmed`` with the
   destination's head.

A transfer has an id: the hash of what it moves, from where to where, to whom, why and on
which day. A rerun after step 7 reports it done; after step 3 it decides again (without
counting its own subjects twice) and completes it if still allowed.
"""

from __future__ import annotations

import contextlib
import hashlib
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from typing import Any, Final

import httpx
import orjson

from onshore.deidentify.profiles import resolve_profile
from onshore.errors import ConfigError, RequestRefused
from onshore.gate import Decision
from onshore.gate.site import OpenSite
from onshore.ledger import Entry, Head
from onshore.ledger.entry import entry_digest
from onshore.parties.client import PeerClient
from onshore.parties.identity import Counterparty, Identity, LocalParty, load_peers
from onshore.rulebook.evaluate import Recipient
from onshore.settings import Project
from onshore.transfer.selection import Dataset, Selection, resolve

__all__ = ["CHUNK", "TransferReport", "transfer", "verify_entry"]

CHUNK: Final = 1 << 20
"""Bytes read from the origin's store and sent at a time."""


@dataclass(slots=True)
class TransferReport:
    """What ``onshore transfer`` did; ``as_dict`` is its ``--json``."""

    transfer: str
    origin: str
    destination: str
    dataset: dict[str, Any]
    purpose: str
    recipient: dict[str, Any]
    decision: Decision
    status: str
    """``denied``, ``transferred``, ``already_transferred``, ``would_transfer`` (dry run
    allowed) or ``would_be_denied`` (dry run denied)."""
    dry_run: bool = False
    copied: int = 0
    copied_bytes: int = 0
    ledger: dict[str, int] = field(default_factory=dict)
    """The ledger entries written, by party: their sequence numbers."""

    @property
    def allowed(self) -> bool:
        return self.decision.allowed

    def as_dict(self) -> dict[str, Any]:
        return {
            "transfer": self.transfer,
            "from": self.origin,
            "to": self.destination,
            "dataset": self.dataset,
            "purpose": self.purpose,
            "recipient": self.recipient,
            "dry_run": self.dry_run,
            "status": self.status,
            "allowed": self.decision.allowed,
            "decision": self.decision.as_dict(),
            "copied": {"objects": self.copied, "bytes": self.copied_bytes},
            "ledger": self.ledger,
        }


def _transfer_id(
    origin: str, destination: str, dataset: Dataset, purpose: str, recipient: Recipient, day: date
) -> str:
    facts = {
        "from": origin,
        "to": destination,
        "purpose": purpose,
        "recipient": recipient.model_dump(mode="json"),
        "date": day.isoformat(),
        "objects": sorted(o.sha256 for o in dataset.objects),
    }
    return hashlib.sha256(orjson.dumps(facts, option=orjson.OPT_SORT_KEYS)).hexdigest()[:24]


def _find(site: OpenSite, kind: str, transfer_id: str) -> Entry | None:
    for entry in site.ledger.entries(kind=kind):
        if entry.data.get("transfer") == transfer_id:
            return entry
    return None


def verify_entry(entry: dict[str, Any], peer: Identity, kind: str) -> Entry:
    """An entry a peer sent, as it is in its ledger: its hash recomputed and its signature the
    peer's ledger key's. Raises :class:`RequestRefused` (``signature``) otherwise."""
    from cryptography.exceptions import InvalidSignature

    from onshore.ledger.entry import SIGNATURE_CONTEXT

    try:
        found = Entry(**entry)
        digest = entry_digest(
            found.site, found.seq, found.time, found.kind, found.payload, found.prev_hash
        )
        if found.site != peer.id or found.kind != kind or digest.hex() != found.hash:
            raise ValueError("not the entry it says")
        peer.key.verify(bytes.fromhex(found.signature), SIGNATURE_CONTEXT + digest)
    except (TypeError, ValueError, InvalidSignature) as exc:
        raise RequestRefused(
            f"the {kind} entry is not {peer.id}'s signed entry: {exc}", reason="signature"
        ) from None
    return found


def transfer(
    project: Project,
    destination_id: str,
    dataset: str,
    purpose: str,
    *,
    origin_id: str | None = None,
    recipient: Recipient | None = None,
    day: date | None = None,
    dry_run: bool = False,
    http: httpx.Client | None = None,
    say: Callable[[str], None] = lambda _m: None,
) -> TransferReport:
    """Send ``dataset`` from this party's site to the peer site ``destination_id`` if the gate
    allows (see the module's description). Records the decision in the origin's ledger either
    way (except on a dry run, which records and sends nothing).

    ``http``: a client for the destination's service (tests drive its app in process); by
    default mutual TLS to its endpoint. Raises :class:`~onshore.errors.NotAParty` outside a
    party's folder, :class:`~onshore.errors.PeerNotFound` for an unknown destination,
    :class:`ConfigError` for an unknown profile or an empty selection,
    :class:`~onshore.errors.PeerUnreachable` when the destination does not answer (nothing is
    then half-done), :class:`RequestRefused` when it refuses.
    """
    local = LocalParty.of(project)
    if origin_id is not None and origin_id != local.id:
        raise ConfigError(
            f"--from {origin_id}: this is the folder of {local.id}",
            hint="a transfer runs at its origin, in the origin's own folder",
        )
    if destination_id == local.id:
        raise ConfigError(f"--to {destination_id} is this party itself: a transfer goes to a peer")
    peer = load_peers(project).get_peer(destination_id)
    if peer.role != "site":
        raise ConfigError(
            f"{destination_id} is the coordinator, which holds no fleet data",
            hint="transfers go between sites; the coordinator receives model updates only",
        )
    selection = Selection.parse(dataset)
    profile = None
    if selection.source != "raw":
        profile = resolve_profile(selection.source, project.settings.deidentify_profiles)
    recipient = recipient or Recipient(
        name=peer.entity, country=peer.country, linked_to=peer.linked_to
    )
    day = day or datetime.now(UTC).date()
    with OpenSite.open(project) as site:
        found = resolve(
            site.store, selection, profile, withdrawn=site.store.catalogue.withdrawn_vins(purpose)
        )
        keys = site.crossings.keys(found.subjects)
        to = Counterparty(peer.id, recipient.name, recipient.country, recipient.linked_to)
        request = site.request(to, found.items, purpose, day=day)
        transfer_id = _transfer_id(local.id, destination_id, found, purpose, recipient, day)
        # The gate decides only on a ledger that verifies and approvals it agrees with.
        site.check_ledger()
        decision = _consented(site.decide(request, exclude=keys), found, purpose)
        report = TransferReport(
            transfer=transfer_id,
            origin=local.id,
            destination=destination_id,
            dataset=found.as_dict(),
            purpose=purpose,
            recipient=recipient.model_dump(mode="json"),
            decision=decision,
            status="would_transfer" if decision.allowed else "would_be_denied",
            dry_run=dry_run,
        )
        if dry_run:
            return report
        facts = {
            "transfer": transfer_id,
            "from": local.id,
            "to": destination_id,
            "dataset": selection.text,
            "destination": request.destination,
            "recipient": report.recipient,
            "purpose": purpose,
            "date": day.isoformat(),
            "items": [item.model_dump(mode="json") for item in found.items],
            # Each item counts its category's subjects; a vehicle in several categories is
            # one data subject, counted once here.
            "distinct_subjects": len(set().union(*found.subjects.values())),
            "decision": decision.as_dict(),
        }
        if not decision.allowed:
            denied = site.ledger.append("gate_decision", {**facts, "allowed": False})
            report.ledger = {local.id: denied.seq}
            report.status = "denied"
            return report
        if _find(site, "transfer_confirmed", transfer_id) is not None:
            report.status = "already_transferred"
            return report
        with PeerClient(local, peer, site.keys, head=site.ledger.head, http=http) as client:
            say(f"{destination_id}: exchanging ledger heads")
            held = site.ledger.last_peer_head(destination_id)
            witnessed = client.post(
                "ledger.witness",
                "/v1/witness",
                {"head_of_you": None if held is None else held.as_dict(), "record": True},
            )
            sent = _find(site, "transfer_out", transfer_id)
            if sent is None:
                objects = [
                    {
                        "path": o.path,
                        "sha256": o.sha256,
                        "bytes": site.store.objects.size(o.path),
                        "kind": o.kind,
                    }
                    for o in found.objects
                ]
                heads = [witnessed.head] if witnessed.head is not None else []
                with site.store.catalogue.transaction() as conn:
                    sent = site.ledger.append(
                        "transfer_out", {**facts, "sent": objects}, conn=conn, peer_heads=heads
                    )
                    # The append holds the write lock: an erasure either committed before
                    # (and the clips are gone) or reads this entry after.
                    left = site.store.catalogue.clip_hashes(found.clips)
                    if len(left) != len(set(found.clips)):
                        raise ConfigError(
                            f"{len(set(found.clips)) - len(left)} of the clips selected were "
                            "erased while this transfer was prepared; nothing was sent",
                            hint="rerun the transfer: it selects what the site holds now",
                        )
                    site.crossings.record(conn, request, keys, sent.seq)
            report.ledger[local.id] = sent.seq
            _deliver(report, client, site, sent, peer, say)
        return report


def _consented(decision: Decision, found: Dataset, purpose: str) -> Decision:
    """Deny a training purpose for data of drivers who did not consent to training: whatever
    the rulebooks and approvals say, a clip without consent never reaches a model, here or
    abroad."""
    if not purpose.endswith("_training") or not found.without_consent:
        return decision
    reason = (
        f"Denied: {found.without_consent} of the {len(found.clips)} clips selected come from "
        f"drivers who did not consent to their data training models, and the purpose is "
        f"{purpose}; select only consenting drivers' clips (add consent=true to --dataset, e.g. "
        f"'{found.selection.source}:consent=true')."
    )
    # The mechanisms stay: the law's requirements still apply once the selection is fixed.
    # Where the law denies anyway, its verdict stays first.
    reasons = (
        (decision.reasons[0], reason, *decision.reasons[1:])
        if not decision.allowed and decision.reasons
        else (reason, *decision.reasons)
    )
    return replace(decision, allowed=False, exempt=False, approval=None, reasons=reasons)


def _deliver(
    report: TransferReport,
    client: PeerClient,
    site: OpenSite,
    sent: Entry,
    peer: Identity,
    say: Callable[[str], None],
) -> None:
    """Offer the transfer, stream what the destination lacks, commit, and record its receipt."""
    offer = client.post(
        "transfer.offer",
        "/v1/transfers/offer",
        {"transfer": report.transfer, "entry": sent.stored()},
    )
    if offer.body.get("status") != "committed":
        objects = sent.data["sent"]
        missing = [int(i) for i in offer.body.get("missing", [])]
        if any(not 0 <= i < len(objects) for i in missing):
            raise RequestRefused(f"{peer.id} asked for objects the transfer does not hold")
        if missing:
            total = sum(int(objects[i]["bytes"]) for i in missing)
            say(f"{peer.id}: sending {len(missing)} objects ({total:,} bytes)")
            stored = client.stream(
                "transfer.objects",
                f"/v1/transfers/{report.transfer}/objects",
                _chunks(site, [objects[i] for i in missing]),
                length=total,
                params={"objects": ",".join(str(i) for i in missing)},
            )
            report.copied = int(stored.body.get("stored", 0))
            report.copied_bytes = int(stored.body.get("bytes", 0))
        offer = client.post(
            "transfer.commit",
            f"/v1/transfers/{report.transfer}/commit",
            {"transfer": report.transfer},
        )
    receipt = verify_entry(offer.body.get("transfer_in") or {}, peer, "transfer_in")
    if receipt.data.get("transfer") != report.transfer:
        raise RequestRefused(f"{peer.id}'s receipt is for another transfer", reason="signature")
    report.ledger[peer.id] = receipt.seq
    heads: list[Head] = [offer.head] if offer.head is not None else []
    confirmed = site.ledger.append(
        "transfer_confirmed",
        {
            "transfer": report.transfer,
            "to": peer.id,
            "transfer_in": {"seq": receipt.seq, "hash": receipt.hash},
        },
        peer_heads=heads,
    )
    report.ledger[f"{site.id} (receipt)"] = confirmed.seq
    report.status = "transferred"


def _chunks(site: OpenSite, objects: list[dict[str, Any]]) -> Iterator[bytes | memoryview]:
    """The objects' bytes in order, each checked against its hash before it is sent. A thread
    reads and hashes ahead (hashing lets go of the GIL), so the next object is ready while
    this one is on the wire; a changed object stops the stream (the destination then drops
    what it got of it)."""
    ahead: queue.Queue[bytes | memoryview | BaseException | None] = queue.Queue(maxsize=16)
    stop = threading.Event()

    def read() -> None:
        try:
            for obj in objects:
                data = site.store.objects.read(str(obj["path"]))
                if hashlib.sha256(data).hexdigest() != obj["sha256"] or len(data) != obj["bytes"]:
                    raise ConfigError(
                        f"{site.id}: {obj['path']} no longer has the hash the transfer recorded",
                        hint=f"run 'onshore store verify --site {site.id} --deep'",
                    )
                view = memoryview(data)
                for start in range(0, len(data), CHUNK):
                    while not stop.is_set():
                        try:
                            ahead.put(view[start : start + CHUNK], timeout=0.5)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
            ahead.put(None)
        except BaseException as exc:  # handed to the sender, which raises it
            ahead.put(exc)

    reader = threading.Thread(target=read, name="transfer-read-ahead", daemon=True)
    reader.start()
    try:
        while True:
            item = ahead.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                ahead.get_nowait()
        reader.join(timeout=5)
