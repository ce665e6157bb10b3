"""Trajectory de-identification throughput: GPS positions per second through the ``training``
profile on one core, against a plain pyarrow scan of the same Parquet in the same run.

The clips come from the SUMO fleet simulator, ingested into a fresh site with its sensitive
areas; a tenth of the vehicles upload front-camera frames. ``onshore deidentify`` is timed whole,
in this process (the inline engine): reading every clip from the store, pseudonyms, zones, trip
ends, clip-local coordinates, the checks re-run on every output, the camera frames masked and
checked, writing one object per clip (one ``put_many`` per batch of vehicles) and the catalogue.
The reference reads the very same clip objects with ``pyarrow.parquet``. Arrow is held to one
thread for both. Best of ``--repeat``: after the first run, the frames' detections and the
checks of the masked frames are read back from the store (as a rerun, or a second profile,
reads them), so the first run, which detects and checks every frame, is printed apart.
``--workers N`` also times the same stage on a local Ray instance of N workers (best of
``--repeat``, the first run starting Ray), printed apart from the one-core figure.

    .venv/bin/python bench/deidentify_points.py [--region eu] [--vehicles 300] [--minutes 8]
        [--repeat 3] [--workers N]
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
from onshore.ingest import ingest
from onshore.sites import init_project
from onshore.sites.compute import Engine
from onshore.sites.keystore import load_keystore
from onshore.store import SiteStore

SITES = {"cn": "cn-shanghai", "eu": "eu-frankfurt", "us": "us-oregon"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--region", default="eu", choices=sorted(SITES))
    parser.add_argument("--vehicles", type=int, default=300)
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--workers", type=int, default=0, help="also time the stage on Ray with N workers"
    )
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
            profile = BUILTIN_PROFILES["training"]
            deid = []
            for _ in range(args.repeat):
                started = time.perf_counter()
                summary = deidentify_site(site, profile, secret=secret)
                deid.append(time.perf_counter() - started)
            on_ray = []
            if args.workers:
                with Engine(workers=args.workers) as engine:
                    for _ in range(args.repeat):
                        started = time.perf_counter()
                        ray_summary = deidentify_site(site, profile, secret=secret, engine=engine)
                        on_ray.append(time.perf_counter() - started)
                assert ray_summary == summary
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
        "first_run": {
            "seconds": round(deid[0], 4),
            "positions_per_s": round(positions / deid[0]),
        },
    }
    if on_ray:
        out["ray"] = {
            "workers": args.workers,
            "seconds": round(min(on_ray), 4),
            "positions_per_s": round(positions / min(on_ray)),
        }
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(
        f"{len(files)} clips, {positions:,} positions ({summary['rows']:,} kept); one core, "
        f"best of {args.repeat}"
    )

    def line(label: str, seconds: float, suffix: str = "") -> None:
        print(f"  {label:<46}{positions / seconds:12,.0f} positions/s{suffix}")

    line("reference: pyarrow scan of the same Parquet", scan)
    line("onshore deidentify --profile training", best, f"   ratio {scan / best:.2f}")
    line("  first run (frames detected and checked)", deid[0], f"   ratio {scan / deid[0]:.2f}")
    if on_ray:
        line(f"  on Ray, {args.workers} workers", min(on_ray), f"   ratio {scan / min(on_ray):.2f}")


if __name__ == "__main__":
    main()
