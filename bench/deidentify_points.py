"""Trajectory de-identification throughput: GPS positions per second through the ``training``
profile on one core, against a plain pyarrow scan of the same Parquet in the same run.

The clips come from the SUMO fleet simulator, ingested into a fresh site with its sensitive
areas. ``onshore deidentify`` is timed whole (reading every clip from the store, pseudonyms,
zones, trip ends, clip-local coordinates, the checks re-run on the output, writing the outputs
and the catalogue); the reference reads the very same clip objects with ``pyarrow.parquet``.
Arrow is held to one thread for both. Best of ``--repeat``.

    .venv/bin/python bench/deidentify_points.py [--region eu] [--vehicles 300] [--minutes 8]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from onshore.deidentify import BUILTIN_PROFILES, deidentify_site
from onshore.fleet import simulate_site
from onshore.sites import init_project
from onshore.sites.keystore import load_keystore
from onshore.store import SiteStore
from onshore.store.ingest import ingest

SITES = {"cn": "cn-shanghai", "eu": "eu-frankfurt", "us": "us-oregon"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--region", default="eu", choices=sorted(SITES))
    parser.add_argument("--vehicles", type=int, default=300)
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)

    scratch = Path(tempfile.mkdtemp(prefix="onshore-bench-deid-"))
    try:
        project = init_project(scratch / "project")
        site_id = SITES[args.region]
        settings = project.site(site_id)
        print(
            f"simulating {args.vehicles} vehicles for {args.minutes} min ({args.region})...",
            file=sys.stderr,
        )
        result = simulate_site(
            settings,
            vehicles=args.vehicles,
            minutes=args.minutes,
            seed=args.seed,
            out=scratch / "uploads",
        )
        secret = load_keystore(project.keystore_path(settings)).hmac_secret
        with SiteStore.open(project, site_id) as site:
            site.keep_reference_zones(result.zones.read_bytes())
            ingest(site, result.clips)
            positions = sum(c.rows for c in site.catalogue.clips())
            deid = []
            for _ in range(args.repeat):
                started = time.perf_counter()
                summary = deidentify_site(site, BUILTIN_PROFILES["training"], secret=secret)
                deid.append(time.perf_counter() - started)
            store_root = Path(project.store_url(settings))
            files = [store_root / c.path for c in site.catalogue.clips()]
        scans = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            rows = sum(pq.read_table(f).num_rows for f in files)
            scans.append(time.perf_counter() - started)
        assert rows == positions
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    best, scan = min(deid), min(scans)
    out = {
        "clips": len(files),
        "positions": positions,
        "kept": summary["rows"],
        "reference_pyarrow_scan": {
            "seconds": round(scan, 4),
            "positions_per_s": round(positions / scan),
        },
        "deidentify_training": {
            "seconds": round(best, 4),
            "positions_per_s": round(positions / best),
        },
        "ratio_to_reference": round(scan / best, 3),
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(
        f"{len(files)} clips, {positions:,} positions ({summary['rows']:,} kept); one core, "
        f"best of {args.repeat}"
    )
    print(f"  reference: pyarrow scan of the same Parquet   {positions / scan:12,.0f} positions/s")
    print(
        f"  onshore deidentify --profile training         {positions / best:12,.0f} positions/s"
        f"   ratio {scan / best:.2f}"
    )


if __name__ == "__main__":
    main()
