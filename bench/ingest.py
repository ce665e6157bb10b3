"""Ingest throughput: MB/s of MCAP uploads ingested, against a plain pyarrow Parquet write of the
same rows, measured in the same run.

The uploads come from the SUMO fleet simulator (or ``--uploads DIR``). Each repetition ingests
them into a fresh site (decode, schema and physics checks, content-addressed atomic Parquet
write, catalogue transaction); the reference writes the very same clip tables with
``pyarrow.parquet.write_table`` (same compression) one file per clip, as ingest does. Both figures
are in MB of MCAP per second, so their ratio is the share of a bare Parquet write's speed that
ingest keeps. The best of ``--repeat`` runs is reported for each.

    .venv/bin/python bench/ingest.py [--region eu] [--vehicles 250] [--minutes 8] [--json]
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

from onshore.clips.mcap import read_mcap
from onshore.ingest import ingest
from onshore.sites import init_project
from onshore.store import SiteStore


def _uploads(args: argparse.Namespace, scratch: Path) -> list[Path]:
    if args.uploads is not None:
        return sorted(args.uploads.glob("*.mcap"))
    from onshore.fleet import simulate_fleet

    out = scratch / "uploads"
    print(
        f"simulating {args.vehicles} vehicles for {args.minutes} min ({args.region})...",
        file=sys.stderr,
    )
    result = simulate_fleet(
        args.region,
        vehicles=args.vehicles,
        minutes=args.minutes,
        seed=args.seed,
        out=out,
        recorded_in=SITES[args.region],
    )
    return sorted(result.clips)


SITES = {"cn": "cn-shanghai", "eu": "eu-frankfurt", "us": "us-oregon"}
"""The site of the three-regions example that each region's uploads land at."""


def _ingest_seconds(files: list[Path], scratch: Path, run: int, site_id: str) -> float:
    project = init_project(scratch / f"project-{run}")
    with SiteStore.open(project, site_id) as site:
        started = time.perf_counter()
        report = ingest(site, files, remove_quarantined_source=False)
        seconds = time.perf_counter() - started
    if report.quarantined or report.clips != len(files):
        raise SystemExit(f"ingest did not take every upload: {report.as_dict()}")
    return seconds


def _reference_seconds(tables: list[pa.Table], scratch: Path, run: int) -> float:
    out = scratch / f"reference-{run}"
    out.mkdir()
    started = time.perf_counter()
    for i, table in enumerate(tables):
        pq.write_table(table, out / f"{i}.parquet", compression="zstd")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--uploads", type=Path, help="a folder of MCAP uploads (recorded in --region) instead"
    )
    parser.add_argument("--region", default="eu", choices=["cn", "eu", "us"])
    parser.add_argument("--vehicles", type=int, default=250)
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="onshore-bench-ingest-"))
    try:
        files = _uploads(args, scratch)
        if not files:
            raise SystemExit("no MCAP uploads to ingest")
        mcap_mb = sum(f.stat().st_size for f in files) / 1e6
        tables = [read_mcap(f.read_bytes(), str(f)).table for f in files]
        rows = sum(t.num_rows for t in tables)
        best = min(
            _ingest_seconds(files, scratch, r, SITES[args.region]) for r in range(args.repeat)
        )
        reference = min(_reference_seconds(tables, scratch, r) for r in range(args.repeat))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    result = {
        "files": len(files),
        "rows": rows,
        "mcap_mb": round(mcap_mb, 2),
        "reference_pyarrow_write": {
            "seconds": round(reference, 4),
            "mb_per_s": round(mcap_mb / reference, 2),
        },
        "ingest": {
            "seconds": round(best, 4),
            "mb_per_s": round(mcap_mb / best, 2),
        },
        "ratio_ingest_to_reference": round(reference / best, 3),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{len(files)} MCAP uploads, {rows:,} rows, {mcap_mb:.1f} MB (best of {args.repeat})")
    print(
        f"  reference: pyarrow write_table of the same rows  "
        f"{result['reference_pyarrow_write']['mb_per_s']:8.2f} MB/s"
    )
    print(
        f"  onshore ingest (decode, check, store, catalogue) "
        f"{mcap_mb / best:8.2f} MB/s   ratio {reference / best:.2f}"
    )


if __name__ == "__main__":
    main()
