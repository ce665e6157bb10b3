"""Where a clip was recorded is checked, not trusted: each rulebook's territory has a boundary on
the map, and ingest refuses a clip driven outside the boundary of its site's jurisdiction,
whatever its ``recorded_in`` says, storing nothing of it."""

from __future__ import annotations

import json
import pickle
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import shapely

from conftest import PLACES, make_clip
from onshore.clips.mcap import write_mcap
from onshore.clips.schema import SCHEMA, Clip
from onshore.errors import RulebookError
from onshore.fleet.networks import _location, load_network
from onshore.fleet.profiles import PROFILES
from onshore.ingest import Residency, ingest
from onshore.rulebook import Boundary, builtin, lint_builtin, lint_text, load_file, load_rulebooks
from onshore.rulebook.loader import _builtin_text
from onshore.settings import Project, load_project
from onshore.store import SiteStore

EU_SITE = "eu-frankfurt"

INSIDE = {
    "cn": {
        "Shanghai": (31.2304, 121.4737),
        "Beijing": (39.9042, 116.4074),
        "Shenzhen": (22.5431, 114.0579),
    },
    "eu": {
        "Berlin": (52.5200, 13.4050),
        "Paris": (48.8566, 2.3522),
        "Lisbon": (38.7223, -9.1393),
        "Helsinki": (60.1699, 24.9384),
        "Oslo": (59.9139, 10.7522),
        "Reykjavik": (64.1466, -21.9426),
        "Valletta": (35.8989, 14.5146),
    },
    "us": {
        "Seattle": (47.6062, -122.3321),
        "Miami": (25.7617, -80.1918),
        "Anchorage": (61.2181, -149.9003),
        "Honolulu": (21.3069, -157.8583),
    },
}
"""Cities each built-in boundary must hold."""

OUTSIDE = {
    "cn": {
        "Tokyo": (35.6762, 139.6503),
        "Seoul": (37.5665, 126.9780),
        # cn.yaml's territory is mainland China: Hong Kong and Taiwan are not in it.
        "Hong Kong (Central)": (22.2819, 114.1582),
        "Taipei": (25.0330, 121.5654),
    },
    "eu": {
        "London": (51.5074, -0.1278),
        "Zurich": (47.3769, 8.5417),  # 21 km from Germany: past the 10 km margin over land
        "Moscow": (55.7558, 37.6173),
    },
    "us": {
        "Toronto": (43.6532, -79.3832),
        "Mexico City": (19.4326, -99.1332),
        "San Juan, Puerto Rico": (18.4655, -66.1057),
    },
}
"""Cities each built-in boundary must leave out."""


def _boundary(name: str) -> Boundary:
    path = builtin(name).boundary_file
    assert path is not None, f"the built-in {name} rulebook names no boundary"
    return Boundary.load(path)


# --- the built-in boundaries ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cn", "eu", "us"])
def test_built_in_boundaries_hold_their_cities_and_leave_out_others(name: str) -> None:
    boundary = _boundary(name)
    for city, (lat, lon) in INSIDE[name].items():
        assert boundary.outside([lat], [lon]) is None, f"{city} should lie inside {name}"
    for city, (lat, lon) in OUTSIDE[name].items():
        assert boundary.outside([lat], [lon]) is not None, f"{city} should lie outside {name}"
    # Nobody's territory: the Atlantic, and the antimeridian on the equator.
    assert boundary.contains([0.0, 0.0], [-30.0, 180.0]).tolist() == [False, False]


@pytest.mark.parametrize("name", ["cn", "eu", "us"])
def test_built_in_boundary_files_are_small_and_say_where_they_come_from(name: str) -> None:
    path = builtin(name).boundary_file
    assert path is not None and path.parent.name == "territory"
    assert path.stat().st_size < 100_000
    (feature,) = json.loads(path.read_text(encoding="utf-8"))["features"]
    properties = feature["properties"]
    assert properties["jurisdiction"] == name.upper()
    assert properties["territory"] == list(builtin(name).territory)
    source = properties["source"]
    assert "Natural Earth" in source["name"] and "public domain" in source["licence"]
    assert len(source["commit"]) == 40 and len(source["sha256"]) == 64


@pytest.mark.slow
def test_the_fleet_simulator_drives_inside_each_region_s_territory(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # Each region's network, corners and centre, is where its simulated positions come from.
    cache = tmp_path_factory.mktemp("networks")
    for region, profile in PROFILES.items():
        network = load_network(profile.network, cache)
        x0, y0, x1, y1 = (float(v) for v in _location(network.path)["convBoundary"].split(","))
        x = np.array([x0, x1, x1, x0, network.centre[0]])
        y = np.array([y0, y0, y1, y1, network.centre[1]])
        lon, lat = network.georef.to_lonlat(x, y)
        boundary = _boundary(profile.jurisdiction.lower())
        outside = boundary.outside(lat, lon)
        assert outside is None, f"{region}'s network {profile.network} reaches {outside}"


def test_a_boundary_is_read_once_prepared_and_travels_prepared(tmp_path: Path) -> None:
    path = tmp_path / "square.geojson"
    path.write_text(_square(13.0, 52.0, 14.0, 53.0))
    first = Boundary.load(path)
    assert Boundary.load(tmp_path / "." / "square.geojson") is first
    assert shapely.is_prepared(first.area)
    again = pickle.loads(pickle.dumps(first))
    assert again.file == first.file and shapely.is_prepared(again.area)
    assert again.contains([52.5, 54.0], [13.5, 13.5]).tolist() == [True, False]
    # An edited file is read again.
    path.write_text(_square(0.0, 0.0, 1.0, 1.0) + "\n")
    assert Boundary.load(path).contains([0.5], [0.5]).tolist() == [True]


def test_positions_are_tested_fast_and_bad_coordinates_are_left_to_validation() -> None:
    boundary = _boundary("eu")
    clip = make_clip(1, steps=3000, recorded_in="EU")
    lat, lon = clip.table["lat"].to_numpy(), clip.table["lon"].to_numpy()
    # Lisbon and Helsinki by turns: inside, though their bounding box holds Britain, so each
    # position is tested on its own.
    far = np.resize([38.7223, 60.1699], 3000), np.resize([-9.1393, 24.9384], 3000)
    for positions in ((lat, lon), far):
        boundary.outside(*positions)
        started = time.perf_counter()
        for _ in range(20):
            assert boundary.outside(*positions) is None
        assert (time.perf_counter() - started) / 20 < 0.01, "3000 positions take under 10 ms"
    bad = lat.copy()
    bad[5], bad[6] = np.nan, 95.0
    assert boundary.outside(bad, lon) is None
    shanghai = np.full(10, 31.23), np.full(10, 121.47)
    found = boundary.outside(np.r_[lat[:90], shanghai[0]], np.r_[lon[:90], shanghai[1]])
    assert found is not None
    assert (found.count, found.of, found.first, found.lat, found.lon) == (
        10,
        100,
        90,
        31.23,
        121.47,
    )


# --- rulebooks name their boundary ---------------------------------------------------------------


def _square(lon0: float, lat0: float, lon1: float, lat1: float) -> str:
    ring = [[lon0, lat0], [lon1, lat0], [lon1, lat1], [lon0, lat1], [lon0, lat0]]
    return json.dumps({"type": "Polygon", "coordinates": [ring]})


BERLIN = (13.0, 52.3, 13.8, 52.7)
"""A box around Berlin: a user's own, much smaller, EU territory."""


def _berlin_rulebook(folder: Path, box: tuple[float, float, float, float] = BERLIN) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "berlin.geojson").write_text(_square(*box))
    path = folder / "eu-berlin.yaml"
    path.write_text('extends: eu\nversion: "2026.1-berlin"\nboundary: berlin.geojson\n')
    return path


def test_a_rulebook_that_extends_keeps_the_boundary_or_names_its_own(tmp_path: Path) -> None:
    plain = tmp_path / "eu-plain.yaml"
    plain.write_text('extends: eu\nversion: "2026.1-acme"\n')
    assert load_file(plain).boundary_file == builtin("eu").boundary_file
    own = load_rulebooks({"eu": _berlin_rulebook(tmp_path / "rules")})["eu"]
    assert own.boundary_file == tmp_path / "rules" / "berlin.geojson"
    # A copy of a built-in file keeps the built-in boundary: it names it as builtin:...
    copy = tmp_path / "elsewhere" / "us.yaml"
    copy.parent.mkdir()
    copy.write_text(_builtin_text("us"))
    assert load_file(copy).boundary_file == builtin("us").boundary_file


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "no such boundary file"),
        ("{not json", "not JSON"),
        ('{"type": "Point", "coordinates": [13.4, 52.5]}', "not a Polygon or MultiPolygon"),
        (
            '{"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": null}]}',
            "feature 0 is a feature without geometry",
        ),
        ('{"type": "Polygon", "coordinates": [[[13, 52], [14]]]}', "malformed coordinates"),
        (_square(1_000_000, 5_000_000, 1_100_000, 5_100_000), "beyond longitude -180..180"),
        (
            '{"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}',
            "not a valid polygon (Self-intersection",
        ),
    ],
)
def test_a_missing_or_malformed_boundary_is_a_clear_error(
    tmp_path: Path, content: str | None, reason: str
) -> None:
    target = tmp_path / "area.geojson"
    if content is not None:
        target.write_text(content)
    path = tmp_path / "mine.yaml"
    path.write_text('extends: eu\nversion: "9"\nboundary: area.geojson\n')
    with pytest.raises(RulebookError) as caught:
        load_file(path)
    message = caught.value.message
    assert message.startswith(f"{path}:3: boundary: {target}: "), message
    assert reason in message
    report = lint_text(path.read_text(), str(path))
    assert not report.ok and reason in report.errors[0].message


def test_lint_warns_that_without_a_boundary_ingest_cannot_check_positions() -> None:
    text = _builtin_text("eu").replace("boundary: builtin:territory/eu.geojson\n", "")
    warnings = [w.message for w in lint_text(text, "eu-no-map.yaml").warnings]
    assert any("no 'boundary': ingest cannot check" in w for w in warnings)
    for name in ("cn", "eu", "us"):
        assert not any("boundary" in w.message for w in lint_builtin(name).warnings)


# --- ingest --------------------------------------------------------------------------------------


def _write(folder: Path, name: str, **kwargs: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.mcap"
    write_mcap(make_clip(**kwargs), path)
    return path


def test_a_clip_labelled_eu_but_driven_in_shanghai_is_refused_and_nothing_else_lost(
    project: Project, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    for i in range(3):
        _write(inbox, f"good-{i}", seed=i, recorded_in="EU")
    lat, lon = PLACES["CN"]
    liar = _write(inbox, "liar", seed=7, clip_id="liar-1", recorded_in="EU", lat0=lat, lon0=lon)
    first = make_clip(7, recorded_in="EU", lat0=lat, lon0=lon).table.slice(0, 1)
    with SiteStore.open(project, EU_SITE) as site:
        report = ingest(site, [inbox])
        assert (report.files, report.clips) == (4, 3)
        (refused,) = report.quarantined
        reason = str(refused["reason"])
        assert refused["error"] == "clip.residency" and refused["quarantine"] is None
        assert reason.startswith(f"{liar}: clip liar-1: 120 of its 120 positions lie outside")
        assert f"site {EU_SITE}'s jurisdiction (EU)" in reason
        where = f"lat {first['lat'][0].as_py():.5f}, lon {first['lon'][0].as_py():.5f}"
        assert f"the first at row 0 ({where})" in reason
        assert "ingest it at the site of the region where it was recorded" in reason
        assert "fix the vehicle's GNSS" in reason
        # Nothing of it stored, not even in quarantine; the upload stays for its own site.
        assert liar.exists()
        assert {c.clip_id for c in site.catalogue.clips()} == {f"test-{i:05d}" for i in range(3)}
        assert list(site.objects.find("quarantine")) == []
        assert site.check(deep=True)["ok"]
        assert len(site.catalogue.ingested_files()) == 3


def test_a_clip_just_across_a_land_border_is_taken(project: Project, tmp_path: Path) -> None:
    # Basel's main station is in Switzerland, about 3 km from France and from Germany.
    path = _write(tmp_path / "in", "basel", seed=3, recorded_in="EU", lat0=47.5476, lon0=7.5897)
    with SiteStore.open(project, EU_SITE) as site:
        report = ingest(site, [path])
        assert (report.clips, report.quarantined) == (1, [])


def test_a_gnss_fix_that_jumps_away_is_refused_as_the_jump_it_is(
    project: Project, tmp_path: Path
) -> None:
    clip = make_clip(4, recorded_in="EU")
    lat = clip.table["lat"].to_numpy().copy()
    lon = clip.table["lon"].to_numpy().copy()
    lat[60], lon[60] = 0.0, 0.0  # one fix of 120 at "null island"
    path = tmp_path / "glitch.mcap"
    write_mcap(_moved(clip, lat, lon), path)
    with SiteStore.open(project, EU_SITE) as site:
        report = ingest(site, [path])
    (bad,) = report.quarantined
    assert bad["error"] == "clip.physics" and "jumps" in str(bad["reason"])
    assert bad["quarantine"] is not None, "a clip of this site with a bad fix is quarantined"


def _moved(clip: Clip, lat: np.ndarray, lon: np.ndarray) -> Clip:
    table = clip.table
    for name, values in (("lat", lat), ("lon", lon)):
        field = SCHEMA.field(name)
        table = table.set_column(SCHEMA.get_field_index(name), field, pa.array(values, field.type))
    return Clip(clip.meta, table)


def _override(project: Project, rulebook: Path) -> Project:
    config = project.root / "onshore.toml"
    relative = rulebook.relative_to(project.root)
    config.write_text(config.read_text() + f'\n[rulebooks.overrides]\neu = "{relative}"\n')
    return load_project(project.root)


def test_a_user_rulebook_s_own_boundary_is_the_one_ingest_checks(
    project: Project, tmp_path: Path
) -> None:
    project = _override(project, _berlin_rulebook(project.root / "rules"))
    inbox = tmp_path / "inbox"
    _write(inbox, "berlin", seed=1, clip_id="berlin", recorded_in="EU", lat0=52.52, lon0=13.40)
    frankfurt = _write(inbox, "frankfurt", seed=2, recorded_in="EU")
    with SiteStore.open(project, EU_SITE) as site:
        residency = Residency.of(project, EU_SITE)
        assert residency.boundary is not None
        assert residency.boundary.file.endswith("rules/berlin.geojson")
        report = ingest(site, [inbox])
        assert [c.clip_id for c in site.catalogue.clips()] == ["berlin"]
    (refused,) = report.quarantined
    assert refused["path"] == str(frankfurt) and refused["error"] == "clip.residency"


def test_a_clip_that_leaves_the_territory_in_its_last_second_is_refused(
    project: Project, tmp_path: Path
) -> None:
    # No share of positions abroad is tolerated: the margin is in the boundary already. Here
    # the border is drawn so that the last 10 of 1,200 positions (0.8%) lie past it.
    clip = make_clip(5, steps=1200, recorded_in="EU", lat0=52.40, lon0=13.20)
    lon = clip.table["lon"].to_numpy()
    assert (np.diff(lon) > 0).all()
    east = float(lon[1189] + lon[1190]) / 2
    box = (BERLIN[0], BERLIN[1], east, BERLIN[3])
    project = _override(project, _berlin_rulebook(project.root / "rules", box))
    path = tmp_path / "leaving.mcap"
    write_mcap(clip, path)
    with SiteStore.open(project, EU_SITE) as site:
        report = ingest(site, [path])
    (refused,) = report.quarantined
    assert refused["error"] == "clip.residency" and refused["quarantine"] is None
    assert "10 of its 1200 positions lie outside" in str(refused["reason"])
    assert "the first at row 1190" in str(refused["reason"])


def test_a_site_whose_rulebook_has_no_boundary_takes_the_label_on_trust(
    project: Project, tmp_path: Path
) -> None:
    rules = project.root / "rules" / "eu-no-map.yaml"
    rules.parent.mkdir()
    rules.write_text('extends: eu\nversion: "2026.1-nomap"\nboundary: null\n')
    project = _override(project, rules)
    lat, lon = PLACES["CN"]
    path = _write(tmp_path / "in", "far", seed=9, recorded_in="EU", lat0=lat, lon0=lon)
    with SiteStore.open(project, EU_SITE) as site:
        assert Residency.of(project, EU_SITE).boundary is None
        assert ingest(site, [path]).clips == 1
