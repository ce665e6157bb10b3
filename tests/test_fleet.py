"""The fleet simulator: SUMO runs per region, and the clips, zones and manifest they produce.

Each region is simulated once per session (small runs, a few seconds each); the determinism
tests re-run the fastest region. The ego-frame geometry and the upload triggers are also checked
on hand-made floating-car data, where the right answer is known exactly.
"""

from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import shapely

from conftest import write_clips
from onshore.clips.mcap import read_mcap
from onshore.clips.schema import OBJECT_CLASSES, SCHEMA, TRIGGERS, Clip
from onshore.clips.validate import validate_clip
from onshore.clips.vin import is_valid_vin, make_vin
from onshore.errors import ConfigError, SimulationError
from onshore.fleet import PROFILES, REGIONS, SimulationResult, fleet_statistics, simulate_fleet
from onshore.fleet.clips import FCD_COLUMNS, ClipSettings, cut_clips
from onshore.fleet.demand import FleetVehicle, apportion
from onshore.fleet.networks import Georeference
from onshore.fleet.stats import ks_statistic
from onshore.fleet.sumo_tools import ToolRun, run_tool, sumo_binary
from onshore.ingest import ingest
from onshore.settings import Project
from onshore.store import SiteStore

pytestmark = pytest.mark.slow

VEHICLES = 200
MINUTES = 4.0
TRIP_KM = 1.5
"""Shorter than the regions' own trips, to keep the simulations quick."""
SEED = 7

# (min lon, min lat, max lon, max lat) around each city, wider than any network placed in it.
CITY_BOUNDS = {
    "cn": (121.40, 31.18, 121.55, 31.28),  # central Shanghai
    "eu": (13.35, 52.38, 13.65, 52.50),  # south-east Berlin
    "us": (-122.78, 45.45, -122.58, 45.58),  # Portland, Oregon
}


@dataclass(frozen=True)
class Run:
    result: SimulationResult
    clips: list[Clip]
    stages: list[tuple[str, float]]


def _simulate(region: str, out: Path, cache: Path, seed: int = SEED) -> Run:
    stages: list[tuple[str, float]] = []
    result = simulate_fleet(
        region,
        vehicles=VEHICLES,
        minutes=MINUTES,
        seed=seed,
        out=out,
        recorded_in=region.upper(),
        trip_km=TRIP_KM,
        cache_dir=cache,
        progress=lambda stage, fraction: stages.append((stage, fraction)),
    )
    clips = [read_mcap(path.read_bytes(), path.name) for path in result.clips]
    return Run(result, clips, stages)


@pytest.fixture(scope="session")
def network_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("networks")


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory, network_cache: Path) -> dict[str, Run]:
    # Two regions at a time: SUMO runs in a process of its own, so the simulations share the
    # machine's two cores. Each region's network goes to its own file in the cache.
    folders = {region: tmp_path_factory.mktemp(f"fleet-{region}") for region in REGIONS}
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = pool.map(lambda r: _simulate(r, folders[r], network_cache), REGIONS)
        return dict(zip(REGIONS, done, strict=True))


@pytest.fixture(params=REGIONS)
def run(request: pytest.FixtureRequest, runs: dict[str, Run]) -> Run:
    return runs[str(request.param)]


# --- arguments ----------------------------------------------------------------------------------


def test_unknown_region_is_a_config_error_naming_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cn, eu, us"):
        simulate_fleet("mars", vehicles=10, minutes=1, seed=1, out=tmp_path, recorded_in="X")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("field", "value"),
    [("vehicles", 0), ("minutes", -1.0), ("fleet_share", 1.5), ("clip_seconds", 1.0)],
)
def test_bad_parameters_are_config_errors(tmp_path: Path, field: str, value: float) -> None:
    params: dict[str, Any] = {"vehicles": 10, "minutes": 1.0, field: value}
    with pytest.raises(ConfigError, match=field):
        simulate_fleet("us", seed=1, out=tmp_path, recorded_in="US", **params)


def test_a_failing_sumo_tool_raises_simulation_error_with_its_stderr(tmp_path: Path) -> None:
    with pytest.raises(SimulationError, match=r"sumo failed with exit code \d+: .*missing\.net"):
        run_tool(
            ToolRun("sumo", (str(sumo_binary("sumo")), "--net-file=missing.net.xml")),
            cwd=tmp_path,
        )


def test_profiles_are_consistent() -> None:
    for profile in PROFILES.values():
        assert sum(vtype.share for vtype in profile.vehicle_types) == pytest.approx(1.0)
        assert all(vtype.object_class in OBJECT_CLASSES for vtype in profile.vehicle_types)
        assert profile.vehicle_type(profile.fleet_source).vclass == "passenger"
        assert 3 <= len(profile.zones) <= 5
        assert sum(model.share for model in profile.models) == pytest.approx(1.0)


def test_apportion_sums_to_the_total() -> None:
    shares = {"car": 0.5, "bus": 0.1, "moped": 0.2, "bicycle": 0.2}
    for total in (0, 1, 7, 40, 333):
        counts = apportion(total, shares)
        assert sum(counts.values()) == total
        assert all(abs(counts[k] - total * s) < 1 for k, s in shares.items())


def test_ks_statistic() -> None:
    a = np.arange(100, dtype=np.float64)
    assert ks_statistic(a, a.copy()) == 0.0
    assert ks_statistic(a, a + 1000) == 1.0
    assert ks_statistic(a, a + 50) == pytest.approx(0.5)


# --- clips from hand-made floating-car data ----------------------------------------------------

_UTM33 = "+proj=utm +zone=33 +datum=WGS84 +units=m +no_defs"


def _fcd(rows: list[tuple[float, str, float, float, float, str, float, str, float]]) -> pa.Table:
    return pa.table({name: [row[i] for row in rows] for i, name in enumerate(FCD_COLUMNS)})


def _cut(table: pa.Table, random_upload_share: float) -> list[Clip]:
    vin = make_vin(random.Random(0), "WVW", "ZZZE1", 2026, "W")
    fleet = [FleetVehicle(0, "fleet0000", vin, "Volkswagen ID.3", 2026, True)]
    return cut_clips(
        table,
        fleet,
        {"fleet": "car", "car": "car", "bicycle": "bicycle"},
        Georeference(_UTM33, -398790.46, -5809246.45),
        ClipSettings(
            region="eu",
            seed=1,
            recorded_in="EU",
            epoch_us=0,
            random_upload_share=random_upload_share,
        ),
    ).clips


def test_objects_are_in_the_ego_frame() -> None:
    rows = []
    for step in range(60):
        t = step / 10
        # Ego drives east at 10 m/s; a car 20 m ahead at 12 m/s; a bicycle 5 m to its right
        # (south) riding north at 4 m/s; a car 100 m behind, out of sensor range.
        rows += [
            (t, "fleet0000", 1000 + 10 * t, 500.0, 90.0, "fleet", 10.0, "e1_1", 0.0),
            (t, "car_1", 1020 + 12 * t, 500.0, 90.0, "car", 12.0, "e1_1", 0.0),
            (t, "bike_1", 1000 + 10 * t, 495.0, 0.0, "bicycle", 4.0, "x_0", 0.0),
            (t, "car_2", 900 + 10 * t, 500.0, 90.0, "car", 10.0, "e1_1", 0.0),
        ]
    (clip,) = _cut(_fcd(rows), random_upload_share=1.0)
    validate_clip(clip, "synthetic")
    first = clip.table["objects"][0].as_py()
    car = next(o for o in first if o["class"] == "car")
    bike = next(o for o in first if o["class"] == "bicycle")
    assert (car["x"], car["y"], car["vx"], car["vy"]) == pytest.approx((20, 0, 2, 0), abs=1e-4)
    assert (bike["x"], bike["y"]) == pytest.approx((0, -5), abs=1e-4)
    # Relative velocity: north at 4 m/s minus east at 10 m/s is 10 back and 4 to the left.
    assert (bike["vx"], bike["vy"]) == pytest.approx((-10, 4), abs=1e-4)
    # Track ids are clip-local, nearest first: the bicycle (5 m) before the car (20 m).
    assert (bike["track_id"], car["track_id"]) == (1, 2)
    assert clip.table["heading"][0].as_py() == pytest.approx(90.0)
    assert clip.meta.trigger == "random_sample"
    assert clip.meta.simulated is True
    assert clip.rows == 60


def test_windows_and_triggers() -> None:
    rows = []
    for step in range(450):
        t = step / 10
        accel = -4.0 if step == 100 else 0.0  # one hard brake in the first window
        lane = "e2_1" if 250 <= step < 260 else ("e2_0" if step >= 260 else "e1_0")
        rows.append((t, "fleet0000", 10 * t, 0.0, 90.0, "fleet", 10.0, lane, accel))
    clips = _cut(_fcd(rows), random_upload_share=0.0)
    # 45 s: windows of 20 s, 20 s and 5 s; the third is uneventful and not sampled.
    assert [c.meta.clip_id for c in clips] == ["eu-1-0000-000", "eu-1-0000-001"]
    assert [c.meta.trigger for c in clips] == ["hard_brake", "lane_change"]
    assert [c.rows for c in clips] == [200, 200]
    brake = clips[0].table["brake"].to_numpy()
    assert brake[100] == pytest.approx(4 / 6) and brake[99] == 0.0
    times = pc.cast(clips[1].table["time"], pa.int64()).to_numpy()
    assert times[0] == 20_000_000 and (np.diff(times) == 100_000).all()


def test_a_missing_step_starts_a_new_drive() -> None:
    rows = [
        (step / 10, "fleet0000", float(step), 0.0, 90.0, "fleet", 10.0, "e_0", 0.0)
        for step in [*range(100), *range(150, 250)]
    ]
    clips = _cut(_fcd(rows), random_upload_share=1.0)
    assert [c.rows for c in clips] == [100, 100]


def test_yaw_rate_follows_heading_through_north() -> None:
    rows = []
    for step in range(100):
        heading = (350.0 + 2.0 * step) % 360.0  # turning right at 20 deg/s through north
        rows.append((step / 10, "fleet0000", 0.0, float(step), heading, "fleet", 5.0, "e_0", 0.0))
    (clip,) = _cut(_fcd(rows), random_upload_share=1.0)
    yaw = clip.table["yaw_rate"].to_numpy()
    assert yaw[10:-10] == pytest.approx(20.0, abs=1e-3)
    steering = clip.table["steering"].to_numpy()
    assert steering[50] == pytest.approx(np.arctan(2.8 * np.radians(20.0) / 5.0), abs=1e-4)


# --- simulated regions -------------------------------------------------------------------------


def test_clips_decode_validate_and_match_their_files(run: Run) -> None:
    assert run.clips, "the fleet uploaded nothing"
    for path, clip in zip(run.result.clips, run.clips, strict=True):
        validate_clip(clip, path.name)
        assert clip.table.schema.equals(SCHEMA, check_metadata=False)
        assert path.name == f"{clip.meta.clip_id}.mcap"
        assert clip.meta.recorded_in == run.result.region.upper()
        assert clip.meta.trigger in TRIGGERS
        assert clip.meta.sensor_range_m == 80.0
        assert clip.meta.simulated is True
        assert 50 <= clip.rows <= 200
        assert is_valid_vin(clip.meta.vin)
    assert run.result.rows == sum(clip.rows for clip in run.clips)
    assert len({clip.meta.clip_id for clip in run.clips}) == len(run.clips)


def test_a_simulated_fleet_is_catalogued_as_simulated(
    runs: dict[str, Run], project: Project, tmp_path: Path
) -> None:
    us = runs["us"]
    vehicles = write_clips(tmp_path / "vehicles", 2, recorded_in="US")
    with SiteStore.open(project, "us-oregon") as site:
        report = ingest(site, [*us.result.clips, *vehicles], remove_quarantined_source=False)
        assert (report.clips, report.quarantined) == (len(us.clips) + 2, [])
        flags = {c.clip_id: c.simulated for c in site.catalogue.clips()}
        assert {flags[clip.meta.clip_id] for clip in us.clips} == {True}
        assert (flags["test-00000"], flags["test-00001"]) == (False, False)
        assert site.catalogue.clip_origins() == {"simulated": len(us.clips), "recorded": 2}


def test_vins_and_models_belong_to_the_region(run: Run) -> None:
    profile = PROFILES[run.result.region]
    wmis = {model.wmi: model.name for model in profile.models}
    for clip in run.clips:
        assert wmis[clip.meta.vin[:3]] == clip.meta.vehicle_model


def test_positions_are_in_the_region_s_city(run: Run) -> None:
    lon0, lat0, lon1, lat1 = CITY_BOUNDS[run.result.region]
    for clip in run.clips:
        lat, lon = clip.table["lat"].to_numpy(), clip.table["lon"].to_numpy()
        assert ((lat0 < lat) & (lat < lat1) & (lon0 < lon) & (lon < lon1)).all()


def test_objects_are_within_sensor_range_with_stable_tracks(run: Run) -> None:
    assert sum(len(pc.list_flatten(c.table["objects"])) for c in run.clips) > 0
    for clip in run.clips:
        lists = clip.table["objects"].combine_chunks()
        objects = pc.list_flatten(lists)
        if not len(objects):
            continue
        x = pc.struct_field(objects, "x").to_numpy()
        y = pc.struct_field(objects, "y").to_numpy()
        assert (np.hypot(x, y) <= 80.0 + 1e-3).all()
        tracks = pc.struct_field(objects, "track_id").to_numpy()
        parents = pc.list_parent_indices(lists).to_numpy()
        # One entry per track per step, ids numbered from 1 in order of first appearance.
        assert len(set(zip(parents.tolist(), tracks.tolist(), strict=True))) == len(tracks)
        first_seen = np.unique(tracks, return_index=True)[1]
        assert (np.unique(tracks) == np.arange(1, len(first_seen) + 1)).all()
        assert (np.diff(first_seen) >= 0).all()


def test_consent_is_per_vehicle_and_about_the_share_asked_for(run: Run) -> None:
    result = run.result
    assert result.fleet_without_consent == round(0.15 * result.fleet_vehicles)
    by_vin: dict[str, set[bool]] = {}
    for clip in run.clips:
        by_vin.setdefault(clip.meta.vin, set()).add(clip.meta.consent_training)
    assert all(len(flags) == 1 for flags in by_vin.values())
    consenting = sum(flags == {True} for flags in by_vin.values())
    assert 0 < consenting < len(by_vin) or result.fleet_without_consent == 0


def test_fleet_is_the_share_of_cars_asked_for(run: Run) -> None:
    result = run.result
    manifest = json.loads(result.manifest.read_text())
    counts = manifest["counts"]
    source = PROFILES[result.region].fleet_source
    # The fleet is the share of the cars departing in the window; traffic then goes on.
    assert result.fleet_vehicles == round(0.3 * counts["vehicles_in_window"][source])
    assert sum(counts["vehicles_in_window"].values()) == VEHICLES
    assert counts["vehicles_planned"][source] >= counts["vehicles_in_window"][source]
    assert result.vehicles_inserted >= 0.9 * sum(counts["vehicles_planned"].values())


def test_every_fleet_vehicle_drives_a_whole_trip(run: Run) -> None:
    result = run.result
    trips = json.loads(result.manifest.read_text())["fleet_trips"]
    assert result.fleet_vehicles > 0
    assert result.fleet_arrived == result.fleet_vehicles, "every trip ends at its destination"
    assert 0.6 * TRIP_KM <= trips["median_km"] <= 1.6 * TRIP_KM
    assert result.simulated_s > MINUTES * 60, "the run lasts until the fleet has arrived"
    # Each vehicle's clips run from its departure to its arrival, minutes apart.
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for clip in run.clips:
        vin, times = clip.meta.vin, clip.table["time"]
        first[vin] = min(first.get(vin, times[0].value), times[0].value)
        last[vin] = max(last.get(vin, times[-1].value), times[-1].value)
    spans = [(last[vin] - first[vin]) / 1e6 for vin in first]
    assert np.median(spans) > 60, "a trip of a kilometre and a half takes minutes"


def test_zones_cover_fleet_positions(run: Run) -> None:
    collection = json.loads(run.result.zones.read_text())
    assert collection["type"] == "FeatureCollection"
    features = collection["features"]
    assert 3 <= len(features) <= 5
    polygons = []
    for number, feature in enumerate(features, start=1):
        assert feature["properties"]["id"] == f"zone-{number}"
        assert {"name", "kind", "buffer_m"} <= set(feature["properties"])
        assert 50 <= feature["properties"]["buffer_m"] <= 150
        polygon = shapely.geometry.shape(feature["geometry"])
        assert polygon.is_valid and polygon.exterior.is_ccw
        polygons.append(polygon)
    zones = shapely.union_all(polygons)
    lat = np.concatenate([clip.table["lat"].to_numpy() for clip in run.clips])
    lon = np.concatenate([clip.table["lon"].to_numpy() for clip in run.clips])
    inside = shapely.contains_xy(zones, lon, lat)
    assert inside.any() and not inside.all()


def test_manifest_lists_what_was_written(run: Run) -> None:
    result = run.result
    manifest = json.loads(result.manifest.read_text())
    assert manifest["region"] == result.region and manifest["seed"] == SEED
    assert manifest["network"]["name"] == result.network
    assert manifest["files"]["clips"] == [path.name for path in result.clips]
    assert manifest["files"]["zones"] == result.zones.name
    counts = manifest["counts"]
    assert counts["clips"] == len(result.clips) and counts["rows"] == result.rows
    assert counts["vehicles_inserted"] == result.vehicles_inserted
    assert counts["triggers"] == result.triggers
    assert sum(result.triggers.values()) == len(result.clips)
    assert manifest["params"]["vehicles"] == VEHICLES
    assert not list(result.manifest.parent.glob(".*.partial"))


def test_progress_reports_every_stage(run: Run) -> None:
    stages = [stage for stage, _ in run.stages]
    for stage in ("network", "trips", "sumo", "clips", "zones"):
        assert (stage, 1.0) in run.stages
    order = [stages.index(s) for s in ("network", "trips", "sumo", "clips", "zones")]
    assert order == sorted(order)


def test_regions_drive_differently(runs: dict[str, Run]) -> None:
    stats = {region: fleet_statistics(run.clips) for region, run in runs.items()}
    cn, us = stats["cn"], stats["us"]
    assert us.speed_mean > 1.5 * cn.speed_mean
    # The median: leaders far ahead (a queue at a red light) make the mean a noisy figure.
    assert cn.headway_p50 < us.headway_p50
    assert cn.two_wheeler_share > 0.1 > us.two_wheeler_share
    assert cn.bus_share > us.bus_share
    assert ks_statistic(cn.speeds, us.speeds) > 0.3


# --- determinism -------------------------------------------------------------------------------


def _bytes(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


@pytest.fixture(scope="session")
def rerun(tmp_path_factory: pytest.TempPathFactory, network_cache: Path) -> Run:
    return _simulate("us", tmp_path_factory.mktemp("fleet-us-again"), network_cache)


def test_same_arguments_write_identical_bytes(runs: dict[str, Run], rerun: Run) -> None:
    first = _bytes(runs["us"].result.zones.parent)
    second = _bytes(rerun.result.zones.parent)
    assert first.keys() == second.keys()
    assert first == second


def test_another_seed_writes_other_clips(
    runs: dict[str, Run], tmp_path: Path, network_cache: Path
) -> None:
    other = _simulate("us", tmp_path, network_cache, seed=SEED + 1)
    assert _bytes(runs["us"].result.zones.parent) != _bytes(other.result.zones.parent)
    first_vins = {clip.meta.vin for clip in runs["us"].clips}
    assert first_vins != {clip.meta.vin for clip in other.clips}


def test_a_run_with_no_fleet_vehicle_uploads_nothing(tmp_path: Path) -> None:
    result = simulate_fleet(
        "us", vehicles=2, minutes=0.5, seed=1, out=tmp_path, recorded_in="US", fleet_share=0.01
    )
    assert result.clips == [] and result.rows == 0 and result.fleet_vehicles == 0
    assert json.loads(result.zones.read_text())["type"] == "FeatureCollection"
