"""The plate detector onshore trains: the shipped model finds plates of every region on held-out
street photos and nothing on plain frames; the scenes keep test pictures out of training; the
training script runs end to end.

The photos and fonts come from Debian packages (opencv-doc, fonts-dejavu-extra,
fonts-wqy-microhei: see .ci/run). Outside CI a missing package skips the tests that need it;
under CI (env CI set) it fails them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from onshore.classify.detectors import Box
from onshore.classify.plate_scenes import (
    REGIONS,
    TEST_PHOTOS,
    Fonts,
    Photo,
    Region,
    compose,
    find_fonts,
    frame_from,
    photos,
    render_plate,
)
from onshore.classify.plate_training import load_labelled_frames, targets
from onshore.classify.plates import PlateDetector, plate_detector, weights
from onshore.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).parent / "data"
THRESHOLD = 0.3


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must provide it: see .ci/run)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def fonts() -> Fonts:
    try:
        return find_fonts()
    except ConfigError as exc:
        _unavailable(f"{exc} ({exc.hint})")
        raise


@pytest.fixture(scope="module")
def test_photos() -> list[Photo]:
    try:
        return photos("test")
    except ConfigError as exc:
        _unavailable(f"{exc} ({exc.hint})")
        raise


def _found(label: tuple[float, float, float, float], boxes: list[Box]) -> bool:
    lx1, ly1, lx2, ly2 = label
    for box in boxes:
        ix = max(0.0, min(lx2, box.x2) - max(lx1, box.x1))
        iy = max(0.0, min(ly2, box.y2) - max(ly1, box.y1))
        union = (lx2 - lx1) * (ly2 - ly1) + box.width * box.height - ix * iy
        if ix * iy / union >= 0.3:
            return True
    return False


def test_the_model_ships_in_the_package_and_is_small() -> None:
    data = weights()
    assert 10_000 < len(data) < 5_000_000
    assert plate_detector(1) is plate_detector(1)


@pytest.mark.parametrize("region", REGIONS)
def test_finds_a_plate_of_each_region_on_a_held_out_street_photo(
    region: Region, fonts: Fonts, test_photos: list[Photo]
) -> None:
    street = next(p for p in test_photos if p.name == "detect_test2.jpg")
    detector = plate_detector(1)
    for seed in range(3):
        rng = np.random.default_rng([7, seed])
        scene = compose(frame_from(street.image, rng), rng, fonts, [region], widths=(60, 160))
        (plate,) = scene.plates
        boxes = detector.detect(scene.image, THRESHOLD)
        assert _found(plate.box, boxes), (region, seed, plate, boxes)
        assert all(b.kind == "plate" for b in boxes)


def test_the_detector_config_chooses_the_trained_model(
    fonts: Fonts, test_photos: list[Photo]
) -> None:
    """``plate_model="onshore"`` runs the trained detector where de-identification detects,
    and its detections are cached apart from the SSD's."""
    from onshore.classify.detectors import DetectorConfig, detect_plates
    from onshore.classify.scan import detector_key

    street = next(p for p in test_photos if p.name == "detect_test2.jpg")
    rng = np.random.default_rng([7, 1])
    scene = compose(frame_from(street.image, rng), rng, fonts, ["eu"], widths=(60, 160))
    (plate,) = scene.plates
    config = DetectorConfig(plate_model="onshore", plate_threshold=THRESHOLD, threads=1)
    assert _found(plate.box, detect_plates(scene.image, config))
    assert detector_key(config) != detector_key(DetectorConfig(plate_threshold=THRESHOLD))
    with pytest.raises(ConfigError, match="plate_model"):
        DetectorConfig(plate_model="yolo")  # type: ignore[arg-type]


def test_finds_nothing_on_plain_frames() -> None:
    detector = plate_detector(1)
    ramp = np.linspace(0, 255, 1280, dtype=np.float32).astype(np.uint8)
    frames = [
        np.full((720, 1280, 3), 114, np.uint8),
        np.zeros((720, 1280, 3), np.uint8),
        np.full((720, 1280, 3), 255, np.uint8),
        np.broadcast_to(ramp[None, :, None], (720, 1280, 3)).copy(),
    ]
    for frame in frames:
        assert detector.detect(frame, THRESHOLD) == []


@pytest.mark.parametrize("shape", [(720, 1280), (333, 517), (1280, 720), (8, 8), (1, 1)])
def test_any_frame_size_gives_boxes_inside_it(shape: tuple[int, int], fonts: Fonts) -> None:
    height, width = shape
    rng = np.random.default_rng(3)
    frame = np.full((height, width, 3), 90, np.uint8)
    if min(shape) >= 300:
        frame = compose(frame, rng, fonts, ["eu", "us"], widths=(80, 120)).image
    for box in PlateDetector(1).detect(frame, 0.1):
        assert 0 <= box.x1 < box.x2 <= width and 0 <= box.y1 < box.y2 <= height


PROPORTIONS: dict[Region, set[float]] = {
    "cn-blue": {440 / 140},
    "cn-green": {480 / 140},
    "cn-yellow": {440 / 140, 440 / 220},  # one row, or two (lorries, buses)
    "eu": {520 / 110, 280 / 200},
    "us": {305 / 152},
}


@pytest.mark.parametrize("region", REGIONS)
def test_every_region_renders_in_its_proportions(region: Region, fonts: Fonts) -> None:
    for seed in range(20):
        rgb, outline = render_plate(region, np.random.default_rng(seed), fonts)
        ratio = rgb.shape[1] / rgb.shape[0]
        assert any(abs(ratio - r) < 0.03 for r in PROPORTIONS[region]), (region, seed, ratio)
        assert rgb.dtype == np.uint8 and outline.shape == rgb.shape[:2]


def test_test_and_labelled_pictures_stay_out_of_training(test_photos: list[Photo]) -> None:
    train = photos("train")
    train_sources = {p.source.split(":", 2)[-1] for p in train}
    assert not {p.name for p in train} & TEST_PHOTOS
    assert not {p.source for p in train} & {p.source for p in test_photos}
    for labels in ("frames_labels.json", "plates_labels.json"):
        for entry in json.loads((DATA / labels).read_text())["images"]:
            path = entry["source"].get("path", "")
            assert not any(path.endswith(source) for source in train_sources), entry["id"]


def test_targets_put_each_plate_at_its_cell() -> None:
    heat, reg, weight = targets([(40.0, 60.0, 140.0, 90.0)], 160, 320)
    assert heat.shape == (1, 20, 40) and reg.shape == (4, 20, 40)
    y, x = np.unravel_index(int(np.argmax(heat[0])), heat[0].shape)
    assert (y, x) == (9, 11)  # the centre (90, 75) in 8 px cells
    cx = (x + 0.5 + reg[0, y, x]) * 8
    cy = (y + 0.5 + reg[1, y, x]) * 8
    assert (round(cx), round(cy)) == (90, 75)
    assert np.exp(reg[2, y, x]) * 8 == pytest.approx(100) and weight[0, y, x] == 1.0


def test_labels_files_are_read_in_both_formats(tmp_path: Path) -> None:
    image = tmp_path / "frames" / "a.png"
    image.parent.mkdir()
    image.write_bytes(b"")  # only its presence is checked when reading labels
    (tmp_path / "labels.json").write_text(
        json.dumps(
            {
                "images": [
                    {"file": "frames/a.png", "plates": [[1, 2, 30, 12]]},
                    {"source": {"path": str(image)}, "plates": []},
                ]
            }
        )
    )
    frames = load_labelled_frames(tmp_path / "labels.json")
    assert [f.plates for f in frames] == [[(1.0, 2.0, 30.0, 12.0)], []]
    (tmp_path / "bad.json").write_text(json.dumps({"images": [{"file": "missing.png"}]}))
    with pytest.raises(ConfigError):
        load_labelled_frames(tmp_path / "bad.json")


def test_the_training_script_runs_end_to_end(tmp_path: Path, test_photos: list[Photo]) -> None:
    motion = Path("/usr/share/doc/opencv-doc/examples/data/licenseplate_motion.jpg")
    labels = tmp_path / "labels.json"
    labels.write_text(
        json.dumps({"images": [{"file": str(motion), "plates": [[228, 226, 358, 296]]}]})
    )
    out = tmp_path / "plates.onnx"
    command = [
        sys.executable, str(ROOT / "scripts" / "train-plates"), "--out", str(out),
        "--steps", "3", "--batch", "2", "--size", "96", "--width", "0.5",
        "--frames", str(labels), "--log-every", "1",
    ]  # fmt: skip
    # its checkpoint goes to the cache folder: a private one, so that no earlier run is resumed
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=300, check=False, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "step 3/3" in done.stdout and out.is_file()
    assert len(list((tmp_path / "cache" / "onshore" / "train-plates").glob("*.pt"))) == 1
    again = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    assert "resumed" in again.stdout and "at step 3" in again.stdout  # it only exports again
    frame = np.full((720, 1280, 3), 114, np.uint8)
    assert isinstance(PlateDetector(1, out.read_bytes()).detect(frame, 0.5), list)
    help_text = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train-plates"), "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--frames" in help_text and "--seed" in help_text
