"""``onshore ledger show``, ``verify`` and ``witness``: read a party's ledger, check it against
its key, its store and what its peers hold of it, and exchange heads with the peers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.table import Table

from onshore.cli.output import JsonOption, ProjectOption, console, emit
from onshore.errors import ConfigError, LedgerTampered
from onshore.ledger import Ledger
from onshore.settings import Project, load_project

__all__ = ["app"]

app = typer.Typer(help="Show and verify a site's signed ledger.", no_args_is_help=True)


PartyOption = Annotated[
    str | None,
    typer.Option(
        "--site",
        "-s",
        help="Whose ledger: a site id or the coordinator's (default: this party's own).",
    ),
]


@contextmanager
def _read_ledger(project: Project, site: str | None) -> Iterator[tuple[str, Ledger]]:
    """The ledger asked for, read-only: this party's own in a party's folder (a party opens no
    other party's), or a site's or the coordinator's in a lab project."""
    from onshore.store.catalogue import Catalogue

    party = project.party
    if party is not None:
        if site is not None and site != party.id:
            raise ConfigError(
                f"{project.root} is the folder of {party.id}: it reads only its own ledger",
                hint=f"run the command in {site}'s folder, or ask {site} with "
                "'onshore ledger witness'",
            )
        site = party.id
    if site is None:
        raise ConfigError("which ledger? pass --site (a site id or the coordinator's)")
    coordinator = project.settings.coordinator
    settings = coordinator if site == coordinator.id else project.site(site)
    catalogue = Catalogue(project.catalogue_url(settings), site)
    try:
        yield site, Ledger.open(catalogue)
    finally:
        catalogue.close()


@app.command()
def show(
    site: PartyOption = None,
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
    """List a ledger's entries in order, with their payloads, hashes and signatures: this
    party's own (a site's or the coordinator's), or in a lab project the one --site names."""
    warning = None
    with _read_ledger(load_project(project), site) as (name, ledger):
        try:
            head = ledger.head()
        except LedgerTampered as exc:  # still show what is there: that is how it gets looked at
            head, warning = None, str(exc)
        entries = ledger.entries(since=since, kind=kind, limit=limit)
    data = {
        "site": name,
        "head": None if head is None else head.as_dict(),
        "warning": warning,
        "entries": [e.as_dict() for e in entries],
    }

    def render(d: dict[str, Any]) -> None:
        if d["warning"]:
            console.print(f"[red]{d['warning']}[/]: run 'onshore ledger verify --site {name}'")
        elif d["head"] is None:
            console.print(f"{name}: no ledger yet")
            return
        head = d["head"]
        title = f"{name}: ledger" + (
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
    site: PartyOption = None,
    project: ProjectOption = None,
    shallow: Annotated[
        bool,
        typer.Option(
            "--shallow", help="Check listed objects exist, without re-hashing their contents."
        ),
    ] = False,
    offline: Annotated[
        bool, typer.Option("--offline", help="Do not ask the peers about the heads held.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Check this party's ledger: chain, signatures and pinned key, and for a site that store
    and ledger agree; then ask each peer whether the head of it this ledger holds is still in
    its chain, and which head of this party it holds (a peer that does not answer is a note).
    In a lab project, --site names the ledger and the other sites' are read locally. Exits
    11 listing the problems."""
    from onshore.gate.audit import verify_site
    from onshore.release.records import verify_coordinator

    loaded = load_project(project)
    if loaded.party is not None:
        from onshore.gate.audit import verify_party

        if site is not None and site != loaded.party.id:
            raise ConfigError(
                f"{loaded.root} is the folder of {loaded.party.id}: it verifies its own ledger",
                hint=f"run 'onshore ledger verify' in {site}'s folder",
            )
        report = verify_party(loaded, check_hashes=not shallow, witness=not offline)
    elif site is None:
        raise ConfigError("which ledger? pass --site (a site id or the coordinator's)")
    elif site == loaded.settings.coordinator.id:
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


@app.command()
def witness(project: ProjectOption = None, as_json: JsonOption = False) -> None:
    """Exchange ledger heads with every peer: each side records the other's head when it
    changed, so a party that rewrites its history later is caught by its peers. Exits 11 if a
    peer's answer shows a problem, 19 if no peer answered."""
    from onshore.errors import PeerUnreachable
    from onshore.parties.witness import witness_peers

    rows = witness_peers(load_project(project), record=True)

    def render(data: list[dict[str, Any]]) -> None:
        for r in data:
            if "error" in r:
                console.print(f"[yellow]{r['peer']}[/]: not reached: {r['error']}")
                continue
            head = r["head"] or {}
            state = "[green]holds[/]" if not r["problems"] else "[red]problems[/]"
            console.print(
                f"{r['peer']}: head {head.get('seq')} ({str(head.get('hash'))[:12]}), {state}"
                + ("" if r.get("recorded") is None else f", recorded in entry {r['recorded']}")
            )
            for p in r["problems"]:
                console.print(f"  [red]{p['check']}[/] {p['site']}: {p['reason']}")

    emit(rows, as_json, render)
    if any(r.get("problems") for r in rows):
        raise typer.Exit(LedgerTampered.exit_code)
    if rows and all("error" in r for r in rows):
        raise typer.Exit(PeerUnreachable.exit_code)
