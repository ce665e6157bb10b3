"""Files a party writes in its own folder, written whole: a reader sees the old file or the new
one, never part of one, and a crash right after the write loses nothing.

Run summaries, options, licences, plans, node lists and Flower's configuration all go through
:func:`write_atomically`; what goes into a site's object store has the store's own writes
(:mod:`onshore.store.objects`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

from onshore.errors import FileSystemError

__all__ = ["read_json", "write_atomically", "write_json"]


def write_atomically(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """Write ``data`` aside, make it durable, rename it into place and sync the folder. With
    ``mode``, the file has those permissions from the moment it has its name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        with open(part, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            part.chmod(mode)
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, value: Any) -> None:
    """``value`` as indented JSON, written whole (:func:`write_atomically`)."""
    write_atomically(path, orjson.dumps(value, option=orjson.OPT_INDENT_2))


def read_json(path: Path) -> Any:
    """The JSON value in ``path``, or ``None`` when there is no such file. Raises
    :class:`~onshore.errors.FileSystemError` naming the file when it holds something else."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise FileSystemError(
            f"{path}: not JSON ({exc})",
            hint="onshore writes this file whole; if it was edited by hand, restore or remove it",
        ) from None
