"""``onshore init`` and ``onshore sites``: create a project and list its sites."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from onshore.cli.output import JsonOption, ProjectOption, console, emit
from onshore.settings import load_project
from onshore.sites import EXAMPLES, describe_sites, init_project

__all__ = ["register"]


def init(
    folder: Annotated[Path, typer.Argument(help="Folder to create the project in.")],
    example: Annotated[
        str, typer.Option(help=f"Project template: {', '.join(EXAMPLES)}.")
    ] = "three-regions",
    as_json: JsonOption = False,
) -> None:
    """Create a project: onshore.toml, each site's store folder and its keystore."""
    project = init_project(folder, example)
    data = {
        "project": str(project.root),
        "config": str(project.config_path),
        "sites": describe_sites(project),
    }

    def render(d: dict[str, Any]) -> None:
        console.print(f"Created {d['config']} with {len(d['sites'])} sites:")
        for site in d["sites"]:
            console.print(f"  {site['id']:<14} {site['jurisdiction']}  {site['entity']}")
        console.print(f"Next: onshore fleet simulate --project {d['project']} --site SITE ...")

    emit(data, as_json, render)


def sites(project: ProjectOption = None, as_json: JsonOption = False) -> None:
    """List the project's sites: jurisdiction, entity, store, catalogue, compute, keystore."""
    rows = describe_sites(load_project(project))

    def render(data: list[dict[str, Any]]) -> None:
        table = Table("site", "law", "entity", "store", "compute", "keystore")
        for s in data:
            c = s["compute"]
            table.add_row(
                s["id"],
                s["jurisdiction"],
                s["entity"],
                s["store"],
                f"{c['device']} x{c['relative_throughput']}",
                s["keystore_status"]
                if s["keystore_status"] == "ok"
                else f"[red]{s['keystore_status']}[/]",
            )
        console.print(table)

    emit(rows, as_json, render)


def register(app: typer.Typer) -> None:
    app.command()(init)
    app.command()(sites)
