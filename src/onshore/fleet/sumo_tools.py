"""Running SUMO's programs and Python tools as subprocesses.

SUMO comes from the ``eclipse-sumo`` wheel. Its package is located with ``find_spec`` rather than
imported, because importing ``sumo`` writes ``SUMO_HOME`` and ``PROJ_LIB`` into this process's
environment, which would point pyproj at SUMO's copy of the PROJ database. The variables SUMO's
binaries need are set only in the environment of the child processes.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Final

from onshore.errors import SimulationError

__all__ = [
    "ToolRun",
    "run_tool",
    "run_tools",
    "sumo_binary",
    "sumo_home",
    "sumo_tool",
    "sumo_version",
]

_STDERR_TAIL: Final = 2000
"""Characters of a failed tool's stderr quoted in the error: enough for SUMO's last errors."""


@cache
def sumo_home() -> Path:
    """The directory of the installed ``sumo`` package (SUMO_HOME: ``bin/``, ``tools/``, ``data/``).

    Raises :class:`SimulationError` when the ``eclipse-sumo`` wheel is not installed.
    """
    spec = importlib.util.find_spec("sumo")
    if spec is None or not spec.submodule_search_locations:
        raise SimulationError(
            "SUMO is not installed in this Python environment",
            hint="pip install eclipse-sumo",
        )
    return Path(next(iter(spec.submodule_search_locations)))


@cache
def sumo_version() -> str:
    """The installed SUMO version (part of every generated network's cache key)."""
    try:
        return importlib.metadata.version("eclipse-sumo")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def sumo_binary(name: str) -> Path:
    """Path of a SUMO program (``sumo``, ``netconvert``, ``netgenerate``, ``duarouter``)."""
    return sumo_home() / "bin" / name


def sumo_tool(relative: str) -> Path:
    """Path of a file shipped under SUMO's ``tools/`` or ``data/`` directory tree."""
    return sumo_home() / relative


def _env() -> dict[str, str]:
    home = sumo_home()
    env = dict(os.environ)
    env["SUMO_HOME"] = str(home)
    # SUMO's libproj is older than pyproj's; each must find its own proj.db (PROJ_LIB is read by
    # the older library, PROJ_DATA by newer ones).
    env["PROJ_LIB"] = env["PROJ_DATA"] = str(home / "data" / "proj")
    return env


@dataclass(frozen=True, slots=True)
class ToolRun:
    """One command to run: ``what`` names it in errors (``netconvert``, ``randomTrips (bus)``)."""

    what: str
    args: tuple[str, ...]


def _command(args: Sequence[str]) -> list[str]:
    # Python tools run under this interpreter, so they import the sumolib shipped beside them.
    if args and args[0].endswith(".py"):
        return [sys.executable, *args]
    return list(args)


def run_tool(run: ToolRun, *, cwd: Path) -> None:
    """Run one SUMO program or tool in ``cwd`` and wait for it.

    Raises :class:`SimulationError` with the tail of its stderr when it cannot start or fails.
    """
    run_tools([run], cwd=cwd)


def run_tools(runs: Sequence[ToolRun], *, cwd: Path) -> None:
    """Run independent commands concurrently (one per CPU at most) and wait for all of them.

    Raises :class:`SimulationError` naming the first one that failed, with its stderr tail.
    """
    limit = max(1, os.cpu_count() or 1)
    env = _env()
    pending = list(runs)
    failures: list[SimulationError] = []
    while pending:
        batch, pending = pending[:limit], pending[limit:]
        started: list[tuple[ToolRun, subprocess.Popen[bytes]]] = []
        try:
            for run in batch:
                try:
                    process = subprocess.Popen(
                        _command(run.args),
                        cwd=cwd,
                        env=env,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE,
                    )
                except OSError as exc:
                    raise SimulationError(
                        f"{run.what} could not be started: {exc}",
                        hint="check that the eclipse-sumo wheel is installed completely",
                    ) from exc
                started.append((run, process))
        finally:
            for run, process in started:
                _, stderr = process.communicate()
                if process.returncode != 0:
                    failures.append(_failure(run, process.returncode, stderr))
        if failures:
            raise failures[0]


def read_output(path: Path, tool: str, what: str) -> ET.Element:
    """The root of an XML file ``tool`` wrote; :class:`SimulationError` saying that it wrote
    no readable ``what`` when the file is missing or malformed."""
    try:
        return ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise SimulationError(f"{tool} wrote no readable {what}: {exc}") from exc


def _failure(run: ToolRun, returncode: int, stderr: bytes) -> SimulationError:
    tail = stderr.decode("utf-8", "replace").strip()[-_STDERR_TAIL:]
    return SimulationError(
        f"{run.what} failed with exit code {returncode}: {tail or '(no output on stderr)'}",
        hint="the message above is SUMO's own; a too small network or vehicle count is a "
        "common cause",
    )
