"""``onshore transfer``: move data between sites, through the gate and into both ledgers."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

import typer
from rich.markup import escape

from onshore.cli.output import JsonOption, ProjectOption, console, emit, err_console
from onshore.errors import ConfigError, TransferDenied
from onshore.settings import load_project

__all__ = ["register"]


def transfer(
    destination: Annotated[str, typer.Option("--to", help="The peer site to send it to.")],
    dataset: Annotated[
        str,
        typer.Option(
            help="What to send: raw, or a de-identification profile (export, training), with "
            "optional filters, e.g. 'export:since=2026-03-01,consent=true' or "
            "'raw:clips=ID+ID'."
        ),
    ],
    purpose: Annotated[str, typer.Option(help="Why, e.g. adas_training (the rulebooks' ids).")],
    origin: Annotated[
        str | None,
        typer.Option("--from", help="This party's site (checked; the default is this folder's)."),
    ] = None,
    recipient: Annotated[
        str | None,
        typer.Option(help="The receiving legal entity (default: the destination site's)."),
    ] = None,
    on: Annotated[
        str | None, typer.Option("--date", help="Day of the transfer, YYYY-MM-DD (today).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Decide and report; record and send nothing.")
    ] = False,
    project: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Send data from this party's site to a peer site if its gate allows it. Run in the
    origin's folder: the decision, allowed or denied, goes into its ledger; an allowed
    transfer goes to the destination's service, which checks and records what it receives.
    Exits 10 when denied; 19 when the destination does not answer (nothing is half-done: rerun
    once it is up)."""
    from onshore.parties.identity import load_peers
    from onshore.rulebook.evaluate import Recipient
    from onshore.transfer import transfer as run_transfer

    proj = load_project(project)
    day = None
    if on is not None:
        try:
            day = date.fromisoformat(on)
        except ValueError:
            raise ConfigError(f"--date {on!r} is not a date (YYYY-MM-DD)") from None
    who = None
    if recipient is not None:
        peer = load_peers(proj).get_peer(destination)
        who = Recipient(name=recipient, country=peer.country, linked_to=peer.linked_to)

    def say(message: str) -> None:
        err_console.print(f"[bold cyan]>[/] {message}")  # stderr, with --json too

    report = run_transfer(
        proj,
        destination,
        dataset,
        purpose,
        origin_id=origin,
        recipient=who,
        day=day,
        dry_run=dry_run,
        say=say,
    )
    emit(report.as_dict(), as_json, _render)
    if not report.allowed:
        raise typer.Exit(TransferDenied.exit_code)


def _render(d: dict[str, Any]) -> None:
    data = d["dataset"]
    items = ", ".join(
        f"{i['category']} ({i['subjects']:,} {i['deid_state']})" for i in data["data"]
    )
    console.print(
        f"{d['from']} -> {d['to']}: {data['dataset']} ({data['clips']} clips, "
        f"{data['objects']} objects) for {d['purpose']} to {escape(d['recipient']['name'])}"
    )
    console.print(f"  holds: {items}")
    decision = d["decision"]
    verdict = "[bold green]allowed[/]" if d["allowed"] else "[bold red]denied[/]"
    console.print(
        f"  {verdict}" + ("" if d["status"] == "denied" else f"; {d['status'].replace('_', ' ')}")
    )
    if decision["approval"]:
        a = decision["approval"]
        console.print(f"  under approval {escape(a['id'])} ({a['type']}) {escape(a['reference'])}")
    elif decision["mechanisms"] and not d["allowed"]:
        console.print(f"  would need one of: {', '.join(decision['mechanisms'])}")
    for reason in decision["reasons"][:6]:
        console.print(f"  - {escape(reason)}")
    if d["copied"]["objects"]:
        console.print(f"  copied {d['copied']['objects']} objects ({d['copied']['bytes']:,} bytes)")
    if d["ledger"]:
        console.print("  ledger: " + ", ".join(f"{k} #{v}" for k, v in d["ledger"].items()))


def register(app: typer.Typer) -> None:
    app.command()(transfer)
