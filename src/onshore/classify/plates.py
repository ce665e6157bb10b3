"""The licence-plate detector onshore trains itself: plates of China (blue, green, yellow), the
EU and the US, from about 20 to 250 pixels wide, in one pass over the frame.

Its weights (``weights/plates.onnx``, 0.36 MB) ship inside the package and are run by
onnxruntime; ``scripts/train-plates`` made them, from plates rendered onto photos of Debian and
PyPI packages (:mod:`~onshore.classify.plate_scenes`), and a carmaker can retrain them on its
own labelled frames. The network (:class:`~onshore.classify.plate_training.PlateNet`) gives
at every 8 x 8 cell the probability that a plate's centre is there, the centre's offset and the
plate's size; a box is read at each local maximum above the threshold.

Frames are ``H x W x 3`` RGB ``uint8`` of any size: they are padded (not resized) to multiples
of 32, so boxes are in the frame's own pixels.
"""

from __future__ import annotations

import atexit
import gc
import importlib.resources
from functools import cache

import cv2
import numpy as np
from numpy.typing import NDArray

from onshore.classify.detectors import Box, _nms, _session
from onshore.errors import ConfigError

__all__ = ["PlateDetector", "plate_detector", "weights"]

STRIDE = 8
PAD_TO = 32
PAD_VALUE = 114
"""Grey the padding is filled with (the network saw photos, never black bars, around plates)."""


def weights() -> bytes:
    """The shipped ONNX model; raises ConfigError if the package was installed without it."""
    resource = importlib.resources.files("onshore.classify").joinpath("weights/plates.onnx")
    try:
        return resource.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(
            "the plate detector's weights (onshore/classify/weights/plates.onnx) are missing",
            hint="reinstall onshore, or train them with scripts/train-plates",
        ) from exc


class PlateDetector:
    """One onnxruntime session of the plate model, with ``threads`` threads (0: all cores)."""

    def __init__(self, threads: int = 0, model: bytes | None = None) -> None:
        self._session = _session(model if model is not None else weights(), threads)

    def maps(self, rgb: NDArray[np.uint8]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """The heatmap (``h x w``) and boxes (``4 x h x w``) of the frame, padded to 32."""
        height, width = rgb.shape[:2]
        padded_h, padded_w = -(-height // PAD_TO) * PAD_TO, -(-width // PAD_TO) * PAD_TO
        image: NDArray[np.uint8] = rgb
        if (padded_h, padded_w) != (height, width):
            image = cv2.copyMakeBorder(
                rgb,
                0,
                padded_h - height,
                0,
                padded_w - width,
                cv2.BORDER_CONSTANT,
                value=(PAD_VALUE,) * 3,
            ).astype(np.uint8, copy=False)
        planes = np.ascontiguousarray(image.transpose(2, 0, 1))[None]
        heat, box = self._session.run(["heat", "box"], {"image": planes})
        return heat[0, 0], box[0]

    def detect(self, rgb: NDArray[np.uint8], threshold: float) -> list[Box]:
        """Plates in ``rgb`` (``H x W x 3``, RGB) scoring above ``threshold``, best first."""
        height, width = rgb.shape[:2]
        if height == 0 or width == 0:
            return []
        heat, box = self.maps(rgb)
        # a cell is a plate's centre where it scores above the threshold and above its neighbours
        peaks = (heat > threshold) & (heat >= cv2.dilate(heat, np.ones((3, 3), np.uint8)))
        ys, xs = np.nonzero(peaks)
        if len(ys) == 0:
            return []
        dx, dy, log_w, log_h = (box[i, ys, xs] for i in range(4))
        cx = (xs + 0.5 + dx) * STRIDE
        cy = (ys + 0.5 + dy) * STRIDE
        w = np.exp(np.clip(log_w, -3, 6)) * STRIDE
        h = np.exp(np.clip(log_h, -3, 6)) * STRIDE
        limit = np.array([width, height, width, height], np.float32)
        boxes = np.clip(
            np.column_stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]), 0, limit
        ).astype(np.float32)
        scores = heat[ys, xs].astype(np.float32)
        found = []
        for i in _nms(boxes, scores, 0.4):
            x1, y1, x2, y2 = (float(v) for v in boxes[i])
            found.append(Box("plate", x1, y1, x2, y2, float(scores[i])))
        return found


@cache
def plate_detector(threads: int = 0) -> PlateDetector:
    """The process's detector for ``threads`` threads, loaded on first use."""
    return PlateDetector(threads)


@atexit.register
def _release() -> None:
    """Drop the sessions while the interpreter still runs (see ``detectors._release``: a
    session left to the process's static teardown once aborted a finished run)."""
    if plate_detector.cache_info().currsize:
        plate_detector.cache_clear()
        gc.collect()
