"""A site's part of a plan: what it holds and what its own gate would decide.

The planner at the coordinator never reads a site's catalogue: it asks each site for the
``plan`` view (:mod:`onshore.reads.views`), through the site's service like any read, and the
site answers with :func:`plan_facts`: aggregates of the consenting drivers' clips (raw, and the
outputs of each de-identification profile asked about), the compute it declares, the approvals
on file and their deadlines, its latest measured local run, and its gate's decision on each
hypothetical crossing (each dataset to each candidate destination, model updates to the
coordinator, the model to a licensee in each market). The decisions are the gate's own,
made at the origin under the site's rulebooks, approvals and history, and recorded nowhere:
asking is not sending. For each decision that needs a mechanism not on file, the site gives
the earliest day one could be in place, from the lead times its rulebooks state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any, Final

from onshore.errors import ConfigError
from onshore.forecast.runs import RunFolder
from onshore.gate import Decision, Gate
from onshore.gate.site import OpenSite
from onshore.parties.identity import Counterparty
from onshore.rulebook.categories import CATEGORIES
from onshore.rulebook.evaluate import DataItem
from onshore.transfer.selection import output_category

__all__ = ["MODEL_PARAMETERS", "RAW", "decision_summary", "plan_facts"]

RAW: Final = "raw"
"""The dataset name of a site's clips as recorded."""
MODEL_PARAMETERS: Final = "model_parameters"
"""What a federated site sends: its model updates (and what a released model is)."""
_STATES: Final = ("raw", "pseudonymized", "anonymized")


def plan_facts(site: OpenSite, params: Mapping[str, Any], today: date) -> dict[str, Any]:
    """The site's answer to a planner (see the module's description). ``params``:
    ``purpose``, ``day`` (ISO date the decisions are for; default ``today``), ``profiles``
    (de-identification profiles to ask about), ``destinations`` (counterparties a dataset
    could go to: ``id``, ``entity``, ``country``, ``linked_to``), ``coordinator`` (the
    counterparty model updates go to) and ``markets`` (territories a released model could be
    licensed in). Raises :class:`ConfigError` for parameters it cannot read."""
    purpose = str(params.get("purpose") or "adas_training")
    day = _day(params.get("day"), today)
    profiles = [str(p) for p in params.get("profiles") or ()]
    destinations = [_counterparty(d) for d in params.get("destinations") or ()]
    coordinator = params.get("coordinator")
    markets = [str(m) for m in params.get("markets") or ()]
    settings = site.settings
    catalogue = site.store.catalogue
    datasets = {RAW: _dataset(catalogue.dataset_totals(), None, site)}
    for name in profiles:
        datasets[name] = _dataset(catalogue.dataset_totals(name), name, site)
    gate = site.gate()
    decisions: dict[str, dict[str, Any]] = {}
    for to in destinations:
        if to.id == site.id:
            continue
        decisions[to.id] = {
            name: _ask(site, gate, to, data["items"], purpose, day)
            for name, data in datasets.items()
            if data["items"]
        }
    vehicles = datasets[RAW]["vehicles"]
    updates = [DataItem(category=MODEL_PARAMETERS, subjects=vehicles, deid_state="anonymized")]
    federated = None
    if coordinator is not None:
        federated = _ask(site, gate, _counterparty(coordinator), updates, purpose, day)
    release = {
        market: _ask(
            site,
            gate,
            Counterparty(f"licensee-{market}", f"a licensee in {market}", market),
            updates,
            purpose,
            day,
        )
        for market in markets
    }
    statuses = [s.as_dict() for s in site.registry().statuses(day)]
    return {
        "site": site.id,
        "jurisdiction": settings.jurisdiction,
        "entity": settings.entity,
        "country": settings.location,
        "linked_to": list(settings.linked_to),
        "compute": settings.compute.model_dump(mode="json"),
        "day": day.isoformat(),
        "purpose": purpose,
        "datasets": datasets,
        "decisions": decisions,
        "federated": federated,
        "release": release,
        "approvals": statuses,
        "measured": _measured(site),
    }


def decision_summary(decision: Decision) -> dict[str, Any]:
    """What a plan keeps of a decision: the verdict, the mechanisms any one of which would
    allow it, the approval used, the rules with their sources and the counts in their
    windows."""
    return {
        "allowed": decision.allowed,
        "exempt": decision.exempt,
        "prohibited": decision.prohibited,
        "mechanisms": list(decision.mechanisms),
        "approval": None if decision.approval is None else decision.approval.ref(),
        "rules": [r.as_dict() for r in decision.rules],
        "reason": decision.reasons[0] if decision.reasons else "",
        "subjects_in_window": dict(decision.subjects_in_window),
        "rulebook_versions": dict(decision.rulebook_versions),
    }


def _ask(
    site: OpenSite,
    gate: Gate,
    to: Counterparty,
    items: Sequence[Mapping[str, Any]] | Sequence[DataItem],
    purpose: str,
    day: date,
) -> dict[str, Any]:
    data = [i if isinstance(i, DataItem) else DataItem.model_validate(i) for i in items]
    decision = gate.decide(site.request(to, data, purpose, day=day))
    out = {"to": to.as_dict(), **decision_summary(decision), **_earliest(site, decision, day)}
    return out


def _earliest(site: OpenSite, decision: Decision, day: date) -> dict[str, Any]:
    """The earliest day the crossing could start: ``day`` when allowed; with a mechanism
    missing, the shortest of the lead times the site's rulebook states for any one of them
    (``via``); none when prohibited, or when no mechanism that would do has a lead time."""
    if decision.allowed:
        return {"earliest": day.isoformat(), "via": None, "lead_time": None}
    if decision.prohibited or not decision.mechanisms:
        return {"earliest": None, "via": None, "lead_time": None}
    book = site.rulebooks.for_origin(site.settings.jurisdiction)
    best: tuple[date, str, dict[str, Any]] | None = None
    for mechanism in decision.mechanisms:
        terms = book.mechanisms.get(mechanism)
        if terms is None or terms.lead_time is None:
            continue
        ready = terms.lead_time.typical.after(day)
        if best is None or ready < best[0]:
            lead = terms.lead_time
            best = (
                ready,
                mechanism,
                {
                    "typical": str(lead.typical),
                    "source": lead.source,
                    "confidence": lead.confidence,
                    "note": lead.note,
                    "rulebook": book.key,
                    "rulebook_version": book.version,
                },
            )
    if best is None:
        return {
            "earliest": None,
            "via": None,
            "lead_time": None,
            "unknown_lead_time": list(decision.mechanisms),
        }
    return {"earliest": best[0].isoformat(), "via": best[1], "lead_time": best[2]}


def _dataset(totals: dict[str, Any], profile: str | None, site: OpenSite) -> dict[str, Any]:
    """A dataset's aggregates and the data items the gate is asked about for it."""
    found: dict[str, tuple[int, str]] = {}
    resolved = None
    if profile is not None:
        from onshore.deidentify import resolve_profile

        resolved = resolve_profile(profile, site.project.settings.deidentify_profiles)
        states = [s for s in _STATES if totals["states"].get(s)]
        state = states[0] if states else "pseudonymized"
        totals["bytes"] = _profile_bytes(site, profile, totals["clips"], totals["outputs"])
    else:
        state = RAW
    for category, counts in totals["categories"].items():
        after = category if resolved is None else output_category(category, resolved)
        if after is None:
            continue
        subjects = (
            counts["vehicles"] if CATEGORIES[category].subject == "vehicle" else counts["count"]
        )
        known = found.get(after)
        found[after] = (max(subjects, known[0] if known else 0), state)
    if totals["clips"] and "vehicle_id" not in found and resolved is None:
        found["vehicle_id"] = (totals["vehicles"], state)
    totals["items"] = [
        {"category": category, "subjects": subjects, "deid_state": deid}
        for category, (subjects, deid) in sorted(found.items())
    ]
    return totals


def _profile_bytes(site: OpenSite, profile: str, consented: int, outputs: int) -> int:
    """Bytes of a profile's outputs of consenting drivers: the store's listing of the
    profile's objects, in the share of consenting clips among its outputs (frames included)."""
    if not outputs:
        return 0
    sizes = site.store.objects.sizes(f"deidentified/{profile}/")
    return round(sum(sizes.values()) * consented / outputs)


def _measured(site: OpenSite) -> dict[str, Any] | None:
    """The site's latest local run in its folder: the seconds per step it took, and its ADE
    (None when the site had no test sample)."""
    latest: tuple[str, dict[str, Any]] | None = None
    for _folder, run in RunFolder.each(site.project, "run.json"):
        region = (run.get("regions") or {}).get(site.id) or {}
        if run.get("mode") != "local" or not region.get("steps") or not region.get("seconds"):
            continue
        stamp = str(run.get("finished_at") or "")
        if latest is None or stamp >= latest[0]:
            latest = (
                stamp,
                {
                    "run": run.get("run"),
                    "model": (run.get("model") or {}).get("name"),
                    "ade": region.get("ade"),
                    "fde": region.get("fde"),
                    "samples": region.get("samples"),
                    "steps": region["steps"],
                    "seconds": region.get("seconds"),
                    "batch_size": (run.get("options") or {}).get("batch_size"),
                    "finished_at": stamp,
                },
            )
    return None if latest is None else latest[1]


def _counterparty(value: Any) -> Counterparty:
    try:
        return Counterparty(
            str(value["id"]),
            str(value["entity"]),
            str(value["country"]),
            tuple(str(c) for c in value.get("linked_to") or ()),
        )
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"a plan's destination is malformed: {exc}") from None


def _day(value: Any, today: date) -> date:
    if value is None:
        return today
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise ConfigError(f"a plan's day {value!r} is not an ISO date") from None
