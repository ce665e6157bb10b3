"""``onshore train``: train the driving model at each site on its own data, and evaluate it on
the site's own test split beside the constant-velocity baseline."""

from __future__ import annotations

import math
from typing import Annotated, Any

import typer
from rich.table import Table

from onshore.cli.output import JsonOption, ProjectOption, console, emit, err_console
from onshore.errors import ConfigError
from onshore.settings import load_project

__all__ = ["register"]


def train(
    mode: Annotated[
        str,
        typer.Option(
            help="local: each site alone; federated: Flower across the sites; "
            "centralized-counterfactual: all data pooled (simulated fleets only)."
        ),
    ] = "local",
    sites: Annotated[
        list[str] | None,
        typer.Option("--site", "-s", help="Site to train at (repeat; default: every site)."),
    ] = None,
    model: Annotated[
        str, typer.Option(help="Model: object_encoder, past_mlp, constant_velocity.")
    ] = "object_encoder",
    rounds: Annotated[int, typer.Option(min=1, help="Federated rounds.")] = 10,
    strategy: Annotated[
        str,
        typer.Option(
            help="Federated strategy: fedavg, fedavgm (server momentum), fedprox, fedadam."
        ),
    ] = "fedavg",
    local_steps: Annotated[
        int,
        typer.Option(
            min=1, help="Federated: steps per round at relative throughput 1 (profile scales it)."
        ),
    ] = 150,
    steps: Annotated[int, typer.Option(min=0, help="Local: optimiser steps at each site.")] = 1500,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Samples per step (expected, with DP).")
    ] = 128,
    lr: Annotated[float, typer.Option(min=0.0, help="Adam learning rate.")] = 2e-3,
    weight_decay: Annotated[float, typer.Option(min=0.0, help="AdamW weight decay.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of weights, batches and DP noise.")] = 0,
    dp: Annotated[
        bool | None,
        typer.Option(
            "--dp/--no-dp",
            help="DP-SGD (sample-level differential privacy). Federated: on unless --no-dp, "
            "within each site's budget in onshore.toml. Local: off unless --dp.",
        ),
    ] = None,
    spend_budget: Annotated[
        bool,
        typer.Option(
            "--spend-budget",
            help="Federated with DP: let the run use up what is left of a site's privacy "
            "budget (without it, such a site refuses to train in the run).",
        ),
    ] = False,
    epsilon: Annotated[
        float, typer.Option(min=0.0, help="Local with --dp: the budget, epsilon at --delta.")
    ] = 8.0,
    delta: Annotated[float, typer.Option(help="Local with --dp: delta of the budget.")] = 1e-5,
    noise_multiplier: Annotated[
        float, typer.Option(min=0.0, help="Local with --dp: noise, in units of --max-grad-norm.")
    ] = 1.0,
    max_grad_norm: Annotated[
        float, typer.Option(min=0.0, help="Local with --dp: per-sample gradient clipping norm.")
    ] = 1.0,
    superlink: Annotated[
        str | None,
        typer.Option(
            help="Federated, in the coordinator's folder: the SuperLink HOST:PORT (default: "
            "the federation address of its identity)."
        ),
    ] = None,
    round_timeout: Annotated[
        float,
        typer.Option(
            "--round-timeout",
            min=1.0,
            help="Federated: seconds a round waits for the sites; one that does not answer is "
            "left out of it and named.",
        ),
    ] = 600.0,
    join_timeout: Annotated[
        float,
        typer.Option(
            "--join-timeout",
            min=1.0,
            help="Federated: seconds to wait for every site's SuperNode before round 1; the "
            "run goes on with those that joined.",
        ),
    ] = 120.0,
    fine_tune_steps: Annotated[
        int,
        typer.Option(
            "--fine-tune-steps",
            min=0,
            help="Federated: after the last round, each site trains the global model this "
            "many more steps on its own data and keeps the result; only its errors leave.",
        ),
    ] = 0,
    fine_tune_lr: Annotated[
        float,
        typer.Option(
            "--fine-tune-lr", min=0.0, help="Federated: fine-tuning rate (0: a third of --lr)."
        ),
    ] = 0.0,
    run: Annotated[
        str | None,
        typer.Option(help="Run id (default: a new one); an unfinished run's id resumes it."),
    ] = None,
    project: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Train the driving model and evaluate it on each site's own test split beside constant
    velocity. Local: each site on its own data alone, weights stay in its store. Federated:
    Flower across the sites, only DP-trained model updates and metrics leave them, each through
    its gate and into its ledger. Centralized-counterfactual: simulated data only, pooled."""
    from onshore.forecast.nets import ModelSpec, build_model

    proj = load_project(project)
    build_model(model)  # an unknown name fails here, before any site is read

    def say(message: str) -> None:
        # Progress goes to stderr, with --json too: stdout keeps the one JSON document.
        err_console.print(f"[bold cyan]>[/] {message}")

    if mode == "local":
        from onshore.forecast.local import LocalOptions, train_sites_locally
        from onshore.forecast.train import DPConfig

        options = LocalOptions(
            model=ModelSpec(model),
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            seed=seed,
            dp=DPConfig(epsilon, delta, noise_multiplier, max_grad_norm) if dp else None,
        )
        summary = train_sites_locally(proj, sites, options, run=run, say=say)
        emit(summary, as_json, _render)
        return
    if mode not in ("federated", "centralized-counterfactual"):
        raise ConfigError(
            f"no mode {mode!r}", hint="modes: local, federated, centralized-counterfactual"
        )
    from onshore.federation import FederatedOptions
    from onshore.forecast.local import new_run_id

    deployed = proj.party is not None
    if deployed and not proj.is_coordinator:
        from onshore.errors import NotAParty

        raise NotAParty(
            f"{proj.root} is a site's folder: a federated run starts at the coordinator",
            hint="run it in the coordinator's folder; here, join with 'onshore site join'",
        )
    if deployed:
        from onshore.parties.identity import load_peers

        known = tuple(p.id for p in load_peers(proj).sites())
    else:
        known = tuple(proj.settings.sites)
    chosen = tuple(sites) if sites else known
    for site in chosen:
        if site not in known:
            from onshore.errors import SiteNotFound

            raise SiteNotFound(
                f"no site {site!r} here", hint=f"sites: {', '.join(known) or 'none'}"
            )
    fed = FederatedOptions(
        run=run or new_run_id("federated" if mode == "federated" else "centralized"),
        sites=chosen,
        project=str(proj.root),
        model=ModelSpec(model),
        rounds=rounds,
        local_steps=local_steps,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        strategy=strategy,  # type: ignore[arg-type]  # checked by FederatedOptions
        dp=dp if dp is not None else mode == "federated",
        spend_budget=spend_budget,
        fine_tune_steps=fine_tune_steps if mode == "federated" else 0,
        fine_tune_lr=fine_tune_lr,
        seed=seed,
        timeout=round_timeout,
        join_timeout=join_timeout,
    )
    if mode == "centralized-counterfactual":
        from onshore.federation.centralized import train_centralized

        emit(train_centralized(proj, fed, say=say), as_json, _render_federated)
        return
    if deployed:
        from onshore.federation.deploy import run_deployed

        summary = run_deployed(proj, fed, superlink=superlink, say=say)
    elif superlink is not None:
        raise ConfigError(
            "--superlink runs across data centres, from the coordinator's folder",
            hint="in a lab project, federated training runs in Flower's simulation engine",
        )
    else:
        from onshore.federation import run_federated

        summary = run_federated(proj, fed, say=say)
    emit(summary, as_json, _render_federated)


def _render_federated(d: dict[str, Any]) -> None:
    counterfactual = d["mode"] == "centralized-counterfactual"
    table = Table(
        "site",
        "test samples",
        "ADE m",
        "FDE m",
        "miss @2 m",
        "CV ADE m",
        "ADE / CV",
        "epsilon (run)",
        "bytes crossed",
        title=f"run {d['run']}: {d['model']['name']}, {d['mode']}"
        + ("" if counterfactual else f" ({d['strategy']}, {d['rounds']} rounds)"),
    )
    for site, r in d["regions"].items():
        cv = r["baselines"]["constant_velocity"]
        ratio = f"{r['ade'] / cv['ade']:.2f}" if r["ade"] is not None and cv["ade"] else "-"
        table.add_row(
            site,
            str(r["samples"]),
            _metre(r["ade"]),
            _metre(r["fde"]),
            _metre(r["miss_rate"]),
            _metre(cv["ade"]),
            ratio,
            _metre(d["epsilon"].get(site)),
            f"{d['bytes_crossed'].get(site, 0):,}",
        )
    console.print(table)
    render_groups(d["regions"])
    render_fine_tuned(d["regions"], d.get("fine_tuned") or {})
    render_funnel({site: r.get("funnel", {}) for site, r in d["regions"].items()})
    if counterfactual:
        console.print(f"[yellow]{d['label']}[/]")
        return
    for refusal in d.get("refusals", []):
        console.print(
            f"  round {refusal['round']} {refusal['kind']}: "
            f"{refusal.get('site') or 'node ' + str(refusal['node'])} refused "
            f"({refusal['reason']}): {refusal['detail']}"
        )
    if "model_path" in d:
        console.print(
            f"Global model: {d['model_path']['path']} in the {d['model_path']['store']} store "
            f"({d['model_bytes']:,} bytes of tensors)"
        )


def render_groups(
    regions: dict[str, Any],
    title: str = "by kind of motion (stationary: standing now; turning or braking: in the "
    "next 3 s)",
) -> None:
    """Each site's errors per kind of motion, beside constant velocity's."""
    table = Table(
        "site",
        "motion",
        "test samples",
        "ADE m",
        "CV ADE m",
        "ADE / CV",
        "FDE m",
        "CV FDE m",
        "miss @2 m",
        "CV miss",
        title=title,
    )
    for site, r in regions.items():
        cv_groups = (r.get("baselines") or {}).get("constant_velocity", {}).get("groups", {})
        for name, g in (r.get("groups") or {}).items():
            cv = cv_groups.get(name, {})
            ratio = f"{g['ade'] / cv['ade']:.2f}" if cv.get("ade") else "-"
            table.add_row(
                site,
                name.replace("_", " "),
                str(g["samples"]),
                _metre(g["ade"]),
                _metre(cv.get("ade")),
                ratio,
                _metre(g["fde"]),
                _metre(cv.get("fde")),
                _metre(g["miss_rate"]),
                _metre(cv.get("miss_rate")),
            )
    if table.row_count:
        console.print(table)


def render_fine_tuned(regions: dict[str, Any], tuned: dict[str, Any]) -> None:
    """The global model fine-tuned at each site, beside the global model and constant
    velocity, overall and per kind of motion."""
    if not tuned:
        return
    table = Table(
        "site",
        "steps",
        "federated ADE m",
        "fine-tuned ADE m",
        "CV ADE m",
        "fine-tuned / CV",
        "kept at",
        title="the federated model fine-tuned at each site (the weights stay there)",
    )
    for site, t in tuned.items():
        cv = regions.get(site, {}).get("baselines", {}).get("constant_velocity", {})
        ratio = f"{t['ade'] / cv['ade']:.2f}" if t.get("ade") is not None and cv.get("ade") else "-"
        table.add_row(
            site,
            str(t["steps"]),
            _metre(t.get("global_ade")),
            _metre(t.get("ade")),
            _metre(cv.get("ade")),
            ratio,
            f"{t['weights']['store']}: {t['weights']['path']}",
        )
    console.print(table)
    render_groups(
        {
            site: {**t, "baselines": regions.get(site, {}).get("baselines", {})}
            for site, t in tuned.items()
        },
        title="fine-tuned, by kind of motion",
    )


def render_funnel(funnels: dict[str, dict[str, int]]) -> None:
    """Where each site's data went, from the clips it holds to the samples it trains on."""
    shown = {site: f for site, f in funnels.items() if f}
    if not shown:
        return
    table = Table("", *shown, title="each site's data, from clips to samples")
    # Each funnel lists its steps in the order data passes them (FUNNEL).
    for step in dict.fromkeys(step for f in shown.values() for step in f):
        table.add_row(
            step.replace("_", " "), *(f"{f[step]:,}" if step in f else "-" for f in shown.values())
        )
    console.print(table)


def _metre(value: Any) -> str:
    return (
        "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"
    )


def _render(d: dict[str, Any]) -> None:
    private = d["options"]["dp"] is not None
    table = Table(
        "site",
        "test samples",
        "ADE m",
        "FDE m",
        "miss @2 m",
        "CV ADE m",
        "CV FDE m",
        "CV miss",
        "ADE / CV",
        *(["epsilon"] if private else []),
        title=f"run {d['run']}: {d['model']['name']}, each site on its own data (local)",
    )
    for site, r in d["regions"].items():
        if r.get("error"):
            table.add_row(site, "0", *(["-"] * 7), *(["-"] if private else []))
            continue
        cv = r["baselines"]["constant_velocity"]
        ratio = (
            f"{r['ade'] / cv['ade']:.2f}"
            if r["ade"] is not None and cv["ade"] not in (None, 0)
            else "-"
        )
        table.add_row(
            site,
            str(r["samples"]),
            _metre(r["ade"]),
            _metre(r["fde"]),
            _metre(r["miss_rate"]),
            _metre(cv["ade"]),
            _metre(cv["fde"]),
            _metre(cv["miss_rate"]),
            ratio,
            *([_metre(r["epsilon"])] if private else []),
        )
    console.print(table)
    render_groups({site: r for site, r in d["regions"].items() if not r.get("error")})
    render_funnel({s: r.get("dataset", {}).get("funnel", {}) for s, r in d["regions"].items()})
    for site, r in d["regions"].items():
        if r.get("error"):
            console.print(f"  {site}: {r['error']['message']} ({r['error']['hint']})")
    console.print(f"Results: {d['folder']}/run.json; weights in each site's store")


def register(app: typer.Typer) -> None:
    app.command()(train)
