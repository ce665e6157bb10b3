"""``onshore classify`` and ``onshore deidentify``: what the law calls each clip, and the
de-identified versions of a site's clips."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from onshore.cli.output import (
    JsonOption,
    ProjectOption,
    WorkersOption,
    console,
    emit,
    err_console,
    progress_bar,
)
from onshore.cli.store import SiteOption
from onshore.settings import load_project
from onshore.sites.compute import Engine
from onshore.store import SiteStore

__all__ = ["register"]


def classify(
    site: SiteOption = None,
    project: ProjectOption = None,
    as_of: Annotated[
        str | None,
        typer.Option("--as-of", help="End of the counting windows, YYYY-MM-DD (default: today)."),
    ] = None,
    evidence: Annotated[
        bool, typer.Option("--evidence", help="Also print every clip's labels and evidence.")
    ] = False,
    workers: WorkersOption = None,
    as_json: JsonOption = False,
) -> None:
    """Label every clip of the site with its data categories and evidence; count subjects.
    ``--json`` includes every clip's labels (``clip_labels``)."""
    from onshore.classify import classify_site
    from onshore.errors import ConfigError
    from onshore.rulebook.loader import project_rulebooks

    try:
        day = None if as_of is None else date.fromisoformat(as_of)
    except ValueError:
        raise ConfigError(f"--as-of {as_of!r} is not a date (YYYY-MM-DD)") from None
    proj = load_project(project)
    site = proj.site_for(site)
    book = project_rulebooks(proj).for_origin(proj.site(site).jurisdiction)
    with (
        SiteStore.open(proj, site) as opened,
        Engine.for_site(proj.site(site).compute, workers) as engine,
        progress_bar(f"classify {site}{engine.label()}", None, unit="clips") as bar,
    ):
        task = bar.task_ids[0]
        summary = classify_site(
            opened,
            as_of=day,
            rulebook=book,
            engine=engine,
            clip_labels=evidence or as_json,
            on_clip=lambda n, total: bar.update(task, completed=n, total=total),
        )

    def render(d: dict[str, Any]) -> None:
        table = Table(
            "category",
            "clips",
            "amount",
            "vehicles",
            "this year",
            "last 12 months",
            title=f"{d['site']}: {d['clips']} clips, {d['zones']} sensitive areas",
        )
        windows = d["windows"]
        for name, c in d["categories"].items():
            table.add_row(
                name,
                str(c["clips"]),
                f"{c['count']:,}",
                str(c["vehicles"]),
                str(windows["calendar_year"]["vehicles"].get(name, 0)),
                str(windows["trailing_12_months"]["vehicles"].get(name, 0)),
            )
        console.print(table)
        subjects = d["subjects"]
        if subjects["persons"] is None:
            console.print(f"{subjects['vehicles']} vehicles; no camera frames, so no persons seen")
        else:
            console.print(
                f"{subjects['vehicles']} vehicles; in the camera frames of "
                f"{d['clips_with_frames']} clips, at most {subjects['persons']} persons and "
                f"{subjects['plates']} licence plates"
            )
        if evidence:
            for clip_id, labels in d["clip_labels"].items():
                console.print(f"[bold]{escape(clip_id)}[/]")
                for label in labels:
                    console.print(f"  {label['category']}: {escape(label['evidence'])}")
        if "rulebook" in d:
            book = d["rulebook"]
            console.print(
                f"What the {book['jurisdiction']} rulebook ({book['version']}) calls them:"
            )
            for name, c in d["categories"].items():
                console.print(f"  {name}: {', '.join(c['legal_classes']) or 'no legal class'}")

    emit({**summary, "compute": engine.describe()}, as_json, render)


def deidentify(
    profile: Annotated[
        str, typer.Option(help="Profile: training, export, or one of onshore.toml.")
    ],
    site: SiteOption = None,
    project: ProjectOption = None,
    workers: WorkersOption = None,
    as_json: JsonOption = False,
) -> None:
    """Write a de-identified version of the site's clips into its own store, with the checks
    that prove it. Raw clips are never modified and never leave."""
    from onshore.deidentify import deidentify_site, resolve_profile
    from onshore.sites.keystore import load_keystore

    proj = load_project(project)
    site = proj.site_for(site)
    chosen = resolve_profile(profile, proj.settings.deidentify_profiles)
    keys = load_keystore(proj.keystore_path(proj.site(site)))
    with (
        SiteStore.open(proj, site) as opened,
        Engine.for_site(proj.site(site).compute, workers) as engine,
        progress_bar(
            f"deidentify {site} ({profile}){engine.label()}", None, unit="vehicles"
        ) as bar,
    ):
        task = bar.task_ids[0]
        summary = deidentify_site(
            opened,
            chosen,
            secret=keys.hmac_secret,
            engine=engine,
            on_vehicle=lambda n, total: bar.update(task, completed=n, total=total),
        )

    def render(d: dict[str, Any]) -> None:
        removed = ", ".join(f"{k} {v:,} rows" for k, v in d["removed"].items()) or "nothing"
        console.print(
            f"{d['site']} / {d['profile']}: {d['clips']} of {d['clips_in']} clips, "
            f"{d['rows']:,} of {d['rows_in']:,} rows kept (removed: {removed}); "
            f"state [bold]{d['state']}[/]"
        )
        frames = d["frames"]
        if frames["in"]:
            dropped = ", ".join(f"{k} {v}" for k, v in frames["dropped"].items() if v) or "none"
            console.print(
                f"  frames: {frames['kept']} of {frames['in']} kept, {frames['faces_masked']} "
                f"faces and {frames['plates_masked']} plates masked (dropped: {dropped})"
            )
        for warning in d["warnings"]:
            err_console.print(f"[yellow]warning:[/] {escape(warning)}")
        for check in d["checks"]:
            mark = "[green]held[/]" if check["held"] else "[red]failed[/]"
            console.print(f"  {mark} {check['check']}: {check['reason']}")

    emit({**summary, "compute": engine.describe()}, as_json, render)


def register(app: typer.Typer) -> None:
    app.command()(classify)
    app.command()(deidentify)
