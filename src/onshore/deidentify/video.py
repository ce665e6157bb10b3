"""A clip's camera frames masked: the masked output, its check, and the memo of checks.

The detections come from classification's scan (:func:`onshore.classify.scan.scan_frames`),
which keeps them in the store. What proves an output masked is
:func:`~onshore.deidentify.frames.check_masked`, run on the output's own pixels. Its result is
kept (:class:`CheckMemo`, under ``derived/checks/``), keyed by the hash of the output image and
by the code and settings of the check, and signed with a key derived from the site's secret,
which the store does not hold: a rerun, or a second profile that masks the same frames alike,
reads the result for the very same bytes back, and a result that does not verify, written by
anyone without the secret, is ignored and the check runs.

A camera that sends video (:mod:`onshore.clips.codec`) is masked as its stream: its frames are
decoded in order, one per row, and masked like stills, with the boxes the scan found and moved
between its detected frames. The kept frames of the masked output are re-encoded as one H.264
stream, one access unit per kept frame (a frame dropped from the middle is simply not encoded;
the raw stream stays where it is in the store).
The check decodes that encoded stream, so what it holds to is what is stored, and runs on the
same stride and on every frame beside one where it finds something; a frame in which it still
finds a face or plate is dropped and the rest re-encoded and checked again, until a
stream holds. Its result is kept per encoded stream, with the face and plate count of each
frame, under the raw frames' hash and the stream's (:func:`~onshore.clips.codec.stream_digest`).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Final

import av
import cv2
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from onshore.classify import _centerface_int8, detectors
from onshore.classify.detectors import Box, DetectorConfig
from onshore.classify.scan import FrameScan, camera_pixels, detector_key, sampled
from onshore.clips import codec
from onshore.clips.camera import decode_image, encode_jpeg
from onshore.clips.codec import decode_stream, encode_stream, is_video, stream_digest
from onshore.deidentify import frames as masking
from onshore.deidentify.frames import MaskSettings, carry_over, check_masked, mask_frame
from onshore.errors import StoreError
from onshore.store.objects import ObjectStore, sha256

__all__ = [
    "CHECKS_DIR",
    "LOCAL_FRAMES_SCHEMA",
    "OUTPUT_VIDEO",
    "UNCHECKED",
    "CheckMemo",
    "FramesOutput",
    "deidentify_frames",
    "stream_findings",
]

CHECKS_DIR: Final = "derived/checks"
"""Where :class:`CheckMemo` keeps the results of the check on masked output images and
streams."""
OUTPUT_VIDEO: Final = "h264"
"""The format of a video camera's masked frames: one H.264 stream, whatever the camera sent."""


@cache
def _check_key(config: DetectorConfig) -> str:
    """A short hash of everything that decides :func:`check_masked`'s result on given bytes:
    the detectors' settings and packages, OpenCV (which decodes the image), and onshore's own
    detection and checking code, so that no result outlives a change to any of them."""
    code = b"".join(
        Path(str(module.__file__)).read_bytes() for module in (detectors, _centerface_int8, masking)
    )
    raw = f"{detector_key(config)}:{cv2.__version__}:{hashlib.sha256(code).hexdigest()}"
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
:attr:`~onshore.classify.detectors.DetectorConfig.video_stride`)."""


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
    todo = {j for j in sampled(len(packets), config.video_stride) if counts[j] == UNCHECKED}
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
    decoded = camera_pixels(scan.frames, camera, index, scan.clip_id)
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
