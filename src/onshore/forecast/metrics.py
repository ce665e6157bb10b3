"""How far a forecast is from what the vehicle did: the Argoverse and Waymo metrics.

ADE is the mean distance between predicted and true positions over the 3 s; FDE the distance at
the last step; the miss rate the share of samples whose FDE exceeds 2 m. All in metres, over the
samples of one site's test split, and over each kind of motion in it (:func:`motion_groups`):
a model that is better on average can still be worse where it matters, and a test split of
standing vehicles flatters constant velocity.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from onshore.forecast.dataset import DT, Samples
from onshore.forecast.nets import ForecastModel

__all__ = [
    "MISS_THRESHOLD_M",
    "MOTION_GROUPS",
    "Metrics",
    "displacement",
    "evaluate",
    "motion_groups",
]

MISS_THRESHOLD_M: Final = 2.0
MOTION_GROUPS: Final = ("stationary", "cruising", "turning_or_braking")
"""The kinds of motion metrics are reported for (see :func:`motion_groups`)."""
STANDING_MPS: Final = 0.5
"""Below this speed a vehicle stands (queues, lights, parking)."""
TURN_DEG: Final = 15.0
"""A change of heading over the horizon above this is a turn."""
SLOWING_MPS: Final = 2.0
"""A loss of speed over the horizon above this is braking."""


def motion_groups(samples: Samples) -> NDArray[np.int8]:
    """Each sample's kind of motion, as an index into :data:`MOTION_GROUPS`:

    - ``stationary``: standing at the present step (below 0.5 m/s), whatever comes next, so
      queues that move off are in it;
    - ``turning_or_braking``: moving, and over the horizon its heading turns by more than 15
      degrees, or it loses more than 2 m/s, or it comes to a stand;
    - ``cruising``: moving on, roughly straight, not slowing (speeding up included).

    The present speed is the past's last velocity; the future speed and heading are read from
    the last two future positions.
    """
    now = np.hypot(samples.past[:, -1, 2], samples.past[:, -1, 3])
    future = samples.future.astype(np.float64)
    last = future[:, -1] - future[:, -2] if future.shape[1] >= 2 else future[:, -1]
    speed_end = np.hypot(last[:, 0], last[:, 1]) / DT
    heading_end = np.degrees(np.abs(np.arctan2(last[:, 1], last[:, 0])))
    moving = now >= STANDING_MPS
    turned = (speed_end >= STANDING_MPS) & (heading_end > TURN_DEG)
    slowed = (now - speed_end > SLOWING_MPS) | (speed_end < STANDING_MPS)
    group = np.full(len(now), MOTION_GROUPS.index("cruising"), np.int8)
    group[moving & (turned | slowed)] = MOTION_GROUPS.index("turning_or_braking")
    group[~moving] = MOTION_GROUPS.index("stationary")
    return group


@dataclass(frozen=True, slots=True)
class Metrics:
    """ADE, FDE and miss rate of a model on some samples, and on each kind of motion."""

    ade: float
    fde: float
    miss_rate: float
    samples: int
    groups: Mapping[str, Metrics] = field(default_factory=dict)
    """The same per kind of motion (:data:`MOTION_GROUPS`), where the samples have any."""

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "ade": round(self.ade, 4),
            "fde": round(self.fde, 4),
            "miss_rate": round(self.miss_rate, 4),
            "samples": self.samples,
        }
        if self.groups:
            out["groups"] = {name: m.as_dict() for name, m in self.groups.items()}
        return out

    def scalars(self, prefix: str = "") -> dict[str, float]:
        """Flat scalar metrics, as a federated evaluation sends them: ``{prefix}ade``...
        and ``{prefix}ade-{group}``, ``{prefix}n-{group}`` for every kind of motion (zeros for
        one the samples do not have: Flower aggregates only replies with the same keys)."""
        out = {
            f"{prefix}ade": self.ade,
            f"{prefix}fde": self.fde,
            f"{prefix}miss-rate": self.miss_rate,
        }
        empty = Metrics(0.0, 0.0, 0.0, 0)
        for name in MOTION_GROUPS:
            m = self.groups.get(name, empty)
            out.update(
                {
                    f"{prefix}ade-{name}": m.ade,
                    f"{prefix}fde-{name}": m.fde,
                    f"{prefix}miss-rate-{name}": m.miss_rate,
                    f"{prefix}n-{name}": float(m.samples),
                }
            )
        return out

    @staticmethod
    def groups_from_scalars(values: Mapping[str, float], prefix: str = "") -> dict[str, object]:
        """The ``groups`` of :meth:`as_dict` from :meth:`scalars` (kinds of motion with
        samples)."""
        groups: dict[str, object] = {}
        for name in MOTION_GROUPS:
            if values.get(f"{prefix}n-{name}", 0) > 0:
                groups[name] = {
                    "ade": round(values[f"{prefix}ade-{name}"], 4),
                    "fde": round(values[f"{prefix}fde-{name}"], 4),
                    "miss_rate": round(values[f"{prefix}miss-rate-{name}"], 4),
                    "samples": int(values[f"{prefix}n-{name}"]),
                }
        return groups


def displacement(predicted: Tensor, future: Tensor) -> Tensor:
    """Distance at each step between ``predicted`` and ``future`` (B, T, 2): (B, T)."""
    return (predicted - future).square().sum(dim=-1).sqrt()


def evaluate(model: ForecastModel, samples: Samples, *, batch_size: int = 4096) -> Metrics:
    """The model's ADE, FDE and miss rate on ``samples``, overall and per kind of motion; NaN
    for all three when there are none (a site whose test split is empty)."""
    if len(samples) == 0:
        nan = float("nan")
        return Metrics(nan, nan, nan, 0)
    model.eval()
    ade = np.empty(len(samples))
    fde = np.empty(len(samples))
    with torch.no_grad():
        for start in range(0, len(samples), batch_size):
            part = slice(start, start + batch_size)
            predicted = model(
                torch.from_numpy(samples.past[part]),
                torch.from_numpy(samples.objects[part]),
                torch.from_numpy(samples.object_mask[part]),
            )
            error = displacement(predicted, torch.from_numpy(samples.future[part]))
            ade[part] = error.mean(dim=1).double().numpy()
            fde[part] = error[:, -1].double().numpy()
    group = motion_groups(samples)
    groups = {
        name: _summarise(ade[group == i], fde[group == i])
        for i, name in enumerate(MOTION_GROUPS)
        if (group == i).any()
    }
    overall = _summarise(ade, fde)
    return Metrics(overall.ade, overall.fde, overall.miss_rate, overall.samples, groups)


def _summarise(ade: NDArray[np.float64], fde: NDArray[np.float64]) -> Metrics:
    return Metrics(
        float(ade.mean()), float(fde.mean()), float((fde > MISS_THRESHOLD_M).mean()), len(ade)
    )
