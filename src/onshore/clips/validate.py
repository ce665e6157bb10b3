"""Checks that a decoded clip could have been recorded by a real vehicle.

Each check is vectorised over the whole clip and, when it fails, names the first offending row
and its values so a person can find it in the file.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from onshore.clips.camera import check_image, frame_times
from onshore.clips.codec import check_stream, is_video
from onshore.clips.geo import haversine
from onshore.clips.schema import (
    CLASS_ARRAY,
    FRAMES_SCHEMA,
    OBJECT_CLASSES,
    OBJECT_TYPE,
    SCHEMA,
    TRIGGERS,
    Clip,
)
from onshore.clips.vin import is_valid_vin
from onshore.errors import PhysicsError, SchemaError

__all__ = ["MAX_ACCEL", "MAX_SPEED", "validate_clip"]

MAX_SPEED: Final = 100.0
"""m/s (360 km/h): faster than any road vehicle a fleet uploads from."""
MAX_ACCEL: Final = 20.0
"""m/s^2, in either direction (about 2 g)."""
_MAX_JUMP_SPEED: Final = 150.0
"""m/s implied by two consecutive positions: above this the position jumped."""
_FRAME_SLACK_US: Final = 1_000_000
"""How far (µs) a camera frame may lie outside the clip's ego time span: cameras and the
ego state are stamped by different clocks."""


def validate_clip(clip: Clip, name: str) -> None:
    """Raise :class:`SchemaError` or :class:`PhysicsError` naming ``name`` if ``clip`` is bad."""
    meta, table = clip.meta, clip.table
    if not table.schema.equals(SCHEMA, check_metadata=False):
        differ = [
            f"{f.name} ({f.type}{'' if f.nullable else ', required'})"
            for f in SCHEMA
            if f.name not in table.schema.names or not table.schema.field(f.name).equals(f)
        ]
        raise SchemaError(f"{name}: columns do not match the clip schema: expected {differ}")
    if table.num_rows == 0:
        raise SchemaError(f"{name}: clip {meta.clip_id} has no ego rows")
    if meta.trigger not in TRIGGERS:
        raise SchemaError(f"{name}: trigger {meta.trigger!r} is not one of {', '.join(TRIGGERS)}")
    if not is_valid_vin(meta.vin):
        raise SchemaError(
            f"{name}: vin {meta.vin!r} is not a valid VIN "
            "(17 characters without I, O or Q, with the check digit in position 9)"
        )
    if not meta.clip_id.strip():
        raise SchemaError(f"{name}: clip_id is empty")
    for field in ("time", "lat", "lon", "speed", "heading", "accel", "yaw_rate"):
        if table[field].null_count:
            first = _first(pc.is_null(table[field]))
            raise SchemaError(f"{name}: ego field '{field}' is null at row {first}")
    _check_time(table, name)
    _check_ranges(table, name)
    _check_objects(table, name)
    if clip.frames is not None:
        _check_frames(clip.frames, table, name)


def _first(mask: pa.ChunkedArray | pa.Array | np.ndarray) -> int:
    values = mask if isinstance(mask, np.ndarray) else np.asarray(mask.to_numpy(False), bool)
    return int(np.argmax(values))


def _check_time(table: pa.Table, name: str) -> None:
    t = pc.cast(table["time"], pa.int64()).to_numpy()
    steps = np.diff(t)
    if (steps <= 0).any():
        i = _first(steps <= 0) + 1
        raise PhysicsError(
            f"{name}: time is not strictly increasing at row {i} "
            f"({_iso(t[i - 1])} then {_iso(t[i])})",
            hint="sort the rows by time and drop duplicates, or re-export from the vehicle log",
        )


def _iso(us: np.int64) -> str:
    return str(np.datetime64(int(us), "us")) + "Z"


def _check_ranges(table: pa.Table, name: str) -> None:
    lat = table["lat"].to_numpy()
    lon = table["lon"].to_numpy()
    bad = ~np.isfinite(lat) | (np.abs(lat) > 90)
    if bad.any():
        i = _first(bad)
        raise PhysicsError(f"{name}: latitude {lat[i]} at row {i} is outside -90..90")
    bad = ~np.isfinite(lon) | (np.abs(lon) > 180)
    if bad.any():
        i = _first(bad)
        raise PhysicsError(f"{name}: longitude {lon[i]} at row {i} is outside -180..180")
    speed = table["speed"].to_numpy()
    bad = ~np.isfinite(speed) | (speed < 0) | (speed > MAX_SPEED)
    if bad.any():
        i = _first(bad)
        raise PhysicsError(
            f"{name}: speed {speed[i]:.2f} m/s at row {i} is outside 0..{MAX_SPEED:.0f} m/s"
        )
    accel = table["accel"].to_numpy()
    bad = ~np.isfinite(accel) | (np.abs(accel) > MAX_ACCEL)
    if bad.any():
        i = _first(bad)
        raise PhysicsError(
            f"{name}: acceleration {accel[i]:.2f} m/s^2 at row {i} exceeds {MAX_ACCEL:.0f} m/s^2"
        )
    for field in ("heading", "yaw_rate"):
        values = table[field].to_numpy()
        if not np.isfinite(values).all():
            raise PhysicsError(
                f"{name}: {field} is not finite at row {_first(~np.isfinite(values))}"
            )
    if len(lat) > 1:
        t = pc.cast(table["time"], pa.int64()).to_numpy() / 1e6
        implied = haversine(lat[:-1], lon[:-1], lat[1:], lon[1:]) / np.diff(t)
        bad = implied > _MAX_JUMP_SPEED
        if bad.any():
            i = _first(bad) + 1
            raise PhysicsError(
                f"{name}: position jumps {implied[i - 1]:.0f} m/s between rows {i - 1} and {i}",
                hint="the GNSS fix is probably wrong; drop the jump or re-export the log",
            )


def _check_objects(table: pa.Table, name: str) -> None:
    column = table["objects"].combine_chunks()
    objects = column.values
    if len(objects) == 0:
        return
    if objects.null_count:
        raise SchemaError(f"{name}: a tracked object is null")
    fields = dict(zip(OBJECT_TYPE.names, objects.flatten(), strict=True))
    for field, child in fields.items():
        if child.null_count:
            raise SchemaError(f"{name}: a tracked object has no '{field}'")
    known = pc.is_in(fields["class"], CLASS_ARRAY)
    if not pc.all(known).as_py():
        cls = pc.filter(fields["class"], pc.invert(known))[0].as_py()
        raise SchemaError(
            f"{name}: tracked object class {cls!r} is not one of {', '.join(OBJECT_CLASSES)}"
        )
    for field in ("x", "y", "vx", "vy"):
        if not np.isfinite(fields[field].to_numpy(zero_copy_only=False)).all():
            raise PhysicsError(f"{name}: a tracked object's '{field}' is not finite")


def _check_frames(frames: pa.Table, table: pa.Table, name: str) -> None:
    if not frames.schema.equals(FRAMES_SCHEMA, check_metadata=False):
        raise SchemaError(f"{name}: camera frames do not match the frames schema")
    for field in FRAMES_SCHEMA.names:
        if frames[field].null_count:
            raise SchemaError(f"{name}: a camera frame has no '{field}'")
    if frames.num_rows == 0:
        return
    cameras = frames["camera"].to_pylist()
    if any(not camera.strip() for camera in cameras):
        raise SchemaError(f"{name}: a camera frame has an empty camera name")
    t = pc.cast(table["time"], pa.int64()).to_numpy()
    times = frame_times(frames)
    outside = (times < t.min() - _FRAME_SLACK_US) | (times > t.max() + _FRAME_SLACK_US)
    if outside.any():
        i = _first(outside)
        raise PhysicsError(
            f"{name}: camera frame {i} ({cameras[i]}, {_iso(times[i])}) lies outside the clip's "
            f"time span {_iso(t.min())} to {_iso(t.max())}",
            hint="the camera's clock or the clip's cut is wrong; re-export the clip",
        )
    streams: dict[str, tuple[str, list[bytes]]] = {}
    for i, (fmt, data) in enumerate(
        zip(frames["format"].to_pylist(), frames["data"].to_pylist(), strict=True)
    ):
        # A camera sends stills or one video stream, never both: its rows are that stream.
        fmt_before = streams.get(cameras[i], (fmt, []))[0]
        if is_video(fmt) or is_video(fmt_before):
            if fmt != fmt_before:
                raise SchemaError(
                    f"{name}: camera frame {i} ({cameras[i]}) is {fmt}, the camera's earlier "
                    f"frames {fmt_before}: a camera sends one video stream or stills"
                )
            streams.setdefault(cameras[i], (fmt, []))[1].append(data)
            continue
        streams.setdefault(cameras[i], (fmt, []))
        problem = check_image(data, fmt)
        if problem is not None:
            raise SchemaError(f"{name}: camera frame {i} ({cameras[i]}): {problem}")
    for camera, (fmt, packets) in streams.items():
        if is_video(fmt):
            # Rows are in time order within a camera (frames tables are sorted so).
            check_stream(packets, fmt, name, camera)
