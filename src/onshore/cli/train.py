"""``onshore train``: train the driving model at each site on its own data, and evaluate it on
the site's own test split beside the constant-velocity baseline."""

from __future__ import annotations

import math
from typing import Annotated, Any

import typer
from rich.table import Table

from onshore.cli.output import JsonOption, ProjectOption, console, emit, err_console
from onshore.settings import load_project

__all__ = ["register"]


def train(
    sites: Annotated[
        list[str] | None,
        typer.Option("--site", "-s", help="Site to train at (repeat; default: every site)."),
    ] = None,
    model: Annotated[
        str, typer.Option(help="Model: object_encoder, past_mlp, constant_velocity.")
    ] = "object_encoder",
    steps: Annotated[int, typer.Option(min=0, help="Optimiser steps at each site.")] = 1500,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Samples per step (expected, with DP).")
    ] = 128,
    lr: Annotated[float, typer.Option(min=0.0, help="Adam learning rate.")] = 2e-3,
    weight_decay: Annotated[float, typer.Option(min=0.0, help="AdamW weight decay.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of weights, batches and DP noise.")] = 0,
    dp: Annotated[
        bool, typer.Option("--dp", help="DP-SGD: sample-level differential privacy.")
    ] = False,
    epsilon: Annotated[
        float, typer.Option(min=0.0, help="With --dp: the budget, epsilon at --delta.")
    ] = 8.0,
    delta: Annotated[float, typer.Option(help="With --dp: delta of the budget.")] = 1e-5,
    noise_multiplier: Annotated[
        float, typer.Option(min=0.0, help="With --dp: noise, in units of --max-grad-norm.")
    ] = 1.0,
    max_grad_norm: Annotated[
        float, typer.Option(min=0.0, help="With --dp: per-sample gradient clipping norm.")
    ] = 1.0,
    run: Annotated[
        str | None,
        typer.Option(help="Run id (default: a new one); an unfinished run's id resumes it."),
    ] = None,
    project: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Train at each site on its own data alone (local mode): samples from its consented,
    de-identified training clips, split by vehicle; prints ADE, FDE and miss rate on each
    site's own test split beside constant velocity. Weights stay in each site's store."""
    from onshore.model.local import LocalOptions, train_sites_locally
    from onshore.model.nets import ModelSpec, build_model
    from onshore.model.train import DPConfig

    proj = load_project(project)
    build_model(model)  # an unknown name fails here, before any site is read
    options = LocalOptions(
        model=ModelSpec(model),
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        seed=seed,
        dp=DPConfig(epsilon, delta, noise_multiplier, max_grad_norm) if dp else None,
    )

    def say(message: str) -> None:
        if not as_json:
            err_console.print(f"[bold cyan]>[/] {message}")

    summary = train_sites_locally(proj, sites, options, run=run, say=say)
    emit(summary, as_json, _render)


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
    for site, r in d["regions"].items():
        if r.get("error"):
            console.print(f"  {site}: {r['error']['message']} ({r['error']['hint']})")
    console.print(f"Results: {d['folder']}/run.json; weights in each site's store")


def register(app: typer.Typer) -> None:
    app.command()(train)
