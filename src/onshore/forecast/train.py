"""Training a driving model on one site's samples, with or without differential privacy.

:func:`train_local` runs a given number of optimiser steps from given weights (a fresh model's,
or the federation's global model) and returns the new weights and the steps it actually did, so
a federated round can weigh sites that did unequal work (FedNova) and FedProx can pull the
weights towards the global ones.

With a :class:`DPConfig` it runs DP-SGD (Opacus): each step draws a Poisson sample of the site's
samples, clips each sample's gradient to ``max_grad_norm`` and adds Gaussian noise of
``noise_multiplier`` times that norm, which makes the weights differentially private at the
level of one sample. A :class:`PrivacyAccountant` adds up the privacy spent over every step the
site ever took on this data (Rényi DP of the subsampled Gaussian mechanism, as Opacus computes
it) and converts it to epsilon at the budget's delta. A run never goes past the budget: it
does the steps that fit, and refuses with :class:`PrivacyBudgetSpent` once none does.

Training is deterministic for a seed: batches are drawn from a NumPy generator, DP noise from
a torch generator, both seeded, and the model is trained on a copy, never in place.
"""

from __future__ import annotations

import copy
import functools
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import torch
from numpy.typing import NDArray
from opacus.accountants.analysis.rdp import compute_rdp
from opacus.grad_sample import GradSampleModule
from opacus.optimizers import DPOptimizer
from torch import Tensor

from onshore.errors import ConfigError, NoTrainingData, PrivacyBudgetSpent
from onshore.forecast.dataset import Samples
from onshore.forecast.metrics import STANDING_MPS
from onshore.forecast.nets import ForecastModel, check_weights

__all__ = ["DPConfig", "PrivacyAccountant", "TrainResult", "sample_loss", "train_local"]

_ORDERS: Final = np.array([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 256)))
"""Rényi orders the accountant optimises over (Opacus' defaults, extended upwards so large
budgets and small noise still find their optimum inside the range)."""


@dataclass(frozen=True, slots=True)
class DPConfig:
    """Sample-level differential privacy for one site: DP-SGD's noise and clipping, and the
    budget the site's data may spend in all."""

    target_epsilon: float = 8.0
    """The budget: epsilon at ``delta`` that all training on this data together may reach."""
    delta: float = 1e-5
    noise_multiplier: float = 1.0
    """Gaussian noise standard deviation, in units of ``max_grad_norm``."""
    max_grad_norm: float = 1.0
    """Each sample's gradient is clipped to this L2 norm."""

    def __post_init__(self) -> None:
        for name in ("target_epsilon", "noise_multiplier", "max_grad_norm"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"differential privacy: {name} must be positive")
        if not 0 < self.delta < 1:
            raise ConfigError("differential privacy: delta must be between 0 and 1")

    def as_dict(self) -> dict[str, float]:
        return {
            "target_epsilon": self.target_epsilon,
            "delta": self.delta,
            "noise_multiplier": self.noise_multiplier,
            "max_grad_norm": self.max_grad_norm,
        }


class PrivacyAccountant:
    """The privacy one site has spent on its data: every DP-SGD step it took, as runs of
    (noise multiplier, sample rate, steps), and epsilon at any delta from their Rényi DP."""

    def __init__(self, history: Sequence[tuple[float, float, int]] = ()) -> None:
        self.history: list[tuple[float, float, int]] = [
            (float(s), float(q), int(n)) for s, q, n in history
        ]

    def _rdp(self) -> NDArray[np.float64]:
        # RDP adds up over steps: group the history by (noise, rate) so the cost is one
        # evaluation per distinct setting, however many runs and rounds it holds.
        steps_by: dict[tuple[float, float], int] = {}
        for noise, rate, steps in self.history:
            steps_by[(noise, rate)] = steps_by.get((noise, rate), 0) + steps
        total = np.zeros(len(_ORDERS))
        for (noise, rate), steps in steps_by.items():
            total += _rdp_per_step(noise, rate) * steps
        return total

    def epsilon(self, delta: float) -> float:
        """Epsilon spent so far at ``delta`` (0 before any step)."""
        return _epsilon(self._rdp(), delta) if self.history else 0.0

    def steps_within(self, budget: DPConfig, sample_rate: float, wanted: int) -> tuple[int, float]:
        """How many of ``wanted`` further steps at ``sample_rate`` keep epsilon within the
        budget, and the epsilon after them. RDP adds up linearly over steps, so this is a
        bisection over one vector sum, not a re-run of the accountant per candidate."""
        spent = self._rdp()
        step = _rdp_per_step(budget.noise_multiplier, sample_rate)

        def eps(k: int) -> float:
            return _epsilon(spent + k * step, budget.delta) if (k or self.history) else 0.0

        low, high = 0, wanted
        if eps(high) <= budget.target_epsilon:
            return high, eps(high)
        while low < high:
            mid = (low + high + 1) // 2
            if eps(mid) <= budget.target_epsilon:
                low = mid
            else:
                high = mid - 1
        return low, eps(low)

    def record(self, noise_multiplier: float, sample_rate: float, steps: int) -> None:
        if steps <= 0:
            return
        if self.history and self.history[-1][:2] == (noise_multiplier, sample_rate):
            last = self.history.pop()
            steps += last[2]
        self.history.append((noise_multiplier, sample_rate, steps))

    def as_dict(self) -> dict[str, Any]:
        """The history, to keep with the site's runs (see :meth:`from_dict`)."""
        return {"history": [list(h) for h in self.history]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PrivacyAccountant:
        return cls([(h[0], h[1], h[2]) for h in data.get("history", [])])


def _rdp_per_step(noise: float, rate: float) -> NDArray[np.float64]:
    """RDP of one step of the subsampled Gaussian mechanism at every order (a copy: callers
    may scale it in place)."""
    return _rdp_cached(float(noise), float(rate)).copy()


@functools.lru_cache(maxsize=256)
def _rdp_cached(noise: float, rate: float) -> NDArray[np.float64]:
    # Opacus computes this in Python over every order: 0.1-0.2 s a call, which every epsilon
    # and every budget check would otherwise pay again.
    return np.asarray(
        compute_rdp(q=rate, noise_multiplier=noise, steps=1, orders=list(_ORDERS)), np.float64
    )


def _epsilon(rdp: NDArray[np.float64], delta: float) -> float:
    """Epsilon at ``delta`` from RDP at :data:`_ORDERS` (Balle et al. 2020, Theorem 21: the
    conversion Opacus uses, here without its warning when the optimum is at an end)."""
    eps = rdp - (np.log(delta) + np.log(_ORDERS)) / (_ORDERS - 1) + np.log((_ORDERS - 1) / _ORDERS)
    return float(np.nanmin(eps)) if not np.isnan(eps).all() else float("inf")


@dataclass(frozen=True, slots=True)
class TrainResult:
    """What a local training run produced."""

    weights: dict[str, Tensor]
    """The trained model's state, detached copies on the CPU."""
    steps: int
    """Optimiser steps actually done (fewer than asked when the privacy budget ran out)."""
    examples: int
    """Training samples at the site (FedAvg weighs sites by this)."""
    loss: float
    """Mean training loss (metres of displacement) over the last steps; a local figure for
    logs, not private: it does not leave the site."""
    seconds: float
    epsilon: float | None = None
    """Epsilon spent on this data in all, at ``delta`` (None without DP)."""
    delta: float | None = None
    budget_exhausted: bool = False
    """Whether the budget stopped the run before the steps asked for."""
    accountant: PrivacyAccountant | None = field(default=None, repr=False)


STANDING_WEIGHT: Final = 4.0
"""How much more a sample of a standing vehicle counts in the loss. Their errors are
centimetres where a moving vehicle's are decimetres, so unweighted they barely move the
model, which then lets standing vehicles drift and loses to constant velocity on them."""


def sample_loss(predicted: Tensor, future: Tensor, past: Tensor | None = None) -> Tensor:
    """Per-sample training loss: the mean displacement over the horizon (ADE), smoothed at 0
    so its gradient is defined when a prediction is exact, and weighted by
    :data:`STANDING_WEIGHT` for a vehicle standing at the present step when ``past`` is
    given. (B,)"""
    squared = (predicted - future).square().sum(dim=-1)
    loss = torch.sqrt(squared + 1e-6).mean(dim=-1)
    if past is None:
        return loss
    standing = past[:, -1, 2:4].square().sum(dim=-1) < STANDING_MPS**2
    return loss * torch.where(standing, STANDING_WEIGHT, 1.0)


def train_local(
    model: ForecastModel,
    data: Samples,
    *,
    steps: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    dp: DPConfig | None = None,
    seed: int = 0,
    initial: Mapping[str, Tensor] | None = None,
    accountant: PrivacyAccountant | None = None,
    proximal_mu: float = 0.0,
    weight_decay: float = 0.0,
    threads: int = 1,
) -> TrainResult:
    """Train a copy of ``model`` on ``data`` for ``steps`` optimiser steps (AdamW).

    ``initial``: weights to start from (checked against the model's declaration), e.g. the
    global model of a federated round; default the model's own. ``dp``: run DP-SGD within its
    budget, spending it on ``accountant`` (a fresh one when None: nothing spent before).
    ``proximal_mu``: FedProx's pull towards the starting weights. ``weight_decay``: AdamW's
    decoupled decay, which keeps a small site's model from learning its few vehicles by
    heart. ``threads``: torch's
    intra-op threads while training (restored after): the models are small, and splitting
    each small matrix product over cores costs more than it saves (measured on 2 cores: one
    thread ran DP-SGD 2 to 15 times faster than two); run sites in parallel instead.

    Returns the weights and the steps done. Raises :class:`NoTrainingData` for empty ``data``
    and :class:`PrivacyBudgetSpent` when the budget allows no further step.
    """
    if steps < 0 or batch_size < 1 or not lr > 0 or proximal_mu < 0:
        raise ConfigError("steps >= 0, batch_size >= 1, lr > 0 and proximal_mu >= 0")
    if len(data) == 0:
        raise NoTrainingData("no training samples", hint="see the dataset's counts")
    started = time.perf_counter()
    net = copy.deepcopy(model)
    if initial is not None:
        check_weights(model.spec, initial)
        net.load_state_dict(initial)
    params = [p for p in net.parameters() if p.requires_grad]
    anchor = [p.detach().clone() for p in params]
    n = len(data)
    tensors = (
        torch.from_numpy(data.past),
        torch.from_numpy(data.objects),
        torch.from_numpy(data.object_mask),
        torch.from_numpy(data.future),
    )
    rng = np.random.default_rng(seed)
    losses: list[float] = []
    accountant = accountant if accountant is not None else PrivacyAccountant()
    todo, exhausted = steps, False
    if dp is not None:
        rate = min(1.0, batch_size / n)
        todo, _ = accountant.steps_within(dp, rate, steps)
        exhausted = todo < steps
        if todo == 0 and steps > 0:
            raise PrivacyBudgetSpent(
                f"the privacy budget (epsilon {dp.target_epsilon:g} at delta {dp.delta:g}) "
                f"is spent: {accountant.epsilon(dp.delta):.3f} already, and one more step "
                "would exceed it",
                hint="this data may train no further; a larger budget is a decision for the "
                "site's data protection officer",
            )
    if not params:
        todo = 0  # constant velocity: nothing to learn
    net.train()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        if todo and dp is None:
            _plain(
                net,
                tensors,
                todo,
                batch_size,
                lr,
                weight_decay,
                rng,
                losses,
                params,
                anchor,
                proximal_mu,
            )
        elif todo and dp is not None:
            _private(
                net,
                tensors,
                todo,
                batch_size,
                lr,
                weight_decay,
                dp,
                seed,
                rng,
                losses,
                params,
                anchor,
                proximal_mu,
            )
            accountant.record(dp.noise_multiplier, min(1.0, batch_size / n), todo)
    finally:
        torch.set_num_threads(previous_threads)
    net.eval()
    weights = {k: v.detach().clone() for k, v in net.state_dict().items()}
    tail = losses[-max(1, min(50, len(losses))) :]
    return TrainResult(
        weights=weights,
        steps=todo,
        examples=n,
        loss=float(np.mean(tail)) if tail else float("nan"),
        seconds=time.perf_counter() - started,
        epsilon=None if dp is None else accountant.epsilon(dp.delta),
        delta=None if dp is None else dp.delta,
        budget_exhausted=exhausted,
        accountant=None if dp is None else accountant,
    )


_Tensors = tuple[Tensor, Tensor, Tensor, Tensor]


def _pull(params: list[torch.nn.Parameter], anchor: list[Tensor], mu: float) -> None:
    """FedProx: add the gradient of mu/2 * ||w - w0||^2 (data-independent, so it costs no
    privacy when added after DP-SGD's noise)."""
    if mu:
        for p, p0 in zip(params, anchor, strict=True):
            if p.grad is not None:
                p.grad.add_(p.detach() - p0, alpha=mu)


def _plain(
    net: ForecastModel,
    tensors: _Tensors,
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    rng: np.random.Generator,
    losses: list[float],
    params: list[torch.nn.Parameter],
    anchor: list[Tensor],
    mu: float,
) -> None:
    """Minibatches drawn without replacement, epoch after epoch."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    n = len(tensors[0])
    order, at = rng.permutation(n), 0
    for _ in range(steps):
        if at + batch_size > n and at > 0:
            order, at = rng.permutation(n), 0
        index = torch.from_numpy(order[at : at + batch_size])
        at += batch_size
        past, objects, mask, future = (t[index] for t in tensors)
        optimizer.zero_grad(set_to_none=True)
        loss = sample_loss(net(past, objects, mask), future, past).mean()
        torch.autograd.backward(loss)
        _pull(params, anchor, mu)
        optimizer.step()
        losses.append(loss.item())


def _private(
    net: ForecastModel,
    tensors: _Tensors,
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    dp: DPConfig,
    seed: int,
    rng: np.random.Generator,
    losses: list[float],
    params: list[torch.nn.Parameter],
    anchor: list[Tensor],
    mu: float,
) -> None:
    """DP-SGD: Poisson-sampled batches (what the accountant's analysis assumes), per-sample
    gradients clipped and noised by Opacus."""
    n = len(tensors[0])
    rate = min(1.0, batch_size / n)
    wrapped = GradSampleModule(net, loss_reduction="mean")
    private = DPOptimizer(
        torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay),
        noise_multiplier=dp.noise_multiplier,
        max_grad_norm=dp.max_grad_norm,
        expected_batch_size=max(1, round(rate * n)),
        generator=torch.Generator().manual_seed(seed),
    )
    try:
        with warnings.catch_warnings():
            # Opacus' hooks fire on each layer's output gradient; torch warns that the first
            # layer's inputs (the data) need none, which is as it should be.
            warnings.filterwarnings(
                "ignore", message="Full backward hook is firing", category=UserWarning
            )
            for _ in range(steps):
                index = torch.from_numpy(np.flatnonzero(rng.random(n) < rate))
                past, objects, mask, future = (t[index] for t in tensors)
                private.zero_grad(set_to_none=True)
                per_sample = sample_loss(wrapped(past, objects, mask), future, past)
                loss = per_sample.mean() if len(index) else per_sample.sum()
                torch.autograd.backward(loss)
                if private.pre_step():
                    _pull(params, anchor, mu)
                    private.original_optimizer.step()
                losses.append(loss.item())
    finally:
        wrapped._close()
