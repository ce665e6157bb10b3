"""Classification: what data each clip holds, with evidence, and how many subjects it concerns.

Every clip gets labels from the shared vocabulary of data categories (``vehicle_id``,
``trajectory``, ``sensitive_area_geodata``, ``vehicle_flow``, ...), each with a count and
evidence a person can check ("214 positions inside zone zone-3 (military)"). Labels are stored
in the site's catalogue. Subjects are counted per category and per counting window (the calendar
year for China, the trailing 12 months for the US, up to ``as_of``): distinct vehicles, and,
where clips carry camera frames, the persons and plates seen in them (as tracks: an upper bound,
see :mod:`onshore.deidentify.video`). Outside frames with a face or plate found are
``outside_video_identifiable``, without one ``outside_video_masked``; cabin frames are
``cabin_video``.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

import orjson
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import Column, MetaData, String, Table, Text, select
from sqlalchemy.exc import IntegrityError, OperationalError

from onshore.classify.zones import Zones, load_zones
from onshore.clips.schema import Clip
from onshore.clips.tabular import read_parquet
from onshore.deidentify.video import FrameScan, scan_frames
from onshore.rulebook.model import Rulebook
from onshore.store.catalogue import ClipRecord, LabelRecord
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
    seen = sorted({c for c, out in zip(cameras, outside, strict=True) if out})
    n_out = int(outside.sum())
    cfg = scan.config
    if n_out:
        faces, plates = scan.boxes("face"), scan.boxes("plate")
        where = f"camera{'s' if len(seen) > 1 else ''} {', '.join(seen)}"
        thresholds = f"faces >= {cfg.face_threshold}, plates >= {cfg.plate_threshold}"
        if faces or plates:
            persons, plate_tracks = scan.tracks("face"), scan.tracks("plate")
            labels.append(
                LabelRecord(
                    scan.clip_id,
                    "outside_video_identifiable",
                    persons + plate_tracks,
                    f"{faces} faces and {plates} licence plates in "
                    f"{scan.frames_with_detections()} of {n_out} frames of {where} "
                    f"(at most {persons} persons and {plate_tracks} plates; {thresholds})",
                )
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
    n_cabin = len(cameras) - n_out
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


def _window_start(kind: str, as_of: date) -> date:
    if kind == "calendar_year":
        return date(as_of.year, 1, 1)
    return as_of - timedelta(days=365)


def classify_site(
    site: SiteStore,
    *,
    as_of: date | None = None,
    rulebook: Rulebook | None = None,
    on_clip: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Label every clip of ``site``, store the labels in its catalogue and return a summary:
    per category the clips, the amount (``count``) and the distinct vehicles, with the legal
    classes ``rulebook`` (the site's jurisdiction's) puts raw data of that category in; per
    counting window (calendar year, trailing 12 months, both ending ``as_of``, default today)
    the distinct vehicles with each category; and ``clip_labels``, each clip's categories with
    their counts and evidence."""
    as_of = as_of or datetime.now(UTC).date()
    zones = load_zones(site.objects)
    records = site.catalogue.clips()
    found = label_clips(site, records, zones=zones, on_clip=on_clip)
    site.catalogue.replace_labels(
        [r.clip_id for r in records], [label for c in found for label in c.labels]
    )
    summary = _summary(site.site, as_of, zones, found)
    summary["clip_labels"] = {
        clip.clip_id: [
            {"category": label.category, "count": label.count, "evidence": label.evidence}
            for label in clip.labels
        ]
        for clip in found
    }
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
) -> list[ClipLabels]:
    """Classify the clips of ``records`` as they are stored now (their frames' detections
    from the cache), without storing the labels: what ``classify_site`` stores, and what the
    gate classifies when data would leave."""
    zones = load_zones(site.objects) if zones is None else zones
    frames = {f.clip_id: f for f in site.catalogue.frames([r.clip_id for r in records])}
    keys = {r.clip_id: _cache_key(r.sha256, zones) for r in records}
    cache = _LabelCache(site, list(keys.values()))
    found: list[ClipLabels] = []
    for n, record in enumerate(records, start=1):
        scan = None
        if record.clip_id in frames:
            scan = scan_frames(site.objects, frames[record.clip_id])
        # A clip is content-addressed: its labels are those of its bytes under these zones,
        # found once (the slow part: reading every position) and kept.
        key = keys[record.clip_id]
        labels = cache.get(key, record.clip_id)
        if labels is None:
            labels = classify_clip(_read(site, record), zones, None)
            cache.put(key, labels)
        if scan is not None:
            labels = (*labels, *frame_labels(scan))
        found.append(
            ClipLabels(
                record.clip_id,
                record.vin,
                record.start_time,
                labels,
                persons=None if scan is None else scan.tracks("face"),
                plates=None if scan is None else scan.tracks("plate"),
            )
        )
        if on_clip is not None:
            on_clip(n, len(records))
    cache.flush()
    return found


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
    """The labels found before, by :func:`_cache_key`, in the site's catalogue database."""

    def __init__(self, site: SiteStore, keys: Sequence[str]) -> None:
        self.site = site.site
        self.engine = site.catalogue.engine
        for attempt in range(5):
            try:
                _cache_metadata.create_all(self.engine)
                break
            except (OperationalError, IntegrityError):  # another process made it meanwhile
                if attempt == 4:
                    raise
        self.known: dict[str, str] = {}
        unique = sorted(set(keys))
        with self.engine.connect() as conn:
            for start in range(0, len(unique), 500):
                chunk = unique[start : start + 500]
                self.known.update(
                    (row.key, row.labels)
                    for row in conn.execute(
                        select(_cache_table.c.key, _cache_table.c.labels).where(
                            _cache_table.c.site == self.site, _cache_table.c.key.in_(chunk)
                        )
                    )
                )
        self.new: dict[str, str] = {}

    def get(self, key: str, clip_id: str) -> tuple[LabelRecord, ...] | None:
        text = self.known.get(key)
        if text is None:
            return None
        return tuple(LabelRecord(clip_id, str(c), int(n), str(e)) for c, n, e in orjson.loads(text))

    def put(self, key: str, labels: tuple[LabelRecord, ...]) -> None:
        text = orjson.dumps([(x.category, x.count, x.evidence) for x in labels]).decode()
        self.known[key] = self.new[key] = text

    def flush(self) -> None:
        if not self.new:
            return
        rows = [{"site": self.site, "key": k, "labels": v} for k, v in self.new.items()]
        with self.engine.begin() as conn:
            existing = set(
                conn.execute(
                    select(_cache_table.c.key).where(
                        _cache_table.c.site == self.site,
                        _cache_table.c.key.in_([r["key"] for r in rows]),
                    )
                ).scalars()
            )
            fresh = [r for r in rows if r["key"] not in existing]
            if fresh:
                conn.execute(_cache_table.insert(), fresh)
        self.new.clear()


def _read(site: SiteStore, record: ClipRecord) -> Clip:
    (clip,) = read_parquet(site.objects.read(record.path), record.path)
    return clip


def _summary(site: str, as_of: date, zones: Zones, found: list[ClipLabels]) -> dict[str, Any]:
    categories: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"clips": 0, "count": 0, "vehicles": set()}
    )
    windows: dict[str, dict[str, set[str]]] = {
        "calendar_year": defaultdict(set),
        "trailing_12_months": defaultdict(set),
    }
    starts = {kind: _window_start(kind, as_of) for kind in windows}
    seen = {kind: {"persons": 0, "plates": 0} for kind in windows}
    for clip in found:
        day = clip.start.astimezone(UTC).date()
        for label in clip.labels:
            entry = categories[label.category]
            entry["clips"] += 1
            entry["count"] += label.count
            entry["vehicles"].add(clip.vin)
            for kind, subjects in windows.items():
                if starts[kind] <= day <= as_of:
                    subjects[label.category].add(clip.vin)
        for kind in windows:
            if starts[kind] <= day <= as_of:
                seen[kind]["persons"] += clip.persons or 0
                seen[kind]["plates"] += clip.plates or 0
    vehicles = {clip.vin for clip in found}
    filmed = [clip for clip in found if clip.persons is not None]
    # Persons are counted only where frames exist: without frames the count is unknown, not 0.
    persons = sum(clip.persons or 0 for clip in filmed) if filmed else None
    plates = sum(clip.plates or 0 for clip in filmed) if filmed else None
    return {
        "site": site,
        "as_of": as_of.isoformat(),
        "clips": len(found),
        "clips_with_frames": len(filmed),
        "zones": len(zones.zones),
        "subjects": {"vehicles": len(vehicles), "persons": persons, "plates": plates},
        "categories": {
            name: {"clips": e["clips"], "count": e["count"], "vehicles": len(e["vehicles"])}
            for name, e in sorted(categories.items())
        },
        "windows": {
            kind: {
                "from": starts[kind].isoformat(),
                "to": as_of.isoformat(),
                "vehicles": {cat: len(v) for cat, v in sorted(subjects.items())},
                "persons": seen[kind]["persons"] if filmed else None,
                "plates": seen[kind]["plates"] if filmed else None,
            }
            for kind, subjects in windows.items()
        },
    }
