"""The driving models, declared by name and configuration.

Every model maps a batch of samples (the ego's past, the nearest tracked objects and their mask)
to the ego's next positions, in the sample's frame. Three are registered:

- ``constant_velocity``: the analytic baseline. The ego keeps the velocity of its last past
  step (the last displacement over one tick). No parameters.
- ``past_mlp``: an MLP over the flattened past.
- ``object_encoder``: the past through an MLP, each tracked object through a small shared MLP,
  max-pooled over the objects that are there, and a head over both.

The learned models do not predict positions: they predict the ego's acceleration and the
curvature of its path at each future step, and the path is integrated from them, starting from
the velocity of the last past step (a kinematic layer). A network that outputs zeros forecasts
constant velocity, so it starts from a good answer and spends its capacity on turns, braking
and the traffic ahead; and whatever it outputs, the path is one a car can drive: it does not
move sideways without turning, nor turn on the spot, and its speed never goes below zero, so a
vehicle standing in a queue stays where it is unless the network predicts that it moves off
(an unconstrained network adds a small drift to every standing vehicle and loses to constant
velocity on them).

A model is declared by a :class:`ModelSpec` (a registered name and its configuration), and its
``state_dict`` has names, shapes and dtypes that depend on the spec alone
(:func:`weight_signature`). The federation builds the same spec everywhere and checks every
tensor that would leave a site against it (:func:`check_weights`). Inputs are scaled by fixed
constants, not statistics of a site's data, so every site's model reads its inputs alike and
nothing learnt from data hides outside the declared tensors. There is no BatchNorm: DP-SGD
needs per-sample gradients, which batch statistics would mix.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

import torch
from torch import Tensor, nn

from onshore.errors import ConfigError, InvalidWeights
from onshore.forecast.dataset import DT, OBJECT_FEATURES, PAST_FEATURES

__all__ = [
    "MODELS",
    "ConstantVelocity",
    "ForecastModel",
    "ModelSpec",
    "ObjectEncoder",
    "PastMLP",
    "build_model",
    "check_weights",
    "constant_velocity",
    "weight_signature",
]

_PAST_SCALE: Final = (20.0, 5.0, 10.0, 5.0, 1.0, 1.0, 3.0, 0.5, 0.3, 1.0)
"""Fixed divisors bringing each past feature (see ``PAST_FEATURES``) near unit range."""
_OBJECT_SCALE: Final = (40.0, 10.0, 10.0, 5.0, 40.0, 1.0, 5.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
_MAX_ACCEL: Final = 8.0
"""The largest acceleration or deceleration (m/s^2) the kinematic layer lets a network ask
for: beyond an emergency stop."""
_MAX_CURVATURE: Final = 0.25
"""The tightest turn (1/m): a car's full steering lock, a radius of 4 m."""
_MOVING_MPS: Final = 0.5
"""Below this speed the direction of travel is the heading, not the last displacement."""
_STANDING_GRADIENT: Final = 0.1
"""The gradient the zero-speed clamp passes below zero (its value is exactly zero there)."""


def _non_negative(speed: Tensor) -> Tensor:
    """``speed`` clamped at zero: exactly zero below it, so a standing vehicle the network
    keeps standing does not drift, yet with a small gradient there, so a network that holds a
    vehicle that moves off still learns to let it go."""
    below = torch.clamp(speed, max=0.0)
    return torch.relu(speed) + _STANDING_GRADIENT * (below - below.detach())


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A model as the federation declares it: a registered name and its configuration."""

    name: str
    config: Mapping[str, int] = field(default_factory=dict)
    """Sizes overriding the model's defaults (``hidden``, ``object_hidden``...)."""

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "config": dict(self.config)}


def constant_velocity(past: Tensor, future_steps: int) -> Tensor:
    """The constant-velocity path: the last past step's displacement held for ``future_steps``
    ticks. ``past`` is (B, T, F); returns (B, future_steps, 2).

    The displacement, not the speed and heading the vehicle reports: its heading is smoothed
    and lags the path through a turn, and on the demo's fleets the displacement forecasts
    10-20% better, so the baseline the models must beat is the stronger one."""
    velocity = (past[:, -1, 0:2] - past[:, -2, 0:2]) / DT
    ticks = torch.arange(1, future_steps + 1, dtype=past.dtype, device=past.device) * DT
    return ticks[None, :, None] * velocity[:, None, :]


class ForecastModel(nn.Module):
    """Base of the driving models: ``forward(past, objects, mask)`` returns the next
    ``future_steps`` positions, (B, future_steps, 2)."""

    name: ClassVar[str]
    defaults: ClassVar[Mapping[str, int]] = {}
    _past_scale: Tensor
    _object_scale: Tensor

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.sizes = {**self.defaults, **spec.config}
        unknown = set(spec.config) - set(self.defaults)
        if unknown:
            raise ConfigError(
                f"model {spec.name} has no setting {', '.join(sorted(unknown))}",
                hint=f"settings: {', '.join(self.defaults) or 'none'}",
            )
        self.past_steps = self.sizes.get("past_steps", 20)
        self.future_steps = self.sizes.get("future_steps", 30)
        self.register_buffer(
            "_past_scale", torch.tensor(_PAST_SCALE, dtype=torch.float32), persistent=False
        )
        self.register_buffer(
            "_object_scale", torch.tensor(_OBJECT_SCALE, dtype=torch.float32), persistent=False
        )

    def forward(self, past: Tensor, objects: Tensor, mask: Tensor) -> Tensor:
        raise NotImplementedError

    def _scaled_past(self, past: Tensor) -> Tensor:
        return (past / self._past_scale).flatten(1)

    def _path(self, past: Tensor, controls: Tensor) -> Tensor:
        """The path driven from the last past step's velocity under ``controls`` (B, 2T): the
        acceleration (m/s^2) and the curvature (1/m) of each future step, squashed to what a
        car can do. The heading turns by speed times curvature, so a standing car does not
        turn on the spot (a kinematic bicycle)."""
        steps = self.future_steps
        accel = _MAX_ACCEL * torch.tanh(controls[:, :steps])
        curvature = _MAX_CURVATURE * torch.tanh(controls[:, steps:])
        moved = past[:, -1, 0:2] - past[:, -2, 0:2]
        speed = moved.norm(dim=-1) / DT
        # The direction of travel; a vehicle (nearly) standing points along its heading, which
        # is the sample frame's x axis.
        direction = torch.where(
            speed > _MOVING_MPS, torch.atan2(moved[:, 1], moved[:, 0]), torch.zeros_like(speed)
        )
        speeds = []
        for k in range(steps):
            speed = _non_negative(speed + accel[:, k] * DT)
            speeds.append(speed)
        v = torch.stack(speeds, dim=1)
        step = v * DT
        theta = direction[:, None] + torch.cumsum(step * curvature, dim=1)
        return torch.stack(
            [torch.cumsum(step * torch.cos(theta), 1), torch.cumsum(step * torch.sin(theta), 1)],
            dim=-1,
        )


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


class ConstantVelocity(ForecastModel):
    """The analytic baseline: no parameters, nothing to train."""

    name = "constant_velocity"
    defaults: ClassVar[Mapping[str, int]] = {"past_steps": 20, "future_steps": 30}

    def forward(self, past: Tensor, objects: Tensor, mask: Tensor) -> Tensor:
        return constant_velocity(past, self.future_steps)


class PastMLP(ForecastModel):
    """An MLP over the ego's past alone."""

    name = "past_mlp"
    defaults: ClassVar[Mapping[str, int]] = {"past_steps": 20, "future_steps": 30, "hidden": 128}

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        h = self.sizes["hidden"]
        self.net = _mlp([self.past_steps * len(PAST_FEATURES), h, h, self.future_steps * 2])

    def forward(self, past: Tensor, objects: Tensor, mask: Tensor) -> Tensor:
        return self._path(past, self.net(self._scaled_past(past)))


class ObjectEncoder(ForecastModel):
    """The ego's past and the objects around it: each object is encoded by a shared MLP, the
    encodings are max-pooled over the objects present (an empty scene pools to zeros), and a
    head reads the pooled scene beside the encoded past."""

    name = "object_encoder"
    defaults: ClassVar[Mapping[str, int]] = {
        "past_steps": 20,
        "future_steps": 30,
        "hidden": 64,
        "object_hidden": 32,
    }

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        h, o = self.sizes["hidden"], self.sizes["object_hidden"]
        self.ego = _mlp([self.past_steps * len(PAST_FEATURES), h, h])
        self.scene = _mlp([len(OBJECT_FEATURES), o, o])
        self.head = _mlp([h + o, h, self.future_steps * 2])

    def forward(self, past: Tensor, objects: Tensor, mask: Tensor) -> Tensor:
        ego = torch.nn.functional.gelu(self.ego(self._scaled_past(past)))
        encoded = torch.nn.functional.gelu(self.scene(objects / self._object_scale))
        present = mask.unsqueeze(-1)
        pooled = torch.where(present, encoded, torch.full_like(encoded, -math.inf)).amax(dim=1)
        pooled = torch.where(present.any(dim=1), pooled, torch.zeros_like(pooled))
        return self._path(past, self.head(torch.cat([ego, pooled], dim=-1)))


MODELS: Final[Mapping[str, Callable[[ModelSpec], ForecastModel]]] = {
    cls.name: cls for cls in (ConstantVelocity, PastMLP, ObjectEncoder)
}
"""Every model that can be declared, by name."""


def build_model(spec: ModelSpec | str, *, seed: int = 0) -> ForecastModel:
    """A fresh model for ``spec`` (a spec or a registered name), its weights drawn from
    ``seed`` without touching torch's global random state. Raises :class:`ConfigError` for an
    unknown name or setting."""
    if isinstance(spec, str):
        spec = ModelSpec(spec)
    make = MODELS.get(spec.name)
    if make is None:
        raise ConfigError(f"no model {spec.name!r}", hint=f"models: {', '.join(MODELS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make(spec)


def weight_signature(spec: ModelSpec | str) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """The name, shape and dtype of every tensor in the state of a ``spec`` model."""
    model = build_model(spec)
    return {name: (tuple(t.shape), t.dtype) for name, t in model.state_dict().items()}


def check_weights(spec: ModelSpec | str, weights: Mapping[str, Tensor]) -> None:
    """Check that ``weights`` are exactly a ``spec`` model's tensors: the same names, shapes
    and dtypes, every value finite. Raises :class:`InvalidWeights` naming the first tensor that
    is not."""
    expected = weight_signature(spec)
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    if missing or extra:
        raise InvalidWeights(
            f"weights do not match the declared model: missing {missing or 'none'}, "
            f"unexpected {extra or 'none'}"
        )
    for name, (shape, dtype) in expected.items():
        tensor = weights[name]
        if not isinstance(tensor, Tensor):
            raise InvalidWeights(f"{name} is a {type(tensor).__name__}, not a tensor")
        if tuple(tensor.shape) != shape or tensor.dtype != dtype:
            raise InvalidWeights(
                f"{name} is {tuple(tensor.shape)} {tensor.dtype}, the model declares "
                f"{shape} {dtype}"
            )
        if not bool(torch.isfinite(tensor).all()):
            raise InvalidWeights(f"{name} holds a value that is not finite (NaN or infinity)")
