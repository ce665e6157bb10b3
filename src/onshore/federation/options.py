"""What a federated run trains and how: one set of options, shared by the coordinator and the
sites, carried to deployed apps in Flower's run config as one JSON string."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Final, Literal

import orjson

from onshore.errors import ConfigError
from onshore.forecast.dataset import DatasetConfig
from onshore.forecast.nets import ModelSpec

__all__ = ["RUN_CONFIG_KEY", "SIGNATURE_KEY", "STRATEGIES", "FederatedOptions", "Strategy"]

Strategy = Literal["fedavg", "fedavgm", "fedprox", "fedadam"]
STRATEGIES: Final = ("fedavg", "fedavgm", "fedprox", "fedadam")
RUN_CONFIG_KEY: Final = "onshore-options"
"""The key of Flower's run config that holds :meth:`FederatedOptions.to_json`."""
SIGNATURE_KEY: Final = "onshore-signature"
"""The key of Flower's run config that holds the coordinator's signature over the options
(:func:`onshore.federation.runner.sign_options`): a site runs only what its coordinator
signed."""


_ONLY_FOR: Final = {"server_momentum": "fedavgm"}
"""Options that decide a run only under one strategy, and are left out of the others' digests."""
_FINE_TUNING: Final = ("fine_tune_steps", "fine_tune_lr")
"""Options left out of the digest of a run that does not fine-tune."""


@dataclass(frozen=True, slots=True)
class FederatedOptions:
    """A federated run: the declared model, rounds, each site's local work and the strategy."""

    run: str
    """The run's id (``onshore train --run``); names its folder and every ledger entry."""
    sites: tuple[str, ...]
    """The sites taking part; in simulation, SuperNode ``i`` is ``sites[i]``."""
    project: str = ""
    """The coordinator's project folder (in simulation the sites' too). Deployed sites name
    their own in their SuperNode's ``--node-config project=...``."""
    model: ModelSpec = field(default_factory=lambda: ModelSpec("object_encoder"))
    rounds: int = 10
    local_steps: int = 150
    """Optimiser steps per round at a site of relative throughput 1.0; each site does this
    times its compute profile's ``relative_throughput`` (at least one)."""
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.1
    strategy: Strategy = "fedavg"
    proximal_mu: float = 0.01
    """FedProx's pull towards the global model (``fedprox`` only)."""
    server_lr: float = 0.05
    """FedAdam's server learning rate (``fedadam`` only)."""
    server_momentum: float = 0.9
    """FedAvgM's server momentum (``fedavgm`` only): the global model moves by the averaged
    update plus this share of its previous moves, with a server learning rate of ``1 -
    server_momentum``, so that a steady direction moves as far as FedAvg's one step."""
    dp: bool = True
    """Sample-level DP-SGD at every site, within the site's budget (``privacy`` in
    ``onshore.toml``)."""
    spend_budget: bool = False
    """Let a run spend what is left of a site's privacy budget. Without it, a site whose
    budget the run's planned steps would use up refuses to train in it (after which its data
    could never train a model again), saying what the run would spend."""
    fine_tune_steps: int = 0
    """After the last round, each site trains the global model this many more steps on its own
    training split, keeps the result in its own store and sends back only its errors on its
    test split; 0 skips it. The fine-tuned weights never leave the site, so these steps run
    without DP-SGD and spend no budget."""
    fine_tune_lr: float = 0.0
    """The fine-tuning's learning rate; 0 takes a third of ``lr``."""
    seed: int = 0
    purpose: str = "adas_training"
    """The purpose the sites' gates are asked about."""
    timeout: float = 600.0
    """Seconds the coordinator waits for a round's replies before going on without the
    sites that did not answer (named in the run's refusals)."""
    join_timeout: float = 120.0
    """Seconds the coordinator waits, before the first round, for every site's SuperNode to
    connect; the run then goes on with those that did, and names the others."""
    dataset: DatasetConfig = field(default_factory=DatasetConfig)

    def __post_init__(self) -> None:
        if not self.sites:
            raise ConfigError("a federated run needs at least one site")
        if len(set(self.sites)) != len(self.sites):
            raise ConfigError(f"sites named twice in {list(self.sites)}")
        if self.rounds < 1 or self.local_steps < 1 or self.batch_size < 1:
            raise ConfigError("rounds, local steps and batch size must be at least 1")
        if not self.lr > 0 or self.weight_decay < 0 or self.proximal_mu < 0:
            raise ConfigError("lr > 0, weight_decay >= 0 and proximal_mu >= 0")
        if self.strategy not in STRATEGIES:
            raise ConfigError(
                f"no strategy {self.strategy!r}", hint=f"strategies: {', '.join(STRATEGIES)}"
            )
        if not self.timeout > 0 or not self.server_lr > 0 or not self.join_timeout > 0:
            raise ConfigError("timeout, join_timeout and server_lr must be positive")
        if self.fine_tune_steps < 0 or self.fine_tune_lr < 0:
            raise ConfigError("fine_tune_steps and fine_tune_lr must not be negative")
        if not 0 <= self.server_momentum < 1:
            raise ConfigError(f"server_momentum must be in [0, 1), not {self.server_momentum}")

    def site_steps(self, relative_throughput: float) -> int:
        """Optimiser steps per round at a site of ``relative_throughput`` (at least one)."""
        return max(1, round(self.local_steps * relative_throughput))

    @property
    def fine_tune_rate(self) -> float:
        """The fine-tuning's learning rate (``fine_tune_lr``, else a third of ``lr``)."""
        return self.fine_tune_lr or self.lr / 3

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["model"] = self.model.as_dict()
        out["sites"] = list(self.sites)
        return out

    def settings(self) -> dict[str, Any]:
        """What decides the run's result: everything but where it runs and its id, and the
        options added since runs were first recorded when the strategy does not use them (so
        that a run recorded before keeps its digest and can be resumed)."""
        return {
            k: v
            for k, v in self.as_dict().items()
            if k not in ("run", "project")
            and _ONLY_FOR.get(k, self.strategy) == self.strategy
            and not (k in _FINE_TUNING and not self.fine_tune_steps)
        }

    def digest(self) -> str:
        return hashlib.sha256(
            orjson.dumps(self.settings(), option=orjson.OPT_SORT_KEYS)
        ).hexdigest()

    def to_json(self) -> str:
        return orjson.dumps(self.as_dict(), option=orjson.OPT_SORT_KEYS).decode()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FederatedOptions:
        try:
            model = data.get("model", {"name": "object_encoder"})
            values = dict(data)
            values["model"] = ModelSpec(str(model["name"]), dict(model.get("config", {})))
            values["sites"] = tuple(str(s) for s in data["sites"])
            values["dataset"] = DatasetConfig(**data.get("dataset", {}))
            return cls(**values)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"federated run options: {exc}") from exc

    @classmethod
    def from_run_config(cls, config: Mapping[str, Any]) -> FederatedOptions:
        """The options a deployed app finds in Flower's run config."""
        text = config.get(RUN_CONFIG_KEY)
        if not isinstance(text, str):
            raise ConfigError(
                f"the run config has no {RUN_CONFIG_KEY!r}",
                hint="start federated runs with onshore train --mode federated",
            )
        try:
            return cls.from_dict(orjson.loads(text))
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"run config {RUN_CONFIG_KEY!r} is not JSON: {exc}") from exc

    def with_run(self, run: str) -> FederatedOptions:
        return replace(self, run=run)
