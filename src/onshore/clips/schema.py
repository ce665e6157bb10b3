"""What a clip is: one vehicle upload, as an Arrow table plus its metadata.

A clip is a window of one fleet vehicle's drive. Each row is one 10 Hz step of the ego's state;
the ``objects`` column holds the objects its sensors tracked at that step, positions and
velocities in the ego frame (x forward, y to the left, metres and m/s). Headings are degrees
clockwise from north, as a compass reads; yaw rate is the derivative of heading in deg/s.

The same table is the clip's Parquet file in a site's store, with :class:`ClipMeta` in the
Parquet schema metadata under the key ``onshore.clip``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Final

import orjson
import pyarrow as pa

__all__ = [
    "EGO_FIELDS",
    "FRAMES_SCHEMA",
    "META_KEY",
    "OBJECT_CLASSES",
    "OBJECT_TYPE",
    "SCHEMA",
    "TRIGGERS",
    "Clip",
    "ClipMeta",
]

META_KEY: Final = b"onshore.clip"
"""Parquet schema-metadata key under which a stored clip keeps its :class:`ClipMeta` as JSON."""

TRIGGERS: Final = ("hard_brake", "lane_change", "random_sample")
"""Why a vehicle uploaded a clip."""

OBJECT_CLASSES: Final = ("car", "bus", "truck", "motorcycle", "bicycle", "pedestrian")
"""What a tracked object can be."""

CLASS_ARRAY: Final = pa.array(OBJECT_CLASSES, pa.string())
""":data:`OBJECT_CLASSES` as an Arrow array, made once: building Arrow arrays from Python
objects costs a failed optional import each time."""

OBJECT_TYPE: Final = pa.struct(
    [
        pa.field("track_id", pa.int32(), nullable=False),
        pa.field("class", pa.string(), nullable=False),
        pa.field("x", pa.float32(), nullable=False),
        pa.field("y", pa.float32(), nullable=False),
        pa.field("vx", pa.float32(), nullable=False),
        pa.field("vy", pa.float32(), nullable=False),
    ]
)

EGO_FIELDS: Final = (
    pa.field("time", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("lat", pa.float64(), nullable=False),
    pa.field("lon", pa.float64(), nullable=False),
    pa.field("speed", pa.float32(), nullable=False),
    pa.field("heading", pa.float32(), nullable=False),
    pa.field("accel", pa.float32(), nullable=False),
    pa.field("yaw_rate", pa.float32(), nullable=False),
    pa.field("steering", pa.float32()),
    pa.field("brake", pa.float32()),
)
"""The ego state at each step. ``steering`` (road-wheel angle, rad) and ``brake`` (0..1) may be
null where the vehicle does not report them."""

SCHEMA: Final = pa.schema([*EGO_FIELDS, pa.field("objects", pa.list_(OBJECT_TYPE))])
"""The schema of a clip's table, in memory and in the store."""


@dataclass(frozen=True, slots=True)
class ClipMeta:
    """What the vehicle says about the clip it uploads."""

    clip_id: str
    """Unique id the vehicle gave the upload."""
    vin: str
    """The vehicle's 17-character VIN (a direct identifier: raw data never leaves its site)."""
    vehicle_model: str
    trigger: str
    """One of :data:`TRIGGERS`."""
    consent_training: bool
    """Whether the driver consented to their data training driving models."""
    recorded_in: str
    """Jurisdiction or site where the clip was recorded (``CN``, ``EU``, ``US`` or a site id)."""
    sensor_range_m: float = 80.0
    simulated: bool = False
    """Made by a simulator (``onshore fleet simulate``), not recorded by a vehicle. Only
    simulated clips may be pooled across regions, so an upload that does not say is recorded."""

    def to_json(self) -> bytes:
        """The metadata as compact JSON bytes, keys sorted so equal metadata is equal bytes.

        ``simulated`` is written only when true: a recorded clip's JSON, and so the content
        address of its stored Parquet, stays what it was before the flag existed, and a clip
        stored by an earlier onshore is not taken for a conflicting one when it comes again.
        """
        fields = asdict(self)
        if not self.simulated:
            del fields["simulated"]
        return orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)

    @classmethod
    def from_mapping(cls, raw: dict[str, Any]) -> ClipMeta:
        """Build from a decoded mapping; raises ``KeyError``/``TypeError``/``ValueError``.

        ``consent_training`` is required; ``simulated`` is false when absent. Both are booleans
        or the strings ``true``/``false`` (or ``1``/``0``), as MCAP metadata and CSV carry them.
        """
        return cls(
            clip_id=str(raw["clip_id"]),
            vin=str(raw["vin"]),
            vehicle_model=str(raw["vehicle_model"]),
            trigger=str(raw["trigger"]),
            consent_training=_boolean("consent_training", raw["consent_training"]),
            recorded_in=str(raw["recorded_in"]),
            sensor_range_m=float(raw.get("sensor_range_m", 80.0)),
            simulated=_boolean("simulated", raw.get("simulated", False)),
        )


def _boolean(name: str, value: object) -> bool:
    """A metadata flag: a boolean, or its text; raises ``TypeError``/``ValueError``."""
    if isinstance(value, str):
        if value.lower() not in {"true", "false", "1", "0"}:
            raise ValueError(f"{name} must be true or false, not {value!r}")
        return value.lower() in {"true", "1"}
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a boolean, not {type(value).__name__}")
    return value


FRAMES_SCHEMA: Final = pa.schema(
    [
        pa.field("camera", pa.string(), nullable=False),
        pa.field("time", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("format", pa.string(), nullable=False),
        pa.field("data", pa.binary(), nullable=False),
    ]
)
"""Camera frames of a clip, one row per compressed image: which camera took it (``front``,
``rear``, ``cabin``...), when, its encoding (``jpeg`` or ``png``) and its bytes as the camera
sent them. A camera that sends video has a row per frame too, its encoding ``h264`` or ``h265``
and its bytes one access unit in Annex B form; its rows, in time order, are its stream
(:mod:`onshore.clips.codec`). Frames are stored beside the clip's table, not in it: a camera
runs at its own rate, and most clips have no frames at all."""


@dataclass(frozen=True, slots=True)
class Clip:
    """A clip: its metadata, its table (conforming to :data:`SCHEMA`) and, when the vehicle
    uploaded camera images, its frames (conforming to :data:`FRAMES_SCHEMA`)."""

    meta: ClipMeta
    table: pa.Table
    frames: pa.Table | None = None

    @property
    def rows(self) -> int:
        """Number of ego steps."""
        return int(self.table.num_rows)

    @property
    def frame_count(self) -> int:
        """Number of camera frames (0 when the clip has none)."""
        return 0 if self.frames is None else int(self.frames.num_rows)
