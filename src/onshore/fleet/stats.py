"""Statistics of a region's clips, to show (and test) that regions really drive differently.

Federated learning earns its keep when the sites' data are not identically distributed. These
figures measure how far apart the simulated regions are on what a forecasting model sees: how
fast the ego drives, how closely it follows, how crowded its surroundings are and with what.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from onshore.clips.schema import Clip

__all__ = ["FleetStatistics", "fleet_statistics", "ks_statistic"]

_LANE_HALF_WIDTH_M: Final = 1.8
"""An object is in the ego's lane when its lateral offset is within this."""
_MIN_HEADWAY_SPEED: Final = 1.0
"""m/s: below this the ego is queueing, and a time gap means nothing."""


@dataclass(frozen=True, slots=True)
class FleetStatistics:
    """Per-region figures computed from the uploaded clips."""

    clips: int
    rows: int
    speed_mean: float
    """Ego speed over all rows, m/s."""
    speed_p50: float
    speed_p90: float
    headway_mean: float
    """Time gap (s) to the nearest object ahead in the ego's lane, over rows with one and with
    the ego moving faster than 1 m/s."""
    headway_p50: float
    density: float
    """Mean number of objects within sensor range per row."""
    two_wheeler_share: float
    """Share of tracked objects that are motorcycles, mopeds or bicycles."""
    bus_share: float
    hard_brake_share: float
    """Share of clips uploaded because of a hard brake."""
    speeds: NDArray[np.float64] = field(repr=False, compare=False)
    headways: NDArray[np.float64] = field(repr=False, compare=False)

    def summary(self) -> dict[str, float | int]:
        """The scalar figures by name (what ``bench/regions.py --json`` prints)."""
        return {
            "clips": self.clips,
            "rows": self.rows,
            "speed_mean": self.speed_mean,
            "speed_p50": self.speed_p50,
            "speed_p90": self.speed_p90,
            "headway_mean": self.headway_mean,
            "headway_p50": self.headway_p50,
            "density": self.density,
            "two_wheeler_share": self.two_wheeler_share,
            "bus_share": self.bus_share,
            "hard_brake_share": self.hard_brake_share,
        }


def _mean(values: NDArray[np.float64]) -> float:
    return float(values.mean()) if len(values) else float("nan")


def _percentile(values: NDArray[np.float64], q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def fleet_statistics(clips: Sequence[Clip]) -> FleetStatistics:
    """Statistics over ``clips``; NaN where there is nothing to measure (no rows, no leader)."""
    if not clips:
        empty = np.empty(0)
        nan = float("nan")
        return FleetStatistics(0, 0, nan, nan, nan, nan, nan, nan, nan, nan, nan, empty, empty)
    table = pa.concat_tables([clip.table for clip in clips])
    speed = np.asarray(table["speed"].to_numpy(), dtype=np.float64)
    lists = table["objects"].combine_chunks()
    objects = pc.list_flatten(lists)
    parent = np.asarray(pc.list_parent_indices(lists).to_numpy(), dtype=np.intp)
    x = np.asarray(pc.struct_field(objects, "x").to_numpy(), dtype=np.float64)
    y = np.asarray(pc.struct_field(objects, "y").to_numpy(), dtype=np.float64)
    ahead = (x > 0) & (np.abs(y) < _LANE_HALF_WIDTH_M)
    gap = np.full(len(speed), np.inf)
    np.minimum.at(gap, parent[ahead], x[ahead])
    measured = np.isfinite(gap) & (speed > _MIN_HEADWAY_SPEED)
    headways = gap[measured] / speed[measured]
    classes = pc.struct_field(objects, "class")
    n_objects = max(len(objects), 1)
    two_wheelers = pc.sum(pc.is_in(classes, pa.array(["motorcycle", "bicycle"]))).as_py() or 0
    buses = pc.sum(pc.equal(classes, "bus")).as_py() or 0
    hard = sum(clip.meta.trigger == "hard_brake" for clip in clips)
    return FleetStatistics(
        clips=len(clips),
        rows=len(speed),
        speed_mean=_mean(speed),
        speed_p50=_percentile(speed, 50),
        speed_p90=_percentile(speed, 90),
        headway_mean=_mean(headways),
        headway_p50=_percentile(headways, 50),
        density=len(objects) / max(len(speed), 1),
        two_wheeler_share=two_wheelers / n_objects,
        bus_share=buses / n_objects,
        hard_brake_share=hard / len(clips),
        speeds=speed,
        headways=headways,
    )


def ks_statistic(a: NDArray[np.float64], b: NDArray[np.float64]) -> float:
    """The two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs
    of ``a`` and ``b`` (0: same distribution, 1: no overlap). NaN when either is empty."""
    if not len(a) or not len(b):
        return float("nan")
    a_sorted, b_sorted = np.sort(a), np.sort(b)
    points = np.concatenate([a_sorted, b_sorted])
    cdf_a = np.searchsorted(a_sorted, points, side="right") / len(a_sorted)
    cdf_b = np.searchsorted(b_sorted, points, side="right") / len(b_sorted)
    return float(np.abs(cdf_a - cdf_b).max())
