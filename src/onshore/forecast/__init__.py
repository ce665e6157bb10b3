"""The driving model: motion forecasting from 2 s of the ego's past and the objects tracked
around it to its next 3 s, trained at each site on its own consented, de-identified data.

- :mod:`~onshore.forecast.dataset`: samples built at a site, split by vehicle, cached in its store.
- :mod:`~onshore.forecast.nets`: the models, declared by name and configuration; the weights a
  declared model may hold.
- :mod:`~onshore.forecast.train`: local training, with DP-SGD and a privacy accountant.
- :mod:`~onshore.forecast.metrics`: ADE, FDE and miss rate.
- :mod:`~onshore.forecast.local`: every site trains alone and is evaluated on its own test split
  (``onshore train``), the baseline federated training is measured against.
"""

from typing import TYPE_CHECKING

from onshore._lazy import lazy

if TYPE_CHECKING:
    from onshore.forecast.dataset import (
        OBJECT_FEATURES,
        PAST_FEATURES,
        DatasetConfig,
        Samples,
        SiteDataset,
        build_site_dataset,
    )
    from onshore.forecast.metrics import Metrics, evaluate
    from onshore.forecast.nets import (
        MODELS,
        ForecastModel,
        ModelSpec,
        build_model,
        check_weights,
        weight_signature,
    )
    from onshore.forecast.train import DPConfig, PrivacyAccountant, TrainResult, train_local

# Imported when first used (see onshore._lazy): importing one module of the package does
# not bring all the others.
__getattr__, __dir__ = lazy(
    __name__,
    {
        "OBJECT_FEATURES": "dataset",
        "PAST_FEATURES": "dataset",
        "DatasetConfig": "dataset",
        "Samples": "dataset",
        "SiteDataset": "dataset",
        "build_site_dataset": "dataset",
        "Metrics": "metrics",
        "evaluate": "metrics",
        "MODELS": "nets",
        "ForecastModel": "nets",
        "ModelSpec": "nets",
        "build_model": "nets",
        "check_weights": "nets",
        "weight_signature": "nets",
        "DPConfig": "train",
        "PrivacyAccountant": "train",
        "TrainResult": "train",
        "train_local": "train",
    },
)

__all__ = [
    "MODELS",
    "OBJECT_FEATURES",
    "PAST_FEATURES",
    "DPConfig",
    "DatasetConfig",
    "ForecastModel",
    "Metrics",
    "ModelSpec",
    "PrivacyAccountant",
    "Samples",
    "SiteDataset",
    "TrainResult",
    "build_model",
    "build_site_dataset",
    "check_weights",
    "evaluate",
    "train_local",
    "weight_signature",
]
