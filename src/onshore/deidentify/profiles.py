"""De-identification profiles: named, parameterised lists of transforms.

Two are built in: ``training`` (what federated training needs: clips linkable per vehicle by a
keyed pseudonym, so test splits can be held out by vehicle) and ``export`` (what may be proposed
for transfer: no identifier at all, coarsened). ``onshore.toml`` may override them or add more:

    [deidentify.profiles.export]
    transforms = [
      { name = "drop_id" },
      { name = "drop_zones", buffer_m = 50 },
      { name = "trim_ends", metres = 500 },
      { name = "to_local" },
      { name = "coarsen", grid_m = 5, time_s = 0.5 },
    ]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from onshore.errors import ConfigError

__all__ = ["BUILTIN_PROFILES", "TRANSFORMS", "Profile", "Step", "resolve_profile"]

TRANSFORMS: Final[Mapping[str, Mapping[str, float]]] = {
    "pseudonymise": {},
    "drop_id": {},
    "drop_zones": {"buffer_m": 25.0},
    "trim_ends": {"metres": 500.0, "trip_gap_s": 300.0},
    "to_local": {},
    "coarsen": {"grid_m": 1.0, "time_s": 0.1},
    "mask_frames": {"threshold": 0.5},
}
"""Every transform a profile may list, with its parameters and their defaults."""

_ORDER: Final = ("pseudonymise", "drop_id", "drop_zones", "trim_ends", "to_local", "coarsen")
"""Trajectory transforms run in this order whatever the profile lists: zones and trip ends must
be found while positions are still absolute, and coarsening works on local coordinates."""


@dataclass(frozen=True, slots=True)
class Step:
    """One transform with its parameters."""

    name: str
    params: Mapping[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.params}


@dataclass(frozen=True, slots=True)
class Profile:
    """A named list of transforms."""

    name: str
    steps: tuple[Step, ...]

    def step(self, name: str) -> Step | None:
        return next((s for s in self.steps if s.name == name), None)

    def ordered(self) -> tuple[Step, ...]:
        """The steps in the order they run."""
        rank = {name: i for i, name in enumerate((*_ORDER, "mask_frames"))}
        return tuple(sorted(self.steps, key=lambda s: rank[s.name]))


def _step(raw: Mapping[str, Any], where: str) -> Step:
    name = raw.get("name")
    if name not in TRANSFORMS:
        raise ConfigError(
            f"{where}: unknown transform {name!r}", hint=f"transforms: {', '.join(TRANSFORMS)}"
        )
    defaults = TRANSFORMS[str(name)]
    params = dict(defaults)
    for key, value in raw.items():
        if key == "name":
            continue
        if key not in defaults:
            known = ", ".join(defaults) or "none"
            raise ConfigError(f"{where}: {name} has no parameter {key!r} (parameters: {known})")
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ConfigError(f"{where}: {name}.{key} must be a non-negative number, not {value!r}")
        params[key] = float(value)
    return Step(str(name), params)


def _profile(name: str, transforms: Sequence[Mapping[str, Any]], where: str) -> Profile:
    steps = tuple(_step(raw, f"{where}.transforms[{i}]") for i, raw in enumerate(transforms))
    names = [s.name for s in steps]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: a transform is listed twice")
    if "pseudonymise" in names and "drop_id" in names:
        raise ConfigError(f"{where}: pseudonymise and drop_id exclude each other")
    if "coarsen" in names and "to_local" not in names:
        raise ConfigError(f"{where}: coarsen works on clip-local coordinates; add to_local")
    return Profile(name, steps)


BUILTIN_PROFILES: Final[Mapping[str, Profile]] = {
    "training": _profile(
        "training",
        [
            {"name": "pseudonymise"},
            {"name": "drop_zones"},
            {"name": "trim_ends"},
            {"name": "to_local"},
            {"name": "mask_frames"},
        ],
        "built-in profile training",
    ),
    "export": _profile(
        "export",
        [
            {"name": "drop_id"},
            {"name": "drop_zones", "buffer_m": 50},
            {"name": "trim_ends"},
            {"name": "to_local"},
            {"name": "coarsen", "grid_m": 1.0, "time_s": 0.1},
            {"name": "mask_frames"},
        ],
        "built-in profile export",
    ),
}


def resolve_profile(name: str, declared: Mapping[str, Sequence[Mapping[str, Any]]]) -> Profile:
    """The profile called ``name``: declared in ``onshore.toml`` (``declared``), else built in.

    Raises :class:`ConfigError` naming the profile and the field that is wrong.
    """
    if name in declared:
        return _profile(name, declared[name], f"[deidentify.profiles.{name}]")
    if name in BUILTIN_PROFILES:
        return BUILTIN_PROFILES[name]
    known = sorted({*BUILTIN_PROFILES, *declared})
    raise ConfigError(
        f"no de-identification profile {name!r}", hint=f"profiles: {', '.join(known)}"
    )
