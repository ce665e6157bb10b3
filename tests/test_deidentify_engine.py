"""De-identification on the site's batch engine: the same catalogue inline and on Ray, and the
per-part checks equal to the checks of each part alone."""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import asdict, replace
from itertools import pairwise
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import make_clip
from onshore.classify.zones import parse_zones
from onshore.clips.mcap import write_mcap
from onshore.clips.schema import Clip
from onshore.deidentify import BUILTIN_PROFILES, deidentify_site, resolve_profile
from onshore.deidentify.checks import Check, run_checks, run_checks_by_part
from onshore.deidentify.run import _vehicles
from onshore.deidentify.video import CHECKS_DIR
from onshore.errors import DeidentifyError
from onshore.fleet import simulate_site
from onshore.ingest import ingest
from onshore.settings import Project
from onshore.sites.compute import Engine
from onshore.sites.keystore import load_keystore
from onshore.store import SiteStore

SITE = "eu-frankfurt"
VINS = {"WVWZZZ1JZXW000001", "WVWZZZ1JZXW000002"}
ZONES = parse_zones(
    b'{"type":"FeatureCollection","features":[{"type":"Feature","properties":{},'
    b'"geometry":{"type":"Polygon","coordinates":[[[13.0,52.0],[13.1,52.0],[13.1,52.1],'
    b"[13.0,52.1],[13.0,52.0]]]}}]}",
    "test zones",
)


def _leaky(seed: int) -> Clip:
    """A clip whose exporter wrote the VIN into the model field, which the de-identified
    metadata keeps: its output fails ``no_raw_vin``."""
    clip = make_clip(seed, steps=1500, lat0=52.45, lon0=13.5, recorded_in=SITE)
    return replace(clip, meta=replace(clip.meta, vehicle_model=clip.meta.vin))


def _stored(site: SiteStore) -> set[str]:
    return set(site.objects.find("deidentified/training"))


@pytest.mark.slow
# Ray Data's DataContext sets options it deprecates itself, and Ray leaves the Popen objects of
# the processes it started to be collected while they still run.
@pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")
@pytest.mark.filterwarnings("ignore:subprocess .* is still running:ResourceWarning")
@pytest.mark.filterwarnings("ignore:Exception ignored in. <function Popen.__del__")
def test_ray_engine_reaches_the_inline_catalogue(
    project: Project, tmp_path: Path, ray_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings_ = project.site(SITE)
    result = simulate_site(
        settings_,
        vehicles=30,
        minutes=2,
        seed=3,
        out=tmp_path / "uploads",
        camera_share=0.15,
        trip_km=1.0,
    )
    secret = load_keystore(project.keystore_path(settings_)).hmac_secret
    # Training without trip-end trimming: one-kilometre trips are not much over twice its 500 m.
    steps = [{"name": n} for n in ("pseudonymise", "drop_zones", "to_local", "mask_frames")]
    profile = resolve_profile("training", {"training": steps})
    with SiteStore.open(project, SITE) as site:
        site.keep_reference_zones(result.zones.read_bytes())
        ingest(site, result.clips)
        assert site.catalogue.frames(), "the site needs camera frames for this test"
        inline = deidentify_site(site, profile, secret=secret)
        records = sorted(site.catalogue.deidentified("training"), key=lambda r: r.clip_id)
        stored = _stored(site)
        # The Ray workers detect nothing again (the detections are cached) but check the
        # masked frames again, in their own processes.
        shutil.rmtree(Path(project.store_url(settings_)) / CHECKS_DIR)
        # On Ray, the vehicles stream from pages of a few clips (a vehicle's clips straddle
        # pages) through several Datasets of a few vehicles each.
        monkeypatch.setattr("onshore.store.catalogue._PAGE_ROWS", 7)
        monkeypatch.setattr("onshore.sites.compute.RAY_WINDOW", 8)
        vehicles = list(_vehicles(site, site.catalogue.clip_vins()))
        assert len({v.clips[0].vin for v in vehicles}) == len(vehicles) == inline["vehicles"]
        assert [c for v in vehicles for c in v.clips] == sorted(
            site.catalogue.clips(), key=lambda c: (c.vin, c.start_time, c.clip_id)
        )
        with contextlib.nullcontext(ray_engine) as engine:
            on_ray = deidentify_site(site, profile, secret=secret, engine=engine)
            again = sorted(site.catalogue.deidentified("training"), key=lambda r: r.clip_id)
            assert _stored(site) == stored
            # A worker's DeidentifyError reaches the caller as it is, and the catalogue is
            # left as it was.
            folder = tmp_path / "leaky"
            folder.mkdir()
            write_mcap(_leaky(7), folder / "leaky.mcap")
            ingest(site, [folder])
            with pytest.raises(DeidentifyError, match="no_raw_vin"):
                deidentify_site(site, profile, secret=secret, engine=engine)
            after = sorted(site.catalogue.deidentified("training"), key=lambda r: r.clip_id)
    assert inline["vehicles"] > 2 and inline["frames"]["kept"] > 0
    assert on_ray == inline
    assert [asdict(r) for r in again] == [asdict(r) for r in records]
    assert after == records
    referenced = {r.path for r in records}
    referenced |= {f["path"] for r in records if (f := orjson.loads(r.detail)["frames"])}
    assert stored == referenced


def test_a_failed_check_stores_nothing_and_leaves_the_catalogue(
    project: Project, tmp_path: Path
) -> None:
    secret = load_keystore(project.keystore_path(project.site(SITE))).hmac_secret
    folder = tmp_path / "uploads"
    folder.mkdir()
    write_mcap(_leaky(5), folder / "leaky.mcap")
    with SiteStore.open(project, SITE) as site:
        ingest(site, [folder])
        with pytest.raises(DeidentifyError, match="no_raw_vin"):
            deidentify_site(site, BUILTIN_PROFILES["training"], secret=secret)
        assert site.catalogue.deidentified() == []
        assert _stored(site) == set()


def _table(rows: int, seed: int, *, local: bool) -> pa.Table:
    rng = np.random.default_rng(seed)
    values = ["pc-a", "pc-b", "WVWZZZ1JZXW000001", None]
    clip = pa.array([values[i] for i in rng.integers(0, len(values), rows)], pa.string())
    if local:
        return pa.table(
            {
                "clip": clip,
                "t": rng.uniform(-5, 90_000, rows),
                "x": rng.normal(0, 30_000, rows),
                "y": rng.normal(0, 30_000, rows),
            }
        )
    return pa.table(
        {
            "clip": clip,
            "lat": rng.uniform(51.95, 52.15, rows),
            "lon": rng.uniform(12.95, 13.15, rows),
        }
    )


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 40), min_size=1, max_size=6),
    seed=st.integers(0, 2**16),
    local=st.booleans(),
    vin_in_metadata=st.booleans(),
    many_vins=st.booleans(),
)
def test_checks_by_part_equal_the_checks_of_each_part(
    sizes: list[int], seed: int, local: bool, vin_in_metadata: bool, many_vins: bool
) -> None:
    table = _table(sum(sizes), seed, local=local)
    offsets = np.r_[0, np.cumsum(sizes)].tolist()
    metadata = [
        b'{"clip": %d, "note": "%s"}' % (i, b"WVWZZZ1JZXW000002" if vin_in_metadata else b"-")
        for i in range(len(sizes))
    ]
    frames = [
        Check("no_unmasked_face_or_plate", i % 2 == 0, "f") if i % 3 else None
        for i in range(len(sizes))
    ]
    raw_vins = VINS | ({f"WVWZZZ1JZXW{n:06d}" for n in range(100, 300)} if many_vins else set())
    together = run_checks_by_part(
        table, offsets, metadata, raw_vins=raw_vins, zones=ZONES, frames=frames
    )
    alone = [
        run_checks(
            table.slice(start, end - start),
            metadata[i],
            raw_vins=raw_vins,
            zones=ZONES,
            frames=frames[i],
        )
        for i, (start, end) in enumerate(pairwise(offsets))
    ]
    assert together == alone
