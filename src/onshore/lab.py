"""A lab project: every region's simulated fleet in one folder, on one machine.

A lab is not a deployment: one operator holds every site's data and keys, which no real
deployment may, so nothing in a lab crosses a border (transfers, reads from abroad and licence
grants run between parties only: :mod:`onshore.parties`). What a lab is for is what needs every
region's data side by side: Flower's Simulation Engine, the centralised counterfactual that
measures what federation costs, and the benchmarks under ``bench/``.

:func:`build_lab` makes one: the three-regions sites, each fleet simulated with SUMO in its
region, ingested, classified and de-identified under the ``training`` and ``export`` profiles
(``onshore lab DIR``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from onshore.classify import classify_site
from onshore.deidentify import deidentify_site, resolve_profile
from onshore.fleet import simulate_site
from onshore.ingest import ingest
from onshore.rulebook.loader import project_rulebooks
from onshore.settings import CONFIG_NAME, Project, load_project
from onshore.sites import init_project
from onshore.sites.keystore import load_keystore
from onshore.store import SiteStore

__all__ = ["build_lab"]


def build_lab(
    folder: Path,
    *,
    vehicles: int = 150,
    minutes: float = 6.0,
    trip_km: float | None = None,
    seed: int = 7,
    say: Callable[[str], None] = lambda _m: None,
) -> tuple[Project, dict[str, Any]]:
    """Make (or reuse) a lab project in ``folder`` with every site's simulated data ingested,
    classified and de-identified; returns it and what each stage did."""
    if (folder / CONFIG_NAME).exists():
        say(f"reusing the lab project in {folder}")
        project = load_project(folder)
    else:
        say(f"creating a lab project (every site in one folder) in {folder}")
        project = init_project(folder, "three-regions")
    done: dict[str, Any] = {"ingest": [], "classify": [], "deidentify": [], "inventory": []}
    for site in project.settings.sites.values():
        uploads = project.root / "uploads" / site.id
        say(f"{site.id}: simulating {vehicles} vehicles departing over {minutes:g} min")
        result = simulate_site(
            site, vehicles=vehicles, minutes=minutes, seed=seed, out=uploads, trip_km=trip_km
        )
        with SiteStore.open(project, site.id) as opened:
            opened.keep_reference_zones(result.zones.read_bytes())
            say(f"{site.id}: ingesting {len(result.clips)} clips")
            done["ingest"].append(ingest(opened, result.clips).as_dict())
            book = project_rulebooks(project).for_origin(site.jurisdiction)
            done["classify"].append(classify_site(opened, rulebook=book))
            secret = load_keystore(project.keystore_path(site)).hmac_secret
            for name in ("training", "export"):
                say(f"{site.id}: de-identifying ({name})")
                profile = resolve_profile(name, project.settings.deidentify_profiles)
                done["deidentify"].append(deidentify_site(opened, profile, secret=secret))
            done["inventory"].append(opened.catalogue.inventory())
    return project, done
