"""De-identify a site's clips under a profile, into the same site's store.

Raw clips are read, never modified, and nothing leaves the site. Each vehicle's clips become one
Parquet object under ``deidentified/<profile>/``, named by its hash, whose metadata records the
transforms with their parameters, the resulting state and the checks re-run on the output; their
camera frames, masked, become one more under ``deidentified/<profile>/frames/``
(:func:`~onshore.deidentify.video.deidentify_frames`). The catalogue records, per raw clip, where
its de-identified version is; objects a rerun replaced are removed once the catalogue no longer
refers to them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any, Final

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from onshore.classify.zones import load_zones
from onshore.clips.tabular import read_parquet
from onshore.deidentify.checks import Check, run_checks, state_of
from onshore.deidentify.detectors import DetectorConfig
from onshore.deidentify.frames import MaskSettings
from onshore.deidentify.profiles import Profile
from onshore.deidentify.trajectory import deidentify_vehicle
from onshore.deidentify.video import FramesOutput, deidentify_frames, scan_frames
from onshore.errors import DeidentifyError
from onshore.sites.keystore import Secret
from onshore.store.catalogue import ClipRecord, DeidentifiedRecord, FramesRecord
from onshore.store.objects import sha256
from onshore.store.site import SiteStore

__all__ = ["DEID_KEY", "OUTPUT_DIR", "deidentify_site", "read_output"]

OUTPUT_DIR: Final = "deidentified"
DEID_KEY: Final = b"onshore.deid"
"""Parquet schema-metadata key of a de-identified object's record (transforms, state, checks)."""
_STATES: Final = ("raw", "pseudonymized", "anonymized")


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
    on_vehicle: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """De-identify every clip of ``site`` under ``profile``; returns the summary the CLI prints.

    Raises :class:`DeidentifyError` when an output fails a check its profile promises (no raw
    VIN, no position in a zone), and stores nothing of that vehicle.
    """
    zones = load_zones(site.objects)
    frames_of = {f.clip_id: f for f in site.catalogue.frames()}
    frames = _FramesTally()
    by_vehicle: dict[str, list[ClipRecord]] = defaultdict(list)
    for record in site.catalogue.clips():
        by_vehicle[record.vin].append(record)
    raw_vins = set(by_vehicle)
    records: list[DeidentifiedRecord] = []
    removed: dict[str, int] = defaultdict(int)
    worst: dict[str, tuple[Check, int]] = {}
    states: list[str] = []
    rows_in = rows_out = 0
    for n, (_vin, clip_records) in enumerate(sorted(by_vehicle.items()), start=1):
        clips = [read_parquet(site.objects.read(r.path), r.path)[0] for r in clip_records]
        out = deidentify_vehicle(clips, profile, secret=secret.reveal(), zones=zones)
        for name, count in out.removed.items():
            removed[name] += count
        video = {v.table_id: v for v in _frames(site, profile, out.clips, frames_of)}
        frames.add(list(video.values()))
        by_id = {r.clip_id: r for r in clip_records}
        for c in out.clips:
            rows_in += c["rows_in"]
            rows_out += c["rows"]
            if not c["rows"]:
                continue
            # One object per clip: a transfer of some clips sends exactly those, and clips of
            # one vehicle are not grouped together in an output meant to be anonymous.
            clip_video = [video[c["output_id"]]] if c["output_id"] in video else []
            table = out.table.filter(pc.equal(out.table["clip"], c["output_id"]))
            frames_object = _store_frames(site, profile, out.vehicle, clip_video)
            facts: dict[str, Any] = {
                "profile": profile.name,
                "vehicle": out.vehicle,
                "transforms": [step.as_dict() for step in profile.ordered()],
                "removed": out.removed,
                "clips": {
                    c["output_id"]: {
                        "rows": c["rows"],
                        "consent_training": c["consent_training"],
                        **_public_meta(clips, c["clip_id"]),
                    }
                },
            }
            if frames_object is not None:
                facts["frames"] = frames_object
            checks = run_checks(
                table,
                orjson.dumps(facts),
                raw_vins=raw_vins,
                zones=zones,
                frames=_frames_check(profile, clip_video),
            )
            state = state_of(checks, identifier_left=out.vehicle is not None)
            failed = [
                check for check in checks if not check.held and _promised(check.name, profile)
            ]
            if failed:
                raise DeidentifyError(
                    f"site {site.site}, profile {profile.name}: the output of one clip fails "
                    + "; ".join(f"{f.name} ({f.detail})" for f in failed),
                    hint="nothing of that vehicle was stored; report this as a bug",
                )
            facts.update(state=state, checks=[check.as_dict() for check in checks])
            table = table.replace_schema_metadata({DEID_KEY: orjson.dumps(facts)})
            path, digest = _put_parquet(site, f"{OUTPUT_DIR}/{profile.name}", table, "zstd")
            states.append(state)
            for check in checks:
                # The summary shows a failing check if there is one, else the largest output's.
                best = worst.get(check.name)
                if best is None or (best[0].held and (not check.held or table.num_rows > best[1])):
                    worst[check.name] = (check, table.num_rows)
            records.append(
                DeidentifiedRecord(
                    profile=profile.name,
                    clip_id=c["clip_id"],
                    source_sha256=by_id[c["clip_id"]].sha256,
                    output_id=c["output_id"],
                    path=path,
                    sha256=digest,
                    state=state,
                    consent_training=c["consent_training"],
                    rows=c["rows"],
                    rows_in=c["rows_in"],
                    detail=orjson.dumps(
                        {"removed": out.removed, "frames": _frames_detail(frames_object)}
                    ).decode(),
                )
            )
        if on_vehicle is not None:
            on_vehicle(n, len(by_vehicle))
    site.catalogue.replace_deidentified(profile.name, records)
    referenced = {r.path for r in records}
    for output in records:
        frames_detail = orjson.loads(output.detail).get("frames")
        if frames_detail is not None:
            referenced.add(frames_detail["path"])
    _collect_garbage(site, profile.name, referenced)
    state = min(states, key=_STATES.index) if states else "anonymized"
    return {
        "site": site.site,
        "profile": profile.name,
        "transforms": [step.as_dict() for step in profile.ordered()],
        "vehicles": len(by_vehicle),
        "clips": len(records),
        "clips_in": sum(len(v) for v in by_vehicle.values()),
        "rows_in": rows_in,
        "rows": rows_out,
        "removed": dict(removed),
        "frames": frames.as_dict(),
        "warnings": _warnings(rows_in, rows_out, profile),
        "state": state,
        "checks": [
            frames.check(profile).as_dict()
            if check.name == _FRAMES_CHECK and frames.frames_in
            else check.as_dict()
            for check, _rows in worst.values()
        ],
    }


_FRAMES_CHECK: Final = "no_unmasked_face_or_plate"


def _frames(
    site: SiteStore,
    profile: Profile,
    clips: list[dict[str, Any]],
    frames_of: dict[str, FramesRecord],
) -> list[FramesOutput]:
    """The de-identified frames of one vehicle's clips that have frames."""
    step = profile.step("mask_frames")
    threshold = float(step.params["threshold"]) if step is not None else 0.5
    check = DetectorConfig(face_threshold=threshold, plate_threshold=threshold)
    coarsen = profile.step("coarsen")
    outputs = []
    for clip in clips:
        record = frames_of.get(clip["clip_id"])
        if record is None:
            continue
        outputs.append(
            deidentify_frames(
                scan_frames(site.objects, record),
                clip["kept_us"],
                clip["output_id"],
                mask=MaskSettings() if step is not None else None,
                check=check,
                time_step_s=float(coarsen.params["time_s"]) if coarsen is not None else 0.0,
            )
        )
    return outputs


def _store_frames(
    site: SiteStore, profile: Profile, vehicle: str | None, video: list[FramesOutput]
) -> dict[str, Any] | None:
    """Store one vehicle's kept frames as one object; where it is, or None if none are kept."""
    tables = [v.table for v in video if v.table.num_rows]
    if not tables:
        return None
    meta = orjson.dumps({"profile": profile.name, "vehicle": vehicle})
    table = pa.concat_tables(tables).replace_schema_metadata({DEID_KEY: meta})
    # JPEG bytes do not compress further.
    path, digest = _put_parquet(site, f"{OUTPUT_DIR}/{profile.name}/frames", table, "none")
    return {"path": path, "sha256": digest, "frames": table.num_rows}


def _put_parquet(
    site: SiteStore, folder: str, table: pa.Table, compression: str
) -> tuple[str, str]:
    """Store ``table`` as Parquet named by its hash under ``folder``; its path and hash."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression=compression)
    data = sink.getvalue().to_pybytes()
    digest = sha256(data)
    path = f"{folder}/{digest[:2]}/{digest}.parquet"
    site.objects.put(path, data)
    return path, digest


def _frames_detail(stored: dict[str, Any] | None) -> dict[str, Any] | None:
    """Where one clip's de-identified frames are, and how many."""
    return None if stored is None else {k: stored[k] for k in ("path", "sha256", "frames")}


def _frames_check(profile: Profile, video: list[FramesOutput]) -> Check | None:
    """The frames check of one vehicle's output, or None when its clips have no frames."""
    if not video:
        return None
    tally = _FramesTally()
    tally.add(video)
    return tally.check(profile)


class _FramesTally:
    """Frames in, kept, masked and dropped, summed over outputs."""

    def __init__(self) -> None:
        self.frames_in = self.kept = self.faces = self.plates = 0
        self.dropped: dict[str, int] = defaultdict(int)

    def add(self, video: list[FramesOutput]) -> None:
        for v in video:
            self.frames_in += v.frames_in
            self.kept += v.table.num_rows
            self.faces += v.faces
            self.plates += v.plates
            for reason, n in v.dropped.items():
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
        return Check(_FRAMES_CHECK, True, detail + ")")

    def as_dict(self) -> dict[str, Any]:
        return {
            "in": self.frames_in,
            "kept": self.kept,
            "faces_masked": self.faces,
            "plates_masked": self.plates,
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


def _public_meta(clips: list[Any], clip_id: str) -> dict[str, str]:
    """What of a clip's metadata may travel with its de-identified rows: not the VIN, not the
    clip id."""
    meta = next(c.meta for c in clips if c.meta.clip_id == clip_id)
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
    for path in site.objects.find(f"{OUTPUT_DIR}/{profile}"):
        if path not in referenced:
            site.objects.delete(path)
