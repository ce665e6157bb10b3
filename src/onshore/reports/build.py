"""Reports regulators ask for, built from a site's catalogue, approvals registry and ledger.

Four kinds (:data:`REPORT_KINDS`): China's annual automotive data security report, the facts of a
CN security-assessment application for one recipient, and the records of transfers under GDPR
Chapter V and under 28 CFR Part 202. Each figure carries the ledger entries it was computed
from (:class:`~onshore.reports.model.Source`); what the site holds comes from its catalogue, and
what it declares (storage place and period, responsible person) from its settings, and says so.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

from onshore.deidentify.profiles import resolve_profile
from onshore.errors import ConfigError, OnshoreError, RulebookError
from onshore.gate import ApprovalRegistry, ApprovalStatus
from onshore.ledger import Entry, Ledger
from onshore.reports.charts import bar_chart, trace_map, training_chart
from onshore.reports.model import Chart, Figure, Report, Source, TableBlock
from onshore.rulebook.loader import Rulebooks, project_rulebooks
from onshore.settings import CONFIG_NAME, Project, SiteSettings, redact_url
from onshore.store.catalogue import DeidentifiedRecord, FileRecord
from onshore.store.site import SiteStore

__all__ = ["CONCERN_SET", "REPORT_KINDS", "Flow", "build_report", "flows"]

REPORT_KINDS: Final = ("cn-annual", "outbound-dossier", "eu-transfers", "us-bulk-data")

CONCERN_SET: Final = "countries_of_concern"
"""The US rulebook's country set the bulk-data report screens recipients against (28 CFR
202.211); a user's own US rulebook must keep one of that name."""


@dataclass(frozen=True, slots=True)
class Flow:
    """One decision to send data out of the site, read from one ledger entry: a transfer that
    left (``transfer_out``), one the gate denied (``gate_decision``) or a model update to the
    coordinator (``federated_update``, sent or refused)."""

    entry: Entry
    what: str
    """``transfer``, ``model_update`` or ``remote_read`` (rows read from abroad in the console)."""
    date: str
    destination: str
    recipient: str
    recipient_country: str
    linked_to: tuple[str, ...]
    purpose: str
    items: tuple[dict[str, Any], ...]
    objects: int
    allowed: bool
    decision: dict[str, Any]
    dataset: str = ""

    @property
    def source(self) -> Source:
        return Source(self.entry.site, self.entry.kind, self.entry.seq, self.entry.hash)

    @property
    def subjects_summed(self) -> int:
        """Subjects summed over the flow's categories: a vehicle in two categories counts
        twice, so an upper bound on the persons concerned."""
        return sum(int(i.get("subjects", 0)) for i in self.items)

    @property
    def distinct_subjects(self) -> int | None:
        """The persons concerned, each once: recorded with a transfer; for a model update, its
        one category's count; ``None`` for an entry that does not say (older transfers)."""
        recorded = self.entry.data.get("distinct_subjects")
        if isinstance(recorded, int):
            return recorded
        if len(self.items) == 1:
            return int(self.items[0].get("subjects", 0))
        return None

    @property
    def approval(self) -> dict[str, Any] | None:
        found = self.decision.get("approval")
        return found if isinstance(found, dict) else None

    @property
    def legal_basis(self) -> str:
        """The approval used (type id reference), ``exempt``, or ``none``."""
        approval = self.approval
        if approval is not None:
            return f"{approval['type']} {approval['id']} ({approval.get('reference') or '-'})"
        return "exempt" if self.decision.get("exempt") else "none"

    def subjects(self) -> dict[str, int]:
        """Subjects by category in this flow."""
        out: dict[str, int] = defaultdict(int)
        for item in self.items:
            out[str(item["category"])] += int(item.get("subjects", 0))
        return dict(out)


def flows(site_id: str, entries: Iterable[Entry]) -> list[Flow]:
    """Every outbound decision in a site's ledger entries, in ledger order."""
    found = []
    for entry in entries:
        data = entry.data
        if entry.kind == "transfer_out" or (
            entry.kind == "gate_decision" and data.get("from") == site_id
        ):
            allowed = entry.kind == "transfer_out"
            what, objects = "transfer", len(data.get("sent", ()))
        elif entry.kind == "federated_update":
            allowed, what, objects = bool(data.get("sent")), "model_update", 1
        elif entry.kind == "remote_read":
            # Rows read from abroad in the console: a transfer of what the page showed.
            allowed, what, objects = bool(data.get("allowed")), "remote_read", 0
        else:
            continue
        recipient = data.get("recipient") or {}
        found.append(
            Flow(
                entry=entry,
                what=what,
                date=str(data.get("date", entry.time[:10])),
                destination=str(data.get("destination", "?")),
                recipient=str(recipient.get("name", data.get("to", "?"))),
                recipient_country=str(recipient.get("country", data.get("destination", "?"))),
                linked_to=tuple(recipient.get("linked_to", ())),
                purpose=str(data.get("purpose", "?")),
                items=tuple(data.get("items", ())),
                objects=objects if allowed else 0,
                allowed=allowed,
                decision=dict(data.get("decision") or {}),
                dataset=str(data.get("dataset", "")),
            )
        )
    return found


@dataclass(slots=True)
class _Site:
    """What the reports read of one site, gathered in one pass."""

    project: Project
    settings: SiteSettings
    inventory: dict[str, Any]
    quarantined: list[FileRecord]
    deidentified: list[DeidentifiedRecord]
    approvals: list[ApprovalStatus]
    """Every approval on file with its last valid day as ``approvals list`` gives it (the
    earlier of its own end and what the rulebook allows), and its status on the report's day."""
    entries: list[Entry]
    map_png: bytes | None
    books: Rulebooks

    def catalogue(self, detail: str) -> Source:
        return Source(self.settings.id, "catalogue", detail=detail)

    def setting(self, key: str) -> Source:
        """The site's settings at ``key``, e.g. ``retention.raw_days``."""
        return Source(self.settings.id, "settings", detail=f"{CONFIG_NAME} {self.table} {key}")

    @property
    def table(self) -> str:
        """The site's table in ``onshore.toml``, e.g. ``[sites.cn-shanghai]``."""
        return f"[sites.{self.settings.id}]"

    def approval_entry(self, approval_id: str) -> Source | None:
        for e in self.entries:
            if e.kind == "approval_added" and e.data["approval"]["id"] == approval_id:
                return Source(e.site, e.kind, e.seq, e.hash)
        return None

    def territory(self, jurisdiction: str) -> frozenset[str]:
        """The territory of ``jurisdiction``'s rulebook (the EU's: the EEA and ``EU``)."""
        return self.books.for_origin(jurisdiction).territory_set

    def domestic(self, flow: Flow) -> bool:
        """Whether ``flow`` stayed in the territory of the site's own law."""
        return flow.destination in self.territory(self.settings.jurisdiction)

    def of_concern(self, flow: Flow) -> bool:
        """Whether ``flow``'s recipient is in, or linked to, a country of concern of the US
        rulebook (its :data:`CONCERN_SET`)."""
        book = self.books.for_origin("US")
        if CONCERN_SET not in book.country_sets:
            raise RulebookError(
                f"{book.file}: the US rulebook has no country set {CONCERN_SET!r}, which the "
                "us-bulk-data report screens recipients against",
                hint=f"add country_sets.{CONCERN_SET} (28 CFR 202.211) to the rulebook",
            )
        concern = book.countries((CONCERN_SET,))  # the rulebook keeps it, made once
        return bool({flow.recipient_country, flow.destination, *flow.linked_to} & concern)


def _gather(project: Project, site_id: str, *, with_map: bool) -> _Site:
    settings = project.site(site_id)
    with SiteStore.open(project, site_id) as store:
        books = project_rulebooks(project)
        registry = ApprovalRegistry(store.catalogue, books, jurisdiction=settings.jurisdiction)
        map_png = None
        if with_map:
            profiles = {d.profile for d in store.catalogue.deidentified()}
            profile = None
            if profiles:
                name = sorted(profiles)[0]
                profile = resolve_profile(name, project.settings.deidentify_profiles)
            map_png = trace_map(store, profile)
        return _Site(
            project=project,
            settings=settings,
            inventory=store.catalogue.inventory(),
            quarantined=store.catalogue.files("quarantined"),
            deidentified=store.catalogue.deidentified(),
            approvals=registry.statuses(datetime.now(UTC).date()),
            entries=Ledger.open(store.catalogue).entries(),
            map_png=map_png,
            books=books,
        )


def _sum_figures(
    prefix: str, label: str, chosen: list[Flow], categories: Iterable[str] = ()
) -> list[Figure]:
    """Subjects per category over ``chosen``, each figure citing the flows that carry it."""
    per: dict[str, int] = {c: 0 for c in categories}
    cited: dict[str, list[Source]] = defaultdict(list)
    for flow in chosen:
        for category, subjects in flow.subjects().items():
            per[category] = per.get(category, 0) + subjects
            cited[category].append(flow.source)
    return [Figure(f"{prefix}.{c}", f"{label}: {c}", per[c], tuple(cited[c])) for c in sorted(per)]


def _count(key: str, label: str, chosen: list[Flow]) -> Figure:
    return Figure(key, label, len(chosen), tuple(f.source for f in chosen))


def _flow_table(title: str, chosen: list[Flow], empty: str = "none") -> TableBlock:
    rows, sources = [], []
    for f in chosen:
        subjects = ", ".join(f"{c} {n}" for c, n in sorted(f.subjects().items())) or "-"
        rows.append(
            (
                f.date,
                f.what,
                f"{f.recipient} ({f.recipient_country})",
                subjects,
                f.purpose,
                str(f.objects),
                f.legal_basis if f.allowed else "denied",
                f"{f.entry.site}#{f.entry.seq}",
            )
        )
        sources.append((f.source,))
    return TableBlock(
        title,
        (
            "date",
            "what",
            "recipient",
            "categories and subjects",
            "purpose",
            "objects",
            "approval",
            "entry",
        ),
        tuple(rows),
        tuple(sources),
        empty,
    )


def _approvals_table(site: _Site) -> TableBlock:
    rows, sources = [], []
    for status in site.approvals:
        a = status.approval
        src = site.approval_entry(a.id)
        rows.append(
            (
                a.id,
                a.type,
                a.recipient,
                ", ".join(a.categories),
                ", ".join(a.purposes),
                "-" if a.max_subjects is None else str(a.max_subjects),
                f"{a.valid_from} to {status.valid_until or 'until revoked'}",
                status.status.replace("_", " "),
            )
        )
        sources.append(() if src is None else (src,))
    return TableBlock(
        "Approvals on file",
        ("id", "type", "recipient", "categories", "purposes", "max subjects", "valid", "state"),
        tuple(rows),
        tuple(sources),
    )


def _held_figures(site: _Site) -> list[Figure]:
    inv = site.inventory
    figs = [
        Figure("held.clips", "Clips held", inv["clips"], (site.catalogue("clips of the site"),)),
        Figure(
            "held.vehicles",
            "Vehicles (data subjects)",
            inv["vehicles"],
            (site.catalogue("distinct VINs"),),
        ),
        Figure(
            "held.bytes",
            "Bytes of clips held",
            inv["bytes"],
            (site.catalogue("sum of clip sizes"),),
        ),
    ]
    for category, clips in inv["labels"].items():
        figs.append(
            Figure(
                f"held.category.{category}",
                f"Clips carrying {category}",
                clips,
                (site.catalogue(f"labels {category}"),),
            )
        )
    return figs


def _retention_figures(site: _Site, label: str) -> list[Figure]:
    """The storage period of each kind of data the site keeps, as its settings declare it."""
    kept = site.settings.retention
    figs = []
    for kind, what, days in (
        ("raw", "raw clips", kept.raw_days),
        ("deidentified", "de-identified outputs", kept.deidentified_days),
    ):
        key = f"retention.{kind}_days"
        value = (
            f"{days} days from storage"
            if days is not None
            else f"not configured: set retention = {{ {kind}_days = N }} in {site.table} "
            f"of {CONFIG_NAME}"
        )
        figs.append(
            Figure(f"storage.period.{kind}", f"{label}: {what}", value, (site.setting(key),))
        )
    return figs


def _responsible_figure(site: _Site, label: str) -> Figure:
    """Who answers for the site's data security, as its settings declare it."""
    person = site.settings.responsible_person
    value = (
        str(person)
        if person is not None
        else 'not configured: set responsible_person = { name = "...", role = "...", '
        f'email = "..." }} in {site.table} of {CONFIG_NAME}'
    )
    return Figure("responsible_person", label, value, (site.setting("responsible_person"),))


def _deid_table(site: _Site) -> TableBlock:
    rows, sources = [], []
    by_profile: dict[str, list[DeidentifiedRecord]] = defaultdict(list)
    for record in site.deidentified:
        by_profile[record.profile].append(record)
    for name, records in sorted(by_profile.items()):
        try:
            steps = ", ".join(
                s.name
                for s in resolve_profile(name, site.project.settings.deidentify_profiles).ordered()
            )
        except OnshoreError:
            steps = "(profile no longer configured)"
        rows.append(
            (
                name,
                steps,
                str(len(records)),
                str(sum(r.rows_in for r in records)),
                str(sum(r.rows for r in records)),
            )
        )
        sources.append((site.catalogue(f"de-identified outputs of profile {name}"),))
    return TableBlock(
        "De-identification applied",
        ("profile", "transforms", "outputs", "rows in", "rows out"),
        tuple(rows),
        tuple(sources),
        "no de-identified outputs",
    )


_RIGHTS_KINDS: Final = (
    "erasure",
    "erasure_completed",
    "erasure_in",
    "consent_withdrawn",
    "access_request",
    "retention_run",
)


def _rights(site: _Site, entries: list[Entry]) -> tuple[list[Figure], TableBlock]:
    """Drivers' requests served and storage periods enforced, from the ledger: erasures (and
    those completed at every recipient), erasures of copies this site received, consent
    withdrawals, access requests and retention runs, each row citing its entry. Vehicles are
    named by their keyed hash, as the ledger names them."""
    chosen = [e for e in entries if e.kind in _RIGHTS_KINDS]

    def of(kind: str) -> list[Entry]:
        return [e for e in chosen if e.kind == kind]

    def cite(found: list[Entry]) -> tuple[Source, ...]:
        return tuple(Source(e.site, e.kind, e.seq, e.hash) for e in found)

    figures = [
        Figure(f"rights.{key}", label, len(of(kind)), cite(of(kind)))
        for key, label, kind in (
            ("erasures", "Erasure requests served (vehicles erased here)", "erasure"),
            ("erasures_completed", "Erasures confirmed by every recipient", "erasure_completed"),
            ("erasures_received", "Erasures of copies received from other sites", "erasure_in"),
            ("withdrawals", "Consent withdrawals", "consent_withdrawn"),
            ("access_requests", "Access requests answered", "access_request"),
            ("retention_runs", "Retention runs that deleted data", "retention_run"),
        )
    ]
    rows, sources = [], []
    for e in chosen:
        vehicle = str(e.data.get("vehicle", ""))[:12] or "-"
        detail = _rights_detail(e.kind, e.data)
        rows.append((e.time[:10], e.kind, vehicle, detail, f"{e.site}#{e.seq}"))
        sources.append(cite([e]))
    table = TableBlock(
        "Drivers' rights and storage periods",
        ("date", "what", "vehicle (keyed)", "detail", "entry"),
        tuple(rows),
        tuple(sources),
        "no request served and no retention run",
    )
    return figures, table


def _rights_detail(kind: str, d: dict[str, Any]) -> str:
    """One row of the rights table, in words."""
    match kind:
        case "erasure":
            recipients = ", ".join(d.get("recipients") or []) or "none"
            return (
                f"{d.get('clips')} clips, {len(d.get('erased') or [])} objects; "
                f"recipients: {recipients}"
            )
        case "erasure_completed":
            confirmed = ", ".join(d.get("recipients") or []) or "no recipient held a copy"
            return f"request {d.get('request')} confirmed by {confirmed}"
        case "erasure_in":
            return f"{len(d.get('erased') or [])} objects received from {d.get('from')}"
        case "consent_withdrawn":
            return f"purpose {d.get('purpose')}, {d.get('clips')} clips"
        case "access_request":
            return f"{d.get('files')} files, {d.get('transfers')} transfers"
        case _:
            return (
                f"as of {d.get('as_of')}: {d.get('clips')} raw clips, "
                f"{d.get('outputs')} de-identified outputs"
            )


def _charts(report: Report, site: _Site, chosen: list[Flow]) -> None:
    per: dict[str, int] = defaultdict(int)
    for flow in chosen:
        if flow.allowed:
            for c, n in flow.subjects().items():
                per[c] += n
    report.charts.append(bar_chart("Subjects sent abroad by category", dict(per)))
    updates = [f for f in chosen if f.what == "model_update"]
    if updates:
        report.charts.append(
            training_chart(
                "Model updates to the coordinator",
                [(int(f.entry.data.get("round", 0)), f.allowed) for f in updates],
            )
        )
    if site.map_png is not None:
        report.charts.append(_map_chart(site.map_png))


def _map_chart(png: bytes) -> Chart:
    return Chart(
        "Traces before and after de-identification",
        png,
        "Grey: every recorded position (before). Blue: positions the de-identification keeps "
        "(after; outputs themselves are clip-local and carry no coordinates). Red: sensitive "
        "areas on file, with the profile's buffer.",
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def cn_annual(site: _Site, year: int) -> Report:
    """China's annual automotive data security report (Order 7 Arts. 13-14) for ``year``."""
    s = site.settings
    report = Report(
        "cn-annual",
        s.id,
        f"Annual automotive data security report {year}",
        f"1 January to 31 December {year}; due to the provincial CAC by 15 December {year}",
        _now(),
    )
    in_year = [f for f in flows(s.id, site.entries) if f.date.startswith(f"{year}-")]
    abroad = [f for f in in_year if f.allowed and not site.domestic(f)]
    domestic = [f for f in in_year if f.allowed and site.domestic(f)]
    denied = [f for f in in_year if not f.allowed]
    report.figures += _held_figures(site)
    report.figures += [
        _responsible_figure(site, "Person responsible for data security"),
        Figure(
            "storage.location",
            "Where the data is stored",
            f"{s.location}: {redact_url(s.store)}",
            (site.setting("country" if s.country else "jurisdiction"), site.setting("store")),
        ),
        *_retention_figures(site, "Storage period"),
        Figure(
            "purposes",
            "Purposes of outbound processing",
            ", ".join(sorted({f.purpose for f in abroad})) or "none",
            tuple(f.source for f in abroad),
        ),
        _count("domestic.transfers", "Transfers to recipients in the country", domestic),
        _count("incidents.denied", "Transfers the gate denied", denied),
        Figure(
            "incidents.quarantined",
            "Files quarantined at ingest",
            len(site.quarantined),
            (site.catalogue("files with status quarantined"),),
        ),
        _count(
            "outbound.transfers",
            "Data transfers abroad",
            [f for f in abroad if f.what == "transfer"],
        ),
        _count(
            "outbound.model_updates",
            "Model updates sent abroad",
            [f for f in abroad if f.what == "model_update"],
        ),
        Figure(
            "outbound.objects",
            "Objects sent abroad",
            sum(f.objects for f in abroad),
            tuple(f.source for f in abroad),
        ),
    ]
    report.figures += _sum_figures("outbound.subjects", "Subjects sent abroad", abroad)
    report.tables += [
        _flow_table("Outbound transfers, with the approval that allowed each", abroad),
        _flow_table("Domestic sharing", domestic),
        _flow_table("Incidents: transfers and updates the gate denied", denied),
        _approvals_table(site),
        TableBlock(
            "Incidents: quarantined files",
            ("file", "error", "reason"),
            tuple((q.path, q.error_code or "-", (q.reason or "-")[:80]) for q in site.quarantined),
            tuple((site.catalogue(f"file {q.sha256[:12]}"),) for q in site.quarantined),
        ),
        _deid_table(site),
    ]
    rights, rights_table = _rights(site, [e for e in site.entries if e.time.startswith(f"{year}-")])
    report.figures += rights
    report.tables.append(rights_table)
    report.notes.append("Complaints received are not recorded by onshore; add them before filing.")
    report.notes += _declared_notes(site)
    _charts(report, site, in_year)
    return report


def outbound_dossier(site: _Site, recipient: str) -> Report:
    """The facts a CN security-assessment application for ``recipient`` needs."""
    s = site.settings
    wanted = " ".join(recipient.split()).casefold()
    mine = [
        f for f in flows(s.id, site.entries) if " ".join(f.recipient.split()).casefold() == wanted
    ]
    report = Report(
        "outbound-dossier",
        s.id,
        f"Outbound dossier: {recipient}",
        f"every decision on data from {s.id} to {recipient}",
        _now(),
    )
    sent = [f for f in mine if f.allowed]
    window: dict[str, int] = {}
    window_src: tuple[Source, ...] = ()
    if mine:
        last = mine[-1]
        window = {k: int(v) for k, v in last.decision.get("subjects_in_window", {}).items()}
        window_src = (last.source,)
    report.figures += [
        Figure("handler", "Data handler", s.entity, (site.setting("entity"),)),
        _responsible_figure(site, "Data handler's person responsible for data security"),
        Figure("recipient", "Recipient", recipient, tuple(f.source for f in mine)),
        Figure(
            "recipient.country",
            "Recipient's country",
            ", ".join(sorted({f.recipient_country for f in mine})) or "unknown",
            tuple(f.source for f in mine),
        ),
        Figure(
            "purposes",
            "Purposes",
            ", ".join(sorted({f.purpose for f in mine})) or "none",
            tuple(f.source for f in mine),
        ),
        _count("decisions", "Decisions on file for this recipient", mine),
        _count("sent", "Transfers and updates sent", sent),
        _count("denied", "Denied", [f for f in mine if not f.allowed]),
        Figure(
            "would_leave.outputs",
            "De-identified outputs that could leave",
            len(site.deidentified),
            (site.catalogue("de-identified outputs"),),
        ),
    ]
    report.figures += _sum_figures("sent.subjects", "Subjects sent", sent)
    report.figures += [
        Figure(f"window.{c}", f"Subjects counted in the window: {c}", n, window_src)
        for c, n in sorted(window.items())
    ]
    report.tables += [
        _flow_table(f"Decisions on data to {recipient}", mine),
        _deid_table(site),
        _approvals_table(site),
    ]
    report.notes += _declared_notes(site, retention=False)
    _charts(report, site, mine)
    return report


def eu_transfers(site: _Site) -> Report:
    """The record of transfers to third countries under GDPR Chapter V."""
    s = site.settings
    eea = site.territory("EU")
    out = [f for f in flows(s.id, site.entries) if f.destination not in eea]
    report = Report(
        "eu-transfers",
        s.id,
        "Record of transfers under GDPR Chapter V",
        "every transfer and model update from the site to a third country",
        _now(),
    )
    sent = [f for f in out if f.allowed]
    report.figures += [
        Figure("controller", "Controller (Art. 30(1)(a))", s.entity, (site.setting("entity"),)),
        _responsible_figure(site, "Controller's contact for data protection (Art. 30(1)(a))"),
        *_retention_figures(site, "Time limit for erasure (Art. 30(1)(f))"),
        _count("transfers", "Transfers to third countries", sent),
        _count("denied", "Transfers denied", [f for f in out if not f.allowed]),
        Figure(
            "destinations",
            "Destination countries",
            ", ".join(sorted({f.destination for f in sent})) or "none",
            tuple(f.source for f in sent),
        ),
    ]
    for basis in sorted({f.legal_basis for f in sent}):
        report.figures.append(
            _count(
                f"basis.{basis.split(' ')[0]}",
                f"Transfers under {basis}",
                [f for f in sent if f.legal_basis == basis],
            )
        )
    report.figures += _sum_figures("subjects", "Data subjects transferred", sent)
    report.tables += [
        _flow_table("Transfers (Art. 46 safeguard or adequacy)", out),
        _approvals_table(site),
    ]
    rights, rights_table = _rights(site, site.entries)
    report.figures += rights
    report.tables.append(rights_table)
    report.notes += _declared_notes(site)
    _charts(report, site, out)
    return report


def us_bulk_data(site: _Site, on: date | None = None) -> Report:
    """The record of transfers under 28 CFR Part 202: per counterparty, subjects over the
    trailing 12 months, and whether the counterparty is a country of concern or linked to one."""
    s = site.settings
    on = on or datetime.now(UTC).date()
    start = (on - timedelta(days=365)).isoformat()
    out = [f for f in flows(s.id, site.entries) if not site.domestic(f)]
    report = Report(
        "us-bulk-data",
        s.id,
        "Record of transactions under 28 CFR Part 202",
        f"trailing 12 months: {start} to {on.isoformat()}",
        _now(),
    )
    recent = [f for f in out if start <= f.date <= on.isoformat()]
    sent = [f for f in recent if f.allowed]
    report.figures += [
        _responsible_figure(site, "Person responsible for the data compliance programme"),
        _count("transactions", "Transactions in the window", sent),
        _count("denied", "Transactions denied", [f for f in recent if not f.allowed]),
        _count(
            "concern",
            "Transactions with a country of concern or linked party",
            [f for f in sent if site.of_concern(f)],
        ),
    ]
    by_party: dict[str, list[Flow]] = defaultdict(list)
    for f in sent:
        by_party[f.recipient].append(f)
    rows, sources = [], []
    for party, chosen in sorted(by_party.items()):
        figs = _sum_figures(f"counterparty.{party}", f"{party}", chosen)
        report.figures += figs
        rows.append(
            (
                party,
                ", ".join(sorted({f.recipient_country for f in chosen})),
                "yes" if any(site.of_concern(f) for f in chosen) else "no",
                ", ".join(f"{fig.label.split(': ')[-1]} {fig.value}" for fig in figs),
            )
        )
        sources.append(tuple(f.source for f in chosen))
    report.tables += [
        TableBlock(
            "Counterparties (trailing 12 months)",
            ("counterparty", "country", "country of concern", "subjects by category"),
            tuple(rows),
            tuple(sources),
        ),
        _flow_table("Transactions", recent),
    ]
    rights, rights_table = _rights(site, site.entries)
    report.figures += rights
    report.tables.append(rights_table)
    report.notes.append("De-identification does not exempt data from Part 202 (28 CFR 202.206).")
    report.notes += _declared_notes(site, retention=False)
    _charts(report, site, recent)
    return report


def _declared_notes(site: _Site, *, retention: bool = True) -> list[str]:
    """What a reader must know of the facts the site declares (the responsible person and, with
    ``retention``, the storage periods): which are missing, and how the periods are enforced."""
    s = site.settings
    periods = (s.retention.raw_days, s.retention.deidentified_days)
    missing = []
    if s.responsible_person is None:
        missing.append("responsible_person")
    if retention and None in periods:
        missing.append("retention")
    notes = []
    if missing:
        notes.append(
            f"Not configured for this site: {', '.join(missing)}. Set them in {site.table} of "
            f"{site.project.config_path} and build the report again."
        )
    if retention and periods != (None, None):
        runs = [e for e in site.entries if e.kind == "retention_run"]
        enforced = (
            f"the last retention run that deleted data was on {runs[-1].time[:10]} "
            f"({len(runs)} in all)"
            if runs
            else "no retention run has deleted data yet"
        )
        notes.append(
            f"Storage periods are those declared in {CONFIG_NAME}, enforced by 'onshore "
            f"retention run' (schedule it daily); {enforced}."
        )
    return notes


def build_report(
    project: Project,
    kind: str,
    site_id: str,
    *,
    year: int | None = None,
    recipient: str | None = None,
    with_map: bool = True,
) -> Report:
    """Build the report ``kind`` (one of :data:`REPORT_KINDS`) for ``site_id``. Raises
    ConfigError for an unknown kind or site, or a missing ``year`` / ``recipient``."""
    builders: dict[str, Callable[[_Site], Report]] = {
        "eu-transfers": eu_transfers,
        "us-bulk-data": us_bulk_data,
    }
    if kind == "cn-annual":
        if year is None:
            raise ConfigError("cn-annual needs --year")
        chosen_year = year
        builders[kind] = lambda site: cn_annual(site, chosen_year)
    elif kind == "outbound-dossier":
        if not recipient:
            raise ConfigError("outbound-dossier needs --recipient")
        chosen = recipient
        builders[kind] = lambda site: outbound_dossier(site, chosen)
    if kind not in builders:
        raise ConfigError(f"unknown report {kind!r}", hint=f"one of {', '.join(REPORT_KINDS)}")
    return builders[kind](_gather(project, site_id, with_map=with_map))
