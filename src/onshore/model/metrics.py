"""How far a forecast is from what the vehicle did: the Argoverse and Waymo metrics.

ADE is the mean distance between predicted and true positions over the 3 s; FDE the distance at
the last step; the miss rate the share of samples whose FDE exceeds 2 m. All in metres, over the
samples of one site's test split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import torch
from torch import Tensor

from onshore.model.dataset import Samples
from onshore.model.nets import ForecastModel

__all__ = ["MISS_THRESHOLD_M", "Metrics", "displacement", "evaluate"]

MISS_THRESHOLD_M: Final = 2.0


@dataclass(frozen=True, slots=True)
class Metrics:
    """ADE, FDE and miss rate of a model on some samples."""

    ade: float
    fde: float
    miss_rate: float
    samples: int

    def as_dict(self) -> dict[str, float | int]:
        return {
            "ade": round(self.ade, 4),
            "fde": round(self.fde, 4),
            "miss_rate": round(self.miss_rate, 4),
            "samples": self.samples,
        }


def displacement(predicted: Tensor, future: Tensor) -> Tensor:
    """Distance at each step between ``predicted`` and ``future`` (B, T, 2): (B, T)."""
    return (predicted - future).square().sum(dim=-1).sqrt()


def evaluate(model: ForecastModel, samples: Samples, *, batch_size: int = 4096) -> Metrics:
    """The model's ADE, FDE and miss rate on ``samples``; NaN for all three when there are
    none (a site whose test split is empty)."""
    if len(samples) == 0:
        nan = float("nan")
        return Metrics(nan, nan, nan, 0)
    model.eval()
    ade = fde = missed = 0.0
    with torch.no_grad():
        for start in range(0, len(samples), batch_size):
            part = slice(start, start + batch_size)
            predicted = model(
                torch.from_numpy(samples.past[part]),
                torch.from_numpy(samples.objects[part]),
                torch.from_numpy(samples.object_mask[part]),
            )
            error = displacement(predicted, torch.from_numpy(samples.future[part]))
            ade += float(error.mean(dim=1).sum())
            fde += float(error[:, -1].sum())
            missed += float((error[:, -1] > MISS_THRESHOLD_M).sum())
    n = len(samples)
    return Metrics(ade / n, fde / n, missed / n, n)
