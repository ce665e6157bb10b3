"""Camera frames of a clip: what an image must be, how frames are stored, and the pixels.

Vehicles upload compressed images (JPEG or PNG) as ROS 2 ``sensor_msgs/msg/CompressedImage``
messages, one channel per camera (see :mod:`onshore.clips.mcap`). A site stores a clip's frames
as one Parquet object beside the clip's table (:data:`~onshore.clips.schema.FRAMES_SCHEMA`),
bytes as the camera sent them; pixels are decoded only where a stage needs them (classification
and de-identification), one clip at a time. Cameras that send video (H.264 or H.265, one row per
access unit) are read through :mod:`onshore.clips.codec`.

Cameras are told apart by name: a camera whose name says it looks inside the vehicle
(``cabin``, ``interior``, ``driver``, ``occupant``) films the people in it, which is
``cabin_video``; every other camera looks outside.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import cv2
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from numpy.typing import NDArray

from onshore.clips.schema import FRAMES_SCHEMA
from onshore.errors import SchemaError, UnreadableFile

__all__ = [
    "FRAMES_META_KEY",
    "IMAGE_FORMATS",
    "check_image",
    "decode_image",
    "encode_jpeg",
    "frame_times",
    "frames_table",
    "frames_to_parquet",
    "image_format",
    "is_cabin",
    "read_frames",
]

FRAMES_META_KEY: Final = b"onshore.frames"
"""Parquet schema-metadata key of a stored frames object: the clip it belongs to."""

IMAGE_FORMATS: Final = ("jpeg", "png")
"""Encodings onshore accepts for camera frames."""

_CABIN_WORDS: Final = ("cabin", "interior", "driver", "occupant")
_JPEG_START, _JPEG_END = b"\xff\xd8\xff", b"\xff\xd9"
_PNG_START, _PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"
_WRITE_OPTIONS: Final = {"compression": "none", "use_dictionary": ["camera", "format"]}
"""JPEG and PNG bytes do not compress further; camera names and formats repeat."""


def is_cabin(camera: str) -> bool:
    """Whether ``camera`` films the inside of the vehicle (its name says so)."""
    name = camera.lower()
    return any(word in name for word in _CABIN_WORDS)


def image_format(declared: str) -> str | None:
    """The encoding a ROS ``format`` string names (``jpeg``, ``png``), or None if neither.

    ROS drivers write ``jpeg``, ``png``, or ``<pixel format>; jpeg compressed <format>``.
    """
    text = declared.lower()
    if "jpeg" in text or "jpg" in text:
        return "jpeg"
    if "png" in text:
        return "png"
    return None


def check_image(data: bytes, fmt: str) -> str | None:
    """Why ``data`` is not a complete ``fmt`` image, or None when it looks whole.

    Checks the signature at the start and the end marker, which catches a truncated upload
    without decoding the pixels (decoding every frame at ingest would cost more than the rest
    of ingest together).
    """
    if fmt == "jpeg":
        start, end = _JPEG_START, _JPEG_END
    elif fmt == "png":
        start, end = _PNG_START, _PNG_END
    else:
        return f"format {fmt!r} is not one of {', '.join(IMAGE_FORMATS)}"
    if not data.startswith(start):
        return f"the data is not a {fmt.upper()} image (it does not start with its signature)"
    # JPEG encoders may pad after the end-of-image marker; look at the last bytes only.
    if end not in data[-64:]:
        return f"the {fmt.upper()} image is cut off (no end marker)"
    return None


def frames_table(
    cameras: Sequence[str], times_us: Sequence[int], formats: Sequence[str], data: Sequence[bytes]
) -> pa.Table:
    """Frames as a :data:`FRAMES_SCHEMA` table, sorted by camera then time."""
    table = pa.Table.from_arrays(
        [
            pa.array(cameras, pa.string()),
            pa.array(times_us, pa.int64()).cast(FRAMES_SCHEMA.field("time").type),
            pa.array(formats, pa.string()),
            pa.array(data, pa.binary()),
        ],
        schema=FRAMES_SCHEMA,
    )
    return table.sort_by([("camera", "ascending"), ("time", "ascending")])


def frames_to_parquet(clip_id: str, frames: pa.Table) -> bytes:
    """The frames of clip ``clip_id`` as the Parquet bytes a store keeps.

    The clip id is in the object's metadata, so two clips' frames are never one object even
    when their images are equal: an object belongs to one clip and goes with it.
    """
    meta = orjson.dumps({"clip_id": clip_id})
    table = frames.cast(FRAMES_SCHEMA).replace_schema_metadata({FRAMES_META_KEY: meta})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **_WRITE_OPTIONS)
    return bytes(sink.getvalue().to_pybytes())


def read_frames(data: bytes, name: str) -> tuple[str, pa.Table]:
    """The clip id and frames of a stored frames object; raises UnreadableFile naming ``name``."""
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowInvalid, OSError) as exc:
        raise UnreadableFile(f"{name}: not a readable frames object ({exc})") from exc
    meta = (table.schema.metadata or {}).get(FRAMES_META_KEY)
    if meta is None or not table.schema.equals(FRAMES_SCHEMA, check_metadata=False):
        raise SchemaError(f"{name}: not an onshore frames object")
    return str(orjson.loads(meta)["clip_id"]), table.replace_schema_metadata(None)


def decode_image(data: bytes, name: str) -> NDArray[np.uint8]:
    """The pixels of a JPEG or PNG as an ``H x W x 3`` RGB array."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise UnreadableFile(f"{name}: the image cannot be decoded")
    return np.ascontiguousarray(image[:, :, ::-1])


def encode_jpeg(rgb: NDArray[np.uint8], quality: int = 90) -> bytes:
    """``rgb`` as JPEG bytes. Re-encoding also drops whatever metadata (EXIF: camera serial,
    GNSS position, time) the original file carried."""
    ok, buf = cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise UnreadableFile("a frame could not be encoded as JPEG")
    return bytes(buf.tobytes())


def frame_times(frames: pa.Table) -> NDArray[np.int64]:
    """Frame times in microseconds since the Unix epoch."""
    return np.asarray(pc.cast(frames["time"], pa.int64()).to_numpy(), dtype=np.int64)
