"""Camera video: H.264 and H.265 streams checked at ingest, decoded, classified, masked and
re-encoded, and the masked output checked as decoded from the stream that is stored.

The video is real: the simulated front camera's scenes (a pedestrian with a real LFW face just
ahead, a car with a drawn plate) encoded by libx264 and libx265, run through the real detectors.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from fractions import Fraction
from pathlib import Path
from unittest.mock import patch

import av
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from conftest import make_clip
from onshore.classify import classify_site, frame_labels
from onshore.classify.detectors import DEFAULT, Box, detect
from onshore.classify.scan import DETECTIONS_DIR, FrameScan, interpolate, scan_frames
from onshore.clips.camera import decode_image, frames_table, frames_to_parquet, read_frames
from onshore.clips.codec import (
    VIDEO_FORMATS,
    check_stream,
    decode_stream,
    encode_stream,
    is_video,
    stream_digest,
)
from onshore.clips.recorder import UploadFormat, write_upload
from onshore.clips.schema import OBJECT_TYPE, Clip
from onshore.clips.validate import validate_clip
from onshore.deidentify import deidentify_site, resolve_profile
from onshore.deidentify.frames import CHECK, MaskSettings, carry_over, check_masked
from onshore.deidentify.video import (
    CHECKS_DIR,
    UNCHECKED,
    CheckMemo,
    deidentify_frames,
    stream_findings,
)
from onshore.errors import SchemaError, UnreadableFile
from onshore.fleet.camera import CameraSettings, DrawnFrame, render_frames
from onshore.ingest import ingest
from onshore.rights.access import access_vehicle
from onshore.rights.erase import erase_vehicle
from onshore.settings import Project
from onshore.sites.keystore import load_keystore
from onshore.store import SiteStore
from onshore.store.catalogue import FramesRecord
from onshore.store.objects import ObjectStore, sha256

SITE = "cn-shanghai"
SECRET = b"s" * 32
RATE_HZ = 5.0
KEYFRAME_EVERY = 8


def _pedestrian_ahead(clip: Clip) -> Clip:
    """The clip with a pedestrian walking towards the ego and a car just ahead of it."""
    objects = clip.table["objects"].to_pylist()
    for i, step in enumerate(objects):
        step.append(
            {"track_id": 7, "class": "pedestrian", "x": 4.2 - i * 0.01, "y": 0.4, "vx": 0, "vy": 0}
        )
        step.append({"track_id": 8, "class": "car", "x": 7.0, "y": -1.2, "vx": 0.0, "vy": 0.0})
    column = pa.array(objects, pa.list_(OBJECT_TYPE))
    return Clip(clip.meta, clip.table.set_column(9, "objects", column))


def _video_clip(seed: int, fmt: str = "h264", steps: int = 40) -> tuple[Clip, list[DrawnFrame]]:
    """A clip whose front camera sends ``fmt`` video at 5 Hz (a frame every other row)."""
    clip = _pedestrian_ahead(make_clip(seed, steps=steps, clip_id=f"vid-{seed:03d}"))
    _, drawn = render_frames(clip, "cn", CameraSettings(rate_hz=RATE_HZ, passers_by=0))
    packets = encode_stream(
        [d.pixels for d in drawn], fmt, fps=RATE_HZ, keyframe_every=KEYFRAME_EVERY
    )
    count = len(drawn)
    frames = frames_table(["front"] * count, [d.time_us for d in drawn], [fmt] * count, packets)
    return Clip(clip.meta, clip.table, frames), drawn


EVERY = replace(CHECK, video_stride=1)
"""The check on every frame of a stream."""


def _packets(clip: Clip) -> list[bytes]:
    assert clip.frames is not None
    return [bytes(p) for p in clip.frames["data"].to_pylist()]


def _stored(store: ObjectStore, clip: Clip) -> FramesRecord:
    """The clip's frames put in ``store`` as ingest stores them, and their catalogue record."""
    assert clip.frames is not None
    data = frames_to_parquet(clip.meta.clip_id, clip.frames)
    digest = sha256(data)
    path = ObjectStore.frames_path(digest)
    store.put(path, data)
    count = clip.frames.num_rows
    return FramesRecord(clip.meta.clip_id, digest, path, len(data), count, f"front:{count}")


def _nal_types(packet: bytes) -> list[int]:
    """The H.264 NAL unit types of an access unit."""
    types, at = [], packet.find(b"\x00\x00\x01")
    while at >= 0:
        types.append(packet[at + 3] & 0x1F)
        at = packet.find(b"\x00\x00\x01", at + 3)
    return types


def _rows_us(clip: Clip) -> np.ndarray:
    return np.asarray(pc.cast(clip.table["time"], pa.int64()).to_numpy(), dtype=np.int64)


@pytest.fixture(scope="module")
def h264() -> tuple[Clip, list[DrawnFrame]]:
    return _video_clip(1)


@pytest.fixture(scope="module")
def scanned(
    h264: tuple[Clip, list[DrawnFrame]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[ObjectStore, FrameScan]:
    """The H.264 clip's frames in a store, scanned once for the module (detections cached)."""
    store = ObjectStore(str(tmp_path_factory.mktemp("video-store")))
    return store, scan_frames(store, _stored(store, h264[0]))


# --- the codec ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", VIDEO_FORMATS)
def test_a_stream_round_trips_with_small_error(
    fmt: str, h264: tuple[Clip, list[DrawnFrame]]
) -> None:
    pictures = [d.pixels for d in h264[1]]
    packets = encode_stream(pictures, fmt, fps=RATE_HZ, keyframe_every=KEYFRAME_EVERY)
    assert len(packets) == len(pictures) and is_video(fmt) and not is_video("jpeg")
    back = list(decode_stream(packets, fmt, "round.mcap", "front"))
    assert len(back) == len(pictures)
    for before, after in zip(pictures, back, strict=True):
        assert after.shape == before.shape and after.dtype == np.uint8
        assert np.abs(after.astype(np.int16) - before).mean() < 2.0
    # Any keyframe starts decoding: each carries its parameter sets.
    assert (
        len(list(decode_stream(packets[KEYFRAME_EVERY:], fmt, "cut.mcap", "front")))
        == len(pictures) - KEYFRAME_EVERY
    )


def test_h264_keyframes_carry_their_parameter_sets_and_nothing_is_reordered(
    h264: tuple[Clip, list[DrawnFrame]],
) -> None:
    packets = _packets(h264[0])
    for index, packet in enumerate(packets):
        types = _nal_types(packet)
        if index % KEYFRAME_EVERY == 0:
            assert {7, 8, 5} <= set(types), f"keyframe {index} has NAL types {types}"
        else:
            assert 5 not in types and 1 in types
    # One frame out per packet in, at once: no B-frames, no delay.
    check_stream(packets, "h264", "upload.mcap", "front", decode=True)


def test_odd_sizes_and_changing_sizes_are_encoded() -> None:
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (37, 51, 3), dtype=np.uint8) for _ in range(2)]
    frames.append(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    back = list(decode_stream(encode_stream(frames), "h264", "odd", "front"))
    assert [f.shape for f in back] == [(38, 52, 3)] * 3  # padded to even, scaled to the first
    assert encode_stream([]) == []
    with pytest.raises(SchemaError, match="not an H x W x 3"):
        encode_stream([np.zeros((8, 8), np.uint8)])


def _panning(count: int) -> list[np.ndarray]:
    """A textured scene panning by a pixel a frame: predicted frames, no scene cut."""
    texture = np.random.default_rng(1).integers(40, 200, (64, 96 + count, 3), dtype=np.uint8)
    return [np.ascontiguousarray(texture[:, i : i + 96]) for i in range(count)]


@pytest.mark.parametrize(
    ("encoder", "fmt", "options"),
    [
        ("libx264", "h264", {"bframes": "2", "x264-params": "repeat-headers=1"}),
        ("libx265", "h265", {"x265-params": "bframes=3:repeat-headers=1:log-level=error"}),
    ],
)
def test_a_stream_with_b_frames_decodes_in_display_order(
    encoder: str, fmt: str, options: dict[str, str]
) -> None:
    """A camera's encoder may reorder pictures: the decoder then holds frames back, and they
    still come out one per packet, in the order they were taken."""
    pictures = _panning(24)
    context = av.CodecContext.create(encoder, "w")
    assert isinstance(context, av.VideoCodecContext)
    context.width, context.height, context.pix_fmt = 96, 64, "yuv420p"
    context.time_base, context.framerate = Fraction(1, 10), Fraction(10)
    context.options = options
    packets: list[bytes] = []
    for index, picture in enumerate([*pictures, None]):
        frame = None
        if picture is not None:
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts = index
        packets.extend(bytes(packet) for packet in context.encode(frame))
    check_stream(packets, fmt, "upload.mcap", "front", decode=True)
    decoded = list(decode_stream(packets, fmt, "upload.mcap", "front"))
    assert len(decoded) == len(packets) == len(pictures)
    nearest = [
        int(np.argmin([np.abs(d.astype(np.int16) - p).mean() for p in pictures])) for d in decoded
    ]
    assert nearest == list(range(len(pictures)))


def _truncated(packets: list[bytes]) -> list[bytes]:
    """The last packet cut in half."""
    return [*packets[:-1], packets[-1][: len(packets[-1]) // 2]]


def _cut_in_header(packets: list[bytes]) -> list[bytes]:
    """The last packet cut inside its slice header: FFmpeg's H.265 decoder reads a slice cut
    inside its data without an error (see :mod:`onshore.clips.codec`), but not this."""
    return [*packets[:-1], packets[-1][:12]]


@pytest.mark.parametrize(
    ("fmt", "damage", "found_by", "reason"),
    [
        ("h264", lambda p: p[1:], "parse", "missing keyframe"),
        ("h265", lambda p: p[1:], "parse", "missing keyframe"),
        ("h264", lambda p: [*p[:5], *p[7:]], "parse", "frame_num jumps"),
        ("h264", lambda p: [p[0][4:], *p[1:]], "parse", "Annex B"),
        ("h264", lambda p: [*p[:3], b"", *p[3:]], "parse", "Annex B"),
        ("h264", lambda p: [p[0] + p[1], *p[2:]], "parse", "2 pictures where one is due"),
        ("h264", lambda p: [], "parse", "without packets"),
        ("h264", _truncated, "decode", "cannot be decoded"),
        ("h265", _cut_in_header, "decode", "cannot be decoded"),
        ("h265", lambda p: [*p[:5], *p[7:]], "decode", "cannot be decoded"),
    ],
)
def test_a_broken_stream_is_unreadable_naming_file_and_camera(
    fmt: str, damage: object, found_by: str, reason: str
) -> None:
    packets = encode_stream(_panning(12), fmt, keyframe_every=10)
    assert callable(damage)
    broken = damage(packets)
    if found_by == "parse":
        with pytest.raises(UnreadableFile, match=reason) as raised:
            check_stream(broken, fmt, "upload.mcap", "/camera/front/video")
    else:
        # The parse at ingest does not look into slice data; decoding does, and fails.
        check_stream(broken, fmt, "upload.mcap", "/camera/front/video")
        with pytest.raises(UnreadableFile, match=reason):
            check_stream(broken, fmt, "upload.mcap", "/camera/front/video", decode=True)
    with pytest.raises(UnreadableFile, match=reason) as raised:
        list(decode_stream(broken, fmt, "upload.mcap", "/camera/front/video"))
    assert "upload.mcap" in str(raised.value) and "/camera/front/video" in str(raised.value)
    assert raised.value.hint


@pytest.mark.parametrize("fmt", ["vp9", "av1", "mjpeg"])
def test_other_codecs_are_refused(fmt: str) -> None:
    packets = encode_stream([np.zeros((16, 16, 3), np.uint8)])
    for run in (
        lambda: check_stream(packets, fmt, "upload.mcap", "front"),
        lambda: list(decode_stream(packets, fmt, "upload.mcap", "front")),
    ):
        with pytest.raises(UnreadableFile, match=f"'{fmt}' video; onshore reads h264 and h265"):
            run()


def test_ingest_checks_each_camera_stream(h264: tuple[Clip, list[DrawnFrame]]) -> None:
    clip = h264[0]
    assert clip.frames is not None
    validate_clip(clip, "upload.mcap")
    keyless = clip.frames.slice(1)
    with pytest.raises(UnreadableFile, match=r"upload\.mcap: camera front.*missing keyframe"):
        validate_clip(Clip(clip.meta, clip.table, keyless), "upload.mcap")
    formats = clip.frames["format"].to_pylist()
    formats[-1] = "jpeg"
    cameras, data = clip.frames["camera"].to_pylist(), clip.frames["data"].to_pylist()
    times = pc.cast(clip.frames["time"], pa.int64()).to_pylist()
    mixed = frames_table(cameras, times, formats, data)
    with pytest.raises(SchemaError, match="one video stream or stills"):
        validate_clip(Clip(clip.meta, clip.table, mixed), "upload.mcap")


# --- classification ----------------------------------------------------------------------------


def test_classification_counts_the_persons_in_a_video_camera(
    scanned: tuple[ObjectStore, FrameScan], h264: tuple[Clip, list[DrawnFrame]]
) -> None:
    store, scan = scanned
    drawn = h264[1]
    faces = [d for d in drawn if d.faces]
    found = sum(
        any(b.kind == "face" and b.covers(d.faces[0], 0.5) for b in boxes)
        for d, boxes in zip(drawn, scan.found, strict=True)
        if d.faces
    )
    assert found >= 0.8 * len(faces)
    labels = {label.category: label for label in frame_labels(scan)}
    identifiable = labels["outside_video_identifiable"]
    persons = scan.tracks("face")
    # One pedestrian, seen in frame after frame: a track, not a person per frame.
    assert 1 <= persons <= 3 < len(faces)
    assert f"at most {persons} persons" in identifiable.evidence
    assert "of camera front" in identifiable.evidence
    record = _stored(store, h264[0])
    with patch("onshore.classify.scan.detect") as detect:
        again = scan_frames(store, record)
    assert again.found == scan.found and not detect.called, "read back from the cache"


# --- de-identification -------------------------------------------------------------------------


def test_video_is_masked_re_encoded_and_checked_on_the_stored_stream(
    scanned: tuple[ObjectStore, FrameScan], h264: tuple[Clip, list[DrawnFrame]]
) -> None:
    store, scan = scanned
    clip, drawn = h264
    rows = _rows_us(clip)
    # The rows of one second in the middle were dropped (a sensitive area): the frames there go
    # with them, and the stream is encoded without them.
    kept_us = np.concatenate([rows[:14], rows[26:]])
    memo = CheckMemo(store, SECRET)
    # Checked on every frame, the stored stream holds on every frame (at the default stride it
    # holds on those the check ran on: test_the_check_of_a_stream_runs_on_its_stride...).
    out = deidentify_frames(scan, kept_us, "out-1", mask=MaskSettings(), check=EVERY, memo=memo)
    table = out.table
    assert out.dropped["rows_dropped"] >= 5 and out.faces >= 1
    assert (
        table.num_rows
        == out.frames_in - out.dropped["rows_dropped"] - out.dropped["still_identifiable"]
    )
    assert table.num_rows >= 10
    assert set(table["format"].to_pylist()) == {"h264"}
    packets = [bytes(p) for p in table["data"].to_pylist()]
    assert len(packets) == table.num_rows
    masked = list(decode_stream(packets, "h264", "out", "front"))
    assert check_masked(masked, CHECK).held
    # The drawn faces are hidden: the pixels inside them differ from the camera's.
    by_time = {d.time_us: d for d in drawn}
    first = int(kept_us[0])
    for pixels, t in zip(masked, table["t"].to_pylist(), strict=True):
        frame = by_time[first + round(t * 1e6)]
        for x1, y1, x2, y2 in frame.faces:
            raw = frame.pixels[y1:y2, x1:x2].astype(np.int16)
            assert np.abs(pixels[y1:y2, x1:x2] - raw).mean() > 8
    # The check's result is kept per stream, under the raw frames' hash (what an erasure of
    # them looks for), then the stream's.
    pending = memo.take()
    source, digest = scan.source, stream_digest(packets)
    assert source and pending
    assert all(p.startswith(f"{CHECKS_DIR}/{source[:2]}/{source}-") for p, _ in pending)
    assert [p for p, _ in pending if f"{source}-{digest}-" in p]
    store.put_many(pending)
    with patch("onshore.deidentify.video.check_masked", wraps=check_masked) as check:
        again = deidentify_frames(
            scan, kept_us, "out-1", mask=MaskSettings(), check=EVERY, memo=CheckMemo(store, SECRET)
        )
    assert again.table.equals(table), "the same frames encode to the same stream"
    assert check.call_count == 0, "its check is read back"


def test_a_video_left_unmasked_is_refused_by_the_check(
    scanned: tuple[ObjectStore, FrameScan], h264: tuple[Clip, list[DrawnFrame]]
) -> None:
    store, scan = scanned
    raw = _packets(h264[0])
    # The camera's own stream as the "output": faces in most of its frames.
    found = CheckMemo(store, SECRET).check_stream(
        raw, CHECK, scan.source, name="raw as output", camera="front"
    )
    assert sum(1 for n in found if n) >= 0.8 * sum(1 for d in h264[1] if d.faces)
    # Masking with no detections masks nothing: the frames that still show a face are dropped,
    # and what is kept, re-encoded without them, holds.
    blind = FrameScan(scan.clip_id, scan.frames, [[] for _ in scan.found], scan.config, scan.source)
    kept_us = _rows_us(h264[0])
    memo = CheckMemo(store, SECRET)
    out = deidentify_frames(blind, kept_us, "out-2", mask=MaskSettings(), check=CHECK, memo=memo)
    assert out.dropped["still_identifiable"] >= 0.8 * sum(1 for n in found if n)
    assert out.findings >= out.dropped["still_identifiable"]
    # Each stream checked is kept, those refused too, under the raw frames' hash.
    kept = [path for path, _ in memo.take()]
    assert kept and all(scan.source in path for path in kept)
    if out.table.num_rows:
        packets = [bytes(p) for p in out.table["data"].to_pylist()]
        assert check_masked(list(decode_stream(packets, "h264", "out", "front")), CHECK).held
    # Without a mask step, a video is kept unmasked (and unchecked, as stills are), re-encoded.
    plain = deidentify_frames(scan, kept_us, "out-3", mask=None, check=CHECK)
    assert plain.table.num_rows == scan.frames.num_rows and plain.faces == 0
    assert set(plain.table["format"].to_pylist()) == {"h264"}


def test_a_stream_check_is_read_back_unless_edited(
    scanned: tuple[ObjectStore, FrameScan],
) -> None:
    store, _ = scanned
    packets = encode_stream([np.full((48, 64, 3), 120, np.uint8)] * 3)

    def checked(
        source: str, known: list[int] | None = None
    ) -> tuple[list[int], int, list[tuple[str, bytes]]]:
        """The memo's answer, the frames the detectors ran on, and what it would store."""
        memo = CheckMemo(store, SECRET)
        with patch("onshore.deidentify.video.check_masked", wraps=check_masked) as check:
            found = memo.check_stream(
                packets, EVERY, source, name="grey", camera="front", known=known or []
            )
        return found, check.call_count, memo.take()

    kept, edited = "ab" * 32, "cd" * 32
    found, runs, pending = checked(kept)
    assert (found, runs, len(pending)) == ([0, 0, 0], 3, 1)
    store.put_many(pending)
    assert checked(kept)[:2] == ([0, 0, 0], 0), "read back"
    ((path, data),) = checked(edited)[2]
    store.put(path, orjson.dumps({**orjson.loads(data), "findings": [0, 1, 0]}))
    assert checked(edited)[:2] == ([0, 0, 0], 3), "an edited result is checked again"
    # Frames of a stream that begins as one checked before are not checked again.
    assert checked("ef" * 32, known=[2, 0])[:2] == ([2, 0, 0], 1)


def test_an_h265_camera_is_masked_into_h264(tmp_path: Path) -> None:
    clip, _ = _video_clip(2, "h265", steps=20)
    assert clip.frames is not None and set(clip.frames["format"].to_pylist()) == {"h265"}
    store = ObjectStore(str(tmp_path / "store"))
    scan = scan_frames(store, _stored(store, clip))
    assert scan.boxes("face") >= 1
    out = deidentify_frames(scan, _rows_us(clip), "out-4", mask=MaskSettings(), check=CHECK)
    assert out.table.num_rows >= 1 and set(out.table["format"].to_pylist()) == {"h264"}
    packets = [bytes(p) for p in out.table["data"].to_pylist()]
    assert check_masked(list(decode_stream(packets, "h264", "out", "front")), CHECK).held


def test_the_check_of_a_stream_runs_on_its_stride_and_follows_a_finding(
    h264: tuple[Clip, list[DrawnFrame]],
) -> None:
    raw = _packets(h264[0])
    every = stream_findings(raw, EVERY, "raw", "front")
    with patch("onshore.deidentify.video.check_masked", wraps=check_masked) as check:
        strided = stream_findings(raw, CHECK, "raw", "front")
    stride, last = CHECK.video_stride, len(raw) - 1
    assert stride > 1 and UNCHECKED not in every and sum(1 for n in every if n) >= 5
    ran = [j for j, n in enumerate(strided) if n != UNCHECKED]
    assert check.call_count == len(ran)
    # Where it ran, it found what the check of every frame finds.
    assert all(strided[j] == every[j] for j in ran)
    # It ran on every stride-th frame and the last, and on every frame near one with a finding.
    assert set(range(0, len(raw), stride)) | {last} <= set(ran)
    for j in (j for j in ran if strided[j] > 0):
        assert set(range(max(0, j - stride + 1), min(last, j + stride - 1) + 1)) <= set(ran)
    # So a face or plate shown on `stride` frames in a row or more is found on each of them.
    for j in range(len(raw) - stride + 1):
        if all(every[j : j + stride]):
            assert all(strided[j : j + stride])
    # Where it finds nothing, it runs on every stride-th frame and the last alone.
    grey = encode_stream([np.full((96, 128, 3), 120, np.uint8)] * 8)
    sampled = set(range(0, 8, stride)) | {7}
    with patch("onshore.deidentify.video.check_masked", wraps=check_masked) as check:
        found = stream_findings(grey, CHECK, "grey", "front")
    assert found == [0 if j in sampled else UNCHECKED for j in range(8)]
    assert check.call_count == len(sampled) < 8


def _box(x: float, y: float = 100.0, side: float = 16.0, kind: str = "face") -> Box:
    return Box(kind, x, y, x + side, y + side, 0.6)  # type: ignore[arg-type]


def test_boxes_between_detected_frames_follow_their_track() -> None:
    # Detected on frames 0, 3, 6 and 7 (the last): a face crossing at 30 px a frame, a plate
    # standing, and a second face that appears at 6.
    found: list[list[Box]] = [[] for _ in range(8)]
    found[0] = [_box(300), _box(600, kind="plate")]
    found[3] = [_box(210), _box(600, kind="plate")]
    found[6] = [_box(120), _box(600, kind="plate"), _box(900)]
    found[7] = [_box(900)]
    out = interpolate(found, [0, 3, 6, 7])
    faces = [sorted(b.x1 for b in frame if b.kind == "face") for frame in out]
    plates = [[b.x1 for b in frame if b.kind == "plate"] for frame in out]
    # The crossing face moves frame by frame; a face and a plate are never one track.
    assert faces[1][0] == pytest.approx(270) and faces[2][0] == pytest.approx(240)
    assert faces[4][0] == pytest.approx(180) and faces[5][0] == pytest.approx(150)
    assert plates[1:6] == [[600]] * 5
    # The face that appears at 6 may have been there since 3: held at 4 and 5.
    assert [f for f in faces[4] if f > 800] == [900] and [f for f in faces[5] if f > 800] == [900]
    # The crossing face's track ends at 6; beyond it the face is masked where it may be at half
    # to one and a half times its speed, but frame 7 was detected, so nothing is added there.
    assert faces[7] == [900]


def test_a_track_that_ends_between_detected_frames_is_swept_on() -> None:
    # A passer-by close to the camera, speeding up as it leaves the frame: seen at 0 and 3, not
    # at 6. At 4 and 5 it is masked over the span it may have covered.
    found: list[list[Box]] = [[] for _ in range(7)]
    found[0], found[3] = [_box(193)], [_box(98)]
    out = interpolate(found, [0, 3, 6])
    swept = out[5][0]
    speed = (98 - 193) / 3
    assert swept.x1 == pytest.approx(98 + 1.5 * speed * 2) and swept.x2 == pytest.approx(
        98 + 16 + 0.5 * speed * 2
    )
    assert out[6] == []
    # Seen only once, a box is held over the frames either side, up to the detected ones.
    alone: list[list[Box]] = [[] for _ in range(7)]
    alone[3] = [_box(400)]
    assert [len(frame) for frame in interpolate(alone, [0, 3, 6])] == [0, 1, 1, 1, 1, 1, 0]


def test_a_video_is_scanned_on_its_stride(
    h264: tuple[Clip, list[DrawnFrame]], tmp_path: Path
) -> None:
    store = ObjectStore(str(tmp_path))
    record = _stored(store, h264[0])
    count = record.frames
    with patch("onshore.classify.scan.detect", wraps=detect) as calls:
        strided = scan_frames(store, record)
    assert calls.call_count == len(set(range(0, count, DEFAULT.video_stride)) | {count - 1})
    with patch("onshore.classify.scan.detect", wraps=detect) as calls:
        every = scan_frames(store, record, replace(DEFAULT, video_stride=1))
    assert calls.call_count == count, "the stride is part of the detections' cache key"
    # Between detected frames, the boxes follow those of every frame closely enough to mask them
    # (with their margins and carried over, as masking does).
    settings = MaskSettings()
    masked = carry_over(strided.found, settings.carry)
    covered = [
        any(
            b.kind == box.kind
            and b.expanded(settings.margin if b.kind == "face" else settings.plate_margin).covers(
                (box.x1, box.y1, box.x2, box.y2)
            )
            for b in own
        )
        for own, found in zip(masked, every.found, strict=True)
        for box in found
        if box.score >= 0.5
    ]
    assert len(covered) >= 10 and sum(covered) >= 0.95 * len(covered), covered


# --- through a site ----------------------------------------------------------------------------


def test_a_stream_that_fails_to_decode_after_ingest_is_kept_out_not_fatal(
    project: Project, tmp_path: Path
) -> None:
    """A slice cut short passes ingest's parse (it does not look into slice data); the decode
    of classification finds it. The clip is labelled as if its frames showed faces, its frames
    are kept out of every output, and the other clips go through."""
    damaged, _ = _video_clip(5, steps=30)
    assert damaged.frames is not None
    packets = _truncated(_packets(damaged))
    check_stream(packets, "h264", "v.mcap", "front")
    at = damaged.frames.schema.get_field_index("data")
    frames = damaged.frames.set_column(at, "data", pa.array(packets, pa.binary()))
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    write_upload(Clip(damaged.meta, damaged.table, frames), uploads / "damaged.mcap", "foxglove")
    fine, _ = _video_clip(6, steps=30)
    write_upload(fine, uploads / "fine.mcap", "foxglove")
    steps = [{"name": n} for n in ("pseudonymise", "drop_zones", "to_local", "mask_frames")]
    profile = resolve_profile("training", {"training": steps})
    secret = load_keystore(project.keystore_path(project.site(SITE))).hmac_secret
    with SiteStore.open(project, SITE) as site:
        assert ingest(site, [uploads]).clips == 2
        summary = classify_site(site, as_of=date(2026, 11, 29))
        deidentified = deidentify_site(site, profile, secret=secret)
        outputs = {r.clip_id: r for r in site.catalogue.deidentified("training")}
    (label,) = [
        x for x in summary["clip_labels"]["vid-005"] if x["category"].startswith("outside_video")
    ]
    assert label["category"] == "outside_video_identifiable"
    assert "could not be decoded" in label["evidence"] and "front" in label["evidence"]
    assert label["count"] == frames.num_rows
    assert summary["subjects"]["persons"] >= frames.num_rows
    assert set(outputs) == {"vid-005", "vid-006"}
    assert orjson.loads(outputs["vid-005"].detail)["frames"] is None, "no frame of it is kept"
    assert orjson.loads(outputs["vid-006"].detail)["frames"]["frames"] > 0
    assert deidentified["frames"]["dropped"]["undecodable"] > 0
    check = next(c for c in deidentified["checks"] if c["check"] == "no_unmasked_face_or_plate")
    assert check["held"] and "could not be decoded" in check["reason"]


@pytest.mark.parametrize("upload_format", ["foxglove", "ros2"])
def test_a_standard_upload_through_ingest_classification_and_deidentification(
    upload_format: UploadFormat, project: Project, tmp_path: Path
) -> None:
    """What a vehicle's Foxglove recorder uploads (``foxglove.CompressedVideo``), and what a
    ROS 2 vehicle records (NavSatFix, Odometry, TrackedObjects, JPEG CompressedImage), end to
    end."""
    clip = _pedestrian_ahead(make_clip(3, steps=30, clip_id="vid-003"))
    stills, _ = render_frames(clip, "cn", CameraSettings(rate_hz=RATE_HZ, passers_by=0))
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    write_upload(Clip(clip.meta, clip.table, stills), uploads / "v.mcap", upload_format)
    fmt = "h264" if upload_format == "foxglove" else "jpeg"
    steps = [{"name": n} for n in ("pseudonymise", "drop_zones", "to_local", "mask_frames")]
    profile = resolve_profile("training", {"training": steps})
    with SiteStore.open(project, SITE) as site:
        assert ingest(site, [uploads]).frames == stills.num_rows
        (frames,) = site.catalogue.frames()
        _, stored = read_frames(site.objects.read(frames.path), frames.path)
        assert set(stored["format"].to_pylist()) == {fmt}
        summary = classify_site(site, as_of=date(2026, 11, 29))
        secret = load_keystore(project.keystore_path(project.site(SITE))).hmac_secret
        deidentified = deidentify_site(site, profile, secret=secret)
        (record,) = site.catalogue.deidentified("training")
        masked = orjson.loads(record.detail)["frames"]
        table = pq.read_table(pa.BufferReader(site.objects.read(masked["path"])))
    assert summary["subjects"]["persons"] >= 1
    shown = {label["category"] for label in summary["clip_labels"]["vid-003"]}
    assert "outside_video_identifiable" in shown
    check = next(c for c in deidentified["checks"] if c["check"] == "no_unmasked_face_or_plate")
    assert check["held"] and deidentified["frames"]["faces_masked"] >= 1
    assert set(table["format"].to_pylist()) == {fmt}
    assert table.num_rows == deidentified["frames"]["kept"] > 0
    if fmt == "h264":
        pixels = list(decode_stream(table["data"].to_pylist(), "h264", "output", "front"))
    else:
        pixels = [decode_image(d, "output") for d in table["data"].to_pylist()]
    assert check_masked(pixels, CHECK).held
    # A driver's access request gets each camera as one file a player opens: the stream, and
    # the time of each of its frames.
    answer = access_vehicle(project, clip.meta.vin, tmp_path / "answer", site_id=SITE)
    assert answer["frames"] == stills.num_rows
    shown_frames = sorted((tmp_path / "answer" / "frames" / "vid-003").iterdir())
    if fmt == "h264":
        assert [p.name for p in shown_frames] == ["front.h264", "front.h264.times.json"]
        with av.open(str(shown_frames[0]), format="h264") as player:
            assert sum(1 for _ in player.decode(video=0)) == stills.num_rows
        times = orjson.loads(shown_frames[1].read_bytes())
        assert times["format"] == "h264" and len(times["frames"]) == stills.num_rows
    else:
        assert len(shown_frames) == stills.num_rows
        assert all(p.suffix == ".jpeg" for p in shown_frames)
    # An erasure of the vehicle takes the detections of its video and the check of its
    # masked stream (kept under the stream's digest) with it.
    with SiteStore.open(project, SITE) as site:
        assert list(site.objects.find(CHECKS_DIR)) and list(site.objects.find(DETECTIONS_DIR))
    erase_vehicle(project, clip.meta.vin, site_id=SITE)
    with SiteStore.open(project, SITE) as site:
        assert not list(site.objects.find(CHECKS_DIR))
        assert not list(site.objects.find(DETECTIONS_DIR))
