"""``onshore console``: serve the web console; ``onshore console users``: who may sign in."""

from __future__ import annotations

import secrets
import sys
from typing import Annotated, Any

import typer
from rich.table import Table

from onshore.cli.output import JsonOption, ProjectOption, console, emit, err_console
from onshore.errors import ConfigError
from onshore.settings import load_project

__all__ = ["app"]

app = typer.Typer(
    help="The web console: sites, approvals, the gates' decisions, ledgers, training, releases "
    "and reports, by role. Without a subcommand it serves the console.",
    invoke_without_command=True,
)
users_app = typer.Typer(
    help="Who may sign in to the console, and in what role.", no_args_is_help=True
)
app.add_typer(users_app, name="users")

_LOOPBACK = ("127.0.0.1", "::1", "localhost")


@app.callback()
def serve(
    ctx: typer.Context,
    host: Annotated[
        str, typer.Option(help="Address to listen on (loopback by default).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0 picks a free one).")] = 8765,
    project: ProjectOption = None,
) -> None:
    """Serve the console until Ctrl-C."""
    if ctx.invoked_subcommand is not None:
        return
    from onshore.console import UserStore, serve

    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port}: a port is between 0 and 65535")
    loaded = load_project(project)
    if not UserStore(loaded).users():
        err_console.print(
            "[yellow]No console user yet[/]: add one with "
            f"'onshore console users add NAME --role auditor --project {loaded.root}'"
        )
    if host not in _LOOPBACK:
        err_console.print(
            f"[yellow]Listening on {host} over plain HTTP[/]: put the console behind a TLS "
            "proxy before anyone signs in from another machine."
        )

    def ready(url: str) -> None:
        # One plain line (never wrapped): scripts and tests read the URL from it.
        print(f"onshore console for {loaded.root} at {url} (Ctrl-C stops)", flush=True)

    serve(loaded, host, port, ready=ready)


@users_app.command("add")
def add_user(
    name: Annotated[str, typer.Argument(help="User name (lower-case letters, digits, . _ - @).")],
    role: Annotated[str, typer.Option(help="site-operator, coordinator-engineer or auditor.")],
    site: Annotated[
        str | None, typer.Option(help="The site a site operator runs (only for that role).")
    ] = None,
    password_stdin: Annotated[
        bool,
        typer.Option(
            "--password-stdin",
            help="Read the password from the first line of stdin (else one is generated and "
            "printed once).",
        ),
    ] = False,
    project: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Add a console user. The password is stored only as a scrypt hash."""
    from onshore.console import Role, UserStore

    try:
        chosen = Role(role)
    except ValueError:
        raise ConfigError(
            f"--role {role!r} is not a console role",
            hint=f"one of {', '.join(r.value for r in Role)}",
        ) from None
    password = sys.stdin.readline().rstrip("\n") if password_stdin else secrets.token_urlsafe(15)
    user = UserStore(load_project(project)).add(name, chosen, password, site=site)
    data: dict[str, Any] = {"name": user.name, "role": str(user.role), "site": user.site}
    if not password_stdin:
        data["password"] = password

    def render(d: dict[str, Any]) -> None:
        console.print(f"added {d['name']} ({d['role']}{', ' + d['site'] if d['site'] else ''})")
        if "password" in d:
            console.print(f"password (shown once, keep it safe): {d['password']}")

    emit(data, as_json, render)


@users_app.command("list")
def list_users(project: ProjectOption = None, as_json: JsonOption = False) -> None:
    """List the console's users and their roles (never their passwords)."""
    from onshore.console import UserStore

    rows = [
        {"name": u.name, "role": str(u.role), "site": u.site}
        for u in UserStore(load_project(project)).users()
    ]

    def render(data: list[dict[str, Any]]) -> None:
        table = Table("user", "role", "site")
        for u in data:
            table.add_row(u["name"], u["role"], u["site"] or "")
        console.print(table if data else "no console users: onshore console users add ...")

    emit(rows, as_json, render)


@users_app.command("remove")
def remove_user(
    name: Annotated[str, typer.Argument(help="The user to remove.")],
    project: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Remove a console user; their session stops working at the next page."""
    from onshore.console import UserStore

    UserStore(load_project(project)).remove(name)
    emit({"removed": name}, as_json, lambda d: console.print(f"removed {d['removed']}"))
