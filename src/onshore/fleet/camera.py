"""Front-camera frames for simulated fleets: what the camera of a fleet vehicle would see.

SUMO moves vehicles but draws nothing, so a camera-equipped vehicle's frames are drawn here from
the clip itself, through a pinhole camera at the windscreen: road, lane markings, pavements and
buildings in perspective, then every tracked object ahead at its place and size, far to near.
Vehicles carry licence plates in the region's style (blue Chinese plates, white European and
American ones) with a text drawn from their track id; people (tracked pedestrians and cyclists,
and passers-by standing on the pavements) wear real faces from scikit-image's bundled copy of
the Labeled Faces in the Wild subset. So the face and plate detectors of de-identification meet
real faces and plate-like text at the sizes distance gives them, and what they must find is
known: each frame's drawn faces and plates are returned with it.

Only the scene is synthetic; the geometry is the clip's: the objects are where the vehicle's
tracker put them, and the road scrolls with the distance the ego covered.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Any, Final, Literal

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from onshore.clips.camera import encode_jpeg, frames_table
from onshore.clips.schema import Clip
from onshore.errors import ConfigError

__all__ = ["CameraSettings", "DrawnFrame", "PlateStyle", "render_frames"]

PlateStyle = Literal["cn", "eu", "us"]

_PLATES: Final[dict[str, tuple[float, float, tuple[int, ...], tuple[int, ...]]]] = {
    # width m, height m, background RGB, lettering RGB
    "cn": (0.44, 0.14, (20, 60, 200), (245, 245, 245)),
    "eu": (0.52, 0.11, (240, 240, 240), (15, 15, 15)),
    "us": (0.305, 0.152, (238, 238, 230), (25, 35, 120)),
}
_SIZES: Final[dict[str, tuple[float, float]]] = {
    # width and height (m) of what the camera sees of each object class
    "car": (1.8, 1.45),
    "bus": (2.55, 3.1),
    "truck": (2.5, 3.4),
    "motorcycle": (0.8, 1.45),
    "bicycle": (0.6, 1.75),
    "pedestrian": (0.5, 1.75),
}
_PEOPLE: Final = ("pedestrian", "bicycle", "motorcycle")
"""Classes whose rider or walker shows a face."""
_PALETTE: Final = np.array(
    [
        (170, 30, 35),
        (35, 60, 140),
        (225, 225, 225),
        (40, 40, 45),
        (120, 125, 130),
        (190, 150, 40),
        (30, 110, 60),
        (200, 90, 30),
    ],
    dtype=np.uint8,
)
_HEAD_M: Final = 0.24
_LANE_M: Final = 3.5
_ROAD_HALF_M: Final = 5.25
_KERB_M: Final = 9.0
_MIN_X: Final = 1.5
"""Objects nearer than this (m ahead of the lens) are out of the camera's view."""


@dataclass(frozen=True, slots=True)
class CameraSettings:
    """The simulated front camera."""

    width: int = 640
    height: int = 360
    focal_px: float = 520.0
    """Focal length in pixels: 520 at 640 px wide is a 63-degree horizontal field of view."""
    mount_height_m: float = 1.4
    rate_hz: float = 0.5
    """Frames per second: event cameras upload a few stills per clip, not video."""
    passers_by: int = 3
    """At most this many people standing on the pavements along each clip."""
    jpeg_quality: int = 85

    def __post_init__(self) -> None:
        if self.width < 64 or self.height < 64:
            raise ConfigError(
                f"camera frames must be at least 64x64, not {self.width}x{self.height}"
            )
        if not 0.0 < self.rate_hz <= 10.0:
            raise ConfigError(f"camera rate must be in (0, 10] Hz, not {self.rate_hz}")
        if self.focal_px <= 0:
            raise ConfigError(f"focal length must be positive, not {self.focal_px}")


@dataclass(frozen=True, slots=True)
class DrawnFrame:
    """A drawn frame and where its faces and plates are (pixel boxes x1, y1, x2, y2)."""

    time_us: int
    pixels: NDArray[np.uint8]
    faces: list[tuple[int, int, int, int]] = field(default_factory=list)
    plates: list[tuple[int, int, int, int]] = field(default_factory=list)


def render_frames(
    clip: Clip, style: PlateStyle, settings: CameraSettings = CameraSettings()
) -> tuple[pa.Table, list[DrawnFrame]]:
    """The front camera's frames of ``clip`` as a frames table (JPEG), and the drawn frames."""
    table = clip.table
    step_s = _median_step(table)
    every = max(1, round(1.0 / (settings.rate_hz * step_s)))
    rows = np.arange(0, table.num_rows, every)
    times = pc.cast(table["time"], pa.int64()).to_numpy()
    speed = table["speed"].to_numpy().astype(np.float64)
    travelled = np.concatenate(([0.0], np.cumsum(speed[:-1] * step_s)))
    seed = int.from_bytes(hashlib.sha256(clip.meta.clip_id.encode()).digest()[:8], "little")
    scene = _Scene(settings, style, np.random.default_rng(seed), float(travelled[-1]))
    objects = table["objects"].to_pylist()
    drawn = [
        replace(
            scene.draw((times[i] - times[0]) / 1e6, float(travelled[i]), objects[i] or []),
            time_us=int(times[i]),
        )
        for i in rows
    ]
    frames = frames_table(
        ["front"] * len(drawn),
        [f.time_us for f in drawn],
        ["jpeg"] * len(drawn),
        [encode_jpeg(f.pixels, settings.jpeg_quality) for f in drawn],
    )
    return frames, drawn


def _median_step(table: pa.Table) -> float:
    t = pc.cast(table["time"], pa.int64()).to_numpy()
    return float(np.median(np.diff(t))) / 1e6 if len(t) > 1 else 0.1


@cache
def _faces() -> NDArray[np.uint8]:
    """The 200 faces (25x25, grey) of scikit-image's LFW subset, as uint8."""
    from skimage.data import lfw_subset

    faces = lfw_subset()  # type: ignore[no-untyped-call]
    return np.asarray(np.clip(faces * 255.0, 0, 255), dtype=np.uint8)


class _Scene:
    """One clip's street: its background, its passers-by and the camera's projection."""

    def __init__(
        self, settings: CameraSettings, style: PlateStyle, rng: np.random.Generator, length: float
    ) -> None:
        self.s = settings
        self.style = style
        self.cx = settings.width / 2
        self.horizon = settings.height * 0.42
        self.background = self._background(rng)
        count = int(rng.integers(0, settings.passers_by + 1))
        # Passers-by wait at the kerb or cross the road ahead; the ego drives past them.
        self.people = []
        for _ in range(count):
            side = float(rng.choice([-1.0, 1.0]))
            crossing = bool(rng.random() < 0.5)
            self.people.append(
                (
                    float(rng.uniform(6.0, length + 20.0)),
                    side * float(rng.uniform(_ROAD_HALF_M + 0.3, _ROAD_HALF_M + 2.0)),
                    -side * 1.3 if crossing else 0.0,
                    int(rng.integers(0, 200)),
                )
            )

    def u(self, x: float, y: float) -> float:
        return self.cx - self.s.focal_px * y / x

    def v(self, x: float, z: float) -> float:
        return self.horizon + self.s.focal_px * (self.s.mount_height_m - z) / x

    def _background(self, rng: np.random.Generator) -> NDArray[np.uint8]:
        w, h, hz = self.s.width, self.s.height, int(self.horizon)
        image = np.empty((h, w, 3), np.uint8)
        shade = np.linspace(1.0, 0.75, hz)[:, None]
        image[:hz] = (np.array([150, 185, 225]) * shade[:, :, None]).astype(np.uint8)
        image[hz:] = (95, 100, 95)
        x = np.linspace(-w, 2 * w, 40)
        for left in x:  # buildings along the horizon
            top = hz - int(rng.uniform(0.05, 0.35) * h)
            grey = int(rng.integers(110, 190))
            cv2.rectangle(image, (int(left), top), (int(left + w / 12), hz), (grey,) * 3, -1)
        far = 200.0
        for side in (-1.0, 1.0):  # pavement, then road
            pavement = [
                (self.u(_MIN_X, side * _ROAD_HALF_M), self.v(_MIN_X, 0)),
                (self.u(far, side * _ROAD_HALF_M), self.v(far, 0)),
                (self.u(far, side * _KERB_M * 3), self.v(far, 0)),
                (self.u(_MIN_X, side * _KERB_M * 3), self.v(_MIN_X, 0)),
            ]
            cv2.fillPoly(image, [np.array(pavement, np.int32)], (150, 148, 140))
        road = [
            (self.u(_MIN_X, _ROAD_HALF_M), self.v(_MIN_X, 0)),
            (self.u(far, _ROAD_HALF_M), self.v(far, 0)),
            (self.u(far, -_ROAD_HALF_M), self.v(far, 0)),
            (self.u(_MIN_X, -_ROAD_HALF_M), self.v(_MIN_X, 0)),
        ]
        cv2.fillPoly(image, [np.array(road, np.int32)], (70, 72, 75))
        return image

    def draw(self, seconds: float, travelled: float, objects: list[dict[str, Any]]) -> DrawnFrame:
        """The frame ``seconds`` into the clip, ``travelled`` metres along it."""
        frame = DrawnFrame(0, self.background.copy())
        self._markings(frame.pixels, travelled)
        things = [
            (float(o["x"]), float(o["y"]), str(o["class"]), int(o["track_id"])) for o in objects
        ]
        for x, y, vy, face in self.people:
            walked = float(np.clip(y + vy * seconds, -_ROAD_HALF_M - 2.0, _ROAD_HALF_M + 2.0))
            things.append((x - travelled, walked, "standing", face))
        for x, y, cls, ident in sorted(things, reverse=True):
            if x < _MIN_X + 1.0 or abs(y) > x * 1.2:
                continue
            if cls in ("car", "bus", "truck"):
                self._vehicle(frame, x, y, cls, ident)
            else:
                self._person(frame, x, y, cls, ident)
        return frame

    def _markings(self, image: NDArray[np.uint8], travelled: float) -> None:
        for lane in (-_LANE_M / 2, _LANE_M / 2):
            start = -(travelled % 6.0)
            for d in np.arange(start, 80.0, 6.0):
                near, far = max(d, _MIN_X), d + 3.0
                if far <= _MIN_X:
                    continue
                a = (int(self.u(near, lane)), int(self.v(near, 0)))
                b = (int(self.u(far, lane)), int(self.v(far, 0)))
                cv2.line(image, a, b, (230, 230, 220), max(1, int(self.s.focal_px * 0.12 / near)))

    def _box(self, x: float, y: float, width: float, z0: float, z1: float) -> tuple[int, ...]:
        return (
            round(self.u(x, y + width / 2)),
            round(self.v(x, z1)),
            round(self.u(x, y - width / 2)),
            round(self.v(x, z0)),
        )

    def _vehicle(self, frame: DrawnFrame, x: float, y: float, cls: str, ident: int) -> None:
        width, height = _SIZES[cls]
        colour = tuple(int(c) for c in _PALETTE[ident % len(_PALETTE)])
        image = frame.pixels
        x1, y1, x2, y2 = self._box(x, y, width, 0.25, height)
        cv2.rectangle(image, (x1, y1), (x2, y2), colour, -1)
        wx1, wy1, wx2, wy2 = self._box(x, y, width * 0.8, height * 0.6, height * 0.92)
        cv2.rectangle(image, (wx1, wy1), (wx2, wy2), (35, 40, 50), -1)
        for side in (-1, 1):
            lx1, ly1, lx2, ly2 = self._box(x, y + side * width * 0.4, width * 0.14, 0.7, 0.85)
            cv2.rectangle(image, (lx1, ly1), (lx2, ly2), (200, 20, 20), -1)
        tx1, ty1, tx2, ty2 = self._box(x, y, width * 0.9, 0.0, 0.25)
        cv2.rectangle(image, (tx1, ty1), (tx2, ty2), (20, 20, 20), -1)
        plate_w, plate_h, _, _ = _PLATES[self.style]
        px1, py1, px2, py2 = self._box(x, y, plate_w, 0.38, 0.38 + plate_h)
        if px2 - px1 < 8:
            return
        plate = _plate(self.style, ident, px2 - px1, max(3, py2 - py1))
        if _paste(image, plate, px1, py1) and px2 - px1 >= 20:
            frame.plates.append((px1, py1, px2, py2))

    def _person(self, frame: DrawnFrame, x: float, y: float, cls: str, ident: int) -> None:
        image = frame.pixels
        width, height = _SIZES.get(cls, _SIZES["pedestrian"])
        colour = tuple(int(c) for c in _PALETTE[(ident * 5 + 3) % len(_PALETTE)])
        if cls in ("bicycle", "motorcycle"):
            wx1, wy1, wx2, wy2 = self._box(x, y, width, 0.0, 0.9)
            cv2.rectangle(image, (wx1, wy1), (wx2, wy2), (25, 25, 25), -1)
        top = 1.75 if cls == "motorcycle" else height
        bx1, by1, bx2, by2 = self._box(x, y, 0.45, 0.0 if cls == "standing" else 0.8, top - _HEAD_M)
        cv2.rectangle(image, (bx1, by1), (bx2, by2), colour, -1)
        hx1, hy1, hx2, hy2 = self._box(x, y, _HEAD_M * 0.85, top - _HEAD_M, top)
        size = hx2 - hx1
        if size < 4:
            return
        face = cv2.resize(
            _faces()[ident % 200], (size, max(4, hy2 - hy1)), interpolation=cv2.INTER_CUBIC
        )
        tinted = np.clip(face[:, :, None] * np.array([1.0, 0.86, 0.74]), 0, 255).astype(np.uint8)
        if _paste(image, tinted, hx1, hy1) and size >= 20:
            frame.faces.append((hx1, hy1, hx2, hy1 + tinted.shape[0]))


def _paste(image: NDArray[np.uint8], patch: NDArray[np.uint8], x: int, y: int) -> bool:
    """Paste ``patch`` with its top-left at (x, y), clipped to the image; True if wholly in."""
    h, w = patch.shape[:2]
    ih, iw = image.shape[:2]
    x1, y1, x2, y2 = max(x, 0), max(y, 0), min(x + w, iw), min(y + h, ih)
    if x1 >= x2 or y1 >= y2:
        return False
    image[y1:y2, x1:x2] = patch[y1 - y : y2 - y, x1 - x : x2 - x]
    return (x1, y1, x2, y2) == (x, y, x + w, y + h)


@cache
def _plate(style: str, ident: int, width: int, height: int) -> NDArray[np.uint8]:
    """A plate of ``width`` x ``height`` pixels in the region's style, its text from ``ident``."""
    _, _, background, ink = _PLATES[style]
    rng = np.random.default_rng(ident)
    letters = "ABCDEFGHJKLMNPRSTUVWXYZ"
    digits = "0123456789"

    def pick(alphabet: str, n: int) -> str:
        return "".join(alphabet[int(i)] for i in rng.integers(0, len(alphabet), n))

    if style == "cn":
        text = f"{pick(letters, 1)} {pick(letters + digits, 5)}"
    elif style == "eu":
        text = f"{pick(letters, 1)} {pick(letters, 2)} {pick(digits, 4)}"
    else:
        text = f"{pick(digits, 1)}{pick(letters, 3)}{pick(digits, 3)}"
    plate = np.empty((height, width, 3), np.uint8)
    plate[:] = background
    thick = max(1, height // 10)
    cv2.rectangle(plate, (0, 0), (width - 1, height - 1), ink, max(1, width // 80))
    font = cv2.FONT_HERSHEY_SIMPLEX
    scale = cv2.getFontScaleFromHeight(font, max(1, int(height * 0.62)), thick)
    text_w, _ = cv2.getTextSize(text, font, scale, thick)[0]
    scale *= min(1.0, width * 0.9 / max(text_w, 1))
    (text_w, text_h), _ = cv2.getTextSize(text, font, scale, thick)
    origin = ((width - text_w) // 2, (height + text_h) // 2)
    cv2.putText(plate, text, origin, font, scale, ink, thick, cv2.LINE_AA)
    plate.setflags(write=False)
    return plate
