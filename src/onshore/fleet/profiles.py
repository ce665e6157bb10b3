"""How traffic differs by region: road network, vehicle mix, driver behaviour, the fleet itself.

The differences are what make the regions' data non-IID, the situation federated learning has to
cope with: a forecasting model trained on Shanghai's dense, slow, two-wheeler-heavy traffic with
short headways should do worse on Portland's wide, fast arterials with long gaps, and the other
way round. The numbers are SUMO vType attributes for the IDM car-following model and the LC2013
lane-change model:

- ``tau``: the driver's desired time headway (s); ``minGap``: standstill gap (m);
- ``speedFactor``/``speedDev``: mean and spread of the chosen speed relative to the limit, drawn
  once per vehicle;
- ``accel``: maximum acceleration; ``decel``: the comfortable deceleration IDM aims for, which
  it exceeds only when a situation demands it, up to ``emergencyDecel`` (m/s^2);
- ``lcAssertive`` (accepts smaller gaps), ``lcSpeedGain`` (changes lanes to go faster),
  ``lcCooperative`` (makes room for others), ``lcKeepRight`` (returns to the right lane).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from onshore.errors import ConfigError

__all__ = [
    "FLEET_TYPE",
    "PROFILES",
    "REGIONS",
    "FleetModel",
    "RegionProfile",
    "TripOptions",
    "VehicleType",
    "ZoneSpec",
    "get_profile",
]

FLEET_TYPE: Final = "fleet"
"""The vType id of fleet vehicles: they drive like the region's cars and carry the FCD device."""


@dataclass(frozen=True, slots=True)
class VehicleType:
    """One class of vehicle in a region's traffic."""

    id: str
    """SUMO vType id; also the prefix of its vehicles' ids."""
    vclass: str
    """SUMO vehicle class: decides which lanes it may use."""
    object_class: str
    """What a fleet vehicle's perception reports it as (one of ``OBJECT_CLASSES``)."""
    share: float
    """Share of all vehicles in traffic (a region's shares sum to 1)."""
    params: Mapping[str, float] = field(default_factory=dict)
    """SUMO vType attributes: size, car following and lane changing."""


@dataclass(frozen=True, slots=True)
class FleetModel:
    """A model the carmaker sells in the region, and how its VINs are built."""

    name: str
    wmi: str
    """World manufacturer identifier (first three VIN characters)."""
    vds: str
    """Vehicle descriptor section (VIN characters 4-8)."""
    plant: str
    """Assembly plant code (VIN character 11)."""
    share: float
    """Share of the fleet."""


@dataclass(frozen=True, slots=True)
class TripOptions:
    """How random trips are drawn on the network (``randomTrips.py`` options)."""

    min_distance_m: float
    """Straight-line distance a trip must cover, so drives are long enough to cut clips from."""
    fringe_factor: float
    """Weight of edges at the network's edge: higher means more through traffic."""
    fleet_trip_km: float
    """Median length of a fleet vehicle's trip, departure to arrival. Lengths are drawn around
    it (log-normal), so some trips are short errands and some long commutes."""
    fleet_speed_mps: float
    """A fleet trip's mean speed, stops included (as measured on the region's network): traffic
    departs until the longest fleet trip can have ended at this speed."""


@dataclass(frozen=True, slots=True)
class ZoneSpec:
    """A sensitive area: a stand-in for the sites Chinese law names (military administrative
    zones, defence-industry units, party and government organs)."""

    kind: str
    name: str
    radius_m: float


@dataclass(frozen=True, slots=True)
class RegionProfile:
    """Everything that makes one region's simulated traffic what it is."""

    region: str
    """``cn``, ``eu`` or ``us``."""
    jurisdiction: str
    """``CN``, ``EU`` or ``US``: the law the region's clips fall under."""
    city: str
    network: str
    """Name of the road network (see :mod:`onshore.fleet.networks`)."""
    utc_offset_hours: int
    """Local time offset in March, so simulated clips start in the local morning peak."""
    vehicle_types: tuple[VehicleType, ...]
    fleet_source: str
    """The vType whose vehicles can be fleet vehicles (the passenger cars)."""
    models: tuple[FleetModel, ...]
    model_years: tuple[int, ...]
    trips: TripOptions
    zones: tuple[ZoneSpec, ...]

    def vehicle_type(self, type_id: str) -> VehicleType:
        """The vehicle type with SUMO id ``type_id``; raises ``KeyError`` when there is none."""
        for vtype in self.vehicle_types:
            if vtype.id == type_id:
                return vtype
        raise KeyError(type_id)

    def object_classes(self) -> dict[str, str]:
        """SUMO vType id to the object class perception reports, the fleet type included."""
        classes = {vtype.id: vtype.object_class for vtype in self.vehicle_types}
        classes[FLEET_TYPE] = self.vehicle_type(self.fleet_source).object_class
        return classes


def _params(**values: float) -> Mapping[str, float]:
    return MappingProxyType(values)


_CN: Final = RegionProfile(
    region="cn",
    jurisdiction="CN",
    city="Shanghai",
    network="shanghai-grid",
    utc_offset_hours=8,
    vehicle_types=(
        VehicleType(
            "car",
            "passenger",
            "car",
            0.50,
            _params(
                length=4.7,
                minGap=1.2,
                tau=0.6,
                accel=2.8,
                decel=2.7,
                emergencyDecel=8.0,
                speedFactor=0.95,
                speedDev=0.15,
                lcAssertive=2.0,
                lcSpeedGain=2.0,
                lcCooperative=0.4,
                lcKeepRight=0.2,
            ),
        ),
        VehicleType(
            "bus",
            "bus",
            "bus",
            0.10,
            _params(
                length=12.0,
                minGap=2.0,
                tau=1.0,
                accel=1.2,
                decel=2.5,
                emergencyDecel=7.0,
                speedFactor=0.9,
                speedDev=0.1,
                lcAssertive=1.5,
                lcSpeedGain=0.5,
                lcCooperative=0.5,
            ),
        ),
        VehicleType(
            "truck",
            "truck",
            "truck",
            0.04,
            _params(
                length=8.0,
                minGap=2.0,
                tau=1.0,
                accel=1.3,
                decel=2.5,
                emergencyDecel=7.0,
                speedFactor=0.85,
                speedDev=0.1,
            ),
        ),
        # Electric mopeds and scooters: the two-wheelers that fill Chinese city streets.
        VehicleType(
            "moped",
            "moped",
            "motorcycle",
            0.20,
            _params(
                length=1.9,
                width=0.7,
                minGap=1.0,
                tau=0.6,
                accel=2.5,
                decel=3.5,
                emergencyDecel=8.0,
                maxSpeed=12.5,
                speedFactor=1.0,
                speedDev=0.2,
                lcAssertive=3.0,
                lcSpeedGain=3.0,
                lcCooperative=0.2,
            ),
        ),
        VehicleType(
            "bicycle",
            "bicycle",
            "bicycle",
            0.16,
            _params(
                length=1.7,
                width=0.65,
                minGap=0.8,
                tau=0.8,
                accel=1.2,
                decel=2.0,
                emergencyDecel=6.0,
                maxSpeed=5.5,
                speedFactor=1.0,
                speedDev=0.2,
            ),
        ),
    ),
    fleet_source="car",
    models=(
        FleetModel("SAIC Volkswagen ID.4 X", "LSV", "AG4E2", "N", 0.6),
        FleetModel("FAW-Volkswagen ID.4 CROZZ", "LFV", "3B2E5", "C", 0.4),
    ),
    model_years=(2024, 2025, 2026),
    # Car trips in central Shanghai are short and slow: lights every 100 m, queues.
    trips=TripOptions(
        min_distance_m=1200.0, fringe_factor=2.0, fleet_trip_km=4.5, fleet_speed_mps=4.0
    ),
    zones=(
        ZoneSpec("military", "Garrison compound (simulated military administrative zone)", 90.0),
        ZoneSpec("government", "District government compound (simulated)", 70.0),
        ZoneSpec("defence_industry", "Shipbuilding research institute (simulated)", 80.0),
        ZoneSpec("military", "Naval logistics depot (simulated)", 60.0),
    ),
)

_EU: Final = RegionProfile(
    region="eu",
    jurisdiction="EU",
    city="Berlin",
    network="berlin-osm",
    utc_offset_hours=1,
    vehicle_types=(
        VehicleType(
            "car",
            "passenger",
            "car",
            0.72,
            _params(
                length=4.5,
                minGap=2.5,
                tau=1.1,
                accel=2.6,
                decel=2.8,
                emergencyDecel=9.0,
                speedFactor=1.0,
                speedDev=0.1,
                lcAssertive=1.0,
                lcSpeedGain=1.0,
                lcCooperative=0.9,
                lcKeepRight=1.0,
            ),
        ),
        VehicleType(
            "bus",
            "bus",
            "bus",
            0.06,
            _params(
                length=12.0,
                minGap=2.5,
                tau=1.2,
                accel=1.2,
                decel=2.2,
                emergencyDecel=7.0,
                speedFactor=0.95,
                speedDev=0.05,
            ),
        ),
        VehicleType(
            "truck",
            "truck",
            "truck",
            0.06,
            _params(
                length=9.0,
                minGap=2.5,
                tau=1.3,
                accel=1.2,
                decel=2.2,
                emergencyDecel=7.0,
                speedFactor=0.95,
                speedDev=0.05,
            ),
        ),
        VehicleType(
            "bicycle",
            "bicycle",
            "bicycle",
            0.13,
            _params(
                length=1.8,
                width=0.65,
                minGap=1.0,
                tau=1.0,
                accel=1.2,
                decel=2.0,
                emergencyDecel=6.0,
                maxSpeed=6.0,
                speedFactor=1.0,
                speedDev=0.15,
            ),
        ),
        VehicleType(
            "motorcycle",
            "motorcycle",
            "motorcycle",
            0.03,
            _params(
                length=2.2,
                width=0.9,
                minGap=1.5,
                tau=1.0,
                accel=4.0,
                decel=3.5,
                emergencyDecel=9.0,
                speedFactor=1.05,
                speedDev=0.1,
            ),
        ),
    ),
    fleet_source="car",
    models=(
        FleetModel("Volkswagen ID.3", "WVW", "ZZZE1", "W", 0.55),
        FleetModel("BMW i4 eDrive40", "WBA", "71AW0", "F", 0.45),
    ),
    model_years=(2024, 2025, 2026),
    trips=TripOptions(
        min_distance_m=1500.0, fringe_factor=3.0, fleet_trip_km=5.0, fleet_speed_mps=6.0
    ),
    zones=(
        ZoneSpec("military", "Barracks (simulated military zone)", 90.0),
        ZoneSpec("government", "Federal ministry annex (simulated)", 70.0),
        ZoneSpec("defence_industry", "Defence electronics plant (simulated)", 80.0),
    ),
)

_US: Final = RegionProfile(
    region="us",
    jurisdiction="US",
    city="Portland, Oregon",
    network="portland-arterials",
    utc_offset_hours=-8,
    vehicle_types=(
        VehicleType(
            "car",
            "passenger",
            "car",
            0.48,
            _params(
                length=4.8,
                minGap=3.5,
                tau=2.0,
                accel=3.0,
                decel=2.4,
                emergencyDecel=9.0,
                speedFactor=1.08,
                speedDev=0.1,
                lcAssertive=0.8,
                lcSpeedGain=1.5,
                lcCooperative=0.8,
                lcKeepRight=0.2,
            ),
        ),
        # Pickups and SUVs: "light trucks" in US statistics, most of what is sold there.
        VehicleType(
            "suv",
            "passenger",
            "car",
            0.34,
            _params(
                length=5.4,
                width=2.0,
                minGap=3.7,
                tau=2.1,
                accel=2.6,
                decel=2.3,
                emergencyDecel=8.0,
                speedFactor=1.06,
                speedDev=0.1,
                lcAssertive=0.8,
                lcSpeedGain=1.2,
                lcCooperative=0.8,
                lcKeepRight=0.2,
            ),
        ),
        VehicleType(
            "truck",
            "truck",
            "truck",
            0.14,
            _params(
                length=16.0,
                width=2.6,
                minGap=3.5,
                tau=1.8,
                accel=1.0,
                decel=1.8,
                emergencyDecel=6.0,
                maxSpeed=29.0,
                speedFactor=0.98,
                speedDev=0.05,
                lcSpeedGain=0.5,
            ),
        ),
        VehicleType(
            "bus",
            "bus",
            "bus",
            0.04,
            _params(
                length=12.5,
                minGap=3.0,
                tau=1.5,
                accel=1.2,
                decel=2.0,
                emergencyDecel=7.0,
                speedFactor=1.0,
                speedDev=0.05,
            ),
        ),
    ),
    fleet_source="car",
    models=(
        FleetModel("Ford Mustang Mach-E", "1FA", "6P8TH", "5", 0.5),
        FleetModel("Tesla Model 3", "5YJ", "3E1EA", "F", 0.5),
    ),
    model_years=(2024, 2025, 2026),
    # Longer trips, partly on the freeway (US vehicle trips are the longest of the three).
    trips=TripOptions(
        min_distance_m=2000.0, fringe_factor=5.0, fleet_trip_km=8.0, fleet_speed_mps=11.0
    ),
    zones=(
        ZoneSpec("military", "National Guard armory (simulated)", 100.0),
        ZoneSpec("government", "Federal building (simulated)", 80.0),
        ZoneSpec("defence_industry", "Aerospace supplier plant (simulated)", 120.0),
    ),
)

PROFILES: Final[Mapping[str, RegionProfile]] = MappingProxyType({"cn": _CN, "eu": _EU, "us": _US})
"""The region profiles, by region code."""

REGIONS: Final = tuple(PROFILES)
"""Region codes :func:`~onshore.fleet.simulate.simulate_fleet` accepts."""


def get_profile(region: str) -> RegionProfile:
    """The profile of ``region``; raises :class:`ConfigError` naming the valid regions."""
    try:
        return PROFILES[region]
    except KeyError:
        raise ConfigError(
            f"unknown region {region!r}: choose one of {', '.join(REGIONS)}",
            hint="the fleet simulator knows cn (Shanghai), eu (Berlin) and us (Portland)",
        ) from None
