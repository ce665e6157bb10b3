"""Ingest: fleet uploads land in the store and catalogue of the site where they were recorded.

For each input file: read it once, decode it by its extension (MCAP, Parquet, CSV), check that
every clip was recorded under the site's jurisdiction (its label, and its positions against the
territory's boundary) and its schema and physics, write each clip as content-addressed Parquet
into the site's store, then register file, clips and vehicles in the catalogue in one
transaction. A bad file is moved to the site's quarantine with a reason a person can act on, and
the run carries on; a clip of another region is left where it is, not a byte of it stored.

Order matters for crash safety: store objects are written (atomically) before the catalogue
transaction that makes them visible, so a process killed at any point leaves at worst an
uncatalogued object that the rerun adopts, never a catalogued clip without its object.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from onshore.clips.camera import frames_to_parquet
from onshore.clips.mcap import read_mcap
from onshore.clips.schema import Clip
from onshore.clips.tabular import clip_to_parquet, read_csv, read_parquet
from onshore.clips.validate import validate_clip
from onshore.errors import (
    ClipConflict,
    ClipError,
    ConfigError,
    FileSystemError,
    OnshoreError,
    PhysicsError,
    ResidencyError,
    StoreError,
    UnreadableFile,
)
from onshore.ingest.residency import Residency
from onshore.settings import IngestSettings
from onshore.sites.compute import Engine
from onshore.store.catalogue import ClipRecord, FileRecord, FramesRecord
from onshore.store.objects import ObjectStore, sha256
from onshore.store.site import SiteStore

__all__ = [
    "MAX_FILE_BYTES",
    "SUPPORTED",
    "IngestReport",
    "decode_file",
    "ingest",
    "scan_inputs",
]

SUPPORTED: Final = {".mcap": "mcap", ".parquet": "parquet", ".csv": "csv"}
"""File extensions ingest reads, and the format each means."""

_SNIFF: Final = (
    (b"\x89MCAP0\r\n", "MCAP"),
    (b"PAR1", "Parquet"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "gzip data"),
    (b"%PDF", "a PDF document"),
    (b"\x28\xb5\x2f\xfd", "zstd data"),
    (b"SQLite format 3", "an SQLite database"),
)


@dataclass(slots=True)
class IngestReport:
    """What an ingest run did; ``as_dict`` is what ``onshore ingest --json`` prints."""

    site: str
    files: int = 0
    """Input files looked at."""
    clips: int = 0
    """Clips newly stored."""
    rows: int = 0
    """Ego rows in the newly stored clips."""
    frames: int = 0
    """Camera frames of the newly stored clips."""
    bytes: int = 0
    """Bytes of input read."""
    stored_bytes: int = 0
    """Bytes of Parquet newly written to the store."""
    already_ingested: int = 0
    """Files skipped because the catalogue already has them."""
    erased_before: int = 0
    """Files whose data the site erased on a driver's request: not ingested, and removed from
    where they were (an erasure leaves no copy, a vehicle's upload sent again included)."""
    duplicate_clips: int = 0
    """Clips in new files that the store already held."""
    quarantined: list[dict[str, str | None]] = field(default_factory=list)
    """Bad files: ``path``, ``reason``, ``error`` code and where the file is kept
    (``quarantine``; null when it could not even be read and was left where it is)."""
    ignored: list[str] = field(default_factory=list)
    """Files inside the given folders that are not uploads (unsupported extension, broken link)."""
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["seconds"] = round(self.seconds, 3)
        data["mb_per_s"] = round(self.bytes / 1e6 / self.seconds, 2) if self.seconds else None
        return data


def scan_inputs(paths: Iterable[Path]) -> tuple[list[Path], list[Path]]:
    """The files to ingest, and the files in the given folders that are not uploads.

    Named files are taken as they are (an unsupported one is quarantined, since it was named);
    folders are searched for supported files, skipping hidden ones. Raises :class:`ConfigError`
    for a path that does not exist, before anything is ingested.
    """
    named = list(paths)
    for path in named:
        if not path.exists():
            raise ConfigError(f"{path}: no such file or folder")
    files: list[Path] = []
    ignored: list[Path] = []
    for path in named:
        if not path.is_dir():
            files.append(path)
            continue
        for found in sorted(path.rglob("*")):
            if any(part.startswith(".") for part in found.relative_to(path).parts):
                continue
            if found.is_file() and found.suffix.lower() in SUPPORTED:
                files.append(found)
            elif not found.is_dir():
                ignored.append(found)
    return files, ignored


def _sniff(data: bytes) -> str:
    for magic, kind in _SNIFF:
        if data.startswith(magic):
            return kind
    head = data[:2048]
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "binary data"
    return "text"


def decode_file(
    path: Path,
    data: bytes,
    residency: Residency | None = None,
    uploads: IngestSettings | None = None,
) -> list[Clip]:
    """Decode and validate the clips in one input file; with ``residency``, first refuse clips
    recorded under another jurisdiction, by their label or by their positions (before anything
    else is looked at, see :func:`_check_residency`).

    Raises a :class:`ClipError` subclass naming the file and what is wrong with it.
    """
    name = str(path)
    kind = SUPPORTED.get(path.suffix.lower())
    if kind is None:
        raise UnreadableFile(
            f"{name}: unsupported file type {path.suffix or '(no extension)'!r}",
            hint=f"ingest reads {', '.join(SUPPORTED)}",
        )
    if not data:
        raise UnreadableFile(f"{name}: the file is empty (0 bytes)", hint="re-upload it")
    try:
        if kind == "mcap":
            clips = [read_mcap(data, name, uploads)]
        elif kind == "parquet":
            clips = read_parquet(data, name)
        else:
            clips = read_csv(data, name)
    except UnreadableFile as exc:
        actual = _sniff(data)
        expected = {"mcap": "MCAP", "parquet": "Parquet", "csv": "text"}[kind]
        if actual != expected and actual != "text":
            raise UnreadableFile(
                f"{name}: named {path.suffix} but its content is {actual}", hint=exc.hint
            ) from exc
        raise
    if residency is not None:
        for clip in clips:
            _check_residency(path, clip, residency)
    for clip in clips:
        validate_clip(clip, name)
    return clips


_GLITCH_SHARE: Final = 0.01
"""Largest share of a clip's positions outside the territory that is taken for a bad GNSS fix
rather than a drive abroad, as far as which error to report goes: such a clip is validated
first, so that a fix that jumped away is refused (and quarantined here) as the jump it is. A
clip with a position outside is never stored either way."""


def _check_residency(path: Path, clip: Clip, residency: Residency) -> None:
    """Raise :class:`ResidencyError` unless ``clip`` was recorded under ``residency``'s
    jurisdiction: by its ``recorded_in``, and, where the jurisdiction's rulebook has a
    boundary, by every one of its positions.

    The boundary's margin (10 km over land, 25 km over water for the built-in rulebooks) is the
    whole tolerance. GNSS errors are metres to hundreds of metres; a fix that jumps further is
    a jump :func:`validate_clip` refuses anyway, so a position past the margin in a clip that
    holds together means the vehicle drove there, and a share of another country's data,
    however small, is not this site's to store.
    """
    meta = clip.meta
    if not residency.allows(meta.recorded_in):
        raise ResidencyError(
            f"{path}: clip {meta.clip_id} was recorded in {meta.recorded_in!r}, "
            f"not under site {residency.site}'s jurisdiction ({residency.jurisdiction}); "
            "left where it is",
            hint="ingest it at the site of the region where it was recorded; "
            "data crosses borders only through the gate",
        )
    positions = _positions(clip.table)
    outside = None if positions is None else residency.outside(*positions)
    if outside is None:
        return
    if outside.share <= _GLITCH_SHARE:
        validate_clip(clip, str(path))
    raise ResidencyError(
        f"{path}: clip {meta.clip_id}: {outside.count} of its {outside.of} positions lie "
        f"outside the territory of site {residency.site}'s jurisdiction "
        f"({residency.jurisdiction}), the first at row {outside.first} (lat {outside.lat:.5f}, "
        f"lon {outside.lon:.5f}), though it says it was recorded in {meta.recorded_in!r}; "
        "left where it is",
        hint="ingest it at the site of the region where it was recorded; if its positions are "
        "wrong, fix the vehicle's GNSS and upload the clip again",
    )


def _positions(table: pa.Table) -> tuple[NDArray[np.float64], NDArray[np.float64]] | None:
    """A clip's latitudes and longitudes, or ``None`` where the table has no such columns of
    floats (validation refuses its schema)."""
    names = table.schema.names
    if "lat" not in names or "lon" not in names:
        return None
    lat, lon = table["lat"], table["lon"]
    if not (pa.types.is_floating(lat.type) and pa.types.is_floating(lon.type)):
        return None
    return lat.to_numpy(), lon.to_numpy()


def _record(clip: Clip, digest: str, size: int, source: str) -> ClipRecord:
    table = clip.table
    # Integer microseconds, since a tz-aware Arrow scalar's as_py() retries a failing import of
    # dateutil on every call.
    micros = pc.cast(table["time"], pa.int64()).to_numpy()
    lat = table["lat"].to_numpy()
    lon = table["lon"].to_numpy()
    return ClipRecord(
        clip_id=clip.meta.clip_id,
        sha256=digest,
        path=ObjectStore.clip_path(digest),
        vin=clip.meta.vin,
        vehicle_model=clip.meta.vehicle_model,
        trigger=clip.meta.trigger,
        consent_training=clip.meta.consent_training,
        recorded_in=clip.meta.recorded_in,
        simulated=clip.meta.simulated,
        start_time=_EPOCH + timedelta(microseconds=int(micros.min())),
        end_time=_EPOCH + timedelta(microseconds=int(micros.max())),
        rows=clip.rows,
        objects=int(pc.sum(pc.list_value_length(table["objects"])).as_py() or 0),
        bytes=size,
        min_lat=float(np.min(lat)),
        max_lat=float(np.max(lat)),
        min_lon=float(np.min(lon)),
        max_lon=float(np.max(lon)),
        source_sha256=source,
    )


def _frames_record(clip_id: str, frames: pa.Table) -> tuple[bytes, FramesRecord]:
    parquet = frames_to_parquet(clip_id, frames)
    digest = sha256(parquet)
    counts = pc.value_counts(frames["camera"]).to_pylist()
    cameras = ",".join(sorted(f"{c['values']}:{c['counts']}" for c in counts))
    record = FramesRecord(
        clip_id=clip_id,
        sha256=digest,
        path=ObjectStore.frames_path(digest),
        bytes=len(parquet),
        frames=frames.num_rows,
        cameras=cameras,
    )
    return parquet, record


@dataclass(slots=True)
class _Prepared:
    """One input file read, decoded, checked and its objects stored (or why it could not be)."""

    path: Path
    size: int
    digest: str = ""
    records: list[ClipRecord] = field(default_factory=list)
    frames: list[FramesRecord] = field(default_factory=list)
    """The camera frames of the clips that have some."""
    written: set[str] = field(default_factory=set)
    """Paths of the objects this file's worker wrote (rather than found in the store)."""
    error: ClipError | None = None
    status: str = "new"
    """``new``; ``known`` (ingested before); ``too_large`` (not read); ``unreadable``
    (``problem`` says why)."""
    problem: str = ""

    def paths(self) -> list[str]:
        """Every object of this file in the store: its clips', then their frames'."""
        return [r.path for r in self.records] + [r.path for r in self.frames]


@dataclass(slots=True)
class _Encoded:
    """A prepared file with the bytes of its objects, before they are stored."""

    prepared: _Prepared
    objects: list[tuple[str, bytes]] = field(default_factory=list)


def _prepare(
    path: Path, data: bytes, digest: str, residency: Residency, uploads: IngestSettings
) -> _Encoded:
    """The CPU-heavy part of ingest: decode, check, encode; no I/O."""
    encoded = _Encoded(_Prepared(path, len(data), digest))
    frames: list[tuple[str, bytes]] = []
    try:
        for clip in decode_file(path, data, residency, uploads):
            parquet = clip_to_parquet(clip)
            record = _record(clip, sha256(parquet), len(parquet), digest)
            encoded.prepared.records.append(record)
            encoded.objects.append((record.path, parquet))
            if clip.frames is not None and clip.frames.num_rows:
                frames_data, frames_record = _frames_record(clip.meta.clip_id, clip.frames)
                encoded.prepared.frames.append(frames_record)
                frames.append((frames_record.path, frames_data))
    except ClipError as exc:
        return _Encoded(_Prepared(path, len(data), digest, error=exc))
    encoded.objects += frames
    return encoded


class _IngestFiles:
    """The worker of ingest (see :mod:`onshore.sites.compute`): reads, hashes, decodes and
    checks a batch of files and stores their objects, with one write for the batch. It never
    touches the catalogue: the driver registers what it returns, and objects it stored that
    were never registered (the driver died) are adopted by the rerun, being named by content.
    """

    def __init__(
        self,
        store: ObjectStore,
        residency: Residency,
        known: frozenset[str],
        uploads: IngestSettings | None = None,
    ) -> None:
        self.store, self.residency, self.known = store, residency, known
        self.uploads = uploads or IngestSettings()

    def __call__(self, files: list[Path]) -> list[_Prepared]:
        out: list[_Prepared] = []
        pending: list[_Encoded] = []
        for path in files:
            try:
                size = path.stat().st_size
                if size > MAX_FILE_BYTES:
                    out.append(_Prepared(path, size, status="too_large"))
                    continue
                data = path.read_bytes()
            except OSError as exc:
                out.append(_Prepared(path, 0, status="unreadable", problem=_problem(exc)))
                continue
            digest = sha256(data)
            if digest in self.known:
                out.append(_Prepared(path, len(data), digest, status="known"))
                continue
            encoded = _prepare(path, data, digest, self.residency, self.uploads)
            out.append(encoded.prepared)
            if encoded.prepared.error is None:
                pending.append(encoded)
        objects = [obj for encoded in pending for obj in encoded.objects]
        written = {stored.path for stored in self.store.put_many(objects) if stored.written}
        for encoded in pending:
            encoded.prepared.written = {p for p in encoded.prepared.paths() if p in written}
            written -= encoded.prepared.written  # a second copy in this batch wrote nothing
        return out


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_BATCH_FILES: Final = 64
"""Files registered per catalogue transaction."""
_WORKER_FILES: Final = 16
"""Files a Ray worker reads, checks and stores at a time (their objects in one write)."""
_BATCH_SECONDS: Final = 1.0
"""Longest a prepared file waits before its batch is committed."""
MAX_FILE_BYTES: Final = 512 * 1024 * 1024
"""Largest upload read into memory; a larger file is quarantined unread (split it first)."""


def ingest(
    site: SiteStore,
    paths: Iterable[Path],
    *,
    engine: Engine | None = None,
    residency: Residency | None = None,
    on_start: Callable[[int], None] | None = None,
    on_file: Callable[[Path, int], None] | None = None,
    remove_quarantined_source: bool = True,
) -> IngestReport:
    """Ingest ``paths`` (files or folders) into ``site``'s store and catalogue.

    Each clip must have been recorded under the site's jurisdiction, and driven inside the
    boundary of its territory where the site's rulebook has one (``residency``, by default
    the site's own: :meth:`Residency.of`).
    Files are registered in the catalogue in batches, each batch in one transaction after its
    objects are durable in the store. ``on_start(total_bytes)`` is called once the inputs are
    found, and ``on_file(path, size)`` as each file is done (for a progress bar). A bad file
    is moved into the store's quarantine (its source removed unless
    ``remove_quarantined_source`` is false), recorded in the catalogue, and listed in the
    report; the run goes on. A file that cannot be read, or that was recorded in another
    region, is reported and left where it is.

    ``engine``'s workers read, decode and check the files and store their objects (in this
    process by default, on Ray with more workers); this process registers them.
    """
    files, ignored = scan_inputs(paths)
    if on_start is not None:
        on_start(sum(_size(path) for path in files))
    run = _Run(site, on_file, remove_quarantined_source)
    run.erased = frozenset(site.catalogue.erased_files())
    run.report.ignored = [str(p) for p in ignored]
    started = time.perf_counter()
    site.objects.clean_staging()
    known = frozenset(site.catalogue.ingested_files())
    engine = engine or Engine()
    residency = residency or Residency.of(site.project, site.site)
    worker = (site.objects, residency, known, site.uploads)
    # In this process, a worker's batch is a catalogue batch (one sync of each folder for the
    # lot); on Ray, smaller batches keep every worker busy.
    batch = _WORKER_FILES if engine.uses_ray else _BATCH_FILES
    try:
        run.consume(engine.map(_IngestFiles, worker, files, batch_size=batch))
    finally:
        run.drop_unregistered()
    run.report.seconds = time.perf_counter() - started
    return run.report


class _Run:
    """The state of one ingest: the report, and the batch waiting for its transaction."""

    def __init__(
        self,
        site: SiteStore,
        on_file: Callable[[Path, int], None] | None,
        remove_source: bool,
    ) -> None:
        self.site, self.store, self.catalogue = site, site.objects, site.catalogue
        self.on_file = on_file or (lambda _p, _n: None)
        self.remove_source = remove_source
        self.report = IngestReport(site=site.site)
        self.batch: list[_Prepared] = []
        self.batch_started = 0.0
        self.registered: set[str] = set()
        """Objects of the files this run registered."""
        self.unregistered: set[str] = set()
        """Objects written for files this run quarantined (conflicts found after storing)."""
        self.erased: frozenset[str] = frozenset()
        """Content hashes of files erased on a driver's request."""

    def consume(self, prepared: Iterable[_Prepared]) -> None:
        seen: set[str] = set()
        for item in prepared:
            self.report.files += 1
            if item.status == "too_large":
                self._quarantine_unread(item.path, item.size)
                continue
            if item.status == "unreadable":
                self._unreadable(item.path, item.problem)
                continue
            self.report.bytes += item.size
            if item.status == "known" and item.digest in self.erased:
                with contextlib.suppress(FileNotFoundError):
                    item.path.unlink()
                self.report.erased_before += 1
                self.on_file(item.path, item.size)
                continue
            if item.status == "known" or item.digest in seen:
                # The same content twice in one run is ingested once.
                self.report.already_ingested += 1
                self.on_file(item.path, item.size)
                continue
            seen.add(item.digest)
            if isinstance(item.error, ResidencyError):
                # Another region's data: not a byte of it is written here, not even to
                # quarantine, and the upload stays where it is for its own site to ingest.
                self._report_left(item.path, item.error)
                continue
            if item.error is not None:
                self.quarantine(item, item.error)
                continue
            if not self.batch:
                self.batch_started = time.monotonic()
            self.batch.append(item)
            if (
                len(self.batch) >= _BATCH_FILES
                or time.monotonic() - self.batch_started > _BATCH_SECONDS
            ):
                self.flush()
        self.flush()

    def flush(self) -> None:
        """Register the batch (its objects are stored already) in one transaction."""
        batch, self.batch = self.batch, []
        accepted = self._without_conflicts(batch)
        if not accepted:
            return
        try:
            new = set(
                self.catalogue.register_many(
                    [_entry(p) for p in accepted], [r for p in accepted for r in p.frames]
                )
            )
        except ClipConflict:
            # Another ingest registered one of these clip ids since the check: file by file, so
            # that only the conflicting files are quarantined.
            new, registered = set(), []
            for item in accepted:
                try:
                    new.update(self.catalogue.register_many([_entry(item)], item.frames))
                except ClipConflict as exc:
                    self.quarantine(item, exc)
                else:
                    registered.append(item)
            accepted = registered
        for item in accepted:
            self.registered.update(item.paths())
            for frames in item.frames:
                if frames.path in item.written:
                    self.report.stored_bytes += frames.bytes
                if frames.clip_id in new:
                    self.report.frames += frames.frames
            for record in item.records:
                if record.path in item.written:
                    self.report.stored_bytes += record.bytes
                else:
                    self.report.duplicate_clips += 1
                if record.clip_id in new:
                    self.report.clips += 1
                    self.report.rows += record.rows
                    new.discard(record.clip_id)
            self.on_file(item.path, item.size)

    def drop_unregistered(self) -> None:
        """Delete the objects that workers wrote for files this run quarantined, unless a
        registered clip refers to them (the same clip in a file that was accepted)."""
        orphans = self.unregistered - self.registered
        if orphans:
            orphans -= self.catalogue.stored_paths(sorted(orphans))
        for path in sorted(orphans):
            self.store.delete(path)
        self.unregistered.clear()

    def _without_conflicts(self, batch: list[_Prepared]) -> list[_Prepared]:
        """The batch less the files reusing a clip id (catalogued or earlier in the batch) for
        other content, or holding a clip that overlaps in time, far away, another clip of the
        same vehicle; those are quarantined."""
        if not batch:
            return []
        known = self.catalogue.clip_hashes([r.clip_id for p in batch for r in p.records])
        by_vin: dict[str, dict[str, ClipRecord]] = {}
        for clip in self.catalogue.clips_of([r.vin for p in batch for r in p.records]):
            by_vin.setdefault(clip.vin, {})[clip.clip_id] = clip
        accepted = []
        for item in batch:
            self._adopt_stored(item, known)
            conflict = next(
                (r for r in item.records if known.get(r.clip_id, r.sha256) != r.sha256), None
            )
            if conflict is not None:
                self.quarantine(
                    item,
                    ClipConflict(
                        f"{item.path}: clip {conflict.clip_id} is already stored with different "
                        f"content (this file's clip has sha256 {conflict.sha256[:12]}...)",
                        hint="a vehicle must not reuse a clip id; give the upload a new id",
                    ),
                )
                continue
            clash = _elsewhere(item.records, by_vin)
            if clash is not None:
                record, other = clash
                self.quarantine(
                    item,
                    PhysicsError(
                        f"{item.path}: clip {record.clip_id} and clip {other.clip_id} of the same "
                        f"vehicle ({record.vehicle_model}) overlap in time but lie more than "
                        f"{_PLACE_SLACK_M:.0f} m apart: one vehicle cannot be in two places",
                        hint="check the VIN and the clocks of both uploads",
                    ),
                )
                continue
            known.update({r.clip_id: r.sha256 for r in item.records})
            for r in item.records:
                by_vin.setdefault(r.vin, {}).setdefault(r.clip_id, r)
            accepted.append(item)
        return accepted

    def _adopt_stored(self, item: _Prepared, known: dict[str, str]) -> None:
        """Where a clip of ``item`` is catalogued already under other bytes but holds the same
        clip (an earlier onshore encoded its Parquet otherwise), take the stored object as the
        clip's, and let the copy just written go: the same clip uploaded again is a duplicate,
        not a conflict."""
        for i, record in enumerate(item.records):
            stored = known.get(record.clip_id)
            if stored is None or stored == record.sha256:
                continue
            path = ObjectStore.clip_path(stored)
            try:
                (old,) = read_parquet(self.store.read(path), path)
                (new,) = read_parquet(self.store.read(record.path), record.path)
            except (ClipError, StoreError):
                continue  # a conflict, as the caller finds
            if old.meta != new.meta or not old.table.equals(new.table):
                continue
            item.records[i] = replace(record, sha256=stored, path=path)
            if record.path in item.written:
                item.written.discard(record.path)
                self.unregistered.add(record.path)

    def quarantine(self, item: _Prepared, exc: ClipError) -> None:
        """Move a bad file into the store's quarantine with its reason; record it."""
        reason = str(exc)
        self.unregistered.update(item.written)
        try:
            where = self.store.quarantine_file(
                item.path,
                item.digest,
                {
                    "site": self.site.site,
                    "source": str(item.path),
                    "error": exc.code,
                    "reason": reason,
                },
            )
        except OSError as error:
            self._unreadable(item.path, _problem(error))
            return
        self.catalogue.record_quarantine(
            FileRecord(
                item.digest,
                str(item.path),
                item.size,
                "quarantined",
                error_code=exc.code,
                reason=reason,
                quarantine_path=where,
                recorded_at=datetime.now(UTC),
            )
        )
        if self.remove_source:
            try:
                item.path.unlink()
            except OSError:
                reason += f" (the source {item.path} could not be removed; it is kept)"
        self.report.quarantined.append(
            {"path": str(item.path), "reason": reason, "error": exc.code, "quarantine": where}
        )
        self.on_file(item.path, item.size)

    def _quarantine_unread(self, path: Path, size: int) -> None:
        with path.open("rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        error = UnreadableFile(
            f"{path}: {_human(size)} is more than the {_human(MAX_FILE_BYTES)} "
            "ingest reads as one upload",
            hint="split the log into clips of a few minutes each",
        )
        self.quarantine(_Prepared(path, size, digest), error)

    def _unreadable(self, path: Path, problem: str) -> None:
        """A file that cannot even be read is reported and left where it is."""
        reason = f"{path}: cannot be read ({problem}); left where it is"
        self._report_left(path, FileSystemError(reason))

    def _report_left(self, path: Path, exc: OnshoreError) -> None:
        """Report a refused file that stays where it is (nothing of it is stored)."""
        self.report.quarantined.append(
            {"path": str(path), "reason": str(exc), "error": exc.code, "quarantine": None}
        )
        self.on_file(path, 0)


_PLACE_SLACK_M: Final = 200.0
"""How far apart (m) the areas two overlapping clips of one vehicle may be: GNSS error and the
distance driven across the overlap's edges."""


def _elsewhere(
    records: list[ClipRecord], by_vin: dict[str, dict[str, ClipRecord]]
) -> tuple[ClipRecord, ClipRecord] | None:
    """A clip of ``records`` and another clip of the same vehicle (not the same clip) whose
    times overlap while their areas, grown by :data:`_PLACE_SLACK_M`, do not meet."""
    for record in records:
        for other in by_vin.get(record.vin, {}).values():
            if other.clip_id == record.clip_id:
                continue
            if other.end_time < record.start_time or record.end_time < other.start_time:
                continue
            lat = _PLACE_SLACK_M / 111_320
            lon = lat / max(math.cos(math.radians(record.min_lat)), 0.01)
            apart = (
                other.max_lat + lat < record.min_lat
                or record.max_lat + lat < other.min_lat
                or other.max_lon + lon < record.min_lon
                or record.max_lon + lon < other.min_lon
            )
            if apart:
                return record, other
    return None


def _problem(exc: OSError) -> str:
    """What an operating system error says, in words."""
    return exc.strerror or str(exc)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _human(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _entry(item: _Prepared) -> tuple[FileRecord, list[ClipRecord]]:
    return (
        FileRecord(item.digest, str(item.path), item.size, "ingested", clips=len(item.records)),
        item.records,
    )
