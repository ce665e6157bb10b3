"""Trajectory de-identification, vectorised over all of one vehicle's clips at once.

A vehicle's clips are concatenated in time order, and each transform is a NumPy or Arrow
operation over every row: keyed pseudonyms of the vehicle and clip ids, dropping positions
inside (buffered) sensitive areas, trimming the first and last stretch of each trip, moving to
clip-local coordinates and relative time, and coarsening. No Python loop runs per point.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from onshore.classify.zones import Zones
from onshore.clips.geo import haversine, local_metres
from onshore.clips.schema import OBJECT_TYPE, SCHEMA, Clip
from onshore.deidentify.profiles import Profile

__all__ = ["LOCAL_SCHEMA", "Output", "deidentify_vehicle", "pseudonym"]

LOCAL_SCHEMA: Final = pa.schema(
    [
        pa.field("clip", pa.string(), nullable=False),
        pa.field("t", pa.float64(), nullable=False),
        pa.field("x", pa.float64(), nullable=False),
        pa.field("y", pa.float64(), nullable=False),
        # The ego's motion and the tracked objects keep the raw clip's types.
        *(SCHEMA.field(name) for name in SCHEMA.names[3:]),
    ]
)
"""De-identified clips in clip-local coordinates: ``t`` seconds since the clip's first kept row,
``x`` metres along that row's heading and ``y`` metres to its left, ``heading`` relative to it.
``clip`` is the clip's keyed pseudonym."""


def pseudonym(secret: bytes, kind: str, value: str) -> str:
    """A keyed, stable pseudonym: the same value gets the same pseudonym at this site, and
    nobody without the site's secret can link it back."""
    digest = hmac.new(secret, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()
    return f"p{kind[0]}-{digest[:24]}"


@dataclass(slots=True)
class Output:
    """One vehicle's clips after a profile: the table, per-clip facts, and what was removed."""

    table: pa.Table
    """The kept rows, grouped by clip in the order of :attr:`clips`."""
    clips: list[dict[str, Any]]
    """Per output clip: ``clip_id`` (raw, stays in the catalogue), ``output_id``, ``rows``,
    ``rows_in``, ``kept_us``, the raw times (µs) of the rows kept, in order (for the clip's
    camera frames to follow its rows), and ``removed``, the clip's rows each transform
    removed."""
    vehicle: str | None
    removed: dict[str, int] = field(default_factory=dict)
    """Rows removed by each transform."""


def _trim_mask(
    t_us: NDArray[np.int64],
    lat: NDArray[np.float64],
    lon: NDArray[np.float64],
    metres: float,
    trip_gap_s: float,
) -> NDArray[np.bool_]:
    """Rows farther than ``metres`` (along the road) from both ends of their trip. A trip is a
    run of rows with no gap over ``trip_gap_s``; its first and last stretch is where homes and
    workplaces are."""
    n = len(t_us)
    if n == 0:
        return np.ones(0, dtype=bool)
    step = np.zeros(n)
    step[1:] = haversine(lat[:-1], lon[:-1], lat[1:], lon[1:])
    new_trip = np.ones(n, dtype=bool)
    new_trip[1:] = np.diff(t_us) > trip_gap_s * 1e6
    step[new_trip] = 0.0
    trip = np.cumsum(new_trip) - 1
    travelled = np.cumsum(step)
    starts = np.flatnonzero(new_trip)
    ends = np.r_[starts[1:], n] - 1
    from_start = travelled - travelled[starts][trip]
    to_end = travelled[ends][trip] - travelled
    return np.asarray((from_start >= metres) & (to_end >= metres))


def _to_local(
    t_us: NDArray[np.int64],
    lat: NDArray[np.float64],
    lon: NDArray[np.float64],
    heading: NDArray[np.float64],
    first: NDArray[np.intp],
) -> tuple[NDArray[np.float64], ...]:
    """Clip-local (t, x, y, heading) given, for each row, the index of its clip's first row."""
    h0 = heading[first]
    east, north = local_metres(lat, lon, lat[first], lon[first])
    h = np.radians(h0)  # compass: clockwise from north
    x = east * np.sin(h) + north * np.cos(h)
    y = -east * np.cos(h) + north * np.sin(h)
    t = (t_us - t_us[first]) / 1e6
    rel = (heading - h0 + 540.0) % 360.0 - 180.0
    return t, x, y, rel


def _coarsen_objects(objects: pa.ListArray, grid: float) -> pa.ListArray:
    values = objects.values
    fields = dict(zip(OBJECT_TYPE.names, values.flatten(), strict=True))
    for name in ("x", "y"):
        arr = fields[name].to_numpy(zero_copy_only=False)
        fields[name] = pa.array((np.round(arr / grid) * grid).astype(np.float32))
    structs = pa.StructArray.from_arrays(list(fields.values()), fields=list(OBJECT_TYPE))
    return pa.ListArray.from_arrays(objects.offsets, structs, type=objects.type)


def deidentify_vehicle(
    clips: Sequence[Clip],
    profile: Profile,
    *,
    secret: bytes,
    zones: Zones,
    grown: Zones | None = None,
) -> Output:
    """Apply ``profile``'s trajectory transforms to one vehicle's clips (any order).

    ``grown``: ``zones`` already grown by the profile's ``drop_zones`` buffer, for a caller that
    de-identifies many vehicles (growing the zones costs more than testing one vehicle's points).
    Returns the de-identified rows of every clip that keeps at least one row.
    """
    clips = sorted(clips, key=lambda c: (c.table["time"][0].value, c.meta.clip_id))
    table = pa.concat_tables([c.table for c in clips]).combine_chunks()
    sizes = np.array([c.rows for c in clips])
    clip_of_row = np.repeat(np.arange(len(clips)), sizes)
    t_us = pc.cast(table["time"], pa.int64()).to_numpy()
    lat = table["lat"].to_numpy()
    lon = table["lon"].to_numpy()
    keep = np.ones(len(t_us), dtype=bool)
    dropped: dict[str, NDArray[np.bool_]] = {}

    if (step := profile.step("drop_zones")) is not None:
        if grown is None:
            grown = zones.buffered(step.params["buffer_m"])
        inside = grown.inside(lon, lat).any(axis=0)
        dropped["drop_zones"] = inside & keep
        keep &= ~inside
    if (step := profile.step("trim_ends")) is not None:
        order = np.argsort(t_us, kind="stable")
        trimmed = np.empty(len(t_us), dtype=bool)
        trimmed[order] = ~_trim_mask(
            t_us[order], lat[order], lon[order], step.params["metres"], step.params["trip_gap_s"]
        )
        dropped["trim_ends"] = trimmed & keep
        keep &= ~trimmed
    removed = {name: int(mask.sum()) for name, mask in dropped.items()}
    per_clip = {
        name: np.bincount(clip_of_row[mask], minlength=len(clips)) for name, mask in dropped.items()
    }

    rows = np.flatnonzero(keep)
    kept_clip = clip_of_row[rows]
    kept_table = table.take(pa.array(rows))
    # Clip pseudonyms differ between profiles: the rows of an anonymised export must not be
    # linked, through a shared clip id, to a pseudonymised profile that names the vehicle.
    secret_clip = [pseudonym(secret, f"clip/{profile.name}", c.meta.clip_id) for c in clips]
    clip_column = pa.array(np.array(secret_clip, dtype=object)[kept_clip], pa.string())
    vehicle = None
    if profile.step("pseudonymise") is not None and clips:
        vehicle = pseudonym(secret, "vehicle", clips[0].meta.vin)

    if profile.step("to_local") is not None:
        boundaries = np.r_[True, kept_clip[1:] != kept_clip[:-1]] if len(rows) else np.ones(0, bool)
        first = np.maximum.accumulate(np.where(boundaries, np.arange(len(rows)), 0))
        t, x, y, heading = _to_local(
            t_us[rows], lat[rows], lon[rows], kept_table["heading"].to_numpy().astype(float), first
        )
        objects = kept_table["objects"].combine_chunks()
        if (step := profile.step("coarsen")) is not None:
            grid, tick = step.params["grid_m"], step.params["time_s"]
            if grid > 0:
                x, y = np.round(x / grid) * grid, np.round(y / grid) * grid
                objects = _coarsen_objects(objects, grid)
            if tick > 0:
                t = np.round(t / tick) * tick
        out = pa.Table.from_arrays(
            [
                clip_column,
                pa.array(t),
                pa.array(x),
                pa.array(y),
                kept_table["speed"],
                pa.array(heading.astype(np.float32)),
                kept_table["accel"],
                kept_table["yaw_rate"],
                kept_table["steering"],
                kept_table["brake"],
                objects,
            ],
            schema=LOCAL_SCHEMA,
        )
    else:
        out = kept_table.add_column(0, pa.field("clip", pa.string(), nullable=False), clip_column)

    counts = np.bincount(kept_clip, minlength=len(clips))
    kept_us = np.split(t_us[rows], np.cumsum(counts)[:-1])
    facts = [
        {
            "clip_id": clip.meta.clip_id,
            "output_id": secret_clip[i],
            "rows": int(counts[i]),
            "rows_in": clip.rows,
            "consent_training": clip.meta.consent_training,
            "source_vin": clip.meta.vin,
            "kept_us": kept_us[i],
            "removed": {name: int(counts_of[i]) for name, counts_of in per_clip.items()},
        }
        for i, clip in enumerate(clips)
    ]
    return Output(out, facts, vehicle, removed)
