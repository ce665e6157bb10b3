"""``onshore plan``: transfer the data out, train where it lies, both, or a model per market."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from onshore.cli.output import JsonOption, ProjectOption, console, emit, err_console
from onshore.errors import ConfigError
from onshore.settings import load_project

__all__ = ["register"]


def plan(
    markets: Annotated[
        str | None,
        typer.Option(help="Markets the model should be licensed in, e.g. CN,EU,US."),
    ] = None,
    model_years: Annotated[
        str | None,
        typer.Option("--model-years", help="Model years, e.g. 2026-2030 (default: five)."),
    ] = None,
    horizon: Annotated[
        str | None,
        typer.Option(help="The day the model is wanted by (default: a year from today)."),
    ] = None,
    centre: Annotated[
        str | None,
        typer.Option(
            help="The site data would move to (default: one in the coordinator's "
            "country, else the one with the most compute)."
        ),
    ] = None,
    profile: Annotated[
        str, typer.Option(help="What 'transfer out' moves: a de-identification profile or raw.")
    ] = "training",
    purpose: Annotated[str, typer.Option(help="The purpose the gates are asked about.")] = (
        "adas_training"
    ),
    steps: Annotated[
        int | None,
        typer.Option(min=1, help="Training steps per site (default: the latest federated run's)."),
    ] = None,
    today: Annotated[
        str | None, typer.Option(help="Plan as of this day (default: today), e.g. 2027-01-04.")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Folder for the memo (default: <project>/plans/<plan>/)."),
    ] = None,
    project: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Compare transferring the data out, training where it lies (federated), a hybrid and
    per-market models: the law at each site (asked of its own gate), the data, the compute,
    the expected model and the markets. Writes plan.json and a decision memo (HTML, PDF)."""
    from onshore.plan import PLANS_DIR, PlanOptions, make_plan, write_memo
    from onshore.release.licence import parse_model_years

    proj = load_project(project)
    day = _date(today, "--today") if today else datetime.now(UTC).date()
    years: tuple[int, ...] = ()
    if model_years:
        parsed = parse_model_years(model_years)
        years = tuple(range(parsed.first, parsed.last + 1))
    options = PlanOptions(
        today=day,
        markets=tuple(m.strip().upper() for m in markets.split(",") if m.strip())
        if markets
        else (),
        model_years=years,
        horizon=_date(horizon, "--horizon") if horizon else None,
        centre=centre,
        profile=profile,
        purpose=purpose,
        steps=steps,
    )
    if options.horizon is not None and options.horizon < day:
        raise ConfigError(f"--horizon {horizon} is before {day.isoformat()}")

    def say(message: str) -> None:
        err_console.print(f"[bold cyan]>[/] {message}")

    result = make_plan(proj, options, say=say)
    folder = out or proj.root / PLANS_DIR / result["plan"]
    folder.mkdir(parents=True, exist_ok=True)
    from onshore.files import write_json

    result["memo"] = write_memo(result, folder)
    write_json(folder / "plan.json", result)
    if out is not None:
        write_json(proj.root / PLANS_DIR / result["plan"] / "plan.json", result)
    emit(result, as_json, render)


def _date(text: str, option: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"{option} {text!r} is not a date", hint="e.g. 2027-06-30") from None


def render(d: dict[str, Any]) -> None:
    """The options side by side, each one's timeline per site, and the recommendation."""
    options = d["options"]
    table = Table(
        "",
        *(o["id"] for o in options),
        title=f"plan {d['plan']}: as of {d['today']}, "
        f"horizon {d['horizon']}, markets {', '.join(d['markets'])}",
    )
    rows: list[tuple[str, Any]] = [
        ("sites by the horizon", lambda o: ", ".join(o["included"]) or "none"),
        ("start", lambda o: o["start"]),
        ("model ready", lambda o: o["ready"]),
        ("vehicles", lambda o: f"{o['vehicles']:,}"),
        ("personal data crossing", lambda o: f"{o['personal_subjects_crossing']:,} subjects"),
        ("bytes crossing", lambda o: f"{sum(o['bytes_crossing'].values()):,}"),
        (
            "training",
            lambda o: (
                f"{o['compute']['seconds'] / 60:.1f} min at " + ", ".join(o["compute"]["where"])
            ),
        ),
        ("market-years licensable", lambda o: str(o["licensable_market_years"])),
    ]
    for region in d["sites"]:
        rows.append((f"ADE {region}", lambda o, r=region: _ade(o["model"].get(r, {}))))
    for label, cell in rows:
        table.add_row(label, *(escape(str(cell(o))) for o in options))
    console.print(table)
    for o in options:
        console.print(f"[bold]{escape(o['title'])}[/]")
        for site_id, row in o["sites"].items():
            law = row.get("law") or {}
            when = row.get("earliest") or "never"
            via = f" after {law['via']} ({law['lead_time']['typical']})" if law.get("via") else ""
            console.print(
                f"  {site_id}: {escape(row['role'])}; from {when}{escape(via)}", highlight=False
            )
        for event in o.get("timeline", []):
            console.print(f"    {event['date']}  {escape(event['event'])}", highlight=False)
        refused = [
            f"{m} {y}" for m, ys in o["markets"].items() for y, v in ys.items() if not v["allowed"]
        ]
        if refused:
            console.print(f"  not licensable: {', '.join(refused)}", highlight=False)
        for blocker in o["blockers"]:
            console.print(f"  [yellow]{escape(blocker)}[/]")
    console.print(
        f"[bold]Recommended[/]: {escape(d['recommended'])}, decided by {escape(d['decided_by'])}"
    )
    if d.get("memo"):
        console.print(f"Memo: {d['memo']['html']}, {d['memo']['pdf']}")


def _ade(model: dict[str, Any]) -> str:
    if model.get("ade") is None:
        return "-"
    kind = "measured" if model.get("measured") else "estimate"
    return f"{model['ade']:.3f} ({kind})"


def register(app: typer.Typer) -> None:
    app.command("plan")(plan)
