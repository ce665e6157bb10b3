"""The ``onshore`` command: registers the command groups and turns errors into exit codes."""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
from typing import Any, NoReturn

import orjson
import typer

# typer < 0.21 (which Flower 1.42 pins) raises click's exceptions for usage errors.
from click.exceptions import ClickException as TyperException

from onshore.cli import (
    console,
    deid,
    demo,
    federation,
    fleet,
    gate,
    ledger,
    party,
    plan,
    project,
    read,
    release,
    report,
    rights,
    rulebook,
    store,
    train,
    transfer,
)
from onshore.errors import FileSystemError, OnshoreError
from onshore.processes import stop_with_parent

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
party.register(app)
app.add_typer(fleet.app, name="fleet")
app.add_typer(rulebook.app, name="rulebook")
app.add_typer(gate.gate_app, name="gate")
app.add_typer(gate.approvals_app, name="approvals")
app.add_typer(ledger.app, name="ledger")
store.register(app)
deid.register(app)
transfer.register(app)
read.register(app)
train.register(app)
plan.register(app)
rights.register(app)
app.add_typer(federation.app, name="federation")
app.add_typer(federation.site_app, name="site")
app.add_typer(release.release_app, name="release")
app.add_typer(release.license_app, name="license")
app.add_typer(report.app, name="report")
app.add_typer(console.app, name="console")
demo.register(app)


def main() -> NoReturn:
    """Entry point: run the CLI. An :class:`OnshoreError` (or a file-system error, or a usage
    error) becomes its message, its code and its exit code; as JSON under ``--json``. The
    process then ends as :func:`_end` says."""
    try:
        _main()
    except SystemExit as exc:
        if isinstance(exc.code, str):
            sys.stderr.write(exc.code + "\n")
        _end(exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1))
    _end(0)


def _end(code: int) -> NoReturn:
    """End the process once the command is done: output flushed, other threads joined and the
    exit handlers run (as a normal exit does), but not the native libraries' own teardown. In
    that teardown onnxruntime, Arrow or OpenCV has aborted a command whose work was done and
    durable ("terminate called without an active exception", exit -6, under load), failing a
    run that had succeeded."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _main() -> None:
    stop_with_parent()
    as_json = "--json" in sys.argv
    try:
        code = app(standalone_mode=False)
    except OnshoreError as exc:
        _fail(exc.to_dict(), as_json)
    except OSError as exc:
        error = FileSystemError(
            f"{exc.filename or 'a file'}: {exc.strerror or exc}",
            hint="check the path, its permissions and the free space",
        )
        _fail(error.to_dict(), as_json)
    except TyperException as exc:  # a usage error: unknown option, bad value
        if not as_json:
            show = getattr(exc, "show", None)
            if callable(show):
                show()
            else:
                sys.stderr.write(f"error: {exc.format_message()}\n")
            sys.exit(exc.exit_code)
        _fail(
            {
                "error": "usage",
                "message": exc.format_message(),
                "hint": "see --help",
                "exit_code": exc.exit_code,
            },
            True,
        )
    except (typer.Abort, KeyboardInterrupt):
        sys.stderr.write("aborted\n")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


def _fail(error: dict[str, Any], as_json: bool) -> NoReturn:
    """The error as JSON on stdout under ``--json`` (for the script), and always as a line on
    stderr (for the person or the log watching it run)."""
    if as_json:
        sys.stdout.write(orjson.dumps(error, option=orjson.OPT_INDENT_2).decode() + "\n")
    sys.stderr.write(f"error [{error['error']}]: {error['message']}\n")
    if error.get("hint"):
        sys.stderr.write(f"  hint: {error['hint']}\n")
    sys.exit(int(error["exit_code"]))
