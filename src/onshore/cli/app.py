"""The ``onshore`` command: registers the command groups and turns errors into exit codes."""

from __future__ import annotations

import sys

import orjson
import typer

from onshore.cli import demo, fleet, project, store
from onshore.errors import OnshoreError

__all__ = ["app", "main"]

app = typer.Typer(
    name="onshore",
    help="Train one driving model on every region's fleet data, keeping each region's data "
    "where its law says it must stay.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
project.register(app)
app.add_typer(fleet.app, name="fleet")
store.register(app)
demo.register(app)


def main() -> None:
    """Entry point: run the CLI; an :class:`OnshoreError` becomes its message and exit code."""
    try:
        app()
    except OnshoreError as exc:
        if "--json" in sys.argv:
            sys.stdout.write(orjson.dumps(exc.to_dict(), option=orjson.OPT_INDENT_2).decode())
            sys.stdout.write("\n")
        else:
            sys.stderr.write(f"error [{exc.code}]: {exc.message}\n")
            if exc.hint:
                sys.stderr.write(f"  hint: {exc.hint}\n")
        sys.exit(exc.exit_code)
