"""Synthetic scenes for the plate detector: plates of each region, rendered with real fonts, laid
in perspective onto real photos that Debian and PyPI packages ship.

Nothing here is downloaded: the fonts and photos are files of packages, found where those
packages install them, and the scenes are made from them and a seed, so the same seed gives the
same scene on any machine with the same packages.

Plates (:func:`render_plate`), each in its region's layout and proportions:

- ``cn-blue``: white on blue, 440 x 140 mm, seven characters ("沪A·12345"), a white rim.
- ``cn-green``: new-energy plates, black on a white-to-green gradient, 480 x 140 mm, eight
  characters ("粤B·D12345").
- ``cn-yellow``: black on yellow, 440 x 140 mm, or 440 x 220 mm in two rows (lorries, buses).
- ``eu``: black on white (yellow for British rear and Dutch plates), 520 x 110 mm, the blue EU
  band with its stars and country letters, in the formats of Germany ("B-MW 1234"), France
  ("AB-123-CD"), Britain ("AB12 CDE"), Italy, Spain, the Netherlands, Poland and others; some
  two-row plates (280 x 200 mm).
- ``us``: 12 x 6 inch, a state's name above and a slogan below, coloured characters on white,
  tinted or drawn backgrounds ("7ABC123", "ABC 1234"), stickers and bolt holes.

Fonts (:func:`find_fonts`): DejaVu (``fonts-dejavu-core``, ``fonts-dejavu-extra``), Liberation
(``fonts-liberation``, ``fonts-liberation2``, optional) and WenQuanYi Micro Hei
(``fonts-wqy-microhei``) for the Chinese province characters. Their licences (Bitstream Vera,
OFL, Apache-2.0) allow images rendered with them to be shipped.

Photos (:func:`photos`): the photos and figures of Debian's ``opencv-doc`` (its sample data and
the pictures of its HTML documentation), frames of its ``vtest.avi`` street video, and
scikit-image's bundled photos. They are split by picture, never by file: ``test`` is a fixed
list of street and text scenes (:data:`TEST_PHOTOS`), and a photo whose thumbnail matches one of
them (the same picture under another name or size) is left out of ``train``. Pictures with real
licence plates (:data:`REAL_PLATE_PHOTOS`) and the images that the tests' labels
(``tests/data/frames_labels.json``) use are in neither: they are the real-plate test.

Scenes (:func:`compose`): plates, sometimes on a drawn car body, turned in 3D (yaw to +-60
degrees, pitch, roll), scaled, blurred, shaded, partly hidden, with text signs and shop lettering
(:func:`render_sign`) and blank or patterned plate-like shapes and blurred lights
(:func:`render_distractor`) as negatives: plates, not text or bright shapes, are to be found.
A plate's label is the bounding box of its four corners in the image.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont

from onshore.errors import ConfigError

__all__ = [
    "REAL_PLATE_PHOTOS",
    "REGIONS",
    "TEST_PHOTOS",
    "Fonts",
    "Photo",
    "Plate",
    "Region",
    "Scene",
    "compose",
    "find_fonts",
    "frame_from",
    "photos",
    "render_distractor",
    "render_plate",
    "render_sign",
]

Region = Literal["cn-blue", "cn-green", "cn-yellow", "eu", "us"]
REGIONS: tuple[Region, ...] = ("cn-blue", "cn-green", "cn-yellow", "eu", "us")

RGB = NDArray[np.uint8]
Mask = NDArray[np.float32]
Colour = Sequence[float] | NDArray[np.floating[Any]]
"""An RGB colour, each channel 0-1."""

OPENCV_DOC = Path("/usr/share/doc/opencv-doc")
FONT_DIRS = (Path("/usr/share/fonts"), Path("/usr/local/share/fonts"))

TEST_PHOTOS = frozenset(
    {
        # street and road scenes
        "detect_test2.jpg",
        "VideoDemo_RGB_PETS2006.jpg",
        "person_multi_det.jpg",
        "opticalfb.jpg",
        "building.jpg",
        "feature_building.jpg",
        "home.jpg",
        "Background_Subtraction_Tutorial_frame.jpg",
        # text in the street: what must not be taken for a plate
        "scenetext01.jpg",
        "scenetext03.jpg",
        "scenetext06.jpg",
        "scenetext_segmented_word01.jpg",
        "newspaper.jpg",
        # other photos
        "fruits.jpg",
        "butterfly.jpg",
        "baboon.jpg",
        "plant.jpg",
        "space_shuttle.jpg",
        "exposures.jpg",
        "water_marker.jpg",
    }
)
"""Names of ``opencv-doc`` pictures held out of training: the synthetic test's backgrounds."""

REAL_PLATE_PHOTOS = frozenset(
    {
        "licenseplate_motion.jpg",
        "bus_det.jpg",
        "opencv_bus_res.jpg",
        "pexels_double_decker_bus.jpg",
        "opticalflow_lk.jpg",
        "yolo.jpg",
        "detections.png",
    }
)
"""``opencv-doc`` pictures with real plates (or the same scenes with boxes drawn on): never a
background, since a real plate there would be taught as "not a plate"."""

LABELLED = frozenset({"messi5.jpg", "000.jpg", "001.jpg", "002.jpg"})
"""Other ``opencv-doc`` pictures that ``tests/data/frames_labels.json`` uses as test images."""

SKIMAGE_PHOTOS = (
    "brick.png",
    "camera.png",
    "chelsea.png",
    "coffee.png",
    "grass.png",
    "gravel.png",
    "motorcycle_left.png",
    "rocket.jpg",
    "page.png",
    "text.png",
    "hubble_deep_field.jpg",
)
"""scikit-image's bundled photos used as training backgrounds (not its astronaut, a test image)."""


# --- fonts -------------------------------------------------------------------------------------

LATIN_FONTS = (
    "DejaVuSansCondensed-Bold.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansCondensed.ttf",
    "LiberationSansNarrow-Bold.ttf",
    "LiberationSans-Bold.ttf",
    "LiberationMono-Bold.ttf",
)
"""Fonts for plate characters, the first of them required (``fonts-dejavu-extra``)."""
TEXT_FONTS = (
    "DejaVuSans.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "LiberationSerif-Italic.ttf",
    "LiberationSans-Regular.ttf",
    "LiberationSerif-Bold.ttf",
)
"""Fonts for state names, slogans and signs."""
CJK_FONTS = (
    "wqy-microhei.ttc",
    "wqy-zenhei.ttc",
    "NotoSansCJK-Bold.ttc",
    "NotoSansCJK-Regular.ttc",
)
"""Fonts with the Chinese province characters, one of them required (``fonts-wqy-microhei``)."""

GLYPH_PX = 96
"""Height at which each glyph is rasterised once, before it is scaled into a plate's cell."""


@dataclass
class Fonts:
    """The font files found, and each glyph rasterised once (an ink mask cropped to its ink)."""

    plate: list[Path]
    text: list[Path]
    cjk: Path
    _glyphs: dict[tuple[Path, str], Mask] = field(default_factory=dict, repr=False)

    def glyph(self, path: Path, char: str) -> Mask:
        """``char`` in the font at ``path``: a float mask of its ink, cropped to the ink."""
        key = (path, char)
        if key not in self._glyphs:
            font = _font(path, GLYPH_PX)
            left, top, right, bottom = font.getbbox(char)
            width, height = max(1, right - left), max(1, bottom - top)
            image = Image.new("L", (int(width) + 4, int(height) + 4), 0)
            ImageDraw.Draw(image).text((2 - left, 2 - top), char, font=font, fill=255)
            ink = np.asarray(image, dtype=np.float32) / 255.0
            rows, cols = np.nonzero(ink > 0.05)
            if len(rows):
                ink = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
            self._glyphs[key] = np.ascontiguousarray(ink)
        return self._glyphs[key]


@cache
def _font(path: Path, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(path), size)


def find_fonts(dirs: Sequence[Path] = FONT_DIRS) -> Fonts:
    """The plate, text and CJK fonts installed under ``dirs``.

    Raises ConfigError naming the Debian package to install when DejaVu Sans Condensed Bold or
    every CJK font is missing.
    """
    found: dict[str, Path] = {}
    for folder in dirs:
        if folder.is_dir():
            for path in sorted(folder.rglob("*")):
                found.setdefault(path.name, path)
    plate = [found[name] for name in LATIN_FONTS if name in found]
    if LATIN_FONTS[0] not in found:
        raise ConfigError(
            f"the plate font {LATIN_FONTS[0]} is not installed",
            hint="apt-get install fonts-dejavu-core fonts-dejavu-extra",
        )
    cjk = next((found[name] for name in CJK_FONTS if name in found), None)
    if cjk is None:
        raise ConfigError(
            "no font with Chinese characters is installed (for Chinese plates)",
            hint="apt-get install fonts-wqy-microhei",
        )
    text = [found[name] for name in TEXT_FONTS if name in found] or plate
    return Fonts(plate=plate, text=text, cjk=cjk)


# --- drawing helpers ---------------------------------------------------------------------------


def _ink(canvas: NDArray[np.float32], mask: Mask, x: float, y: float, colour: Colour) -> None:
    """Paint ``colour`` through ``mask`` onto ``canvas`` (float RGB, 0-1) at ``x, y``."""
    h, w = mask.shape
    x0, y0 = round(x), round(y)
    x1, y1 = max(x0, 0), max(y0, 0)
    x2, y2 = min(x0 + w, canvas.shape[1]), min(y0 + h, canvas.shape[0])
    if x1 >= x2 or y1 >= y2:
        return
    m = mask[y1 - y0 : y2 - y0, x1 - x0 : x2 - x0, None]
    region = canvas[y1:y2, x1:x2]
    region[:] = region * (1 - m) + np.asarray(colour, dtype=np.float32) * m


def _char(
    canvas: NDArray[np.float32],
    fonts: Fonts,
    font: Path,
    char: str,
    cell: tuple[float, float, float, float],
    colour: Colour,
    stretch: float = 1.0,
) -> None:
    """One character scaled to the height of ``cell`` (x, y, w, h), centred, its width at most
    the cell's (``stretch`` widens or narrows the glyph's own proportions)."""
    x, y, w, h = cell
    ink = fonts.glyph(font, char)
    gh, gw = ink.shape
    height = max(1, round(h))
    width = max(1, round(min(w, gw / gh * h * stretch)))
    if char in "-·•":
        # dashes and dots keep their own size, centred in the cell
        height = max(1, round(h * gh / GLYPH_PX * 1.1))
        width = max(1, round(min(w, gw / gh * height)))
    glyph = cv2.resize(ink, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32)
    _ink(canvas, glyph, x + (w - width) / 2, y + (h - height) / 2, colour)


def _text_line(
    canvas: NDArray[np.float32],
    fonts: Fonts,
    font: Path,
    text: str,
    box: tuple[float, float, float, float],
    colour: Colour,
    rng: np.random.Generator,
) -> None:
    """A line of free text fitted into ``box`` (x, y, w, h), centred, in the font's spacing."""
    x, y, w, h = box
    size = max(4, round(h * 1.25))
    pil = _font(font, size)
    left, top, right, bottom = pil.getbbox(text)
    width, height = max(1, right - left), max(1, bottom - top)
    image = Image.new("L", (int(width) + 4, int(height) + 4), 0)
    ImageDraw.Draw(image).text((2 - left, 2 - top), text, font=pil, fill=255)
    ink = np.asarray(image, dtype=np.float32) / 255.0
    scale = min(h / ink.shape[0], w / ink.shape[1])
    if scale <= 0:
        return
    out_w, out_h = max(1, round(ink.shape[1] * scale)), max(1, round(ink.shape[0] * scale))
    ink = cv2.resize(ink, (out_w, out_h), interpolation=cv2.INTER_AREA).astype(np.float32)
    _ink(canvas, ink, x + (w - out_w) / 2, y + (h - out_h) / 2, colour)


def _rounded(h: int, w: int, radius: float) -> Mask:
    """A ``h x w`` mask of a rectangle with rounded corners (1 inside, 0 outside)."""
    mask = np.zeros((h, w), np.uint8)
    r = max(0, min(round(radius), h // 2, w // 2))
    cv2.rectangle(mask, (r, 0), (w - 1 - r, h - 1), 255, -1)
    cv2.rectangle(mask, (0, r), (w - 1, h - 1 - r), 255, -1)
    for cx, cy in ((r, r), (w - 1 - r, r), (r, h - 1 - r), (w - 1 - r, h - 1 - r)):
        cv2.circle(mask, (cx, cy), r, 255, -1, cv2.LINE_AA)
    return mask.astype(np.float32) / 255.0


def _rim(canvas: NDArray[np.float32], inset: float, width: float, colour: Colour) -> None:
    """A rounded rectangular line ``inset`` pixels inside the canvas's edge."""
    h, w = canvas.shape[:2]
    outer = np.zeros((h, w), np.float32)
    i = round(inset)
    outer[i : h - i, i : w - i] = _rounded(h - 2 * i, w - 2 * i, 3 * width + 2)
    j = round(inset + max(1.0, width))
    inner = np.zeros((h, w), np.float32)
    inner[j : h - j, j : w - j] = _rounded(h - 2 * j, w - 2 * j, 3 * width)
    line = np.clip(outer - inner, 0, 1)
    canvas[:] = canvas * (1 - line[:, :, None]) + np.asarray(colour, np.float32) * line[:, :, None]


def _jitter(colour: Colour, rng: np.random.Generator, amount: float = 0.06) -> NDArray[np.float32]:
    return np.clip(np.asarray(colour, np.float32) + rng.normal(0, amount, 3), 0, 1).astype(
        np.float32
    )


def _pick(rng: np.random.Generator, alphabet: str, n: int) -> str:
    return "".join(alphabet[int(i)] for i in rng.integers(0, len(alphabet), n))


LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"
DIGITS = "0123456789"
PROVINCES = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼"

# --- plates ------------------------------------------------------------------------------------


def _layout_row(
    canvas: NDArray[np.float32],
    fonts: Fonts,
    chars: Sequence[tuple[str, Path]],
    x0: float,
    y: float,
    cell_w: float,
    cell_h: float,
    gap: float,
    colour: Colour,
    dot_after: int | None = None,
    dot_gap: float = 0.0,
) -> None:
    x = x0
    for i, (char, font) in enumerate(chars):
        _char(canvas, fonts, font, char, (x, y, cell_w, cell_h), colour)
        x += cell_w + gap
        if dot_after is not None and i == dot_after - 1:
            r = max(1.0, cell_h * 0.05)
            cv2.circle(
                canvas,
                (round(x - gap + dot_gap / 2), round(y + cell_h / 2)),
                round(r),
                tuple(float(c) for c in colour),
                -1,
                cv2.LINE_AA,
            )
            x += dot_gap - gap


def _cn(
    region: Region, rng: np.random.Generator, fonts: Fonts, px_mm: float
) -> NDArray[np.float32]:
    font = fonts.plate[int(rng.integers(0, min(3, len(fonts.plate))))]
    province = (PROVINCES[int(rng.integers(0, len(PROVINCES)))], fonts.cjk)
    city = (_pick(rng, LETTERS, 1), font)
    if region == "cn-green":
        w_mm, h_mm = 480.0, 140.0
        if rng.random() < 0.5:
            tail = _pick(rng, "DF", 1) + _pick(rng, LETTERS + DIGITS, 1) + _pick(rng, DIGITS, 4)
        else:
            tail = _pick(rng, DIGITS, 5) + _pick(rng, "DF", 1)
        top, bottom = _jitter((0.93, 0.98, 0.93), rng, 0.03), _jitter((0.33, 0.72, 0.35), rng)
        ramp = np.linspace(0, 1, round(h_mm * px_mm), dtype=np.float32)[:, None, None] ** 1.3
        canvas = np.broadcast_to(
            top * (1 - ramp) + bottom * ramp, (round(h_mm * px_mm), round(w_mm * px_mm), 3)
        ).copy()
        ink = _jitter((0.05, 0.05, 0.05), rng, 0.02)
        cells = [province, city] + [(c, font) for c in tail]
        n, cell_w, gap, dot_gap = 8, 43.0, 9.0, 30.0
    else:
        w_mm = 440.0
        double = region == "cn-yellow" and rng.random() < 0.3
        h_mm = 220.0 if double else 140.0
        if region == "cn-blue":
            background, ink = (
                _jitter((0.05, 0.25, 0.70), rng),
                _jitter((0.97, 0.97, 0.97), rng, 0.02),
            )
        else:
            background, ink = (
                _jitter((0.97, 0.77, 0.05), rng),
                _jitter((0.05, 0.05, 0.05), rng, 0.02),
            )
        canvas = np.empty((round(h_mm * px_mm), round(w_mm * px_mm), 3), np.float32)
        canvas[:] = background
        _rim(canvas, 3 * px_mm, 1.5 * px_mm, ink)
        tail = _pick(rng, LETTERS + DIGITS, 5) if rng.random() < 0.6 else _pick(rng, DIGITS, 5)
        if region == "cn-yellow" and rng.random() < 0.15:
            tail = tail[:4] + "学"  # learner-driver plates end in a character too
        if double:
            top_row = [province, city]
            _layout_row(
                canvas,
                fonts,
                top_row,
                110 * px_mm,
                15 * px_mm,
                80 * px_mm,
                60 * px_mm,
                25 * px_mm,
                ink,
                dot_after=1,
                dot_gap=45 * px_mm,
            )
            bottom_row = [(c, fonts.cjk if c == "学" else font) for c in tail]
            _layout_row(
                canvas,
                fonts,
                bottom_row,
                27.5 * px_mm,
                90 * px_mm,
                65 * px_mm,
                110 * px_mm,
                15 * px_mm,
                ink,
            )
            return canvas
        cells = [province, city] + [(c, fonts.cjk if c == "学" else font) for c in tail]
        n, cell_w, gap, dot_gap = 7, 45.0, 12.0, 34.0
    total = n * cell_w + (n - 2) * gap + dot_gap
    x0 = (w_mm - total) / 2
    _layout_row(
        canvas,
        fonts,
        cells,
        x0 * px_mm,
        25 * px_mm,
        cell_w * px_mm,
        90 * px_mm,
        gap * px_mm,
        ink,
        dot_after=2,
        dot_gap=dot_gap * px_mm,
    )
    return canvas


EU_COUNTRIES = ("D", "F", "GB", "I", "E", "NL", "PL", "B", "A", "CZ", "P", "S", "DK", "IRL")


def _eu_text(country: str, rng: np.random.Generator) -> tuple[str, list[int]]:
    """A registration in the country's format, and where seals (German stickers) go."""
    letters, digits = LETTERS, DIGITS
    if country == "D":
        city = _pick(rng, letters, int(rng.integers(1, 4)))
        return (
            f"{city} {_pick(rng, letters, int(rng.integers(1, 3)))} {_pick(rng, '123456789', 1)}"
            + _pick(rng, digits, int(rng.integers(0, 4))),
            [len(city)],
        )
    if country == "F":
        return f"{_pick(rng, letters, 2)}-{_pick(rng, digits, 3)}-{_pick(rng, letters, 2)}", []
    if country == "GB":
        return f"{_pick(rng, letters, 2)}{_pick(rng, digits, 2)} {_pick(rng, letters, 3)}", []
    if country == "I":
        return f"{_pick(rng, letters, 2)} {_pick(rng, digits, 3)}{_pick(rng, letters, 2)}", []
    if country == "E":
        return f"{_pick(rng, digits, 4)} {_pick(rng, 'BCDFGHJKLMNPRSTVWXYZ', 3)}", []
    if country == "NL":
        return f"{_pick(rng, digits, 2)}-{_pick(rng, letters, 3)}-{_pick(rng, digits, 1)}", []
    if country == "PL":
        return f"{_pick(rng, letters, 2)} {_pick(rng, digits + letters, 5)}", []
    if country == "A":
        return f"{_pick(rng, letters, 1)} {_pick(rng, digits, 3)} {_pick(rng, letters, 2)}", [1]
    if country == "CZ":
        return (
            f"{_pick(rng, digits, 1)}{_pick(rng, letters, 1)}{_pick(rng, digits, 1)} "
            + _pick(rng, digits, 4),
            [],
        )
    return f"{_pick(rng, letters, 3)} {_pick(rng, digits, 3)}", []


def _eu(rng: np.random.Generator, fonts: Fonts, px_mm: float) -> NDArray[np.float32]:
    country = EU_COUNTRIES[int(rng.integers(0, len(EU_COUNTRIES)))]
    text, seals = _eu_text(country, rng)
    two_rows = rng.random() < 0.12
    w_mm, h_mm = (280.0, 200.0) if two_rows else (520.0, 110.0)
    yellow = (country == "GB" and rng.random() < 0.5) or (country == "NL" and rng.random() < 0.8)
    background = _jitter((0.98, 0.83, 0.10) if yellow else (0.96, 0.96, 0.95), rng, 0.03)
    ink = _jitter((0.04, 0.04, 0.04), rng, 0.02)
    canvas = np.empty((round(h_mm * px_mm), round(w_mm * px_mm), 3), np.float32)
    canvas[:] = background
    band = 0.0
    if rng.random() < 0.93:
        band = float(rng.uniform(38, 50))
        blue = _jitter((0.0, 0.2, 0.6), rng, 0.04)
        canvas[:, : round(band * px_mm)] = blue
        if country in ("F", "I") and not two_rows:
            canvas[:, round((w_mm - band) * px_mm) :] = blue
        star = _jitter((1.0, 0.85, 0.0), rng, 0.03)
        cx, cy, r = band / 2 * px_mm, min(h_mm * 0.3, 30) * px_mm, band * 0.3 * px_mm
        for k in range(12):
            angle = 2 * np.pi * k / 12
            cv2.circle(
                canvas,
                (round(cx + r * np.cos(angle)), round(cy + r * np.sin(angle))),
                max(1, round(1.8 * px_mm)),
                tuple(float(c) for c in star),
                -1,
                cv2.LINE_AA,
            )
        _text_line(
            canvas,
            fonts,
            fonts.plate[0],
            country,
            (2 * px_mm, h_mm * 0.55 * px_mm, (band - 4) * px_mm, h_mm * 0.3 * px_mm),
            (0.97, 0.97, 0.97),
            rng,
        )
    if rng.random() < 0.8:
        _rim(canvas, 1.5 * px_mm, 1.5 * px_mm, ink)
    font = fonts.plate[int(rng.integers(0, len(fonts.plate)))]
    left = (band + 6) * px_mm
    right = (w_mm - (band if country in ("F", "I") and band and not two_rows else 0) - 6) * px_mm
    rows = [text]
    if two_rows:
        words = text.replace("-", " ").split(" ")
        rows = [
            " ".join(words[: max(1, len(words) // 2)]),
            " ".join(words[max(1, len(words) // 2) :]),
        ]
    row_h = (h_mm * (0.68 if not two_rows else 0.4)) * px_mm
    for r, row in enumerate(rows):
        y = ((h_mm - 75) / 2 * px_mm) if not two_rows else (12 + r * 95) * px_mm
        units = [0.42 if c == " " else 0.45 if c == "-" else 0.62 for c in row]
        scale = min(row_h, (right - left) / max(1e-6, sum(units)))
        x = left + (right - left - sum(units) * scale) / 2
        for i, c in enumerate(row):
            if c != " ":
                _char(canvas, fonts, font, c, (x, y, units[i] * scale, row_h), ink, stretch=1.0)
            elif r == 0 and seals and i == seals[0] and not two_rows:
                for k, colour in enumerate(((0.2, 0.5, 0.3), (0.8, 0.2, 0.2))):
                    cv2.circle(
                        canvas,
                        (round(x + units[i] * scale / 2), round(y + row_h * (0.3 + 0.4 * k))),
                        round(row_h * 0.13),
                        colour,
                        -1,
                        cv2.LINE_AA,
                    )
            x += units[i] * scale
    return canvas


US_STATES = (
    "CALIFORNIA",
    "Texas",
    "FLORIDA",
    "NEW YORK",
    "Illinois",
    "Ohio",
    "PENNSYLVANIA",
    "Georgia",
    "Michigan",
    "ARIZONA",
    "Washington",
    "Colorado",
    "NEVADA",
    "Oregon",
    "Virginia",
    "New Jersey",
    "MASSACHUSETTS",
    "Minnesota",
    "Utah",
    "TENNESSEE",
    "Indiana",
    "Missouri",
    "Maryland",
    "Iowa",
)
US_SLOGANS = (
    "dmv.ca.gov",
    "Sunshine State",
    "The Lone Star State",
    "Empire State",
    "Land of Lincoln",
    "Live Free or Die",
    "Grand Canyon State",
    "Pure Michigan",
    "Keystone State",
    "Aviation",
    "Beehive State",
    "Evergreen State",
    "Great Lakes",
    "Garden State",
    "Peach State",
    "",
)


def _us(rng: np.random.Generator, fonts: Fonts, px_mm: float) -> NDArray[np.float32]:
    w_mm, h_mm = 305.0, 152.0
    h, w = round(h_mm * px_mm), round(w_mm * px_mm)
    base = _jitter((0.97, 0.97, 0.96), rng, 0.02)
    canvas = np.empty((h, w, 3), np.float32)
    canvas[:] = base
    style = rng.random()
    if style < 0.35:
        # a tint or gradient across the plate (sunsets, skies, fields)
        a, b = rng.uniform(0.55, 1.0, 3), rng.uniform(0.55, 1.0, 3)
        ramp = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
        canvas[:] = (a * (1 - ramp) + b * ramp).astype(np.float32)
    elif style < 0.6:
        # drawn scenery: soft blobs and a band of colour
        for _ in range(int(rng.integers(2, 6))):
            colour = rng.uniform(0.3, 1.0, 3)
            centre = (int(rng.integers(0, w)), int(rng.integers(h // 3, h)))
            axes = (int(rng.integers(w // 8, w // 2)), int(rng.integers(h // 10, h // 3)))
            cv2.ellipse(
                canvas,
                centre,
                axes,
                float(rng.uniform(0, 180)),
                0,
                360,
                tuple(float(c) for c in colour),
                -1,
                cv2.LINE_AA,
            )
        canvas[:] = cv2.GaussianBlur(canvas, (0, 0), max(1.0, w / 60))
        canvas[:] = 0.55 * canvas + 0.45 * base
    ink = _jitter(
        [(0.08, 0.12, 0.45), (0.05, 0.05, 0.05), (0.5, 0.05, 0.08), (0.0, 0.3, 0.12)][
            int(rng.integers(0, 4))
        ],
        rng,
        0.04,
    )
    state = US_STATES[int(rng.integers(0, len(US_STATES)))]
    state_colour = _jitter(rng.uniform(0, 0.6, 3), rng)
    text_fonts = fonts.text
    _text_line(
        canvas,
        fonts,
        text_fonts[int(rng.integers(0, len(text_fonts)))],
        state,
        (w * 0.2, h * 0.05, w * 0.6, h * float(rng.uniform(0.12, 0.2))),
        state_colour,
        rng,
    )
    slogan = US_SLOGANS[int(rng.integers(0, len(US_SLOGANS)))]
    if slogan:
        _text_line(
            canvas,
            fonts,
            text_fonts[int(rng.integers(0, len(text_fonts)))],
            slogan,
            (w * 0.2, h * 0.83, w * 0.6, h * 0.1),
            state_colour,
            rng,
        )
    form = rng.random()
    if form < 0.35:
        text = f"{_pick(rng, '123456789', 1)}{_pick(rng, LETTERS, 3)}{_pick(rng, DIGITS, 3)}"
    elif form < 0.7:
        text = f"{_pick(rng, LETTERS, 3)} {_pick(rng, DIGITS, 4)}"
    elif form < 0.85:
        text = f"{_pick(rng, LETTERS, 3)}-{_pick(rng, DIGITS, 4)}"
    else:
        text = f"{_pick(rng, DIGITS, 3)} {_pick(rng, LETTERS, 3)}"
    font = fonts.plate[int(rng.integers(0, len(fonts.plate)))]
    units = [0.4 if c == " " else 0.4 if c == "-" else 0.55 for c in text]
    row_h = h * float(rng.uniform(0.42, 0.55))
    scale = min(row_h, w * 0.9 / sum(units))
    x = (w - sum(units) * scale) / 2
    y = h * 0.27 + (h * 0.52 - row_h) / 2
    shadow = rng.random() < 0.5
    for c, unit in zip(text, units, strict=True):
        if c != " ":
            if shadow:  # embossed characters cast a thin shadow
                _char(
                    canvas,
                    fonts,
                    font,
                    c,
                    (x + 1.2 * px_mm, y + 1.2 * px_mm, unit * scale, row_h),
                    ink * 0.4 + 0.3,
                    stretch=0.9,
                )
            _char(canvas, fonts, font, c, (x, y, unit * scale, row_h), ink, stretch=0.9)
        x += unit * scale
    if rng.random() < 0.6:  # registration stickers in the top corners
        for corner in rng.choice(2, int(rng.integers(1, 3)), replace=False):
            sx = 8 * px_mm if corner == 0 else w - 48 * px_mm
            sticker = rng.uniform(0, 1, 3)
            cv2.rectangle(
                canvas,
                (round(sx), round(6 * px_mm)),
                (round(sx + 40 * px_mm), round(30 * px_mm)),
                tuple(float(c) for c in sticker),
                -1,
            )
    for bx in (w * 0.2, w * 0.8):  # bolt holes
        for by in (h * 0.12,) + ((h * 0.88,) if rng.random() < 0.4 else ()):
            cv2.circle(
                canvas,
                (round(bx), round(by)),
                max(1, round(3 * px_mm)),
                (0.3, 0.3, 0.3),
                -1,
                cv2.LINE_AA,
            )
    if rng.random() < 0.3:
        _rim(canvas, 1 * px_mm, 2 * px_mm, _jitter(state_colour, rng))
    return canvas


def render_plate(
    region: Region, rng: np.random.Generator, fonts: Fonts, width: int = 256
) -> tuple[RGB, Mask]:
    """A plate of ``region``, about ``width`` pixels wide: its RGB and its outline (a mask of
    the plate's rounded rectangle), both ``H x W``; its text and colours drawn from ``rng``."""
    if region == "eu":
        canvas = _eu(rng, fonts, width / 520.0)
    elif region == "us":
        canvas = _us(rng, fonts, width / 305.0)
    elif region == "cn-green":
        canvas = _cn(region, rng, fonts, width / 480.0)
    else:
        canvas = _cn(region, rng, fonts, width / 440.0)
    h, w = canvas.shape[:2]
    radius = {"us": 0.06, "eu": 0.05}.get(region, 0.03) * w
    outline = _rounded(h, w, radius)
    return (np.clip(canvas * 255, 0, 255)).astype(np.uint8), outline


SIGN_WORDS = (
    "Pharmacy",
    "Bäckerei",
    "Café",
    "HOTEL",
    "OPEN",
    "Parking",
    "EXIT",
    "Sale",
    "Bank",
    "Pizza",
    "TAXI",
    "Stop",
    "Apotheke",
    "Boulangerie",
    "Restaurant",
    "Open 24h",
    "Bus Stop",
    "No Entry",
    "Supermarket",
    "Tabac",
    "Metro",
    "Friseur",
    "Hair Salon",
    "Coffee",
    "Bar",
    "Sushi",
    "Grill",
    "Books",
    "Shoes",
    "Police",
    "Fire Lane",
    "School",
    "One Way",
    "Post Office",
    "Laundry",
    "Main St",
    "Broadway",
    "Rue de la Paix",
    "Hauptstraße",
    "Via Roma",
    "Calle Mayor",
    "Market",
    "Tel. 0421 123456",
    "www.example.com",
    "SALE -50%",
    "Fresh Fruit",
    "Garage",
    "Service",
)
SIGN_HANZI = (
    "超市",
    "餐厅",
    "银行",
    "药店",
    "饭店",
    "停车场",
    "出口",
    "便利店",
    "酒店",
    "小吃",
    "公交车站",
    "中国石化",
    "欢迎光临",
    "营业中",
    "火锅",
    "面馆",
    "理发店",
    "书店",
    "咖啡",
    "水果店",
    "人民路",
)


def render_distractor(rng: np.random.Generator, height: int = 48) -> tuple[RGB, Mask]:
    """Something plate-like that holds no characters: a blank or patterned panel (a sticker, a
    badge, a light's lens, a window) or a bright blurred spot (a headlight, a reflection), so
    that a small bright shape alone is not taken for a plate."""
    aspect = float(rng.uniform(1.2, 6.0))
    h, w = height, max(4, round(height * aspect))
    canvas = np.empty((h, w, 3), np.float32)
    kind = rng.random()
    if kind < 0.35:  # a blurred light, a reflection
        canvas[:] = rng.uniform(0.7, 1.0, 3)
        mask = np.zeros((h, w), np.float32)
        cv2.ellipse(mask, (w // 2, h // 2), (w // 2 - 1, h // 2 - 1), 0, 0, 360, 1.0, -1)
        mask = cv2.GaussianBlur(mask, (0, 0), max(1.0, h * float(rng.uniform(0.05, 0.3)))).astype(
            np.float32
        )
        return np.clip(canvas * 255, 0, 255).astype(np.uint8), mask.astype(np.float32)
    canvas[:] = rng.uniform(0, 1, 3) if rng.random() < 0.5 else rng.uniform(0.75, 1.0, 3)
    pattern = rng.random()
    ink = rng.uniform(0, 1, 3).astype(np.float32)
    if pattern < 0.3:  # stripes
        step = max(2, round(h * float(rng.uniform(0.1, 0.4))))
        vertical = rng.random() < 0.5
        for i in range(0, w if vertical else h, step * 2):
            if vertical:
                canvas[:, i : i + step] = ink
            else:
                canvas[i : i + step] = ink
    elif pattern < 0.5:  # a grid of panes
        for x in np.linspace(0, w - 1, int(rng.integers(2, 6))):
            cv2.line(canvas, (round(x), 0), (round(x), h - 1), tuple(float(c) for c in ink), 2)
        cv2.line(canvas, (0, h // 2), (w - 1, h // 2), tuple(float(c) for c in ink), 2)
    elif pattern < 0.65:  # dots, a logo's blobs
        for _ in range(int(rng.integers(1, 5))):
            centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            radius = int(rng.integers(max(1, h // 8), max(2, h // 2)))
            cv2.circle(canvas, centre, radius, tuple(float(c) for c in ink), -1, cv2.LINE_AA)
    elif pattern < 0.8:  # a gradient
        ramp = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
        canvas[:] = canvas * (1 - ramp) + ink * ramp
    if rng.random() < 0.5:
        _rim(canvas, 1, max(1.0, h / 30), ink)
    return np.clip(canvas * 255, 0, 255).astype(np.uint8), _rounded(h, w, h * 0.1)


def render_sign(rng: np.random.Generator, fonts: Fonts, height: int = 64) -> tuple[RGB, Mask]:
    """Text that is not a plate (a shop sign, a street name, lettering on a wall): its RGB and
    mask, about ``height`` pixels a line."""
    lines = int(rng.choice([1, 1, 1, 2, 3]))
    hanzi = rng.random() < 0.3
    texts = []
    for _ in range(lines):
        if hanzi:
            texts.append(SIGN_HANZI[int(rng.integers(0, len(SIGN_HANZI)))])
        else:
            word = SIGN_WORDS[int(rng.integers(0, len(SIGN_WORDS)))]
            texts.append(word.upper() if rng.random() < 0.3 else word)
    font = fonts.cjk if hanzi else fonts.text[int(rng.integers(0, len(fonts.text)))]
    widths = []
    for text in texts:
        left, _, right, _ = _font(font, height).getbbox(text)
        widths.append(right - left)
    w = int(max(widths) * rng.uniform(1.05, 1.4)) + height // 2
    h = int(lines * height * rng.uniform(1.2, 1.6))
    bare = rng.random() < 0.35  # lettering straight on a wall or window
    background = rng.uniform(0, 1, 3).astype(np.float32)
    ink = (1 - background) if rng.random() < 0.7 else rng.uniform(0, 1, 3).astype(np.float32)
    if np.abs(ink - background).sum() < 0.6:
        ink = np.where(background > 0.5, 0.05, 0.95).astype(np.float32)
    canvas = np.empty((h, w, 3), np.float32)
    canvas[:] = background
    ink_mask = np.zeros((h, w, 3), np.float32)
    for i, text in enumerate(texts):
        box = (w * 0.05, h * (i + 0.15) / lines, w * 0.9, h * 0.7 / lines)
        _text_line(ink_mask, fonts, font, text, box, (1.0, 1.0, 1.0), rng)
    ink_alpha = ink_mask[:, :, 0]
    canvas = canvas * (1 - ink_alpha[:, :, None]) + ink * ink_alpha[:, :, None]
    if rng.random() < 0.4:
        _rim(canvas, 2, max(1.0, h / 40), ink)
    mask = (
        np.clip(cv2.GaussianBlur(ink_alpha, (0, 0), 1.0) * 1.5, 0, 1)
        if bare
        else _rounded(h, w, h * 0.05)
    )
    return np.clip(canvas * 255, 0, 255).astype(np.uint8), mask.astype(np.float32)


# --- placing -----------------------------------------------------------------------------------


CAR_COLOURS = (
    (0.92, 0.92, 0.92),
    (0.7, 0.71, 0.72),
    (0.12, 0.12, 0.13),
    (0.4, 0.41, 0.43),
    (0.6, 0.08, 0.08),
    (0.1, 0.2, 0.5),
    (0.12, 0.3, 0.2),
    (0.75, 0.68, 0.55),
    (0.85, 0.5, 0.1),
    (0.95, 0.8, 0.2),
)


def _on_car(
    plate: RGB, outline: Mask, rng: np.random.Generator
) -> tuple[RGB, Mask, NDArray[np.float64]]:
    """The plate on a drawn car body (a bumper, lights, the recess it sits in): the patch, its
    mask, and the plate's four corners in the patch."""
    ph, pw = plate.shape[:2]
    rx, ry = rng.uniform(1.5, 3.6), rng.uniform(1.8, 4.0)
    w, h = round(pw * rx), round(ph * ry)
    body = _jitter(CAR_COLOURS[int(rng.integers(0, len(CAR_COLOURS)))], rng, 0.04)
    shade = np.linspace(rng.uniform(0.7, 1.15), rng.uniform(0.5, 1.0), h, dtype=np.float32)
    canvas = np.clip(body[None, None, :] * shade[:, None, None], 0, 1) * np.ones(
        (h, w, 1), np.float32
    )
    x0 = round((w - pw) / 2 + rng.uniform(-0.15, 0.15) * (w - pw))
    y0 = round((h - ph) * rng.uniform(0.35, 0.75))
    if rng.random() < 0.7:  # the bumper's edge
        edge = round(y0 + ph * rng.uniform(1.1, 1.8))
        if edge < h:
            canvas[edge:] *= rng.uniform(0.35, 0.8)
    if rng.random() < 0.6 and rx > 2.4:  # tail or head lights
        light = (rng.uniform(0.6, 1.0), rng.uniform(0.05, 0.4), rng.uniform(0.0, 0.15))
        if rng.random() < 0.4:
            light = (0.9, 0.9, 0.85)
        ly = max(0, round(y0 - ph * rng.uniform(0.6, 1.6)))
        lh, lw = round(ph * rng.uniform(0.4, 0.9)), round(pw * rng.uniform(0.2, 0.4))
        for lx in (round(w * 0.03), w - round(w * 0.03) - lw):
            cv2.rectangle(canvas, (lx, ly), (lx + lw, ly + lh), light, -1, cv2.LINE_AA)
    m = max(1, round(ph * rng.uniform(0.03, 0.15)))
    cv2.rectangle(
        canvas,
        (x0 - m, y0 - m),
        (x0 + pw + m, y0 + ph + m),
        tuple(float(c) for c in body * rng.uniform(0.2, 0.7)),
        -1,
    )
    patch = (canvas * 255).astype(np.uint8)
    o = outline[:, :, None]
    region = patch[y0 : y0 + ph, x0 : x0 + pw]
    region[:] = (plate * o + region * (1 - o)).astype(np.uint8)
    mask = _rounded(h, w, min(h, w) * 0.25)
    mask = cv2.GaussianBlur(mask, (0, 0), max(1.0, min(h, w) * 0.06)).astype(np.float32)
    corners = np.array([[x0, y0], [x0 + pw, y0], [x0 + pw, y0 + ph], [x0, y0 + ph]], np.float64)
    return patch, np.maximum(mask, np.pad(outline, ((y0, h - y0 - ph), (x0, w - x0 - pw)))), corners


def _rotation(yaw: float, pitch: float, roll: float) -> NDArray[np.float64]:
    cy, sy, cp, sp, cr, sr = (
        np.cos(yaw),
        np.sin(yaw),
        np.cos(pitch),
        np.sin(pitch),
        np.cos(roll),
        np.sin(roll),
    )
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return rz @ ry @ rx  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Plate:
    """A plate in a scene: its region and the box around its four corners (x1, y1, x2, y2)."""

    region: str
    box: tuple[float, float, float, float]


@dataclass
class Scene:
    """An image with the plates laid on it (``signs`` counts the text that is not a plate)."""

    image: RGB
    plates: list[Plate]
    signs: int = 0


def _paste(
    image: RGB,
    patch: RGB,
    mask: Mask,
    corners: NDArray[np.float64],
    width: float,
    centre: tuple[float, float],
    rng: np.random.Generator,
    turn: float = 1.0,
) -> tuple[float, float, float, float] | None:
    """Warp ``patch`` so that the quad ``corners`` (its plate) is ``width`` pixels wide about
    ``centre``, turned in 3D, and blend it in. Returns the plate's box in ``image``, or None
    when it would fall outside."""
    plate_w = float(np.linalg.norm(corners[1] - corners[0]))
    # Scale the patch close to its final size first: warping a 256 px plate straight down to
    # 20 px would alias where a camera's optics blur.
    k = min(1.0, 1.6 * width / plate_w)
    if k < 1.0:
        size = (max(2, round(patch.shape[1] * k)), max(2, round(patch.shape[0] * k)))
        patch = cv2.resize(patch, size, interpolation=cv2.INTER_AREA).astype(np.uint8)
        mask = cv2.resize(mask, size, interpolation=cv2.INTER_AREA).astype(np.float32)
        corners = corners * k
        plate_w *= k
    yaw = float(np.clip(rng.normal(0, 0.42), -1.05, 1.05)) * turn
    pitch = float(np.clip(rng.normal(0, 0.15), -0.45, 0.45)) * turn
    roll = float(np.clip(rng.normal(0, 0.07), -0.26, 0.26)) * turn
    distance = float(rng.uniform(2.0, 10.0))  # in plate widths: nearer turns more in perspective
    rotation = _rotation(yaw, pitch, roll)
    centre_plate = corners.mean(axis=0)
    h, w = patch.shape[:2]
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float64)

    def project(points: NDArray[np.float64]) -> NDArray[np.float64]:
        xyz = np.column_stack([(points - centre_plate) / plate_w, np.zeros(len(points))])
        cam = xyz @ rotation.T + np.array([0, 0, distance])
        projected: NDArray[np.float64] = cam[:, :2] / np.maximum(cam[:, 2:3], 0.05) * distance
        return projected

    plate_proj = project(corners)
    span = plate_proj[:, 0].max() - plate_proj[:, 0].min()
    if span <= 0:
        return None
    scale = width / span
    cx, cy = centre
    dst = project(src) * scale + np.array([cx, cy])
    box_pts = plate_proj * scale + np.array([cx, cy])
    x1, y1 = np.floor(dst.min(axis=0)).astype(int)
    x2, y2 = np.ceil(dst.max(axis=0)).astype(int)
    ih, iw = image.shape[:2]
    bx1, by1 = box_pts.min(axis=0)
    bx2, by2 = box_pts.max(axis=0)
    if bx1 < 0 or by1 < 0 or bx2 > iw or by2 > ih:
        return None
    ox1, oy1, ox2, oy2 = max(x1, 0), max(y1, 0), min(x2, iw), min(y2, ih)
    if ox1 >= ox2 or oy1 >= oy2:
        return None
    matrix = cv2.getPerspectiveTransform(
        src.astype(np.float32), (dst - [ox1, oy1]).astype(np.float32)
    )
    out_size = (ox2 - ox1, oy2 - oy1)
    warped = cv2.warpPerspective(
        patch, matrix, out_size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    alpha = cv2.warpPerspective(mask, matrix, out_size, flags=cv2.INTER_LINEAR, borderValue=0.0)
    if rng.random() < 0.5:
        sigma = float(rng.uniform(0.3, 1.2))
        warped = cv2.GaussianBlur(warped, (0, 0), sigma)
        alpha = cv2.GaussianBlur(alpha, (0, 0), sigma * 0.5)
    region = image[oy1:oy2, ox1:ox2].astype(np.float32)
    a = alpha[:, :, None]
    image[oy1:oy2, ox1:ox2] = np.clip(warped * a + region * (1 - a), 0, 255).astype(np.uint8)
    return float(bx1), float(by1), float(bx2), float(by2)


def _light(patch: RGB, rng: np.random.Generator) -> RGB:
    """Light on a plate: brighter or darker, a tint, a shadow across part of it, dirt."""
    out = patch.astype(np.float32) / 255
    out = out * rng.uniform(0.45, 1.25) + rng.uniform(-0.08, 0.08)
    out = out * (1 + rng.normal(0, 0.06, 3)).astype(np.float32)
    h, w = out.shape[:2]
    if rng.random() < 0.3:  # a shadow edge across the plate
        angle = rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        side = (xx - w * rng.uniform(0.2, 0.8)) * np.cos(angle) + (yy - h / 2) * np.sin(angle)
        out *= np.where(side > 0, rng.uniform(0.35, 0.7), 1.0)[:, :, None].astype(np.float32)
    if rng.random() < 0.4:  # dirt, wear
        noise = cv2.resize(
            rng.random((max(2, h // 16), max(2, w // 16))).astype(np.float32), (w, h)
        )
        out *= (1 - rng.uniform(0.1, 0.4) * noise)[:, :, None]
    if rng.random() < 0.15:  # a reflection
        out += rng.uniform(0.1, 0.4) * np.linspace(0, 1, w, dtype=np.float32)[None, :, None] ** 3
    return np.clip(out * 255, 0, 255).astype(np.uint8)


def _overlaps(
    box: tuple[float, float, float, float], boxes: Iterable[tuple[float, float, float, float]]
) -> bool:
    x1, y1, x2, y2 = box
    for a1, b1, a2, b2 in boxes:
        if min(x2, a2) > max(x1, a1) - 4 and min(y2, b2) > max(y1, b1) - 4:
            return True
    return False


def compose(
    background: RGB,
    rng: np.random.Generator,
    fonts: Fonts,
    regions: Sequence[Region],
    signs: int = 0,
    widths: tuple[float, float] = (20.0, 250.0),
    occlusion: float = 0.15,
    distractors: int = 0,
) -> Scene:
    """``background`` (copied) with one plate of each of ``regions``, ``signs`` text signs and
    ``distractors`` plate-like shapes without characters; plate widths log-uniform in
    ``widths`` pixels; plates never overlap one another."""
    image = background.copy()
    ih, iw = image.shape[:2]
    placed: list[tuple[float, float, float, float]] = []
    for _ in range(distractors):
        patch, mask = render_distractor(rng)
        width = float(np.exp(rng.uniform(np.log(12), np.log(min(200, iw * 0.8)))))
        corners = np.array(
            [[0, 0], [patch.shape[1], 0], [patch.shape[1], patch.shape[0]], [0, patch.shape[0]]],
            np.float64,
        )
        centre = (rng.uniform(0, iw), rng.uniform(0, ih))
        _paste(image, _light(patch, rng), mask, corners, width, centre, rng)
    for _ in range(signs):
        patch, mask = render_sign(rng, fonts, height=48)
        width = float(np.exp(rng.uniform(np.log(24), np.log(min(400, iw * 0.9)))))
        corners = np.array(
            [[0, 0], [patch.shape[1], 0], [patch.shape[1], patch.shape[0]], [0, patch.shape[0]]],
            np.float64,
        )
        _paste(
            image,
            _light(patch, rng),
            mask,
            corners,
            width,
            (rng.uniform(0, iw), rng.uniform(0, ih)),
            rng,
            turn=0.6,
        )
    plates: list[Plate] = []
    low, high = widths
    for region in regions:
        for _attempt in range(8):
            width = float(np.exp(rng.uniform(np.log(low), np.log(min(high, iw * 0.8)))))
            rgb, outline = render_plate(region, rng, fonts)
            rgb = _light(rgb, rng)
            corners = np.array(
                [[0, 0], [rgb.shape[1], 0], [rgb.shape[1], rgb.shape[0]], [0, rgb.shape[0]]],
                np.float64,
            )
            patch, mask = rgb, outline
            if rng.random() < 0.5:
                patch, mask, corners = _on_car(rgb, outline, rng)
            centre = (
                rng.uniform(width * 0.5, iw - width * 0.5),
                rng.uniform(width * 0.2, ih - width * 0.2),
            )
            guess = (
                centre[0] - width / 2,
                centre[1] - width / 3,
                centre[0] + width / 2,
                centre[1] + width / 3,
            )
            if _overlaps(guess, placed):
                continue
            trial = image.copy()
            box = _paste(trial, patch, mask, corners, width, centre, rng)
            if box is None or _overlaps(box, placed):
                continue
            image = trial
            placed.append(box)
            plates.append(Plate(region, box))
            if rng.random() < occlusion:  # a pole, a tow bar, a pedestrian's leg in front
                x1, y1, x2, y2 = box
                bar = rng.uniform(0.08, 0.3) * (x2 - x1)
                bx = rng.uniform(x1, x2 - bar)
                colour = tuple(int(c) for c in rng.integers(0, 255, 3))
                cv2.rectangle(
                    image,
                    (round(bx), round(y1 - (y2 - y1))),
                    (round(bx + bar), round(y2 + (y2 - y1))),
                    colour,
                    -1,
                )
            break
    return Scene(image, plates, signs)


def degrade(image: RGB, rng: np.random.Generator) -> RGB:
    """A camera's faults over the whole image: blur, motion, noise, exposure, JPEG."""
    out = image
    if rng.random() < 0.3:
        out = cv2.GaussianBlur(out, (0, 0), float(rng.uniform(0.4, 1.2))).astype(np.uint8)
    if rng.random() < 0.15:
        length = int(rng.integers(3, 9))
        kernel = np.zeros((length, length), np.float32)
        kernel[length // 2, :] = 1.0 / length
        rot = cv2.getRotationMatrix2D(
            (length / 2 - 0.5, length / 2 - 0.5), float(rng.uniform(0, 180)), 1.0
        )
        kernel = cv2.warpAffine(kernel, rot, (length, length)).astype(np.float32)
        out = cv2.filter2D(out, -1, kernel / max(float(kernel.sum()), 1e-6)).astype(np.uint8)
    f = out.astype(np.float32)
    if rng.random() < 0.5:
        gamma = float(rng.uniform(0.6, 1.6))
        f = (255 * (f / 255) ** gamma).astype(np.float32)
    if rng.random() < 0.5:
        f = f + rng.normal(0, rng.uniform(1, 8), f.shape).astype(np.float32)
    out = np.clip(f, 0, 255).astype(np.uint8)
    if rng.random() < 0.5:
        ok, data = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(25, 95))])
        decoded = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if ok else None
        if decoded is not None:
            out = decoded.astype(np.uint8)
    return out


# --- photos ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Photo:
    """A background photo: where it comes from, and its pixels (RGB)."""

    name: str
    source: str
    image: RGB = field(repr=False)


def _thumb(image: RGB) -> NDArray[np.float32]:
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    small = cv2.resize(grey, (16, 16), interpolation=cv2.INTER_AREA).astype(np.float32)
    normalised: NDArray[np.float32] = (small - small.mean()) / (small.std() + 1e-3)
    return normalised


def _read(path: Path, longest: int = 1280) -> RGB | None:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        return None
    h, w = image.shape[:2]
    if min(h, w) < 200 or image.std() < 20:
        return None
    k = longest / max(h, w)
    if k < 1:
        image = cv2.resize(image, (round(w * k), round(h * k)), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(image[:, :, ::-1])


@cache
def _opencv_doc_photos() -> tuple[Photo, ...]:
    if not OPENCV_DOC.is_dir():
        raise ConfigError(
            f"{OPENCV_DOC} is missing: the plate scenes' photos come from it",
            hint="apt-get install opencv-doc",
        )
    out: list[Photo] = []
    seen: set[str] = set()
    for path in sorted(OPENCV_DOC.rglob("*")):
        if path.suffix.lower() not in (".jpg", ".jpeg", ".png") or path.name in REAL_PLATE_PHOTOS:
            continue
        if path.name in LABELLED and "opencv4/html" not in str(path):
            continue
        digest = hashlib.sha1(path.read_bytes()).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        image = _read(path)
        if image is not None:
            out.append(Photo(path.name, f"debian:opencv-doc:{path.relative_to(OPENCV_DOC)}", image))
    video = OPENCV_DOC / "examples" / "data" / "vtest.avi"
    capture = cv2.VideoCapture(str(video))
    for index in range(0, 795, 40):
        capture.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, frame = capture.read()
        if ok:
            out.append(
                Photo(
                    f"vtest-{index}",
                    f"debian:opencv-doc:{video.name}#{index}",
                    np.ascontiguousarray(frame[:, :, ::-1], dtype=np.uint8),
                )
            )
    capture.release()
    return tuple(out)


def _skimage_photos() -> list[Photo]:
    import skimage

    folder = Path(skimage.__file__).parent / "data"
    out = []
    for name in SKIMAGE_PHOTOS:
        image = cv2.imread(str(folder / name), cv2.IMREAD_COLOR)
        if image is not None:
            rgb = np.ascontiguousarray(image[:, :, ::-1], dtype=np.uint8)
            out.append(Photo(name, f"pypi:scikit-image:data/{name}", rgb))
    return out


def photos(split: Literal["train", "test"]) -> list[Photo]:
    """The background photos of ``split``: ``test`` is :data:`TEST_PHOTOS`; ``train`` is every
    other usable photo whose picture is not one of them (matched by thumbnail, so a copy under
    another name or size stays out). Raises ConfigError when ``opencv-doc`` is not installed."""
    everything = _opencv_doc_photos()
    test = [p for p in everything if p.name in TEST_PHOTOS and "vtest" not in p.name]
    if split == "test":
        return test
    held = np.stack([_thumb(p.image) for p in test]) if test else np.zeros((0, 16, 16), np.float32)
    train = []
    for photo in [*everything, *_skimage_photos()]:
        if photo.name in TEST_PHOTOS or photo.name in LABELLED:
            continue
        if len(held) and np.abs(held - _thumb(photo.image)).mean(axis=(1, 2)).min() < 0.35:
            continue
        train.append(photo)
    return train


def frame_from(photo: RGB, rng: np.random.Generator, size: tuple[int, int] = (1280, 720)) -> RGB:
    """A ``size`` (width, height) frame cut from ``photo``, scaled to cover it (and up to 1.4
    times more), at a random place."""
    w, h = size
    ph, pw = photo.shape[:2]
    k = max(w / pw, h / ph) * rng.uniform(1.0, 1.4)
    resized = cv2.resize(
        photo, (max(w, round(pw * k)), max(h, round(ph * k))), interpolation=cv2.INTER_LINEAR
    )
    x = int(rng.integers(0, resized.shape[1] - w + 1))
    y = int(rng.integers(0, resized.shape[0] - h + 1))
    return np.ascontiguousarray(resized[y : y + h, x : x + w])
