"""What each console page shows, gathered for one user.

Every function takes the project (the folder the console runs in) and the signed-in user and
returns plain data for a template. What it shows of a site comes from the site
(:func:`~onshore.console.access.read_site`): this folder's own site directly, another party's
through its service and its gate, each read from abroad a ``remote_read`` entry in that site's
ledger. The coordinator's runs, releases and licences are in its own folder. What a role may
not see is left out here, not hidden in the page.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any, Final

from onshore.console.access import (
    Forbidden,
    HttpFor,
    RowAccess,
    SiteRead,
    all_sites,
    read_site,
    sees_site,
)
from onshore.console.auth import Role, User
from onshore.console.charts import SvgChart, line_chart, series_colour
from onshore.errors import ConfigError, FileSystemError, OnshoreError
from onshore.forecast.runs import OPTIONS, RUNS_DIR, RunFolder
from onshore.gate import WARN_DAYS
from onshore.parties.identity import coordinator_of
from onshore.reads import PAGE_ROWS, REPORTS_DIR, is_local
from onshore.settings import Project

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
    "visible_sites",
]

_LOCAL: Final[HttpFor] = lambda _site: None  # noqa: E731

# The coordinator's runs, releases and licences are imported where a page needs them: they
# import the model (PyTorch, Opacus), which signing in and ``onshore console users`` do not.


def visible_sites(project: Project, user: User) -> list[str]:
    return [s for s in all_sites(project) if sees_site(user, s)]


def _check_site(project: Project, user: User, site_id: str) -> None:
    if site_id not in all_sites(project):
        raise LookupError(f"no site {site_id!r} here; sites: {', '.join(all_sites(project))}")
    if not sees_site(user, site_id):
        raise Forbidden(f"{user.name} operates {user.site}, not {site_id}")


def _summary(
    project: Project, user: User, site_id: str, http_for: HttpFor, today: date | None
) -> dict[str, Any]:
    """A site's aggregates, or why they could not be had (withheld, unreachable)."""
    try:
        found = read_site(project, user, site_id, "summary", http_for=http_for, day=today)
    except OnshoreError as exc:
        return {"id": site_id, "error": exc.message}
    if found.data is None:
        return {"id": site_id, "error": "withheld by the site's gate", "access": found.access}
    return {**found.data, "error": None, "access": found.access}


def overview(
    project: Project, user: User, *, today: date | None = None, http_for: HttpFor = _LOCAL
) -> dict[str, Any]:
    """The sites the user sees, with their inventory, labels, approvals and ledger heads (each
    asked of the site); the runs, releases and licences of this folder in numbers."""
    sites = [_summary(project, user, s, http_for, today) for s in visible_sites(project, user)]
    coordinator = coordinator_of(project)
    return {
        "sites": sites,
        "runs": len(runs(project, user)),
        "releases": len(_release_rows(project, user)),
        "coordinator": {"entity": coordinator.entity, "country": coordinator.country},
        "party": project.party.id if project.party is not None else None,
    }


def site_detail(
    project: Project,
    user: User,
    site_id: str,
    *,
    page: int = 1,
    filters: Mapping[str, str] | None = None,
    today: date | None = None,
    http_for: HttpFor = _LOCAL,
) -> dict[str, Any]:
    """One site: its aggregates for every role that sees it, and one page of its clips (the
    rows), filtered and sorted by the site (:class:`~onshore.reads.views.ClipQuery`), where the
    user's role or the site's gate allows."""
    _check_site(project, user, site_id)
    summary = _summary(project, user, site_id, http_for, today)
    params = {**(filters or {}), "page": page}
    found = read_site(project, user, site_id, "clips", params, http_for=http_for, day=today)
    data = found.data or {}
    return {
        **summary,
        "page": data.get("page", page),
        "pages": data.get("pages", 1),
        "clips": data.get("clips"),
        "filters": dict(filters or {}),
        "sorts": data.get("sorts", []),
        "access": found.access,
        "rows": data.get("rows", []) if found.access.allowed else [],
    }


def approvals(
    project: Project, user: User, *, today: date | None = None, http_for: HttpFor = _LOCAL
) -> dict[str, Any]:
    """Every approval on file at the sites the user sees, the ones coming due first, and the
    sites that could not say (their service did not answer, or refused)."""
    today = today or datetime.now(UTC).date()
    rows: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for site_id in visible_sites(project, user):
        try:
            found = read_site(project, user, site_id, "approvals", http_for=http_for, day=today)
        except OnshoreError as exc:
            failed.append({"site": site_id, "access": RowAccess.failed(exc)})
            continue
        rows.extend((found.data or {}).get("approvals", []))
    rows.sort(key=lambda r: (r["days_left"] is None, r["days_left"] or 0, r["site"], r["id"]))
    return {"approvals": rows, "warn_days": WARN_DAYS, "today": today, "failed": failed}


def rights(
    project: Project, user: User, *, today: date | None = None, http_for: HttpFor = _LOCAL
) -> dict[str, Any]:
    """Drivers' requests (erasures, withdrawals, access requests) and retention runs at the
    sites the user sees, newest first, with counts per site; each site answers through its gate
    (dates and counts, no vehicle)."""
    today = today or datetime.now(UTC).date()
    answers, failed = _read_sites(
        project, user, visible_sites(project, user), "rights", http_for=http_for, today=today
    )
    rows = [row for data in answers.values() for row in data.get("rights", [])]
    counts = {site_id: dict(data.get("counts", {})) for site_id, data in answers.items()}
    rows.sort(key=lambda r: str(r["time"]), reverse=True)
    return {"rights": rows, "counts": counts, "failed": failed}


def _read_sites(
    project: Project,
    user: User,
    sites: list[str],
    view: str,
    *,
    http_for: HttpFor,
    today: date | None,
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """``view`` of each of ``sites`` as its gate lets the user read it: the data of those that
    answered, and for the others why not (a refusal, a withholding, no answer)."""
    answers: dict[str, dict[str, Any]] = {}
    failed: list[dict[str, Any]] = []
    for site_id in sites:
        _check_site(project, user, site_id)
        try:
            read = read_site(project, user, site_id, view, http_for=http_for, day=today)
        except OnshoreError as exc:
            failed.append({"site": site_id, "access": RowAccess.failed(exc)})
            continue
        if not read.access.allowed or read.data is None:
            failed.append({"site": site_id, "access": read.access})
            continue
        answers[site_id] = read.data
    return answers, failed


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
    http_for: HttpFor = _LOCAL,
) -> dict[str, Any]:
    """The gates' decisions on everything that left or asked to leave the sites the user sees
    (transfers, model updates, remote reads), newest first, filtered, and the transfers each
    received. Each site answers with its own, through its gate (as aggregate metrics: counts
    and reasons, no person's data)."""
    sites = [site] if site else visible_sites(project, user)
    answers, withheld = _read_sites(
        project, user, sites, "decisions", http_for=http_for, today=today
    )
    found = [
        row
        for data in answers.values()
        for row in data.get("decisions", [])
        if _matches(row, outcome, what, text)
    ]
    found.sort(key=lambda r: (r["time"], r["site"], r["seq"]), reverse=True)
    inbound = sorted(
        (row for data in answers.values() for row in data.get("inbound", [])),
        key=lambda r: (r["time"], r["site"], r["seq"]),
        reverse=True,
    )
    kinds = sorted({r["what"] for r in found} | {"transfer", "model_update", "remote_read"})
    pages = max(1, -(-len(found) // PAGE_ROWS))
    page = min(max(1, page), pages)
    return {
        "decisions": found[(page - 1) * PAGE_ROWS : page * PAGE_ROWS],
        "inbound": inbound,
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


def ledgers(project: Project, user: User, *, http_for: HttpFor = _LOCAL) -> dict[str, Any]:
    """Each visible ledger's length, head and pinned key, as each site states it (the
    coordinator's own for the roles that see it, when the console runs in its folder or a lab
    project); verifying is on demand (:func:`verify_ledger`)."""
    rows = []
    for site_id in visible_sites(project, user):
        summary = _summary(project, user, site_id, http_for, None)
        empty = dict.fromkeys(("entries", "head", "last_kind", "last_time", "key"))
        rows.append(
            summary.get("ledger") or {**empty, "name": site_id, "error": summary.get("error")}
        )
    if user.role is not Role.SITE_OPERATOR and (project.party is None or project.is_coordinator):
        from onshore.release.records import coordinator_ledger

        try:
            with coordinator_ledger(project) as ledger:
                rows.append(_ledger_row(project.settings.coordinator.id, ledger))
        except OnshoreError:
            pass  # no federated run yet: the coordinator has no ledger
    return {"ledgers": rows}


def _ledger_row(name: str, ledger: Any) -> dict[str, Any]:
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


def verify_ledger(
    project: Project, user: User, name: str, *, http_for: HttpFor = _LOCAL
) -> dict[str, Any]:
    """Verify one ledger now: the coordinator's chain and signatures against its pinned key (in
    its folder), this folder's own site fully; another party's site verifies itself when asked
    (its answer is the site's own report)."""
    if name == project.settings.coordinator.id and (
        project.party is None or project.is_coordinator
    ):
        if user.role is Role.SITE_OPERATOR:
            raise Forbidden(f"{user.name} operates {user.site}, not the coordinator")
        if project.party is not None:
            from onshore.gate.audit import verify_party

            return verify_party(project, check_hashes=False, http_for=http_for).as_dict()
        from onshore.release.records import verify_coordinator

        return verify_coordinator(project).as_dict()
    _check_site(project, user, name)
    if project.party is not None and is_local(project, name):
        from onshore.gate.audit import verify_party

        return verify_party(project, http_for=http_for).as_dict()
    found = read_site(project, user, name, "verify", http_for=http_for)
    if found.data is None:
        raise Forbidden(f"{name}'s gate withholds its verification from this party")
    return found.data


_MIN_TEST_SAMPLES: Final = 500
"""A region's test split smaller than this makes its ADE swing with a handful of vehicles: no
comparison on it is worth trusting (the figure issue 15 asks of every region)."""
_DEGENERATE_CV_ADE: Final = 0.01
"""Metres: a constant-velocity ADE below this means the test vehicles barely move, so the
baseline is no yardstick and a model's ratio to it means nothing."""


def runs(project: Project, user: User) -> list[dict[str, Any]]:
    """Training runs under ``runs/``, newest first: federated and local, with the per-region
    figures of the regions the user sees, each region's colour, and the regions whose
    figures cannot be trusted (:func:`_untrusted`)."""
    found = []
    for folder in RunFolder.all(project):
        row = _run_row(folder, user)
        if row is not None:
            found.append(row)
    found.sort(key=lambda r: str(r["finished_at"] or "~"), reverse=True)
    return found


def _run_row(folder: RunFolder, user: User) -> dict[str, Any] | None:
    """A run folder's summary (a federated run still going has only its rounds), with the
    regions the user sees; None for a folder that holds no run, or files that are not JSON."""
    try:
        summary = folder.read("federated.json") or folder.read("run.json")
        rounds = folder.read("rounds.json")
        options = folder.read(OPTIONS)
    except (OSError, FileSystemError):
        return None
    if summary is None and rounds is None:
        return None
    summary = summary or {"run": folder.run, "mode": "federated", "regions": {}}
    model = summary.get("model")
    regions = {
        site: r for site, r in (summary.get("regions") or {}).items() if sees_site(user, site)
    }
    return {
        "run": summary.get("run", folder.run),
        "mode": summary.get("mode", "?"),
        "rounds": summary.get("rounds"),
        "strategy": summary.get("strategy"),
        "finished_at": summary.get("finished_at"),
        "model": model.get("name") if isinstance(model, dict) else model,
        "regions": regions,
        "colours": {site: series_colour(site) for site in regions},
        "untrusted": sorted(site for site, r in regions.items() if _untrusted(r)),
        "summary": summary,
        "options": summary.get("options") or options or {},
        "rounds_log": rounds or [],
    }


def run_detail(project: Project, user: User, run: str) -> dict[str, Any]:
    """One run, as an engineer judges it: its settings, each visible region's figures beside
    constant velocity, the fine-tuned model and the newest local run of the same model, with a
    warning on each region whose comparison cannot be trusted (:func:`_untrusted`); for a
    federated run the per-round curves (ADE, training loss, bytes crossed, privacy spent), each
    round's duration and bytes, what each phase accepted and refused, the global model's hash
    and its lineage in the ledgers."""
    try:
        found = _run_row(RunFolder.of(project, run), user)
    except ConfigError:
        found = None
    if found is None:
        raise LookupError(f"no training run {run!r} under {project.root / RUNS_DIR}")
    summary, rounds = found["summary"], found["rounds_log"]
    phases = []
    curves: dict[str, dict[str, list[tuple[float, float]]]] = {
        k: {} for k in ("ade", "cv", "epsilon", "loss", "bytes")
    }
    per_round: dict[int, dict[str, Any]] = {}
    for record in rounds:
        accepted = [a for a in record.get("accepted", ()) if sees_site(user, a.get("site", ""))]
        refused = [r for r in record.get("refused", ()) if sees_site(user, r.get("site") or "")]
        phases.append(
            {
                "round": record["round"],
                "kind": record["kind"],
                "seconds": record.get("seconds"),
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
        _add_round(per_round, record, accepted, user)
        x = float(record["round"])
        for a in accepted:
            metrics = a.get("metrics") or {}
            if record["kind"] == "train" and "train-loss" in metrics:
                curves["loss"].setdefault(a["site"], []).append((x, metrics["train-loss"]))
            if record["kind"] != "evaluate":
                continue
            for key, curve in (("ade", "ade"), ("cv-ade", "cv"), ("epsilon-run", "epsilon")):
                if metrics.get(key) is not None:
                    curves[curve].setdefault(a["site"], []).append((x, metrics[key]))
    for n, row in per_round.items():
        for site, moved in row["sites"].items():
            curves["bytes"].setdefault(site, []).append((float(n), moved["down"] + moved["up"]))
    local = _local_beside(project, summary)
    regions = _region_rows(found, local, user)
    return {
        **found,
        "settings": _settings(summary, found["options"]),
        "privacy": _privacy_rows(found, user),
        "region_rows": regions,
        "warnings": [{"site": r["site"], "why": r["warnings"]} for r in regions if r["warnings"]],
        "local": local,
        "fine_tuned": bool(summary.get("fine_tuned")),
        "charts": _run_charts(curves),
        "phases": phases,
        "round_rows": [per_round[n] for n in sorted(per_round)],
        "round_sites": sorted({s for row in per_round.values() for s in row["sites"]}),
        "colours": {
            **found["colours"],
            **{s: series_colour(s) for row in per_round.values() for s in row["sites"]},
        },
        "epsilon": {s: e for s, e in (summary.get("epsilon") or {}).items() if sees_site(user, s)},
        "bytes_crossed": {
            s: n for s, n in (summary.get("bytes_crossed") or {}).items() if sees_site(user, s)
        },
        "model_bytes": summary.get("model_bytes"),
        "model_hash": _model_hash(summary),
        "refusals": summary.get("refusals"),
        "ledger": _run_entries(project, user, summary),
    }


def _add_round(
    per_round: dict[int, dict[str, Any]],
    record: dict[str, Any],
    accepted: list[dict[str, Any]],
    user: User,
) -> None:
    """Add one phase of ``rounds.json`` to its round's row: its duration (where the run
    recorded it), and for each visible site the bytes sent to it and received from it, and
    the training loss it reported."""
    row = per_round.setdefault(record["round"], {"round": record["round"], "seconds": None})
    sites = row.setdefault("sites", {})
    if isinstance(record.get("seconds"), int | float):
        row["seconds"] = (row["seconds"] or 0.0) + record["seconds"]
    for key, direction in (("sent", "down"), ("received", "up")):
        for site, size in (record.get(key) or {}).items():
            if sees_site(user, site):
                moved = sites.setdefault(site, {"down": 0, "up": 0, "loss": None})
                moved[direction] += int(size)
    if record["kind"] == "train":
        for a in accepted:
            loss = (a.get("metrics") or {}).get("train-loss")
            if loss is not None:
                sites.setdefault(a["site"], {"down": 0, "up": 0, "loss": None})["loss"] = loss


_RUN_CURVES: Final = (
    ("loss", "Training loss per round at each site", "loss"),
    ("bytes", "Bytes crossed per round, each way, per region", "bytes"),
    ("epsilon", "Privacy spent in this run (epsilon)", "ε"),
)
"""The run's curves after ADE: which, the chart's title and its y axis."""


def _run_charts(curves: dict[str, dict[str, list[tuple[float, float]]]]) -> list[SvgChart]:
    """The run's curves per round, each region in its own colour on every chart."""
    charts = []
    if curves["ade"]:
        dashed = {f"{s} constant velocity": pts for s, pts in curves["cv"].items()}
        charts.append(
            line_chart(
                "ADE per round on each region's test split (m)",
                curves["ade"],
                dashed=dashed,
                x_label="round",
                y_label="ADE (m)",
            )
        )
    for key, title, y_label in _RUN_CURVES:
        if curves[key]:
            charts.append(line_chart(title, curves[key], x_label="round", y_label=y_label))
    return charts


def _untrusted(region: dict[str, Any]) -> list[str]:
    """Why a region's figures cannot be judged against constant velocity: a test split under
    :data:`_MIN_TEST_SAMPLES`, a constant-velocity ADE under :data:`_DEGENERATE_CV_ADE`, or a
    test split of vehicles that all stand still; empty when none holds (or the region has no
    figures)."""
    if region.get("error") or region.get("ade") is None:
        return []
    why = []
    samples = region.get("samples")
    if isinstance(samples, int) and samples < _MIN_TEST_SAMPLES:
        why.append(f"test split of {samples} samples, fewer than {_MIN_TEST_SAMPLES}")
    cv = ((region.get("baselines") or {}).get("constant_velocity") or {}).get("ade")
    if isinstance(cv, int | float) and cv < _DEGENERATE_CV_ADE:
        why.append(f"constant velocity scores {cv:.3f} m: a degenerate baseline")
    stationary = ((region.get("groups") or {}).get("stationary") or {}).get("samples")
    if samples and stationary == samples:
        why.append("every test sample is a vehicle standing still")
    return why


def _region_rows(
    found: dict[str, Any], local: dict[str, Any] | None, user: User
) -> list[dict[str, Any]]:
    """Each visible region's figures for the run's table: the run's ADE, FDE, miss rate and
    test samples beside constant velocity, the fine-tuned model and the local run's ADE, the
    training loss and time (local runs), bytes crossed, and why its comparison cannot be
    trusted."""
    summary = found["summary"]
    fine = summary.get("fine_tuned") or {}
    crossed = summary.get("bytes_crossed") or {}
    rows = []
    for site, r in sorted(found["regions"].items()):
        if not sees_site(user, site):
            continue
        cv = ((r.get("baselines") or {}).get("constant_velocity") or {}).get("ade")
        beside = (local or {}).get("regions", {}).get(site) or {}
        error = r.get("error")
        rows.append(
            {
                "site": site,
                "colour": series_colour(site),
                "jurisdiction": r.get("jurisdiction"),
                "ade": r.get("ade"),
                "fde": r.get("fde"),
                "miss_rate": r.get("miss_rate"),
                "cv_ade": cv,
                "samples": r.get("samples"),
                "fine_tuned_ade": (fine.get(site) or {}).get("ade"),
                "local_ade": beside.get("ade"),
                "train_loss": r.get("train_loss"),
                "seconds": r.get("seconds"),
                "bytes": crossed.get(site),
                "weights_sha256": (r.get("weights") or {}).get("sha256"),
                "error": error.get("message") if isinstance(error, dict) else error,
                "warnings": _untrusted(r),
            }
        )
    return rows


def _local_beside(project: Project, summary: dict[str, Any]) -> dict[str, Any] | None:
    """For a federated run, the newest finished local run of the same model in this folder
    (preferring one on the same dataset settings), whose per-region ADE the page shows beside
    the federated one; None for a local run, or when there is none."""
    if summary.get("mode") == "local":
        return None
    dataset = (summary.get("options") or {}).get("dataset")
    found: list[tuple[bool, str, dict[str, Any]]] = []
    for _folder, run in RunFolder.each(project, "run.json"):
        if not isinstance(run, dict) or run.get("mode") != "local":
            continue
        if run.get("model") != summary.get("model"):
            continue
        same = (run.get("options") or {}).get("dataset") == dataset
        found.append((same, str(run.get("finished_at") or ""), run))
    if not found:
        return None
    same, _time, best = max(found, key=lambda f: (f[0], f[1]))
    return {"run": best.get("run"), "regions": best.get("regions") or {}, "same_dataset": same}


def _settings(summary: dict[str, Any], options: dict[str, Any]) -> list[dict[str, Any]]:
    """What the run was started with, as rows of the settings table (key, label, value)."""
    model = summary.get("model") or options.get("model") or {}
    local = summary.get("mode") == "local"
    rows: list[tuple[str, str, Any]] = []
    if local:
        rows += [
            ("strategy", "strategy", "none: each site trains alone"),
            ("steps", "steps at each site", options.get("steps")),
        ]
    else:
        strategy = options.get("strategy") or summary.get("strategy")
        extra = {"fedprox": "proximal_mu", "fedadam": "server_lr", "fedavgm": "server_momentum"}
        if strategy in extra and options.get(extra[strategy]) is not None:
            strategy = f"{strategy} ({extra[strategy]} {options[extra[strategy]]:g})"
        rows += [
            ("strategy", "strategy", strategy),
            ("rounds", "rounds", options.get("rounds") or summary.get("rounds")),
            ("local_steps", "local steps per round", options.get("local_steps")),
        ]
    rows += [
        ("lr", "learning rate", options.get("lr")),
        ("batch_size", "batch size", options.get("batch_size")),
        ("weight_decay", "weight decay", options.get("weight_decay")),
    ]
    if local:
        dp = options.get("dp")
        rows.append(("dp", "differential privacy", "DP-SGD" if dp else "off"))
    else:
        rows.append(
            ("dp", "differential privacy", "DP-SGD at each site" if options.get("dp") else "off")
        )
        steps = options.get("fine_tune_steps") or 0
        tuned = f"{steps} at each site" if steps else "none"
        if steps and options.get("fine_tune_lr"):
            tuned += f" (learning rate {options['fine_tune_lr']:g})"
        rows.append(("fine_tune_steps", "fine-tune steps", tuned))
    config = model.get("config") if isinstance(model, dict) else None
    name = model.get("name") if isinstance(model, dict) else model
    architecture = name or "?"
    if config:
        architecture += " " + ", ".join(f"{k}={v}" for k, v in sorted(config.items()))
    rows += [("model", "model architecture", architecture), ("seed", "seed", options.get("seed"))]
    return [{"key": k, "label": label, "value": v} for k, label, v in rows]


def _privacy_rows(found: dict[str, Any], user: User) -> list[dict[str, Any]]:
    """Each visible site's differential privacy in this run: DP-SGD's noise multiplier and
    clipping norm, delta, the site's whole budget (epsilon) and what this run spent. A
    deployed site states its budget and delta but trains under its own noise and clipping,
    which the coordinator does not hold: those are shown as unknown here."""
    summary, options = found["summary"], found["options"]
    local = summary.get("mode") == "local"
    dp = options.get("dp") if local else None
    if (local and not isinstance(dp, dict)) or not options.get("dp", summary.get("dp")):
        return []
    sites = sorted({*found["regions"], *(summary.get("epsilon") or {})} - {""})
    rows = []
    for site in sites:
        if not sees_site(user, site):
            continue
        if isinstance(dp, dict):
            stated: dict[str, Any] = {
                "noise_multiplier": dp.get("noise_multiplier"),
                "max_grad_norm": dp.get("max_grad_norm"),
                "delta": dp.get("delta"),
                "budget": dp.get("target_epsilon"),
            }
        else:
            declared = (summary.get("dp_settings") or {}).get(site) or {}
            stated = {
                "noise_multiplier": declared.get("noise_multiplier"),
                "max_grad_norm": declared.get("max_grad_norm"),
                "delta": (summary.get("delta") or {}).get(site),
                "budget": (summary.get("budget_epsilon") or {}).get(site),
            }
        region = found["regions"].get(site) or {}
        rows.append(
            {
                "site": site,
                "colour": series_colour(site),
                **stated,
                "spent": (summary.get("epsilon") or {}).get(site),
                "spent_total": region.get("epsilon_total"),
            }
        )
    return rows


def _model_hash(summary: dict[str, Any]) -> dict[str, Any] | None:
    """Where the run's global model is kept and its sha256 (a federated run's
    ``model_path``); None for a local run (each site's weights stay at the site) or a run
    not finished."""
    path = summary.get("model_path")
    if not isinstance(path, dict) or not path.get("sha256"):
        return None
    return {"sha256": path["sha256"], "store": path.get("store"), "path": path.get("path")}


def _run_entries(project: Project, user: User, summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The ledger entries a run names, for links into the explorer: where the coordinator
    recorded its start and end (shown to the roles that see its ledger), and each site's
    model updates its lineage lists (the sites the user sees)."""
    found: list[dict[str, Any]] = []
    recorded = summary.get("coordinator_ledger")
    if isinstance(recorded, dict) and user.role is not Role.SITE_OPERATOR:
        coordinator = project.settings.coordinator.id
        for what in ("started", "finished"):
            if isinstance(recorded.get(what), int):
                found.append({"ledger": coordinator, "seq": recorded[what], "what": f"run {what}"})
    for head in summary.get("lineage") or ():
        if isinstance(head, dict) and sees_site(user, str(head.get("site"))):
            found.append(
                {
                    "ledger": head.get("site"),
                    "seq": head.get("seq"),
                    "hash": head.get("hash"),
                    "what": "model update",
                }
            )
    return found


def plan(project: Project, user: User) -> dict[str, Any]:
    """The latest plan made in this folder (``onshore plan``): its options side by side and
    the law at each site (a site operator sees their own site's rows only)."""
    from onshore.plan import latest_plan

    found = latest_plan(project)
    if found is None:
        return {"plan": None}
    options = []
    for option in found["options"]:
        shown = {s: row for s, row in option["sites"].items() if sees_site(user, s)}
        options.append({**option, "sites": shown})
    regions = [s for s in found["sites"] if sees_site(user, s)]
    return {"plan": {**found, "options": options}, "regions": regions}


def releases(project: Project, user: User) -> dict[str, Any]:
    """Every release bundle with its card's essentials (a site operator sees the releases their
    site's data trained), and the licences granted for them."""
    from onshore.release.licence import list_licences

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
    coordinator = project.settings.coordinator.id
    shown = user.role is not Role.SITE_OPERATOR and (
        project.party is None or project.is_coordinator
    )
    return {"releases": rows, "licences": licences, "ledger": coordinator if shown else None}


def _release_rows(project: Project, user: User) -> list[dict[str, Any]]:
    from onshore.release.bundle import read_bundle
    from onshore.release.records import RELEASES_DIR

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


def reports(project: Project, user: User, *, http_for: HttpFor = _LOCAL) -> dict[str, Any]:
    """The reports each site the user sees has written for its regulator (in its folder), the
    deadlines its rulebook sets (the next first), and the sites that could not say (their
    service did not answer, or refused)."""
    found: list[dict[str, Any]] = []
    deadlines: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for site_id in visible_sites(project, user):
        try:
            read = read_site(project, user, site_id, "reports", http_for=http_for)
        except OnshoreError as exc:
            failed.append({"site": site_id, "access": RowAccess.failed(exc)})
            continue
        found.extend((read.data or {}).get("reports", []))
        deadlines.extend((read.data or {}).get("deadlines", []))
    deadlines.sort(key=lambda d: (int(d["days_left"]), str(d["site"])))
    return {"reports": found, "deadlines": deadlines, "failed": failed}


def report_file(
    project: Project,
    user: User,
    site_id: str,
    name: str,
    *,
    today: date | None = None,
    http_for: HttpFor = _LOCAL,
) -> tuple[tuple[bytes, str] | None, RowAccess]:
    """A report of a site (its bytes and media type), if the user may open it. A report holds
    the site's map of traces and its figures: read from abroad, it goes through the site's
    gate. Raises :class:`LookupError` for a name that is not one of the site's reports."""
    _check_site(project, user, site_id)
    try:
        found: SiteRead = read_site(
            project, user, site_id, "report", {"name": name}, http_for=http_for, day=today
        )
    except OnshoreError as exc:
        if getattr(exc, "reason", None) == "not_found":
            raise LookupError(exc.message) from None
        raise
    if found.data is None:
        return None, found.access
    content = base64.b64decode(found.data["content"])
    return (content, str(found.data["media_type"])), found.access
