"""Camera video of a clip: H.264 and H.265 streams, checked at ingest, decoded and re-encoded.

A camera that sends video (``foxglove.CompressedVideo``) is stored as one row of the frames
table per message (:data:`~onshore.clips.schema.FRAMES_SCHEMA`, format ``h264`` or ``h265``):
``data`` is one access unit in Annex B byte-stream form, as the vehicle sent it, and the rows of
one camera, in time order, are its stream. Decoding can start only at a keyframe that carries
its parameter sets (SPS and PPS, and VPS for H.265) in-band, so the first row of each camera
must be one. Other codecs are refused: VP9 and AV1 (which ``foxglove.CompressedVideo`` also
names) because nothing downstream reads them, and Motion JPEG because each of its frames is a
JPEG still, which the stills path (``jpeg``) already reads.

How deep ingest looks: :func:`check_stream` parses the NAL units of every access unit and
their headers, and does not decode the pixels. At 1280x720 and ~20 kB a frame, one core parses
~50,000 frames a second and decodes ~250 (without conversion to RGB; the ``--video`` mode of
``bench/deidentify_frames.py`` measures both), where ingest as a whole moves ~11 MB of MCAP a
second: decoding at ingest would about halve ingest's speed for uploads that are mostly video,
and classification decodes every frame anyway, with the same strict decoder. The parse catches
what makes a stream undecodable from its start or in its structure: a codec onshore does not
read, no packets, a packet that is not Annex B or holds no picture (or two), a first packet
that is not a keyframe with its parameter sets, and, for H.264, a reference picture missing
from the middle (a jump in ``frame_num``). What only decoding finds (slice data cut short or
damaged) is found by :func:`decode_stream`, which fails on the first damaged frame rather than
concealing it; ask :func:`check_stream` for ``decode=True`` to find it at ingest too. One gap
remains: FFmpeg's H.265 decoder reads a slice cut short inside its data (not in its header)
without reporting it, so such a frame decodes wrong instead of failing; the check on masked
output still runs on what it decodes to, so this costs picture quality, not privacy.

:func:`encode_stream` writes what de-identification stores: H.264 (or H.265), one access unit
per frame, no B-frames, every keyframe with its parameter sets, so that any keyframe can start
decoding and a frame dropped from the middle of the output is simply not encoded. Re-encoding
also drops whatever the camera wrote into its stream besides pixels (SEI user data: serial
numbers, positions), as re-encoding a JPEG drops its EXIF.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Final

import av
import cv2
import numpy as np
from numpy.typing import NDArray

from onshore.errors import ConfigError, SchemaError, UnreadableFile

__all__ = [
    "VIDEO_FORMATS",
    "check_stream",
    "decode_stream",
    "encode_stream",
    "is_video",
    "stream_digest",
]

VIDEO_FORMATS: Final = ("h264", "h265")
"""Video codecs onshore reads and writes: H.264/AVC and H.265/HEVC, Annex B byte streams."""

_DECODERS: Final = {"h264": "h264", "h265": "hevc"}
"""FFmpeg's decoder of each format."""
_ENCODERS: Final = {"h264": "libx264", "h265": "libx265"}
_START: Final = b"\x00\x00\x01"

# H.264 NAL unit types (ITU-T H.264 table 7-1).
_AVC_SLICE, _AVC_IDR, _AVC_SPS, _AVC_PPS = 1, 5, 7, 8
_AVC_PARTITIONS: Final = frozenset({2, 3, 4})
_AVC_HIGH_PROFILES: Final = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134})
"""``profile_idc`` values whose SPS carries chroma format, bit depths and scaling lists."""
# H.265 NAL unit types (ITU-T H.265 table 7-1): VCL 0-31, of which IRAP 16-23 (16-21 defined).
_HEVC_VCL_END, _HEVC_IRAP = 32, range(16, 22)
_HEVC_VPS, _HEVC_SPS, _HEVC_PPS = 32, 33, 34
_HEADER_BYTES: Final = 32
"""Bytes of a slice or PPS read to parse its header fields: more than any field read needs."""
_UNIT_PREFIX: Final = 4096
"""Bytes of a NAL unit kept for parsing: an SPS, scaling lists and all, fits many times over."""


def is_video(fmt: str) -> bool:
    """Whether ``fmt`` (a frames table's ``format``) is a video codec rather than a still."""
    return fmt in VIDEO_FORMATS


def stream_digest(packets: Iterable[bytes]) -> str:
    """The SHA-256 of a stream, hex: of its packets, each preceded by its length (8 bytes, big
    endian), so that the same bytes cut into other packets are another stream."""
    digest = hashlib.sha256()
    for packet in packets:
        digest.update(len(packet).to_bytes(8, "big"))
        digest.update(packet)
    return digest.hexdigest()


# --- checking ------------------------------------------------------------------------------------


def check_stream(
    packets: Sequence[bytes], fmt: str, name: str, camera: str, *, decode: bool = False
) -> None:
    """Check one camera's stream, ``packets`` in order, as ingest does; return if it holds.

    Parses the NAL units of every packet (see the module's docstring for what that finds and
    what it does not); with ``decode``, also decodes every frame strictly, as
    :func:`decode_stream` does, without converting the pixels. Raises UnreadableFile naming
    the file ``name`` and the ``camera`` (a camera name or a channel) for a format that is not
    one of :data:`VIDEO_FORMATS`, no packets, and a stream that is not decodable.
    """
    checked = (
        _frames(packets, fmt, name, camera, threads=1)
        if decode
        else _parsed(packets, fmt, name, camera)
    )
    if not sum(1 for _ in checked):
        raise _empty(fmt, name, camera)


def _empty(fmt: str, name: str, camera: str) -> UnreadableFile:
    return UnreadableFile(
        f"{name}: camera {camera} has a {fmt} stream without packets",
        hint="leave the channel out of the upload if the camera recorded nothing",
    )


def _parsed(packets: Iterable[bytes], fmt: str, name: str, camera: str) -> Iterator[bytes]:
    """``packets`` as they come, each after its NAL units are parsed and found sound."""
    _decoder(fmt, name, camera)
    parser: _AvcParser | _HevcParser = _AvcParser() if fmt == "h264" else _HevcParser()
    for index, packet in enumerate(packets):
        data = bytes(packet)
        problem = parser.packet(data, first=index == 0)
        if problem is not None:
            hint = next((h for start, h in _HINTS.items() if problem.startswith(start)), _DAMAGED)
            raise UnreadableFile(
                f"{name}: camera {camera}, {fmt} packet {index}: {problem}", hint=hint
            )
        yield data


_DAMAGED: Final = "the stream was damaged in recording or transfer; upload the clip again"
_HINTS: Final = {
    "missing keyframe": (
        "decoding starts at a keyframe with its parameter sets: cut the clip so that each "
        "camera's first message is a keyframe, and have the encoder repeat its parameter sets "
        "at every keyframe"
    ),
    "not an Annex B access unit": (
        "foxglove.CompressedVideo carries Annex B byte streams (start codes), not avcC/hvcC "
        "length-prefixed units"
    ),
}


@dataclass(slots=True)
class _AvcParser:
    """The H.264 structure of a stream, a packet at a time: each packet one picture, the first
    an IDR picture after its SPS and PPS, and ``frame_num`` without a gap between reference
    pictures (a gap is a reference picture that later ones predict from, missing)."""

    sps: dict[int, tuple[int, bool, bool]] = field(default_factory=dict)
    """Per SPS id: ``log2_max_frame_num``, gaps allowed, field pictures possible."""
    pps: dict[int, int] = field(default_factory=dict)
    """Per PPS id, the SPS it refers to."""
    previous_ref: int | None = None
    """``frame_num`` of the last reference picture (PrevRefFrameNum)."""

    def packet(self, data: bytes, *, first: bool) -> str | None:
        units = _nal_units(data)
        if units is None:
            return "not an Annex B access unit: it does not begin with a start code"
        kinds = set()
        pictures = 0
        for unit in units:
            if unit[0] & 0x80:
                return "a NAL unit has its forbidden bit set"
            kind, ref = unit[0] & 0x1F, (unit[0] >> 5) & 0x3
            kinds.add(kind)
            try:
                if kind == _AVC_SPS:
                    self._sps(_rbsp(unit[1:]))
                elif kind == _AVC_PPS:
                    reader = _Bits(_rbsp(unit[1 : 1 + _HEADER_BYTES]))
                    pps_id = reader.ue()
                    self.pps[pps_id] = reader.ue()
                elif kind in (_AVC_SLICE, _AVC_IDR):
                    if len(unit) < 2:
                        return "a slice is cut off in its header"
                    if not unit[1] & 0x80:  # first_mb_in_slice is not 0: not a picture's start
                        if not pictures:
                            return "the packet begins in the middle of a picture"
                        continue
                    pictures += 1
                    problem = self._picture(unit, kind == _AVC_IDR, ref != 0)
                    if problem is not None:
                        return problem
            except (IndexError, KeyError):
                return "a parameter set or slice header cannot be parsed (cut off or damaged)"
        if kinds & _AVC_PARTITIONS:
            return "slice data partitioning (Extended profile) is not read"
        if first and not {_AVC_IDR, _AVC_SPS, _AVC_PPS} <= kinds:
            return "missing keyframe: the first packet is not an IDR picture with its SPS and PPS"
        if pictures != 1:
            return f"{pictures or 'no'} pictures where one is due"
        return None

    def _sps(self, rbsp: bytes) -> None:
        reader = _Bits(rbsp)
        profile = reader.u(8)
        reader.u(16)  # constraint flags, level
        sps_id = reader.ue()
        if profile in _AVC_HIGH_PROFILES:
            chroma = reader.ue()
            if chroma == 3:
                reader.u(1)  # separate_colour_plane_flag
            reader.ue()  # bit depths
            reader.ue()
            reader.u(1)
            if reader.u(1):  # seq_scaling_matrix_present_flag
                for i in range(12 if chroma == 3 else 8):
                    if reader.u(1):
                        _skip_scaling_list(reader, 16 if i < 6 else 64)
        log2_max_frame_num = reader.ue() + 4
        poc_type = reader.ue()
        if poc_type == 0:
            reader.ue()
        elif poc_type == 1:
            reader.u(1)
            reader.se()
            reader.se()
            for _ in range(reader.ue()):
                reader.se()
        reader.ue()  # max_num_ref_frames
        gaps = bool(reader.u(1))
        reader.ue()  # picture size
        reader.ue()
        frame_mbs_only = bool(reader.u(1))
        self.sps[sps_id] = (log2_max_frame_num, gaps, not frame_mbs_only)

    def _picture(self, unit: bytes, idr: bool, reference: bool) -> str | None:
        reader = _Bits(_rbsp(unit[1 : 1 + _HEADER_BYTES]))
        reader.ue()  # first_mb_in_slice
        reader.ue()  # slice_type
        pps_id = reader.ue()
        if pps_id not in self.pps or self.pps[pps_id] not in self.sps:
            return "missing keyframe: a picture refers to a parameter set the stream has not sent"
        log2_max, gaps, fields = self.sps[self.pps[pps_id]]
        # colour_plane_id (4:4:4 coded as three planes) would precede frame_num; such streams
        # are not written by vehicle cameras and their frame_num is read as it comes.
        frame_num = reader.u(log2_max)
        if idr:
            self.previous_ref = frame_num
            return None
        if self.previous_ref is None:
            return "missing keyframe: the first picture is not an IDR picture"
        expected = (self.previous_ref + 1) % (1 << log2_max)
        # frame_num 1 may follow a picture that reset it (memory_management_control_operation
        # 5, in a part of the slice header this parse does not read); the second field of a
        # pair repeats its first field's number.
        held = gaps or frame_num in (expected, 1) or (fields and frame_num == self.previous_ref)
        if not held:
            return (
                f"frame_num jumps from {self.previous_ref} to {frame_num}: a picture that later "
                "ones are predicted from is missing"
            )
        if reference:
            self.previous_ref = frame_num
        return None


@dataclass(slots=True)
class _HevcParser:
    """The H.265 structure of a stream, a packet at a time: each packet one picture, the first
    an IRAP picture (IDR, CRA or BLA) after its VPS, SPS and PPS. H.265 has no ``frame_num``:
    a missing picture is found by decoding."""

    def packet(self, data: bytes, *, first: bool) -> str | None:
        units = _nal_units(data)
        if units is None:
            return "not an Annex B access unit: it does not begin with a start code"
        kinds = set()
        pictures = 0
        for unit in units:
            if len(unit) < 2 or unit[0] & 0x80 or not unit[1] & 0x07:
                return "a NAL unit header is damaged (forbidden bit set or temporal id 0)"
            kind = (unit[0] >> 1) & 0x3F
            kinds.add(kind)
            if kind < _HEVC_VCL_END:
                if len(unit) < 3:
                    return "a slice is cut off in its header"
                if unit[2] & 0x80:  # first_slice_segment_in_pic_flag
                    pictures += 1
                elif not pictures:
                    return "the packet begins in the middle of a picture"
        keyframe = any(kind in _HEVC_IRAP for kind in kinds)
        if first and not (keyframe and {_HEVC_VPS, _HEVC_SPS, _HEVC_PPS} <= kinds):
            return (
                "missing keyframe: the first packet is not an IRAP picture with its VPS, SPS "
                "and PPS"
            )
        if pictures != 1:
            return f"{pictures or 'no'} pictures where one is due"
        return None


def _nal_units(data: bytes) -> list[bytes] | None:
    """The NAL units of an Annex B access unit, without start codes and trailing zero bytes,
    each cut to its first :data:`_UNIT_PREFIX` bytes (all that is parsed: a slice's data is
    not, and copying it would cost more than the parse); None if ``data`` does not begin with
    a start code (after optional zero bytes)."""
    begin = data.find(_START)
    if begin < 0 or data[:begin].strip(b"\x00"):
        return None
    units = []
    while begin >= 0:
        start = begin + len(_START)
        begin = data.find(_START, start)
        end = len(data) if begin < 0 else begin
        while end > start and not data[end - 1]:  # a NAL unit never ends in a zero byte
            end -= 1
        if end > start:
            units.append(data[start : min(end, start + _UNIT_PREFIX)])
    return units


def _rbsp(ebsp: bytes) -> bytes:
    """A NAL unit's payload less its emulation prevention bytes (``00 00 03`` -> ``00 00``)."""
    return ebsp.replace(b"\x00\x00\x03", b"\x00\x00")


class _Bits:
    """Reads bits and Exp-Golomb codes, most significant first; IndexError past the end."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def u(self, count: int) -> int:
        value = 0
        for _ in range(count):
            byte = self._data[self._pos >> 3]
            value = (value << 1) | ((byte >> (7 - (self._pos & 7))) & 1)
            self._pos += 1
        return value

    def ue(self) -> int:
        zeros = 0
        while not self.u(1):
            zeros += 1
            if zeros > 31:
                raise IndexError("an Exp-Golomb code longer than 32 bits")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        code = self.ue()
        return (code + 1) // 2 if code & 1 else -(code // 2)


def _skip_scaling_list(reader: _Bits, size: int) -> None:
    last = following = 8
    for _ in range(size):
        if following:
            following = (last + reader.se() + 256) % 256
        last = following or last


# --- decoding ------------------------------------------------------------------------------------


def decode_stream(
    packets: Iterable[bytes], fmt: str, name: str, camera: str, *, threads: int = 1
) -> Iterator[NDArray[np.uint8]]:
    """The frames of one camera's stream, ``H x W x 3`` RGB ``uint8``, one per packet, in order.

    Frames come as the decoder gives them, so a stream is decoded a frame at a time without
    holding it all; a decoder that delays output (B-frames reorder pictures) yields them later,
    in display order, and the count must still be one per packet. The decoder is strict: a
    damaged or cut packet is an error, not a frame concealed from its neighbours. Raises
    UnreadableFile naming ``name`` and ``camera`` for a format not in :data:`VIDEO_FORMATS`
    and for a stream that cannot be decoded (from the frame where it fails). ``threads``: the
    decoder's (a worker process per core wants 1).
    """
    for frame in _frames(packets, fmt, name, camera, threads=threads):
        yield np.asarray(frame.to_ndarray(format="rgb24"), dtype=np.uint8)


def _decoder(fmt: str, name: str, camera: str) -> str:
    if fmt not in _DECODERS:
        raise UnreadableFile(
            f"{name}: camera {camera} sends {fmt!r} video; onshore reads "
            f"{' and '.join(VIDEO_FORMATS)} only",
            hint="re-encode the camera's video as H.264 or H.265 (VP9 and AV1 are not read; "
            "Motion JPEG goes in as JPEG stills)",
        )
    return _DECODERS[fmt]


def _frames(
    packets: Iterable[bytes], fmt: str, name: str, camera: str, *, threads: int
) -> Iterator[av.VideoFrame]:
    """The decoded frames of a stream, checked; see :func:`decode_stream`."""
    context = av.CodecContext.create(_decoder(fmt, name, camera), "r")
    assert isinstance(context, av.VideoCodecContext)
    # explode: stop at the first error in the slice data instead of concealing it.
    context.options = {"err_detect": "explode"}
    context.thread_count = threads
    if threads > 1:
        context.thread_type = "AUTO"
    count = out = 0

    def checked(frames: list[av.VideoFrame]) -> Iterator[av.VideoFrame]:
        nonlocal out
        for frame in frames:
            if frame.is_corrupt:
                raise UnreadableFile(
                    f"{name}: camera {camera}, {fmt} frame {out} is damaged", hint=_DAMAGED
                )
            out += 1
            yield frame

    try:
        for packet in _parsed(packets, fmt, name, camera):
            count += 1
            yield from checked(context.decode(av.Packet(packet)))
        yield from checked(context.decode(None))
    except av.FFmpegError as exc:
        raise UnreadableFile(
            f"{name}: camera {camera}, {fmt} packet {count - 1} cannot be decoded "
            f"({exc.strerror or exc})",
            hint=_DAMAGED,
        ) from exc
    if count == 0:
        raise _empty(fmt, name, camera)
    if out != count:
        raise UnreadableFile(
            f"{name}: camera {camera}: {count} {fmt} packets gave {out} frames, one each is due "
            "(the stream is cut or a packet is damaged)",
            hint=_DAMAGED,
        )


# --- encoding ------------------------------------------------------------------------------------


def encode_stream(
    frames: Iterable[NDArray[np.uint8]],
    fmt: str = "h264",
    *,
    fps: float = 10.0,
    keyframe_every: int = 30,
    crf: int = 20,
    preset: str = "veryfast",
    threads: int = 1,
) -> list[bytes]:
    """``frames`` (``H x W x 3`` RGB ``uint8``) as one stream: one Annex B access unit each,
    in order.

    H.264 by libx264 (or H.265 by libx265), 4:2:0, constant quality ``crf`` (lower is better:
    20 is visually lossless for most scenes), no B-frames and no lookahead (``zerolatency``),
    so every frame is one packet as it comes; a keyframe at least every ``keyframe_every``
    frames, each with its parameter sets in-band. ``fps`` sets the stream's frame rate (its
    timing and rate control, not which frames are kept). ``threads``: the encoder's; one per
    worker process by default, which also makes the output the same bytes on every machine
    (x264's slice threads cut frames by the thread count). Frames are read as they come;
    one of another size than the first is scaled to it, and an odd width or height is padded
    by one edge pixel (4:2:0 needs even sizes). Raises ConfigError for a format not in
    :data:`VIDEO_FORMATS` or a setting out of range, SchemaError for a frame that is not an RGB
    image; returns ``[]`` for no frames.
    """
    if fmt not in _ENCODERS:
        raise ConfigError(f"video format must be one of {', '.join(VIDEO_FORMATS)}, not {fmt!r}")
    if not 0 < fps <= 1000 or keyframe_every < 1 or not 0 <= crf <= 51 or threads < 1:
        raise ConfigError(
            f"encoder settings out of range: fps {fps}, keyframe_every {keyframe_every}, "
            f"crf {crf}, threads {threads}"
        )
    context: av.VideoCodecContext | None = None
    packets: list[bytes] = []
    count = 0
    size = (0, 0)
    for count, frame in enumerate(frames, 1):
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise SchemaError(
                f"frame {count - 1} is not an H x W x 3 uint8 RGB image "
                f"({frame.dtype}, shape {frame.shape})"
            )
        if context is None:
            size = (frame.shape[1], frame.shape[0])
            context = _encoder(fmt, size, fps, keyframe_every, crf, preset, threads)
        elif (frame.shape[1], frame.shape[0]) != size:
            frame = np.asarray(cv2.resize(frame, size, interpolation=cv2.INTER_AREA), np.uint8)
        picture = av.VideoFrame.from_ndarray(_even(frame), format="rgb24")
        picture.pts = count - 1
        packets.extend(bytes(packet) for packet in context.encode(picture))
    if context is None:
        return []
    packets.extend(bytes(packet) for packet in context.encode(None))
    if len(packets) != count:
        raise ConfigError(f"the {fmt} encoder gave {len(packets)} packets for {count} frames")
    return packets


def _encoder(
    fmt: str, size: tuple[int, int], fps: float, keyframe_every: int, crf: int, preset: str,
    threads: int,
) -> av.VideoCodecContext:  # fmt: skip
    context = av.CodecContext.create(_ENCODERS[fmt], "w")
    assert isinstance(context, av.VideoCodecContext)
    context.width, context.height = (side + side % 2 for side in size)
    context.pix_fmt = "yuv420p"
    rate = Fraction(fps).limit_denominator(1001)
    context.framerate = rate
    context.time_base = 1 / rate
    options = {"preset": preset, "tune": "zerolatency", "crf": str(crf)}
    if fmt == "h264":
        context.thread_count = threads
        options |= {"bframes": "0", "g": str(keyframe_every), "x264-params": "repeat-headers=1"}
    else:
        options["x265-params"] = (
            f"keyint={keyframe_every}:bframes=0:repeat-headers=1:log-level=error:"
            f"pools={threads}:frame-threads={threads}"
        )
    context.options = options
    return context


def _even(frame: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """``frame`` padded by its last row and column where its height or width is odd."""
    height, width = frame.shape[:2]
    if height % 2 == 0 and width % 2 == 0:
        return frame
    return np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
