"""The demo's default setting, with several site secrets: every region's test split holds at
least 500 samples whichever vehicles the secret puts on the test side.

A site's secret keys the vehicle pseudonyms, and the split hashes the pseudonym, so two fresh
projects split the same fleet differently. This simulates the demo's default fleets once (its
vehicles, minutes and seed) and splits each site's samples as a different secret would, by
salting the hash the split draws from. It takes minutes, so it is left out of the suite:

    .venv/bin/pytest -m long tests/test_demo_default.py
"""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path

import pytest

from onshore.demo import run_demo
from onshore.forecast import build_site_dataset
from onshore.forecast import dataset as dataset_module
from onshore.lab import build_lab
from onshore.store import SiteStore

pytestmark = [pytest.mark.long, pytest.mark.timeout(1800)]

DEFAULTS = {
    name: inspect.signature(run_demo).parameters[name].default
    for name in ("vehicles", "minutes", "seed")
}
SECRETS = 5
MIN_TEST = 500


def test_every_region_keeps_a_test_split_of_500_samples_whatever_its_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project, _ = build_lab(tmp_path / "lab", **DEFAULTS)
    seen: dict[str, list[tuple[int, int]]] = {}
    for secret in range(SECRETS):

        def fraction(vehicle: str, salt: int = secret) -> float:
            digest = hashlib.sha256(f"secret-{salt}:{vehicle}".encode()).digest()
            return int.from_bytes(digest[:8], "big") / 2**64

        monkeypatch.setattr(dataset_module, "_fraction", fraction)
        for site_id in project.settings.sites:
            with SiteStore.open(project, site_id) as store:
                data = build_site_dataset(store, cache=False)
            seen.setdefault(site_id, []).append((len(data.train), len(data.test)))
            assert len(data.test) >= MIN_TEST, (site_id, secret, data.info)
            assert data.info["vehicles_test"] >= 1 and data.info["vehicles_train"] >= 1
    # The secrets did split differently: the test is not five times the same split.
    for site_id, splits in seen.items():
        assert len(set(splits)) > 1, (site_id, splits)
