"""A site's object store: clips as content-addressed Parquet, and the quarantine.

Any fsspec URL works (a local folder by default, ``memory://`` in tests, ``s3://`` in
production). Writes are atomic: on a local disk an object is written under ``.staging/``, synced
and renamed into place; on object stores a single PUT is already all-or-nothing. Readers never
see a partial object, and an object that exists is never rewritten.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import fsspec
import orjson

from onshore.errors import ConfigError, StoreError
from onshore.settings import redact_url

__all__ = [
    "CLIPS_DIR",
    "FRAMES_DIR",
    "QUARANTINE_DIR",
    "RECEIVED_DIR",
    "STAGING_DIR",
    "ZONES_PATH",
    "ObjectStore",
    "StoredObject",
    "sha256",
]

CLIPS_DIR: Final = "clips"
FRAMES_DIR: Final = "frames"
"""Camera frames of clips, one Parquet object per clip, beside the clips."""
QUARANTINE_DIR: Final = "quarantine"
RECEIVED_DIR: Final = "received"
"""Where a site keeps what it received from other sites. Nothing but :meth:`ObjectStore.receive`
writes there, and nothing but :mod:`onshore.transfer` calls it (a test reads the source tree to
hold that), so every byte that crossed from another site came through the gate."""
STAGING_DIR: Final = ".staging"
ZONES_PATH: Final = "reference/sensitive_areas.geojson"
"""Where a site keeps the GeoJSON of its sensitive areas (military, government zones)."""


def sha256(data: bytes) -> str:
    """Hex SHA-256 of ``data``: the address of an object in a store."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class StoredObject:
    """Where an object landed and whether this call wrote it."""

    path: str
    """Path relative to the store root."""
    size: int
    written: bool
    """False when the object was already there (idempotent put)."""


class ObjectStore:
    """A site's store at ``url``. All paths it returns are relative to the store root."""

    def __init__(self, url: str) -> None:
        self.url = redact_url(url)
        """The store's URL with any password replaced: safe for messages and logs."""
        try:
            fs, root = fsspec.core.url_to_fs(url)
        except ImportError as exc:
            raise ConfigError(
                f"store {self.url} needs a package that is not installed: {exc}",
                hint="for s3:// stores: pip install 'onshore[s3]'",
            ) from exc
        except ValueError as exc:
            raise ConfigError(f"cannot open store {self.url}: {exc}") from exc
        self._fs: Any = fs
        self._root = str(root).rstrip("/")
        self._local = "file" in _protocols(fs)
        self._made: set[str] = set()
        """Folders this store has created or found, so each is made once per process."""

    def _abs(self, path: str) -> str:
        return f"{self._root}/{path}"

    @staticmethod
    def clip_path(digest: str) -> str:
        """Where the clip whose Parquet hashes to ``digest`` lives."""
        return f"{CLIPS_DIR}/{digest[:2]}/{digest}.parquet"

    @staticmethod
    def frames_path(digest: str) -> str:
        """Where the frames object whose Parquet hashes to ``digest`` lives."""
        return f"{FRAMES_DIR}/{digest[:2]}/{digest}.parquet"

    def put(self, path: str, data: bytes) -> StoredObject:
        """Write ``data`` at ``path`` atomically and durably, unless an object is there."""
        (stored,) = self.put_many([(path, data)])
        return stored

    def put_many(self, items: Sequence[tuple[str, bytes | Path]]) -> list[StoredObject]:
        """Write several objects as :meth:`put` does, each given as bytes or as a local file to
        copy (streamed, never read whole). On a local disk each folder they land in is synced
        once for the lot rather than once per object. When this returns, every object is
        durable. An error reading a source file is raised as it is (``OSError``).

        Refuses paths under :data:`RECEIVED_DIR`: data from another site arrives only through
        :meth:`receive`.
        """
        for path, _ in items:
            if _received(path):
                raise StoreError(
                    f"{path}: only a transfer through the gate writes under {RECEIVED_DIR}/",
                    hint="move data between sites with 'onshore transfer'",
                )
        return self._put_many(items)

    def receive(
        self, items: Sequence[tuple[str, bytes | Path]], *, synced: bool = False
    ) -> list[StoredObject]:
        """Write objects another site sent, under :data:`RECEIVED_DIR`, as :meth:`put_many`
        writes (a file from :meth:`incoming_file` is moved into place, not copied). Only
        :mod:`onshore.transfer` calls this, after the sending site's gate allowed the transfer
        and recorded it in its signed ledger, and after every object's hash was checked.
        ``synced``: the caller made the files from :meth:`incoming_file` durable already."""
        for path, _ in items:
            if not _received(path):
                raise StoreError(f"{path}: received data must go under {RECEIVED_DIR}/")
        return self._put_many(list(items), synced=synced)

    def _put_many(
        self, items: Sequence[tuple[str, bytes | Path]], *, synced: bool = False
    ) -> list[StoredObject]:
        stored, folders = [], set()
        for path, content in items:
            size = len(content) if isinstance(content, bytes) else content.stat().st_size
            target = self._abs(path)
            try:
                if self._fs.exists(target):
                    stored.append(StoredObject(path, size, written=False))
                    continue
                parent = target.rsplit("/", 1)[0]
                if parent not in self._made:
                    self._fs.makedirs(parent, exist_ok=True)
                    self._made.add(parent)
                if self._local:
                    self._write_local(target, content, synced=synced)
                    folders.add(parent)
                elif isinstance(content, bytes):
                    self._fs.pipe_file(target, content)
                else:
                    self._fs.put_file(str(content), target)
            except OSError as exc:
                if not isinstance(content, bytes) and exc.filename == str(content):
                    raise
                raise StoreError(f"cannot write {path} to store {self.url}: {exc}") from exc
            stored.append(StoredObject(path, size, written=True))
        try:
            for folder in sorted(folders):
                # The rename is durable only once its folder is: before the catalogue says so.
                dir_fd = os.open(folder, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        except OSError as exc:
            raise StoreError(f"cannot sync store {self.url}: {exc}") from exc
        return stored

    def incoming_file(self) -> Path:
        """A fresh file to write an arriving object into: in the store's staging folder on a
        local disk (so :meth:`receive` renames it into place), else in the system's temporary
        folder. The caller deletes it if it is not received."""
        if self._local:
            return Path(self._staging_name())
        import tempfile

        fd, name = tempfile.mkstemp(prefix="onshore-incoming-", suffix=".part")
        os.close(fd)
        return Path(name)

    def _staging_name(self) -> str:
        staging = self._abs(STAGING_DIR)
        if staging not in self._made:
            os.makedirs(staging, exist_ok=True)
            self._made.add(staging)
        return f"{staging}/{os.getpid()}-{uuid.uuid4().hex}.part"

    def _write_local(self, target: str, content: bytes | Path, *, synced: bool = False) -> None:
        """Write a local file aside, make it durable, then rename it into place."""
        if isinstance(content, Path) and content.parent == Path(self._abs(STAGING_DIR)):
            # An arriving object already written into staging: make it durable, move it.
            if not synced:
                with open(content, "rb") as f:
                    os.fdatasync(f.fileno())
            os.replace(content, target)
            return
        part = self._staging_name()
        try:
            with open(part, "wb") as f:
                if isinstance(content, bytes):
                    f.write(content)
                else:
                    with content.open("rb") as src:
                        shutil.copyfileobj(src, f, 1 << 20)
                f.flush()
                os.fdatasync(f.fileno())
            os.replace(part, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(part)

    def read(self, path: str) -> bytes:
        """The bytes of the object at ``path``."""
        try:
            return bytes(self._fs.cat_file(self._abs(path)))
        except FileNotFoundError:
            raise StoreError(f"{path} is not in store {self.url}") from None
        except OSError as exc:
            raise StoreError(f"cannot read {path} from store {self.url}: {exc}") from exc

    def exists(self, path: str) -> bool:
        return bool(self._fs.exists(self._abs(path)))

    def size(self, path: str) -> int:
        return int(self._fs.size(self._abs(path)))

    def delete(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._fs.rm_file(self._abs(path))

    def find(self, prefix: str) -> Iterator[str]:
        """Paths of the objects below ``prefix``, sorted."""
        base = self._abs(prefix)
        if not self._fs.exists(base):
            return
        strip = len(self._root) + 1
        for found in sorted(self._fs.find(base)):
            yield str(found)[strip:] if str(found).startswith(self._root) else str(found)

    def sizes(self, prefix: str) -> dict[str, int]:
        """Size of every object below ``prefix``, from one listing (one request on S3)."""
        base = self._abs(prefix)
        if not self._fs.exists(base):
            return {}
        strip = len(self._root) + 1
        found = self._fs.find(base, detail=True)
        return {str(k)[strip:]: int(v["size"]) for k, v in found.items()}

    def clip_digests(self) -> Iterator[tuple[str, str]]:
        """(digest, path) of every clip object in the store."""
        for path in self.find(CLIPS_DIR):
            name = path.rsplit("/", 1)[-1]
            if name.endswith(".parquet"):
                yield name.removesuffix(".parquet"), path

    def quarantine_file(self, source: Path, digest: str, reason: dict[str, Any]) -> str:
        """Keep a rejected local file, copied without reading it into memory, with a JSON note
        of why; returns its store path. Named by content hash and name, so quarantining the
        same file again writes nothing new."""
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in source.name)[-120:]
        path = f"{QUARANTINE_DIR}/{digest[:16]}-{safe}"
        note = {**reason, "quarantined_at": datetime.now(UTC).isoformat(timespec="seconds")}
        self.put_file(path, source)
        self.put(f"{path}.reason.json", orjson.dumps(note, option=orjson.OPT_INDENT_2))
        return path

    def put_file(self, path: str, source: Path) -> StoredObject:
        """Copy the local file ``source`` to ``path``, as :meth:`put` writes bytes."""
        (stored,) = self.put_many([(path, source)])
        return stored

    def staging_leftovers(self) -> list[str]:
        """Partial writes left by a process that died (only local stores stage writes)."""
        if not self._local:
            return []
        staging = self._abs(STAGING_DIR)
        if not os.path.isdir(staging):
            return []
        return [
            f"{STAGING_DIR}/{name}"
            for name in sorted(os.listdir(staging))
            if not _pid_alive(name.split("-", 1)[0])
        ]

    def clean_staging(self) -> int:
        """Remove partial writes of dead processes; returns how many were removed."""
        leftovers = self.staging_leftovers()
        for path in leftovers:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._abs(path))
        return len(leftovers)


def _received(path: str) -> bool:
    """Whether ``path`` lies under :data:`RECEIVED_DIR`; refuses a path that climbs (``..``),
    which could reach there, or out of the store, from anywhere."""
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise StoreError(f"{path}: store paths may not contain '..'")
    return bool(parts) and parts[0] == RECEIVED_DIR


def _protocols(fs: Any) -> tuple[str, ...]:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)


def _pid_alive(text: str) -> bool:
    if not text.isdigit():
        return False
    try:
        os.kill(int(text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
