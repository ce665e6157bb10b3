"""Clips as vehicles upload them: MCAP files with JSON-encoded messages.

An upload holds three things:

- ``/vehicle/ego`` — one message per 10 Hz step, schema ``onshore.EgoState``;
- ``/perception/objects`` — one message per step with the list of tracked objects, schema
  ``onshore.TrackedObjects``;
- a metadata record ``onshore.clip`` with the :class:`~onshore.clips.schema.ClipMeta` fields.

JSON with a JSON Schema per channel is what Foxglove and the ``mcap`` CLI read without a plugin.
Both messages carry ``stamp`` (nanoseconds since the Unix epoch) in the payload, so decoding can
hand every channel's payloads to Arrow's JSON reader at once instead of a Python loop per message.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import IO, Final

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson
from mcap.exceptions import McapError
from mcap.records import Channel, DataEnd, Footer, Message, Metadata, Schema
from mcap.stream_reader import StreamReader
from mcap.writer import CompressionType, Writer
from zstandard import ZstdError

from onshore.clips.schema import OBJECT_TYPE, SCHEMA, Clip, ClipMeta
from onshore.errors import SchemaError, UnreadableFile

__all__ = ["EGO_TOPIC", "OBJECTS_TOPIC", "read_mcap", "write_mcap"]

EGO_TOPIC: Final = "/vehicle/ego"
OBJECTS_TOPIC: Final = "/perception/objects"
_META_NAME: Final = "onshore.clip"
_MAGIC: Final = b"\x89MCAP0\r\n"

_EGO_JSON_SCHEMA: Final = orjson.dumps(
    {
        "title": "onshore.EgoState",
        "type": "object",
        "properties": {
            "stamp": {"type": "integer", "description": "ns since the Unix epoch"},
            "lat": {"type": "number", "description": "WGS-84 latitude, degrees"},
            "lon": {"type": "number", "description": "WGS-84 longitude, degrees"},
            "speed": {"type": "number", "description": "m/s"},
            "heading": {"type": "number", "description": "degrees clockwise from north"},
            "accel": {"type": "number", "description": "longitudinal, m/s^2"},
            "yaw_rate": {"type": "number", "description": "deg/s"},
            "steering": {"type": ["number", "null"], "description": "road-wheel angle, rad"},
            "brake": {"type": ["number", "null"], "description": "brake demand, 0..1"},
        },
        "required": ["stamp", "lat", "lon", "speed", "heading", "accel", "yaw_rate"],
    }
)
_OBJECTS_JSON_SCHEMA: Final = orjson.dumps(
    {
        "title": "onshore.TrackedObjects",
        "type": "object",
        "properties": {
            "stamp": {"type": "integer"},
            "objects": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "track_id": {"type": "integer"},
                        "class": {"type": "string"},
                        "x": {"type": "number", "description": "metres ahead of the ego"},
                        "y": {"type": "number", "description": "metres to the ego's left"},
                        "vx": {"type": "number"},
                        "vy": {"type": "number"},
                    },
                },
            },
        },
        "required": ["stamp", "objects"],
    }
)

_EGO_PARSE: Final = pa.schema(
    [
        pa.field("stamp", pa.int64()),
        pa.field("lat", pa.float64()),
        pa.field("lon", pa.float64()),
        pa.field("speed", pa.float64()),
        pa.field("heading", pa.float64()),
        pa.field("accel", pa.float64()),
        pa.field("yaw_rate", pa.float64()),
        pa.field("steering", pa.float64()),
        pa.field("brake", pa.float64()),
    ]
)
_OBJECTS_PARSE: Final = pa.schema(
    [
        pa.field("stamp", pa.int64()),
        pa.field(
            "objects",
            pa.list_(
                pa.struct(
                    [
                        pa.field("track_id", pa.int64()),
                        pa.field("class", pa.string()),
                        pa.field("x", pa.float64()),
                        pa.field("y", pa.float64()),
                        pa.field("vx", pa.float64()),
                        pa.field("vy", pa.float64()),
                    ]
                )
            ),
        ),
    ]
)


def write_mcap(clip: Clip, target: Path | IO[bytes]) -> None:
    """Write ``clip`` as a vehicle would upload it."""
    table = clip.table
    stamps = pc.cast(table["time"], pa.int64()).to_numpy() * 1000
    ego_cols = {
        name: table[name].to_numpy(zero_copy_only=False)
        for name in ("lat", "lon", "speed", "heading", "accel", "yaw_rate", "steering", "brake")
    }
    objects = table["objects"].to_pylist()
    own = isinstance(target, Path)
    stream: IO[bytes] = target.open("wb") if isinstance(target, Path) else target
    try:
        writer = Writer(stream, compression=CompressionType.ZSTD)
        writer.start(profile="", library="onshore")
        ego_schema = writer.register_schema("onshore.EgoState", "jsonschema", _EGO_JSON_SCHEMA)
        obj_schema = writer.register_schema(
            "onshore.TrackedObjects", "jsonschema", _OBJECTS_JSON_SCHEMA
        )
        ego_channel = writer.register_channel(EGO_TOPIC, "json", ego_schema)
        obj_channel = writer.register_channel(OBJECTS_TOPIC, "json", obj_schema)
        for i, stamp in enumerate(stamps.tolist()):
            ego = {"stamp": stamp}
            for name, values in ego_cols.items():
                value = values[i]
                ego[name] = None if value is None or value != value else float(value)
            writer.add_message(ego_channel, stamp, orjson.dumps(ego), stamp, sequence=i)
            payload = {"stamp": stamp, "objects": objects[i] or []}
            writer.add_message(obj_channel, stamp, orjson.dumps(payload), stamp, sequence=i)
        meta = orjson.loads(clip.meta.to_json())
        writer.add_metadata(_META_NAME, {k: _meta_str(v) for k, v in meta.items()})
        writer.finish()  # type: ignore[no-untyped-call]
    finally:
        if own:
            stream.close()


def _meta_str(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def read_mcap(data: bytes, name: str) -> Clip:
    """Decode an uploaded MCAP file held in ``data``; ``name`` is used in error messages.

    Raises :class:`UnreadableFile` for an empty, truncated or corrupt file, and
    :class:`SchemaError` when a channel, field or the metadata record is missing or mistyped.
    """
    if not data:
        raise UnreadableFile(f"{name}: the file is empty (0 bytes)", hint="re-upload it")
    if not data.startswith(_MAGIC):
        raise UnreadableFile(
            f"{name}: not an MCAP file (it does not start with the MCAP magic bytes)",
            hint="check the file's real format; MCAP, Parquet and CSV are accepted",
        )
    channels: dict[int, str] = {}
    payloads: dict[str, list[bytes]] = {EGO_TOPIC: [], OBJECTS_TOPIC: []}
    meta: dict[str, str] | None = None
    ended = False
    try:
        for record in StreamReader(io.BytesIO(data), validate_crcs=True).records:
            if isinstance(record, Message):
                topic = channels.get(record.channel_id)
                if topic in payloads:
                    payloads[topic].append(record.data)
            elif isinstance(record, Channel):
                channels[record.id] = record.topic
                if record.topic in payloads and record.message_encoding != "json":
                    raise SchemaError(
                        f"{name}: channel {record.topic} is encoded as "
                        f"{record.message_encoding!r}; onshore reads 'json'"
                    )
            elif isinstance(record, Metadata) and record.name == _META_NAME:
                meta = dict(record.metadata)
            elif isinstance(record, DataEnd | Footer):
                ended = True
            elif isinstance(record, Schema):
                continue
    except (McapError, ZstdError, struct.error, ValueError, EOFError, IndexError) as exc:
        raise UnreadableFile(
            f"{name}: truncated or corrupt MCAP ({type(exc).__name__}: {exc})",
            hint="the upload was probably cut off; ask the vehicle to upload it again",
        ) from exc
    if not ended:
        raise UnreadableFile(
            f"{name}: truncated MCAP (the file ends before its footer)",
            hint="the upload was probably cut off; ask the vehicle to upload it again",
        )
    if meta is None:
        raise SchemaError(f"{name}: no '{_META_NAME}' metadata record (vin, trigger, consent...)")
    try:
        clip_meta = ClipMeta.from_mapping(dict(meta))
    except (KeyError, TypeError, ValueError) as exc:
        raise SchemaError(f"{name}: metadata record '{_META_NAME}' is invalid: {exc}") from exc
    if not payloads[EGO_TOPIC]:
        raise SchemaError(f"{name}: no messages on channel {EGO_TOPIC}")
    ego = _parse_json(payloads[EGO_TOPIC], _EGO_PARSE, name, EGO_TOPIC)
    objects = _parse_json(payloads[OBJECTS_TOPIC], _OBJECTS_PARSE, name, OBJECTS_TOPIC)
    return Clip(clip_meta, assemble(ego, objects, name))


def _parse_json(lines: list[bytes], schema: pa.Schema, name: str, topic: str) -> pa.Table:
    if not lines:
        return schema.empty_table()
    options = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    try:
        return pajson.read_json(
            io.BytesIO(b"\n".join(lines)),
            read_options=pajson.ReadOptions(block_size=1 << 24),
            parse_options=options,
        )
    except pa.ArrowInvalid as exc:
        raise SchemaError(f"{name}: messages on {topic} do not match their schema: {exc}") from exc


def assemble(ego: pa.Table, objects: pa.Table, name: str) -> pa.Table:
    """Join parsed ego rows and per-step object lists (by ``stamp``) into a :data:`SCHEMA` table.

    Steps without an objects message get an empty list. Raises :class:`SchemaError` when a
    required ego field is missing.
    """
    for field in ("stamp", "lat", "lon", "speed", "heading", "accel", "yaw_rate"):
        if ego[field].null_count:
            raise SchemaError(f"{name}: ego field '{field}' is missing in some messages")
    ego_stamps = ego["stamp"].to_numpy()
    if objects.num_rows:
        obj_stamps = objects["stamp"].to_numpy()
        order = np.argsort(obj_stamps, kind="stable")
        pos = np.searchsorted(obj_stamps[order], ego_stamps)
        pos_clipped = np.minimum(pos, len(order) - 1)
        found = obj_stamps[order][pos_clipped] == ego_stamps
        take = pa.array(order[pos_clipped], mask=~found)
        lists = objects["objects"].take(take)
        lists = pc.if_else(pc.is_null(lists), pa.scalar([], lists.type), lists)
    else:
        lists = pa.array([[]] * len(ego_stamps), type=_OBJECTS_PARSE.field("objects").type)
    columns = [
        pa.array(ego_stamps // 1000, pa.int64()).cast(SCHEMA.field("time").type),
        *(ego[f].cast(SCHEMA.field(f).type) for f in SCHEMA.names[1:-1]),
        pc.cast(lists, pa.list_(OBJECT_TYPE)),
    ]
    try:
        return pa.Table.from_arrays(columns, schema=SCHEMA)
    except (pa.ArrowInvalid, ValueError) as exc:
        raise SchemaError(f"{name}: tracked objects are incomplete: {exc}") from exc
