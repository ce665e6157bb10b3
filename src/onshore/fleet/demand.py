"""Traffic demand: which vehicles drive where and when, and which of them are fleet vehicles.

Trips are drawn with SUMO's ``randomTrips.py``, once per vehicle type (in parallel) so each type
only starts and ends on lanes it may use; ``--validate`` routes every trip with ``duarouter``
and replaces the unroutable ones (random edge pairs on the OSM network often are). Twice the
needed trips are drawn and a seeded subset kept, so departures spread irregularly over the run.

Fleet vehicles are a seeded share of the passenger cars. Each gets a stable index, a VIN, a model
and a consent flag (a share of drivers has not consented to training), all drawn from generators
seeded with the run's seed, so the same arguments give the same fleet.
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

from onshore.clips.vin import make_vin
from onshore.errors import SimulationError
from onshore.fleet.profiles import FLEET_TYPE, RegionProfile, VehicleType
from onshore.fleet.sumo_tools import ToolRun, run_tools, sumo_tool

__all__ = ["Demand", "FleetVehicle", "apportion", "build_demand", "derive_seed"]

_OVERSAMPLE: Final = 2.0
"""Trips drawn per trip kept. ``randomTrips.py`` spaces departures evenly; keeping a seeded
subset of twice as many makes the gaps irregular, as real arrivals are."""
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
    fleet: tuple[FleetVehicle, ...]


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
) -> Demand:
    """Write the vType and routes files for one run into ``workdir``.

    ``vehicles`` depart between 0 and ``depart_end`` seconds. Raises :class:`SimulationError`
    when ``randomTrips.py`` fails.
    """
    vtypes = workdir / "vtypes.add.xml"
    vtypes.write_text(_vtype_xml(profile))
    wanted = apportion(vehicles, {vtype.id: vtype.share for vtype in profile.vehicle_types})
    runs = [
        _random_trips(profile, vtype, count, network, vtypes, depart_end, seed)
        for vtype in profile.vehicle_types
        if (count := wanted[vtype.id]) > 0
    ]
    run_tools(runs, cwd=workdir)
    rng = random.Random(derive_seed(profile.region, seed, "demand"))
    trips: list[_Trip] = []
    planned: dict[str, int] = {}
    for vtype in profile.vehicle_types:
        if wanted[vtype.id] == 0:
            planned[vtype.id] = 0
            continue
        drawn = _read_trips(workdir / f"{vtype.id}.trips.xml", vtype.id)
        kept = sorted(rng.sample(range(len(drawn)), min(wanted[vtype.id], len(drawn))))
        trips.extend(drawn[i] for i in kept)
        planned[vtype.id] = len(kept)
    trips.sort(key=lambda trip: (trip.depart, trip.id))
    trips, fleet = _pick_fleet(profile, trips, seed, fleet_share, no_consent_share)
    routes = workdir / "demand.rou.xml"
    routes.write_text(_routes_xml(trips))
    return Demand(routes=routes, vtypes=vtypes, planned=planned, fleet=fleet)


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
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise SimulationError(f"randomTrips.py wrote no readable trips for {vtype}: {exc}") from exc
    return [
        _Trip(
            id=element.attrib["id"],
            depart=float(element.attrib["depart"]),
            origin=element.attrib["from"],
            destination=element.attrib["to"],
            vtype=vtype,
        )
        for element in root.iter("trip")
    ]


def _pick_fleet(
    profile: RegionProfile,
    trips: list[_Trip],
    seed: int,
    fleet_share: float,
    no_consent_share: float,
) -> tuple[list[_Trip], tuple[FleetVehicle, ...]]:
    rng = random.Random(derive_seed(profile.region, seed, "fleet"))
    cars = [i for i, trip in enumerate(trips) if trip.vtype == profile.fleet_source]
    chosen = sorted(rng.sample(cars, round(fleet_share * len(cars))))
    refusing = set(rng.sample(range(len(chosen)), round(no_consent_share * len(chosen))))
    weights = [model.share for model in profile.models]
    fleet: list[FleetVehicle] = []
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
        trip = trips[position]
        renamed[position] = _Trip(sumo_id, trip.depart, trip.origin, trip.destination, FLEET_TYPE)
    return renamed, tuple(fleet)


def _routes_xml(trips: list[_Trip]) -> str:
    lines = ["<routes>"]
    # Vehicles enter as fast as is safe on the best lane for their route: traffic that drove
    # in from beyond the network, not cars pulling out of parking spaces everywhere.
    lines.extend(
        f"    <trip id={quoteattr(trip.id)} type={quoteattr(trip.vtype)} "
        f'depart="{trip.depart:.2f}" from={quoteattr(trip.origin)} '
        f'to={quoteattr(trip.destination)} departLane="best" departSpeed="max"/>'
        for trip in trips
    )
    lines.append("</routes>")
    return "\n".join(lines) + "\n"
