"""How commands print: JSON for scripts (``--json``), rich text for people, progress on stderr."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

__all__ = [
    "JsonOption",
    "ProjectOption",
    "WorkersOption",
    "console",
    "emit",
    "err_console",
    "progress_bar",
]

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document for scripts.")]
WorkersOption = Annotated[
    int | None,
    typer.Option(
        "--workers",
        "-w",
        help="Worker processes (on Ray when more than 1; default: the site's compute workers). "
        "With RAY_ADDRESS set, the work runs on that Ray cluster.",
    ),
]
ProjectOption = Annotated[
    Path | None,
    typer.Option(
        "--project",
        "-p",
        help="Project folder (default: $ONSHORE_PROJECT, or the nearest folder upwards "
        "holding onshore.toml).",
        show_default=False,
    ),
]

# Rich assumes 80 columns when output is not a terminal; logs and pipes have room for tables.
console = Console(width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 120)


def _default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def emit(data: Any, as_json: bool, render: Callable[[Any], None]) -> None:
    """Print ``data`` as JSON on stdout, or hand it to ``render`` for people."""
    if as_json:
        sys.stdout.write(
            orjson.dumps(data, default=_default, option=orjson.OPT_INDENT_2).decode() + "\n"
        )
    else:
        render(data)


@contextmanager
def progress_bar(
    description: str, total: float | None, *, unit: str = "files"
) -> Iterator[Progress]:
    """A progress bar on stderr, shown only when stderr is a terminal."""
    columns: list[Any] = [TextColumn("[bold]{task.description}"), BarColumn()]
    if unit == "bytes":
        columns += [DownloadColumn(), TransferSpeedColumn()]
    else:
        columns += [MofNCompleteColumn()]
    columns += [TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(
        *columns, console=err_console, disable=not err_console.is_terminal, transient=False
    ) as progress:
        progress.add_task(description, total=total)
        yield progress
