"""Clips written as a vehicle's own recorder would: ROS 2 standard types, or Foxglove's schemas.

The fleet simulator writes its clips in one of three formats (:data:`UPLOAD_FORMATS`):

- ``onshore``: onshore's own messages (:func:`onshore.clips.mcap.write_mcap`);
- ``ros2``: what a ROS 2 vehicle (Autoware's stack) records, written by ``mcap-ros2-support``:
  ``sensor_msgs/msg/NavSatFix`` on ``/sensing/gnss/fix``, ``nav_msgs/msg/Odometry`` on
  ``/localization/kinematic_state`` (pose in an east-north-up ``map`` frame whose origin is
  the clip's first position), ``autoware_perception_msgs/msg/TrackedObjects`` on
  ``/perception/object_recognition/tracking/objects`` (in ``base_link``) and
  ``sensor_msgs/msg/CompressedImage`` per camera;
- ``foxglove``: Foxglove's schemas in Protobuf, written by Foxglove's SDK:
  ``foxglove.LocationFix`` on ``/gps``, ``foxglove.SceneUpdate`` on ``/perception/scene`` (one
  cube per object, its class in the entity's metadata) and each camera as
  ``foxglove.CompressedVideo`` (H.264, :mod:`onshore.clips.codec`).

Both carry the clip's fields as the ``onshore.clip`` metadata record, and both are read back
by :mod:`onshore.clips.adapters` with the built-in mappings: what a site receives from a real
fleet, produced with the writers real fleets use.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from onshore.clips import geo
from onshore.clips.mcap import write_mcap
from onshore.clips.ros2_types import definition
from onshore.clips.schema import Clip

__all__ = ["UPLOAD_FORMATS", "UploadFormat", "write_upload"]

UploadFormat = Literal["onshore", "ros2", "foxglove"]
UPLOAD_FORMATS: Final[tuple[UploadFormat, ...]] = ("onshore", "ros2", "foxglove")

_AUTOWARE_LABELS: Final = {
    "car": 1,
    "truck": 2,
    "bus": 3,
    "motorcycle": 5,
    "bicycle": 6,
    "pedestrian": 7,
}
_SIZES: Final = {
    "car": (4.5, 1.8, 1.5),
    "truck": (9.0, 2.5, 3.5),
    "bus": (12.0, 2.5, 3.2),
    "motorcycle": (2.1, 0.8, 1.4),
    "bicycle": (1.8, 0.6, 1.7),
    "pedestrian": (0.6, 0.6, 1.75),
}
_TRACKS: Final = uuid.UUID("6f6e7368-6f72-652d-7472-61636b000000")
_ZERO3: Final = {"x": 0.0, "y": 0.0, "z": 0.0}


def write_upload(clip: Clip, target: Path, upload_format: UploadFormat = "onshore") -> None:
    """Write ``clip`` to ``target`` as an MCAP upload in ``upload_format``."""
    if upload_format == "onshore":
        write_mcap(clip, target)
    elif upload_format == "ros2":
        with target.open("wb") as out:
            _write_ros2(clip, out)
    elif upload_format == "foxglove":
        _write_foxglove(clip, target)
    else:
        raise ValueError(f"upload format {upload_format!r} is none of {', '.join(UPLOAD_FORMATS)}")


def _meta(clip: Clip) -> dict[str, str]:
    meta = clip.meta
    fields = {
        "clip_id": meta.clip_id,
        "vin": meta.vin,
        "vehicle_model": meta.vehicle_model,
        "trigger": meta.trigger,
        "consent_training": str(meta.consent_training).lower(),
        "recorded_in": meta.recorded_in,
        "sensor_range_m": repr(meta.sensor_range_m),
    }
    if meta.simulated:
        fields["simulated"] = "true"
    return fields


def _stamps_ns(clip: Clip) -> np.ndarray:
    return np.asarray(pc.cast(clip.table["time"], pa.int64()).to_numpy() * 1000, dtype=np.int64)


def _steps(clip: Clip) -> Iterator[tuple[int, dict[str, Any]]]:
    for t, row in zip(_stamps_ns(clip), clip.table.to_pylist(), strict=True):
        yield int(t), row


def _uuid(clip: Clip, track: int) -> bytes:
    return uuid.uuid5(_TRACKS, f"{clip.meta.clip_id}/{track}").bytes


def _ros_time(t: int) -> dict[str, int]:
    return {"sec": t // 1_000_000_000, "nanosec": t % 1_000_000_000}


def _write_ros2(clip: Clip, out: Any) -> None:
    from mcap_ros2.writer import Writer

    writer = Writer(out)
    types = (
        "sensor_msgs/msg/NavSatFix",
        "nav_msgs/msg/Odometry",
        "autoware_perception_msgs/msg/TrackedObjects",
        "sensor_msgs/msg/CompressedImage",
    )
    schema = {name: writer.register_msgdef(name, definition(name)) for name in types}
    lat0 = float(clip.table["lat"][0].as_py())
    lon0 = float(clip.table["lon"][0].as_py())
    for t, row in _steps(clip):
        stamp = _ros_time(t)
        writer.write_message(
            "/sensing/gnss/fix",
            schema["sensor_msgs/msg/NavSatFix"],
            {
                "header": {"stamp": stamp, "frame_id": "gnss_link"},
                "status": {"status": 0, "service": 1},
                "latitude": row["lat"],
                "longitude": row["lon"],
                "altitude": 0.0,
                "position_covariance": [0.0] * 9,
                "position_covariance_type": 0,
            },
            log_time=t,
            publish_time=t,
        )
        east, north = geo.local_metres(np.array([row["lat"]]), np.array([row["lon"]]), lat0, lon0)
        yaw = math.radians(90.0 - row["heading"])  # compass heading to ENU yaw
        writer.write_message(
            "/localization/kinematic_state",
            schema["nav_msgs/msg/Odometry"],
            {
                "header": {"stamp": stamp, "frame_id": "map"},
                "child_frame_id": "base_link",
                "pose": {
                    "pose": {
                        "position": {"x": float(east[0]), "y": float(north[0]), "z": 0.0},
                        "orientation": _quaternion(yaw),
                    },
                    "covariance": [0.0] * 36,
                },
                "twist": {
                    "twist": {
                        "linear": {"x": row["speed"], "y": 0.0, "z": 0.0},
                        # A compass heading turns clockwise; ROS turns counter-clockwise.
                        "angular": {"x": 0.0, "y": 0.0, "z": -math.radians(row["yaw_rate"])},
                    },
                    "covariance": [0.0] * 36,
                },
            },
            log_time=t,
            publish_time=t,
        )
        writer.write_message(
            "/perception/object_recognition/tracking/objects",
            schema["autoware_perception_msgs/msg/TrackedObjects"],
            {
                "header": {"stamp": stamp, "frame_id": "base_link"},
                "objects": [_tracked(clip, o) for o in row["objects"]],
            },
            log_time=t,
            publish_time=t,
        )
    if clip.frames is not None:
        for frame in clip.frames.to_pylist():
            t = int(frame["time"].timestamp() * 1_000_000) * 1000
            writer.write_message(
                f"/sensing/camera/{frame['camera']}/image_raw/compressed",
                schema["sensor_msgs/msg/CompressedImage"],
                {
                    "header": {"stamp": _ros_time(t), "frame_id": frame["camera"]},
                    "format": frame["format"],
                    "data": frame["data"],
                },
                log_time=t,
                publish_time=t,
            )
    writer._writer.add_metadata("onshore.clip", _meta(clip))  # mcap's own Writer
    writer.finish()  # type: ignore[no-untyped-call]


def _quaternion(yaw: float) -> dict[str, float]:
    return {"x": 0.0, "y": 0.0, "z": math.sin(yaw / 2), "w": math.cos(yaw / 2)}


def _tracked(clip: Clip, obj: dict[str, Any]) -> dict[str, Any]:
    length, width, height = _SIZES[obj["class"]]
    return {
        "object_id": {"uuid": list(_uuid(clip, obj["track_id"]))},
        "existence_probability": 1.0,
        "classification": [{"label": _AUTOWARE_LABELS[obj["class"]], "probability": 1.0}],
        "kinematics": {
            "pose_with_covariance": {
                "pose": {
                    "position": {"x": obj["x"], "y": obj["y"], "z": 0.0},
                    "orientation": _quaternion(0.0),
                },
                "covariance": [0.0] * 36,
            },
            "orientation_availability": 0,
            "twist_with_covariance": {
                "twist": {"linear": {"x": obj["vx"], "y": obj["vy"], "z": 0.0}, "angular": _ZERO3},
                "covariance": [0.0] * 36,
            },
            "acceleration_with_covariance": {
                "accel": {"linear": _ZERO3, "angular": _ZERO3},
                "covariance": [0.0] * 36,
            },
            "is_stationary": obj["vx"] == 0 and obj["vy"] == 0,
        },
        "shape": {
            "type": 0,
            "footprint": {"points": []},
            "dimensions": {"x": length, "y": width, "z": height},
        },
    }


def _write_foxglove(clip: Clip, target: Path) -> None:
    import foxglove
    from foxglove.channels import (
        CompressedImageChannel,
        CompressedVideoChannel,
        LocationFixChannel,
        SceneUpdateChannel,
    )
    from foxglove.messages import (
        CompressedImage,
        CompressedVideo,
        CubePrimitive,
        KeyValuePair,
        LocationFix,
        Pose,
        SceneEntity,
        SceneUpdate,
        Timestamp,
        Vector3,
    )

    def stamp(t: int) -> Timestamp:
        return Timestamp(sec=t // 1_000_000_000, nsec=t % 1_000_000_000)

    context = foxglove.Context()
    with foxglove.open_mcap(target, allow_overwrite=True, context=context) as writer:
        fixes = LocationFixChannel("/gps", context=context)
        scene = SceneUpdateChannel("/perception/scene", context=context)
        for t, row in _steps(clip):
            fixes.log(
                LocationFix(
                    timestamp=stamp(t), frame_id="gps", latitude=row["lat"], longitude=row["lon"]
                ),
                log_time=t,
            )
            entities = [
                SceneEntity(
                    timestamp=stamp(t),
                    frame_id="base_link",
                    id=f"{o['track_id']}",
                    metadata=[KeyValuePair(key="class", value=o["class"])],
                    cubes=[
                        CubePrimitive(
                            pose=Pose(position=Vector3(x=o["x"], y=o["y"], z=0.0)),
                            size=_size(Vector3, o["class"]),
                        )
                    ],
                )
                for o in row["objects"]
            ]
            scene.log(SceneUpdate(entities=entities), log_time=t)
        if clip.frames is not None:
            for camera, times, packets, fmt in _camera_streams(clip.frames):
                if fmt in ("jpeg", "png"):
                    images = CompressedImageChannel(f"/camera/{camera}/image", context=context)
                    for t, data in zip(times, packets, strict=True):
                        images.log(
                            CompressedImage(
                                timestamp=stamp(t), frame_id=camera, data=data, format=fmt
                            ),
                            log_time=t,
                        )
                    continue
                video = CompressedVideoChannel(f"/camera/{camera}/video", context=context)
                for t, data in zip(times, packets, strict=True):
                    video.log(
                        CompressedVideo(timestamp=stamp(t), frame_id=camera, data=data, format=fmt),
                        log_time=t,
                    )
        writer.write_metadata("onshore.clip", _meta(clip))


def _size(vector: Any, cls: str) -> Any:
    length, width, height = _SIZES[cls]
    return vector(x=length, y=width, z=height)


def _camera_streams(frames: pa.Table) -> Iterator[tuple[str, list[int], list[bytes], str]]:
    """Per camera, its frames as Foxglove logs them: stills re-encoded as one H.264 stream
    (what a vehicle's video recorder writes), video as it is."""
    from onshore.clips import codec
    from onshore.clips.camera import decode_image

    times_ns = pc.cast(frames["time"], pa.int64()).to_numpy() * 1000
    cameras = frames["camera"].to_pylist()
    formats = frames["format"].to_pylist()
    for camera in dict.fromkeys(cameras):
        index = [i for i, c in enumerate(cameras) if c == camera]
        times = [int(times_ns[i]) for i in index]
        fmt = formats[index[0]]
        data = [bytes(frames["data"][i].as_py()) for i in index]
        if codec.is_video(fmt):
            yield camera, times, data, fmt
            continue
        pictures = (
            decode_image(d, f"{camera} frame {i}") for i, d in zip(index, data, strict=True)
        )
        yield camera, times, codec.encode_stream(pictures, "h264"), "h264"
