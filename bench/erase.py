"""Erasing one vehicle from a site of about a million positions, against one scan of the site's
catalogue, measured in the same run, with the erasure's peak memory.

The site is real: a SUMO fleet of ``--vehicles`` departing over ``--minutes``,
``--fleet-share`` of them recording (about a million positions at the defaults), ingested,
classified, de-identified under ``training`` and ``export``, and its training samples built
and cached. Then:

- ``erase``: :func:`onshore.rights.erase.erase_vehicle` end to end for ``--repeat`` vehicles,
  one after the other (each erasure records the request, removes the catalogue rows, deletes
  the objects and every cache, and scrubs the database); the median and the best are printed,
  and the peak of Python's allocations during the erasures (``tracemalloc``);
- reference ``scan``: every clip row of the site read once (``Catalogue.clips``), best of
  ``--repeat``.

Aim (issue 17): erasing a vehicle within 2x of one scan of the catalogue.

    .venv/bin/python bench/erase.py [--vehicles 250] [--minutes 7] [--fleet-share 0.7]
        [--repeat 5] [--json]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import orjson

from onshore.classify import classify_site
from onshore.deidentify import deidentify_site, resolve_profile
from onshore.fleet import simulate_fleet
from onshore.forecast.dataset import build_site_dataset
from onshore.ingest import ingest
from onshore.rights.erase import erase_vehicle
from onshore.settings import load_project
from onshore.sites import init_project
from onshore.sites.keystore import load_keystore
from onshore.store import SiteStore

AIM = 2.0
SITE = "eu-frankfurt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vehicles", type=int, default=250)
    parser.add_argument("--minutes", type=float, default=7.0)
    parser.add_argument(
        "--fleet-share",
        type=float,
        default=0.7,
        help="share of the simulated vehicles that are the fleet's (record clips)",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="onshore-bench-erase-"))
    try:
        project = init_project(scratch / "proj", "three-regions")
        print(f"simulating {args.vehicles} vehicles for {args.minutes:g} min...", file=sys.stderr)
        fleet = simulate_fleet(
            "eu",
            vehicles=args.vehicles,
            minutes=args.minutes,
            seed=args.seed,
            out=scratch / "uploads",
            recorded_in=SITE,
            fleet_share=args.fleet_share,
        )
        with SiteStore.open(project, SITE) as site:
            print("ingesting, classifying, de-identifying...", file=sys.stderr)
            ingest(site, sorted(fleet.clips))
            classify_site(site)
            secret = load_keystore(project.keystore_path(project.site(SITE))).hmac_secret
            for profile in ("training", "export"):
                deidentify_site(site, resolve_profile(profile, {}), secret=secret)
            build_site_dataset(site)
            totals = site.catalogue.clip_totals()
            by_vehicle: dict[str, int] = {}
            for clip in site.catalogue.clips():
                by_vehicle[clip.vin] = by_vehicle.get(clip.vin, 0) + 1
            scans = []
            for _ in range(args.repeat):
                started = time.perf_counter()
                site.catalogue.clips()
                scans.append(time.perf_counter() - started)
        # The vehicles with the most clips: the erasures that have the most to do.
        chosen = sorted(by_vehicle, key=lambda v: (-by_vehicle[v], v))[: args.repeat]
        project = load_project(project.root)
        erases = []
        tracemalloc.start()
        for vin in chosen:
            started = time.perf_counter()
            report = erase_vehicle(project, vin, site_id=SITE)
            erases.append(time.perf_counter() - started)
            assert report.status == "erased", report.as_dict()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        scan, erase = min(scans), statistics.median(erases)
        result = {
            "site": SITE,
            "positions": totals["rows"],
            "clips": totals["clips"],
            "vehicles": len(by_vehicle),
            "clips_per_vehicle_erased": [by_vehicle[v] for v in chosen],
            "scan_seconds": round(scan, 4),
            "erase_seconds_median": round(erase, 4),
            "erase_seconds_best": round(min(erases), 4),
            "ratio": round(erase / scan, 2),
            "aim": AIM,
            "met": erase / scan <= AIM,
            "peak_python_mib": round(peak / 2**20, 1),
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if args.json:
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
        return
    print(
        f"{result['positions']:,} positions in {result['clips']:,} clips of "
        f"{result['vehicles']} vehicles at {SITE}\n"
        f"scan of the catalogue: {scan * 1000:.1f} ms (best of {args.repeat})\n"
        f"erase one vehicle:     {erase * 1000:.1f} ms (median of {len(erases)}; best "
        f"{min(erases) * 1000:.1f} ms), peak {result['peak_python_mib']} MiB of Python "
        f"allocations\n"
        f"ratio erase / scan:    {result['ratio']:.2f} (aim <= {AIM:g}: "
        f"{'met' if result['met'] else 'NOT met'})"
    )


if __name__ == "__main__":
    main()
