"""``onshore ledger show`` and ``onshore ledger verify``: read a site's ledger, and check it
against its key, its store and the other sites' ledgers."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from onshore.cli.output import JsonOption, ProjectOption, console, emit
from onshore.cli.store import SiteOption
from onshore.errors import LedgerTampered
from onshore.settings import load_project

__all__ = ["app"]

app = typer.Typer(help="Show and verify a site's signed ledger.", no_args_is_help=True)


@app.command()
def show(
    site: SiteOption,
    project: ProjectOption = None,
    since: Annotated[
        int | None, typer.Option("--since", min=0, help="First entry to show (its seq).")
    ] = None,
    kind: Annotated[
        str | None, typer.Option("--kind", help="Only entries of this kind, e.g. transfer_in.")
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="At most this many.")] = None,
    as_json: JsonOption = False,
) -> None:
    """List the site's ledger entries in order, with their payloads, hashes and signatures."""
    from onshore.ledger import Ledger
    from onshore.store import SiteStore

    warning = None
    with SiteStore.open(load_project(project), site) as opened:
        ledger = Ledger.open(opened.catalogue)
        try:
            head = ledger.head()
        except LedgerTampered as exc:  # still show what is there: that is how it gets looked at
            head, warning = None, str(exc)
        entries = ledger.entries(since=since, kind=kind, limit=limit)
    data = {
        "site": site,
        "head": None if head is None else head.as_dict(),
        "warning": warning,
        "entries": [e.as_dict() for e in entries],
    }

    def render(d: dict[str, Any]) -> None:
        if d["warning"]:
            console.print(f"[red]{d['warning']}[/]: run 'onshore ledger verify --site {site}'")
        elif d["head"] is None:
            console.print(f"{site}: no ledger yet")
            return
        head = d["head"]
        title = f"{site}: ledger" + (
            "" if head is None else f" to entry {head['seq']}, key {head['key'][:16]}"
        )
        table = Table("seq", "time (UTC)", "kind", "payload", "hash", title=title)
        for e in d["entries"]:
            table.add_row(
                str(e["seq"]),
                e["time"][:19].replace("T", " "),
                e["kind"],
                _summary(e["payload"]),
                e["hash"][:12],
            )
        console.print(table)

    emit(data, as_json, render)


def _summary(payload: dict[str, Any] | str, width: int = 70) -> str:
    if isinstance(payload, str):  # a damaged entry: its stored text
        return payload if len(payload) <= width else payload[: width - 3] + "..."
    parts = []
    for key, value in payload.items():
        shown = f"{len(value)} item(s)" if isinstance(value, list) else str(value)
        parts.append(f"{key}={shown}")
    text = ", ".join(parts)
    return text if len(text) <= width else text[: width - 3] + "..."


@app.command()
def verify(
    site: SiteOption,
    project: ProjectOption = None,
    shallow: Annotated[
        bool,
        typer.Option(
            "--shallow", help="Check listed objects exist, without re-hashing their contents."
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Check the site's ledger: chain, signatures and pinned key, the heads the other sites
    recorded (each way), and that store and ledger agree; ``--site coordinator`` (the
    coordinator's id) checks the coordinator's chain, signatures and pinned key. Exits nonzero
    listing the problems."""
    from onshore.ledger import verify_site
    from onshore.release.records import verify_coordinator

    loaded = load_project(project)
    if site == loaded.settings.coordinator.id:
        report = verify_coordinator(loaded)
    else:
        report = verify_site(loaded, site, check_hashes=not shallow)

    def render(d: dict[str, Any]) -> None:
        peers = ", ".join(d["peers"]) or "none"
        summary = (
            f"{d['entries']} entries, {d['peer_heads']} cross-recorded heads (peers: {peers}), "
            f"{d['objects']} listed objects, {d['received']} received"
        )
        if d["ok"]:
            console.print(f"{d['site']}: ledger verified: {summary}")
        else:
            console.print(f"[red]{d['site']}: {len(d['problems'])} problem(s)[/]: {summary}")
            for p in d["problems"]:
                where = "" if p["seq"] is None else f" entry {p['seq']}"
                console.print(f"  [red]{p['check']}[/] {p['site']}{where}: {p['reason']}")
        for note in d["notes"]:
            console.print(f"  [yellow]note[/] {note}")

    emit(report.as_dict(), as_json, render)
    if not report.ok:
        raise typer.Exit(LedgerTampered.exit_code)
