"""One transfer from one site to another: decided by the gate, recorded at both ends, copied once.

The order is what makes a transfer safe to kill at any point and rerun:

1. the gate decides on exactly what would leave (:mod:`.selection`), counting the origin's
   earlier transfers from its ledger;
2. denied: a ``gate_decision`` entry at both sites, each recording the other's head; nothing
   moves;
3. allowed: the origin appends ``transfer_out`` (the decision, what is sent by path and hash,
   the destination's head) *before* a byte leaves;
4. the objects are copied into the destination's store under ``received/<origin>/``
   (content-addressed, atomic, durable; a rerun finds them there and writes nothing);
5. one transaction at the destination registers them and appends ``transfer_in`` (the
   origin's head); the origin then records the destination's new head.

A transfer has an id, the hash of what it moves, where, why and on which day. A rerun of a
transfer that reached step 5 reports it done; one that stopped after step 3 decides again
(without counting its own ``transfer_out`` twice) and completes it if still allowed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from typing import Any, Final

import orjson
from sqlalchemy import BigInteger, Column, DateTime, MetaData, String, Table, Text, select
from sqlalchemy.engine import Connection

from onshore.deidentify.profiles import resolve_profile
from onshore.errors import ConfigError
from onshore.gate import ApprovalRegistry, Decision, Gate, HistoryProvider
from onshore.ledger import Entry, Head, Ledger, verify
from onshore.rulebook.evaluate import PastTransfer, Recipient, TransferRequest
from onshore.rulebook.loader import project_rulebooks
from onshore.settings import Project
from onshore.sites.keystore import load_keystore
from onshore.store.objects import RECEIVED_DIR
from onshore.store.site import SiteStore
from onshore.transfer.approvals import trusted_approvals
from onshore.transfer.selection import Dataset, Selection, resolve

__all__ = ["TransferReport", "ledger_history", "site_gate", "transfer"]

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
    """The ledger entries written, by site: their sequence numbers."""

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


def ledger_history(ledger: Ledger, *, exclude: str | None = None) -> HistoryProvider:
    """A gate history provider over the ``transfer_out`` entries of ``ledger`` (and the
    ``remote_read`` entries it allowed): every item of every earlier transfer out of the site
    since the day the gate asks for. ``exclude`` leaves out one transfer (its own rerun must not
    count itself twice)."""

    def provider(_request: TransferRequest, since: date) -> list[PastTransfer]:
        start = datetime(since.year, since.month, since.day, tzinfo=UTC)
        past = []
        sent = ledger.entries(kind="transfer_out", since_time=start)
        # A remote read the gate allowed (a console query from abroad) counts like a transfer.
        read = [
            e for e in ledger.entries(kind="remote_read", since_time=start) if e.data["allowed"]
        ]
        for entry in sorted(sent + read, key=lambda e: e.seq):
            data = entry.data
            if data.get("transfer") == exclude:
                continue
            for item in data.get("items", ()):
                past.append(
                    PastTransfer.model_validate(
                        {
                            "date": data["date"],
                            "destination": data["destination"],
                            "recipient": data["recipient"]["name"],
                            "purpose": data["purpose"],
                            **item,
                        }
                    )
                )
        return past

    return provider


def site_gate(
    project: Project, store: SiteStore, ledger: Ledger, *, exclude: str | None = None
) -> Gate:
    """The gate of one site: the project's rulebooks, the approvals on file that its ledger
    vouches for, and its earlier transfers as history (``exclude``: see
    :func:`ledger_history`). Raises :class:`~onshore.errors.LedgerTampered` when the approvals
    table and the ledger disagree."""
    rulebooks = project_rulebooks(project)
    approvals = trusted_approvals(ApprovalRegistry(store.catalogue, rulebooks), ledger)
    return Gate(rulebooks, approvals, history=ledger_history(ledger, exclude=exclude))


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


def _find(ledger: Ledger, kind: str, transfer_id: str) -> Entry | None:
    """The entry of ``kind`` for ``transfer_id``, if the ledger has one."""
    for entry in ledger.entries(kind=kind):
        if entry.data.get("transfer") == transfer_id:
            return entry
    return None


def _heads(*heads: Head | None) -> list[Head]:
    return [h for h in heads if h is not None]


def transfer(
    project: Project,
    origin_id: str,
    destination_id: str,
    dataset: str,
    purpose: str,
    *,
    recipient: Recipient | None = None,
    day: date | None = None,
    dry_run: bool = False,
) -> TransferReport:
    """Move ``dataset`` from site ``origin_id`` to site ``destination_id`` if the gate allows;
    record the decision in both ledgers either way (except on a dry run, which records
    nothing). Raises ConfigError for an unknown site, profile or empty selection."""
    if origin_id == destination_id:
        raise ConfigError(f"--from and --to are both {origin_id}: a transfer goes between sites")
    origin_site, dest_site = project.site(origin_id), project.site(destination_id)
    selection = Selection.parse(dataset)
    profile = None
    if selection.source != "raw":
        profile = resolve_profile(selection.source, project.settings.deidentify_profiles)
    recipient = recipient or Recipient(
        name=dest_site.entity, country=dest_site.location, linked_to=tuple(dest_site.linked_to)
    )
    day = day or datetime.now(UTC).date()
    with ExitStack() as stack:
        origin = stack.enter_context(SiteStore.open(project, origin_id))
        dest = stack.enter_context(SiteStore.open(project, destination_id))
        keys_from = load_keystore(project.keystore_path(origin_site))
        keys_to = load_keystore(project.keystore_path(dest_site))
        out_ledger = Ledger.open(origin.catalogue, keys_from)
        in_ledger = Ledger.open(dest.catalogue, keys_to)
        _metadata.create_all(dest.catalogue.engine)

        found = resolve(origin, selection, profile)
        request = TransferRequest(
            origin=origin_site.jurisdiction,
            destination=dest_site.location,
            recipient=recipient,
            purpose=purpose,
            date=day,
            data=tuple(found.items),
        )
        transfer_id = _transfer_id(origin_id, destination_id, found, purpose, recipient, day)
        # The gate decides only on a ledger that verifies and approvals it agrees with.
        verify(
            out_ledger, current_key=keys_from.public_key, check_hashes=False
        ).raise_for_problems()
        gate = site_gate(project, origin, out_ledger, exclude=transfer_id)
        decision = _consented(gate.decide(request), found, purpose)
        report = TransferReport(
            transfer=transfer_id,
            origin=origin_id,
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
            "from": origin_id,
            "to": destination_id,
            "dataset": selection.text,
            "destination": request.destination,
            "recipient": report.recipient,
            "purpose": purpose,
            "date": day.isoformat(),
            "items": [item.model_dump(mode="json") for item in found.items],
            "decision": decision.as_dict(),
        }
        if not decision.allowed:
            _record_denial(report, facts, out_ledger, in_ledger)
            return report
        if _find(in_ledger, "transfer_in", transfer_id) is not None:
            report.status = "already_transferred"
            return report
        sent = _find(out_ledger, "transfer_out", transfer_id)
        if sent is None:
            # "sent", not "objects": the origin vouches for what left, by hash, not for keeping
            # it; the destination's transfer_in vouches for the copies it holds.
            objects = [{"path": o.path, "sha256": o.sha256} for o in found.objects]
            sent = out_ledger.append(
                "transfer_out", {**facts, "sent": objects}, peer_heads=_heads(in_ledger.head())
            )
        report.ledger[origin_id] = sent.seq
        origin_head = out_ledger.head()
        assert origin_head is not None  # it holds at least the transfer_out just read
        _deliver(report, found, origin, dest, in_ledger, origin_head, transfer_id)
        head = in_ledger.head()
        if head is not None:
            report.ledger[f"{origin_id} (peer head)"] = out_ledger.record_peer_head(head).seq
        report.status = "transferred"
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


def _record_denial(
    report: TransferReport, facts: dict[str, Any], out_ledger: Ledger, in_ledger: Ledger
) -> None:
    """A denied transfer is an entry at both ends, each recording the other's head."""
    denied = out_ledger.append(
        "gate_decision", {**facts, "allowed": False}, peer_heads=_heads(in_ledger.head())
    )
    seen = in_ledger.append(
        "gate_decision", {**facts, "allowed": False}, peer_heads=_heads(out_ledger.head())
    )
    report.ledger = {report.origin: denied.seq, report.destination: seen.seq}
    report.status = "denied"


def _deliver(
    report: TransferReport,
    found: Dataset,
    origin: SiteStore,
    dest: SiteStore,
    in_ledger: Ledger,
    origin_head: Head,
    transfer_id: str,
) -> None:
    """Copy the objects into the destination and register them with their ``transfer_in``."""
    items = []
    for ref in found.objects:
        data = origin.objects.read(ref.path)
        if hashlib.sha256(data).hexdigest() != ref.sha256:
            raise ConfigError(
                f"{report.origin}: {ref.path} no longer has the hash the catalogue records",
                hint=f"run 'onshore store verify --site {report.origin} --deep'",
            )
        items.append((f"{RECEIVED_DIR}/{report.origin}/{ref.path}", data, ref))
    stored = dest.objects.receive([(path, data) for path, data, _ in items])
    now = datetime.now(UTC)
    rows = [
        {
            "site": dest.site,
            "transfer": transfer_id,
            "path": path,
            "origin": report.origin,
            "sha256": ref.sha256,
            "bytes": len(data),
            "kind": ref.kind,
            "received_at": now,
        }
        for path, data, ref in items
    ]
    decided = report.decision.as_dict()
    with dest.catalogue.transaction() as conn:
        _register(conn, rows)
        entry = in_ledger.append(
            "transfer_in",
            {
                "transfer": transfer_id,
                "from": report.origin,
                "dataset": found.selection.text,
                "purpose": report.purpose,
                "decision": {
                    key: decided[key] for key in ("allowed", "approval", "rulebook_versions")
                },
                "objects": [{"path": r["path"], "sha256": r["sha256"]} for r in rows],
            },
            conn=conn,
            peer_heads=[origin_head],
        )
    report.ledger[report.destination] = entry.seq
    report.copied = sum(s.written for s in stored)
    report.copied_bytes = sum(s.size for s in stored if s.written)


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
