"""Simulate one region's traffic with SUMO and write what its fleet uploads.

The run goes: road network (built once and cached) → random trips per vehicle type, a share of
the cars made fleet vehicles, each driving a whole trip of its region's length → SUMO at 10 Hz
until every vehicle has arrived, floating-car data written only for fleet vehicles
and what is within sensor range of them → clips cut from each fleet vehicle's drive → one MCAP
file per clip, the sensitive areas as GeoJSON, and a manifest. Everything random is seeded from
the run's seed, so the same arguments write byte-identical clips and zones.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from onshore.clips.recorder import UploadFormat, write_upload
from onshore.clips.schema import TRIGGERS, Clip
from onshore.errors import ConfigError, SimulationError
from onshore.files import write_atomically
from onshore.fleet.camera import CameraSettings, PlateStyle, render_frames
from onshore.fleet.clips import FCD_COLUMNS, ClipBatch, ClipSettings, cut_clips
from onshore.fleet.demand import FleetVehicle, build_demand, derive_seed
from onshore.fleet.networks import load_network
from onshore.fleet.profiles import get_profile
from onshore.fleet.sumo_tools import ToolRun, read_output, run_tool, sumo_binary, sumo_version
from onshore.fleet.zones import place_zones, zones_geojson
from onshore.settings import SiteSettings

__all__ = ["Progress", "SimulationResult", "simulate_fleet", "simulate_site"]

Progress = Callable[[str, float], None]
"""Called with a stage (``network``, ``trips``, ``sumo``, ``clips``, ``zones``) and the fraction
of that stage done (0..1)."""

STEP_LENGTH: Final = 0.1
"""Seconds per simulation step: the 10 Hz at which vehicles log."""
SENSOR_RANGE_M: Final = 80.0
_DEPART_SHARE: Final = 0.85
"""The fleet departs during this share of the minutes asked for."""
_ZONES_FILE: Final = "sensitive_areas.geojson"
_MANIFEST_FILE: Final = "manifest.json"


@dataclass(frozen=True, slots=True)
class SimulationResult:
    """What one simulation wrote and how much traffic it had."""

    region: str
    seed: int
    network: str
    """Name of the road network (``berlin-osm``, ``shanghai-grid``, ``portland-arterials``)."""
    clips: list[Path]
    """One MCAP file per uploaded clip, in order of fleet vehicle and time."""
    zones: Path
    """The sensitive areas, a GeoJSON FeatureCollection of WGS-84 polygons."""
    manifest: Path
    vehicles_inserted: int
    """Vehicles of every class that entered the simulation."""
    fleet_vehicles: int
    fleet_without_consent: int
    rows: int
    """Ego rows (10 Hz steps) over all clips."""
    triggers: dict[str, int]
    """Clips per upload trigger."""
    frames: int = 0
    """Camera frames over all clips."""
    simulated_s: float = 0.0
    """Simulated seconds: until the last vehicle arrived."""
    fleet_arrived: int = 0
    """Fleet vehicles that reached their destination (the rest were removed by SUMO, stuck)."""


def _check(
    vehicles: int,
    minutes: float,
    fleet_share: float,
    no_consent_share: float,
    clip_seconds: float,
    camera_share: float,
) -> None:
    if vehicles < 1:
        raise ConfigError(f"vehicles must be at least 1, not {vehicles}")
    if not (math.isfinite(minutes) and minutes > 0):
        raise ConfigError(f"minutes must be a positive number, not {minutes}")
    if not 0.0 < fleet_share <= 1.0:
        raise ConfigError(f"fleet_share must be above 0 and at most 1, not {fleet_share}")
    if not 0.0 <= no_consent_share <= 1.0:
        raise ConfigError(f"no_consent_share must be between 0 and 1, not {no_consent_share}")
    if not (math.isfinite(clip_seconds) and clip_seconds >= 5.0):
        raise ConfigError(f"clip_seconds must be at least 5, not {clip_seconds}")
    if not 0.0 <= camera_share <= 1.0:
        raise ConfigError(f"camera_share must be between 0 and 1, not {camera_share}")


def epoch_start(seed: int, utc_offset_hours: int) -> datetime:
    """When simulation time 0 is on the clock: a morning between 07:00 and 10:00 local time in
    March 2026, the day and minute drawn from ``seed``."""
    day = datetime(2026, 3, 2, 7, tzinfo=UTC) - timedelta(hours=utc_offset_hours)
    offset = derive_seed("epoch", seed)
    return day + timedelta(days=offset % 28, minutes=(offset // 28) % 180)


def simulate_fleet(
    region: str,
    *,
    vehicles: int,
    minutes: float,
    seed: int,
    out: Path,
    recorded_in: str,
    fleet_share: float = 0.3,
    no_consent_share: float = 0.15,
    clip_seconds: float = 20.0,
    camera_share: float = 0.1,
    camera: CameraSettings = CameraSettings(),
    trip_km: float | None = None,
    upload_format: UploadFormat = "onshore",
    cache_dir: Path | None = None,
    progress: Progress | None = None,
) -> SimulationResult:
    """Simulate ``region``'s traffic, ``vehicles`` vehicles departing over ``minutes``, until
    every vehicle has arrived, and write the fleet's clips.

    ``fleet_share`` of the passenger cars are fleet vehicles, each driving one whole trip (its
    length drawn around the region's median, or ``trip_km``); ``no_consent_share`` of those have
    drivers who did not consent to training; the event uploads (not the random samples) of
    ``camera_share`` of them carry front-camera frames (:mod:`onshore.fleet.camera`). Writes
    ``<clip_id>.mcap`` per clip, ``sensitive_areas.geojson`` and ``manifest.json`` into
    ``out``.

    Raises :class:`ConfigError` for an unknown region or a bad parameter, and
    :class:`SimulationError` (with SUMO's own message) when a SUMO tool fails.
    """
    profile = get_profile(region)
    _check(vehicles, minutes, fleet_share, no_consent_share, clip_seconds, camera_share)

    def report(stage: str, fraction: float) -> None:
        if progress is not None:
            progress(stage, fraction)

    if trip_km is not None and not (math.isfinite(trip_km) and trip_km > 0):
        raise ConfigError(f"trip_km must be a positive number, not {trip_km}")
    window = minutes * 60.0
    report("network", 0.0)
    network = load_network(profile.network, cache_dir)
    report("network", 1.0)
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"onshore-fleet-{region}-"))
    try:
        report("trips", 0.0)
        demand = build_demand(
            profile,
            network=network.path,
            vehicles=vehicles,
            depart_end=window * _DEPART_SHARE,
            seed=seed,
            fleet_share=fleet_share,
            no_consent_share=no_consent_share,
            workdir=workdir,
            trip_km=trip_km,
        )
        report("trips", 1.0)
        report("sumo", 0.0)
        fcd_path, stats_path = workdir / "fcd.parquet", workdir / "statistics.xml"
        trips_path = workdir / "tripinfo.xml"
        run_tool(
            ToolRun(
                "sumo",
                (
                    str(sumo_binary("sumo")),
                    f"--net-file={network.path}",
                    f"--additional-files={demand.vtypes.name}",
                    f"--route-files={demand.routes.name}",
                    f"--step-length={STEP_LENGTH}",
                    # No end: the run lasts until every vehicle has arrived (SUMO removes one
                    # stuck for five minutes), so every fleet trip is whole.
                    "--begin=0",
                    f"--seed={derive_seed(region, seed, 'sumo')}",
                    f"--fcd-output={fcd_path.name}",
                    "--fcd-output.acceleration",
                    "--fcd-output.attributes=x,y,angle,type,speed,lane,acceleration",
                    # Only fleet vehicles carry the FCD device (their vType says so; without
                    # probability 0 every vehicle would), and it also logs what is around them.
                    "--device.fcd.probability=0",
                    f"--device.fcd.radius={SENSOR_RANGE_M}",
                    # Lane changes take time and move the car sideways, as a driver's do.
                    "--lanechange.duration=2",
                    f"--statistic-output={stats_path.name}",
                    f"--tripinfo-output={trips_path.name}",
                    "--ignore-route-errors",
                    "--no-step-log",
                    "--no-warnings",
                ),
            ),
            cwd=workdir,
        )
        report("sumo", 1.0)
        inserted = _inserted(stats_path)
        arrivals = _arrivals(trips_path, {vehicle.sumo_id for vehicle in demand.fleet})
        table = _read_fcd(fcd_path)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    settings = ClipSettings(
        region=region,
        seed=seed,
        recorded_in=recorded_in,
        epoch_us=int(epoch_start(seed, profile.utc_offset_hours).timestamp()) * 1_000_000,
        clip_seconds=clip_seconds,
        step_length=STEP_LENGTH,
        sensor_range_m=SENSOR_RANGE_M,
    )
    stale = _previous_clips(out / _MANIFEST_FILE)
    report("clips", 0.0)
    batch = (
        cut_clips(table, demand.fleet, profile.object_classes(), network.georef, settings)
        if table is not None
        else ClipBatch.empty()
    )
    with_camera = _camera_vehicles(demand.fleet, camera_share, region, seed)
    style: PlateStyle = _PLATE_STYLES.get(profile.jurisdiction, "eu")
    paths: list[Path] = []
    frames = 0
    for number, clip in enumerate(batch.clips, start=1):
        if _films(clip, with_camera):
            table, _ = render_frames(clip, style, camera)
            clip = replace(clip, frames=table)
            frames += table.num_rows
        path = out / f"{clip.meta.clip_id}.mcap"
        partial = path.with_name(f".{path.name}.partial")
        write_upload(clip, partial, upload_format)
        # A clip appears under its name only once it is complete.
        partial.replace(path)
        paths.append(path)
        report("clips", number / len(batch.clips))
    report("clips", 1.0)

    report("zones", 0.0)
    placed = place_zones(batch.x, batch.y, profile.zones, network.centre)
    zones = out / _ZONES_FILE
    write_atomically(zones, zones_geojson(placed, network.georef))
    report("zones", 1.0)

    triggers = Counter(clip.meta.trigger for clip in batch.clips)
    trigger_counts = {name: triggers.get(name, 0) for name in TRIGGERS}
    rows = sum(clip.rows for clip in batch.clips)
    result = SimulationResult(
        region=region,
        seed=seed,
        network=network.name,
        clips=paths,
        zones=zones,
        manifest=out / _MANIFEST_FILE,
        vehicles_inserted=inserted,
        fleet_vehicles=len(demand.fleet),
        fleet_without_consent=sum(not vehicle.consent_training for vehicle in demand.fleet),
        rows=rows,
        triggers=trigger_counts,
        frames=frames,
        simulated_s=max((a.arrival for a in arrivals.values()), default=0.0),
        fleet_arrived=sum(a.arrived for a in arrivals.values()),
    )
    planned_km = sorted(length / 1000 for length in demand.trip_m.values())
    driven_min = sorted(a.duration / 60 for a in arrivals.values() if a.arrived)
    manifest = {
        "region": region,
        "jurisdiction": profile.jurisdiction,
        "city": profile.city,
        "recorded_in": recorded_in,
        "seed": seed,
        "network": {
            "name": network.name,
            "description": network.description,
            "file": network.path.name,
            "sumo_version": sumo_version(),
        },
        "params": {
            "vehicles": vehicles,
            "minutes": minutes,
            "fleet_share": fleet_share,
            "no_consent_share": no_consent_share,
            "clip_seconds": clip_seconds,
            "camera_share": camera_share,
            "trip_km": trip_km,
            "camera": {
                "width": camera.width,
                "height": camera.height,
                "focal_px": camera.focal_px,
                "rate_hz": camera.rate_hz,
            },
            "step_length_s": STEP_LENGTH,
            "sensor_range_m": SENSOR_RANGE_M,
        },
        "epoch_start": epoch_start(seed, profile.utc_offset_hours).isoformat(),
        "counts": {
            "vehicles_requested": vehicles,
            "vehicles_planned": dict(demand.planned),
            "vehicles_inserted": inserted,
            "fleet_vehicles": result.fleet_vehicles,
            "fleet_without_consent": result.fleet_without_consent,
            "clips": len(paths),
            "clips_with_frames": sum(_films(clip, with_camera) for clip in batch.clips),
            "frames": frames,
            "rows": rows,
            "objects": sum(len(pc.list_flatten(clip.table["objects"])) for clip in batch.clips),
            "triggers": trigger_counts,
            "vehicles_in_window": dict(demand.in_window),
            "fleet_arrived": result.fleet_arrived,
        },
        "fleet_trips": {
            "median_km": round(_median(planned_km), 2),
            "longest_km": round(planned_km[-1], 2) if planned_km else 0.0,
            "median_minutes": round(_median(driven_min), 1),
            "longest_minutes": round(driven_min[-1], 1) if driven_min else 0.0,
            "traffic_departs_until_s": round(demand.end, 1),
        },
        "files": {"clips": [path.name for path in paths], "zones": zones.name},
    }
    write_atomically(
        result.manifest,
        orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n",
    )
    # Clips an earlier simulation wrote here and this one did not: the folder now holds this
    # run's uploads only. Files the simulator did not write are left alone.
    for name in stale - {path.name for path in paths}:
        (out / name).unlink(missing_ok=True)
    return result


_PLATE_STYLES: Final[dict[str, PlateStyle]] = {"CN": "cn", "EU": "eu", "US": "us"}


def _camera_vehicles(
    fleet: Sequence[FleetVehicle], share: float, region: str, seed: int
) -> set[str]:
    """VINs of the fleet vehicles that upload camera frames: ``share`` of them, drawn from the
    seed so that the same simulation equips the same vehicles."""
    if share <= 0 or not fleet:
        return set()
    draw = np.random.default_rng(derive_seed(region, seed, "cameras"))
    return {vehicle.vin for vehicle in fleet if draw.random() < share}


def _films(clip: Clip, with_camera: set[str]) -> bool:
    """Whether ``clip`` carries camera frames: an event's upload (a hard brake, a lane change)
    from a vehicle with the camera. Fleets send video around events, not with every sample."""
    return clip.meta.vin in with_camera and clip.meta.trigger != "random_sample"


def _previous_clips(manifest: Path) -> set[str]:
    """Clip files an earlier simulation listed in ``manifest`` (none if there is no such file)."""
    try:
        files = orjson.loads(manifest.read_bytes())["files"]["clips"]
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError):
        return set()
    return {name for name in files if isinstance(name, str) and "/" not in name}


def simulate_site(
    site: SiteSettings,
    *,
    vehicles: int,
    minutes: float,
    seed: int,
    out: Path,
    progress: Progress | None = None,
    camera_share: float | None = None,
    trip_km: float | None = None,
    upload_format: UploadFormat | None = None,
) -> SimulationResult:
    """:func:`simulate_fleet` for a site of a project: its region profile and fleet settings
    (``camera_share``, ``trip_km`` and ``upload_format`` override the site's and the
    region's), its clips recorded in the site."""
    return simulate_fleet(
        site.region_profile,
        vehicles=vehicles,
        minutes=minutes,
        seed=seed,
        out=out,
        recorded_in=site.id,
        fleet_share=site.fleet.fleet_share,
        no_consent_share=site.fleet.no_consent_share,
        clip_seconds=site.fleet.clip_seconds,
        camera_share=site.fleet.camera_share if camera_share is None else camera_share,
        camera=CameraSettings(rate_hz=site.fleet.camera_hz),
        trip_km=trip_km,
        upload_format=site.fleet.upload_format if upload_format is None else upload_format,
        progress=progress,
    )


def _read_fcd(path: Path) -> pa.Table | None:
    """SUMO's floating-car data, or None when no fleet vehicle was on the road (SUMO then
    writes no file, or one with the time column only)."""
    if not path.is_file() or not path.stat().st_size:
        return None
    if not set(FCD_COLUMNS) <= set(pq.read_schema(path).names):
        return None
    return pq.read_table(path, columns=list(FCD_COLUMNS))


def _inserted(statistics: Path) -> int:
    """Vehicles SUMO inserted, from its ``--statistic-output``."""
    element = read_output(statistics, "sumo", "statistics").find("vehicles")
    if element is None:
        raise SimulationError("sumo's statistics have no <vehicles> element")
    return int(element.attrib.get("inserted", "0"))


@dataclass(frozen=True, slots=True)
class _Arrival:
    arrival: float
    """Simulated second the vehicle left the network."""
    duration: float
    arrived: bool
    """Whether it reached its destination, rather than being removed while stuck."""


def _arrivals(tripinfo: Path, vehicles: set[str]) -> dict[str, _Arrival]:
    """How each of ``vehicles`` ended its trip, from SUMO's ``--tripinfo-output``."""
    root = read_output(tripinfo, "sumo", "trip information")
    found: dict[str, _Arrival] = {}
    for element in root.iter("tripinfo"):
        if element.get("id") in vehicles:
            found[element.attrib["id"]] = _Arrival(
                arrival=float(element.attrib["arrival"]),
                duration=float(element.attrib["duration"]),
                arrived=element.get("vaporized", "") == "",
            )
    return found


def _median(values: Sequence[float]) -> float:
    return float(np.median(values)) if values else 0.0
