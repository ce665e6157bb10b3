"""The plan: transfer the data out, train where it lies, both, or a model per market.

:func:`make_plan` runs at the coordinator (or in a lab project). It asks every site for the
``plan`` view, through the site's service like any read from another party, so each site's own
gate decides each hypothetical crossing under its own rulebooks and approvals; the planner adds
nothing about the law of its own. From those answers, the project's measured runs and the
rulebooks' software restrictions it computes, for each option and each site: what would cross,
under which decision, the approvals on file or missing with their lead times, the earliest day
the option can start, the renewals within the horizon; the usable data and the bytes crossing;
training time from measured throughput and the compute profile; the expected ADE per region
with its basis; and the markets and model years the resulting model could be licensed for.

Options:

- ``transfer_out``: each site's dataset (a de-identification profile, or raw) moved to one
  training site (the *centre*), trained there;
- ``federated``: trained where it lies, only model updates crossing to the coordinator;
- ``hybrid``: each site moves what its gate allows now to the centre, and the rest trains where
  it lies;
- ``per_market``: where a market's rules refuse a model with some party's contribution (the US
  rule on China-linked developers from model year 2027), the federated model without those
  parties, for those markets.

An option is ranked by the data it can use by the horizon, then the persons and vehicles whose
personal data would cross a border, then the day its model is ready, then the market-years it
can be licensed for, then its expected ADE; the plan says which criterion decided.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import orjson

from onshore.errors import ConfigError, OnshoreError, SiteNotFound
from onshore.forecast.runs import RunFolder
from onshore.parties.identity import Counterparty, coordinator_of, load_peers, site_facts
from onshore.reads.plan import MODEL_PARAMETERS, RAW
from onshore.release.card import SOFTWARE, Party
from onshore.release.restrictions import prohibitions
from onshore.rulebook.categories import CATEGORIES
from onshore.rulebook.loader import project_rulebooks
from onshore.settings import Project

__all__ = ["PLANS_DIR", "PlanOptions", "latest_plan", "make_plan", "plan_sites"]

PLANS_DIR: Final = "plans"
"""Where plans are kept in the coordinator's folder (``plans/<id>/plan.json``)."""
_DEFAULT_STEPS: Final = 1500
_PERSONAL_STATES: Final = ("raw", "pseudonymized")
Say = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class PlanOptions:
    """What the plan is for."""

    today: date
    markets: tuple[str, ...] = ()
    """Territories the model should be licensed in (default: the sites' jurisdictions)."""
    model_years: tuple[int, ...] = ()
    """Model years of the vehicles it would drive (default: this year and the next four)."""
    horizon: date | None = None
    """The day the model is wanted by (default: a year from today)."""
    centre: str | None = None
    """The site data would move to (default: a site in the coordinator's country, else the
    site with the most compute)."""
    profile: str = "training"
    """What ``transfer_out`` moves: a de-identification profile, or ``raw``."""
    purpose: str = "adas_training"
    steps: int | None = None
    """Training steps per site (default: the latest federated run's, else 1,500)."""

    def resolved_horizon(self) -> date:
        return self.horizon or self.today + timedelta(days=365)

    def resolved_years(self) -> tuple[int, ...]:
        return self.model_years or tuple(range(self.today.year, self.today.year + 5))


@dataclass(slots=True)
class _Site:
    id: str
    facts: dict[str, Any] | None
    error: str | None = None
    seconds_per_step: float | None = None
    throughput_basis: str = ""


def plan_sites(project: Project) -> list[str]:
    """The sites a plan covers: a lab project's, or the coordinator's peers."""
    if project.party is None:
        return list(project.settings.sites)
    if not project.is_coordinator:
        from onshore.errors import NotAParty

        raise NotAParty(
            f"{project.root} is a site's folder: a plan is made at the coordinator",
            hint="run 'onshore plan' in the coordinator's folder",
        )
    return [p.id for p in load_peers(project).sites()]


def make_plan(
    project: Project, options: PlanOptions, *, say: Say = lambda _m: None
) -> dict[str, Any]:
    """The plan for ``project`` (see the module's description)."""
    started = time.perf_counter()
    ids = plan_sites(project)
    if not ids:
        raise ConfigError(
            "no site to plan for", hint="add sites to onshore.toml, or trust their identities"
        )
    if options.profile != RAW:
        from onshore.deidentify import resolve_profile

        # A profile the sites do not know would make every site's answer an error: say so
        # here, once. (Sites share the built-in profiles; a project's own are in onshore.toml.)
        resolve_profile(options.profile, project.settings.deidentify_profiles)
    coordinator = coordinator_of(project)
    markets = options.markets or tuple(sorted({site_facts(project, s).jurisdiction for s in ids}))
    years = options.resolved_years()
    horizon = options.resolved_horizon()
    centre = _centre(project, ids, options.centre, coordinator)
    centre_party = _counterparty(project, centre)
    profiles = sorted({p for p in (options.profile, "training", "export") if p != RAW})
    params = {
        "purpose": options.purpose,
        "day": options.today.isoformat(),
        "profiles": profiles,
        "destinations": [centre_party.as_dict()],
        "coordinator": coordinator.as_dict(),
        "markets": list(markets),
    }
    sites: dict[str, _Site] = {}
    for site_id in ids:
        say(f"asking {site_id} what it holds and what its gate would decide")
        sites[site_id] = _ask(project, site_id, params)
    runs = _measured_runs(project)
    steps = options.steps or runs.get("steps") or _DEFAULT_STEPS
    _throughput(project, sites, runs)
    rulebooks = project_rulebooks(project)
    context = _Context(
        project,
        options,
        sites,
        centre,
        coordinator,
        markets,
        years,
        horizon,
        steps,
        runs,
        rulebooks,
    )
    plan_options = [
        _transfer_out(context),
        _federated(context, list(sites), "federated"),
        _hybrid(context),
    ]
    plan_options.extend(_per_market(context, plan_options[1]))
    ranked = sorted((o for o in plan_options if not o.get("same_as")), key=_rank)
    best = ranked[0]
    decided_by = _decided_by(ranked)
    return {
        "plan": _plan_id(options.today),
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "today": options.today.isoformat(),
        "horizon": horizon.isoformat(),
        "markets": list(markets),
        "model_years": list(years),
        "purpose": options.purpose,
        "profile": options.profile,
        "centre": centre,
        "coordinator": coordinator.as_dict(),
        "steps": steps,
        "sites": {
            s.id: {
                "error": s.error,
                "jurisdiction": None if s.facts is None else s.facts["jurisdiction"],
                "entity": None if s.facts is None else s.facts["entity"],
                "country": None if s.facts is None else s.facts["country"],
                "compute": None if s.facts is None else s.facts["compute"],
                "seconds_per_step": s.seconds_per_step,
                "throughput_basis": s.throughput_basis,
                "datasets": None if s.facts is None else s.facts["datasets"],
                "approvals": None if s.facts is None else s.facts["approvals"],
                "measured": None if s.facts is None else s.facts["measured"],
            }
            for s in sites.values()
        },
        "runs": {k: v for k, v in runs.items() if k != "steps"},
        "options": plan_options,
        "recommended": best["id"],
        "decided_by": decided_by,
        "seconds": round(time.perf_counter() - started, 2),
    }


# --- what the sites say ----------------------------------------------------------------------


def _ask(project: Project, site_id: str, params: Mapping[str, Any]) -> _Site:
    from onshore import reads

    try:
        answer = reads.read(project, site_id, "plan", params, user="planner", role="planner")
    except OnshoreError as exc:
        return _Site(site_id, None, error=str(exc))
    if not answer["access"]["allowed"] or answer.get("data") is None:
        decision = answer["access"].get("decision") or {}
        reasons = decision.get("reasons") or ["refused"]
        return _Site(site_id, None, error=f"its gate withheld the plan's facts: {reasons[0]}")
    return _Site(site_id, dict(answer["data"]))


def _counterparty(project: Project, site_id: str) -> Counterparty:
    facts = site_facts(project, site_id)
    return Counterparty(facts.id, facts.entity, facts.country, facts.linked_to)


def _centre(
    project: Project, ids: Sequence[str], chosen: str | None, coordinator: Counterparty
) -> str:
    if chosen is not None:
        if chosen not in ids:
            raise SiteNotFound(f"no site {chosen!r} to train at", hint=f"sites: {', '.join(ids)}")
        return chosen
    facts = {s: site_facts(project, s) for s in ids}
    home = [s for s in ids if facts[s].country == coordinator.country]
    if home:
        return home[0]
    if project.party is None:
        return max(ids, key=lambda s: project.site(s).compute.relative_throughput)
    return ids[0]


def _measured_runs(project: Project) -> dict[str, Any]:
    """The coordinator's latest federated run and centralised counterfactual, if any."""
    out: dict[str, Any] = {}
    for name, key in (("federated.json", "federated"), ("centralized.json", "centralized")):
        latest: tuple[str, dict[str, Any]] | None = None
        for _folder, run in RunFolder.each(project, name):
            stamp = str(run.get("finished_at") or "")
            if latest is None or stamp >= latest[0]:
                latest = (stamp, run)
        if latest is not None:
            run = latest[1]
            out[key] = {
                "run": run.get("run"),
                "finished_at": latest[0],
                "regions": {
                    site: {"ade": r.get("ade"), "fde": r.get("fde"), "samples": r.get("samples")}
                    for site, r in (run.get("regions") or {}).items()
                },
                "fine_tuned": {
                    site: {"ade": r.get("ade"), "steps": r.get("steps")}
                    for site, r in (run.get("fine_tuned") or {}).items()
                },
                "contributors": sorted({link["site"] for link in run.get("lineage") or []}),
            }
            options = run.get("options") or {}
            if key == "federated" and options.get("rounds") and options.get("local_steps"):
                out["steps"] = int(options["rounds"]) * int(options["local_steps"])
    return out


def _throughput(project: Project, sites: Mapping[str, _Site], runs: Mapping[str, Any]) -> None:
    """Seconds per training step at each site. A site's latest local run measured it there;
    in a lab project every site ran on one machine, so the measurement is divided by the
    site's declared relative throughput (its export-capped accelerators) as a deployed site's
    own hardware would show. Without a measurement, a few steps are timed here."""
    measured = {
        s.id: s.facts["measured"]["seconds"] / s.facts["measured"]["steps"]
        for s in sites.values()
        if s.facts and s.facts.get("measured") and s.facts["measured"].get("seconds")
    }
    reference: tuple[float, str] | None = None
    if measured:
        values = sorted(measured.values())
        reference = (values[len(values) // 2], "the median of the sites' measured local runs")
    for site in sites.values():
        if site.facts is None:
            continue
        rt = float(site.facts["compute"].get("relative_throughput") or 1.0)
        if site.id in measured and project.party is not None:
            site.seconds_per_step = measured[site.id]
            site.throughput_basis = f"measured at the site (run {site.facts['measured']['run']})"
            continue
        if reference is None:
            reference = (_time_steps(), "timed here: 20 steps of the object encoder")
        base, basis = (
            (measured[site.id], f"measured (run {site.facts['measured']['run']})")
            if site.id in measured
            else reference
        )
        site.seconds_per_step = base / rt
        site.throughput_basis = f"{basis}, at a relative throughput of {rt:g}"


@functools.cache
def _time_steps() -> float:
    """Seconds per step of the object encoder at batch 128, timed on random inputs (once per
    process)."""
    import torch

    from onshore.forecast.nets import build_model
    from onshore.forecast.train import sample_loss

    model = build_model("object_encoder")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    past = torch.randn(128, model.past_steps, 10, generator=gen)
    objects = torch.randn(128, 8, 13, generator=gen)
    mask = torch.ones(128, 8, dtype=torch.bool)
    future = torch.randn(128, model.future_steps, 2, generator=gen)
    started = time.perf_counter()
    for _ in range(20):
        opt.zero_grad()
        loss = sample_loss(model(past, objects, mask), future, past).mean()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
    return (time.perf_counter() - started) / 20


# --- options ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Context:
    project: Project
    options: PlanOptions
    sites: Mapping[str, _Site]
    centre: str
    coordinator: Counterparty
    markets: tuple[str, ...]
    years: tuple[int, ...]
    horizon: date
    steps: int
    runs: Mapping[str, Any]
    rulebooks: Any

    def facts(self, site_id: str) -> dict[str, Any] | None:
        return self.sites[site_id].facts


def _dataset_row(facts: Mapping[str, Any], name: str) -> dict[str, Any]:
    data = facts["datasets"].get(name) or {}
    return {
        "dataset": name,
        "clips": data.get("clips", 0),
        "vehicles": data.get("vehicles", 0),
        "bytes": data.get("bytes") or 0,
        "items": data.get("items", []),
    }


def _personal(items: Iterable[Mapping[str, Any]]) -> int:
    """Subjects of personal data among ``items``: the most of any personal category."""
    most = 0
    for item in items:
        info = CATEGORIES.get(item["category"])
        if info is None or info.subject == "none" or item["deid_state"] not in _PERSONAL_STATES:
            continue
        most = max(most, int(item["subjects"]))
    return most


def _site_row(role: str, law: Mapping[str, Any] | None, data: Mapping[str, Any]) -> dict[str, Any]:
    return {"role": role, "law": dict(law) if law is not None else None, "data": dict(data)}


def _transfer_out(ctx: _Context) -> dict[str, Any]:
    name = ctx.options.profile
    rows: dict[str, Any] = {}
    for site_id, site in ctx.sites.items():
        facts = site.facts
        if facts is None:
            rows[site_id] = _site_row("unreachable", None, {"error": site.error})
            continue
        data = _dataset_row(facts, name)
        if site_id == ctx.centre:
            rows[site_id] = _site_row("centre: trains on the data moved to it", None, data)
            continue
        law = facts["decisions"].get(ctx.centre, {}).get(name)
        if law is None:
            rows[site_id] = _site_row(
                "nothing to move", None, {**data, "note": f"no {name} data at the site"}
            )
            continue
        rows[site_id] = _site_row(f"moves its {name} data to {ctx.centre}", law, data)
    trainers = [ctx.centre]
    return _finish(
        ctx,
        "transfer_out",
        f"Transfer out: each site's {name} data moved to {ctx.centre} and trained there",
        rows,
        trainers=trainers,
        crossing=lambda row: row["data"]["bytes"],
        model=_central_model,
    )


def _federated(
    ctx: _Context, included: Sequence[str], option_id: str, title: str | None = None
) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    model_bytes = _model_bytes()
    for site_id, site in ctx.sites.items():
        facts = site.facts
        if facts is None:
            rows[site_id] = _site_row("unreachable", None, {"error": site.error})
            continue
        data = _dataset_row(facts, "training")
        if site_id not in included:
            rows[site_id] = _site_row("left out", None, data)
            continue
        crossing = _update_bytes(ctx, model_bytes)
        rows[site_id] = _site_row(
            "trains where its data lies; sends model updates to the coordinator",
            facts["federated"],
            {**data, "bytes": crossing, "moved": MODEL_PARAMETERS},
        )
    return _finish(
        ctx,
        option_id,
        title or "Train where it lies: federated across the sites, only model updates cross",
        rows,
        trainers=[s for s in included if ctx.sites[s].facts is not None],
        crossing=lambda row: row["data"]["bytes"],
        model=_federated_model,
    )


def _hybrid(ctx: _Context) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    model_bytes = _model_bytes()
    trainers = [ctx.centre]
    for site_id, site in ctx.sites.items():
        facts = site.facts
        if facts is None:
            rows[site_id] = _site_row("unreachable", None, {"error": site.error})
            continue
        if site_id == ctx.centre:
            rows[site_id] = _site_row(
                "centre: trains on its own data and what moves to it",
                None,
                _dataset_row(facts, "training"),
            )
            continue
        movable = [
            (name, law)
            for name, law in (facts["decisions"].get(ctx.centre) or {}).items()
            if law["allowed"] and name != RAW
        ]
        movable.sort(key=lambda pair: pair[0] != "training")
        if movable:
            name, law = movable[0]
            rows[site_id] = _site_row(
                f"moves its {name} data to {ctx.centre} (allowed now)",
                law,
                _dataset_row(facts, name),
            )
        else:
            trainers.append(site_id)
            rows[site_id] = _site_row(
                "trains where its data lies; sends model updates to the coordinator",
                facts["federated"],
                {
                    **_dataset_row(facts, "training"),
                    "bytes": _update_bytes(ctx, model_bytes),
                    "moved": MODEL_PARAMETERS,
                },
            )
    moved = [s for s, row in rows.items() if row["role"].startswith("moves") and s != ctx.centre]
    hybrid = _finish(
        ctx,
        "hybrid",
        f"Hybrid: what may move now goes to {ctx.centre}, the rest trains where it lies",
        rows,
        trainers=trainers,
        crossing=lambda row: row["data"]["bytes"],
        model=_federated_model,
    )
    # Where every site may move its data now, or none may, the hybrid is one of the others.
    if len(trainers) == 1:
        hybrid["same_as"] = "transfer_out"
    elif not moved:
        hybrid["same_as"] = "federated"
    return hybrid


def _per_market(ctx: _Context, federated: Mapping[str, Any]) -> list[dict[str, Any]]:
    """For each set of parties a market's software restriction names, the federated model
    without them, for the markets and years the full model is refused."""
    out = []
    seen: set[tuple[str, ...]] = set()
    for market, by_year in federated["markets"].items():
        for year, verdict in by_year.items():
            offending = tuple(sorted(verdict.get("restricted_parties") or ()))
            if not offending or offending in seen:
                continue
            seen.add(offending)
            included = [s for s in federated["trainers"] if s not in offending]
            if not included:
                continue
            option = _federated(
                ctx,
                included,
                "per_market:" + "-".join(offending),
                title=(
                    f"Per market: federated without {', '.join(offending)}, for "
                    f"{market} from model year {year}"
                ),
            )
            option["for_markets"] = {
                m: [
                    y
                    for y, v in ys.items()
                    if set(offending) <= set(v.get("restricted_parties", ()))
                ]
                for m, ys in federated["markets"].items()
            }
            out.append(option)
    return out


def _model_bytes() -> int:
    """The most a message of the object encoder carries (its tensors and metrics)."""
    from onshore.federation.envelope import size_limit
    from onshore.forecast.nets import ModelSpec

    return size_limit(ModelSpec("object_encoder"))


def _update_bytes(ctx: _Context, model_bytes: int) -> int:
    """Bytes crossing a site's border over a federated training: the model down and an
    update up each round, in rounds of 150 local steps (``onshore train``'s default)."""
    local = 150
    rounds = max(1, math.ceil(ctx.steps / local))
    return 2 * rounds * model_bytes


# --- each option's figures -------------------------------------------------------------------


def _finish(
    ctx: _Context,
    option_id: str,
    title: str,
    rows: dict[str, Any],
    *,
    trainers: Sequence[str],
    crossing: Callable[[Mapping[str, Any]], int],
    model: Callable[[_Context, Mapping[str, Any], Sequence[str]], dict[str, Any]],
) -> dict[str, Any]:
    today, horizon = ctx.options.today, ctx.horizon
    blockers: list[str] = []
    included: list[str] = []
    starts: list[date] = []
    for site_id, row in rows.items():
        law = row["law"]
        if row["role"] in ("unreachable",):
            blockers.append(f"{site_id}: unreachable ({row['data'].get('error')})")
            continue
        if row["role"] in ("left out", "nothing to move"):
            continue
        if law is None:
            included.append(site_id)
            row["earliest"] = today.isoformat()
            continue
        row["earliest"] = law.get("earliest")
        if law["allowed"]:
            included.append(site_id)
            starts.append(today)
            continue
        if law.get("earliest") is None:
            why = law["reason"] or "denied"
            row["role"] += (
                " (cannot: " + ("prohibited" if law["prohibited"] else "no lead time known") + ")"
            )
            blockers.append(f"{site_id}: {why}")
            continue
        ready = date.fromisoformat(law["earliest"])
        if ready > horizon:
            blockers.append(
                f"{site_id}: needs {law['via']} ({law['lead_time']['typical']}), ready "
                f"{ready.isoformat()}, after the horizon"
            )
            row["role"] += " (not by the horizon)"
            continue
        included.append(site_id)
        starts.append(ready)
    start = max(starts, default=today)
    trainer_ids = [s for s in trainers if s in included or s == ctx.centre]
    compute = _compute(ctx, option_id, rows, included, trainer_ids)
    ready = start + timedelta(days=math.ceil(compute["seconds"] / 86_400))
    vehicles = sum(rows[s]["data"].get("vehicles", 0) for s in included)
    personal = sum(
        _personal(rows[s]["data"].get("items", []))
        for s in included
        if rows[s]["law"] is not None and rows[s]["data"].get("moved") != MODEL_PARAMETERS
    )
    bytes_crossing = {s: int(crossing(rows[s])) for s in included if rows[s]["law"] is not None}
    markets = _markets(ctx, trainer_ids)
    licensable = sum(1 for ys in markets.values() for v in ys.values() if v["allowed"])
    expected = model(ctx, rows, included)
    renewals = _renewals(ctx, rows, included)
    return {
        "id": option_id,
        "title": title,
        "sites": rows,
        "included": included,
        "trainers": trainer_ids,
        "blockers": blockers,
        "start": start.isoformat(),
        "ready": ready.isoformat(),
        "within_horizon": start <= horizon and bool(included),
        "vehicles": vehicles,
        "personal_subjects_crossing": personal,
        "bytes_crossing": bytes_crossing,
        "compute": compute,
        "model": expected,
        "markets": markets,
        "licensable_market_years": licensable,
        "renewals": renewals,
        "timeline": _timeline(ctx, rows, included, start, ready, trainer_ids, renewals),
    }


def _timeline(
    ctx: _Context,
    rows: Mapping[str, Any],
    included: Sequence[str],
    start: date,
    ready: date,
    trainers: Sequence[str],
    renewals: Sequence[Mapping[str, Any]],
) -> list[dict[str, str]]:
    """The option's days in order: approvals applied for and in place, training, the model
    ready, renewals falling due."""
    today = ctx.options.today
    events: list[tuple[date, str]] = []
    for site_id in included:
        law = rows[site_id]["law"]
        if law is None or law["allowed"] or not law.get("via"):
            continue
        lead = law["lead_time"]
        events.append((today, f"{site_id}: apply for {law['via']} ({lead['typical']})"))
        events.append((date.fromisoformat(law["earliest"]), f"{site_id}: {law['via']} in place"))
    events.append((start, f"training starts at {', '.join(trainers) or 'no site'}"))
    events.append((ready, "the model is ready"))
    for renewal in renewals:
        due = renewal["renew_by"] or renewal["valid_until"]
        events.append(
            (date.fromisoformat(due), f"{renewal['site']}: renew {renewal['approval']['id']}")
        )
    return [{"date": day.isoformat(), "event": text} for day, text in sorted(events)]


def _compute(
    ctx: _Context,
    option_id: str,
    rows: Mapping[str, Any],
    included: Sequence[str],
    trainers: Sequence[str],
) -> dict[str, Any]:
    """Training time at each site that trains: federated sites each do the run's steps at
    their own speed (the round waits for the slowest); the centre does the steps of every
    site whose data it holds."""
    per_site: dict[str, Any] = {}
    if option_id == "transfer_out":
        centre = ctx.sites[ctx.centre]
        spp = centre.seconds_per_step or 0.0
        steps = ctx.steps * max(1, len(included))
        per_site[ctx.centre] = {
            "steps": steps,
            "seconds": round(steps * spp, 1),
            "seconds_per_step": spp,
            "basis": centre.throughput_basis,
        }
    else:
        pooled = [s for s in included if s not in trainers]
        for site_id in trainers:
            site = ctx.sites[site_id]
            spp = site.seconds_per_step or 0.0
            steps = ctx.steps * (1 + (len(pooled) if site_id == ctx.centre else 0))
            per_site[site_id] = {
                "steps": steps,
                "seconds": round(steps * spp, 1),
                "seconds_per_step": spp,
                "basis": site.throughput_basis,
            }
    seconds = max((v["seconds"] for v in per_site.values()), default=0.0)
    return {"where": list(per_site), "per_site": per_site, "seconds": seconds}


def _markets(ctx: _Context, trainers: Sequence[str]) -> dict[str, dict[str, Any]]:
    """For each market and model year, whether a model trained by ``trainers`` could be
    licensed: no software restriction of the rulebooks names one of its parties (the same
    check as ``license grant`` and ``load_model``), and each training site's gate lets the
    model go to a licensee there (or says when it could)."""
    coord = ctx.project.settings.coordinator
    parties = [Party("developer", coord.entity, coord.country, tuple(coord.linked_to), coord.id)]
    for site_id in trainers:
        facts = ctx.facts(site_id)
        if facts is None:
            continue
        parties.append(
            Party(
                "operator",
                facts["entity"],
                facts["country"],
                tuple(facts["linked_to"]),
                site_id,
            )
        )
    out: dict[str, dict[str, Any]] = {}
    for market in ctx.markets:
        gates = {}
        for site_id in trainers:
            facts = ctx.facts(site_id)
            if facts is not None and market in facts["release"]:
                gates[site_id] = facts["release"][market]
        by_year: dict[str, Any] = {}
        for year in ctx.years:
            hits = prohibitions(
                ctx.rulebooks,
                parties,
                territory=market,
                model_year=year,
                software=SOFTWARE,
                on=ctx.options.today,
            )
            waits = {s: g for s, g in gates.items() if not g["allowed"]}
            verdict: dict[str, Any] = {"allowed": not hits and not waits}
            if hits:
                verdict["reason"] = hits[0].reason
                verdict["rule"] = hits[0].rule
                verdict["restricted_parties"] = sorted(
                    p.party for h in hits for p in h.parties if p.role == "operator"
                )
            elif waits:
                # A site's gate lets the model go once an approval is on file: licensable
                # from that day, if it comes by the horizon.
                days = [g.get("earliest") for g in waits.values()]
                site_id, gate = next(iter(waits.items()))
                verdict["reason"] = f"{site_id}'s gate: {gate['reason']}"
                verdict["via"] = gate.get("via")
                if all(days):
                    earliest = max(date.fromisoformat(str(d)) for d in days)
                    verdict["earliest"] = earliest.isoformat()
                    verdict["allowed"] = earliest <= ctx.horizon
                    verdict["reason"] = (
                        f"from {earliest.isoformat()}, once {gate.get('via')} is on file "
                        f"({verdict['reason']})"
                    )
            by_year[str(year)] = verdict
        out[market] = by_year
    return out


def _renewals(
    ctx: _Context, rows: Mapping[str, Any], included: Sequence[str]
) -> list[dict[str, Any]]:
    """Approvals the option relies on whose renewal falls due by the horizon."""
    out = []
    for site_id in included:
        law = rows[site_id]["law"]
        approval = None if law is None else law.get("approval")
        facts = ctx.facts(site_id)
        if approval is None or facts is None:
            continue
        for status in facts["approvals"]:
            due = status.get("renew_by") or status.get("valid_until")
            if status["id"] == approval["id"] and due and date.fromisoformat(due) <= ctx.horizon:
                out.append(
                    {
                        "site": site_id,
                        "approval": approval,
                        "renew_by": status.get("renew_by"),
                        "valid_until": status.get("valid_until"),
                    }
                )
    return out


def _central_model(
    ctx: _Context, rows: Mapping[str, Any], included: Sequence[str]
) -> dict[str, Any]:
    central = ctx.runs.get("centralized")
    out: dict[str, Any] = {}
    for site_id in ctx.sites:
        if site_id not in included:
            out[site_id] = {"ade": None, "basis": "none of this region's data in the model"}
            continue
        measured = (central or {}).get("regions", {}).get(site_id, {}).get("ade")
        if measured is not None and len(included) == len(ctx.sites):
            out[site_id] = {
                "ade": measured,
                "basis": f"measured: centralised counterfactual run {central['run']}",  # type: ignore[index]
                "measured": True,
            }
        else:
            out[site_id] = _estimate(ctx, site_id, "no centralised run on this data")
    return out


def _federated_model(
    ctx: _Context, rows: Mapping[str, Any], included: Sequence[str]
) -> dict[str, Any]:
    fed = ctx.runs.get("federated")
    out: dict[str, Any] = {}
    same = fed is not None and set(fed["contributors"]) == set(included)
    for site_id in ctx.sites:
        if site_id not in included:
            out[site_id] = {"ade": None, "basis": "none of this region's data in the model"}
            continue
        region = (fed or {}).get("regions", {}).get(site_id, {})
        tuned = (fed or {}).get("fine_tuned", {}).get(site_id, {})
        if same and region.get("ade") is not None:
            assert fed is not None
            out[site_id] = {
                "ade": region["ade"],
                "fine_tuned_ade": tuned.get("ade"),
                "basis": f"measured: federated run {fed['run']}",
                "measured": True,
            }
        elif region.get("ade") is not None:
            assert fed is not None
            out[site_id] = {
                "ade": region["ade"],
                "basis": f"estimate: federated run {fed['run']}, trained by "
                f"{', '.join(fed['contributors']) or 'no site'}, not this set of sites",
                "measured": False,
            }
        else:
            out[site_id] = _estimate(ctx, site_id, "no federated run")
    return out


def _estimate(ctx: _Context, site_id: str, missing: str) -> dict[str, Any]:
    facts = ctx.facts(site_id) or {}
    local = facts.get("measured")
    if local and local.get("ade") is not None:
        return {
            "ade": local["ade"],
            "basis": f"estimate ({missing}): the site's own local model, run {local['run']}",
            "measured": False,
        }
    return {"ade": None, "basis": f"unknown: {missing}, and no local run at the site"}


# --- ranking ---------------------------------------------------------------------------------

_CRITERIA: Final = (
    "the data it can use by the horizon",
    "the personal data that would cross a border",
    "the day its model is ready",
    "the markets and model years it can be licensed for",
    "its expected ADE",
)


def _rank(option: Mapping[str, Any]) -> tuple[Any, ...]:
    ades = [m["ade"] for m in option["model"].values() if m.get("ade") is not None]
    return (
        -option["vehicles"] if option["within_horizon"] else 0,
        option["personal_subjects_crossing"],
        option["ready"],
        -option["licensable_market_years"],
        sum(ades) / len(ades) if ades else math.inf,
    )


def _decided_by(ranked: Sequence[Mapping[str, Any]]) -> str:
    if len(ranked) < 2:
        return "the only option"
    first, second = _rank(ranked[0]), _rank(ranked[1])
    for criterion, a, b in zip(_CRITERIA, first, second, strict=True):
        if a != b:
            return f"{criterion} (against {ranked[1]['id']})"
    return f"a tie with {ranked[1]['id']}: the first listed is recommended"


def _plan_id(today: date) -> str:
    return f"plan-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}-{today.isoformat()}"


def latest_plan(project: Project) -> dict[str, Any] | None:
    """The latest plan kept in the folder's ``plans/``, if any."""
    folder = project.root / PLANS_DIR
    found = sorted(folder.glob("*/plan.json")) if folder.is_dir() else []
    if not found:
        return None
    value = orjson.loads(Path(found[-1]).read_bytes())
    return value if isinstance(value, dict) else None
