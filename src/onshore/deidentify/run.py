"""De-identify a site's clips under a profile, into the same site's store.

Raw clips are read, never modified, and nothing leaves the site. Each clip keeping rows becomes
one Parquet object under ``deidentified/<profile>/``, named by its hash, whose metadata records
the transforms with their parameters, the resulting state and the checks re-run on the output;
its camera frames, masked, become one more under ``deidentified/<profile>/frames/``
(:func:`~onshore.deidentify.video.deidentify_frames`). The catalogue records, per raw clip, where
its de-identified version is; objects a rerun replaced are removed once the catalogue no longer
refers to them.

The stage runs on the site's batch engine (:mod:`onshore.sites.compute`). Its worker,
:class:`_DeidentifyVehicles`, takes a batch of vehicles, de-identifies each vehicle's clips
together (trajectory transforms and checks run over the vehicle's whole table, then split per
clip), and writes the batch's objects to the store in one ``put_many``. The driver,
:func:`deidentify_site`, hands the vehicles out, adds up the records and tallies the workers
return, and alone writes the catalogue, once, after every vehicle is done: a stage that fails
halfway leaves the catalogue as it was, and a rerun adopts the objects already stored.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from onshore.classify.detectors import DetectorConfig
from onshore.classify.scan import scan_frames
from onshore.classify.zones import load_zones
from onshore.clips.schema import META_KEY, SCHEMA, Clip, ClipMeta
from onshore.clips.tabular import read_parquet
from onshore.deidentify.checks import Check, run_checks_by_part, state_of
from onshore.deidentify.frames import MaskSettings
from onshore.deidentify.profiles import Profile
from onshore.deidentify.trajectory import deidentify_vehicle
from onshore.deidentify.video import CheckMemo, FramesOutput, deidentify_frames
from onshore.errors import DeidentifyError
from onshore.sites.compute import Engine, Spill
from onshore.sites.keystore import Secret
from onshore.store.catalogue import ClipRecord, DeidentifiedRecord, FramesRecord
from onshore.store.objects import ObjectStore, sha256
from onshore.store.site import SiteStore

__all__ = ["DEID_KEY", "OUTPUT_DIR", "deidentify_site", "read_output"]

OUTPUT_DIR: Final = "deidentified"
DEID_KEY: Final = b"onshore.deid"
"""Parquet schema-metadata key of a de-identified object's record (transforms, state, checks)."""
_STATES: Final = ("raw", "pseudonymized", "anonymized")
_FRAMES_CHECK: Final = "no_unmasked_face_or_plate"
_BATCH_VEHICLES: Final = 16
"""Vehicles per worker batch at most: the batch's objects are written, and each folder they land
in synced, once; its outputs wait in memory until then."""
_TRAJECTORY_PARQUET: Final[dict[str, Any]] = {
    "compression": "zstd",
    # Only the clip pseudonym repeats; dictionaries of measured floats grow the file.
    "use_dictionary": ["clip"],
    # Outputs are read whole, never filtered by statistics, and writing them costs as much as
    # the rows of a short clip.
    "write_statistics": False,
}
_FRAMES_PARQUET: Final[dict[str, Any]] = {
    # JPEG bytes do not compress further, and are not worth a dictionary.
    "compression": "none",
    "use_dictionary": ["clip", "camera", "format"],
    "write_statistics": False,
}


def read_output(data: bytes) -> tuple[pa.Table, dict[str, Any]]:
    """A de-identified object's rows and its record."""
    table = pq.read_table(pa.BufferReader(data))
    record = orjson.loads((table.schema.metadata or {})[DEID_KEY])
    return table.replace_schema_metadata(None), record


def deidentify_site(
    site: SiteStore,
    profile: Profile,
    *,
    secret: Secret,
    engine: Engine | None = None,
    on_vehicle: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """De-identify every clip of ``site`` under ``profile`` on ``engine`` (None: in this
    process); returns the summary the CLI prints. ``on_vehicle(done, total)`` is called as
    vehicles finish.

    Raises :class:`DeidentifyError` when an output fails a check its profile promises (no raw
    VIN, no position in a zone), and stores nothing of that vehicle; the catalogue is left as it
    was. Raises :class:`~onshore.errors.ComputeError` when the engine fails.
    """
    engine = engine if engine is not None else Engine()
    vins = site.catalogue.clip_vins()
    detectors = DetectorConfig.of(site.project.site(site.site).detectors)
    work = (site.objects, site.site, profile, secret.reveal(), vins, detectors)
    batch = max(1, min(_BATCH_VEHICLES, -(-len(vins) // (4 * engine.workers))))
    total = _Done()
    # The records go to disk until the one transaction that stores them, and the vehicles
    # stream from the catalogue a page at a time: neither grows the driver with the site.
    with Spill[DeidentifiedRecord]() as records:
        results = engine.map(_DeidentifyVehicles, work, _vehicles(site, vins), batch_size=batch)
        for n, done in enumerate(results, start=1):
            total.add(done)
            records.extend(done.records)
            if on_vehicle is not None:
                on_vehicle(n, len(vins))
        site.catalogue.replace_deidentified(profile.name, records)
        _collect_garbage(site, profile.name, total.referenced)
    state = min(total.states, key=_STATES.index) if total.states else "anonymized"
    return {
        "site": site.site,
        "profile": profile.name,
        "transforms": [step.as_dict() for step in profile.ordered()],
        "vehicles": len(vins),
        "clips": total.outputs,
        "clips_in": total.clips_in,
        "rows_in": total.rows_in,
        "rows": total.rows_out,
        "removed": dict(total.removed),
        "frames": total.frames.as_dict(),
        "warnings": _warnings(total.rows_in, total.rows_out, profile),
        "state": state,
        "checks": [
            total.frames.check(profile).as_dict()
            if check.check == _FRAMES_CHECK and total.frames.frames_in
            else check.as_dict()
            for check, _rows in total.worst.values()
        ],
    }


@dataclass(frozen=True, slots=True)
class _Vehicle:
    """One vehicle's work: the catalogue records of its clips and of their frames."""

    clips: tuple[ClipRecord, ...]
    frames: tuple[FramesRecord, ...]


def _vehicles(site: SiteStore, vins: frozenset[str]) -> Iterator[_Vehicle]:
    """The site's vehicles of ``vins`` in VIN order, each with its clips (oldest first) and
    their frames, read from the catalogue a page at a time. (A vehicle first catalogued since
    ``vins`` were read waits for the next run: its VIN is not among those the checks look
    for.)"""
    clips: list[ClipRecord] = []
    frames: list[FramesRecord] = []
    for page in site.catalogue.clip_pages(by="vin"):
        page = [r for r in page if r.vin in vins]
        frames_of = {f.clip_id: f for f in site.catalogue.frames([r.clip_id for r in page])}
        for record in page:
            if clips and record.vin != clips[0].vin:
                yield _Vehicle(tuple(clips), tuple(frames))
                clips, frames = [], []
            clips.append(record)
            if record.clip_id in frames_of:
                frames.append(frames_of[record.clip_id])
    if clips:
        yield _Vehicle(tuple(clips), tuple(frames))


@dataclass(slots=True)
class _Done:
    """What a worker hands back for one vehicle, its objects stored: everything the driver
    needs for the catalogue and the summary, and no rows. The driver adds them up, in the
    vehicles' order, into one more, which keeps the counts and the objects referred to but not
    the records (the driver keeps those aside for the catalogue)."""

    records: list[DeidentifiedRecord] = field(default_factory=list)
    clips_in: int = 0
    removed: dict[str, int] = field(default_factory=dict)
    frames: _FramesTally = field(default_factory=lambda: _FramesTally())
    states: set[str] = field(default_factory=set)
    rows_in: int = 0
    rows_out: int = 0
    worst: dict[str, tuple[Check, int]] = field(default_factory=dict)
    """Per check, the one the summary shows: see :func:`_keep_worst`."""
    outputs: int = 0
    """Records added up (in the driver's total)."""
    referenced: set[str] = field(default_factory=set)
    """Every object the records refer to: outputs and their frames."""

    def add(self, done: _Done) -> None:
        self.outputs += len(done.records)
        self.clips_in += done.clips_in
        self.referenced |= done.referenced
        for name, count in done.removed.items():
            self.removed[name] = self.removed.get(name, 0) + count
        self.frames.merge(done.frames)
        self.states |= done.states
        self.rows_in += done.rows_in
        self.rows_out += done.rows_out
        for check, rows in done.worst.values():
            _keep_worst(self.worst, check, rows)


def _keep_worst(worst: dict[str, tuple[Check, int]], check: Check, rows: int) -> None:
    """The summary shows, per check, the first that failed if one did, else the one of the
    largest output (the first of equals). Keeping it per vehicle, then over vehicles in order,
    finds the same one as over every output in order."""
    best = worst.get(check.check)
    if best is None or (best[0].held and (not check.held or rows > best[1])):
        worst[check.check] = (check, rows)


class _DeidentifyVehicles:
    """The stage's worker: built once per worker process from the stage's settings, then called
    with batches of vehicles; returns one :class:`_Done` per vehicle, in order, once the
    batch's objects are in the store.

    It writes only content-addressed objects (and the detection cache), never the catalogue.
    A vehicle whose output fails a check its profile promises raises :class:`DeidentifyError`
    before anything of its batch is written."""

    def __init__(
        self,
        store: ObjectStore,
        site: str,
        profile: Profile,
        secret: bytes,
        raw_vins: frozenset[str],
        detectors: DetectorConfig,
    ) -> None:
        self._store = store
        self._site = site
        self._profile = profile
        self._secret = secret
        self._raw_vins = raw_vins
        self._zones = load_zones(store)
        drop = profile.step("drop_zones")
        self._grown = None if drop is None else self._zones.buffered(drop.params["buffer_m"])
        self._transforms = [step.as_dict() for step in profile.ordered()]
        mask = profile.step("mask_frames")
        threshold = float(mask.params["threshold"]) if mask is not None else 0.5
        self._mask = MaskSettings() if mask is not None else None
        self._detectors = detectors
        # The check runs the site's detectors, at the profile's stricter threshold.
        self._check = replace(detectors, face_threshold=threshold, plate_threshold=threshold)
        coarsen = profile.step("coarsen")
        self._time_step = float(coarsen.params["time_s"]) if coarsen is not None else 0.0
        self._memo = CheckMemo(store, secret)

    def __call__(self, vehicles: list[_Vehicle]) -> list[_Done]:
        writes: list[tuple[str, bytes]] = []
        done = [self._vehicle(vehicle, writes) for vehicle in vehicles]
        # One write for the batch: each folder is synced once for the lot, not once per object.
        self._store.put_many(writes)
        return done

    def _vehicle(self, vehicle: _Vehicle, writes: list[tuple[str, bytes]]) -> _Done:
        profile = self._profile
        clips = [_read_clip(self._store.read(r.path), r.path) for r in vehicle.clips]
        out = deidentify_vehicle(
            clips, profile, secret=self._secret, zones=self._zones, grown=self._grown
        )
        frames_of = {f.clip_id: f for f in vehicle.frames}
        video = {v.table_id: v for v in self._frames(out.clips, frames_of)}
        writes.extend(self._memo.take())
        done = _Done(clips_in=len(vehicle.clips), removed=dict(out.removed))
        done.frames.add(list(video.values()))
        source = {r.clip_id: r.sha256 for r in vehicle.clips}
        meta = {c.meta.clip_id: c.meta for c in clips}
        # One object per clip: a transfer of some clips sends exactly those, and clips of one
        # vehicle are not grouped together in an output meant to be anonymous. The rows come
        # grouped by clip, so each clip's are a slice; the checks run once over them all.
        kept = [c for c in out.clips if c["rows"]]
        # Each record says what the transforms removed from its clip; the vehicle's first
        # record of the same consent also carries its clips that kept nothing (they have no
        # record), so the records of a site add up to what de-identification removed.
        removed = [dict(c["removed"]) for c in kept]
        for c in out.clips:
            if c["rows"] or not removed:
                continue
            same = [i for i, k in enumerate(kept) if k["consent_training"] == c["consent_training"]]
            into = removed[same[0] if same else 0]
            for name, count in c["removed"].items():
                into[name] = into.get(name, 0) + count
        done.rows_in = sum(c["rows_in"] for c in out.clips)
        done.rows_out = sum(c["rows"] for c in out.clips)
        offsets = np.r_[0, np.cumsum([c["rows"] for c in kept])].tolist()
        facts, stored_frames, frame_checks = [], [], []
        for c in kept:
            clip_video = [video[c["output_id"]]] if c["output_id"] in video else []
            frames_object = self._frames_object(out.vehicle, clip_video, writes)
            clip_facts: dict[str, Any] = {
                "profile": profile.name,
                "vehicle": out.vehicle,
                "transforms": self._transforms,
                "removed": out.removed,
                "clips": {
                    c["output_id"]: {
                        "rows": c["rows"],
                        "consent_training": c["consent_training"],
                        **_public_meta(meta[c["clip_id"]]),
                    }
                },
            }
            if frames_object is not None:
                clip_facts["frames"] = frames_object
            facts.append(clip_facts)
            stored_frames.append(frames_object)
            frame_checks.append(_frames_check(profile, clip_video))
        checks_of = run_checks_by_part(
            out.table,
            offsets,
            [orjson.dumps(f) for f in facts],
            raw_vins=self._raw_vins,
            zones=self._zones,
            frames=frame_checks,
        )
        for i, (c, clip_facts, checks) in enumerate(zip(kept, facts, checks_of, strict=True)):
            state = state_of(checks, identifier_left=out.vehicle is not None)
            failed = [
                check for check in checks if not check.held and _promised(check.check, profile)
            ]
            if failed:
                raise DeidentifyError(
                    f"site {self._site}, profile {profile.name}: the output of one clip fails "
                    + "; ".join(f"{f.check} ({f.reason})" for f in failed),
                    hint="nothing of that vehicle was stored; report this as a bug",
                )
            clip_facts.update(state=state, checks=[check.as_dict() for check in checks])
            table = out.table.slice(offsets[i], c["rows"])
            table = table.replace_schema_metadata({DEID_KEY: orjson.dumps(clip_facts)})
            path, data = _parquet(f"{OUTPUT_DIR}/{profile.name}", table, _TRAJECTORY_PARQUET)
            writes.append((path, data))
            done.referenced.add(path)
            if (frames_stored := stored_frames[i]) is not None:
                done.referenced.add(frames_stored["path"])
            done.states.add(state)
            for check in checks:
                _keep_worst(done.worst, check, table.num_rows)
            done.records.append(
                DeidentifiedRecord(
                    profile=profile.name,
                    clip_id=c["clip_id"],
                    source_sha256=source[c["clip_id"]],
                    output_id=c["output_id"],
                    path=path,
                    sha256=_digest(path),
                    state=state,
                    consent_training=c["consent_training"],
                    rows=c["rows"],
                    rows_in=c["rows_in"],
                    detail=orjson.dumps(
                        {"removed": removed[i], "frames": _frames_detail(stored_frames[i])}
                    ).decode(),
                    vin=meta[c["clip_id"]].vin,
                )
            )
        return done

    def _frames(
        self, clips: list[dict[str, Any]], frames_of: dict[str, FramesRecord]
    ) -> list[FramesOutput]:
        """The de-identified frames of one vehicle's clips that have frames."""
        outputs = []
        for clip in clips:
            record = frames_of.get(clip["clip_id"])
            if record is None:
                continue
            outputs.append(
                deidentify_frames(
                    scan_frames(self._store, record, self._detectors),
                    clip["kept_us"],
                    clip["output_id"],
                    mask=self._mask,
                    check=self._check,
                    time_step_s=self._time_step,
                    memo=self._memo,
                )
            )
        return outputs

    def _frames_object(
        self, vehicle: str | None, video: list[FramesOutput], writes: list[tuple[str, bytes]]
    ) -> dict[str, Any] | None:
        """One clip's kept frames as one object, queued in ``writes``; where it will be, or
        None if no frame is kept."""
        tables = [v.table for v in video if v.table.num_rows]
        if not tables:
            return None
        meta = orjson.dumps({"profile": self._profile.name, "vehicle": vehicle})
        table = pa.concat_tables(tables).replace_schema_metadata({DEID_KEY: meta})
        folder = f"{OUTPUT_DIR}/{self._profile.name}/frames"
        path, data = _parquet(folder, table, _FRAMES_PARQUET)
        writes.append((path, data))
        return {"path": path, "sha256": _digest(path), "frames": table.num_rows}


def _read_clip(data: bytes, path: str) -> Clip:
    """A stored clip, as :func:`~onshore.clips.tabular.read_parquet` reads it: directly when it
    is what ingest stores (its metadata and :data:`SCHEMA`), else through ``read_parquet``,
    which conforms it or says what is wrong."""
    try:
        table = pq.ParquetFile(pa.BufferReader(data), pre_buffer=False).read(use_threads=False)
        meta = ClipMeta.from_mapping(orjson.loads((table.schema.metadata or {})[META_KEY]))
    except (pa.ArrowException, OSError, KeyError, TypeError, ValueError):
        return read_parquet(data, path)[0]
    table = table.replace_schema_metadata(None)
    if not table.schema.equals(SCHEMA):
        return read_parquet(data, path)[0]
    return Clip(meta, table)


def _parquet(folder: str, table: pa.Table, options: dict[str, Any]) -> tuple[str, bytes]:
    """``table`` as Parquet, and the path under ``folder`` its hash names."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **options)
    data = sink.getvalue().to_pybytes()
    digest = sha256(data)
    return f"{folder}/{digest[:2]}/{digest}.parquet", data


def _digest(path: str) -> str:
    """The hash a path made by :func:`_parquet` is named by."""
    return path.rsplit("/", 1)[-1].removesuffix(".parquet")


def _frames_detail(stored: dict[str, Any] | None) -> dict[str, Any] | None:
    """Where one clip's de-identified frames are, and how many."""
    return None if stored is None else {k: stored[k] for k in ("path", "sha256", "frames")}


def _frames_check(profile: Profile, video: list[FramesOutput]) -> Check | None:
    """The frames check of one clip's output, or None when the clip has no frames."""
    if not video:
        return None
    tally = _FramesTally()
    tally.add(video)
    return tally.check(profile)


class _FramesTally:
    """Frames in, kept, masked and dropped, summed over outputs."""

    def __init__(self) -> None:
        self.frames_in = self.kept = self.faces = self.plates = self.unchecked = 0
        self.dropped: dict[str, int] = defaultdict(int)

    def add(self, video: Sequence[FramesOutput]) -> None:
        for v in video:
            self.frames_in += v.frames_in
            self.kept += v.table.num_rows
            self.faces += v.faces
            self.plates += v.plates
            self.unchecked += v.unchecked
            for reason, n in v.dropped.items():
                self.dropped[reason] += n

    def merge(self, other: _FramesTally) -> None:
        self.frames_in += other.frames_in
        self.kept += other.kept
        self.faces += other.faces
        self.plates += other.plates
        self.unchecked += other.unchecked
        for reason, n in other.dropped.items():
            self.dropped[reason] += n

    def check(self, profile: Profile) -> Check:
        step = profile.step("mask_frames")
        if step is None:
            return Check(_FRAMES_CHECK, self.kept == 0, f"{self.kept} frames kept without masking")
        threshold = step.params["threshold"]
        detail = (
            f"no face or plate above {threshold} in the {self.kept} frames kept "
            f"({self.faces} faces and {self.plates} plates masked"
        )
        if self.dropped["still_identifiable"]:
            detail += (
                f"; {self.dropped['still_identifiable']} frames still showing one after "
                "masking were dropped"
            )
        if self.dropped["undecodable"]:
            detail += (
                f"; {self.dropped['undecodable']} frames of cameras that could not be decoded "
                "were dropped"
            )
        if self.unchecked:
            detail += (
                f"; the check ran on {self.kept - self.unchecked} of them, video frames at "
                "the detectors' video_stride and beside any finding"
            )
        return Check(_FRAMES_CHECK, True, detail + ")")

    def as_dict(self) -> dict[str, Any]:
        return {
            "in": self.frames_in,
            "kept": self.kept,
            "faces_masked": self.faces,
            "plates_masked": self.plates,
            "checked": self.kept - self.unchecked,
            "dropped": dict(self.dropped),
        }


def _warnings(rows_in: int, rows_out: int, profile: Profile) -> list[str]:
    """What a user should hear about even though nothing failed."""
    if rows_in and not rows_out:
        trim = profile.step("trim_ends")
        why = (
            f"; trips shorter than twice trim_ends ({2 * trim.params['metres']:.0f} m) keep nothing"
            if trim is not None
            else ""
        )
        return [f"no row survived profile {profile.name}{why}: the output is empty"]
    return []


def _public_meta(meta: ClipMeta) -> dict[str, str]:
    """What of a clip's metadata may travel with its de-identified rows: not the VIN, not the
    clip id."""
    return {
        "vehicle_model": meta.vehicle_model,
        "trigger": meta.trigger,
        "recorded_in": meta.recorded_in,
    }


def _promised(check: str, profile: Profile) -> bool:
    """Whether the profile's transforms promise that this check holds."""
    if check == "no_raw_vin":
        return True
    if check == "no_position_in_zone":
        return profile.step("drop_zones") is not None
    if check in ("no_absolute_coordinate", "no_absolute_timestamp"):
        return profile.step("to_local") is not None
    return profile.step("mask_frames") is not None


def _collect_garbage(site: SiteStore, profile: str, referenced: set[str]) -> None:
    """Remove the profile's objects that no catalogue record refers to any more: ``referenced``
    (what this run made) stays, and so do the objects of outputs kept whose raw clip's storage
    period ended before (no run makes them again)."""
    referenced = set(referenced)
    for record in site.catalogue.outputs_without_clip(profile):
        referenced.add(record.path)
        frames = orjson.loads(record.detail).get("frames")
        if isinstance(frames, dict) and frames.get("path"):
            referenced.add(str(frames["path"]))
    for path in site.objects.find(f"{OUTPUT_DIR}/{profile}"):
        if path not in referenced:
            site.objects.delete(path)
