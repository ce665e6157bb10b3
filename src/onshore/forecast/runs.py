"""A training run's folder, ``runs/<run>/`` in the folder of the party that ran it: the one
place that knows its layout.

Local runs (:mod:`onshore.forecast.local`) and federated ones (:mod:`onshore.federation`) keep
their options, results and logs there, and the console, releases and plans read them back.
Every file in it is written whole (:func:`onshore.files.write_atomically`), so a run killed at
any point leaves each file as it was before or as it is after, and a rerun of the same run goes
on from what is there. What a run keeps in a site's object store (weights, checkpoints) goes
under :func:`run_object`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from onshore.errors import ConfigError, FileSystemError
from onshore.files import read_json, write_atomically, write_json
from onshore.settings import Project

__all__ = ["OPTIONS", "RUNS_DIR", "RunFolder", "run_object"]

RUNS_DIR: Final = "runs"
OPTIONS: Final = "options.json"
"""The options a run was started with: a rerun under the same id must give the same."""
_RUN_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass(frozen=True, slots=True)
class RunFolder:
    """The folder of run ``run`` in the project at ``root``."""

    root: Path
    run: str

    @classmethod
    def of(cls, project: Project, run: str) -> RunFolder:
        """Run ``run``'s folder in ``project``. Raises :class:`ConfigError` for an id that is
        not a plain name (letters, digits, ``.``, ``_`` and ``-``)."""
        if not _RUN_ID.fullmatch(run) or run in (".", ".."):
            raise ConfigError(f"run id {run!r}: letters, digits, '.', '_' and '-' only")
        return cls(project.root, run)

    @classmethod
    def all(cls, project: Project) -> list[RunFolder]:
        """Every run folder of ``project``, by id."""
        folder = project.root / RUNS_DIR
        if not folder.is_dir():
            return []
        return [
            cls(project.root, p.name)
            for p in sorted(folder.iterdir())
            if p.is_dir() and _RUN_ID.fullmatch(p.name)
        ]

    @classmethod
    def each(cls, project: Project, name: str) -> Iterator[tuple[RunFolder, Any]]:
        """Each run folder of ``project`` that holds ``name``, by id, with its JSON. A file
        that is not JSON is passed over here (reading that run on its own says why)."""
        for folder in cls.all(project):
            try:
                value = folder.read(name)
            except (OSError, FileSystemError):
                continue
            if value is not None:
                yield folder, value

    @property
    def path(self) -> Path:
        return self.root / RUNS_DIR / self.run

    def file(self, name: str) -> Path:
        """The path of ``name`` (relative, ``/``-separated) in the folder."""
        return self.path / name

    def read(self, name: str) -> Any:
        """The JSON in ``name``, or ``None`` before it is written. Raises
        :class:`~onshore.errors.FileSystemError` for a file that is not JSON."""
        return read_json(self.file(name))

    def write(self, name: str, value: Any) -> None:
        """``value`` as JSON in ``name``, written whole."""
        write_json(self.file(name), value)

    def write_bytes(self, name: str, data: bytes) -> None:
        """``data`` in ``name``, written whole."""
        write_atomically(self.file(name), data)

    def start(self, options: Mapping[str, Any]) -> None:
        """Record the ``options`` the run starts with, or check them against those of its
        earlier start. Raises :class:`ConfigError` if the run was started with others."""
        earlier = self.read(OPTIONS)
        if earlier is not None and earlier != orjson.loads(orjson.dumps(options)):
            raise ConfigError(
                f"run {self.run} was started with other options",
                hint="give a new --run id, or the options of that run",
            )
        self.write(OPTIONS, options)

    def object_path(self, name: str) -> str:
        """Where the run keeps ``name`` in a site's (or the coordinator's) object store."""
        return run_object(self.run, name)


def run_object(run: str, name: str) -> str:
    """Where run ``run`` keeps ``name`` in a site's (or the coordinator's) object store: the
    party that holds the store need not hold the run's folder."""
    return f"derived/{RUNS_DIR}/{run}/{name}"
