"""Training of the plate detector (:mod:`~onshore.classify.plates`): its network, the targets
and loss it learns from, the synthetic and labelled samples, and the export to ONNX.

The network (:class:`PlateNet`) is CenterNet-like and fully convolutional: a 4 x 4 stride-4
stem, depthwise-separable blocks down to stride 32, a light top-down path back to stride 8, and
two heads there: a heatmap of plate centres and, at each cell, the centre's offset and the
plate's log width and height. 90k weights (0.36 MB): 10 ms a 1280 x 720 frame on one core,
decoding included (``bench/plates.py``).

:func:`train` runs on the CPU, on one thread, from a seed: the samples of step ``n`` are drawn
from ``(seed, n)``, so a run resumed from its checkpoint goes on exactly as it would have. The
result is written as an ONNX graph (:func:`to_onnx`, built node by node from the weights, with
batch norms folded and the ``uint8`` frame's normalisation inside) that onnxruntime runs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (torch's own convention)
from numpy.typing import NDArray
from torch import nn

from onshore.classify.plate_scenes import (
    REGIONS,
    Fonts,
    Photo,
    Region,
    compose,
    degrade,
    find_fonts,
    photos,
)
from onshore.errors import ConfigError

__all__ = [
    "STRIDE",
    "LabelledFrame",
    "NetShape",
    "PlateNet",
    "Sample",
    "TrainSettings",
    "load_labelled_frames",
    "synthetic_sample",
    "targets",
    "to_onnx",
    "train",
]

STRIDE = 8
"""Pixels of the frame per cell of the heads' output."""


# --- network -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NetShape:
    """Channels at strides 4 (stem), 4, 8, 16, 32, and of the head."""

    stem: int = 16
    s4: int = 32
    s8: int = 64
    s16: int = 96
    s32: int = 128
    head: int = 32


class ConvBN(nn.Module):
    """A convolution without bias, a batch norm, and a ReLU unless ``relu`` is false."""

    def __init__(
        self,
        cin: int,
        cout: int,
        k: int = 1,
        stride: int = 1,
        groups: int = 1,
        dilation: int = 1,
        relu: bool = True,
    ) -> None:
        super().__init__()
        pad = 0 if k == stride else (k // 2) * dilation
        self.conv = nn.Conv2d(
            cin, cout, k, stride, pad, dilation=dilation, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(cout)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        return F.relu(y) if self.relu else y

    def folded(self) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """The convolution's weight and bias with the batch norm folded in."""
        bn = self.bn
        assert bn.running_var is not None and bn.running_mean is not None
        factor = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
        weight = self.conv.weight.detach() * factor[:, None, None, None]
        bias = bn.bias.detach() - bn.running_mean * factor
        return weight.numpy().astype(np.float32), bias.numpy().astype(np.float32)


class Block(nn.Module):
    """A depthwise 3 x 3 (strided or dilated) then a pointwise convolution; residual when the
    shape is kept."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.dw = ConvBN(cin, cin, 3, stride, groups=cin, dilation=dilation, relu=False)
        self.pw = ConvBN(cin, cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pw(self.dw(x))
        out: torch.Tensor = x + y if self.residual else y
        return out


class PlateNet(nn.Module):
    """The detector: a ``N x 3 x H x W`` image in 0-1 (H, W multiples of 32) to a heatmap
    ``N x 1 x H/8 x W/8`` (logits) and its boxes ``N x 4 x H/8 x W/8`` (dx, dy, log w, log h)."""

    def __init__(self, shape: NetShape = NetShape()) -> None:
        super().__init__()
        c = shape
        self.shape = shape
        self.stem = ConvBN(3, c.stem, 4, 4)
        self.s4 = nn.Sequential(Block(c.stem, c.s4))
        self.s8 = nn.Sequential(Block(c.s4, c.s8, 2), Block(c.s8, c.s8))
        self.s16 = nn.Sequential(
            Block(c.s8, c.s16, 2), Block(c.s16, c.s16), Block(c.s16, c.s16, 1, 2)
        )
        self.s32 = nn.Sequential(Block(c.s16, c.s32, 2), Block(c.s32, c.s32))
        self.lateral32 = ConvBN(c.s32, c.s16)
        self.lateral16 = ConvBN(c.s16, c.s8)
        self.head = Block(c.s8, c.head)
        self.heat = nn.Conv2d(c.head, 1, 1)
        self.box = nn.Conv2d(c.head, 4, 1)
        assert self.heat.bias is not None
        nn.init.constant_(self.heat.bias, -4.6)  # a prior of 1% plates, as CenterNet starts

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f8 = self.s8(self.s4(self.stem(x)))
        f16 = self.s16(f8)
        f32 = self.s32(f16)
        f16 = f16 + F.interpolate(self.lateral32(f32), scale_factor=2.0, mode="nearest")
        f8 = f8 + F.interpolate(self.lateral16(f16), scale_factor=2.0, mode="nearest")
        h = self.head(f8)
        return self.heat(h), self.box(h)


def to_onnx(net: PlateNet, metadata: dict[str, str] | None = None) -> bytes:
    """The network as an ONNX graph (opset 13) for onnxruntime.

    Input ``image``: a ``1 x 3 x H x W`` RGB ``uint8`` frame, H and W multiples of 32 (NumPy
    transposes a ``uint8`` frame to planes in 1 ms; onnxruntime's Transpose of the float frame
    took 5-20 ms of a 1280 x 736 frame on one core, as much as half the network). Outputs
    ``heat`` (``1 x 1 x H/8 x W/8``, plate-centre probabilities) and ``box`` (``1 x 4 x H/8 x
    W/8``: centre offset in cells, log width and height in cells). Batch norms are folded into
    the convolutions, and the frame's 1/255 scaling into the stem's weights (the stem has no
    padding, so this is exact).
    """
    import onnx
    import onnx.helper as oh
    import onnx.numpy_helper

    net = net.eval()
    nodes: list[Any] = [
        oh.make_node("Cast", ["image"], ["nchw"], to=onnx.TensorProto.FLOAT),
    ]
    weights: list[Any] = [onnx.numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "up2")]
    counter = iter(range(10_000))

    def conv(x: str, unit: ConvBN, scale: float = 1.0) -> str:
        weight, bias = unit.folded()
        c = unit.conv
        name = f"conv{next(counter)}"
        weights.extend(
            [
                onnx.numpy_helper.from_array(weight * scale, f"{name}.w"),
                onnx.numpy_helper.from_array(bias, f"{name}.b"),
            ]
        )
        k, pad, dil = c.kernel_size[0], int(c.padding[0]), c.dilation[0]
        nodes.append(
            oh.make_node(
                "Conv",
                [x, f"{name}.w", f"{name}.b"],
                [name],
                kernel_shape=[k, k],
                strides=list(c.stride),
                pads=[pad] * 4,
                dilations=[dil, dil],
                group=c.groups,
            )
        )
        if unit.relu:
            nodes.append(oh.make_node("Relu", [name], [f"{name}.r"]))
            return f"{name}.r"
        return name

    def block(x: str, unit: Block) -> str:
        y = conv(conv(x, unit.dw), unit.pw)
        if not unit.residual:
            return y
        out = f"add{next(counter)}"
        nodes.append(oh.make_node("Add", [x, y], [out]))
        return out

    def stage(x: str, units: nn.Sequential) -> str:
        for unit in units:
            assert isinstance(unit, Block)
            x = block(x, unit)
        return x

    def up_add(small: str, big: str) -> str:
        name = f"up{next(counter)}"
        nodes.append(
            oh.make_node(
                "Resize",
                [small, "", "up2"],
                [name],
                mode="nearest",
                coordinate_transformation_mode="asymmetric",
                nearest_mode="floor",
            )
        )
        nodes.append(oh.make_node("Add", [big, name], [f"{name}.sum"]))
        return f"{name}.sum"

    def plain(x: str, unit: nn.Conv2d, out: str) -> None:
        assert unit.bias is not None
        weights.extend(
            [
                onnx.numpy_helper.from_array(unit.weight.detach().numpy(), f"{out}.w"),
                onnx.numpy_helper.from_array(unit.bias.detach().numpy(), f"{out}.b"),
            ]
        )
        nodes.append(oh.make_node("Conv", [x, f"{out}.w", f"{out}.b"], [out], kernel_shape=[1, 1]))

    f8 = stage(stage(conv("nchw", net.stem, 1 / 255), net.s4), net.s8)
    f16 = stage(f8, net.s16)
    f32 = stage(f16, net.s32)
    f16 = up_add(conv(f32, net.lateral32), f16)
    f8 = up_add(conv(f16, net.lateral16), f8)
    h = block(f8, net.head)
    plain(h, net.heat, "heat_logit")
    nodes.append(oh.make_node("Sigmoid", ["heat_logit"], ["heat"]))
    plain(h, net.box, "box")
    graph = oh.make_graph(
        nodes,
        "onshore_plates",
        [oh.make_tensor_value_info("image", onnx.TensorProto.UINT8, [1, 3, "H", "W"])],
        [
            oh.make_tensor_value_info("heat", onnx.TensorProto.FLOAT, [1, 1, "h", "w"]),
            oh.make_tensor_value_info("box", onnx.TensorProto.FLOAT, [1, 4, "h", "w"]),
        ],
        weights,
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)], producer_name="onshore")
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


# --- targets and loss --------------------------------------------------------------------------


def targets(
    boxes: Sequence[Sequence[float]], height: int, width: int
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
    """What the heads should say for plates at ``boxes`` (x1, y1, x2, y2 in pixels) in a
    ``height x width`` image: the heatmap (``1 x h x w``, a Gaussian about each centre, 1 at
    its cell), the boxes (``4 x h x w``) and their weights (``1 x h x w``: the Gaussian where it
    is over 0.3, so that cells next to a centre also learn its box)."""
    h, w = height // STRIDE, width // STRIDE
    heat = np.zeros((1, h, w), np.float32)
    reg = np.zeros((4, h, w), np.float32)
    weight = np.zeros((1, h, w), np.float32)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    for x1, y1, x2, y2 in boxes:
        bw, bh = (x2 - x1) / STRIDE, (y2 - y1) / STRIDE
        if bw <= 0 or bh <= 0:
            continue
        cx, cy = (x1 + x2) / 2 / STRIDE, (y1 + y2) / 2 / STRIDE
        ix, iy = min(w - 1, max(0, int(cx))), min(h - 1, max(0, int(cy)))
        sx, sy = max(0.5, 0.15 * bw), max(0.5, 0.15 * bh)
        g = np.exp(-((xs - ix) ** 2) / (2 * sx * sx) - ((ys - iy) ** 2) / (2 * sy * sy))
        heat[0] = np.maximum(heat[0], g)
        heat[0, iy, ix] = 1.0
        near = (g > 0.3) & (g > weight[0])
        near[iy, ix] = True
        reg[0][near] = cx - (xs[near] + 0.5)
        reg[1][near] = cy - (ys[near] + 0.5)
        reg[2][near] = math.log(bw)
        reg[3][near] = math.log(bh)
        weight[0][near] = np.maximum(g[near], 0.5)
    return heat, reg, weight


def loss(
    heat_logit: torch.Tensor,
    box: torch.Tensor,
    heat: torch.Tensor,
    reg: torch.Tensor,
    weight: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, float]]:
    """CenterNet's focal loss on the heatmap plus L1 on offsets and log sizes, each over the
    number of plates; and the parts, for the log."""
    p = torch.sigmoid(heat_logit).clamp(1e-4, 1 - 1e-4)
    positive = heat.eq(1).float()
    plates = positive.sum().clamp(min=1.0)
    focal = (
        -(
            positive * (1 - p) ** 2 * torch.log(p)
            + (1 - positive) * (1 - heat) ** 4 * p**2 * torch.log(1 - p)
        ).sum()
        / plates
    )
    l1 = (box - reg).abs() * weight
    offset = l1[:, :2].sum() / weight.sum().clamp(min=1.0)
    size = l1[:, 2:].sum() / weight.sum().clamp(min=1.0)
    total = focal + offset + size
    return total, {"heat": focal.item(), "offset": offset.item(), "size": size.item()}


# --- samples -----------------------------------------------------------------------------------


@dataclass
class Sample:
    """A training image (RGB ``uint8``) and its plates' boxes (x1, y1, x2, y2)."""

    image: NDArray[np.uint8]
    boxes: list[tuple[float, float, float, float]]


def synthetic_sample(
    photo: Photo,
    rng: np.random.Generator,
    fonts: Fonts,
    size: int,
    widths: tuple[float, float] = (16.0, 260.0),
) -> Sample:
    """A ``size x size`` crop of ``photo`` at the scale a 1280 x 720 frame would show it, with
    0-3 plates of random regions, 0-3 text signs and 0-3 plate-like shapes without characters,
    then a camera's faults."""
    image = photo.image
    ph, pw = image.shape[:2]
    k = max(1280 / pw, 720 / ph) * rng.uniform(0.6, 1.6)
    side = size / k  # the crop's side in the photo's pixels
    if side >= min(ph, pw):
        k = size / (min(ph, pw) - 1)
        side = size / k
    x = rng.uniform(0, pw - side)
    y = rng.uniform(0, ph - side)
    crop = image[int(y) : int(y + side) + 1, int(x) : int(x + side) + 1]
    interpolation = cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR
    background = cv2.resize(crop, (size, size), interpolation=interpolation).astype(np.uint8)
    count = int(rng.choice(4, p=[0.1, 0.45, 0.3, 0.15]))
    regions: list[Region] = [REGIONS[int(i)] for i in rng.integers(0, len(REGIONS), count)]
    signs = int(rng.choice(4, p=[0.45, 0.3, 0.15, 0.1]))
    distractors = int(rng.choice(4, p=[0.3, 0.3, 0.25, 0.15]))
    scene = compose(background, rng, fonts, regions, signs, widths, distractors=distractors)
    return Sample(degrade(scene.image, rng), [p.box for p in scene.plates])


@dataclass(frozen=True)
class LabelledFrame:
    """A real frame and its plates' boxes (x1, y1, x2, y2, in its pixels); none: a negative."""

    path: Path
    plates: list[tuple[float, float, float, float]]


def load_labelled_frames(labels: Path) -> list[LabelledFrame]:
    """The frames a labels file lists (see ``scripts/train-plates``); raises ConfigError on a
    malformed file or an image that is not there."""
    try:
        spec = json.loads(labels.read_text())
        entries = spec["images"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot read plate labels from {labels}: {exc}") from exc
    frames = []
    for entry in entries:
        where = entry.get("file") or entry.get("source", {}).get("path")
        if not where:
            raise ConfigError(f"{labels}: image {entry.get('id', '?')} names no 'file'")
        path = Path(where) if Path(where).is_absolute() else labels.parent / where
        if not path.is_file():
            raise ConfigError(f"{labels}: {path} is not there")
        plates = [tuple(float(v) for v in box) for box in entry.get("plates", [])]
        if any(len(box) != 4 for box in plates):
            raise ConfigError(f"{labels}: a plate of {path} is not [x1, y1, x2, y2]")
        frames.append(LabelledFrame(path, [(b[0], b[1], b[2], b[3]) for b in plates]))
    return frames


def labelled_sample(
    frame: LabelledFrame, image: NDArray[np.uint8], rng: np.random.Generator, size: int
) -> Sample:
    """A ``size x size`` crop of a labelled frame, at a scale between 0.6 and 1.6 times, about
    one of its plates (or anywhere), its boxes moved with it; plates less than half inside are
    dropped."""
    k = float(rng.uniform(0.6, 1.6))
    ih, iw = image.shape[:2]
    if frame.plates and rng.random() < 0.8:
        x1, y1, x2, y2 = frame.plates[int(rng.integers(0, len(frame.plates)))]
        cx, cy = (
            (x1 + x2) / 2 + rng.uniform(-0.4, 0.4) * size / k,
            (y1 + y2) / 2 + rng.uniform(-0.4, 0.4) * size / k,
        )
    else:
        cx, cy = rng.uniform(0, iw), rng.uniform(0, ih)
    matrix = np.array([[k, 0, size / 2 - k * cx], [0, k, size / 2 - k * cy]], np.float32)
    crop = cv2.warpAffine(
        image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
    ).astype(np.uint8)
    boxes = []
    for x1, y1, x2, y2 in frame.plates:
        bx1, by1 = x1 * k + matrix[0, 2], y1 * k + matrix[1, 2]
        bx2, by2 = x2 * k + matrix[0, 2], y2 * k + matrix[1, 2]
        cx1, cy1, cx2, cy2 = max(bx1, 0), max(by1, 0), min(bx2, size), min(by2, size)
        if cx2 > cx1 and cy2 > cy1 and (cx2 - cx1) * (cy2 - cy1) >= 0.5 * (bx2 - bx1) * (by2 - by1):
            boxes.append((float(cx1), float(cy1), float(cx2), float(cy2)))
    return Sample(degrade(crop, rng), boxes)


# --- training ----------------------------------------------------------------------------------


@dataclass
class TrainSettings:
    """One training run."""

    out: Path
    """The ONNX file to write."""
    steps: int = 4000
    """Optimiser steps."""
    seed: int = 0
    """Seeds the network's initial weights and every sample (step n draws from (seed, n))."""
    batch: int = 16
    """Images a step."""
    size: int = 320
    """Side of each training image, in pixels (a multiple of 32)."""
    lr: float = 3e-3
    """Peak learning rate (AdamW; warm-up over the first 3%, then cosine to 2% of it)."""
    shape: NetShape = field(default_factory=NetShape)
    """The network's channels."""
    frames: Path | None = None
    """A labels file of real frames to learn from besides the synthetic scenes."""
    frames_share: float = 0.5
    """Share of each batch drawn from ``frames`` when given."""
    checkpoint: Path | None = None
    """Where to keep the checkpoint to resume from (kept after the last step, so that the same
    command exports again, and the weights can be trained on); when None, a file named after
    the run's settings under ``$XDG_CACHE_HOME/onshore/train-plates`` (``~/.cache``)."""
    checkpoint_every: int = 250
    """Steps between checkpoints."""
    log_every: int = 50
    """Steps between progress lines."""

    def __post_init__(self) -> None:
        if self.size % 32:
            raise ConfigError(f"size must be a multiple of 32, not {self.size}")
        if self.steps < 1 or self.batch < 1:
            raise ConfigError("steps and batch must be 1 or more")
        if not 0.0 <= self.frames_share <= 1.0:
            raise ConfigError(f"frames_share must be between 0 and 1, not {self.frames_share}")

    def identity(self) -> dict[str, Any]:
        """What makes two runs the same run (their checkpoints interchangeable)."""
        return {
            "steps": self.steps, "seed": self.seed, "batch": self.batch, "size": self.size,
            "lr": self.lr, "shape": asdict(self.shape),
            "frames": str(self.frames) if self.frames else None, "frames_share": self.frames_share,
        }  # fmt: skip

    def checkpoint_path(self) -> Path:
        """:attr:`checkpoint`, or the default for these settings."""
        if self.checkpoint is not None:
            return self.checkpoint
        key = hashlib.sha1(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:12]
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        return cache / "onshore" / "train-plates" / f"seed{self.seed}-{self.steps}steps-{key}.pt"


def _lr(settings: TrainSettings, step: int) -> float:
    warm = max(1, settings.steps * 3 // 100)
    if step < warm:
        return settings.lr * (step + 1) / warm
    t = (step - warm) / max(1, settings.steps - warm)
    return settings.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))


def _batches(
    settings: TrainSettings, train_photos: Sequence[Photo], fonts: Fonts, start: int
) -> Iterator[tuple[int, list[Sample]]]:
    frames = load_labelled_frames(settings.frames) if settings.frames else []
    images: dict[Path, NDArray[np.uint8]] = {}
    for step in range(start, settings.steps):
        rng = np.random.default_rng([settings.seed, step])
        batch = []
        for _ in range(settings.batch):
            if frames and rng.random() < settings.frames_share:
                frame = frames[int(rng.integers(0, len(frames)))]
                if frame.path not in images:
                    bgr = cv2.imread(str(frame.path), cv2.IMREAD_COLOR)
                    if bgr is None:
                        raise ConfigError(f"{frame.path} is not an image OpenCV can read")
                    images[frame.path] = np.ascontiguousarray(bgr[:, :, ::-1])
                batch.append(labelled_sample(frame, images[frame.path], rng, settings.size))
            else:
                photo = train_photos[int(rng.integers(0, len(train_photos)))]
                batch.append(synthetic_sample(photo, rng, fonts, settings.size))
        yield step, batch


def _tensors(batch: Sequence[Sample], size: int) -> tuple[torch.Tensor, ...]:
    images = torch.from_numpy(np.stack([s.image for s in batch])).permute(0, 3, 1, 2).float() / 255
    parts = [targets(s.boxes, size, size) for s in batch]
    heat, reg, weight = (torch.from_numpy(np.stack([p[i] for p in parts])) for i in range(3))
    return images, heat, reg, weight


def train(settings: TrainSettings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train from the settings' seed (or its checkpoint), write the ONNX file, and return a
    summary (steps, seconds, final losses, the file's size)."""
    torch.set_num_threads(1)
    torch.manual_seed(settings.seed)
    fonts = find_fonts()
    train_photos = photos("train")
    net = PlateNet(settings.shape)
    optimiser = torch.optim.AdamW(net.parameters(), lr=settings.lr, weight_decay=1e-4)
    checkpoint = settings.checkpoint_path()
    start = 0
    if checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=False)
        if state["settings"] != settings.identity():
            raise ConfigError(
                f"{checkpoint} is of another run ({state['settings']})",
                hint="delete it, or give the same settings",
            )
        net.load_state_dict(state["net"])
        optimiser.load_state_dict(state["optimiser"])
        start = int(state["step"])
        log(f"resumed from {checkpoint} at step {start}")
    log(
        f"training {sum(p.numel() for p in net.parameters()):,} weights on "
        f"{len(train_photos)} photos, {settings.steps} steps of {settings.batch} x "
        f"{settings.size}px, seed {settings.seed}"
    )
    began = time.perf_counter()
    recent: dict[str, float] = {}
    net.train()
    for step, batch in _batches(settings, train_photos, fonts, start):
        images, heat, reg, weight = _tensors(batch, settings.size)
        for group in optimiser.param_groups:
            group["lr"] = _lr(settings, step)
        heat_logit, box = net(images)
        total, parts = loss(heat_logit, box, heat, reg, weight)
        optimiser.zero_grad()
        total.backward()  # type: ignore[no-untyped-call]
        nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        optimiser.step()
        for key, value in parts.items():
            recent[key] = 0.9 * recent.get(key, value) + 0.1 * value
        done = step + 1
        if done % settings.log_every == 0 or done == settings.steps:
            elapsed = time.perf_counter() - began
            rate = elapsed / (done - start)
            log(
                f"step {done}/{settings.steps}  "
                + "  ".join(f"{k} {v:.3f}" for k, v in recent.items())
                + f"  lr {_lr(settings, step):.2g}  {rate:.2f} s/step, "
                f"{(settings.steps - done) * rate / 60:.1f} min left"
            )
        if done % settings.checkpoint_every == 0 or done == settings.steps:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            state = {"net": net.state_dict(), "optimiser": optimiser.state_dict(), "step": done,
                     "settings": settings.identity()}  # fmt: skip
            torch.save(state, checkpoint.with_suffix(".tmp"))
            checkpoint.with_suffix(".tmp").replace(checkpoint)
    seconds = time.perf_counter() - began
    metadata = {
        "onshore.stride": str(STRIDE),
        "onshore.shape": json.dumps(asdict(settings.shape)),
        "onshore.training": json.dumps(
            {
                "steps": settings.steps,
                "seed": settings.seed,
                "batch": settings.batch,
                "size": settings.size,
                "frames": bool(settings.frames),
            }
        ),
    }
    data = to_onnx(net, metadata)
    settings.out.parent.mkdir(parents=True, exist_ok=True)
    settings.out.write_bytes(data)
    log(f"wrote {settings.out} ({len(data) / 1e6:.2f} MB) after {seconds / 60:.1f} min")
    return {"steps": settings.steps, "seconds": seconds, "losses": recent, "bytes": len(data)}
