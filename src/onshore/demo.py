"""The demo: every stage built so far, end to end, on the embedded defaults.

Creates a project with three sites (local folders, SQLite catalogues), simulates a fleet in each
site's region with SUMO, ingests each fleet into its own site, classifies every clip and
de-identifies the site's clips under the ``training`` and ``export`` profiles, and returns what
each stage found and removed, with the inventories.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from onshore.classify import classify_site
from onshore.deidentify import deidentify_site, resolve_profile
from onshore.fleet import simulate_site
from onshore.rulebook.loader import project_rulebooks
from onshore.settings import CONFIG_NAME, load_project
from onshore.sites import init_project
from onshore.sites.keystore import load_keystore
from onshore.store import SiteStore
from onshore.store.ingest import ingest

__all__ = ["run_demo"]


def run_demo(
    folder: Path,
    *,
    vehicles: int = 150,
    minutes: float = 6.0,
    seed: int = 7,
    say: Callable[[str], None] = lambda _m: None,
) -> dict[str, Any]:
    """Run the demo in ``folder`` (reusing a project already there) and return what it did."""
    started = time.perf_counter()
    if (folder / CONFIG_NAME).exists():
        say(f"reusing the project in {folder}")
        project = load_project(folder)
    else:
        say(f"creating a three-site project in {folder}")
        project = init_project(folder, "three-regions")
    inventories, ingests, classified, deidentified = [], [], [], []
    for site in project.settings.sites.values():
        uploads = project.root / "uploads" / site.id
        say(
            f"{site.id}: simulating {vehicles} vehicles for {minutes:g} min ({site.region_profile})"
        )
        result = simulate_site(site, vehicles=vehicles, minutes=minutes, seed=seed, out=uploads)
        say(f"{site.id}: ingesting {len(result.clips)} clips ({result.frames} camera frames)")
        with SiteStore.open(project, site.id) as opened:
            opened.keep_reference_zones(result.zones.read_bytes())
            report = ingest(opened, result.clips)
            ingests.append(report.as_dict())
            say(f"{site.id}: classifying (faces and plates in the camera frames)")
            book = project_rulebooks(project).for_origin(site.jurisdiction)
            classified.append(classify_site(opened, rulebook=book))
            secret = load_keystore(project.keystore_path(site)).hmac_secret
            for name in ("training", "export"):
                say(f"{site.id}: de-identifying ({name})")
                profile = resolve_profile(name, project.settings.deidentify_profiles)
                deidentified.append(deidentify_site(opened, profile, secret=secret))
            inventories.append(opened.catalogue.inventory())
    return {
        "project": str(project.root),
        "ingest": ingests,
        "classify": classified,
        "deidentify": deidentified,
        "inventory": inventories,
        "seconds": round(time.perf_counter() - started, 1),
    }
