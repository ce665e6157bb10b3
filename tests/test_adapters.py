"""Uploads in standard message types, written by the official writers (``mcap-ros2-support``,
``mcap``) and by Foxglove's SDK, never by onshore's own writer."""

from __future__ import annotations

import io
import math
import uuid
from pathlib import Path
from typing import Any

import foxglove
import numpy as np
import pytest
from foxglove.channels import LocationFixChannel, SceneUpdateChannel
from foxglove.messages import (
    CubePrimitive,
    KeyValuePair,
    LocationFix,
    Pose,
    SceneEntity,
    SceneUpdate,
    Timestamp,
    Vector3,
)
from mcap.writer import Writer as McapWriter
from mcap_ros2.writer import Writer as Ros2Writer

from onshore.clips.adapters import describe
from onshore.clips.mcap import read_mcap
from onshore.clips.ros2_types import definition
from onshore.clips.validate import validate_clip
from onshore.errors import SchemaError, UnreadableFile
from onshore.settings import IngestSettings, MessageMapping

T0 = 1_760_000_000 * 10**9
STEP = 100_000_000
META = {
    "clip_id": "std-1",
    "vin": "1HGCM82633A004352",
    "vehicle_model": "Sedan",
    "trigger": "random_sample",
    "consent_training": "true",
    "recorded_in": "EU",
}
_ZERO3 = {"x": 0.0, "y": 0.0, "z": 0.0}


def _stamp(t: int) -> dict[str, int]:
    return {"sec": t // 10**9, "nanosec": t % 10**9}


def _quaternion(yaw: float) -> dict[str, float]:
    return {"x": 0.0, "y": 0.0, "z": math.sin(yaw / 2), "w": math.cos(yaw / 2)}


def _tracked(ident: bytes, label: int, x: float, y: float) -> dict[str, Any]:
    return {
        "object_id": {"uuid": list(ident)},
        "existence_probability": 1.0,
        "classification": [{"label": label, "probability": 0.9}],
        "kinematics": {
            "pose_with_covariance": {
                "pose": {"position": {"x": x, "y": y, "z": 0.0}, "orientation": _quaternion(0)},
                "covariance": [0.0] * 36,
            },
            "orientation_availability": 2,
            "twist_with_covariance": {
                "twist": {"linear": _ZERO3, "angular": _ZERO3},
                "covariance": [0.0] * 36,
            },
            "acceleration_with_covariance": {
                "accel": {"linear": _ZERO3, "angular": _ZERO3},
                "covariance": [0.0] * 36,
            },
            "is_stationary": False,
        },
        "shape": {
            "type": 0,
            "footprint": {"points": []},
            "dimensions": {"x": 4.0, "y": 2.0, "z": 1.5},
        },
    }


def ros2_bag(
    steps: int = 120,
    *,
    objects_frame: str = "map",
    odometry: bool = True,
    labels: tuple[int, ...] = (1, 7, 0),
    meta: dict[str, str] | None = META,
    no_fix_at: int | None = None,
) -> bytes:
    """A vehicle driving north at 10 m/s in Berlin, turning left at 0.1 rad/s in its second
    half, as a ROS 2 recorder writes it: NavSatFix, Odometry (pose in ``map``, an ENU frame
    whose origin is the first fix), and Autoware's TrackedObjects in ``objects_frame``."""
    buf = io.BytesIO()
    writer = Ros2Writer(buf)
    schemas = {
        name: writer.register_msgdef(name, definition(name))
        for name in (
            "sensor_msgs/msg/NavSatFix",
            "nav_msgs/msg/Odometry",
            "autoware_perception_msgs/msg/TrackedObjects",
        )
    }
    ids = [uuid.UUID(int=k + 1).bytes for k in range(len(labels))]
    x = y = 0.0
    yaw = math.pi / 2
    for i in range(steps):
        t = T0 + i * STEP
        turn = 0.1 if i >= steps // 2 else 0.0
        header = {"stamp": _stamp(t), "frame_id": "gnss"}
        lat = 52.52 + y / 110_574.0
        lon = 13.40 + x / (111_320.0 * math.cos(math.radians(52.52)))
        writer.write_message(
            "/sensing/gnss/fix",
            schemas["sensor_msgs/msg/NavSatFix"],
            {
                "header": header,
                "status": {"status": -1 if i == no_fix_at else 0, "service": 1},
                "latitude": 0.0 if i == no_fix_at else lat,
                "longitude": 0.0 if i == no_fix_at else lon,
                "altitude": 34.0,
                "position_covariance": [0.0] * 9,
                "position_covariance_type": 0,
            },
            log_time=t,
            publish_time=t,
        )
        if odometry:
            writer.write_message(
                "/localization/kinematic_state",
                schemas["nav_msgs/msg/Odometry"],
                {
                    "header": {"stamp": _stamp(t), "frame_id": "map"},
                    "child_frame_id": "base_link",
                    "pose": {
                        "pose": {
                            "position": {"x": x, "y": y, "z": 0.0},
                            "orientation": _quaternion(yaw),
                        },
                        "covariance": [0.0] * 36,
                    },
                    "twist": {
                        "twist": {
                            "linear": {"x": 10.0, "y": 0.0, "z": 0.0},
                            "angular": {"x": 0.0, "y": 0.0, "z": turn},
                        },
                        "covariance": [0.0] * 36,
                    },
                },
                log_time=t,
                publish_time=t,
            )
        # A car 20 m ahead and a pedestrian 5 m ahead and 3 m to the left, in the vehicle's
        # frame; given in the map frame when asked.
        rel = [(20.0, 0.0), (5.0, 3.0), (30.0, -4.0)]
        placed = []
        for ident, label, (fx, fy) in zip(ids, labels, rel, strict=False):
            if objects_frame == "map":
                ox = x + fx * math.cos(yaw) - fy * math.sin(yaw)
                oy = y + fx * math.sin(yaw) + fy * math.cos(yaw)
            else:
                ox, oy = fx, fy
            placed.append(_tracked(ident, label, ox, oy))
        writer.write_message(
            "/perception/object_recognition/tracking/objects",
            schemas["autoware_perception_msgs/msg/TrackedObjects"],
            {"header": {"stamp": _stamp(t), "frame_id": objects_frame}, "objects": placed},
            log_time=t,
            publish_time=t,
        )
        x += 10.0 * 0.1 * math.cos(yaw)
        y += 10.0 * 0.1 * math.sin(yaw)
        yaw += turn * 0.1
    if meta is not None:
        writer._writer.add_metadata("onshore.clip", meta)
    writer.finish()
    return buf.getvalue()


def test_a_ros2_bag_is_read_through_the_built_in_mappings() -> None:
    clip = read_mcap(ros2_bag(), "bag.mcap")
    validate_clip(clip, "bag.mcap")
    rows = clip.table.to_pylist()
    assert len(rows) == 120
    assert rows[0]["lat"] == pytest.approx(52.52) and rows[0]["lon"] == pytest.approx(13.40)
    assert all(r["speed"] == pytest.approx(10.0) for r in rows)
    assert rows[10]["heading"] == pytest.approx(0.0, abs=0.5)  # north
    # A left turn at 0.1 rad/s turns the compass heading back by 5.7 degrees a second.
    assert rows[100]["yaw_rate"] == pytest.approx(-math.degrees(0.1), abs=1e-3)
    assert rows[20]["yaw_rate"] == pytest.approx(0.0, abs=1e-6)
    assert rows[0]["steering"] is None and rows[0]["brake"] is None
    # Objects given in the map frame come back in the vehicle's frame, through the
    # odometry's pose, while the vehicle turns; the UNKNOWN one is left out.
    for row in (rows[5], rows[110]):
        objects = {o["class"]: o for o in row["objects"]}
        assert set(objects) == {"car", "pedestrian"}
        assert objects["car"]["x"] == pytest.approx(20.0, abs=1e-3)
        assert objects["car"]["y"] == pytest.approx(0.0, abs=1e-3)
        assert objects["pedestrian"]["x"] == pytest.approx(5.0, abs=1e-3)
        assert objects["pedestrian"]["y"] == pytest.approx(3.0, abs=1e-3)
        # Both keep pace with the vehicle: no velocity relative to it.
        assert objects["car"]["vx"] == pytest.approx(0.0, abs=1e-2)
    assert {o["track_id"] for r in rows for o in r["objects"]} == {0, 1}
    assert clip.meta.clip_id == "std-1" and clip.meta.consent_training is True


def test_a_fix_without_a_fix_is_left_out() -> None:
    clip = read_mcap(ros2_bag(no_fix_at=30), "bag.mcap")
    validate_clip(clip, "bag.mcap")  # a (0, 0) position would jump thousands of km
    assert clip.rows == 120


def test_objects_in_the_vehicles_frame_and_speed_from_the_track() -> None:
    clip = read_mcap(ros2_bag(objects_frame="base_link", odometry=False), "bag.mcap")
    validate_clip(clip, "bag.mcap")
    rows = clip.table.to_pylist()
    assert rows[30]["speed"] == pytest.approx(10.0, rel=0.02)
    car = next(o for o in rows[30]["objects"] if o["class"] == "car")
    assert (car["x"], car["y"]) == (pytest.approx(20.0), pytest.approx(0.0))


def test_objects_in_a_world_frame_need_the_vehicles_pose() -> None:
    with pytest.raises(SchemaError, match=r"frame 'map'.*no motion channel") as raised:
        read_mcap(ros2_bag(odometry=False), "bag.mcap")
    assert "ego_frames" in (raised.value.hint or "")


def test_an_unmapped_object_class_names_the_channel_and_how_to_map_it() -> None:
    settings = IngestSettings(
        types={
            "autoware_perception_msgs/msg/TrackedObjects": MessageMapping(
                role="objects",
                fields={
                    "stamp": "header.stamp",
                    "list": "objects",
                    "frame": "header.frame_id",
                    "id": "object_id.uuid",
                    "class": "classification[0].label",
                    "x": "kinematics.pose_with_covariance.pose.position.x",
                    "y": "kinematics.pose_with_covariance.pose.position.y",
                },
                classes={"1": "car"},
            )
        }
    )
    with pytest.raises(SchemaError, match=r"tracking/objects.*class '7'") as raised:
        read_mcap(ros2_bag(), "bag.mcap", settings)
    assert 'classes."7"' in (raised.value.hint or "")


def test_a_field_the_mapping_names_but_messages_lack_is_refused_naming_both() -> None:
    settings = IngestSettings(
        types={
            "sensor_msgs/msg/NavSatFix": MessageMapping(
                role="position",
                fields={"stamp": "header.stamp", "lat": "lat", "lon": "longitude"},
            )
        }
    )
    with pytest.raises(
        SchemaError,
        match=r"/sensing/gnss/fix \(sensor_msgs/msg/NavSatFix\) message 0 has no field 'lat'",
    ):
        read_mcap(ros2_bag(), "bag.mcap", settings)


def test_metadata_under_other_names_and_defaults() -> None:
    theirs = {"recording": "r-9", "VIN": META["vin"], "model": "Van", "consent": "false"}
    settings = IngestSettings(
        meta_record="vehicle",
        meta_fields={
            "clip_id": "recording",
            "vin": "VIN",
            "vehicle_model": "model",
            "consent_training": "consent",
        },
        meta_defaults={"trigger": "random_sample", "recorded_in": "EU"},
    )
    buf = io.BytesIO(ros2_bag(meta=None))
    # A bag without the record is refused, naming the record to map.
    with pytest.raises(SchemaError, match=r"no 'onshore\.clip' metadata record"):
        read_mcap(buf.getvalue(), "bag.mcap")
    data = _with_metadata(buf.getvalue(), "vehicle", theirs)
    clip = read_mcap(data, "bag.mcap", settings)
    assert (clip.meta.clip_id, clip.meta.vehicle_model, clip.meta.consent_training) == (
        "r-9",
        "Van",
        False,
    )
    lacking = IngestSettings(meta_record="vehicle", meta_fields={"clip_id": "recording"})
    with pytest.raises(SchemaError, match=r"has no 'vin'"):
        read_mcap(data, "bag.mcap", lacking)


def _with_metadata(data: bytes, name: str, values: dict[str, str]) -> bytes:
    """The bag rewritten with one more metadata record, by mcap's own reader and writer."""
    from mcap.reader import make_reader

    out = io.BytesIO()
    writer = McapWriter(out)
    writer.start(profile="ros2")
    reader = make_reader(io.BytesIO(data))
    schemas: dict[int, int] = {}
    channels: dict[int, int] = {}
    for schema, channel, message in reader.iter_messages():
        assert schema is not None
        if schema.id not in schemas:
            schemas[schema.id] = writer.register_schema(schema.name, schema.encoding, schema.data)
        if channel.id not in channels:
            channels[channel.id] = writer.register_channel(
                channel.topic, channel.message_encoding, schemas[schema.id]
            )
        writer.add_message(
            channels[channel.id], message.log_time, message.data, message.publish_time
        )
    writer.add_metadata(name, values)
    writer.finish()
    return out.getvalue()


def foxglove_file(path: Path, steps: int = 100) -> Path:
    """A vehicle driving east in Shanghai at 8 m/s, logged with Foxglove's SDK (Protobuf):
    LocationFix and SceneUpdate, and a pedestrian approaching."""
    context = foxglove.Context()
    with foxglove.open_mcap(path, allow_overwrite=True, context=context) as writer:
        fixes = LocationFixChannel("/gps", context=context)
        scene = SceneUpdateChannel("/perception/scene", context=context)
        for i in range(steps):
            t = T0 + i * STEP
            stamp = Timestamp(sec=t // 10**9, nsec=t % 10**9)
            fixes.log(
                LocationFix(timestamp=stamp, latitude=31.23, longitude=121.47 + i * 0.8 / 95_290.0),
                log_time=t,
            )
            entity = SceneEntity(
                timestamp=stamp,
                frame_id="base_link",
                id="walker",
                metadata=[KeyValuePair(key="class", value="pedestrian")],
                cubes=[CubePrimitive(pose=Pose(position=Vector3(x=15 - i * 0.1, y=2, z=0)))],
            )
            scene.log(SceneUpdate(entities=[entity]), log_time=t)
        writer.write_metadata("onshore.clip", {**META, "recorded_in": "CN"})
    return path


def test_a_foxglove_file_is_read_through_the_built_in_mappings(tmp_path: Path) -> None:
    data = foxglove_file(tmp_path / "fx.mcap").read_bytes()
    clip = read_mcap(data, "fx.mcap")
    validate_clip(clip, "fx.mcap")
    rows = clip.table.to_pylist()
    assert len(rows) == 100
    assert rows[50]["heading"] == pytest.approx(90.0, abs=0.5)  # east
    assert rows[50]["speed"] == pytest.approx(8.0, rel=0.02)
    (walker,) = rows[50]["objects"]
    assert walker["class"] == "pedestrian"
    assert (walker["x"], walker["vx"]) == (pytest.approx(10.0), pytest.approx(-1.0, abs=1e-3))


def test_json_messages_through_a_mapping_of_the_sites_own_type() -> None:
    """A site's own GNSS type, logged as JSON with the mcap writer, mapped in onshore.toml."""
    import orjson

    out = io.BytesIO()
    writer = McapWriter(out)
    writer.start()
    schema = writer.register_schema("acme.Gnss", "jsonschema", b'{"type": "object"}')
    channel = writer.register_channel("/acme/gnss", "json", schema)
    for i in range(50):
        t = T0 + i * STEP
        body = {"t_ns": t, "fix": {"lat": 47.6 + i * 1e-5, "lng": -122.33}, "quality": 1}
        writer.add_message(channel, t, orjson.dumps(body), t)
    writer.add_metadata("onshore.clip", {**META, "recorded_in": "US"})
    writer.finish()
    with pytest.raises(SchemaError, match="no channel of GNSS positions") as raised:
        read_mcap(out.getvalue(), "acme.mcap")
    assert "sensor_msgs/msg/NavSatFix" in (raised.value.hint or "")
    settings = IngestSettings(
        types={
            "acme.Gnss": MessageMapping(
                role="position", fields={"stamp": "t_ns", "lat": "fix.lat", "lon": "fix.lng"}
            )
        }
    )
    clip = read_mcap(out.getvalue(), "acme.mcap", settings)
    validate_clip(clip, "acme.mcap")
    assert clip.rows == 50
    assert clip.table["lon"][0].as_py() == pytest.approx(-122.33)
    assert describe(settings)["acme.Gnss"] == "position"


def test_a_topic_said_to_be_something_its_type_does_not_give_is_refused() -> None:
    settings = IngestSettings(topics={"/sensing/gnss/fix": "motion"})
    with pytest.raises(SchemaError, match=r"mapped as motion.*give position"):
        read_mcap(ros2_bag(), "bag.mcap", settings)
    ignored = IngestSettings(topics={"/perception/object_recognition/tracking/objects": "ignore"})
    clip = read_mcap(ros2_bag(), "bag.mcap", ignored)
    assert all(not r for r in clip.table["objects"].to_pylist())


def test_a_truncated_bag_is_unreadable() -> None:
    data = ros2_bag()
    for cut in (len(data) // 2, len(data) - 10):
        with pytest.raises(UnreadableFile, match=r"bag\.mcap: truncated"):
            read_mcap(data[:cut], "bag.mcap")


def test_the_track_heading_holds_while_standing() -> None:
    """A vehicle that stops keeps the heading it had, not the bearing of GNSS noise."""
    out = io.BytesIO()
    writer = Ros2Writer(out)
    schema = writer.register_msgdef(
        "sensor_msgs/msg/NavSatFix", definition("sensor_msgs/msg/NavSatFix")
    )
    rng = np.random.default_rng(3)
    lat = 48.0
    for i in range(100):
        t = T0 + i * STEP
        speed = float(np.clip(10.0 - 0.25 * (i - 40), 0.0, 10.0))  # braking at 2.5 m/s^2
        lat += speed * 0.1 / 110_574.0  # north
        jitter = rng.normal(0, 0.005) / 110_574.0
        writer.write_message(
            "/fix",
            schema,
            {
                "header": {"stamp": _stamp(t), "frame_id": "gnss"},
                "status": {"status": 0, "service": 1},
                "latitude": lat + jitter,
                "longitude": 11.0,
                "altitude": 0.0,
                "position_covariance": [0.0] * 9,
                "position_covariance_type": 0,
            },
            log_time=t,
            publish_time=t,
        )
    writer._writer.add_metadata("onshore.clip", META)
    writer.finish()
    clip = read_mcap(out.getvalue(), "stop.mcap")
    validate_clip(clip, "stop.mcap")
    heading = clip.table["heading"].to_numpy()
    assert np.allclose(heading[85:], heading[35], atol=1.0)
    assert clip.table["speed"].to_numpy()[90] < 0.5


@pytest.mark.parametrize("upload_format", ["ros2", "foxglove"])
def test_the_simulators_recorder_formats_read_back_as_the_clip(
    upload_format: str, tmp_path: Path
) -> None:
    """A clip written as an Autoware vehicle or a Foxglove recorder would comes back with its
    positions, speed and objects; Foxglove's camera comes back as H.264 video."""
    from conftest import make_clip
    from onshore.clips import codec
    from onshore.clips.camera import decode_image
    from onshore.clips.recorder import write_upload
    from onshore.clips.schema import Clip
    from onshore.fleet.camera import CameraSettings, render_frames

    clip = make_clip(4, steps=80)
    frames, _ = render_frames(clip, "cn", CameraSettings(rate_hz=2.0, passers_by=0))
    clip = Clip(clip.meta, clip.table, frames)
    path = tmp_path / f"clip.{upload_format}.mcap"
    write_upload(clip, path, upload_format)  # type: ignore[arg-type]
    back = read_mcap(path.read_bytes(), path.name)
    validate_clip(back, path.name)
    assert back.meta == clip.meta
    assert back.rows == clip.rows
    for column in ("lat", "lon"):
        assert np.allclose(back.table[column].to_numpy(), clip.table[column].to_numpy(), atol=1e-9)
    speed, expected = back.table["speed"].to_numpy(), clip.table["speed"].to_numpy()
    tolerance = 1e-4 if upload_format == "ros2" else 0.3  # Foxglove has no motion type
    assert np.allclose(speed[5:-5], expected[5:-5], atol=tolerance)
    heading = back.table["heading"].to_numpy()
    turn = (heading - clip.table["heading"].to_numpy() + 180) % 360 - 180
    assert np.abs(turn[5:-5]).max() < 2.0
    for got, want in zip(
        back.table["objects"].to_pylist(), clip.table["objects"].to_pylist(), strict=True
    ):
        assert sorted((o["class"], round(o["x"], 3), round(o["y"], 3)) for o in got) == sorted(
            (o["class"], round(o["x"], 3), round(o["y"], 3)) for o in want
        )
    assert back.frames is not None and back.frames.num_rows == frames.num_rows
    formats = set(back.frames["format"].to_pylist())
    assert formats == ({"jpeg"} if upload_format == "ros2" else {"h264"})
    if upload_format == "foxglove":
        packets = [bytes(p) for p in back.frames["data"].to_pylist()]
        pictures = list(codec.decode_stream(packets, "h264", path.name, "front"))
        assert len(pictures) == frames.num_rows
        assert pictures[0].shape == decode_image(frames["data"][0].as_py(), "f").shape


def test_a_site_ingests_standard_uploads_with_its_own_mapping(project: Any, tmp_path: Path) -> None:
    """Ingest at the EU site: the ROS 2 bag, the site's own JSON type once onshore.toml maps
    it, and a bag whose object class the site did not map is quarantined naming the channel,
    while the other files land."""
    from onshore.ingest import ingest
    from onshore.settings import load_project
    from onshore.store import SiteStore

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "bag.mcap").write_bytes(ros2_bag())
    (inbox / "custom.mcap").write_bytes(_acme_upload(48.14, 11.58, "r-2", recorded_in="EU"))
    # A bag recording a trailer's class as 9, which no mapping knows.
    (inbox / "odd.mcap").write_bytes(ros2_bag(labels=(1, 9), meta={**META, "clip_id": "odd"}))
    config = project.root / "onshore.toml"
    config.write_text(
        config.read_text()
        + """
[sites.eu-frankfurt.ingest]
meta_fields = { clip_id = "recording" }

[sites.eu-frankfurt.ingest.types."acme.Gnss"]
role = "position"
fields = { stamp = "t_ns", lat = "fix.lat", lon = "fix.lng" }
"""
    )
    with SiteStore.open(load_project(project.root), "eu-frankfurt") as site:
        report = ingest(site, [inbox], remove_quarantined_source=False)
        ids = {c.clip_id for c in site.catalogue.clips()}
    assert ids == {"std-1", "r-2"}, report.quarantined
    (refused,) = report.quarantined
    assert "odd.mcap" in str(refused["path"])
    assert "tracking/objects" in str(refused["reason"]) and "class '9'" in str(refused["reason"])


def _acme_upload(lat: float, lon: float, recording: str, *, recorded_in: str) -> bytes:
    import orjson

    out = io.BytesIO()
    writer = McapWriter(out)
    writer.start()
    schema = writer.register_schema("acme.Gnss", "jsonschema", b'{"type": "object"}')
    channel = writer.register_channel("/acme/gnss", "json", schema)
    for i in range(50):
        t = T0 + 3600 * 10**9 + i * STEP  # an hour after the bag: the same vehicle
        body = {"t_ns": t, "fix": {"lat": lat + i * 1e-5, "lng": lon}}
        writer.add_message(channel, t, orjson.dumps(body), t)
    meta = {k: v for k, v in META.items() if k != "clip_id"}
    writer.add_metadata(
        "onshore.clip", {**meta, "recording": recording, "recorded_in": recorded_in}
    )
    writer.finish()
    return out.getvalue()
