"""``onshore report``: the reports regulators ask for, as HTML and PDF in ``--out``."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from onshore.cli.output import JsonOption, ProjectOption, console, emit
from onshore.cli.store import SiteOption
from onshore.settings import load_project

__all__ = ["app"]

app = typer.Typer(
    help="Reports for regulators (CN annual, outbound dossier, GDPR Chapter V, 28 CFR 202), "
    "every figure traced to ledger entries.",
    no_args_is_help=True,
)

OutOption = Annotated[
    Path | None,
    typer.Option("--out", help="Folder for the HTML and PDF (default: <project>/reports/<site>/)."),
]


def _run(
    kind: str,
    site: str | None,
    project_path: Path | None,
    out: Path | None,
    as_json: bool,
    **options: Any,
) -> None:
    from onshore.reports import build_report, write_report

    project = load_project(project_path)
    site = project.site_for(site)
    report = build_report(project, kind, site, **options)
    paths = write_report(report, out or project.root / "reports" / site)
    data = {"paths": {k: str(v) for k, v in paths.items()}, "report": report.as_dict()}

    def render(d: dict[str, Any]) -> None:
        for fig in d["report"]["figures"]:
            console.print(f"{fig['label']}: [bold]{fig['value']}[/]")
        console.print(f"wrote {d['paths']['html']} and {d['paths']['pdf']}")

    emit(data, as_json, render)


@app.command("cn-annual")
def cn_annual(
    site: SiteOption = None,
    year: Annotated[
        int, typer.Option("--year", help="Calendar year reported (default: this year).")
    ] = datetime.now(UTC).year,
    out: OutOption = None,
    project: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """China's annual automotive data security report (due 15 December)."""
    _run("cn-annual", site, project, out, as_json, year=year)


@app.command("outbound-dossier")
def outbound_dossier(
    recipient: Annotated[str, typer.Option("--recipient", help="The receiving legal entity.")],
    site: SiteOption = None,
    out: OutOption = None,
    project: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """The facts a CN security-assessment application for one recipient needs."""
    _run("outbound-dossier", site, project, out, as_json, recipient=recipient)


@app.command("eu-transfers")
def eu_transfers(
    site: SiteOption = None,
    out: OutOption = None,
    project: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """The record of transfers to third countries under GDPR Chapter V."""
    _run("eu-transfers", site, project, out, as_json)


@app.command("us-bulk-data")
def us_bulk_data(
    site: SiteOption = None,
    out: OutOption = None,
    project: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """The record of transactions under 28 CFR Part 202 (trailing 12 months)."""
    _run("us-bulk-data", site, project, out, as_json)
