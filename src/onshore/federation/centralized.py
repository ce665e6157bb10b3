"""The centralised counterfactual: one model trained on every region's data pooled in one place.

For real fleet data this is what the law forbids: Chinese important data, European personal data
and American bulk data in one data centre. It exists only to measure what federation costs, so
it runs only on simulator-made clips: a site holding a single clip a vehicle recorded is refused.
Nothing here goes through a gate and nothing is written to any ledger, because nothing real
moves; the result is labelled as a counterfactual wherever it is shown.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

import numpy as np

from onshore.errors import ConfigError, NoTrainingData
from onshore.federation.options import FederatedOptions
from onshore.forecast.dataset import Samples, build_site_dataset
from onshore.forecast.metrics import evaluate
from onshore.forecast.nets import build_model
from onshore.forecast.runs import RunFolder
from onshore.forecast.train import train_local
from onshore.settings import Project
from onshore.store.site import SiteStore

__all__ = ["CENTRALIZED", "COUNTERFACTUAL_LABEL", "NotSimulated", "train_centralized"]

CENTRALIZED: Final = "centralized.json"
"""The counterfactual's summary in the project's ``runs/<run>/``."""

COUNTERFACTUAL_LABEL: Final = (
    "counterfactual: all regions' data pooled in one place, which the law forbids for real "
    "fleet data; simulator-made clips only, to measure what federation costs"
)


class NotSimulated(ConfigError):
    """The centralised counterfactual was asked to pool data a vehicle recorded."""

    code = "config.not_simulated"


def _pool(parts: list[Samples]) -> Samples:
    return Samples(
        np.concatenate([p.past for p in parts]),
        np.concatenate([p.objects for p in parts]),
        np.concatenate([p.object_mask for p in parts]),
        np.concatenate([p.future for p in parts]),
    )


def train_centralized(
    project: Project, options: FederatedOptions, *, say: Callable[[str], None] = lambda _m: None
) -> dict[str, Any]:
    """Train ``options.model`` on every site's training samples pooled, for as many optimiser
    steps as the federated run of ``options`` does at all sites together, without DP; evaluate
    it on each site's own test split. Raises :class:`NotSimulated` when any site holds clips a
    vehicle recorded, :class:`NoTrainingData` when no site has samples. The summary is kept
    in the project's ``runs/<run>/centralized.json``."""
    train_parts, tests, sizes = [], {}, {}
    for site_id in options.sites:
        with SiteStore.open(project, site_id) as store:
            origins = store.catalogue.clip_origins()
            if origins.get("recorded", 0):
                raise NotSimulated(
                    f"{site_id} holds {origins['recorded']} clips recorded by vehicles: the "
                    "centralised counterfactual pools data across borders, which the law forbids "
                    "for real data, so it runs on simulator-made clips only",
                    hint="train with --mode federated, or on a project of simulated fleets",
                )
            data = build_site_dataset(store, options.dataset)
        train_parts.append(data.train)
        tests[site_id] = data.test
        sizes[site_id] = len(data.train)
    pooled = _pool(train_parts)
    if len(pooled) == 0:
        raise NoTrainingData("no site has training samples", hint="de-identify under training")
    steps = options.rounds * sum(
        options.site_steps(project.site(s).compute.relative_throughput) for s in options.sites
    )
    say(
        f"counterfactual: {len(pooled)} samples of {len(options.sites)} sites pooled, {steps} steps"
    )
    result = train_local(
        build_model(options.model, seed=options.seed),
        pooled,
        steps=steps,
        batch_size=options.batch_size,
        lr=options.lr,
        weight_decay=options.weight_decay,
        seed=options.seed,
    )
    model = build_model(options.model)
    model.load_state_dict(result.weights)
    regions = {}
    for site_id, test in tests.items():
        metrics = evaluate(model, test)
        baseline = evaluate(build_model("constant_velocity"), test)
        regions[site_id] = {
            "site": site_id,
            "jurisdiction": project.site(site_id).jurisdiction,
            **metrics.as_dict(),
            "baselines": {"constant_velocity": baseline.as_dict()},
            "train_samples": sizes[site_id],
        }
    summary = {
        "run": options.run,
        "mode": "centralized-counterfactual",
        "label": COUNTERFACTUAL_LABEL,
        "rounds": options.rounds,
        "model": options.model.as_dict(),
        "options": options.settings(),
        "steps": result.steps,
        "regions": regions,
        "epsilon": dict.fromkeys(options.sites),
        "bytes_crossed": dict.fromkeys(options.sites, 0),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    # Kept beside the federated runs, so that a plan can say what pooling would have given.
    RunFolder.of(project, options.run).write(CENTRALIZED, summary)
    return summary
