"""What each console page shows, gathered from the project for one user.

Every function takes the project and the signed-in user and returns plain data for a template;
none writes anything but the ``remote_read`` entries :func:`~onshore.console.access.read_rows`
makes. What a role may not see is left out here, not hidden in the page.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Final

import orjson

from onshore.console.access import Forbidden, RowAccess, read_rows, sees_site
from onshore.console.auth import Role, User
from onshore.console.charts import line_chart
from onshore.errors import OnshoreError
from onshore.gate import WARN_DAYS, ApprovalRegistry
from onshore.ledger import Ledger, verify_site
from onshore.model.local import RUNS_DIR
from onshore.release.bundle import read_bundle
from onshore.release.licence import list_licences
from onshore.release.records import RELEASES_DIR, coordinator_ledger, verify_coordinator
from onshore.reports.build import flows
from onshore.rulebook.evaluate import DataItem
from onshore.rulebook.loader import project_rulebooks
from onshore.settings import Project
from onshore.store.site import SiteStore

__all__ = [
    "PAGE_ROWS",
    "REPORTS_DIR",
    "approvals",
    "decisions",
    "ledgers",
    "overview",
    "releases",
    "report_file",
    "reports",
    "run_detail",
    "runs",
    "site_detail",
    "verify_ledger",
]

PAGE_ROWS: Final = 100
"""Rows per page of a site's inventory and of the decisions."""

REPORTS_DIR: Final = "reports"
"""Where ``onshore demo`` and ``onshore report --out reports/<site>`` put a site's reports."""

_ROW_CATEGORIES: Final = ("vehicle_id", "trajectory", "sensitive_area_geodata")
"""What a row of the clip inventory holds: the VIN, positions and times (the bounding box), and
positions inside a sensitive area where classification found them."""


def visible_sites(project: Project, user: User) -> list[str]:
    return [s for s in project.settings.sites if sees_site(user, s)]


def _check_site(project: Project, user: User, site_id: str) -> None:
    project.site(site_id)  # an unknown site is a ConfigError naming the known ones
    if not sees_site(user, site_id):
        raise Forbidden(f"{user.name} operates {user.site}, not {site_id}")


def _approval_summary(statuses: list[dict[str, Any]]) -> dict[str, int]:
    return dict(Counter(s["status"] for s in statuses))


def _site_summary(project: Project, store: SiteStore, today: date) -> dict[str, Any]:
    site = project.site(store.site)
    inventory = store.catalogue.inventory()
    registry = ApprovalRegistry(store.catalogue, project_rulebooks(project))
    statuses = [s.as_dict() for s in registry.statuses(today)]
    head = Ledger.open(store.catalogue).head()
    return {
        "id": site.id,
        "jurisdiction": site.jurisdiction,
        "entity": site.entity,
        "country": site.location,
        "inventory": inventory,
        "approvals": _approval_summary(statuses),
        "ledger": {"entries": 0 if head is None else head.seq + 1, "head": head},
    }


def overview(project: Project, user: User, *, today: date | None = None) -> dict[str, Any]:
    """The sites the user sees, with their inventory, labels, approvals and ledger heads; the
    coordinator's runs, releases and licences in numbers."""
    today = today or datetime.now(UTC).date()
    sites = []
    for site_id in visible_sites(project, user):
        with SiteStore.open(project, site_id) as store:
            sites.append(_site_summary(project, store, today))
    return {
        "sites": sites,
        "runs": len(runs(project, user)),
        "releases": len(_release_rows(project, user)),
        "coordinator": project.settings.coordinator,
    }


def site_detail(
    project: Project, user: User, site_id: str, *, page: int = 1, today: date | None = None
) -> dict[str, Any]:
    """One site: its aggregates for every role that sees it, and one page of its clips (the
    rows) where the user's role or the site's gate allows."""
    _check_site(project, user, site_id)
    today = today or datetime.now(UTC).date()
    with SiteStore.open(project, site_id) as store:
        summary = _site_summary(project, store, today)
        clips = store.catalogue.clips()
        labels: dict[str, set[str]] = {}
        for label in store.catalogue.labels():
            labels.setdefault(label.clip_id, set()).add(label.category)
    pages = max(1, -(-len(clips) // PAGE_ROWS))
    page = min(max(1, page), pages)
    shown = clips[(page - 1) * PAGE_ROWS : page * PAGE_ROWS]
    vehicles = len({c.vin for c in shown})
    found = set().union(*(labels.get(c.clip_id, set()) for c in shown)) if shown else set()
    items = [
        DataItem(category=category, subjects=vehicles)
        for category in _ROW_CATEGORIES
        if category in found or category in ("vehicle_id", "trajectory")
    ]
    access = read_rows(project, user, site_id, "inventory", items, rows=len(shown), day=today)
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
    return {
        **summary,
        "page": page,
        "pages": pages,
        "clips": len(clips),
        "access": access,
        "rows": rows if access.allowed else [],
    }


def approvals(project: Project, user: User, *, today: date | None = None) -> dict[str, Any]:
    """Every approval on file at the sites the user sees, the ones coming due first."""
    today = today or datetime.now(UTC).date()
    rows = []
    rulebooks = project_rulebooks(project)
    for site_id in visible_sites(project, user):
        with SiteStore.open(project, site_id) as store:
            for status in ApprovalRegistry(store.catalogue, rulebooks).statuses(today):
                row = {"site": site_id, **status.as_dict()}
                due = status.renew_by or status.valid_until
                row["days_left"] = None if due is None else (due - today).days
                row["due"] = due
                rows.append(row)
    rows.sort(key=lambda r: (r["days_left"] is None, r["days_left"] or 0, r["site"], r["id"]))
    return {"approvals": rows, "warn_days": WARN_DAYS, "today": today}


def decisions(
    project: Project,
    user: User,
    *,
    site: str | None = None,
    outcome: str | None = None,
    what: str | None = None,
    text: str | None = None,
    page: int = 1,
    today: date | None = None,
) -> dict[str, Any]:
    """The gates' decisions on everything that left or asked to leave the sites the user sees
    (transfers, model updates, remote reads), newest first, filtered. Another jurisdiction's
    decisions are rows of that site: for a coordinator engineer they go through its gate (as
    aggregate metrics: counts and reasons, no person's data)."""
    sites = [site] if site else visible_sites(project, user)
    found: list[dict[str, Any]] = []
    withheld: list[dict[str, Any]] = []
    for site_id in sites:
        _check_site(project, user, site_id)
        with SiteStore.open(project, site_id) as store:
            entries = Ledger.open(store.catalogue).entries()
        site_flows = flows(site_id, entries)
        access = read_rows(
            project,
            user,
            site_id,
            "decisions",
            [DataItem(category="aggregate_metrics", subjects=0, deid_state="anonymized")],
            rows=len(site_flows),
            day=today,
        )
        if not access.allowed:
            withheld.append({"site": site_id, "access": access})
            continue
        for flow in site_flows:
            decision = flow.decision
            row = {
                "site": site_id,
                "seq": flow.entry.seq,
                "time": flow.entry.time,
                "what": flow.what,
                "allowed": flow.allowed,
                "destination": flow.destination,
                "recipient": flow.recipient,
                "purpose": flow.purpose,
                "categories": sorted({str(i.get("category")) for i in flow.items}),
                "subjects": sum(int(i.get("subjects", 0)) for i in flow.items),
                "reasons": list(decision.get("reasons", ()))
                or [str(flow.entry.data["reason"])] * ("reason" in flow.entry.data),
                "gated": bool(decision),
                "rules": [r.get("id", "") for r in decision.get("rules", ())],
                "approval": (decision.get("approval") or {}).get("id"),
            }
            if _matches(row, outcome, what, text):
                found.append(row)
    found.sort(key=lambda r: (r["time"], r["site"], r["seq"]), reverse=True)
    kinds = sorted({r["what"] for r in found} | {"transfer", "model_update", "remote_read"})
    pages = max(1, -(-len(found) // PAGE_ROWS))
    page = min(max(1, page), pages)
    return {
        "decisions": found[(page - 1) * PAGE_ROWS : page * PAGE_ROWS],
        "total": len(found),
        "page": page,
        "pages": pages,
        "withheld": withheld,
        "filters": {"site": site, "outcome": outcome, "what": what, "text": text},
        "kinds": kinds,
    }


def _matches(row: dict[str, Any], outcome: str | None, what: str | None, text: str | None) -> bool:
    if outcome == "allowed" and not row["allowed"]:
        return False
    if outcome == "denied" and row["allowed"]:
        return False
    if what and row["what"] != what:
        return False
    if text:
        haystack = " ".join(
            [row["recipient"], row["purpose"], row["destination"], *row["categories"]]
            + row["reasons"]
            + row["rules"]
        ).lower()
        return text.lower() in haystack
    return True


def ledgers(project: Project, user: User) -> dict[str, Any]:
    """Each visible ledger's length, head and pinned key (the coordinator's for the roles that
    see it); verifying is on demand (:func:`verify_ledger`)."""
    rows = []
    for site_id in visible_sites(project, user):
        with SiteStore.open(project, site_id) as store:
            ledger = Ledger.open(store.catalogue)
            rows.append(_ledger_row(site_id, ledger))
    if user.role is not Role.SITE_OPERATOR:
        try:
            with coordinator_ledger(project) as ledger:
                rows.append(_ledger_row(project.settings.coordinator.id, ledger))
        except OnshoreError:
            pass  # no federated run yet: the coordinator has no ledger
    return {"ledgers": rows}


def _ledger_row(name: str, ledger: Ledger) -> dict[str, Any]:
    head = ledger.head()
    last = None if head is None else ledger.entry(head.seq)
    return {
        "name": name,
        "entries": 0 if head is None else head.seq + 1,
        "head": None if head is None else head.hash,
        "last_kind": None if last is None else last.kind,
        "last_time": None if last is None else last.time,
        "key": ledger.pinned_fingerprint(),
    }


def verify_ledger(project: Project, user: User, name: str) -> dict[str, Any]:
    """Verify one ledger now: a site's against its keystore, store and peers; the
    coordinator's chain and signatures against its pinned key."""
    if name == project.settings.coordinator.id:
        if user.role is Role.SITE_OPERATOR:
            raise Forbidden(f"{user.name} operates {user.site}, not the coordinator")
        return verify_coordinator(project).as_dict()
    _check_site(project, user, name)
    return verify_site(project, name).as_dict()


def _read_json(path: Path) -> Any:
    try:
        return orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None


def runs(project: Project, user: User) -> list[dict[str, Any]]:
    """Training runs under ``runs/``, newest first: federated and local, with the per-region
    figures of the regions the user sees."""
    folder = project.root / RUNS_DIR
    found = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        row = _run_row(path, user)
        if row is not None:
            found.append(row)
    found.sort(key=lambda r: str(r["finished_at"] or "~"), reverse=True)
    return found


def _run_row(path: Path, user: User) -> dict[str, Any] | None:
    """A run folder's summary (a federated run still going has only its rounds), with the
    regions the user sees; None for a folder that holds no run."""
    summary = _read_json(path / "federated.json") or _read_json(path / "run.json")
    rounds = _read_json(path / "rounds.json")
    if summary is None and rounds is None:
        return None
    summary = summary or {"run": path.name, "mode": "federated", "regions": {}}
    model = summary.get("model")
    return {
        "run": summary.get("run", path.name),
        "mode": summary.get("mode", "?"),
        "rounds": summary.get("rounds"),
        "strategy": summary.get("strategy"),
        "finished_at": summary.get("finished_at"),
        "model": model.get("name") if isinstance(model, dict) else model,
        "regions": {
            site: r for site, r in (summary.get("regions") or {}).items() if sees_site(user, site)
        },
        "summary": summary,
        "rounds_log": rounds or [],
    }


def run_detail(project: Project, user: User, run: str) -> dict[str, Any]:
    """One run: per-region figures, and for a federated run the per-round curves of each
    visible region (ADE against the constant-velocity baseline, privacy spent) and what each
    round accepted and refused."""
    folder = project.root / RUNS_DIR
    found = _run_row(folder / run, user) if run not in ("", ".", "..") and "/" not in run else None
    if found is None:
        raise LookupError(f"no training run {run!r} under {folder}")
    summary, rounds = found["summary"], found["rounds_log"]
    ade: dict[str, list[tuple[float, float]]] = {}
    baseline: dict[str, list[tuple[float, float]]] = {}
    epsilon: dict[str, list[tuple[float, float]]] = {}
    phases = []
    for record in rounds:
        accepted = [a for a in record.get("accepted", ()) if sees_site(user, a.get("site", ""))]
        refused = [r for r in record.get("refused", ()) if sees_site(user, r.get("site") or "")]
        phases.append(
            {
                "round": record["round"],
                "kind": record["kind"],
                "accepted": [a["site"] for a in accepted],
                "refused": [
                    (
                        r.get("site") or f"node {r.get('node')}",
                        r["reason"] + (f" ({r['detail']})" if r.get("detail") else ""),
                    )
                    for r in refused
                ],
            }
        )
        if record["kind"] != "evaluate":
            continue
        for a in accepted:
            metrics = a.get("metrics") or {}
            x = float(record["round"])
            if "ade" in metrics:
                ade.setdefault(a["site"], []).append((x, metrics["ade"]))
            if "cv-ade" in metrics:
                baseline.setdefault(a["site"], []).append((x, metrics["cv-ade"]))
            if metrics.get("epsilon-run") is not None:
                epsilon.setdefault(a["site"], []).append((x, metrics["epsilon-run"]))
    charts = []
    if ade:
        dashed = {f"{s} constant velocity": pts for s, pts in baseline.items()}
        charts.append(
            line_chart(
                "ADE per round on each region's test split (m)",
                ade,
                dashed=dashed,
                x_label="round",
                y_label="ADE (m)",
            )
        )
    if epsilon:
        charts.append(
            line_chart("Privacy spent in this run (epsilon)", epsilon, x_label="round", y_label="ε")
        )
    bytes_crossed = {
        site: n for site, n in (summary.get("bytes_crossed") or {}).items() if sees_site(user, site)
    }
    return {
        **found,
        "charts": charts,
        "phases": phases,
        "epsilon": {s: e for s, e in (summary.get("epsilon") or {}).items() if sees_site(user, s)},
        "bytes_crossed": bytes_crossed,
        "model_bytes": summary.get("model_bytes"),
        "refusals": summary.get("refusals"),
    }


def releases(project: Project, user: User) -> dict[str, Any]:
    """Every release bundle with its card's essentials (a site operator sees the releases their
    site's data trained), and the licences granted for them."""
    rows = _release_rows(project, user)
    versions = {r["version"] for r in rows}
    try:
        licences = [
            {**dict.fromkeys(_LICENCE_FIELDS), **lic}
            for lic in list_licences(project)
            if lic.get("release") in versions
        ]
    except OnshoreError:
        licences = []
    return {"releases": rows, "licences": licences}


def _release_rows(project: Project, user: User) -> list[dict[str, Any]]:
    folder = project.root / RELEASES_DIR
    rows: list[dict[str, Any]] = []
    for path in sorted(folder.glob("*/*.onshore")) if folder.is_dir() else []:
        try:
            card = read_bundle(path).card
        except OnshoreError as exc:
            rows.append({"version": path.parent.name, "path": str(path), "error": exc.message})
            continue
        sites = [s["id"] for s in card.get("sites", ())]
        if user.role is Role.SITE_OPERATOR and user.site not in sites:
            continue
        rows.append(
            {
                "version": card.get("version"),
                "path": str(path),
                "run": card.get("run"),
                "created": card.get("created"),
                "sites": sites,
                "architecture": (card.get("architecture") or {}).get("name"),
                "regions": {
                    s: r for s, r in (card.get("regions") or {}).items() if sees_site(user, s)
                },
                "parties": card.get("parties", []),
            }
        )
    return rows


_LICENCE_FIELDS: Final = (
    "id",
    "release",
    "licensee",
    "territories",
    "purposes",
    "model_years",
    "issued",
    "expires",
    "reason",
)
"""What the licence table shows; a file that is not a valid licence has only some of them."""


def reports(project: Project, user: User) -> list[dict[str, Any]]:
    """The reports written under ``reports/<site>/`` for the sites the user sees."""
    found = []
    for site_id in visible_sites(project, user):
        folder = project.root / REPORTS_DIR / site_id
        for path in sorted(folder.glob("*.html")) if folder.is_dir() else []:
            pdf = path.with_suffix(".pdf")
            found.append(
                {
                    "site": site_id,
                    "kind": path.stem,
                    "html": path.name,
                    "pdf": pdf.name if pdf.exists() else None,
                    "written": datetime.fromtimestamp(path.stat().st_mtime, UTC),
                }
            )
    return found


def report_file(
    project: Project, user: User, site_id: str, name: str, *, today: date | None = None
) -> tuple[Path | None, RowAccess]:
    """A report file of a site, if the user may open it. A report holds the site's map of
    traces and its figures: for a coordinator engineer abroad, opening it is a read through
    the site's gate."""
    _check_site(project, user, site_id)
    folder = (project.root / REPORTS_DIR / site_id).resolve()
    path = (folder / name).resolve()
    if path.parent != folder or path.suffix not in (".html", ".pdf") or not path.is_file():
        raise LookupError(f"no report {name!r} for site {site_id}")
    with SiteStore.open(project, site_id) as store:
        vehicles = int(store.catalogue.inventory()["vehicles"])
    items = [
        DataItem(category="trajectory", subjects=vehicles),
        DataItem(category="aggregate_metrics", subjects=0, deid_state="anonymized"),
    ]
    access = read_rows(project, user, site_id, f"report {name}", items, rows=1, day=today)
    return (path if access.allowed else None), access
