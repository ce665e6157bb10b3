"""Traffic demand: which vehicles drive where and when, and which of them are fleet vehicles.

Trips are drawn with SUMO's ``randomTrips.py``, once per vehicle type (in parallel) so each type
only starts and ends on lanes it may use; ``--validate`` routes every trip with ``duarouter``
and replaces the unroutable ones (random edge pairs on the OSM network often are). Twice the
needed trips are drawn and a seeded subset kept, so departures spread irregularly over the run.

Fleet vehicles are a seeded share of the passenger cars departing in the run's window. Each
drives a whole trip, departure to arrival, of a length drawn around its region's median
(log-normal): trips with 0 to 8 waypoints are routed, and each vehicle takes the unused one
nearest its drawn length. Traffic goes on at the same rate until every fleet vehicle can have
arrived, so the last ones do not drive through an emptied city. Each fleet vehicle gets a stable
index, a VIN, a model and a consent flag (a share of drivers has not consented to training), all
drawn from generators seeded with the run's seed, so the same arguments give the same fleet.
"""

from __future__ import annotations

import hashlib
import math
import random
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from xml.sax.saxutils import quoteattr

import numpy as np

from onshore.clips.vin import make_vin
from onshore.errors import SimulationError
from onshore.fleet.profiles import FLEET_TYPE, RegionProfile, VehicleType
from onshore.fleet.sumo_tools import ToolRun, read_output, run_tools, sumo_tool

__all__ = ["Demand", "FleetVehicle", "apportion", "build_demand", "derive_seed"]

_OVERSAMPLE: Final = 2.0
"""Trips drawn per trip kept. ``randomTrips.py`` spaces departures evenly; keeping a seeded
subset of twice as many makes the gaps irregular, as real arrivals are."""
_WAYPOINTS: Final = (0, 1, 2, 4, 6, 8)
"""Waypoints of the candidate fleet trips: from the direct trip to a long tour of the network,
so that every region's range of trip lengths has candidates."""
_TRIP_SIGMA: Final = 0.5
"""Spread (log-normal sigma) of fleet trip lengths around the region's median."""
_CAR_FOLLOWING: Final = "IDM"
"""SUMO's default (Krauss) brakes at its full deceleration for every stop, so almost every
window would hold a hard brake; IDM brakes progressively and exceeds its comfortable
deceleration only when it must, which is what a hard-brake trigger should catch."""


@dataclass(frozen=True, slots=True)
class FleetVehicle:
    """One recording vehicle of the carmaker's fleet."""

    index: int
    """Stable position in the fleet (by departure), used in clip ids."""
    sumo_id: str
    vin: str
    model: str
    model_year: int
    consent_training: bool


@dataclass(frozen=True, slots=True)
class Demand:
    """The files SUMO simulates and the fleet riding in them."""

    routes: Path
    vtypes: Path
    planned: Mapping[str, int]
    """Vehicles per vType id in the routes file (the fleet counted under its source type)."""
    in_window: Mapping[str, int]
    """Of those, the vehicles departing in the window the fleet departs in."""
    fleet: tuple[FleetVehicle, ...]
    trip_m: Mapping[str, float]
    """Routed length of each fleet vehicle's trip (metres), by SUMO id."""
    end: float
    """When traffic stops departing (seconds): the fleet's window, plus the time the longest
    fleet trip is planned to take."""


def derive_seed(*parts: object) -> int:
    """A 31-bit seed from the parts' text: stable across runs and platforms, unlike ``hash``."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFF_FFFF


def apportion(total: int, shares: Mapping[str, float]) -> dict[str, int]:
    """Split ``total`` by ``shares`` into integers summing to ``total`` (largest remainder)."""
    raw = {key: total * share for key, share in shares.items()}
    counts = {key: math.floor(value) for key, value in raw.items()}
    left = total - sum(counts.values())
    # Ties go to the earlier key so the split is deterministic.
    by_remainder = sorted(raw, key=lambda key: (-(raw[key] - counts[key]), list(raw).index(key)))
    for key in by_remainder[:left]:
        counts[key] += 1
    return counts


def _vtype_xml(profile: RegionProfile) -> str:
    lines = ["<additional>"]
    fleet_source = profile.vehicle_type(profile.fleet_source)
    for vtype in (*profile.vehicle_types, _fleet_type(fleet_source)):
        attrs = " ".join(f'{key}="{value:g}"' for key, value in vtype.params.items())
        common = f'vClass="{vtype.vclass}" carFollowModel="{_CAR_FOLLOWING}"'
        if vtype.id == FLEET_TYPE:
            # The FCD device: only fleet vehicles record, as only they have the sensors.
            lines.append(f'    <vType id="{vtype.id}" {common} {attrs}>')
            lines.append('        <param key="has.fcd.device" value="true"/>')
            lines.append("    </vType>")
        else:
            lines.append(f'    <vType id="{vtype.id}" {common} {attrs}/>')
    lines.append("</additional>")
    return "\n".join(lines) + "\n"


def _fleet_type(source: VehicleType) -> VehicleType:
    return VehicleType(FLEET_TYPE, source.vclass, source.object_class, 0.0, source.params)


@dataclass(frozen=True, slots=True)
class _Trip:
    id: str
    depart: float
    origin: str
    destination: str
    vtype: str
    via: str = ""
    """Waypoint edges, space-separated (a fleet vehicle's tour)."""


def build_demand(
    profile: RegionProfile,
    *,
    network: Path,
    vehicles: int,
    depart_end: float,
    seed: int,
    fleet_share: float,
    no_consent_share: float,
    workdir: Path,
    trip_km: float | None = None,
) -> Demand:
    """Write the vType and routes files for one run into ``workdir``.

    ``vehicles`` depart between 0 and ``depart_end`` seconds, the fleet among them, and traffic
    goes on at that rate until the fleet can have arrived. ``trip_km`` overrides the region's
    median fleet trip length. Raises :class:`SimulationError` when a SUMO tool fails.
    """
    vtypes = workdir / "vtypes.add.xml"
    vtypes.write_text(_vtype_xml(profile))
    wanted = apportion(vehicles, {vtype.id: vtype.share for vtype in profile.vehicle_types})
    median_m = 1000.0 * (profile.trips.fleet_trip_km if trip_km is None else trip_km)
    if not (math.isfinite(median_m) and median_m > 0):
        raise SimulationError(f"the fleet's trip length must be positive, not {trip_km} km")
    fleet_size = round(fleet_share * wanted[profile.fleet_source])
    lengths = _edge_lengths(network)
    tours = _fleet_tours(profile, fleet_size, network, vtypes, seed, workdir, lengths, median_m)
    longest = max((length for _trip, length in tours), default=0.0)
    end = depart_end + longest / profile.trips.fleet_speed_mps
    after = {key: round(count * (end - depart_end) / depart_end) for key, count in wanted.items()}
    total = {key: wanted[key] + after[key] for key in wanted}
    runs = [
        _random_trips(profile, vtype, total[vtype.id], network, vtypes, end, seed)
        for vtype in profile.vehicle_types
        if wanted[vtype.id] > 0
    ]
    run_tools(runs, cwd=workdir)
    rng = random.Random(derive_seed(profile.region, seed, "demand"))
    trips: list[_Trip] = []
    planned: dict[str, int] = {}
    in_window: dict[str, int] = {}
    for vtype in profile.vehicle_types:
        if wanted[vtype.id] == 0:
            planned[vtype.id] = in_window[vtype.id] = 0
            continue
        drawn = _read_trips(workdir / f"{vtype.id}.trips.xml", vtype.id)
        early = [trip for trip in drawn if trip.depart <= depart_end]
        late = [trip for trip in drawn if trip.depart > depart_end]
        # The window's count is exact, so the fleet's share of it is the share asked for.
        kept = [
            *rng.sample(early, min(wanted[vtype.id], len(early))),
            *rng.sample(late, min(after[vtype.id], len(late))),
        ]
        trips.extend(kept)
        planned[vtype.id] = len(kept)
        in_window[vtype.id] = min(wanted[vtype.id], len(early))
    trips.sort(key=lambda trip: (trip.depart, trip.id))
    trips, fleet, trip_m = _pick_fleet(
        profile, trips, depart_end, tours, seed, fleet_share, no_consent_share
    )
    routes = workdir / "demand.rou.xml"
    routes.write_text(_routes_xml(trips))
    return Demand(
        routes=routes,
        vtypes=vtypes,
        planned=planned,
        in_window=in_window,
        fleet=fleet,
        trip_m=trip_m,
        end=end,
    )


def _edge_lengths(network: Path) -> dict[str, float]:
    """Length (m) of every edge of ``network`` that is not inside a junction."""
    lengths: dict[str, float] = {}
    try:
        for _event, element in ET.iterparse(network):
            if element.tag == "edge":
                lane = element.find("lane")
                if element.get("function") != "internal" and lane is not None:
                    lengths[element.attrib["id"]] = float(lane.attrib["length"])
                element.clear()
    except (OSError, ET.ParseError, KeyError, ValueError) as exc:
        raise SimulationError(f"cannot read edge lengths from {network.name}: {exc}") from exc
    return lengths


def _fleet_tours(
    profile: RegionProfile,
    count: int,
    network: Path,
    vtypes: Path,
    seed: int,
    workdir: Path,
    lengths: Mapping[str, float],
    median_m: float,
) -> list[tuple[_Trip, float]]:
    """``count`` routable fleet trips and their routed lengths, each the candidate nearest (in
    ratio) to a length drawn around ``median_m``, in the order they were drawn."""
    if count == 0:
        return []
    source = profile.vehicle_type(profile.fleet_source)
    runs = [
        ToolRun(
            f"randomTrips.py (fleet, {waypoints} waypoints)",
            (
                str(sumo_tool("tools/randomTrips.py")),
                f"--net-file={network}",
                f"--additional-files={vtypes.name}",
                f"--output-trip-file=fleet{waypoints}.trips.xml",
                f"--route-file=fleet{waypoints}.rou.xml",
                f"--seed={derive_seed(profile.region, seed, 'fleet-trips', waypoints)}",
                f"--vclass={source.vclass}",
                f"--prefix=w{waypoints}_",
                f'--trip-attributes=type="{source.id}"',
                "--begin=0",
                f"--end={2 * count}",
                "--period=1",
                f"--intermediate={waypoints}",
                # Short errands are trips too: the region's minimum only where it is short.
                f"--min-distance={min(profile.trips.min_distance_m, median_m / 2):.0f}",
                f"--fringe-factor={profile.trips.fringe_factor}",
                "--validate",
            ),
        )
        for waypoints in _WAYPOINTS
    ]
    run_tools(runs, cwd=workdir)
    candidates: list[tuple[_Trip, float]] = []
    for waypoints in _WAYPOINTS:
        trips = _read_trips(workdir / f"fleet{waypoints}.trips.xml", source.id)
        routed = _route_lengths(workdir / f"fleet{waypoints}.rou.xml", lengths)
        candidates.extend((trip, routed[trip.id]) for trip in trips if trip.id in routed)
    if len(candidates) < count:
        raise SimulationError(
            f"only {len(candidates)} routable fleet trips on the network, {count} needed"
        )
    draw = np.random.default_rng(derive_seed(profile.region, seed, "trip-lengths"))
    targets = median_m * np.exp(_TRIP_SIGMA * draw.standard_normal(count))
    logs = np.log([length for _trip, length in candidates])
    free = np.ones(len(candidates), dtype=bool)
    chosen: list[tuple[_Trip, float]] = []
    for target in targets:
        gap = np.where(free, np.abs(logs - math.log(target)), np.inf)
        best = int(np.argmin(gap))
        free[best] = False
        chosen.append(candidates[best])
    return chosen


def _route_lengths(path: Path, lengths: Mapping[str, float]) -> dict[str, float]:
    """Routed length (m) of each vehicle in a ``duarouter`` routes file, by vehicle id."""
    root = read_output(path, "duarouter", "routes")
    routed: dict[str, float] = {}
    for vehicle in root.iter("vehicle"):
        route = vehicle.find("route")
        if route is not None:
            edges = route.attrib.get("edges", "").split()
            routed[vehicle.attrib["id"]] = sum(lengths.get(edge, 0.0) for edge in edges)
    return routed


def _random_trips(
    profile: RegionProfile,
    vtype: VehicleType,
    count: int,
    network: Path,
    vtypes: Path,
    depart_end: float,
    seed: int,
) -> ToolRun:
    period = depart_end / (count * _OVERSAMPLE)
    return ToolRun(
        f"randomTrips.py ({vtype.id})",
        (
            str(sumo_tool("tools/randomTrips.py")),
            f"--net-file={network}",
            f"--additional-files={vtypes.name}",
            f"--output-trip-file={vtype.id}.trips.xml",
            # Validation routes through this file; each type needs its own when run in parallel.
            f"--route-file={vtype.id}.rou.xml",
            f"--seed={derive_seed(profile.region, seed, 'trips', vtype.id)}",
            f"--vclass={vtype.vclass}",
            f"--prefix={vtype.id}_",
            # The type lets --validate route with the type's own vClass.
            f'--trip-attributes=type="{vtype.id}"',
            "--begin=0",
            f"--end={depart_end:.2f}",
            f"--period={period:.4f}",
            # Weight start and end edges by length: long roads carry more traffic than stubs.
            "--length",
            f"--min-distance={profile.trips.min_distance_m}",
            f"--fringe-factor={profile.trips.fringe_factor}",
            "--validate",
        ),
    )


def _read_trips(path: Path, vtype: str) -> list[_Trip]:
    root = read_output(path, "randomTrips.py", f"trips for {vtype}")
    return [
        _Trip(
            id=element.attrib["id"],
            depart=float(element.attrib["depart"]),
            origin=element.attrib["from"],
            destination=element.attrib["to"],
            vtype=vtype,
            via=element.attrib.get("via", ""),
        )
        for element in root.iter("trip")
    ]


def _pick_fleet(
    profile: RegionProfile,
    trips: list[_Trip],
    depart_end: float,
    tours: list[tuple[_Trip, float]],
    seed: int,
    fleet_share: float,
    no_consent_share: float,
) -> tuple[list[_Trip], tuple[FleetVehicle, ...], dict[str, float]]:
    """Make a share of the window's cars fleet vehicles, each driving one of ``tours`` (from
    its own departure time)."""
    rng = random.Random(derive_seed(profile.region, seed, "fleet"))
    cars = [
        i
        for i, trip in enumerate(trips)
        if trip.vtype == profile.fleet_source and trip.depart <= depart_end
    ]
    size = min(round(fleet_share * len(cars)), len(tours))
    chosen = sorted(rng.sample(cars, size))
    refusing = set(rng.sample(range(len(chosen)), round(no_consent_share * len(chosen))))
    weights = [model.share for model in profile.models]
    fleet: list[FleetVehicle] = []
    trip_m: dict[str, float] = {}
    renamed = list(trips)
    for index, position in enumerate(chosen):
        sumo_id = f"{FLEET_TYPE}{index:04d}"
        model = rng.choices(profile.models, weights)[0]
        year = rng.choice(profile.model_years)
        fleet.append(
            FleetVehicle(
                index=index,
                sumo_id=sumo_id,
                vin=make_vin(rng, model.wmi, model.vds, year, model.plant),
                model=model.name,
                model_year=year,
                consent_training=index not in refusing,
            )
        )
        tour, trip_m[sumo_id] = tours[index]
        depart = trips[position].depart
        renamed[position] = _Trip(
            sumo_id, depart, tour.origin, tour.destination, FLEET_TYPE, tour.via
        )
    return renamed, tuple(fleet), trip_m


def _routes_xml(trips: list[_Trip]) -> str:
    lines = ["<routes>"]
    # Vehicles enter as fast as is safe on the best lane for their route: traffic that drove
    # in from beyond the network, not cars pulling out of parking spaces everywhere.
    lines.extend(
        f"    <trip id={quoteattr(trip.id)} type={quoteattr(trip.vtype)} "
        f'depart="{trip.depart:.2f}" from={quoteattr(trip.origin)} '
        f"to={quoteattr(trip.destination)}"
        + (f" via={quoteattr(trip.via)}" if trip.via else "")
        + ' departLane="best" departSpeed="max"/>'
        for trip in trips
    )
    lines.append("</routes>")
    return "\n".join(lines) + "\n"
