"""Camera frames through the whole site: upload format, ingest, classification, de-identification.

Frames are real JPEGs: the simulated front camera's scenes (faces from scikit-image's LFW
subset, drawn plates) and scikit-image's astronaut photograph, run through the real detectors.
"""

from __future__ import annotations

import io
from datetime import date
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory
from mcap_ros2.writer import Writer as Ros2Writer
from PIL import Image
from skimage.data import astronaut

from conftest import make_clip
from onshore.classify import classify_site
from onshore.classify.detectors import DEFAULT, Box, DetectorConfig
from onshore.classify.scan import DETECTIONS_DIR, count_tracks, detector_key
from onshore.clips import mcap as clip_mcap
from onshore.clips.camera import (
    check_image,
    decode_image,
    encode_jpeg,
    frames_table,
    image_format,
    is_cabin,
)
from onshore.clips.mcap import read_mcap, write_mcap
from onshore.clips.schema import OBJECT_TYPE, Clip
from onshore.deidentify import deidentify_site, resolve_profile
from onshore.deidentify.frames import check_masked
from onshore.errors import ConfigError, PhysicsError
from onshore.fleet.camera import CameraSettings, render_frames
from onshore.ingest import ingest
from onshore.settings import CONFIG_NAME, DetectorSettings, Project, load_project
from onshore.sites.keystore import load_keystore
from onshore.store import SiteStore

SITE = "cn-shanghai"


def _times(clip: Clip) -> np.ndarray:
    return pc.cast(clip.table["time"], pa.int64()).to_numpy()


def _with_people(clip: Clip) -> Clip:
    """The clip with a pedestrian walking towards the ego and a car just ahead."""
    objects = clip.table["objects"].to_pylist()
    for i, step in enumerate(objects):
        step.append(
            {
                "track_id": 7,
                "class": "pedestrian",
                "x": 4.2 - i * 0.01,
                "y": 0.4,
                "vx": 0.0,
                "vy": 0.0,
            }
        )
        step.append({"track_id": 8, "class": "car", "x": 7.0, "y": -1.2, "vx": 0.0, "vy": 0.0})
    column = pa.array(objects, pa.list_(OBJECT_TYPE))
    return Clip(clip.meta, clip.table.set_column(9, "objects", column))


def _camera_clip(seed: int, *, cabin: bool = False, people: bool = True) -> Clip:
    """A clip with front-camera frames drawn by the simulator (and a cabin frame if asked)."""
    clip = make_clip(seed, steps=60, clip_id=f"cam-{seed:03d}")
    if people:
        clip = _with_people(clip)
    frames, _drawn = render_frames(clip, "cn", CameraSettings(rate_hz=1.0, passers_by=0))
    if cabin:
        extra = frames_table(
            ["cabin"], [int(_times(clip)[30])], ["jpeg"], [encode_jpeg(astronaut())]
        )
        frames = pa.concat_tables([frames, extra]).sort_by(
            [("camera", "ascending"), ("time", "ascending")]
        )
    return Clip(clip.meta, clip.table, frames)


def test_frames_round_trip_through_mcap_and_a_ros2_decoder() -> None:
    clip = _camera_clip(1, cabin=True)
    buffer = io.BytesIO()
    write_mcap(clip, buffer)
    back = read_mcap(buffer.getvalue(), "clip.mcap")
    assert back.frames is not None and back.frames.equals(clip.frames)
    # The frames are standard sensor_msgs/CompressedImage: ROS 2's own decoder reads them.
    buffer.seek(0)
    reader = make_reader(buffer, decoder_factories=[DecoderFactory()])
    images = [
        (channel.topic, ros.header.frame_id, ros.format, bytes(ros.data))
        for schema, channel, _m, ros in reader.iter_decoded_messages()
        if schema is not None and schema.name == clip_mcap.IMAGE_TYPE
    ]
    assert clip.frames is not None
    assert len(images) == clip.frames.num_rows
    assert {topic for topic, *_ in images} == {
        "/camera/front/image/compressed",
        "/camera/cabin/image/compressed",
    }
    assert all(data.startswith(b"\xff\xd8\xff") for *_, data in images)


def test_frames_written_by_a_ros2_recorder_are_read() -> None:
    """An upload whose images a ROS 2 writer encoded, on a topic onshore did not name."""
    clip = make_clip(2, steps=30)
    buffer = io.BytesIO()
    write_mcap(clip, buffer)
    plain = read_mcap(buffer.getvalue(), "plain.mcap")
    out = io.BytesIO()
    writer = Ros2Writer(out)
    image_schema = writer.register_msgdef(clip_mcap.IMAGE_TYPE, clip_mcap._IMAGE_MSG.decode())
    ego_schema = writer.register_msgdef("onshore_msgs/msg/EgoState", clip_mcap._EGO_MSG.decode())
    obj_schema = writer.register_msgdef(
        "onshore_msgs/msg/TrackedObjects", clip_mcap._OBJECTS_MSG.decode()
    )
    table = plain.table.to_pylist()
    stamps = _times(plain) * 1000
    for row, stamp in zip(table, stamps.tolist(), strict=True):
        ego = {k: float(row[k]) for k in ("lat", "lon", "speed", "heading", "accel", "yaw_rate")}
        ego |= {"stamp": stamp, "steering": 0.0, "brake": 0.0}
        writer.write_message(clip_mcap.EGO_TOPIC, ego_schema, ego, stamp)
        empty = {
            "stamp": stamp,
            "track_id": [],
            "class_id": [],
            "x": [],
            "y": [],
            "vx": [],
            "vy": [],
        }
        writer.write_message(clip_mcap.OBJECTS_TOPIC, obj_schema, empty, stamp)
    png = io.BytesIO()
    Image.fromarray(astronaut()).save(png, format="PNG")
    stamp = int(stamps[10])
    image = {
        "header": {"stamp": {"sec": stamp // 10**9, "nanosec": stamp % 10**9}, "frame_id": "wide"},
        "format": "rgb8; png compressed bgr8",
        "data": png.getvalue(),
    }
    writer.write_message("/sensors/wide_cam/compressed", image_schema, image, stamp)
    meta = plain.meta
    writer.add_metadata(
        "onshore.clip",
        {
            "clip_id": meta.clip_id,
            "vin": meta.vin,
            "vehicle_model": meta.vehicle_model,
            "trigger": meta.trigger,
            "consent_training": "true",
            "recorded_in": meta.recorded_in,
        },
    )
    writer.finish()
    back = read_mcap(out.getvalue(), "recorded.mcap")
    assert back.table.num_rows == plain.table.num_rows
    assert back.frames is not None
    assert back.frames["camera"].to_pylist() == ["wide"]  # the header's frame id
    assert back.frames["format"].to_pylist() == ["png"]
    assert decode_image(back.frames["data"][0].as_py(), "x").shape == astronaut().shape


def test_image_checks() -> None:
    jpeg = encode_jpeg(astronaut())
    assert check_image(jpeg, "jpeg") is None
    assert "cut off" in (check_image(jpeg[: len(jpeg) // 2], "jpeg") or "")
    assert "signature" in (check_image(b"GIF89a" + jpeg, "jpeg") or "")
    assert image_format("bgr8; jpeg compressed bgr8") == "jpeg"
    assert image_format("png") == "png"
    assert image_format("h264") is None
    assert is_cabin("driver_monitor") and is_cabin("Cabin") and not is_cabin("front")


def test_a_truncated_frame_is_refused_with_its_camera(project: Project, tmp_path: Path) -> None:
    clip = _camera_clip(3, people=False)
    assert clip.frames is not None
    data = clip.frames["data"].to_pylist()
    data[1] = data[1][:-400]
    broken = clip.frames.set_column(3, "data", pa.array(data, pa.binary()))
    path = tmp_path / "up" / "broken.mcap"
    path.parent.mkdir()
    write_mcap(Clip(clip.meta, clip.table, broken), path)
    with SiteStore.open(project, SITE) as site:
        report = ingest(site, [path])
    (refused,) = report.quarantined
    assert (
        "broken.mcap" in refused["reason"] and "/camera/front/image/compressed" in refused["reason"]
    )
    assert "cut off" in refused["reason"]


def test_a_frame_outside_the_clip_is_refused() -> None:
    from onshore.clips.validate import validate_clip

    clip = _camera_clip(4, people=False)
    late = int(_times(clip)[-1]) + 5_000_000
    frames = frames_table(["front"], [late], ["jpeg"], [encode_jpeg(astronaut())])
    with pytest.raises(PhysicsError, match="outside the clip's time span"):
        validate_clip(Clip(clip.meta, clip.table, frames), "late.mcap")


def test_count_tracks_links_overlapping_boxes() -> None:
    a = Box("face", 10, 10, 40, 40, 0.9)
    a_moved = Box("face", 14, 12, 44, 42, 0.8)
    b = Box("face", 200, 10, 230, 40, 0.7)
    assert count_tracks([[a], [a_moved], [a_moved, b]]) == 2
    assert count_tracks([[a], [], [a]]) == 2  # a gap starts a new track: an upper bound
    assert count_tracks([]) == 0


@pytest.fixture
def filmed(project: Project, tmp_path: Path) -> Project:
    """A site holding two camera clips (one with a cabin frame) and one without frames."""
    folder = tmp_path / "uploads"
    folder.mkdir()
    write_mcap(_camera_clip(10, cabin=True), folder / "a.mcap")
    write_mcap(_camera_clip(11, people=False), folder / "b.mcap")
    write_mcap(make_clip(12, clip_id="plain-012"), folder / "c.mcap")
    with SiteStore.open(project, SITE) as site:
        report = ingest(site, [folder])
        assert report.clips == 3 and report.frames > 0
    return project


def test_ingest_stores_frames_beside_clips(filmed: Project) -> None:
    with SiteStore.open(filmed, SITE) as site:
        records = {f.clip_id: f for f in site.catalogue.frames()}
        assert set(records) == {"cam-010", "cam-011"}
        assert records["cam-010"].camera_counts()["cabin"] == 1
        inventory = site.catalogue.inventory()
        assert inventory["frames"]["clips"] == 2
        assert inventory["frames"]["frames"] == sum(f.frames for f in records.values())
        assert site.check(deep=True)["ok"]
        site.objects.delete(records["cam-011"].path)
        check = site.check()
        assert not check["ok"] and check["missing_objects"] == ["cam-011 (frames)"]


def test_classify_labels_video_and_counts_persons(filmed: Project) -> None:
    with SiteStore.open(filmed, SITE) as site:
        summary = classify_site(site, as_of=date(2026, 11, 29))
        labels = {(label.clip_id, label.category): label for label in site.catalogue.labels()}
        cached = list(site.objects.find(DETECTIONS_DIR))
    assert summary["clips_with_frames"] == 2
    identifiable = labels[("cam-010", "outside_video_identifiable")]
    assert "faces" in identifiable.evidence and identifiable.count >= 1
    assert ("cam-010", "cabin_video") in labels
    assert ("cam-011", "outside_video_masked") in labels  # a road with cars far away, no people
    assert not any(clip == "plain-012" and "video" in cat for clip, cat in labels)
    assert summary["subjects"]["persons"] >= 1
    assert summary["windows"]["calendar_year"]["persons"] == summary["subjects"]["persons"]
    assert summary["categories"]["cabin_video"]["clips"] == 1
    shown = {label["category"]: label for label in summary["clip_labels"]["cam-010"]}
    assert shown["outside_video_identifiable"]["evidence"] == identifiable.evidence
    assert len(cached) == 2  # one detections file per frames object


def test_the_default_detector_settings_are_the_default_detectors() -> None:
    assert DetectorConfig.of(DetectorSettings()) == DEFAULT


def _with_detectors(project: Project, table: str) -> Project:
    config = project.root / CONFIG_NAME
    config.write_text(config.read_text() + f"\n[sites.{SITE}.detectors]\n{table}\n")
    return load_project(project.root)


def test_a_site_s_detector_settings_are_the_detectors_its_stages_run(filmed: Project) -> None:
    project = _with_detectors(filmed, 'plate_model = "onshore"\nvideo_stride = 1')
    chosen = DetectorConfig.of(project.site(SITE).detectors)
    assert (chosen.plate_model, chosen.video_stride) == ("onshore", 1)
    with SiteStore.open(project, SITE) as site:
        classify_site(site, as_of=date(2026, 11, 29))
        secret = load_keystore(project.keystore_path(project.site(SITE))).hmac_secret
        deidentify_site(site, resolve_profile("training", {}), secret=secret)
        cached = list(site.objects.find(DETECTIONS_DIR))
    # Detections are kept under the key of the detectors that made them: the site's own,
    # by classification and de-identification alike (one file per frames object).
    assert len(cached) == 2
    assert all(path.endswith(f"-{detector_key(chosen)}.json") for path in cached)
    assert detector_key(chosen) != detector_key(DEFAULT)


@pytest.mark.parametrize(
    ("table", "field"),
    [("video_stride = 0", "video_stride"), ('plate_model = "yolo"', "plate_model")],
)
def test_bad_detector_settings_are_refused_naming_the_field(
    project: Project, table: str, field: str
) -> None:
    with pytest.raises(ConfigError, match=f"detectors.{field}"):
        _with_detectors(project, table)


def test_persons_are_unknown_without_frames(project: Project, tmp_path: Path) -> None:
    folder = tmp_path / "plain"
    folder.mkdir()
    write_mcap(make_clip(20), folder / "p.mcap")
    with SiteStore.open(project, SITE) as site:
        ingest(site, [folder])
        summary = classify_site(site)
    assert summary["subjects"]["persons"] is None
    assert summary["windows"]["trailing_12_months"]["persons"] is None


def test_deidentified_frames_are_masked_relative_and_without_cabin(filmed: Project) -> None:
    # The training profile without trip-end trimming: these clips are ~70 m trips.
    steps = [{"name": n} for n in ("pseudonymise", "drop_zones", "to_local", "mask_frames")]
    profile = resolve_profile("training", {"training": steps})
    with SiteStore.open(filmed, SITE) as site:
        secret = load_keystore(filmed.keystore_path(filmed.site(SITE))).hmac_secret
        summary = deidentify_site(site, profile, secret=secret)
        records = site.catalogue.deidentified("training")
        details = [orjson.loads(r.detail)["frames"] for r in records]
        paths = {d["path"] for d in details if d is not None}
        tables = [pq.read_table(pa.BufferReader(site.objects.read(p))) for p in paths]
    frames = summary["frames"]
    assert frames["in"] > 0 and frames["dropped"]["cabin"] == 1
    assert frames["faces_masked"] >= 1
    # Every frame shows a face or plate, so without masking none would be kept: masking, not
    # dropping, is what keeps most of them.
    assert frames["dropped"]["still_identifiable"] < frames["kept"]
    check = next(c for c in summary["checks"] if c["check"] == "no_unmasked_face_or_plate")
    assert check["held"]
    out = pa.concat_tables(tables)
    assert out.num_rows == frames["kept"] > 0
    assert set(out["camera"].to_pylist()) == {"front"}
    assert not any(pa.types.is_timestamp(f.type) for f in out.schema)
    assert min(out["t"].to_pylist()) >= 0 and max(out["t"].to_pylist()) < 3600
    clip_ids = set(out["clip"].to_pylist())
    assert not clip_ids & {"cam-010", "cam-011"}  # pseudonyms only
    pixels = [decode_image(d, "out") for d in out["data"].to_pylist()]
    assert check_masked(pixels).held
    assert all(b"Exif" not in d[:64] for d in out["data"].to_pylist())


def test_frames_follow_dropped_rows(filmed: Project) -> None:
    """A frame taken where the rows were trimmed away (a trip's end) is dropped with them."""
    profile = resolve_profile(
        "ends", {"ends": [{"name": "trim_ends", "metres": 400.0}, {"name": "mask_frames"}]}
    )
    with SiteStore.open(filmed, SITE) as site:
        secret = load_keystore(filmed.keystore_path(filmed.site(SITE))).hmac_secret
        summary = deidentify_site(site, profile, secret=secret)
    # The clips are each a trip of ~70 m: trimming 400 m from either end leaves no rows.
    assert summary["rows"] == 0
    assert summary["frames"]["kept"] == 0
    assert summary["frames"]["dropped"]["rows_dropped"] == summary["frames"]["in"] - 1


def test_simulated_frames_are_deterministic_and_show_what_was_drawn() -> None:
    clip = _with_people(make_clip(30, steps=60, clip_id="det-030"))
    first, drawn = render_frames(clip, "eu")
    again, _ = render_frames(clip, "eu")
    assert first.equals(again)
    faces = [box for frame in drawn for box in frame.faces]
    plates = [box for frame in drawn for box in frame.plates]
    assert faces and plates
    from onshore.classify.detectors import detect_faces, detect_plates

    found_faces = found_plates = 0
    for frame in drawn:
        boxes = detect_faces(frame.pixels)
        found_faces += sum(any(b.covers(f, 0.5) for b in boxes) for f in frame.faces)
        boxes = detect_plates(frame.pixels)
        found_plates += sum(any(b.covers(p, 0.5) for b in boxes) for p in frame.plates)
    assert found_faces >= 0.8 * len(faces)
    assert found_plates >= 0.8 * len(plates)


def test_an_erasure_takes_the_detections_and_check_results_made_of_the_frames(
    filmed: Project,
) -> None:
    from onshore.classify.scan import DETECTIONS_DIR
    from onshore.deidentify.video import CHECKS_DIR
    from onshore.rights.erase import erase_vehicle

    steps = [{"name": n} for n in ("pseudonymise", "drop_zones", "to_local", "mask_frames")]
    profile = resolve_profile("training", {"training": steps})
    with SiteStore.open(filmed, SITE) as site:
        classify_site(site, as_of=date(2026, 11, 29))
        secret = load_keystore(filmed.keystore_path(filmed.site(SITE))).hmac_secret
        deidentify_site(site, profile, secret=secret)
        erased, kept = site.catalogue.clip("cam-010"), site.catalogue.clip("cam-011")
        assert erased is not None and kept is not None and erased.vin != kept.vin
        frames = {f.clip_id: f.sha256 for f in site.catalogue.frames()}
        before = set(site.objects.find(DETECTIONS_DIR)) | set(site.objects.find(CHECKS_DIR))
    assert any(frames["cam-010"] in p for p in before), "detections were kept of its frames"
    erase_vehicle(filmed, erased.vin, site_id=SITE)
    with SiteStore.open(filmed, SITE) as site:
        after = set(site.objects.find(DETECTIONS_DIR)) | set(site.objects.find(CHECKS_DIR))
        assert site.catalogue.clip("cam-010") is None and site.check(deep=True)["ok"]
    assert not any(frames["cam-010"] in p for p in after)
    assert any(frames["cam-011"] in p for p in after), "the other vehicle's are kept"
    gone = before - after
    assert any(p.startswith(CHECKS_DIR) for p in gone), "its masked images' check results too"
