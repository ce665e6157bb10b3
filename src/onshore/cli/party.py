"""``onshore serve`` and ``onshore party``: run a party's service, and exchange identities."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.table import Table

from onshore.cli.output import JsonOption, ProjectOption, console, emit, err_console
from onshore.settings import load_project

__all__ = ["app", "register"]

app = typer.Typer(
    help="This party's identity and its peers': export, trust, list.", no_args_is_help=True
)


@app.command()
def identity(
    project: ProjectOption = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write it to this file (default: stdout).")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Accepted for scripts: the identity is JSON anyway.")
    ] = False,
) -> None:
    """Print this party's public identity (signed JSON): give it to every peer, which adds it
    with 'onshore party trust FILE'. It holds no secret."""
    del as_json
    from onshore.parties.identity import export_identity

    data = orjson.dumps(export_identity(load_project(project)), option=orjson.OPT_INDENT_2)
    if out is None:
        sys.stdout.write(data.decode() + "\n")
    else:
        out.write_bytes(data + b"\n")
        err_console.print(f"wrote {out}")


@app.command()
def trust(
    identity_file: Annotated[
        Path, typer.Argument(metavar="IDENTITY.json", help="A peer's identity file.")
    ],
    project: ProjectOption = None,
    replace: Annotated[
        bool,
        typer.Option("--replace", help="Replace a peer on file whose key or certificate changed."),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Add a peer's identity to this party's folder. Check the key fingerprint it prints with
    the peer (by phone, say) before relying on it; restart 'onshore serve' to trust it."""
    from onshore.parties.identity import trust_peer

    peer = trust_peer(load_project(project), identity_file, replace=replace)

    def render(d: dict[str, Any]) -> None:
        console.print(f"trusted {d['id']} ({d['role']}, {d['entity']}) at {d['endpoint']}")
        console.print(f"  ledger key fingerprint: {d['key']}")
        console.print(f"  TLS certificate:        {d['tls']}")
        console.print("  check both with the peer; restart 'onshore serve' so it trusts it")

    emit(peer.summary(), as_json, render)


@app.command()
def peers(
    project: ProjectOption = None,
    check: Annotated[
        bool, typer.Option("--check", help="Ask each peer's service for its head (a witness).")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """List the peers on file; with --check, whether each answers and what its head is."""
    from onshore.parties.identity import load_peers

    loaded = load_project(project)
    rows = [p.summary() for p in load_peers(loaded).values()]
    if check:
        from onshore.parties.witness import witness_peers

        answers = {w["peer"]: w for w in witness_peers(loaded, record=False)}
        for row in rows:
            row["check"] = answers.get(row["id"])

    def render(data: list[dict[str, Any]]) -> None:
        table = Table("peer", "role", "law", "entity", "endpoint", "key", title="peers on file")
        if check:
            table.add_column("answers")
        for r in data:
            cells = [
                r["id"],
                r["role"],
                r["jurisdiction"] or "-",
                r["entity"],
                r["endpoint"],
                r["key"][:16],
            ]
            if check:
                found = r.get("check") or {}
                cells.append(
                    f"head {found['head']['seq']}" if found.get("head") else found.get("error", "-")
                )
            table.add_row(*cells)
        console.print(table)

    emit(rows, as_json, render)


def serve(
    project: ProjectOption = None,
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (default: [party] host).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port to listen on (default: [party] port; 0: any free).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Run this party's service until Ctrl-C: HTTPS with client certificates, only peers on
    file admitted, every message signed and every refusal recorded. With --json, one line is
    printed once it listens."""
    from onshore.parties.identity import LocalParty, load_peers
    from onshore.parties.tls import server_context
    from onshore.service.app import create_app
    from onshore.service.server import run_server

    loaded = load_project(project)
    local = LocalParty.of(loaded)
    peers_on_file = load_peers(loaded)
    context = server_context(local.tls, [p.tls_certificate for p in peers_on_file.values()])
    _logging(loaded.root)
    app_ = create_app(loaded)
    party = app_.state.party
    listen_host = host or local.settings.host
    listen_port = local.settings.port if port is None else port

    def ready(bound: int) -> None:
        data: dict[str, Any] = {
            "party": local.id,
            "endpoint": local.settings.url,
            "listening": f"{listen_host}:{bound}",
            "pid": os.getpid(),
            "peers": sorted(peers_on_file),
        }
        if as_json:
            sys.stdout.write(orjson.dumps(data).decode() + "\n")
            sys.stdout.flush()
        else:
            console.print(
                f"{local.id}: serving on https://{listen_host}:{bound} (peers reach it at "
                f"{local.settings.url}); peers on file: {', '.join(data['peers']) or 'none'}"
            )
            console.print("  Ctrl-C stops it")
        if not peers_on_file:
            err_console.print(
                "[yellow]no peer on file: every connection will be refused; add peers with "
                "'onshore party trust FILE'[/]"
            )

    run_server(
        app_,
        host=listen_host,
        port=listen_port,
        context=context,
        on_refused=party.record_tls_refusal,
        on_ready=ready,
    )


def _logging(root: Path) -> None:
    """The service logs to stderr and to ``logs/service.log`` in the party's folder."""
    folder = root / "logs"
    folder.mkdir(exist_ok=True)
    logger = logging.getLogger("onshore.service")
    if logger.handlers:
        return
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in (logging.FileHandler(folder / "service.log"), logging.StreamHandler()):
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def register(root: typer.Typer) -> None:
    root.command()(serve)
    root.add_typer(app, name="party")
