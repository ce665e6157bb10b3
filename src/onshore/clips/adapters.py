"""Uploads in the message types real vehicles log, mapped onto onshore's clip.

A carmaker's vehicles do not log ``onshore_msgs``: they record GNSS fixes
(``sensor_msgs/msg/NavSatFix``, ``foxglove.LocationFix``), their motion
(``nav_msgs/msg/Odometry``, ``geometry_msgs/msg/TwistStamped``), the objects their perception
tracks (``autoware_perception_msgs/msg/TrackedObjects``, ``foxglove.SceneUpdate``) and camera
images or video (``sensor_msgs/msg/CompressedImage``, ``foxglove.CompressedImage``,
``foxglove.CompressedVideo``), in ROS 2 CDR, Protobuf or JSON. The official decoders
(``mcap-ros2-support``, ``mcap-protobuf-support``) turn each message into an object, and a
:class:`~onshore.settings.MessageMapping` says where in it each field of the clip lies. The
built-in mappings (:data:`BUILTIN`) cover the types above; a site adds its own, and names what
a channel is where its type does not say, in ``onshore.toml`` (``[sites.<id>.ingest]``).

From the channels it reads, :func:`read_standard` builds the clip as onshore keeps it: ego rows
on a 10 Hz grid over the GNSS fixes (position interpolated; speed and yaw rate from the motion
channel, else from the track; heading from the track, since a world frame's orientation need
not be north-aligned), the tracked objects of each step in the vehicle's frame (x forward,
y left), with their velocity relative to the vehicle from their positions in consecutive
steps, and the camera frames as the vehicle sent them (video stays video:
:mod:`onshore.clips.codec`). Channels no mapping covers (``/tf``, diagnostics, lidar) are left
out; a channel that a mapping covers but whose messages lack a mapped field refuses the upload,
naming the channel and the field.
"""

from __future__ import annotations

import base64
import io
import math
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Final

import numpy as np
import orjson
import pyarrow as pa
from mcap.decoder import DecoderFactory
from mcap.exceptions import McapError
from mcap.reader import make_reader
from mcap.records import Channel, Schema
from mcap_protobuf.decoder import DecoderFactory as ProtobufDecoders
from mcap_ros2.decoder import DecoderFactory as Ros2Decoders
from numpy.typing import NDArray

from onshore.clips import geo
from onshore.clips.camera import check_image, frames_table, image_format
from onshore.clips.schema import OBJECT_CLASSES, OBJECT_TYPE, SCHEMA, Clip, ClipMeta
from onshore.errors import SchemaError, UnreadableFile
from onshore.settings import IngestSettings, MessageMapping, UploadRole

__all__ = ["BUILTIN", "REQUIRED", "STEP_NS", "describe", "read_standard"]

STEP_NS: Final = 100_000_000
"""The clip's ego rows are 10 Hz steps."""
_OBJECT_TOLERANCE_NS: Final = 100_000_000
"""An objects message stands for the step nearest to it, up to one step away."""
_MOVING_M: Final = 0.05
"""Displacement per step (0.5 m/s) below which the track's bearing is noise, and the vehicle
keeps the heading it had."""

REQUIRED: Final[Mapping[UploadRole, tuple[str, ...]]] = {
    "position": ("stamp", "lat", "lon"),
    "motion": ("stamp", "speed"),
    "objects": ("stamp", "list", "id", "class", "x", "y"),
    "camera": ("stamp", "data", "format"),
}
_OPTIONAL: Final[Mapping[UploadRole, tuple[str, ...]]] = {
    "position": ("status",),
    "motion": ("yaw_rate", "frame", "x", "y", "orientation"),
    "objects": ("frame",),
    "camera": ("frame",),
}
_PER_OBJECT: Final = ("id", "class", "x", "y")


def _mapping(role: UploadRole, classes: Mapping[str, str] | None = None, **fields: str) -> Any:
    return MessageMapping(role=role, fields=fields, classes=dict(classes or {}))


_AUTOWARE_CLASSES: Final = {
    "0": "ignore",  # UNKNOWN
    "1": "car",
    "2": "truck",
    "3": "bus",
    "4": "truck",  # TRAILER
    "5": "motorcycle",
    "6": "bicycle",
    "7": "pedestrian",
}
_SCENE_CLASSES: Final = {c: c for c in OBJECT_CLASSES} | {
    "unknown": "ignore",
    "trailer": "truck",
    "person": "pedestrian",
    "cyclist": "bicycle",
}
_LOCATION_FIX: Final = _mapping(
    "position", stamp="timestamp", lat="latitude", lon="longitude", frame="frame_id"
)
_SCENE_UPDATE: Final = _mapping(
    "objects",
    _SCENE_CLASSES,
    stamp="@log_time",
    list="entities",
    frame="entities[0].frame_id",
    id="id",
    **{"class": "metadata[class]"},
    x="cubes[0].pose.position.x",
    y="cubes[0].pose.position.y",
)
_VIDEO: Final = _mapping(
    "camera", stamp="timestamp", data="data", format="format", frame="frame_id"
)
_ROS_IMAGE: Final = _mapping(
    "camera", stamp="header.stamp", data="data", format="format", frame="header.frame_id"
)

BUILTIN: Final[Mapping[str, MessageMapping]] = {
    "sensor_msgs/msg/NavSatFix": _mapping(
        "position", stamp="header.stamp", lat="latitude", lon="longitude", status="status.status"
    ),
    "foxglove.LocationFix": _LOCATION_FIX,
    "foxglove_msgs/msg/LocationFix": _mapping(
        "position", stamp="header.stamp", lat="latitude", lon="longitude"
    ),
    "nav_msgs/msg/Odometry": _mapping(
        "motion",
        stamp="header.stamp",
        speed="twist.twist.linear.x",
        yaw_rate="twist.twist.angular.z",
        frame="header.frame_id",
        x="pose.pose.position.x",
        y="pose.pose.position.y",
        orientation="pose.pose.orientation",
    ),
    "geometry_msgs/msg/TwistStamped": _mapping(
        "motion", stamp="header.stamp", speed="twist.linear.x", yaw_rate="twist.angular.z"
    ),
    "autoware_perception_msgs/msg/TrackedObjects": _mapping(
        "objects",
        _AUTOWARE_CLASSES,
        stamp="header.stamp",
        list="objects",
        frame="header.frame_id",
        id="object_id.uuid",
        **{"class": "classification[0].label"},
        x="kinematics.pose_with_covariance.pose.position.x",
        y="kinematics.pose_with_covariance.pose.position.y",
    ),
    "foxglove.SceneUpdate": _SCENE_UPDATE,
    "foxglove_msgs/msg/SceneUpdate": _SCENE_UPDATE,
    "foxglove.CompressedVideo": _VIDEO,
    "foxglove.CompressedImage": _VIDEO,  # the same fields as video
    "foxglove_msgs/msg/CompressedVideo": _VIDEO,
    "sensor_msgs/msg/CompressedImage": _ROS_IMAGE,
}
"""The message types every site reads without a word of configuration."""


def describe(settings: IngestSettings) -> dict[str, str]:
    """Each message type the site reads, with its role (built-ins and the site's own)."""
    types = {**BUILTIN, **settings.types}
    return {name: mapping.role for name, mapping in sorted(types.items())}


# -- decoding ------------------------------------------------------------------------------


class _JsonDecoders(DecoderFactory):
    """JSON messages (Foxglove's JSON schemas) need no schema to decode."""

    def decoder_for(self, message_encoding: str, schema: Schema | None) -> Any:
        if message_encoding != "json":
            return None
        return orjson.loads


class _Missing(Exception):
    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


@dataclass(frozen=True, slots=True)
class _Step:
    name: str
    index: int | None = None
    key: str | None = None


@cache
def _parse(path: str) -> tuple[_Step, ...]:
    steps = []
    for part in path.split("."):
        name, _, rest = part.partition("[")
        if not rest:
            steps.append(_Step(name))
            continue
        inner = rest.rstrip("]")
        if inner.isdigit():
            steps.append(_Step(name, index=int(inner)))
        else:
            steps.append(_Step(name, key=inner))
    return tuple(steps)


_PRESENCE: dict[tuple[type, str], bool] = {}
"""Per message class and field, whether the field has presence (a Protobuf sub-message, which
reads as an empty message when unset); asked once per class, as the answer never changes."""


def _has_presence(value: Any, name: str) -> bool:
    key = (type(value), name)
    known = _PRESENCE.get(key)
    if known is None:
        try:
            value.HasField(name)
            known = True
        except (AttributeError, ValueError):
            known = False  # not Protobuf, or a scalar or repeated field
        _PRESENCE[key] = known
    return known


def _attribute(value: Any, name: str, path: str) -> Any:
    if isinstance(value, dict):
        if name not in value:
            raise _Missing(path)
        return value[name]
    try:
        found = getattr(value, name)
    except AttributeError:
        raise _Missing(path) from None
    if _has_presence(value, name) and not value.HasField(name):
        raise _Missing(path)
    return found


def _get(message: Any, steps: tuple[_Step, ...], path: str) -> Any:
    value = message
    for step in steps:
        value = _attribute(value, step.name, path)
        if step.index is not None:
            if len(value) <= step.index:
                raise _Missing(path)
            value = value[step.index]
        elif step.key is not None:
            pairs = [p for p in value if _attribute(p, "key", path) == step.key]
            if not pairs:
                raise _Missing(path)
            value = _attribute(pairs[0], "value", path)
    return value


def _nanos(value: Any, path: str) -> int:
    """A time in nanoseconds from a ROS ``Time``, a Protobuf ``Timestamp``, Foxglove's JSON
    ``{sec, nsec}``, integer nanoseconds or float seconds."""
    if isinstance(value, bool):
        raise _Missing(path)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return round(value * 1e9)
    for sec, frac in (("sec", "nanosec"), ("sec", "nsec"), ("seconds", "nanos")):
        try:
            return int(_attribute(value, sec, path)) * 1_000_000_000 + int(
                _attribute(value, frac, path)
            )
        except _Missing:
            continue
    raise _Missing(path)


def _bytes(value: Any) -> bytes:
    if isinstance(value, str):  # JSON carries bytes as base64
        return base64.b64decode(value)
    return bytes(value)


def _yaw(q: Any, path: str) -> float:
    """Counter-clockwise angle (radians) of a quaternion's heading in its frame's x-y plane."""
    x, y, z, w = (float(_attribute(q, axis, path)) for axis in ("x", "y", "z", "w"))
    return math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


@dataclass(slots=True)
class _Channel:
    topic: str
    type: str
    role: UploadRole
    mapping: MessageMapping
    camera: str | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)


class _Reader:
    """Reads one upload's mapped channels into plain rows."""

    def __init__(self, name: str, settings: IngestSettings) -> None:
        self.name = name
        self.settings = settings
        self.types = {**BUILTIN, **settings.types}

    def channel(self, topic: str, schema: str) -> _Channel | None:
        said = self.settings.topics.get(topic)
        if said == "ignore":
            return None
        mapping = self.types.get(schema)
        if said is None:
            return None if mapping is None else _Channel(topic, schema, mapping.role, mapping)
        role, _, camera = said.partition(":")
        if mapping is None:
            raise SchemaError(
                f"{self.name}: channel {topic} is mapped as {role} in onshore.toml, but its "
                f"message type {schema!r} has no mapping",
                hint=f'add [sites.<id>.ingest.types."{schema}"] with role = "{role}" and its '
                "fields, or map the channel as 'ignore'",
            )
        if mapping.role != role:
            raise SchemaError(
                f"{self.name}: channel {topic} is mapped as {role} in onshore.toml, but "
                f"messages of type {schema!r} give {mapping.role}",
            )
        return _Channel(topic, schema, mapping.role, mapping, camera or None)

    def row(self, channel: _Channel, message: Any, log_time: int, index: int) -> None:
        mapping = channel.mapping
        missing = [f for f in REQUIRED[channel.role] if f not in mapping.fields]
        if missing:
            raise SchemaError(
                f"{self.name}: the mapping of {channel.type!r} gives no {', '.join(missing)}, "
                f"which a {channel.role} channel needs",
                hint="see [sites.<id>.ingest.types] in onshore.toml",
            )
        row: dict[str, Any] = {}
        fields = dict(mapping.fields)
        for name in (*REQUIRED[channel.role], *_OPTIONAL[channel.role]):
            path = fields.get(name)
            if path is None or (channel.role == "objects" and name in _PER_OBJECT):
                continue
            try:
                row[name] = self._value(name, path, message, log_time)
            except _Missing as exc:
                if name not in REQUIRED[channel.role] and name != "frame":
                    continue
                if name == "frame" and channel.role == "objects":
                    continue  # an empty object list names no frame
                raise self._missing(channel, index, name, exc.path) from None
            except (TypeError, ValueError) as exc:
                raise SchemaError(
                    f"{self.name}: channel {channel.topic} ({channel.type}) message {index}: "
                    f"field {path!r} ({name}) cannot be read: {exc}"
                ) from exc
        if channel.role == "objects":
            row["items"] = [
                self._object(channel, item, index, fields) for item in row.pop("list") or ()
            ]
        channel.rows.append(row)

    def _value(self, name: str, path: str, message: Any, log_time: int) -> Any:
        if path == "@log_time":
            return log_time
        value = _get(message, _parse(path), path)
        if name == "stamp":
            return _nanos(value, path)
        if name == "orientation":
            return _yaw(value, path)
        if name == "data":
            return _bytes(value)
        if name in ("frame", "format", "list"):
            return value
        return float(value)

    def _object(
        self, channel: _Channel, item: Any, index: int, fields: dict[str, str]
    ) -> tuple[str, str, float, float]:
        values: list[Any] = []
        for name in _PER_OBJECT:
            path = fields[name]
            try:
                values.append(_get(item, _parse(path), path))
            except _Missing as exc:
                raise self._missing(channel, index, name, exc.path) from None
        raw_id, raw_class, x, y = values
        ident = bytes(raw_id).hex() if isinstance(raw_id, bytes | bytearray | list) else raw_id
        return str(ident), str(raw_class), float(x), float(y)

    def _missing(self, channel: _Channel, index: int, name: str, path: str) -> SchemaError:
        return SchemaError(
            f"{self.name}: channel {channel.topic} ({channel.type}) message {index} has no "
            f"field {path!r}, which gives the clip's {name}",
            hint=f'map the field in onshore.toml: [sites.<id>.ingest.types."{channel.type}"] '
            f'fields.{name} = "<path>"',
        )


def read_standard(data: bytes, name: str, settings: IngestSettings) -> Clip:
    """Decode an upload of standard message types; ``name`` is used in error messages.

    Raises :class:`UnreadableFile` for a truncated or corrupt file, and :class:`SchemaError`
    naming the channel and field when the upload lacks what a clip needs.
    """
    reader = _Reader(name, settings)
    channels: dict[int, _Channel | None] = {}
    decoders: dict[int, Callable[[bytes], Any]] = {}
    meta: dict[str, str] | None = None
    try:
        mcap = make_reader(io.BytesIO(data))
        for record in mcap.iter_metadata():
            if record.name == settings.meta_record:
                meta = dict(record.metadata)
        counts: dict[int, int] = {}
        for schema, channel, message in mcap.iter_messages(log_time_order=False):
            if channel.id not in channels:
                channels[channel.id] = reader.channel(
                    channel.topic, schema.name if schema is not None else ""
                )
            mapped = channels[channel.id]
            if mapped is None:
                continue
            decoder = decoders.get(channel.id)
            if decoder is None:
                decoder = decoders[channel.id] = _decoder_for(name, channel, schema)
            index = counts.get(channel.id, 0)
            counts[channel.id] = index + 1
            try:
                decoded = decoder(message.data)
            except (McapError, ValueError, KeyError, IndexError, struct.error) as exc:
                raise SchemaError(
                    f"{name}: channel {channel.topic} message {index} does not decode as "
                    f"{mapped.type} ({channel.message_encoding}): {exc}"
                ) from exc
            reader.row(mapped, decoded, message.log_time, index)
    except McapError as exc:
        raise UnreadableFile(
            f"{name}: truncated or corrupt MCAP ({type(exc).__name__}: {exc})",
            hint="the upload was probably cut off; ask the vehicle to upload it again",
        ) from exc
    except (EOFError, struct.error) as exc:
        raise UnreadableFile(
            f"{name}: truncated or corrupt MCAP ({exc})",
            hint="the upload was probably cut off; ask the vehicle to upload it again",
        ) from exc
    return _build(name, settings, meta, [c for c in channels.values() if c is not None])


def _decoder_for(name: str, channel: Channel, schema: Schema | None) -> Callable[[bytes], Any]:
    for factory in _FACTORIES:
        decoder = factory.decoder_for(channel.message_encoding, schema)
        if decoder is not None:
            return decoder
    raise SchemaError(
        f"{name}: channel {channel.topic} is encoded as {channel.message_encoding!r}, "
        "which onshore does not decode",
        hint="onshore reads ROS 2 (cdr), Protobuf and JSON messages",
    )


_FACTORIES: Final[tuple[DecoderFactory, ...]] = (
    Ros2Decoders(),
    ProtobufDecoders(),
    _JsonDecoders(),
)


def _build(
    name: str, settings: IngestSettings, meta: dict[str, str] | None, channels: list[_Channel]
) -> Clip:
    clip_meta = _meta(name, settings, meta)
    positions = _largest(channels, "position")
    if positions is None:
        known = sorted(t for t, m in {**BUILTIN, **settings.types}.items() if m.role == "position")
        raise SchemaError(
            f"{name}: no channel of GNSS positions, so the clip has no ego rows",
            hint=f"positions come from messages of type {', '.join(known)}; map another type "
            "in onshore.toml ([sites.<id>.ingest.types])",
        )
    motion = _largest(channels, "motion")
    ego = _Ego.of(name, positions, motion)
    objects = _largest(channels, "objects")
    lists = (
        _objects(name, objects, ego, motion, settings)
        if objects is not None
        else pa.array([[]] * len(ego.stamps), type=pa.list_(OBJECT_TYPE))
    )
    frames = _frames(name, [c for c in channels if c.role == "camera"])
    return Clip(clip_meta, ego.table(lists), frames)


def _largest(channels: list[_Channel], role: UploadRole) -> _Channel | None:
    """The channel of ``role`` with the most messages (a vehicle may log a raw and a fused
    GNSS fix: the denser one is the one to follow)."""
    found = [c for c in channels if c.role == role and c.rows]
    return max(found, key=lambda c: (len(c.rows), c.topic)) if found else None


def _meta(name: str, settings: IngestSettings, record: dict[str, str] | None) -> ClipMeta:
    if record is None and not settings.meta_defaults:
        raise SchemaError(
            f"{name}: no {settings.meta_record!r} metadata record (vin, trigger, consent...)",
            hint="the vehicle writes it as an MCAP metadata record; a site whose vehicles name "
            "it otherwise sets meta_record in [sites.<id>.ingest]",
        )
    raw: dict[str, Any] = dict(settings.meta_defaults)
    for key, value in (record or {}).items():
        raw[key] = value
    for ours, theirs in settings.meta_fields.items():
        if record is not None and theirs in record:
            raw[ours] = record[theirs]
    try:
        return ClipMeta.from_mapping(raw)
    except KeyError as exc:
        field_name = exc.args[0]
        key = settings.meta_fields.get(field_name, field_name)
        raise SchemaError(
            f"{name}: metadata record {settings.meta_record!r} has no {key!r} "
            f"(the clip's {field_name})",
            hint="map it with meta_fields, or give a default with meta_defaults, in "
            "[sites.<id>.ingest]",
        ) from exc
    except (TypeError, ValueError) as exc:
        raise SchemaError(
            f"{name}: metadata record {settings.meta_record!r} is invalid: {exc}"
        ) from exc


# -- ego rows ------------------------------------------------------------------------------


def _series(
    channel: _Channel, fields: Iterable[str]
) -> tuple[NDArray[np.int64], dict[str, NDArray[np.float64]]]:
    """A channel's stamps, in order and without repeats, and its fields (NaN where a message
    does not give one) at them."""
    rows = channel.rows
    stamps = np.array([r["stamp"] for r in rows], dtype=np.int64)
    order = np.argsort(stamps, kind="stable")
    keep = np.ones(len(order), dtype=bool)
    keep[1:] = np.diff(stamps[order]) > 0  # a repeated stamp is a repeated message
    order = order[keep]
    values = {
        f: np.array([rows[i].get(f, np.nan) for i in order], dtype=np.float64) for f in fields
    }
    return stamps[order], values


@dataclass(frozen=True, slots=True)
class _Ego:
    stamps: NDArray[np.int64]
    lat: NDArray[np.float64]
    lon: NDArray[np.float64]
    speed: NDArray[np.float64]
    heading: NDArray[np.float64]
    accel: NDArray[np.float64]
    yaw_rate: NDArray[np.float64]

    @classmethod
    def of(cls, name: str, positions: _Channel, motion: _Channel | None) -> _Ego:
        stamps, fix = _series(positions, ("lat", "lon", "status"))
        good = ~(fix["status"] < 0)  # NaN (no status) counts as a fix
        t, lat, lon = stamps[good], fix["lat"][good], fix["lon"][good]
        if len(t) < 2:
            raise SchemaError(
                f"{name}: channel {positions.topic} has {len(t)} usable GNSS fix(es); a clip "
                "needs at least two"
            )
        grid = np.arange(t[0], t[-1] + 1, STEP_NS, dtype=np.int64)
        g_lat = np.interp(grid, t, lat)
        g_lon = np.interp(grid, t, lon)
        east, north = geo.local_metres(g_lat, g_lon, float(g_lat[0]), float(g_lon[0]))
        heading = _track_heading(east, north)
        step_s = STEP_NS / 1e9
        speed: NDArray[np.float64]
        yaw_rate: NDArray[np.float64]
        if motion is not None:
            m_t, m = _series(motion, ("speed", "yaw_rate"))
            speed = np.abs(np.interp(grid, m_t, m["speed"]))
            rate = m["yaw_rate"]
            if np.isfinite(rate).all():
                unit = 1.0 if motion.mapping.yaw_rate_unit == "deg/s" else math.degrees(1.0)
                # ROS turns counter-clockwise positive; a compass heading turns clockwise.
                yaw_rate = -np.interp(grid, m_t, rate) * unit
            else:
                yaw_rate = np.gradient(np.unwrap(heading, period=360.0), step_s)
        else:
            d = geo.haversine(lat[:-1], lon[:-1], lat[1:], lon[1:]) / (np.diff(t) / 1e9)
            mid = (t[:-1] + t[1:]) // 2
            speed = _smooth(np.interp(grid, mid, d), 5)
            yaw_rate = np.gradient(np.unwrap(heading, period=360.0), step_s)
        accel = np.gradient(speed, step_s) if len(grid) > 1 else np.zeros(1)
        return cls(grid, g_lat, g_lon, speed, heading, accel, yaw_rate)

    def table(self, objects: pa.Array) -> pa.Table:
        n = len(self.stamps)
        nan = np.full(n, np.nan)
        columns: list[pa.Array] = [
            pa.array(self.stamps // 1000).cast(SCHEMA.field("time").type),
            pa.array(self.lat, pa.float64()),
            pa.array(self.lon, pa.float64()),
        ]
        for values in (self.speed, self.heading, self.accel, self.yaw_rate):
            columns.append(pa.array(values).cast(pa.float32()))
        for _ in ("steering", "brake"):  # not in the standard types: unknown
            columns.append(pa.array(nan, mask=np.isnan(nan)).cast(pa.float32()))
        columns.append(objects)
        return pa.Table.from_arrays(columns, schema=SCHEMA)


def _smooth(values: NDArray[np.float64], width: int) -> NDArray[np.float64]:
    if len(values) < width:
        return values
    kernel = np.ones(width) / width
    padded = np.pad(values, width // 2, mode="edge")
    return np.asarray(np.convolve(padded, kernel, mode="valid"))


def _track_heading(east: NDArray[np.float64], north: NDArray[np.float64]) -> NDArray[np.float64]:
    """Compass heading (degrees) along a track: the bearing of the centred displacement where
    the vehicle moves, held where it stands (backwards from the first move)."""
    n = len(east)
    de = np.zeros(n)
    dn = np.zeros(n)
    if n > 1:
        de[1:-1] = (east[2:] - east[:-2]) / 2
        dn[1:-1] = (north[2:] - north[:-2]) / 2
        de[0], dn[0] = east[1] - east[0], north[1] - north[0]
        de[-1], dn[-1] = east[-1] - east[-2], north[-1] - north[-2]
    moving = np.hypot(de, dn) > _MOVING_M
    bearing = np.degrees(np.arctan2(de, dn)) % 360.0
    if not moving.any():
        return np.zeros(n)
    index = np.where(moving, np.arange(n), 0)
    np.maximum.accumulate(index, out=index)
    first = int(np.argmax(moving))
    index[:first] = first
    return np.asarray(bearing[index])


# -- objects -------------------------------------------------------------------------------


def _objects(
    name: str,
    channel: _Channel,
    ego: _Ego,
    motion: _Channel | None,
    settings: IngestSettings,
) -> pa.Array:
    """Per ego step, the objects of the nearest message, in the vehicle's frame."""
    rows = sorted(channel.rows, key=lambda r: r["stamp"])
    stamps = np.array([r["stamp"] for r in rows], dtype=np.int64)
    pose = _Pose.of(motion) if motion is not None else None
    ids: dict[str, int] = {}
    steps: list[dict[int, tuple[str, float, float]]] = []
    for t in ego.stamps:
        found: dict[int, tuple[str, float, float]] = {}
        steps.append(found)
        if not len(stamps):
            continue
        j = int(np.clip(np.searchsorted(stamps, t), 0, len(stamps) - 1))
        if j > 0 and abs(stamps[j - 1] - t) <= abs(stamps[j] - t):
            j -= 1
        if abs(int(stamps[j]) - int(t)) > _OBJECT_TOLERANCE_NS:
            continue
        row = rows[j]
        frame = str(row.get("frame") or "")
        items = row["items"]
        if not items:
            continue
        xy = np.array([(x, y) for _, _, x, y in items], dtype=np.float64)
        if frame and frame not in settings.ego_frames:
            if pose is None or pose.frame != frame:
                raise SchemaError(
                    f"{name}: channel {channel.topic} gives objects in frame {frame!r}, and no "
                    f"motion channel gives the vehicle's pose in {frame!r}",
                    hint="record the vehicle's odometry in that frame, or, if it is the "
                    "vehicle's own frame, add it to ego_frames in [sites.<id>.ingest]",
                )
            xy = pose.to_vehicle(int(stamps[j]), xy)
        for (ident, raw_class, _, _), (x, y) in zip(items, xy, strict=True):
            cls = _class_of(name, channel, raw_class)
            if cls is None:
                continue
            track = ids.setdefault(ident, len(ids))
            found[track] = (cls, float(x), float(y))
    return _object_lists(steps)


def _class_of(name: str, channel: _Channel, raw: str) -> str | None:
    classes = channel.mapping.classes
    mapped = classes.get(raw, raw if not classes else None)
    if mapped is None:
        mapped = classes.get(raw.lower())
    if mapped == "ignore":
        return None
    if mapped not in OBJECT_CLASSES:
        raise SchemaError(
            f"{name}: channel {channel.topic} ({channel.type}) has an object of class {raw!r}, "
            f"which is none of {', '.join(OBJECT_CLASSES)}",
            hint=f'map it in onshore.toml: [sites.<id>.ingest.types."{channel.type}"] '
            f'classes."{raw}" = "<class>" (or "ignore")',
        )
    return mapped


def _object_lists(steps: list[dict[int, tuple[str, float, float]]]) -> pa.Array:
    """Object lists with velocities relative to the vehicle, from each track's positions in
    the step before (or, at its first step, after)."""
    dt = STEP_NS / 1e9
    track: list[int] = []
    classes: list[str] = []
    xs: list[float] = []
    ys: list[float] = []
    vxs: list[float] = []
    vys: list[float] = []
    offsets = [0]
    for k, found in enumerate(steps):
        before = steps[k - 1] if k > 0 else {}
        after = steps[k + 1] if k + 1 < len(steps) else {}
        for tid, (cls, x, y) in sorted(found.items()):
            if tid in before:
                _, x0, y0 = before[tid]
                vx, vy = (x - x0) / dt, (y - y0) / dt
            elif tid in after:
                _, x1, y1 = after[tid]
                vx, vy = (x1 - x) / dt, (y1 - y) / dt
            else:
                vx = vy = 0.0
            track.append(tid)
            classes.append(cls)
            xs.append(x)
            ys.append(y)
            vxs.append(vx)
            vys.append(vy)
        offsets.append(len(track))
    values = pa.StructArray.from_arrays(
        [
            pa.array(track, pa.int32()),
            pa.array(classes, pa.string()),
            *(pa.array(v, pa.float32()) for v in (xs, ys, vxs, vys)),
        ],
        fields=list(OBJECT_TYPE),
    )
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values).cast(
        pa.list_(OBJECT_TYPE)
    )


@dataclass(frozen=True, slots=True)
class _Pose:
    """The vehicle's pose in a world frame, over time, from its motion channel."""

    frame: str
    stamps: NDArray[np.int64]
    x: NDArray[np.float64]
    y: NDArray[np.float64]
    yaw: NDArray[np.float64]

    @classmethod
    def of(cls, motion: _Channel) -> _Pose | None:
        frames = {str(r.get("frame") or "") for r in motion.rows}
        if len(frames) != 1 or not all(
            k in r for r in motion.rows for k in ("x", "y", "orientation")
        ):
            return None
        t, s = _series(motion, ("x", "y", "orientation"))
        return cls(frames.pop(), t, s["x"], s["y"], np.unwrap(s["orientation"]))

    def to_vehicle(self, t: int, xy: NDArray[np.float64]) -> NDArray[np.float64]:
        ex = np.interp(t, self.stamps, self.x)
        ey = np.interp(t, self.stamps, self.y)
        yaw = np.interp(t, self.stamps, self.yaw)
        dx, dy = xy[:, 0] - ex, xy[:, 1] - ey
        c, s = math.cos(yaw), math.sin(yaw)
        return np.column_stack((c * dx + s * dy, -s * dx + c * dy))


# -- cameras -------------------------------------------------------------------------------


def _video_format(declared: str) -> str | None:
    """The codec a Foxglove ``format`` names (``h264``; ``h265`` or ``hevc``), else None."""
    text = declared.strip().lower()
    return {"h264": "h264", "avc": "h264", "h265": "h265", "hevc": "h265"}.get(text)


def _frames(name: str, channels: list[_Channel]) -> pa.Table | None:
    cameras: list[str] = []
    times: list[int] = []
    formats: list[str] = []
    data: list[bytes] = []
    for channel in channels:
        video: list[bytes] = []
        video_format = ""
        for index, row in enumerate(channel.rows):
            declared = str(row["format"])
            video_codec = _video_format(declared)
            fmt = video_codec or image_format(declared)
            where = f"{name}: channel {channel.topic} message {index}"
            if fmt is None:
                raise SchemaError(
                    f"{where}: camera format {declared!r} is none of jpeg, png, h264, h265",
                )
            camera = channel.camera or str(row.get("frame") or "") or channel.topic.strip("/")
            if video_codec is not None:
                if video_format and fmt != video_format:
                    raise SchemaError(f"{where}: the video changes codec from {video_format}")
                video_format = fmt
                video.append(row["data"])
            else:
                problem = check_image(row["data"], fmt)
                if problem is not None:
                    raise SchemaError(f"{where}: {problem}")
            cameras.append(camera)
            times.append(int(row["stamp"]) // 1000)
            formats.append(fmt)
            data.append(row["data"])
        if video:
            from onshore.clips import codec

            codec.check_stream(video, video_format, name, channel.topic)
    return frames_table(cameras, times, formats, data) if cameras else None
