"""From SUMO's floating-car data to the clips fleet vehicles upload.

Each fleet vehicle's continuous drive is cut into back-to-back windows of ``clip_seconds``. A
window becomes an upload when something happened in it (a hard brake, a lane change) and, to
give the model ordinary driving too, half of the uneventful ones are uploaded as random samples.

For every uploaded step the ego state is taken from the vehicle's own FCD row and the tracked
objects are every other vehicle within sensor range at that step, expressed in the ego frame
(x forward, y left). Everything is vectorised over all rows of all clips at once: neighbours are
found through a hash grid of cells as large as the sensor range, so each ego row is compared
with the vehicles of nine cells instead of every vehicle at that time step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from onshore.clips.schema import OBJECT_CLASSES, OBJECT_TYPE, SCHEMA, TRIGGERS, Clip, ClipMeta
from onshore.fleet.demand import FleetVehicle, derive_seed
from onshore.fleet.networks import Georeference

__all__ = ["FCD_COLUMNS", "ClipBatch", "ClipSettings", "cut_clips"]

FCD_COLUMNS: Final = (
    "timestep_time",
    "vehicle_id",
    "vehicle_x",
    "vehicle_y",
    "vehicle_angle",
    "vehicle_type",
    "vehicle_speed",
    "vehicle_lane",
    "vehicle_acceleration",
)
"""The FCD columns clips are made from."""

_WHEELBASE_M: Final = 2.8
"""Wheelbase of the fleet's cars, for the bicycle-model steering angle."""
_MAX_STEERING_RAD: Final = 0.6
"""Largest road-wheel angle of a passenger car (about 35 degrees)."""
_HEADING_SMOOTHING: Final = 5
"""Steps either side averaged into the heading. SUMO turns a vehicle through a junction in a few
straight segments, so its raw angle jumps by tens of degrees in one step; a real vehicle's fused
heading is smooth, and so must its derivative, the yaw rate, be."""
_BRAKE_FULL: Final = 6.0
"""Deceleration (m/s^2) at which brake demand reaches 1."""
_BRAKE_THRESHOLD: Final = 0.3
"""Deceleration below this is engine drag and rolling resistance, not the brake pedal."""


@dataclass(frozen=True, slots=True)
class ClipSettings:
    """How drives become clips."""

    region: str
    seed: int
    recorded_in: str
    epoch_us: int
    """Wall-clock time (µs since the Unix epoch, UTC) of simulation time 0."""
    clip_seconds: float = 20.0
    step_length: float = 0.1
    sensor_range_m: float = 80.0
    min_clip_seconds: float = 5.0
    """Windows shorter than this (a drive's last few seconds) are not uploaded."""
    random_upload_share: float = 0.5
    """Share of uneventful windows uploaded as ``random_sample``."""
    hard_brake: float = -3.0
    """Acceleration (m/s^2) below which a window is a ``hard_brake`` event."""


@dataclass(frozen=True, slots=True)
class ClipBatch:
    """The clips cut from one simulation, and where the fleet was when it recorded them."""

    clips: list[Clip]
    x: NDArray[np.float64]
    y: NDArray[np.float64]
    """Network positions of every uploaded ego row, for placing sensitive areas."""

    @staticmethod
    def empty() -> ClipBatch:
        """No clips: the fleet uploaded nothing."""
        return ClipBatch([], np.empty(0), np.empty(0))


@dataclass(frozen=True, slots=True)
class _Fcd:
    step: NDArray[np.int64]
    vehicle: NDArray[np.int32]
    names: list[str]
    x: NDArray[np.float64]
    y: NDArray[np.float64]
    angle: NDArray[np.float64]
    speed: NDArray[np.float64]
    accel: NDArray[np.float64]
    object_class: NDArray[np.int8]
    lane: pa.Array


def _load(table: pa.Table, classes: Mapping[str, str], step_length: float) -> _Fcd:
    # Steps at which no equipped vehicle was driving are written as a row without a vehicle.
    table = table.filter(pc.is_valid(table.column("vehicle_id")))
    vehicles = table.column("vehicle_id").combine_chunks().dictionary_encode()
    types = table.column("vehicle_type").combine_chunks().dictionary_encode()
    # Types the profile does not know (SUMO's default type) are reported as cars.
    type_class = np.array(
        [OBJECT_CLASSES.index(classes.get(name, "car")) for name in types.dictionary.to_pylist()],
        dtype=np.int8,
    )

    def floats(name: str) -> NDArray[np.float64]:
        return np.asarray(table.column(name).to_numpy(), dtype=np.float64)

    return _Fcd(
        step=np.rint(floats("timestep_time") / step_length).astype(np.int64),
        vehicle=np.asarray(vehicles.indices.to_numpy(), dtype=np.int32),
        names=[str(name) for name in vehicles.dictionary.to_pylist()],
        x=floats("vehicle_x"),
        y=floats("vehicle_y"),
        angle=floats("vehicle_angle"),
        speed=floats("vehicle_speed"),
        accel=floats("vehicle_acceleration"),
        object_class=type_class[types.indices.to_numpy()],
        lane=table.column("vehicle_lane").combine_chunks(),
    )


@dataclass(frozen=True, slots=True)
class _Windows:
    rows: NDArray[np.intp]
    """FCD rows of every fleet vehicle, ordered by fleet index then time."""
    starts: NDArray[np.intp]
    """Position in ``rows`` where each window starts."""
    lengths: NDArray[np.intp]
    fleet_index: NDArray[np.intp]
    ordinal: NDArray[np.intp]
    """Number of the window within its vehicle's windows (stable part of the clip id)."""


def _windows(fcd: _Fcd, fleet_of_vehicle: NDArray[np.intp], window_steps: int) -> _Windows:
    own = fleet_of_vehicle[fcd.vehicle]
    rows = np.nonzero(own >= 0)[0]
    rows = rows[np.lexsort((fcd.step[rows], own[rows]))]
    fleet_index, step = own[rows], fcd.step[rows]
    # A drive breaks where the vehicle changes or a step is missing (teleported while jammed).
    new_drive = np.ones(len(rows), dtype=bool)
    new_drive[1:] = (fleet_index[1:] != fleet_index[:-1]) | (step[1:] != step[:-1] + 1)
    drive_start = np.nonzero(new_drive)[0]
    in_drive = np.arange(len(rows)) - drive_start[np.cumsum(new_drive) - 1]
    starts = np.nonzero(new_drive | (in_drive % window_steps == 0))[0]
    lengths = np.diff(np.append(starts, len(rows)))
    owner = fleet_index[starts]
    new_owner = np.ones(len(starts), dtype=bool)
    new_owner[1:] = owner[1:] != owner[:-1]
    owner_start = np.nonzero(new_owner)[0]
    ordinal = np.arange(len(starts)) - owner_start[np.cumsum(new_owner) - 1]
    return _Windows(rows, starts, lengths, owner, ordinal)


_HARD_BRAKE: Final = TRIGGERS.index("hard_brake")
_LANE_CHANGE: Final = TRIGGERS.index("lane_change")
_RANDOM: Final = TRIGGERS.index("random_sample")


def _triggers(fcd: _Fcd, windows: _Windows, settings: ClipSettings) -> NDArray[np.int8]:
    rows, starts = windows.rows, windows.starts
    triggers = np.full(len(starts), _RANDOM, dtype=np.int8)
    if not len(starts):
        return triggers
    min_accel = np.minimum.reduceat(fcd.accel[rows], starts)
    lanes = fcd.lane.take(pa.array(rows))
    internal = np.asarray(
        pc.fill_null(pc.starts_with(lanes, ":"), True).to_numpy(zero_copy_only=False), dtype=bool
    )
    parts = pc.extract_regex(lanes, r"^(?P<edge>.*)_(?P<index>\d+)$")
    edge = pc.struct_field(parts, "edge").dictionary_encode()
    edge_code = np.asarray(pc.fill_null(edge.indices, -1).to_numpy(), dtype=np.int64)
    index = pc.fill_null(pc.cast(pc.struct_field(parts, "index"), pa.int32()), -1).to_numpy()
    # A lane change moves to another lane of the same edge; entering a junction's internal
    # lanes or the next edge changes the lane id without changing lanes.
    changed = np.zeros(len(rows), dtype=bool)
    changed[1:] = (
        (edge_code[1:] == edge_code[:-1])
        & (edge_code[1:] >= 0)
        & (index[1:] != index[:-1])
        & ~internal[1:]
        & ~internal[:-1]
    )
    changed[starts] = False
    lane_change = np.add.reduceat(changed.astype(np.int32), starts) > 0
    triggers[lane_change] = _LANE_CHANGE
    triggers[min_accel < settings.hard_brake] = _HARD_BRAKE
    return triggers


def _heading_and_yaw_rate(
    angle: NDArray[np.float64],
    clip_starts: NDArray[np.intp],
    clip_lengths: NDArray[np.intp],
    settings: ClipSettings,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Smoothed compass heading (deg) and its derivative (deg/s) for rows grouped in clips."""
    n = len(angle)
    start = np.repeat(clip_starts, clip_lengths)
    last = start + np.repeat(clip_lengths, clip_lengths) - 1
    # Unwrap within each clip, so 359 -> 1 degrees is a step of 2 and not of -358.
    step = np.zeros(n)
    step[1:] = (np.diff(angle) + 180.0) % 360.0 - 180.0
    step[clip_starts] = 0.0
    turned = np.cumsum(step)
    unwrapped = angle[start] + turned - turned[start]
    # Centred moving average. Near the ends of a clip the window shrinks on both sides alike:
    # a lopsided window would bend a steady turn there and halve its yaw rate.
    summed = np.concatenate(([0.0], np.cumsum(unwrapped)))
    index = np.arange(n)
    half = np.minimum(_HEADING_SMOOTHING, np.minimum(index - start, last - index))
    low, high = index - half, index + half
    smooth = (summed[high + 1] - summed[low]) / (high - low + 1)
    before = np.maximum(start, index - 1)
    after = np.minimum(last, index + 1)
    span = np.maximum(after - before, 1) * settings.step_length
    yaw_rate = (smooth[after] - smooth[before]) / span
    return smooth % 360.0, yaw_rate


def _neighbours(
    fcd: _Fcd, egos: NDArray[np.intp], radius: float
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Pairs (position in ``egos``, FCD row) of other vehicles within ``radius`` at the same step.

    Rows are hashed by (step, grid cell) with cells ``radius`` wide, so every neighbour of an ego
    lies in its own or one of the eight surrounding cells at the same step.
    """
    cx = np.floor(fcd.x / radius).astype(np.int64)
    cy = np.floor(fcd.y / radius).astype(np.int64)
    # Shift cells so the neighbouring cells of any row have non-negative coordinates too.
    cx -= cx.min(initial=0) - 1
    cy -= cy.min(initial=0) - 1
    width, height = int(cx.max(initial=0)) + 2, int(cy.max(initial=0)) + 2
    keys = (fcd.step * width + cx) * height + cy
    order = np.argsort(keys, kind="stable")
    cell_keys, cell_start, cell_count = np.unique(
        keys[order], return_index=True, return_counts=True
    )
    pair_ego: list[NDArray[np.intp]] = []
    pair_other: list[NDArray[np.intp]] = []
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            wanted = (fcd.step[egos] * width + cx[egos] + dx) * height + cy[egos] + dy
            found = np.minimum(np.searchsorted(cell_keys, wanted), len(cell_keys) - 1)
            hit = np.nonzero(cell_keys[found] == wanted)[0]
            counts = cell_count[found[hit]]
            # Expand each (ego, cell) into one pair per row of the cell.
            first = np.repeat(cell_start[found[hit]] - np.cumsum(counts) + counts, counts)
            pair_ego.append(np.repeat(hit, counts))
            pair_other.append(order[first + np.arange(int(counts.sum()))])
    ego_pos = np.concatenate(pair_ego)
    other = np.concatenate(pair_other)
    dx_m = fcd.x[other] - fcd.x[egos[ego_pos]]
    dy_m = fcd.y[other] - fcd.y[egos[ego_pos]]
    keep = (other != egos[ego_pos]) & (dx_m * dx_m + dy_m * dy_m <= radius * radius)
    return ego_pos[keep], other[keep]


def _objects(
    fcd: _Fcd,
    egos: NDArray[np.intp],
    ego_heading: NDArray[np.float64],
    clip_of_row: NDArray[np.intp],
    radius: float,
) -> pa.ListArray:
    """The tracked-objects list of every ego row, in the frame of the heading it reports."""
    ego_pos, other = _neighbours(fcd, egos, radius)
    ego = egos[ego_pos]
    heading = np.radians(ego_heading[ego_pos])
    # SUMO angles are compass bearings: forward = (sin, cos) in (east, north), left = (-cos, sin).
    fwd_e, fwd_n = np.sin(heading), np.cos(heading)
    dx, dy = fcd.x[other] - fcd.x[ego], fcd.y[other] - fcd.y[ego]
    other_heading = np.radians(fcd.angle[other])
    dvx = fcd.speed[other] * np.sin(other_heading) - fcd.speed[ego] * fwd_e
    dvy = fcd.speed[other] * np.cos(other_heading) - fcd.speed[ego] * fwd_n
    x = dx * fwd_e + dy * fwd_n
    y = -dx * fwd_n + dy * fwd_e
    vx = dvx * fwd_e + dvy * fwd_n
    vy = -dvx * fwd_n + dvy * fwd_e
    distance = np.hypot(x, y)

    # Track ids number each clip's objects in order of first appearance (nearest first within
    # a step), so they are stable within a clip and reveal nothing of SUMO's vehicle ids.
    order = np.lexsort((distance, ego_pos))
    ego_pos, other = ego_pos[order], other[order]
    x, y, vx, vy = x[order], y[order], vx[order], vy[order]
    n_vehicles = len(fcd.names)
    identity = clip_of_row[ego_pos].astype(np.int64) * n_vehicles + fcd.vehicle[other]
    unique, first, inverse = np.unique(identity, return_index=True, return_inverse=True)
    clip_of_track = unique // n_vehicles
    by_appearance = np.lexsort((first, clip_of_track))
    group_start = np.searchsorted(clip_of_track[by_appearance], clip_of_track[by_appearance])
    track_of_unique = np.empty(len(unique), dtype=np.int32)
    track_of_unique[by_appearance] = np.arange(len(unique)) - group_start + 1
    track = track_of_unique[inverse]

    # Within a step, objects are listed by track id.
    listing = np.lexsort((track, ego_pos))
    offsets = np.zeros(len(egos) + 1, dtype=np.int32)
    np.cumsum(np.bincount(ego_pos, minlength=len(egos)), out=offsets[1:])
    classes = pa.array(OBJECT_CLASSES, pa.string()).take(
        pa.array(fcd.object_class[other[listing]].astype(np.int32))
    )
    values = pa.StructArray.from_arrays(
        [
            pa.array(track[listing], pa.int32()),
            classes,
            *(
                pa.array(column[listing].astype(np.float32), pa.float32())
                for column in (x, y, vx, vy)
            ),
        ],
        fields=list(OBJECT_TYPE),
    )
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values).cast(
        SCHEMA.field("objects").type
    )


def cut_clips(
    table: pa.Table,
    fleet: Sequence[FleetVehicle],
    classes: Mapping[str, str],
    georef: Georeference,
    settings: ClipSettings,
) -> ClipBatch:
    """Cut the uploads of ``fleet`` out of an FCD ``table`` (columns :data:`FCD_COLUMNS`).

    ``classes`` maps SUMO vType ids to object classes. Returns the clips in order of fleet
    index and time, each conforming to :data:`~onshore.clips.schema.SCHEMA` and marked
    ``simulated`` in its metadata.
    """
    fcd = _load(table, classes, settings.step_length)
    if len(fcd.step) == 0 or not fleet:
        return ClipBatch.empty()
    by_id = {vehicle.sumo_id: vehicle for vehicle in fleet}
    fleet_of_vehicle = np.array(
        [by_id[name].index if name in by_id else -1 for name in fcd.names], dtype=np.intp
    )
    window_steps = max(1, round(settings.clip_seconds / settings.step_length))
    windows = _windows(fcd, fleet_of_vehicle, window_steps)
    triggers = _triggers(fcd, windows, settings)
    draw = np.random.default_rng(derive_seed(settings.region, settings.seed, "uploads"))
    sampled = draw.random(len(windows.starts)) < settings.random_upload_share
    long_enough = windows.lengths * settings.step_length >= settings.min_clip_seconds - 1e-9
    upload = long_enough & ((triggers != _RANDOM) | sampled)
    if not upload.any():
        return ClipBatch.empty()

    window_of_pos = np.repeat(np.arange(len(windows.starts)), windows.lengths)
    selected = np.nonzero(upload[window_of_pos])[0]
    clip_of_window = np.cumsum(upload) - 1
    clip_of_row = clip_of_window[window_of_pos[selected]]
    egos = windows.rows[selected]
    clip_lengths = windows.lengths[upload]
    clip_starts = np.concatenate(([0], np.cumsum(clip_lengths)[:-1]))

    lon, lat = georef.to_lonlat(fcd.x[egos], fcd.y[egos])
    speed, accel = fcd.speed[egos], fcd.accel[egos]
    heading, yaw_rate = _heading_and_yaw_rate(fcd.angle[egos], clip_starts, clip_lengths, settings)
    steering = np.arctan(_WHEELBASE_M * np.radians(yaw_rate) / np.maximum(speed, 0.5))
    steering = np.clip(steering, -_MAX_STEERING_RAD, _MAX_STEERING_RAD)
    brake = np.where(accel < -_BRAKE_THRESHOLD, np.clip(-accel / _BRAKE_FULL, 0.0, 1.0), 0.0)
    step_us = round(settings.step_length * 1_000_000)
    time = settings.epoch_us + fcd.step[egos] * step_us

    columns: list[pa.Array] = [
        pa.array(time, pa.timestamp("us", tz="UTC")),
        pa.array(lat, pa.float64()),
        pa.array(lon, pa.float64()),
        *(
            pa.array(values.astype(np.float32), pa.float32())
            for values in (speed, heading, accel, yaw_rate, steering, brake)
        ),
        _objects(fcd, egos, heading, clip_of_row, settings.sensor_range_m),
    ]
    rows = pa.Table.from_arrays(columns, schema=SCHEMA)

    by_index = {vehicle.index: vehicle for vehicle in fleet}
    clips: list[Clip] = []
    for start, length, window in zip(
        clip_starts.tolist(), clip_lengths.tolist(), np.nonzero(upload)[0].tolist(), strict=True
    ):
        vehicle = by_index[int(windows.fleet_index[window])]
        meta = ClipMeta(
            clip_id=(
                f"{settings.region}-{settings.seed}-{vehicle.index:04d}"
                f"-{int(windows.ordinal[window]):03d}"
            ),
            vin=vehicle.vin,
            vehicle_model=vehicle.model,
            trigger=TRIGGERS[int(triggers[window])],
            consent_training=vehicle.consent_training,
            recorded_in=settings.recorded_in,
            sensor_range_m=settings.sensor_range_m,
            simulated=True,
        )
        clips.append(Clip(meta, rows.slice(start, length)))
    return ClipBatch(clips, fcd.x[egos], fcd.y[egos])
