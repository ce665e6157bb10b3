"""``onshore erase``, ``onshore access``, ``onshore consent withdraw`` and
``onshore retention run``: drivers' rights and storage periods, at the site that holds the
data."""

from __future__ import annotations

import sys
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from onshore.cli.output import JsonOption, ProjectOption, console, emit, err_console
from onshore.cli.store import SiteOption
from onshore.settings import load_project

__all__ = ["register"]

VinOption = Annotated[
    str, typer.Option("--vin", help="The vehicle's VIN (17 letters and digits, no I, O or Q).")
]


def _say(message: str) -> None:
    err_console.print(f"> {message}", highlight=False)


def erase(
    vin: VinOption,
    reason: Annotated[
        str | None,
        typer.Option(
            "--reason",
            help="Why, e.g. the request's reference (kept in the ledger: no personal data).",
        ),
    ] = None,
    site: SiteOption = None,
    project: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Erase a vehicle's data at this site (clips, frames, de-identified outputs, caches) and
    ask every party that received a copy to erase it, each confirming in its signed ledger.
    The ledger names the vehicle by a keyed hash, never its VIN. Exits 19 while a recipient
    has not confirmed (rerun: the erasure completes what is left, once)."""
    from onshore.rights.erase import erase_vehicle

    report = erase_vehicle(load_project(project), vin, reason=reason, site_id=site, say=_say)

    def render(d: dict[str, Any]) -> None:
        if d["status"] == "already_erased":
            console.print(
                f"{d['site']}: this vehicle's data was erased on "
                f"{d['finished_at'] or d['started_at']} (request {d['request']}); the site "
                "holds nothing more of it"
            )
            return
        console.print(
            f"{d['site']}: erased {d['clips']} clips ({d['objects']} objects) of vehicle "
            f"{d['vehicle'][:16]}…; request {d['request']}, status [bold]{d['status']}[/]"
        )
        for peer, held in d["recipients"].items():
            extra = f" ({held['reason']})" if held.get("reason") else ""
            console.print(f"  {peer}: {held['objects']} objects, {held['status']}{extra}")

    emit(report.as_dict(), as_json, render)
    if report.status == "incomplete":
        sys.exit(19)


def access(
    vin: VinOption,
    out: Annotated[Path, typer.Option("--out", help="A new folder for the answer.")],
    site: SiteOption = None,
    project: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Everything the site holds about a vehicle (its clips, camera frames, de-identified
    outputs, labels, consent) and what was sent where and when, in Parquet, JSON and the
    images themselves, for a driver's access request."""
    from onshore.rights.access import access_vehicle

    data = access_vehicle(load_project(project), vin, out, site_id=site)
    emit(
        data,
        as_json,
        lambda d: console.print(
            f"{d['site']}: {d['clips']} clips, {d['frames']} frames, {d['deidentified']} "
            f"de-identified outputs and {d['transfers']} transfers written to {d['out']} "
            f"({d['files']} files, {d['bytes'] / 1e6:.1f} MB; manifest.json lists them)"
        ),
    )


consent_app = typer.Typer(help="A driver's consent, withdrawn for a purpose.", no_args_is_help=True)


@consent_app.command("withdraw")
def withdraw(
    vin: VinOption,
    purpose: Annotated[
        str,
        typer.Option(
            "--purpose",
            help="The purpose withdrawn: a purpose's name (e.g. adas_training), training "
            "(every training purpose) or all.",
        ),
    ],
    site: SiteOption = None,
    project: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """From now on, the vehicle's clips serve no use for ``--purpose``: no training sample
    for a training purpose, no transfer for it. Recorded in the ledger."""
    from onshore.rights.consent import withdraw_consent

    data = withdraw_consent(load_project(project), vin, purpose, site_id=site)
    emit(
        data,
        as_json,
        lambda d: console.print(
            f"{d['site']}: consent for {d['purpose']} "
            + (
                f"was withdrawn already, on {d['withdrawn_at']}"
                if d["status"] == "already_withdrawn"
                else f"withdrawn ({d['clips']} clips left out from now on)"
            )
        ),
    )


retention_app = typer.Typer(help="The site's storage periods, enforced.", no_args_is_help=True)


@retention_app.command("run")
def retention_run(
    as_of: Annotated[
        datetime | None,
        typer.Option("--as-of", formats=["%Y-%m-%d"], help="The day to apply the periods on."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would be deleted; delete nothing.")
    ] = False,
    site: SiteOption = None,
    project: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete raw clips stored longer than ``raw_days`` and de-identified outputs stored
    longer than ``deidentified_days`` (the site's ``retention`` in onshore.toml), the deletions
    listed in one ledger entry."""
    from onshore.rights.retention import run_retention

    day: date | None = as_of.date() if as_of is not None else None
    data = run_retention(load_project(project), as_of=day, dry_run=dry_run, site_id=site)

    def render(d: dict[str, Any]) -> None:
        if d.get("note"):
            console.print(d["note"])
            return
        verb = "would delete" if d["dry_run"] else "deleted"
        console.print(
            f"{d['site']} on {d['as_of']}: {verb} {d['raw']['clips']} raw clips stored before "
            f"{d['raw']['stored_before'] or '-'} and {d['deidentified']['outputs']} "
            f"de-identified outputs stored before {d['deidentified']['stored_before'] or '-'}"
        )

    emit(data, as_json, render)


def register(app: typer.Typer) -> None:
    app.command()(erase)
    app.command()(access)
    app.add_typer(consent_app, name="consent")
    app.add_typer(retention_app, name="retention")
