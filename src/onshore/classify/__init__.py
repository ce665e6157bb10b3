"""Classification: what data each clip holds, with evidence, and how many subjects it concerns.

Every clip gets labels from the shared vocabulary of data categories (``vehicle_id``,
``trajectory``, ``sensitive_area_geodata``, ``vehicle_flow``, ...), each with a count and
evidence a person can check ("214 positions inside zone zone-3 (military)"). Labels are stored
in the site's catalogue. Subjects are counted per category and per counting window (the calendar
year for China, the trailing 12 months for the US, up to ``as_of``): distinct vehicles, and,
where clips carry camera frames, the persons and plates seen in them (as tracks: an upper bound,
see :mod:`onshore.classify.scan`). Outside frames with a face or plate found are
``outside_video_identifiable``, without one ``outside_video_masked``; cabin frames are
``cabin_video``.

Classifying a site is a batch stage of its engine (:mod:`onshore.sites.compute`): workers read
and label the clips and scan their frames; this process alone uses the catalogue (the labels
found before, kept by the clip's and the zones' hashes, and the run's labels, stored in one
transaction at its end). Clips stream by: what is kept as they pass is counts, the sets of
vehicles, and the labels to store, so memory grows with the labels, not with the positions.
"""

from __future__ import annotations

import hashlib
import sys
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

import orjson
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import Column, MetaData, Select, String, Table, Text, select
from sqlalchemy.exc import IntegrityError, OperationalError

from onshore.classify.detectors import DetectorConfig
from onshore.classify.scan import FrameScan, scan_frames
from onshore.classify.zones import Zones, load_zones
from onshore.clips.schema import Clip
from onshore.clips.tabular import read_parquet
from onshore.rulebook.model import Rulebook
from onshore.sites.compute import Engine, Spill
from onshore.store.catalogue import ClipRecord, FramesRecord, LabelRecord
from onshore.store.objects import ObjectStore
from onshore.store.site import SiteStore

__all__ = [
    "VEHICLE_CLASSES",
    "ClipLabels",
    "classify_clip",
    "classify_site",
    "label_clips",
    "load_zones",
]

VEHICLE_CLASSES: Final = ("car", "bus", "truck", "motorcycle")
"""Tracked objects whose movements make up vehicle flows."""
_VEHICLE_CLASS_ARRAY: Final = pa.array(VEHICLE_CLASSES)


@dataclass(frozen=True, slots=True)
class ClipLabels:
    """The categories found in one clip."""

    clip_id: str
    vin: str
    start: datetime
    labels: tuple[LabelRecord, ...]
    persons: int | None = None
    """Faces seen in the clip's outside frames, as tracks; None when it has no frames."""
    plates: int | None = None
    """Licence plates seen, as tracks; None when it has no frames."""

    @property
    def categories(self) -> set[str]:
        return {label.category for label in self.labels}


def classify_clip(
    clip: Clip, zones: Zones, frames: FrameScan | None = None
) -> tuple[LabelRecord, ...]:
    """Label a raw clip with the data categories it holds, each with count and evidence;
    ``frames`` are its camera frames with their detections, when it has some."""
    meta, table = clip.meta, clip.table
    labels = [
        LabelRecord(meta.clip_id, "vehicle_id", 1, "raw VIN in the clip's metadata"),
    ]
    lat = table["lat"].to_numpy()
    lon = table["lon"].to_numpy()
    labels.append(
        LabelRecord(
            meta.clip_id,
            "trajectory",
            len(lat),
            f"{len(lat):,} WGS-84 positions (full precision) linked to the vehicle's VIN",
        )
    )
    inside = zones.inside(lon, lat)
    counts = inside.sum(axis=1)
    if counts.any():
        parts = [
            f"{int(n):,} positions inside zone {z.id} ({z.kind})"
            for z, n in zip(zones.zones, counts, strict=True)
            if n
        ]
        labels.append(
            LabelRecord(
                meta.clip_id,
                "sensitive_area_geodata",
                int(inside.any(axis=0).sum()),
                "; ".join(parts),
            )
        )
    objects = pc.list_flatten(table["objects"])
    if len(objects):
        classes = pc.struct_field(objects, "class")
        vehicles = pc.filter(objects, pc.is_in(classes, _VEHICLE_CLASS_ARRAY))
        tracks = len(pc.unique(pc.struct_field(vehicles, "track_id")))
        if tracks:
            labels.append(
                LabelRecord(
                    meta.clip_id,
                    "vehicle_flow",
                    tracks,
                    f"{tracks} tracked vehicles around the ego ({len(vehicles):,} observations)",
                )
            )
    if frames is not None:
        labels.extend(frame_labels(frames))
    return tuple(labels)


def frame_labels(scan: FrameScan) -> list[LabelRecord]:
    """The video categories of one clip's frames, with counts and evidence."""
    labels = []
    outside = scan.outside()
    cameras = scan.cameras
    n_cabin = len(cameras) - int(outside.sum())
    # Frames that could not be decoded were not scanned: what they show is unknown, so they
    # count as showing a face or plate each, the side a threshold must err on.
    broken = sorted(
        {c for c, out in zip(cameras, outside, strict=True) if out} & set(scan.unreadable)
    )
    n_broken = scan.unscanned()
    readable = [out and c not in scan.unreadable for c, out in zip(cameras, outside, strict=True)]
    seen = sorted({c for c, ok in zip(cameras, readable, strict=True) if ok})
    n_out = sum(readable)
    cfg = scan.config
    unscanned = (
        f"{n_broken} frames of camera{'s' if len(broken) > 1 else ''} {', '.join(broken)} could "
        "not be decoded, so were not scanned, and count as showing a face or plate each ("
        + "; ".join(f"{c}: {scan.unreadable[c]}" for c in broken)
        + ")"
        if broken
        else ""
    )
    if n_out or broken:
        faces, plates = scan.boxes("face"), scan.boxes("plate")
        where = f"camera{'s' if len(seen) > 1 else ''} {', '.join(seen)}"
        thresholds = f"faces >= {cfg.face_threshold}, plates >= {cfg.plate_threshold}"
        if faces or plates:
            persons, plate_tracks = scan.tracks("face"), scan.tracks("plate")
            evidence = (
                f"{faces} faces and {plates} licence plates in "
                f"{scan.frames_with_detections()} of {n_out} frames of {where} "
                f"(at most {persons} persons and {plate_tracks} plates; {thresholds})"
            )
            count = persons + plate_tracks + n_broken
            labels.append(
                LabelRecord(
                    scan.clip_id,
                    "outside_video_identifiable",
                    count,
                    f"{evidence}; {unscanned}" if broken else evidence,
                )
            )
        elif broken:
            clean = f"; no face or plate found in {n_out} frames of {where}" if n_out else ""
            labels.append(
                LabelRecord(scan.clip_id, "outside_video_identifiable", n_broken, unscanned + clean)
            )
        else:
            labels.append(
                LabelRecord(
                    scan.clip_id,
                    "outside_video_masked",
                    n_out,
                    f"{n_out} frames of {where}, no face or plate found ({thresholds})",
                )
            )
    if n_cabin:
        inside = sorted({c for c, out in zip(cameras, outside, strict=True) if not out})
        labels.append(
            LabelRecord(
                scan.clip_id,
                "cabin_video",
                n_cabin,
                f"{n_cabin} frames of cabin camera{'s' if len(inside) > 1 else ''} "
                f"{', '.join(inside)}, which film the vehicle's occupants",
            )
        )
    return labels


def classify_site(
    site: SiteStore,
    *,
    as_of: date | None = None,
    rulebook: Rulebook | None = None,
    on_clip: Callable[[int, int], None] | None = None,
    engine: Engine | None = None,
    clip_labels: bool = True,
) -> dict[str, Any]:
    """Label every clip of ``site``, store the labels in its catalogue and return a summary:
    per category the clips, the amount (``count``) and the distinct vehicles, with the legal
    classes ``rulebook`` (the site's jurisdiction's) puts raw data of that category in; per
    counting window (calendar year, trailing 12 months, both ending ``as_of``, default today)
    the distinct vehicles with each category; and, with ``clip_labels``, each clip's categories
    with their counts and evidence (``clip_labels``: the one part of the summary that grows with
    the site).

    ``engine``'s workers read and label the clips and scan their frames (in this process by
    default); this process looks up and keeps the labels found before, counts, and stores the
    labels, all of them in one transaction once every clip is labelled: a run that fails
    leaves the labels as they were.
    """
    as_of = as_of or datetime.now(UTC).date()
    zones = load_zones(site.objects)
    total = site.catalogue.clip_count()
    stream = _labelled(site, site.catalogue.clip_pages(), total, zones, engine or Engine(), on_clip)
    tally = _Tally(as_of)
    detail: dict[str, list[dict[str, Any]]] = {}
    # Kept on disk until the one transaction that stores them: a site's labels would grow
    # the driver's memory with the site.
    with Spill[str]() as clip_ids, Spill[LabelRecord]() as labels:
        for found in stream:
            tally.add(found)
            clip_ids.add(found.clip_id)
            labels.extend(found.labels)
            if clip_labels:
                detail[found.clip_id] = [
                    {"category": label.category, "count": label.count, "evidence": label.evidence}
                    for label in found.labels
                ]
        site.catalogue.replace_labels(clip_ids, labels)
    summary = tally.summary(site.site, zones)
    if clip_labels:
        summary["clip_labels"] = detail
    if rulebook is not None:
        summary["rulebook"] = {"jurisdiction": rulebook.jurisdiction, "version": rulebook.version}
        for name, entry in summary["categories"].items():
            entry["legal_classes"] = sorted(rulebook.classify(name, "raw", None))
    return summary


def label_clips(
    site: SiteStore,
    records: Sequence[ClipRecord],
    *,
    zones: Zones | None = None,
    on_clip: Callable[[int, int], None] | None = None,
    engine: Engine | None = None,
) -> list[ClipLabels]:
    """Classify the clips of ``records`` as they are stored now (their frames' detections
    from the cache), without storing the labels: what ``classify_site`` stores, and what the
    gate classifies when data would leave. ``engine`` runs the work as in
    :func:`classify_site`."""
    zones = load_zones(site.objects) if zones is None else zones
    return list(_labelled(site, [records], len(records), zones, engine or Engine(), on_clip))


_CHUNK: Final = 500
"""Clips whose cached labels are looked up (and new labels kept) per catalogue query."""
_WORKER_CLIPS: Final = 32
"""Clips a worker labels at a time."""


@dataclass(frozen=True, slots=True)
class _Work:
    """One clip for a worker: its object to label, unless its labels are cached, and its
    frames to scan, if it has some."""

    path: str | None
    frames: FramesRecord | None


@dataclass(frozen=True, slots=True)
class _Found:
    """What a worker found in one clip."""

    labels: tuple[LabelRecord, ...] | None
    """The labels of its positions and objects; None when it was not asked (cached)."""
    video: tuple[LabelRecord, ...] = ()
    persons: int | None = None
    plates: int | None = None


_NOTHING: Final = _Found(None)
"""What a clip that needs no worker gets from one."""


class _LabelClips:
    """The worker of classification (see :mod:`onshore.sites.compute`): labels a batch of
    clips and scans their frames. Its only writes are the frames' detections, objects of the
    store keyed by the frames' hash; the labels go back to the driver, which alone keeps
    them."""

    def __init__(self, store: ObjectStore, zones: Zones, detectors: DetectorConfig) -> None:
        self.store, self.zones, self.detectors = store, zones, detectors

    def __call__(self, items: list[_Work]) -> list[_Found]:
        out = []
        for item in items:
            labels = None
            if item.path is not None:
                labels = classify_clip(_read(self.store, item.path), self.zones)
            if item.frames is None:
                out.append(_Found(labels))
                continue
            scan = scan_frames(self.store, item.frames, self.detectors)
            # Frames that could not be decoded count as a person each (see frame_labels).
            persons = scan.tracks("face") + scan.unscanned()
            out.append(_Found(labels, tuple(frame_labels(scan)), persons, scan.tracks("plate")))
        return out


@dataclass(frozen=True, slots=True)
class _Pending:
    """A clip on its way through :func:`_labelled`: what is needed to finish it."""

    clip_id: str
    vin: str
    start_time: datetime
    path: str
    key: str
    cached: str | None
    """Its labels as the cache held them when its chunk was looked up."""
    worker: bool
    """Whether a worker's result is on its way."""


def _labelled(
    site: SiteStore,
    pages: Iterable[Sequence[ClipRecord]],
    total: int,
    zones: Zones,
    engine: Engine,
    on_clip: Callable[[int, int], None] | None,
) -> Iterator[ClipLabels]:
    """The labels of the clips of ``pages`` (``total`` of them), in their order, as they are
    found: a clip's object is read only when its labels under ``zones`` are not cached, and its
    frames are always scanned (from their own cache of detections).

    The clips stream through: a chunk's cached labels and frames are looked up as the engine
    asks for more work, and a clip is let go once its labels are out, so that memory does not
    grow with the site."""
    cache = _LabelCache(site)
    pending: deque[_Pending] = deque()

    def work() -> Iterator[_Work]:
        for page in pages:
            for start in range(0, len(page), _CHUNK):
                chunk = page[start : start + _CHUNK]
                keys = [_cache_key(r.sha256, zones) for r in chunk]
                texts = cache.lookup(keys)
                frames = {f.clip_id: f for f in site.catalogue.frames([r.clip_id for r in chunk])}
                for record, key in zip(chunk, keys, strict=True):
                    text, scan = texts.get(key), frames.get(record.clip_id)
                    needed = text is None or scan is not None
                    pending.append(
                        _Pending(
                            record.clip_id,
                            record.vin,
                            record.start_time,
                            record.path,
                            key,
                            text,
                            needed,
                        )
                    )
                    if needed:
                        yield _Work(None if text is not None else record.path, scan)

    def finish(clip: _Pending, found: _Found) -> ClipLabels:
        # A clip is content-addressed: its labels are those of its bytes under these zones,
        # found once (the slow part: reading every position) and kept.
        labels = found.labels
        if labels is not None:
            cache.put(clip.key, labels)
        else:
            labels = _LabelCache.labels(clip.cached, clip.clip_id)
            assert labels is not None, "a worker is asked for every clip without cached labels"
        return ClipLabels(
            clip.clip_id,
            clip.vin,
            clip.start_time,
            (*labels, *found.video),
            persons=found.persons,
            plates=found.plates,
        )

    done = 0
    detectors = DetectorConfig.of(site.project.site(site.site).detectors)
    results = engine.map(
        _LabelClips, (site.objects, zones, detectors), work(), batch_size=_WORKER_CLIPS
    )
    for found in results:
        # This result is the next clip's that asked for a worker; those before it had their
        # labels cached and no frames.
        while True:
            clip = pending.popleft()
            done += 1
            yield finish(clip, found if clip.worker else _NOTHING)
            if on_clip is not None:
                on_clip(done, total)
            if clip.worker:
                break
    while pending:  # cached clips after the last that needed a worker
        clip = pending.popleft()
        done += 1
        yield finish(clip, _NOTHING)
        if on_clip is not None:
            on_clip(done, total)
    cache.flush()


CLASSIFIER_VERSION: Final = "1"
"""Bumped whenever :func:`classify_clip` would label the same bytes otherwise: cached labels of
another version are not used."""

_cache_metadata = MetaData()
_cache_table: Final = Table(
    "clip_labels_cache",
    _cache_metadata,
    Column("site", String(64), primary_key=True),
    Column("key", String(64), primary_key=True),
    Column("labels", Text, nullable=False),
)
"""Labels of a clip's positions and objects (not its frames, whose detections have a cache of
their own), keyed by the classifier's version, the clip object's hash and the zones' hash."""


def _cache_key(clip_sha256: str, zones: Zones) -> str:
    text = f"{CLASSIFIER_VERSION}\x00{clip_sha256}\x00{zones.digest}"
    return hashlib.sha256(text.encode()).hexdigest()


class _LabelCache:
    """The labels found before, by :func:`_cache_key`, in the site's catalogue database:
    looked up a chunk of clips at a time, new ones written every :data:`_CHUNK` (a cached
    entry is a fact about bytes, true whether or not the run that found it finishes)."""

    def __init__(self, site: SiteStore) -> None:
        self.site = site.site
        self.engine = site.catalogue.engine
        for attempt in range(5):
            try:
                _cache_metadata.create_all(self.engine)
                break
            except (OperationalError, IntegrityError):  # another process made it meanwhile
                if attempt == 4:
                    raise
        self.new: dict[str, str] = {}

    def known(self, keys: Sequence[str]) -> set[str]:
        """Those of ``keys`` that have labels."""
        with self.engine.connect() as conn:
            return set(conn.execute(self._where(select(_cache_table.c.key), keys)).scalars())

    def lookup(self, keys: Sequence[str]) -> dict[str, str]:
        """The labels of those of ``keys`` that have some, as stored."""
        if not keys:
            return {}
        query = self._where(select(_cache_table.c.key, _cache_table.c.labels), keys)
        with self.engine.connect() as conn:
            return {row.key: row.labels for row in conn.execute(query)}

    def _where(self, query: Select[Any], keys: Sequence[str]) -> Select[Any]:
        return query.where(_cache_table.c.site == self.site, _cache_table.c.key.in_(keys))

    @staticmethod
    def labels(text: str | None, clip_id: str) -> tuple[LabelRecord, ...] | None:
        if text is None:
            return None
        return tuple(
            LabelRecord(clip_id, sys.intern(str(c)), int(n), str(e))
            for c, n, e in orjson.loads(text)
        )

    def put(self, key: str, labels: tuple[LabelRecord, ...]) -> None:
        self.new[key] = orjson.dumps([(x.category, x.count, x.evidence) for x in labels]).decode()
        if len(self.new) >= _CHUNK:
            self.flush()

    def flush(self) -> None:
        if not self.new:
            return
        rows = [{"site": self.site, "key": k, "labels": v} for k, v in self.new.items()]
        with self.engine.begin() as conn:
            query = self._where(select(_cache_table.c.key), list(self.new))
            existing = set(conn.execute(query).scalars())
            fresh = [r for r in rows if r["key"] not in existing]
            if fresh:
                conn.execute(_cache_table.insert(), fresh)
        self.new.clear()


def _read(store: ObjectStore, path: str) -> Clip:
    (clip,) = read_parquet(store.read(path), path)
    return clip


_WINDOWS: Final = ("calendar_year", "trailing_12_months")


def _window_start(kind: str, as_of: date) -> date:
    if kind == "calendar_year":
        return date(as_of.year, 1, 1)
    return as_of - timedelta(days=365)


class _Tally:
    """The summary's counts, added to as clips are labelled: only the sets of distinct
    vehicles grow with the site, and those by the fleet, not by its data."""

    def __init__(self, as_of: date) -> None:
        self.as_of = as_of
        self.starts = {kind: _window_start(kind, as_of) for kind in _WINDOWS}
        self.clips = self.filmed = 0
        self.vehicles: set[str] = set()
        self.categories: dict[str, _Category] = defaultdict(_Category)
        self.windows: dict[str, dict[str, set[str]]] = {k: defaultdict(set) for k in _WINDOWS}
        self.seen = {kind: {"persons": 0, "plates": 0} for kind in _WINDOWS}
        self.persons = self.plates = 0

    def add(self, clip: ClipLabels) -> None:
        self.clips += 1
        self.vehicles.add(clip.vin)
        day = clip.start.astimezone(UTC).date()
        inside = [kind for kind in _WINDOWS if self.starts[kind] <= day <= self.as_of]
        for label in clip.labels:
            entry = self.categories[label.category]
            entry.clips += 1
            entry.count += label.count
            entry.vehicles.add(clip.vin)
            for kind in inside:
                self.windows[kind][label.category].add(clip.vin)
        if clip.persons is None:
            return
        # Persons are counted only where frames exist: without frames the count is unknown,
        # not 0.
        self.filmed += 1
        self.persons += clip.persons
        self.plates += clip.plates or 0
        for kind in inside:
            self.seen[kind]["persons"] += clip.persons
            self.seen[kind]["plates"] += clip.plates or 0

    def summary(self, site: str, zones: Zones) -> dict[str, Any]:
        filmed = self.filmed > 0
        return {
            "site": site,
            "as_of": self.as_of.isoformat(),
            "clips": self.clips,
            "clips_with_frames": self.filmed,
            "zones": len(zones.zones),
            "subjects": {
                "vehicles": len(self.vehicles),
                "persons": self.persons if filmed else None,
                "plates": self.plates if filmed else None,
            },
            "categories": {
                name: {"clips": e.clips, "count": e.count, "vehicles": len(e.vehicles)}
                for name, e in sorted(self.categories.items())
            },
            "windows": {
                kind: {
                    "from": self.starts[kind].isoformat(),
                    "to": self.as_of.isoformat(),
                    "vehicles": {cat: len(v) for cat, v in sorted(subjects.items())},
                    "persons": self.seen[kind]["persons"] if filmed else None,
                    "plates": self.seen[kind]["plates"] if filmed else None,
                }
                for kind, subjects in self.windows.items()
            },
        }


@dataclass(slots=True)
class _Category:
    clips: int = 0
    count: int = 0
    vehicles: set[str] = field(default_factory=set)
