"""Clips as vehicles upload them: MCAP files of ROS 2 messages (CDR-encoded).

This module reads and writes onshore's own messages, described below; an upload of the
standard types vehicles log (NavSatFix, Odometry, Foxglove's schemas...) is mapped onto a clip
by :mod:`onshore.clips.adapters`.

An upload holds three things, the way a ROS 2 vehicle's recorder writes them:

- ``/vehicle/ego``: one ``onshore_msgs/msg/EgoState`` per 10 Hz step;
- ``/perception/objects``: one ``onshore_msgs/msg/TrackedObjects`` per step, the objects as
  parallel arrays (struct of arrays, as perception stacks publish them);
- a metadata record ``onshore.clip`` with the :class:`~onshore.clips.schema.ClipMeta` fields;
- optionally, camera images: ``sensor_msgs/msg/CompressedImage`` messages (JPEG or PNG), one
  channel per camera, ``/camera/<name>/image/compressed`` as ROS 2 image transport names them.
  Any channel with that message type is read as a camera, whatever its topic.

The message definitions travel in the file (``ros2msg`` schemas), so Foxglove and the ``mcap``
CLI read it without a plugin. Decoding is vectorised: the payloads of a channel are concatenated
and every field of every message is gathered with NumPy at once, since the lengths of a CDR
message's arrays fix where each field lies.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from lz4.frame import LZ4FrameDecompressor
from mcap.writer import CompressionType, Writer
from zstandard import ZstdDecompressor, ZstdError

from onshore.clips.camera import check_image, frames_table, image_format
from onshore.clips.schema import CLASS_ARRAY, OBJECT_CLASSES, OBJECT_TYPE, SCHEMA, Clip, ClipMeta
from onshore.errors import SchemaError, UnreadableFile
from onshore.settings import IngestSettings

__all__ = ["EGO_TOPIC", "IMAGE_TYPE", "OBJECTS_TOPIC", "camera_topic", "read_mcap", "write_mcap"]

EGO_TOPIC: Final = "/vehicle/ego"
OBJECTS_TOPIC: Final = "/perception/objects"
_META_NAME: Final = "onshore.clip"
_MAGIC: Final = b"\x89MCAP0\r\n"
_CDR_LE: Final = b"\x00\x01\x00\x00"
"""Encapsulation header of little-endian plain CDR, ahead of every payload."""

_EGO_MSG: Final = b"""\
# The ego vehicle's state at one step. Headings are compass degrees (clockwise from north).
int64 stamp       # nanoseconds since the Unix epoch
float64 lat       # WGS-84 latitude, degrees
float64 lon       # WGS-84 longitude, degrees
float64 speed     # m/s
float64 heading   # degrees clockwise from north
float64 accel     # longitudinal acceleration, m/s^2
float64 yaw_rate  # deg/s
float64 steering  # road-wheel angle, rad; NaN when the vehicle does not report it
float64 brake     # brake demand 0..1; NaN when the vehicle does not report it
"""
_OBJECTS_MSG: Final = (
    b"""\
# Objects tracked around the ego at one step, in the ego frame (x forward, y left, metres).
# Parallel arrays: element i of each array describes object i.
"""
    + b"".join(
        f"uint8 CLASS_{name.upper()}={i}\n".encode() for i, name in enumerate(OBJECT_CLASSES)
    )
    + b"""\
int64 stamp        # nanoseconds since the Unix epoch
int32[] track_id   # stable within a clip
uint8[] class_id   # one of the CLASS_ constants
float32[] x
float32[] y
float32[] vx       # velocity relative to the ego, m/s
float32[] vy
"""
)

IMAGE_TYPE: Final = "sensor_msgs/msg/CompressedImage"
"""The ROS 2 message type of camera frames."""
_IMAGE_MSG: Final = b"""\
# This message contains a compressed image.
std_msgs/Header header # Header timestamp: acquisition time of the image; frame_id: the camera
string format          # jpeg or png, or "<pixel format>; jpeg compressed <format>"
uint8[] data           # compressed image buffer
================================================================================
MSG: std_msgs/Header
builtin_interfaces/Time stamp
string frame_id
================================================================================
MSG: builtin_interfaces/Time
int32 sec
uint32 nanosec
"""


def camera_topic(camera: str) -> str:
    """The topic a camera's images are published on."""
    return f"/camera/{camera}/image/compressed"


def _camera_name(topic: str, frame_id: str) -> str:
    """A camera's name: from ``/camera/<name>/...`` topics, else the header's frame id, else
    the topic itself."""
    parts = [p for p in topic.split("/") if p]
    if len(parts) >= 2 and parts[0] == "camera":
        return parts[1]
    return frame_id or topic.strip("/") or topic


_EGO_DTYPE: Final = np.dtype(
    [
        ("cdr", "<u4"),
        ("stamp", "<i8"),
        *((name, "<f8") for name in SCHEMA.names[1:9]),
    ]
)
_EGO_COLUMNS: Final = SCHEMA.names[1:9]


def write_mcap(clip: Clip, target: Path | IO[bytes]) -> None:
    """Write ``clip`` as a vehicle would upload it."""
    table = clip.table
    stamps = pc.cast(table["time"], pa.int64()).to_numpy() * 1000
    ego = np.zeros(clip.rows, dtype=_EGO_DTYPE)
    ego["cdr"] = np.frombuffer(_CDR_LE, "<u4")[0]
    ego["stamp"] = stamps
    for name in _EGO_COLUMNS:
        values = table[name].to_numpy(zero_copy_only=False)
        ego[name] = np.where(_is_null(values), np.nan, values)
    objects = _ObjectArrays.of(table["objects"])
    own = isinstance(target, Path)
    stream: IO[bytes] = target.open("wb") if isinstance(target, Path) else target
    try:
        writer = Writer(stream, compression=CompressionType.ZSTD)
        writer.start(profile="ros2", library="onshore")
        ego_schema = writer.register_schema("onshore_msgs/msg/EgoState", "ros2msg", _EGO_MSG)
        obj_schema = writer.register_schema(
            "onshore_msgs/msg/TrackedObjects", "ros2msg", _OBJECTS_MSG
        )
        ego_channel = writer.register_channel(EGO_TOPIC, "cdr", ego_schema)
        obj_channel = writer.register_channel(OBJECTS_TOPIC, "cdr", obj_schema)
        for i, stamp in enumerate(stamps.tolist()):
            writer.add_message(ego_channel, stamp, ego[i].tobytes(), stamp, sequence=i)
            payload = objects.message(i, stamp)
            writer.add_message(obj_channel, stamp, payload, stamp, sequence=i)
        if clip.frames is not None and clip.frames.num_rows:
            _write_frames(writer, clip.frames)
        meta = clip.meta
        writer.add_metadata(
            _META_NAME,
            {
                "clip_id": meta.clip_id,
                "vin": meta.vin,
                "vehicle_model": meta.vehicle_model,
                "trigger": meta.trigger,
                "consent_training": "true" if meta.consent_training else "false",
                "recorded_in": meta.recorded_in,
                "sensor_range_m": repr(meta.sensor_range_m),
                "simulated": "true" if meta.simulated else "false",
            },
        )
        writer.finish()  # type: ignore[no-untyped-call]
    finally:
        if own:
            stream.close()


def _write_frames(writer: Writer, frames: pa.Table) -> None:
    """One CompressedImage channel per camera, each frame a CDR message."""
    schema = writer.register_schema(IMAGE_TYPE, "ros2msg", _IMAGE_MSG)
    channels: dict[str, int] = {}
    times = pc.cast(frames["time"], pa.int64()).to_numpy() * 1000
    for i, (camera, fmt, data) in enumerate(
        zip(
            frames["camera"].to_pylist(),
            frames["format"].to_pylist(),
            frames["data"].to_pylist(),
            strict=True,
        )
    ):
        if camera not in channels:
            channels[camera] = writer.register_channel(camera_topic(camera), "cdr", schema)
        stamp = int(times[i])
        writer.add_message(channels[camera], stamp, _image_message(stamp, camera, fmt, data), stamp)


def _cdr_string(text: str, at: int) -> bytes:
    """A CDR string (length with its NUL, the bytes, NUL) starting at offset ``at``, padded
    so that what follows is 4-byte aligned."""
    raw = text.encode() + b"\0"
    body = struct.pack("<I", len(raw)) + raw
    return body + b"\0" * (-(at + len(body)) % 4)


def _image_message(stamp_ns: int, frame_id: str, fmt: str, data: bytes) -> bytes:
    sec, nanosec = divmod(stamp_ns, 1_000_000_000)
    head = struct.pack("<iI", sec, nanosec)
    frame = _cdr_string(frame_id, len(head))
    form = _cdr_string(fmt, len(head) + len(frame))
    return b"".join([_CDR_LE, head, frame, form, struct.pack("<I", len(data)), data])


def _decode_frames(
    cameras: dict[str, list[memoryview]], encodings: dict[str, str], name: str
) -> pa.Table | None:
    """The frames of every camera channel, or None when there are none."""
    names: list[str] = []
    times: list[int] = []
    formats: list[str] = []
    data: list[bytes] = []
    for topic, payloads in cameras.items():
        if encodings.get(topic) != "cdr":
            raise SchemaError(
                f"{name}: camera channel {topic} is encoded as {encodings.get(topic)!r}; "
                "onshore reads ROS 2 'cdr'"
            )
        for index, payload in enumerate(payloads):
            where = f"{name}: {topic} message {index}"
            try:
                stamp, frame_id, declared, image = _read_image_message(payload)
            except (struct.error, UnicodeDecodeError, ValueError) as exc:
                raise SchemaError(f"{where} is not a CompressedImage ({exc})") from exc
            fmt = image_format(declared)
            if fmt is None:
                raise SchemaError(f"{where}: image format {declared!r} is neither JPEG nor PNG")
            problem = check_image(image, fmt)
            if problem is not None:
                raise SchemaError(f"{where}: {problem}")
            names.append(_camera_name(topic, frame_id))
            times.append(stamp // 1000)
            formats.append(fmt)
            data.append(image)
    return frames_table(names, times, formats, data) if names else None


def _read_image_message(payload: memoryview) -> tuple[int, str, str, bytes]:
    """Stamp (ns), frame id, format and image bytes of a CDR CompressedImage."""
    if bytes(payload[:4]) != _CDR_LE:
        raise ValueError("not little-endian CDR")
    body = payload[4:]
    sec, nanosec = struct.unpack_from("<iI", body, 0)
    pos = 8
    texts = []
    for _ in range(2):
        (n,) = struct.unpack_from("<I", body, pos)
        pos += 4
        if n == 0 or pos + n > len(body):
            raise ValueError("a string runs past the end of the message")
        texts.append(bytes(body[pos : pos + n - 1]).decode("utf-8"))
        pos += n
        pos += -pos % 4
    (size,) = struct.unpack_from("<I", body, pos)
    pos += 4
    if pos + size != len(body):
        raise ValueError(f"the image is {size} bytes but the message holds {len(body) - pos}")
    return sec * 1_000_000_000 + nanosec, texts[0], texts[1], bytes(body[pos:])


def _is_null(values: np.ndarray) -> np.ndarray:
    """Null (None) or NaN, element-wise, for a float or object array."""
    if values.dtype == object:
        return np.array([v is None for v in values], dtype=bool)
    return np.asarray(np.isnan(values), dtype=bool)


@dataclass(frozen=True, slots=True)
class _ObjectArrays:
    """A clip's tracked objects as flat arrays, to write one CDR message per step from slices."""

    offsets: np.ndarray
    track_id: np.ndarray
    class_id: np.ndarray
    floats: tuple[np.ndarray, ...]
    """x, y, vx, vy."""

    @classmethod
    def of(cls, column: pa.ChunkedArray) -> _ObjectArrays:
        lists = column.combine_chunks()
        lists = pc.if_else(pc.is_null(lists), pa.scalar([], lists.type), lists)
        start = lists.offsets[0].as_py()
        values = lists.values.slice(start, lists.offsets[-1].as_py() - start)
        fields = dict(zip(OBJECT_TYPE.names, values.flatten(), strict=True))
        class_id = pc.index_in(fields["class"], CLASS_ARRAY)
        if class_id.null_count:
            unknown = pc.filter(fields["class"], pc.is_null(class_id))[0].as_py()
            raise SchemaError(f"tracked object class {unknown!r} is not one of {OBJECT_CLASSES}")
        return cls(
            offsets=lists.offsets.to_numpy() - start,
            track_id=fields["track_id"].to_numpy().astype("<i4"),
            class_id=class_id.to_numpy().astype(np.uint8),
            floats=tuple(fields[k].to_numpy().astype("<f4") for k in ("x", "y", "vx", "vy")),
        )

    def message(self, i: int, stamp: int) -> bytes:
        """The CDR payload of TrackedObjects for step ``i``."""
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        n = b - a
        count = struct.pack("<I", n)
        parts = [
            _CDR_LE,
            struct.pack("<qI", stamp, n),
            self.track_id[a:b].tobytes(),
            count,
            self.class_id[a:b].tobytes(),
            b"\0" * (-(16 + 5 * n) % 4),  # align the next count to 4 bytes
        ]
        for values in self.floats:
            parts += [count, values[a:b].tobytes()]
        return b"".join(parts)


def read_mcap(data: bytes, name: str, ingest: IngestSettings | None = None) -> Clip:
    """Decode an uploaded MCAP file held in ``data``; ``name`` is used in error messages.

    An upload of onshore's own messages (an ``/vehicle/ego`` channel) is decoded here, with
    NumPy; any other is an upload of standard message types, which
    :func:`~onshore.clips.adapters.read_standard` maps with ``ingest`` (the site's
    ``[ingest]`` settings; the built-in mappings when None).

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
    try:
        scan = _scan(data)
    except (
        _Corrupt,
        ZstdError,
        RuntimeError,
        struct.error,
        ValueError,
        IndexError,
        OverflowError,
    ) as exc:
        raise UnreadableFile(
            f"{name}: truncated or corrupt MCAP ({exc})",
            hint="the upload was probably cut off; ask the vehicle to upload it again",
        ) from exc
    if not scan.ended:
        raise UnreadableFile(
            f"{name}: truncated MCAP (the file ends before its footer)",
            hint="the upload was probably cut off; ask the vehicle to upload it again",
        )
    if EGO_TOPIC not in scan.encodings:
        from onshore.clips.adapters import read_standard

        return read_standard(data, name, ingest or IngestSettings())
    for topic in (EGO_TOPIC, OBJECTS_TOPIC):
        encoding = scan.encodings.get(topic)
        if encoding is None:
            raise SchemaError(f"{name}: no channel {topic}")
        if encoding != "cdr":
            raise SchemaError(
                f"{name}: channel {topic} is encoded as {encoding!r}; onshore reads ROS 2 'cdr'"
            )
    if scan.meta is None:
        raise SchemaError(f"{name}: no '{_META_NAME}' metadata record (vin, trigger, consent...)")
    try:
        clip_meta = ClipMeta.from_mapping(dict(scan.meta))
    except (KeyError, TypeError, ValueError) as exc:
        raise SchemaError(f"{name}: metadata record '{_META_NAME}' is invalid: {exc}") from exc
    if not scan.payloads[EGO_TOPIC]:
        raise SchemaError(f"{name}: no messages on channel {EGO_TOPIC}")
    ego = _decode_ego(scan.payloads[EGO_TOPIC], name)
    stamps, lists = _decode_objects(scan.payloads[OBJECTS_TOPIC], name)
    cameras = {t: p for t, p in scan.payloads.items() if t not in (EGO_TOPIC, OBJECTS_TOPIC)}
    frames = _decode_frames(cameras, scan.encodings, name)
    return Clip(clip_meta, _assemble(ego, stamps, lists, name), frames)


def _decode_ego(payloads: list[memoryview], name: str) -> np.ndarray:
    sizes = {len(p) for p in payloads}
    if sizes != {_EGO_DTYPE.itemsize}:
        raise SchemaError(
            f"{name}: {EGO_TOPIC} messages are {sorted(sizes)} bytes, an EgoState is "
            f"{_EGO_DTYPE.itemsize}"
        )
    ego = np.frombuffer(b"".join(payloads), dtype=_EGO_DTYPE)
    if (ego["cdr"] != ego["cdr"][0]).any() or ego["cdr"][0] != np.frombuffer(_CDR_LE, "<u4")[0]:
        raise SchemaError(f"{name}: {EGO_TOPIC} messages are not little-endian CDR")
    return ego


def _u32(buf: np.ndarray, at: np.ndarray) -> np.ndarray:
    return buf[at[:, None] + np.arange(4)].copy().view("<u4").ravel()


def _gather(
    buf: np.ndarray, base: np.ndarray, counts: np.ndarray, size: int, dtype: str
) -> np.ndarray:
    """Elements ``i`` of the arrays starting at ``base`` (``counts`` elements each)."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=dtype)
    first = np.repeat(base, counts)
    within = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    at = first + within * size
    return np.asarray(buf[at[:, None] + np.arange(size)].copy().view(dtype).ravel())


def _decode_objects(payloads: list[memoryview], name: str) -> tuple[np.ndarray, pa.ListArray]:
    """Stamps and per-message object lists of TrackedObjects messages, all at once."""
    if not payloads:
        return np.zeros(0, np.int64), pa.array([], pa.list_(OBJECT_TYPE))
    lengths = np.fromiter((len(p) for p in payloads), dtype=np.int64, count=len(payloads))
    if (lengths < 16).any():
        raise SchemaError(f"{name}: a {OBJECTS_TOPIC} message is shorter than its header")
    buf = np.frombuffer(b"".join(payloads), dtype=np.uint8)
    start = np.cumsum(lengths) - lengths + 4  # CDR alignment counts from after the header
    stamps = buf[start[:, None] + np.arange(8)].copy().view("<i8").ravel()
    n = _u32(buf, start + 8).astype(np.int64)
    ends = start - 4 + lengths
    after_classes = start + 16 + 5 * n
    floats_at = start + ((after_classes - start + 3) // 4) * 4
    expected_end = floats_at + 16 + 16 * n
    if (expected_end != ends).any():
        i = int(np.argmax(expected_end != ends))
        raise SchemaError(
            f"{name}: {OBJECTS_TOPIC} message {i} is {lengths[i]} bytes, "
            f"which does not fit {n[i]} tracked objects"
        )
    counts = [_u32(buf, start + 12 + 4 * n)]
    counts += [_u32(buf, floats_at + k * (4 + 4 * n)) for k in range(4)]
    if any((c != n).any() for c in counts):
        raise SchemaError(f"{name}: a {OBJECTS_TOPIC} message has arrays of different lengths")
    class_id = _gather(buf, start + 16 + 4 * n, n, 1, "u1")
    if (class_id >= len(OBJECT_CLASSES)).any():
        bad = int(class_id[class_id >= len(OBJECT_CLASSES)][0])
        raise SchemaError(f"{name}: tracked object class id {bad} is not defined")
    children = [
        pa.array(_gather(buf, start + 12, n, 4, "<i4")),
        pc.take(CLASS_ARRAY, pa.array(class_id)),
        *(pa.array(_gather(buf, floats_at + 4 + k * (4 + 4 * n), n, 4, "<f4")) for k in range(4)),
    ]
    structs = pa.StructArray.from_arrays(children, fields=list(OBJECT_TYPE))
    offsets = pa.array(np.concatenate([[0], np.cumsum(n)]).astype(np.int32))
    return stamps, pa.ListArray.from_arrays(offsets, structs, type=pa.list_(OBJECT_TYPE))


def _assemble(ego: np.ndarray, stamps: np.ndarray, lists: pa.ListArray, name: str) -> pa.Table:
    """Join ego rows and per-step object lists (by ``stamp``) into a :data:`SCHEMA` table.

    Steps without an objects message get an empty list.
    """
    ego_stamps = ego["stamp"]
    if len(stamps) == len(ego_stamps) and (stamps == ego_stamps).all():
        objects = lists
    elif len(stamps):
        order = np.argsort(stamps, kind="stable")
        pos = np.minimum(np.searchsorted(stamps[order], ego_stamps), len(order) - 1)
        found = stamps[order][pos] == ego_stamps
        taken = lists.take(pa.array(order[pos], mask=~found))
        objects = pc.if_else(pc.is_null(taken), pa.scalar([], lists.type), taken)
    else:
        objects = pa.array([[]] * len(ego_stamps), type=pa.list_(OBJECT_TYPE))
    columns = [pa.array(ego_stamps // 1000).cast(SCHEMA.field("time").type)]
    for column in _EGO_COLUMNS:
        values = ego[column]
        field_type = SCHEMA.field(column).type
        nullable = SCHEMA.field(column).nullable
        mask = np.isnan(values) if nullable else None
        columns.append(pa.array(values, mask=mask).cast(field_type))
    columns.append(objects)
    try:
        return pa.Table.from_arrays(columns, schema=SCHEMA)
    except (pa.ArrowInvalid, ValueError) as exc:
        raise SchemaError(f"{name}: tracked objects are incomplete: {exc}") from exc


class _Corrupt(Exception):
    """A record runs past the end of its container, or a checksum does not match."""


@dataclass(slots=True)
class _Scan:
    payloads: dict[str, list[memoryview]] = field(
        default_factory=lambda: {EGO_TOPIC: [], OBJECTS_TOPIC: []}
    )
    encodings: dict[str, str] = field(default_factory=dict)
    topics: dict[int, str] = field(default_factory=dict)
    schemas: dict[int, str] = field(default_factory=dict)
    """Schema id to message type name."""
    meta: dict[str, str] | None = None
    ended: bool = False
    wanted: dict[int, list[memoryview]] = field(default_factory=dict)
    """Channel id to the payloads of its topic, for the channels whose messages are kept."""


_RECORD: Final = struct.Struct("<BQ")
_U16: Final = struct.Struct("<H")
_CHANNEL_HEAD: Final = struct.Struct("<HH")
_U32: Final = struct.Struct("<I")
_U64: Final = struct.Struct("<Q")
_CHUNK_HEAD: Final = struct.Struct("<QQQI")
_OP_FOOTER, _OP_SCHEMA, _OP_CHANNEL, _OP_MESSAGE, _OP_CHUNK, _OP_METADATA, _OP_DATA_END = (
    0x02,
    0x03,
    0x04,
    0x05,
    0x06,
    0x0C,
    0x0F,
)
_MAX_CHUNK: Final = 256 << 20
"""Largest uncompressed chunk accepted: a corrupt size must not allocate without bound."""
_MESSAGE_HEAD: Final = 22  # channel id u16, sequence u32, log and publish times u64


def _scan(data: bytes) -> _Scan:
    """Collect the payloads of onshore's channels and the clip metadata in one pass.

    A small reader of the MCAP record layout (mcap.dev/spec): the ``mcap`` package's reader
    builds an object per record, which costs more than the rest of ingest together; here the
    hot path is one ``struct`` unpack and one slice per message.
    """
    buf = memoryview(data)
    if len(buf) < 2 * len(_MAGIC) or bytes(buf[-len(_MAGIC) :]) != _MAGIC:
        raise _Corrupt("the file does not end with the MCAP magic bytes: it was cut off")
    scan = _Scan()
    _records(buf[len(_MAGIC) : len(buf) - len(_MAGIC)], scan, top=True)
    return scan


def _string(buf: memoryview, pos: int) -> tuple[str, int]:
    (n,) = _U32.unpack_from(buf, pos)
    pos += 4
    if pos + n > len(buf):
        raise _Corrupt("a string runs past the end of its record")
    return bytes(buf[pos : pos + n]).decode("utf-8"), pos + n


def _string_map(buf: memoryview, pos: int) -> tuple[dict[str, str], int]:
    (size,) = _U32.unpack_from(buf, pos)
    pos += 4
    end = pos + size
    out = {}
    while pos < end:
        key, pos = _string(buf, pos)
        value, pos = _string(buf, pos)
        out[key] = value
    return out, end


def _records(buf: memoryview, scan: _Scan, *, top: bool) -> None:
    pos, n = 0, len(buf)
    payloads, topics, wanted = scan.payloads, scan.topics, scan.wanted
    record, channel_of = _RECORD.unpack_from, _U16.unpack_from  # the hot loop's lookups
    while pos < n:
        if pos + 9 > n:
            raise _Corrupt(f"a record header at byte {pos} is cut off")
        op, length = record(buf, pos)
        pos += 9
        end = pos + length
        if end > n:
            raise _Corrupt(f"a record at byte {pos - 9} runs past the end of the data")
        if op == _OP_MESSAGE:
            into = wanted.get(channel_of(buf, pos)[0])
            if into is not None:
                into.append(buf[pos + _MESSAGE_HEAD : end])
        elif op == _OP_CHUNK:
            _chunk(buf[pos:end], scan)
        elif op == _OP_CHANNEL:
            channel_id, schema_id = _CHANNEL_HEAD.unpack_from(buf, pos)
            topic, at = _string(buf, pos + 4)
            encoding, _ = _string(buf, at)
            topics[channel_id] = topic
            scan.encodings[topic] = encoding
            if scan.schemas.get(schema_id) == IMAGE_TYPE:
                payloads.setdefault(topic, [])
            if topic in payloads:
                wanted[channel_id] = payloads[topic]
            else:
                wanted.pop(channel_id, None)
        elif op == _OP_SCHEMA:
            (schema_id,) = _U16.unpack_from(buf, pos)
            scan.schemas[schema_id], _ = _string(buf, pos + 2)
        elif op == _OP_METADATA:
            name, at = _string(buf, pos)
            if name == _META_NAME:
                scan.meta, _ = _string_map(buf, at)
        elif op in (_OP_DATA_END, _OP_FOOTER) and top:
            scan.ended = True
            if op == _OP_FOOTER:
                return
        pos = end


def _read_at_most(reader: IO[bytes], limit: int) -> bytes:
    parts, total = [], 0
    while total < limit:
        piece = reader.read(min(1 << 20, limit - total))
        if not piece:
            break
        parts.append(piece)
        total += len(piece)
    return b"".join(parts)


def _chunk(buf: memoryview, scan: _Scan) -> None:
    _start, _end, size, crc = _CHUNK_HEAD.unpack_from(buf, 0)
    compression, pos = _string(buf, _CHUNK_HEAD.size)
    (length,) = _U64.unpack_from(buf, pos)
    pos += 8
    if pos + length > len(buf):
        raise _Corrupt("a chunk's records run past the end of the chunk")
    raw = buf[pos : pos + length]
    if size > _MAX_CHUNK:
        raise _Corrupt(f"a chunk claims {size} bytes uncompressed, more than any upload holds")
    # Never inflate past the size the chunk declares (itself bounded): a corrupt or hostile
    # chunk must not expand to gigabytes before the length check below can refuse it.
    if compression == "zstd":
        with ZstdDecompressor().stream_reader(bytes(raw)) as reader:
            records = _read_at_most(reader, size + 1)
    elif compression == "lz4":
        records = LZ4FrameDecompressor().decompress(bytes(raw), max_length=size + 1)
    elif compression == "":
        records = bytes(raw)
    else:
        raise _Corrupt(f"unknown chunk compression {compression!r}")
    if len(records) != size or (crc and zlib.crc32(records) != crc):
        raise _Corrupt("a chunk's checksum does not match its content")
    _records(memoryview(records), scan, top=False)
