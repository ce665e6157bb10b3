"""What a site shows of itself: each view a console page or a query asks of a site, computed at
the site from its own store and ledger, with what the law calls the rows it holds.

A view is plain JSON data, and a description of it for the gate: the data items its rows hold
(categories and the number of subjects) and who those subjects are (for counting them once,
:mod:`onshore.gate.crossings`). The same functions serve a read at the site itself and a read
from another party through the site's service (:mod:`onshore.reads.gate`).

Views: ``summary`` (inventory, labels, approvals by status, ledger head), ``approvals`` (every
approval's status and deadlines), ``clips`` (one page of the inventory's rows: VINs, times,
bounding boxes), ``decisions`` (the gate's decisions on what left or asked to leave),
``reports`` (the report files written), ``report`` (one of them), ``verify`` (the site's own
verification of its ledger), ``plan`` (aggregates and the site's gate on hypothetical crossings,
for a planner: :mod:`onshore.reads.plan`), ``rights`` (drivers' requests served and retention
runs, from the ledger: dates and counts, no vehicle), ``ledger`` (one page of the site's
ledger, filtered, each entry checked: the ledger explorer's).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Final

import orjson

from onshore.errors import ConfigError, LedgerError
from onshore.gate import WARN_DAYS
from onshore.gate.site import OpenSite
from onshore.reports.build import flows
from onshore.rulebook.evaluate import DataItem
from onshore.rulebook.problems import RulebookNotFound
from onshore.store.catalogue import CLIP_SORTS, ClipRecord

__all__ = ["CLIP_FILTERS", "PAGE_ROWS", "REPORTS_DIR", "VIEWS", "ClipQuery", "View", "compute"]

PAGE_ROWS: Final = 100
"""Rows per page of a site's inventory and of its decisions."""
REPORTS_DIR: Final = "reports"
"""Where a site's reports are written in its folder (``reports/<site>/``)."""
_ROW_CATEGORIES: Final = ("vehicle_id", "trajectory", "sensitive_area_geodata")
"""What a row of the clip inventory holds: the VIN, positions and times (the bounding box), and
positions inside a sensitive area where classification found them."""


@dataclass(slots=True)
class View:
    """A view of a site: its data, and what the gate is asked about its rows."""

    data: dict[str, Any]
    items: list[DataItem] = field(default_factory=list)
    subjects: dict[str, set[str]] = field(default_factory=dict)
    rows: int = 0
    volatile: frozenset[str] = frozenset()
    """Keys of ``data`` that change with every read and carry nothing the gate decides on (the
    site's own ledger head, which each recorded read moves): left out when a read is matched
    with an earlier one of the same day."""

    def as_json(self) -> dict[str, Any]:
        """The data as it travels (dates and paths as text)."""
        value = orjson.loads(orjson.dumps(self.data, default=_default))
        assert isinstance(value, dict)
        return value


def _default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "as_dict"):
        return value.as_dict()
    raise TypeError(f"cannot encode {type(value).__name__}")


_AGGREGATE: Final = DataItem(category="aggregate_metrics", subjects=0, deid_state="anonymized")


def summary(site: OpenSite, _params: Mapping[str, Any], today: date) -> View:
    """Counts and statuses: no person's data."""
    settings = site.settings
    statuses = [s.as_dict() for s in site.registry().statuses(today)]
    head = site.ledger.head()
    last = None if head is None else site.ledger.entry(head.seq)
    data = {
        "id": site.id,
        "jurisdiction": settings.jurisdiction,
        "entity": settings.entity,
        "country": settings.location,
        "inventory": site.store.catalogue.inventory(),
        "approvals": dict(Counter(s["status"] for s in statuses)),
        "ledger": {
            "name": site.id,
            "entries": 0 if head is None else head.seq + 1,
            "head": None if head is None else head.hash,
            "last_kind": None if last is None else last.kind,
            "last_time": None if last is None else last.time,
            "key": site.ledger.pinned_fingerprint(),
        },
    }
    return View(data, [_AGGREGATE], volatile=frozenset({"ledger"}))


def approvals(site: OpenSite, _params: Mapping[str, Any], today: date) -> View:
    """Every approval on file with its deadlines (legal records, not personal data), and the
    ledger entries that put it on file (``ledger_seq``) and revoked it (``revoked_seq``)."""
    added: dict[str, int] = {}
    revoked: dict[str, int] = {}
    for entry in site.ledger.entries(kind="approval_added"):
        approval = entry.data.get("approval")
        if isinstance(approval, dict) and isinstance(approval.get("id"), str):
            added[approval["id"]] = entry.seq
    for entry in site.ledger.entries(kind="approval_revoked"):
        if isinstance(entry.data.get("approval"), str):
            revoked[entry.data["approval"]] = entry.seq
    rows = []
    for status in site.registry().statuses(today):
        row = {"site": site.id, **status.as_dict()}
        due = status.renew_by or status.valid_until
        row["days_left"] = None if due is None else (due - today).days
        row["due"] = due
        row["ledger_seq"] = added.get(status.approval.id)
        row["revoked_seq"] = revoked.get(status.approval.id)
        rows.append(row)
    return View({"approvals": rows, "warn_days": WARN_DAYS}, [_AGGREGATE])


CLIP_FILTERS: Final = ("label", "consent", "vin", "trigger", "sort", "order")
"""The parameters of the ``clips`` view besides ``page``."""


@dataclass(frozen=True, slots=True)
class ClipQuery:
    """The filters and order of a page of clips, read from a view's parameters."""

    label: str | None = None
    consent: bool | None = None
    vin: str | None = None
    trigger: str | None = None
    sort: str = "start"
    descending: bool = False
    text: dict[str, str] = field(default_factory=dict)
    """The parameters as given, for links and the form."""

    @classmethod
    def parse(cls, params: Mapping[str, Any]) -> ClipQuery:
        """Raises :class:`ConfigError` naming the parameter and why."""
        text = {k: str(params[k]).strip() for k in CLIP_FILTERS if params.get(k) not in (None, "")}
        consent = text.get("consent")
        if consent not in (None, "yes", "no"):
            raise ConfigError(f"consent: {consent!r} is not yes or no")
        sort = text.get("sort", "start")
        if sort not in CLIP_SORTS:
            raise ConfigError(f"sort: {sort!r} is not one of {', '.join(CLIP_SORTS)}")
        order = text.get("order", "asc")
        if order not in ("asc", "desc"):
            raise ConfigError(f"order: {order!r} is not asc or desc")
        vin = text.get("vin")
        if vin is not None and not re.fullmatch(r"[A-Za-z0-9]{1,17}", vin):
            raise ConfigError(f"vin: {vin!r} is not the start of a VIN (letters and digits)")
        return cls(
            label=text.get("label"),
            consent=None if consent is None else consent == "yes",
            vin=vin,
            trigger=text.get("trigger"),
            sort=sort,
            descending=order == "desc",
            text=text,
        )

    def filters(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "consent": self.consent,
            "vin": self.vin,
            "trigger": self.trigger,
        }


def clips(site: OpenSite, params: Mapping[str, Any], _today: date) -> View:
    """One page of the site's clips: VINs, models, triggers, times and bounding boxes. Filtered
    (``label``, a category; ``consent``, ``yes`` or ``no``; ``vin``, its first characters;
    ``trigger``), sorted (``sort``: one of :data:`~onshore.store.catalogue.CLIP_SORTS`;
    ``order``: ``asc`` or ``desc``) and paged (``page``) by the catalogue's database, so a
    page costs the same at a million clips. Raises :class:`ConfigError` naming a parameter it
    cannot take."""
    catalogue = site.store.catalogue
    query = ClipQuery.parse(params)

    def page_of(number: int) -> tuple[list[ClipRecord], int]:
        return catalogue.clip_page(
            **query.filters(),
            sort=query.sort,
            descending=query.descending,
            offset=(number - 1) * PAGE_ROWS,
            limit=PAGE_ROWS,
        )

    page = max(1, _int(params.get("page"), 1))
    shown, count = page_of(page)
    pages = max(1, -(-count // PAGE_ROWS))
    if page > pages:  # past the end: the last page
        page = pages
        shown, count = page_of(page)
    labels: dict[str, set[str]] = {}
    for label in catalogue.labels_of([c.clip_id for c in shown]):
        labels.setdefault(label.clip_id, set()).add(label.category)
    vins = {c.vin for c in shown}
    found = set().union(*(labels.get(c.clip_id, set()) for c in shown)) if shown else set()
    categories = [
        category
        for category in _ROW_CATEGORIES
        if category in found or category in ("vehicle_id", "trajectory")
    ]
    rows = [
        {
            "clip": c.clip_id,
            "vin": c.vin,
            "model": c.vehicle_model,
            "trigger": c.trigger,
            "start": c.start_time,
            "seconds": round((c.end_time - c.start_time).total_seconds(), 1),
            "rows": c.rows,
            "bytes": c.bytes,
            "consent": c.consent_training,
            "simulated": c.simulated,
            "bbox": (c.min_lat, c.min_lon, c.max_lat, c.max_lon),
            "labels": sorted(labels.get(c.clip_id, ())),
        }
        for c in shown
    ]
    return View(
        {
            "page": page,
            "pages": pages,
            "clips": count,
            "rows": rows,
            "filters": query.text,
            "sorts": list(CLIP_SORTS),
        },
        [DataItem(category=c, subjects=len(vins)) for c in categories],
        {c: set(vins) for c in categories},
        len(rows),
    )


def decisions(site: OpenSite, _params: Mapping[str, Any], _today: date) -> View:
    """The gate's decisions recorded in the site's ledger: counts and reasons, no person; and
    the transfers the site received (``transfer_in``), each naming the origin's entry."""
    rows = []
    site_flows = flows(site.id, site.ledger.entries())
    for flow in site_flows:
        decision = flow.decision
        rows.append(
            {
                "site": site.id,
                "seq": flow.entry.seq,
                "time": flow.entry.time,
                "what": flow.what,
                "allowed": flow.allowed,
                "destination": flow.destination,
                "recipient": flow.recipient,
                "purpose": flow.purpose,
                "categories": sorted({str(i.get("category")) for i in flow.items}),
                "subjects": flow.subjects_summed,
                "distinct_subjects": flow.distinct_subjects,
                "reasons": list(decision.get("reasons", ()))
                or [str(flow.entry.data["reason"])] * ("reason" in flow.entry.data),
                "gated": bool(decision),
                "rules": [r.get("id", "") for r in decision.get("rules", ())],
                "approval": (decision.get("approval") or {}).get("id"),
            }
        )
    inbound = [
        {
            "site": site.id,
            "seq": e.seq,
            "time": e.time,
            "from": str(e.data.get("from", "")),
            "transfer": str(e.data.get("transfer", "")),
            "dataset": e.data.get("dataset"),
            "purpose": e.data.get("purpose"),
            "objects": len(e.data.get("objects") or ()),
            "approval": ((e.data.get("decision") or {}).get("approval") or {}).get("id"),
            "origin_entry": e.data.get("transfer_out"),
        }
        for e in site.ledger.entries(kind="transfer_in")
    ]
    return View({"decisions": rows, "inbound": inbound}, [_AGGREGATE], rows=len(rows))


def _reports_folder(site: OpenSite) -> Path:
    return (site.project.root / REPORTS_DIR / site.id).resolve()


def reports(site: OpenSite, _params: Mapping[str, Any], today: date) -> View:
    """The reports written for the site's regulator (file names and dates, and whether the
    ledger has entries newer than each), and the yearly deadlines its rulebook states, the next
    of each with the days left."""
    folder = _reports_folder(site)
    head = site.ledger.head()
    latest = None if head is None else site.ledger.entry(head.seq)
    last_entry = None if latest is None else datetime.fromisoformat(latest.time)
    found = []
    for path in sorted(folder.glob("*.html")) if folder.is_dir() else []:
        pdf = path.with_suffix(".pdf")
        written = datetime.fromtimestamp(path.stat().st_mtime, UTC)
        found.append(
            {
                "site": site.id,
                "kind": path.stem,
                "html": path.name,
                "pdf": pdf.name if pdf.exists() else None,
                "written": written,
                # A report is made from the ledger as it was: entries since may change it.
                "ledger_newer": last_entry is not None and last_entry > written,
                "ledger_last": latest.time if latest is not None else None,
            }
        )
    return View({"reports": found, "deadlines": _deadlines(site, today)}, [_AGGREGATE])


def _deadlines(site: OpenSite, today: date) -> list[dict[str, Any]]:
    """The yearly duties with a due day in the rulebook of the site's jurisdiction (CN's annual
    report by 15 December), the next occurrence of each on or after ``today``."""
    try:
        book = site.rulebooks.for_origin(site.settings.jurisdiction)
    except RulebookNotFound:
        return []
    out = []
    for obligation in book.obligations.values():
        if obligation.due is None or not obligation.in_force.contains(today):
            continue
        due = obligation.due.next_on_or_after(today)
        out.append(
            {
                "site": site.id,
                "obligation": obligation.id,
                "text": obligation.text,
                "source": obligation.source,
                "due": due.isoformat(),
                "days_left": (due - today).days,
            }
        )
    return sorted(out, key=lambda d: int(d["days_left"]))


def report(site: OpenSite, params: Mapping[str, Any], _today: date) -> View:
    """One report file: its figures and its map of the site's traces. Raises
    :class:`LookupError` for a name that is not a report of the site."""
    name = str(params.get("name", ""))
    folder = _reports_folder(site)
    path = (folder / name).resolve()
    if path.parent != folder or path.suffix not in (".html", ".pdf") or not path.is_file():
        raise LookupError(f"no report {name!r} for site {site.id}")
    vins = {c.vin for c in site.store.catalogue.clips()}
    return View(
        {
            "name": path.name,
            "media_type": "application/pdf" if path.suffix == ".pdf" else "text/html",
            "content": base64.b64encode(path.read_bytes()).decode(),
        },
        [DataItem(category="trajectory", subjects=len(vins)), _AGGREGATE],
        {"trajectory": vins},
        1,
    )


def verify(site: OpenSite, params: Mapping[str, Any], _today: date) -> View:
    """The site's own check of its ledger (chain, signatures, store, approvals)."""
    from onshore.gate.audit import verify_site

    shallow = bool(params.get("shallow", True))
    return View(
        verify_site(site.project, site.id, check_hashes=not shallow).as_dict(), [_AGGREGATE]
    )


def plan(site: OpenSite, params: Mapping[str, Any], today: date) -> View:
    """What a planner asks of a site: aggregates, and its gate's decisions on hypothetical
    crossings, none recorded (:func:`onshore.reads.plan.plan_facts`)."""
    from onshore.reads.plan import plan_facts

    return View(plan_facts(site, params, today), [_AGGREGATE])


_RIGHTS_KINDS: Final = {
    "erasure": "erasure",
    "erasure_completed": "erasure confirmed everywhere",
    "erasure_in": "erasure of a copy received",
    "consent_withdrawn": "consent withdrawn",
    "access_request": "access request",
    "retention_run": "retention run",
}


def rights(site: OpenSite, _params: Mapping[str, Any], _today: date) -> View:
    """Drivers' requests the site served and its retention runs, newest first: when, what,
    the counts each entry states (clips, objects, recipients, purpose, files), and per kind how
    many. No vehicle, not even its keyed hash."""
    rows = []
    for entry in site.ledger.entries():
        if entry.kind not in _RIGHTS_KINDS:
            continue
        d = entry.data
        rows.append(
            {
                "site": site.id,
                "seq": entry.seq,
                "time": entry.time,
                "kind": entry.kind,
                "what": _RIGHTS_KINDS[entry.kind],
                "request": d.get("request"),
                "clips": d.get("clips"),
                "objects": len(d.get("erased") or []) if "erased" in d else d.get("files"),
                "recipients": d.get("recipients") or ([d["from"]] if "from" in d else []),
                "purpose": d.get("purpose"),
                "outputs": d.get("outputs"),
            }
        )
    rows.reverse()
    counts = Counter(r["kind"] for r in rows)
    return View({"rights": rows, "counts": dict(counts)}, [_AGGREGATE], rows=len(rows))


_VEHICLE_FIELD: Final = "vehicle"
"""Where an entry names a vehicle: its keyed hash (a pseudonym), in a driver's request."""


def ledger(site: OpenSite, params: Mapping[str, Any], _today: date) -> View:
    """One page of the site's own ledger, newest first, filtered (``kind``, ``actor``,
    ``since``, ``until``, ``seq``, and of ``remote_read`` entries ``view`` and ``reader``;
    paged by ``before``, ``after`` and ``limit``: :class:`~onshore.ledger.explore.EntryQuery`),
    each entry with its payload and its own check (hash, signature under the pinned key, link to
    the entry before). Raises :class:`~onshore.errors.ConfigError` naming a filter it cannot
    take.

    An entry holds no secret (one that would is withheld); it may name a vehicle by its keyed
    hash (a driver's erasure, withdrawal or access request): a page that does holds
    pseudonymised vehicle identifiers, each vehicle's hash one subject for the gate. The page's
    entries change as the ledger grows (each read from abroad adds one); what the gate decides
    on does not unless the vehicles named do, so the same page read again the same day is one
    read (:mod:`onshore.reads.gate`)."""
    from onshore.ledger.explore import EntryQuery, read_page, secret_marks

    query = EntryQuery.parse(params)
    try:
        marks = secret_marks(site.keys)
    except LedgerError:
        marks = ()  # opened without its keys: nothing of them to look for
    found = read_page(site.ledger, query, secrets=marks)
    data = found.as_dict()
    rows = data["entries"]
    vehicles = {
        str(row["payload"][_VEHICLE_FIELD])
        for row in rows
        if isinstance(row["payload"], dict) and isinstance(row["payload"].get(_VEHICLE_FIELD), str)
    }
    items = [_AGGREGATE]
    if vehicles:
        items.append(
            DataItem(category="vehicle_id", subjects=len(vehicles), deid_state="pseudonymized")
        )
    # What the gate decides on, for matching a read with an earlier one: the vehicles named.
    data["vehicles"] = (
        hashlib.sha256("\n".join(sorted(vehicles)).encode()).hexdigest() if vehicles else None
    )
    return View(
        data,
        items,
        {"vehicle_id": vehicles} if vehicles else {},
        len(rows),
        volatile=frozenset({"head", "entries", "newer", "older", "total"}),
    )


VIEWS: Final[dict[str, Callable[[OpenSite, Mapping[str, Any], date], View]]] = {
    "summary": summary,
    "approvals": approvals,
    "clips": clips,
    "decisions": decisions,
    "reports": reports,
    "report": report,
    "verify": verify,
    "plan": plan,
    "rights": rights,
    "ledger": ledger,
}


def compute(site: OpenSite, view: str, params: Mapping[str, Any], today: date) -> View:
    """The view ``view`` of ``site``; raises :class:`ConfigError` for an unknown one."""
    try:
        make = VIEWS[view]
    except KeyError:
        raise ConfigError(
            f"no view {view!r} of a site", hint=f"views: {', '.join(sorted(VIEWS))}"
        ) from None
    return make(site, params, today)


def _int(value: object, default: int) -> int:
    try:
        return int(value)  # type: ignore[call-overload,no-any-return]
    except (TypeError, ValueError):
        return default
