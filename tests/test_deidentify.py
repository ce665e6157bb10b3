"""Classification and trajectory de-identification: labels with evidence, subjects per counting
window, profiles, and properties that hold for any drive (no raw VIN, no position in a zone, no
absolute coordinate or timestamp, trip ends trimmed)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from unittest.mock import patch

import numpy as np
import pyarrow as pa
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from onshore.classify import classify_clip, classify_site, label_clips
from onshore.classify.zones import Zones, parse_zones
from onshore.cli.app import app
from onshore.clips.geo import haversine
from onshore.clips.mcap import write_mcap
from onshore.clips.schema import OBJECT_TYPE, SCHEMA, Clip, ClipMeta
from onshore.clips.vin import make_vin
from onshore.deidentify import (
    BUILTIN_PROFILES,
    Profile,
    deidentify_site,
    read_output,
    resolve_profile,
)
from onshore.deidentify.checks import run_checks
from onshore.deidentify.trajectory import deidentify_vehicle, pseudonym
from onshore.errors import ConfigError
from onshore.ingest import ingest
from onshore.settings import Project
from onshore.sites.keystore import load_keystore
from onshore.store import SiteStore

SITE = "eu-frankfurt"
SECRET = b"k" * 32
T0 = np.datetime64("2026-03-02T08:00:00", "us").astype(np.int64)


def drive(
    vin_seed: int,
    *,
    clips: int = 6,
    steps: int = 200,
    lat0: float = 52.45,
    lon0: float = 13.50,
    heading: float = 60.0,
    speed: float = 12.0,
    start_s: float = 0.0,
) -> list[Clip]:
    """One vehicle's drive, straight at ``speed``, cut into consecutive clips."""
    n = clips * steps
    t = T0 + int(start_s * 1e6) + np.arange(n, dtype=np.int64) * 100_000
    dist = np.arange(n) * speed * 0.1
    lat = lat0 + dist * np.cos(np.radians(heading)) / 110_574
    lon = lon0 + dist * np.sin(np.radians(heading)) / (111_320 * np.cos(np.radians(lat0)))
    vin = make_vin(random.Random(vin_seed), "WVW", "ZZZ1K", 2026, "W")
    out = []
    for i in range(clips):
        part = slice(i * steps, (i + 1) * steps)
        objects = [[{"track_id": 1, "class": "car", "x": 15.0, "y": 0.0, "vx": 0.0, "vy": 0.0}]]
        table = pa.Table.from_arrays(
            [
                pa.array(t[part]).cast(SCHEMA.field("time").type),
                pa.array(lat[part]),
                pa.array(lon[part]),
                pa.array(np.full(steps, speed), pa.float32()),
                pa.array(np.full(steps, heading), pa.float32()),
                pa.array(np.zeros(steps), pa.float32()),
                pa.array(np.zeros(steps), pa.float32()),
                pa.nulls(steps, pa.float32()),
                pa.nulls(steps, pa.float32()),
                pa.array(objects * steps, pa.list_(OBJECT_TYPE)),
            ],
            schema=SCHEMA,
        )
        meta = ClipMeta(
            f"{vin}-{int(start_s)}-{i:03d}", vin, "ID.4", "random_sample", i % 2 == 0, SITE
        )
        out.append(Clip(meta, table))
    return out


def zone_around(lat: float, lon: float, radius_m: float, zone_id: str = "zone-1") -> bytes:
    circle = shapely.Point(lon, lat).buffer(radius_m / 111_320 / np.cos(np.radians(lat)))
    feature = {
        "type": "Feature",
        "geometry": shapely.geometry.mapping(circle),
        "properties": {"id": zone_id, "name": "test", "kind": "military"},
    }
    return json.dumps({"type": "FeatureCollection", "features": [feature]}).encode()


def test_labels_say_what_and_how_much() -> None:
    clip = drive(1, clips=1)[0]
    lat, lon = clip.table["lat"][50].as_py(), clip.table["lon"][50].as_py()
    zones = parse_zones(zone_around(lat, lon, 30), "test")
    labels = {label.category: label for label in classify_clip(clip, zones)}
    assert set(labels) == {"vehicle_id", "trajectory", "sensitive_area_geodata", "vehicle_flow"}
    inside = int(zones.inside(clip.table["lon"].to_numpy(), clip.table["lat"].to_numpy()).sum())
    assert 0 < inside < 200
    assert labels["sensitive_area_geodata"].count == inside
    assert (
        f"{inside} positions inside zone zone-1 (military)"
        in labels["sensitive_area_geodata"].evidence
    )
    assert labels["trajectory"].count == 200
    assert clip.meta.vin not in " ".join(label.evidence for label in labels.values())
    assert "sensitive_area_geodata" not in {
        label.category for label in classify_clip(clip, Zones(()))
    }


@pytest.fixture
def site(project: Project, tmp_path: Path) -> Iterator[SiteStore]:
    opened = SiteStore.open(project, SITE)
    yield opened
    opened.close()


def _ingest(site: SiteStore, tmp_path: Path, clips: list[Clip]) -> None:
    folder = tmp_path / "uploads"
    folder.mkdir(exist_ok=True)
    for clip in clips:
        write_mcap(clip, folder / f"{clip.meta.clip_id}.mcap")
    report = ingest(site, [folder])
    assert report.quarantined == []


def test_subjects_are_counted_per_window(site: SiteStore, tmp_path: Path) -> None:
    # One vehicle driving on 2025-12-31, one on 2026-01-01, one on 2025-11-28 (over a year ago
    # as of 2026-11-29 by one day... 366 days).
    days = {"a": "2025-12-31", "b": "2026-01-01", "c": "2025-11-28"}
    clips = []
    for seed, (name, day) in enumerate(days.items()):
        start = (np.datetime64(f"{day}T12:00:00", "us").astype(np.int64) - T0) / 1e6
        clips += drive(seed, clips=1, start_s=float(start))
        del name
    _ingest(site, tmp_path, clips)
    summary = classify_site(site, as_of=date(2026, 11, 29))
    assert summary["subjects"]["vehicles"] == 3
    assert summary["windows"]["calendar_year"]["vehicles"]["trajectory"] == 1
    assert summary["windows"]["trailing_12_months"]["vehicles"]["trajectory"] == 2
    assert summary["windows"]["trailing_12_months"]["from"] == "2025-11-29"
    edge = classify_site(site, as_of=date(2026, 11, 28))
    assert edge["windows"]["trailing_12_months"]["vehicles"]["trajectory"] == 3
    assert site.catalogue.inventory()["labels"]["trajectory"] == 3


def test_labels_are_found_once_per_clip_and_zones(site: SiteStore, tmp_path: Path) -> None:
    clips = drive(3, clips=2)
    _ingest(site, tmp_path, clips)
    lat, lon = clips[0].table["lat"][50].as_py(), clips[0].table["lon"][50].as_py()
    near = parse_zones(zone_around(lat, lon, 30), "near")
    records = site.catalogue.clips()
    fresh = {c.clip_id: c.labels for c in label_clips(site, records, zones=near)}
    # The second pass reads no clip: its labels come from the cache, and are the same.
    with patch("onshore.classify._read", side_effect=AssertionError("read again")):
        cached = {c.clip_id: c.labels for c in label_clips(site, records, zones=near)}
    assert cached == fresh
    assert any(x.category == "sensitive_area_geodata" for x in fresh[clips[0].meta.clip_id])
    # Other zones (or the same ones widened) are another key: labelled afresh, not from cache.
    for other in (Zones(()), near.buffered(500)):
        relabelled = {c.clip_id: c.labels for c in label_clips(site, records, zones=other)}
        expected = {c.meta.clip_id: tuple(classify_clip(c, other)) for c in clips}
        assert relabelled == expected
    assert not any(
        x.category == "sensitive_area_geodata"
        for labels in label_clips(site, records, zones=Zones(()))
        for x in labels.labels
    )


def test_profiles_are_checked() -> None:
    assert set(BUILTIN_PROFILES) == {"training", "export"}
    with pytest.raises(ConfigError, match="unknown transform 'blur'"):
        resolve_profile("mine", {"mine": [{"name": "blur"}]})
    with pytest.raises(ConfigError, match=r"trim_ends has no parameter 'km'"):
        resolve_profile("mine", {"mine": [{"name": "trim_ends", "km": 1}]})
    with pytest.raises(ConfigError, match="non-negative number"):
        resolve_profile("mine", {"mine": [{"name": "drop_zones", "buffer_m": -5}]})
    with pytest.raises(ConfigError, match="add to_local"):
        resolve_profile("mine", {"mine": [{"name": "coarsen"}]})
    with pytest.raises(ConfigError, match="profiles: export, training"):
        resolve_profile("nope", {})
    mine = resolve_profile("training", {"training": [{"name": "trim_ends", "metres": 100}]})
    assert mine.step("trim_ends") is not None and mine.step("to_local") is None


def test_pseudonyms_are_keyed_and_stable() -> None:
    assert pseudonym(SECRET, "vehicle", "V1") == pseudonym(SECRET, "vehicle", "V1")
    assert pseudonym(SECRET, "vehicle", "V1") != pseudonym(b"x" * 32, "vehicle", "V1")
    assert pseudonym(SECRET, "vehicle", "V1") != pseudonym(SECRET, "clip", "V1")


drives = st.builds(
    lambda seed, lat, lon, heading, speed, clips, zone_at, radius, gap: (
        drive(seed, clips=clips, lat0=lat, lon0=lon, heading=heading, speed=speed)
        + drive(seed, clips=2, lat0=lat, lon0=lon, heading=heading, speed=speed, start_s=gap),
        zone_at,
        radius,
    ),
    seed=st.integers(0, 10_000),
    lat=st.floats(-60, 60),
    lon=st.floats(-170, 170),
    heading=st.floats(0, 359.9),
    speed=st.floats(0.5, 35),
    clips=st.integers(1, 5),
    zone_at=st.floats(0, 1),
    radius=st.floats(5, 300),
    gap=st.floats(3_600, 90_000),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=drives, profile=st.sampled_from(["training", "export"]))
def test_no_raw_vin_zone_position_or_absolute_coordinate_survives(
    case: tuple[list[Clip], float, float], profile: str
) -> None:
    clips, zone_at, radius = case
    raw = pa.concat_tables([c.table for c in clips])
    i = int(zone_at * (raw.num_rows - 1))
    zones = parse_zones(zone_around(raw["lat"][i].as_py(), raw["lon"][i].as_py(), radius), "t")
    chosen = BUILTIN_PROFILES[profile]
    out = deidentify_vehicle(clips, chosen, secret=SECRET, zones=zones)
    table = out.table
    assert {"lat", "lon", "time"}.isdisjoint(table.column_names)
    checks = {
        c.check: c for c in run_checks(table, b"{}", raw_vins={clips[0].meta.vin}, zones=zones)
    }
    assert all(c.held for c in checks.values()), checks
    if table.num_rows:
        assert table["t"].to_numpy().min() >= 0
    # The same profile without to_local/coarsen keeps the very same rows, with their absolute
    # positions and times: look at those.
    absolute = Profile(
        "absolute", tuple(s for s in chosen.steps if s.name not in ("to_local", "coarsen"))
    )
    kept = deidentify_vehicle(clips, absolute, secret=SECRET, zones=zones).table
    assert kept.num_rows == table.num_rows
    buffer, trimmed = chosen.step("drop_zones"), chosen.step("trim_ends")
    assert buffer is not None and trimmed is not None
    grown = zones.buffered(buffer.params["buffer_m"])
    assert not grown.inside(kept["lon"].to_numpy(), kept["lat"].to_numpy()).any()
    from_start, to_end = _distance_to_trip_ends(raw, kept)
    assert (from_start >= trimmed.params["metres"]).all()
    assert (to_end >= trimmed.params["metres"]).all()


def _distance_to_trip_ends(raw: pa.Table, kept: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """For each kept row, metres driven since its trip began and until it ended (trips split
    at gaps over 5 minutes), computed from the raw drive independently of the code under test."""
    order = np.argsort(raw["time"].cast(pa.int64()).to_numpy(), kind="stable")
    t = raw["time"].cast(pa.int64()).to_numpy()[order]
    lat, lon = raw["lat"].to_numpy()[order], raw["lon"].to_numpy()[order]
    travelled, starts_at, ends_at = [0.0], [0], []
    for k in range(1, len(t)):
        if t[k] - t[k - 1] > 300e6:
            ends_at.append(k - 1)
            starts_at.append(k)
            travelled.append(travelled[-1])
        else:
            travelled.append(
                travelled[-1]
                + float(
                    haversine(lat[k - 1 : k], lon[k - 1 : k], lat[k : k + 1], lon[k : k + 1])[0]
                )
            )
    ends_at.append(len(t) - 1)
    where = {int(v): k for k, v in enumerate(t)}
    trip_of = np.searchsorted(np.asarray(starts_at), np.arange(len(t)), side="right") - 1
    dist = np.asarray(travelled)
    rows = [where[int(v)] for v in kept["time"].cast(pa.int64()).to_numpy()]
    trips = trip_of[rows]
    from_start = dist[rows] - dist[np.asarray(starts_at)[trips]]
    to_end = dist[np.asarray(ends_at)[trips]] - dist[rows]
    return from_start, to_end


def test_deidentify_site_end_to_end(project: Project, site: SiteStore, tmp_path: Path) -> None:
    clips = drive(1, clips=8) + drive(2, clips=8, lat0=52.46, heading=200)
    middle = clips[3].table
    site.keep_reference_zones(
        zone_around(middle["lat"][100].as_py(), middle["lon"][100].as_py(), 40)
    )
    _ingest(site, tmp_path, clips)
    secret = load_keystore(project.keystore_path(project.site(SITE))).hmac_secret
    summary = deidentify_site(site, BUILTIN_PROFILES["training"], secret=secret)
    assert summary["state"] == "pseudonymized"
    assert summary["removed"]["drop_zones"] > 0 and summary["removed"]["trim_ends"] > 0
    assert summary["rows"] + sum(summary["removed"].values()) == summary["rows_in"]
    assert {c["check"] for c in summary["checks"]} >= {"no_raw_vin", "no_position_in_zone"}
    records = site.catalogue.deidentified("training")
    assert records and all(r.state == "pseudonymized" for r in records)
    for path in {r.path for r in records}:
        data = site.objects.read(path)
        table, record = read_output(data)
        assert all(clip.meta.vin.encode() not in data for clip in clips)
        assert record["state"] == "pseudonymized" and record["vehicle"].startswith("pv-")
        assert set(table["clip"].to_pylist()) <= set(record["clips"])
    raw_paths = {c.path for c in site.catalogue.clips()}
    assert all(site.objects.exists(p) for p in raw_paths), "raw clips are kept as they are"

    export = deidentify_site(site, BUILTIN_PROFILES["export"], secret=secret)
    assert export["state"] == "anonymized"
    again = deidentify_site(site, BUILTIN_PROFILES["training"], secret=secret)
    assert again["rows"] == summary["rows"]
    outputs = set(site.objects.find("deidentified/training"))
    assert outputs == {r.path for r in site.catalogue.deidentified("training")}


def test_cli_classify_and_deidentify(project: Project, site: SiteStore, tmp_path: Path) -> None:
    _ingest(site, tmp_path, drive(3, clips=10))
    runner = CliRunner()
    base = ["--project", str(project.root), "--site", SITE, "--json"]
    classified = runner.invoke(app, ["classify", *base, "--as-of", "2026-11-29"])
    assert classified.exit_code == 0, classified.output
    found = json.loads(classified.stdout)
    assert found["categories"]["trajectory"]["clips"] == 10
    assert found["rulebook"]["jurisdiction"] == "EU"
    assert "personal_data" in found["categories"]["trajectory"]["legal_classes"]
    result = runner.invoke(app, ["deidentify", *base, "--profile", "export"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    for key in ("site", "profile", "clips", "state", "checks"):
        assert key in summary
    assert summary["state"] == "anonymized" and all(c["held"] for c in summary["checks"])
    bad = runner.invoke(app, ["classify", *base, "--as-of", "yesterday"])
    assert bad.exit_code != 0


def test_vin_check_finds_vins_as_tokens_not_digit_runs_inside_digests() -> None:
    """Regression: a vehicle pseudonym whose hex held 17 digits in a row with a valid check
    digit was taken for a VIN and failed a whole site's de-identification."""
    from onshore.classify.zones import Zones
    from onshore.clips.vin import is_valid_vin
    from onshore.deidentify.checks import run_checks

    assert is_valid_vin("35267227993360202")
    empty = pa.table({"clip": pa.array([], pa.string())})
    no_zones = Zones(())

    def held(metadata: bytes, raw: set[str]) -> bool:
        (check,) = [
            c
            for c in run_checks(empty, metadata, raw_vins=raw, zones=no_zones)
            if c.check == "no_raw_vin"
        ]
        return check.held

    assert held(b'{"vehicle":"pv-6570b3526722799336020229"}', set())
    assert not held(b'{"note":"vin 35267227993360202"}', set())
    # The site's own VINs are found even inside a longer token.
    assert not held(b'{"x":"abc1HGCM82633A004352z"}', {"1HGCM82633A004352"})
