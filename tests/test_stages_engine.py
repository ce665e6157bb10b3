"""Classification and training samples on the batch engine (:mod:`onshore.sites.compute`):
through Ray's workers they give the labels, summary and arrays that the command's own process
gives, from the same site; and the samples cut output by output are those cut from all rows at
once, even where the catalogue miscounts an output's rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from datetime import date

import numpy as np
import pytest
import shapely

from conftest import make_clip
from onshore.classify import classify_clip, classify_site, label_clips
from onshore.classify.scan import DETECTIONS_DIR
from onshore.classify.zones import load_zones
from onshore.clips.mcap import write_mcap
from onshore.clips.schema import Clip
from onshore.deidentify import deidentify_site, resolve_profile
from onshore.fleet.camera import CameraSettings, render_frames
from onshore.forecast.dataset import (
    DatasetConfig,
    SiteDataset,
    build_site_dataset,
    samples_from_outputs,
)
from onshore.ingest import ingest
from onshore.settings import Project
from onshore.sites import init_project
from onshore.sites.compute import Engine, Spill
from onshore.sites.keystore import load_keystore
from onshore.store import SiteStore

pytestmark = [
    # Ray Data's DataContext sets, as it is made, options it deprecates (ray/data/context.py).
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context"),
    # ray.shutdown() drops its handles on processes that are still on their way out.
    pytest.mark.filterwarnings("ignore:subprocess [0-9]+ is still running:ResourceWarning"),
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in. <function Popen.__del__"
        ":pytest.PytestUnraisableExceptionWarning"
    ),
]

SITE = "cn-shanghai"
AS_OF = date(2026, 11, 29)
SIDES = ("train", "test")
ARRAYS = ("past", "objects", "object_mask", "future")


def _zone_around(lat: float, lon: float, radius_m: float) -> bytes:
    circle = shapely.Point(lon, lat).buffer(radius_m / 111_320 / np.cos(np.radians(lat)))
    feature = {
        "type": "Feature",
        "geometry": shapely.geometry.mapping(circle),
        "properties": {"id": "zone-1", "name": "test", "kind": "military"},
    }
    return json.dumps({"type": "FeatureCollection", "features": [feature]}).encode()


@pytest.fixture(scope="module")
def clips() -> list[Clip]:
    """Eight vehicles' clips (every third without consent) and one with camera frames."""
    out = [make_clip(seed, steps=300, consent=seed % 3 != 0) for seed in range(8)]
    filmed = make_clip(20, steps=60, clip_id="cam-020")
    frames, _drawn = render_frames(filmed, "cn", CameraSettings(rate_hz=1.0, passers_by=0))
    return [*out, Clip(filmed.meta, filmed.table, frames)]


@pytest.fixture(scope="module")
def stages(tmp_path_factory: pytest.TempPathFactory, clips: list[Clip]) -> Project:
    """A site holding ``clips`` and a sensitive area that one of them crosses."""
    root = tmp_path_factory.mktemp("stages")
    project = init_project(root / "proj", "three-regions")
    uploads = root / "uploads"
    uploads.mkdir()
    for clip in clips:
        write_mcap(clip, uploads / f"{clip.meta.clip_id}.mcap")
    crossed = clips[1].table
    with SiteStore.open(project, SITE) as site:
        site.keep_reference_zones(
            _zone_around(crossed["lat"][150].as_py(), crossed["lon"][150].as_py(), 40)
        )
        assert ingest(site, [uploads]).quarantined == []
    return project


@pytest.fixture(scope="module")
def engine(ray_engine: Engine) -> Engine:
    """The session's local Ray of two workers."""
    return ray_engine


@pytest.mark.slow
def test_classification_on_ray_is_that_of_one_process(
    stages: Project, clips: list[Clip], engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("onshore.classify._WORKER_CLIPS", 2)  # work for both workers
    # The clips stream from pages of a few, through more than one Dataset.
    monkeypatch.setattr("onshore.store.catalogue._PAGE_ROWS", 4)
    monkeypatch.setattr("onshore.sites.compute.RAY_WINDOW", 5)
    with SiteStore.open(stages, SITE) as site:
        assert not list(site.objects.find(DETECTIONS_DIR))
        # First on Ray, nothing cached: the workers read every clip and run the detectors.
        on_ray = classify_site(site, as_of=AS_OF, engine=engine)
        labels = site.catalogue.labels()
        assert len(list(site.objects.find(DETECTIONS_DIR))) == 1
        # Then in this process, from the labels and detections the workers found.
        inline = classify_site(site, as_of=AS_OF)
        assert site.catalogue.labels() == labels
        zones = load_zones(site.objects)
        records = site.catalogue.clips()
        again = label_clips(site, records)
    assert on_ray == inline
    assert "sensitive_area_geodata" in on_ray["categories"]
    assert on_ray["clips_with_frames"] == 1 and on_ray["subjects"]["persons"] is not None
    assert any("video" in name for name in on_ray["categories"])
    for clip in clips[:-1]:
        shown = on_ray["clip_labels"][clip.meta.clip_id]
        expected = classify_clip(clip, zones)
        assert [(x["category"], x["count"], x["evidence"]) for x in shown] == [
            (x.category, x.count, x.evidence) for x in expected
        ]
    # What the gate asks for: the labels stored, clip by clip, in the records' order.
    assert [c.clip_id for c in again] == [r.clip_id for r in records]
    stored = {r.clip_id: {x for x in labels if x.clip_id == r.clip_id} for r in records}
    assert {c.clip_id: set(c.labels) for c in again} == stored


def _deidentified(project: Project) -> None:
    # Without trip-end trimming (these clips are 30 s drives) nor frames (not in samples).
    steps = [{"name": n} for n in ("pseudonymise", "drop_zones", "to_local")]
    profile = resolve_profile("training", {"training": steps})
    with SiteStore.open(project, SITE) as site:
        if site.catalogue.deidentified("training"):
            return
        secret = load_keystore(project.keystore_path(project.site(SITE))).hmac_secret
        deidentify_site(site, profile, secret=secret)


def _all_at_once(site: SiteStore, config: DatasetConfig) -> SiteDataset:
    """The samples as cut from every output's rows at once (:func:`samples_from_outputs`)."""
    records = [r for r in site.catalogue.deidentified(config.profile) if r.state != "raw"]
    allowed: dict[str, set[str]] = {}
    for r in records:
        allowed.setdefault(r.path, set())
        if r.consent_training:
            allowed[r.path].add(r.output_id)
    outputs = [(site.objects.read(path), allowed[path]) for path in sorted(allowed)]
    train, test, info = samples_from_outputs(outputs, config)
    return SiteDataset(site.site, config, train, test, info)


def _assert_same(a: SiteDataset, b: SiteDataset) -> None:
    for side in SIDES:
        for name in ARRAYS:
            x, y = getattr(getattr(a, side), name), getattr(getattr(b, side), name)
            assert x.dtype == y.dtype and x.shape == y.shape
            assert np.array_equal(x, y), f"{side} {name}"
    skip = {"cache", "cached", "clips_in_catalogue", "funnel"}
    assert {k: v for k, v in a.info.items() if k not in skip} == {
        k: v for k, v in b.info.items() if k not in skip
    }


@pytest.mark.slow
def test_training_samples_on_ray_are_those_of_one_process(
    stages: Project, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    _deidentified(stages)
    with SiteStore.open(stages, SITE) as site:
        for config in (DatasetConfig(), DatasetConfig(stride=3)):
            inline = build_site_dataset(site, config, cache=False)
            _assert_same(inline, _all_at_once(site, config))
            assert len(inline.train) and len(inline.test)
            assert inline.info["clips_refused_no_consent"] == 3
        # On Ray the outputs are cut in batches on two workers, each batch's stride counted
        # from its outputs' places among all.
        monkeypatch.setattr("onshore.forecast.dataset._WORKER_OUTPUTS", 2)
        on_ray = build_site_dataset(site, config, engine=engine)
        assert on_ray.info == inline.info
        _assert_same(on_ray, inline)
        assert build_site_dataset(site, config, engine=engine).info["cached"]


def test_the_stride_counts_from_the_first_row_when_the_catalogue_miscounts(
    stages: Project,
) -> None:
    # The catalogue says the first output keeps a row more than it does: the outputs after it
    # are cut again at their true place, as all rows at once would cut them.
    _deidentified(stages)
    config = DatasetConfig(stride=4)
    with SiteStore.open(stages, SITE) as site:
        records = site.catalogue.deidentified("training")
        first = min(r.path for r in records if r.consent_training)
        wrong = [replace(r, rows=r.rows + 1) if r.path == first else r for r in records]
        site.catalogue.replace_deidentified("training", wrong)
        try:
            built = build_site_dataset(site, config, cache=False)
        finally:
            site.catalogue.replace_deidentified("training", records)
        _assert_same(built, _all_at_once(site, config))
        assert len(built.train) + len(built.test) > 0


class _Doubled:
    """A worker that doubles its items."""

    def __call__(self, items: list[int]) -> list[int]:
        return [2 * item for item in items]


def test_the_engine_takes_items_as_the_work_needs_them() -> None:
    taken: list[int] = []

    def items() -> Iterator[int]:
        for i in range(10):
            taken.append(i)
            yield i

    results = Engine().map(_Doubled, (), items(), batch_size=3)
    assert next(results) == 0 and taken == [0, 1, 2], "one batch taken, not every item"
    assert list(results) == [2 * i for i in range(1, 10)]


def test_a_spill_gives_back_what_it_was_given_in_order() -> None:
    records = [(i, f"clip-{i}") for i in range(4_500)]  # more than one spilled batch
    with Spill[tuple[int, str]]() as spill:
        spill.extend(records[:10])
        spill.add(records[10])
        spill.extend(records[11:])
        assert spill.count == len(records)
        assert list(spill) == records


_STRANGER = """
import os, subprocess, sys
from onshore.sites.compute import Engine

with Engine(workers=1, ray=True) as engine:
    engine.start()
    import ray

    address = ray.get_runtime_context().gcs_address
    print("mode", os.environ.get("RAY_AUTH_MODE"), flush=True)
    stranger = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    script = f"import ray; ray.init(address={address!r}); print('connected')"
    tried = subprocess.run(
        [sys.executable, "-c", script], env=stranger, capture_output=True, text=True
    )
    print("stranger", tried.returncode, tried.stdout.strip(), flush=True)
    print("said", "token" in tried.stderr.lower(), flush=True)
print("left", {k for k in os.environ if k.startswith("RAY_AUTH")})
"""


@pytest.mark.slow
def test_a_local_ray_refuses_a_caller_without_its_token() -> None:
    # Ray's servers listen on every interface: only a caller with the engine's token gets in.
    # In a fresh process: Ray reads its authentication mode when it is first imported.
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    run = subprocess.run(
        [sys.executable, "-c", _STRANGER],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = run.stdout.splitlines()
    assert run.returncode == 0, run.stderr[-2000:]
    assert "mode token" in lines
    assert any(line.startswith("stranger 1 ") or line == "stranger 1" for line in lines), lines
    assert "said True" in lines and "left set()" in lines
