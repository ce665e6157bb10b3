"""``onshore read``: ask a site for one of its views, as a console page does, through its gate."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape

from onshore.cli.output import JsonOption, ProjectOption, console, emit
from onshore.errors import ConfigError, TransferDenied
from onshore.settings import load_project

__all__ = ["register"]


def read(
    site: Annotated[str, typer.Argument(help="The site to read, e.g. cn-shanghai.")],
    view: Annotated[
        str,
        typer.Argument(help="summary, approvals, clips, decisions, reports, report or verify."),
    ] = "summary",
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param", help="A view parameter KEY=VALUE, e.g. page=2 or name=... (repeat)."
        ),
    ] = None,
    user: Annotated[
        str, typer.Option(help="Who reads, as the site records it (default: your login).")
    ] = "",
    project: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Read a view of a site from this party: another party's site answers through its service,
    and its gate decides (a read from abroad is a transfer like any other, recorded in its
    ledger; the same read again today is recorded once). Exits 10 when the gate withholds it."""
    import getpass

    from onshore.reads import read as read_view

    params: dict[str, Any] = {}
    for item in param or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--param {item!r} is not KEY=VALUE")
        params[key] = int(value) if value.isdigit() else value
    who = user or getpass.getuser()
    answer = read_view(load_project(project), site, view, params, user=who, role="query")
    data = {"site": site, "view": view, "params": params, **answer}

    def render(d: dict[str, Any]) -> None:
        access = d["access"]
        verdict = "[bold green]shown[/]" if access["allowed"] else "[bold red]withheld[/]"
        where = (
            f" (ledger entry {access['ledger_seq']})"
            if access.get("ledger_seq") is not None
            else ""
        )
        console.print(f"{site} {view}: {verdict}, {access['how']}{where}")
        for reason in ((access.get("decision") or {}).get("reasons") or [])[:4]:
            console.print(f"  - {escape(reason)}")
        if d["data"] is not None:
            shown = {k: v for k, v in d["data"].items() if not isinstance(v, list | dict)}
            lists = {k: len(v) for k, v in d["data"].items() if isinstance(v, list)}
            console.print(f"  {shown} {lists}")

    emit(data, as_json, render)
    if not answer["access"]["allowed"]:
        raise typer.Exit(TransferDenied.exit_code)


def register(app: typer.Typer) -> None:
    app.command()(read)
