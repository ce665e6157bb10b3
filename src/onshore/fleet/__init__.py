"""The fleet simulator: realistic clips for each region when no real fleet is at hand.

SUMO simulates traffic on a real or generated road network per region, with the vehicle mix and
driver behaviour of that region (:mod:`~onshore.fleet.profiles`); the carmaker's fleet vehicles
in it record, and their uploads are written as the MCAP clips real vehicles send.
"""

from typing import TYPE_CHECKING

from onshore._lazy import lazy

if TYPE_CHECKING:
    from onshore.fleet.profiles import PROFILES, REGIONS, RegionProfile, get_profile
    from onshore.fleet.simulate import Progress, SimulationResult, simulate_fleet, simulate_site
    from onshore.fleet.stats import FleetStatistics, fleet_statistics, ks_statistic

# Imported when first used (see onshore._lazy): importing one module of the package does
# not bring all the others.
__getattr__, __dir__ = lazy(
    __name__,
    {
        "PROFILES": "profiles",
        "REGIONS": "profiles",
        "RegionProfile": "profiles",
        "get_profile": "profiles",
        "Progress": "simulate",
        "SimulationResult": "simulate",
        "simulate_fleet": "simulate",
        "simulate_site": "simulate",
        "FleetStatistics": "stats",
        "fleet_statistics": "stats",
        "ks_statistic": "stats",
    },
)

__all__ = [
    "PROFILES",
    "REGIONS",
    "FleetStatistics",
    "Progress",
    "RegionProfile",
    "SimulationResult",
    "fleet_statistics",
    "get_profile",
    "ks_statistic",
    "simulate_fleet",
    "simulate_site",
]
