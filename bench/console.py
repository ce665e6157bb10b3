"""Console page times at a site of a million clips, against the catalogue queries behind them.

China's site folder alone (a party of the three-regions example) gets ``--clips`` synthetic
clips in its catalogue (SQLite, as the embedded default), 50 vehicles' worth of VINs, both
triggers, a quarter without consent, every fifth clip labelled ``trajectory``. Its own console
(FastAPI, in process through Starlette's test client, signed in as the site's operator) serves
each page ``--repeat`` times after one warm-up: the site page (aggregates and the first page of
clips), a deep page, and pages filtered by label, by consent and sorted by size, and by a VIN
prefix; the overview and the decisions page. Each page's median and 95th percentile are set
against the median of the catalogue queries behind it, run alone in the same process: the
site's inventory and the one page of clips (:meth:`Catalogue.clip_page`) for a site page, the
inventory for the overview, the ledger's entries for the decisions page.

    .venv/bin/python bench/console.py [--clips 1000000] [--repeat 9] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from onshore.console import Role, UserStore, create_app
from onshore.gate.site import OpenSite
from onshore.ledger import Ledger
from onshore.parties.init import init_parties
from onshore.settings import Project
from onshore.store import SiteStore
from onshore.store.catalogue import ClipRecord, FileRecord, LabelRecord

SITE = "cn-shanghai"
PASSWORD = "correct horse battery"
BATCH = 10_000
T0 = datetime(2026, 3, 1, tzinfo=UTC)
VINS = [f"LSVAB{n:04d}C2SS{n:06d}"[:17] for n in range(50)]


def _clip(n: int) -> ClipRecord:
    start = T0 + timedelta(seconds=20 * n)
    return ClipRecord(
        clip_id=f"clip-{n:08d}",
        sha256=f"{n:064x}",
        path=f"clips/{n % 256:02x}/{n:064x}.parquet",
        vin=VINS[n % len(VINS)],
        vehicle_model="Model S",
        trigger="hard_brake" if n % 7 == 0 else "random_sample",
        consent_training=n % 4 != 0,
        recorded_in=SITE,
        start_time=start,
        end_time=start + timedelta(seconds=20),
        rows=200,
        objects=1500,
        bytes=40_000 + (n * 7919) % 20_000,
        min_lat=31.2,
        max_lat=31.3,
        min_lon=121.4,
        max_lon=121.5,
        source_sha256=f"{n // 100:064x}",
    )


def fill(project: Project, clips: int, say: Callable[[str], None]) -> float:
    """Catalogue ``clips`` clips and their labels at the site; returns the seconds it took."""
    started = time.perf_counter()
    with SiteStore.open(project, SITE) as site:
        for first in range(0, clips, BATCH):
            batch = [_clip(n) for n in range(first, min(clips, first + BATCH))]
            record = FileRecord(f"{first:064x}", f"/in/{first}.mcap", 1, "ingested", len(batch))
            site.catalogue.register(record, batch)
            labelled = [c.clip_id for c in batch[::5]]
            site.catalogue.replace_labels(
                labelled, [LabelRecord(c, "trajectory", 200, "positions") for c in labelled]
            )
            if (first // BATCH) % 10 == 0:
                say(f"  {first + len(batch):,} clips catalogued")
    return time.perf_counter() - started


def _timed(work: Callable[[], Any], repeat: int) -> list[float]:
    work()  # warm-up: imports, template compilation, the database's pages in memory
    out = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        out.append(time.perf_counter() - started)
    return out


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def measure(project: Project, clips: int, repeat: int) -> list[dict[str, Any]]:
    UserStore(project).add("op", Role.SITE_OPERATOR, PASSWORD, site=SITE)
    console = TestClient(create_app(project))
    signed = console.post(
        "/login", data={"username": "op", "password": PASSWORD, "next": "/"}, follow_redirects=False
    )
    assert signed.status_code == 303, signed.text
    deep = max(1, clips // 100 // 2)
    pages: list[tuple[str, str, dict[str, str], dict[str, Any]]] = [
        ("site page", f"/sites/{SITE}", {}, {}),
        (
            f"site page {deep:,}",
            f"/sites/{SITE}",
            {"page_no": str(deep)},
            {"offset": (deep - 1) * 100},
        ),
        ("label filter", f"/sites/{SITE}", {"label": "trajectory"}, {"label": "trajectory"}),
        (
            "no consent, by size",
            f"/sites/{SITE}",
            {"consent": "no", "sort": "bytes", "order": "desc"},
            {"consent": False, "sort": "bytes", "descending": True},
        ),
        ("VIN prefix", f"/sites/{SITE}", {"vin": VINS[7][:12]}, {"vin": VINS[7][:12]}),
        ("overview", "/", {}, {}),
        ("decisions", "/decisions", {}, {}),
    ]
    rows = []
    with OpenSite.open(project, SITE) as site:
        catalogue = site.store.catalogue
        for name, path, params, query in pages:
            got = console.get(path, params=params)
            assert got.status_code == 200, (name, got.status_code, got.text[:300])

            def get(p: str = path, q: dict[str, str] = params) -> None:
                console.get(p, params=q)

            times = _timed(get, repeat)
            if path == "/":
                behind = _timed(catalogue.inventory, repeat)
            elif path == "/decisions":
                behind = _timed(lambda: Ledger.open(catalogue).entries(), repeat)
            else:

                def both(q: dict[str, Any] = query) -> None:
                    catalogue.inventory()
                    catalogue.clip_page(**q, limit=100)

                behind = _timed(both, repeat)
            median, query_median = statistics.median(times), statistics.median(behind)
            rows.append(
                {
                    "page": name,
                    "median_ms": round(1000 * median, 1),
                    "p95_ms": round(1000 * _p95(times), 1),
                    "queries_ms": round(1000 * query_median, 1),
                    "ratio": round(median / query_median, 2),
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--clips", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    def say(message: str) -> None:
        if not args.json:
            print(message, file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="onshore-console-bench-") as tmp:
        project = init_parties(Path(tmp))[SITE]  # the peers on file, China's folder used
        say(f"cataloguing {args.clips:,} clips at {SITE}")
        seconds = fill(project, args.clips, say)
        rows = measure(project, args.clips, args.repeat)
    result = {"clips": args.clips, "repeat": args.repeat, "fill_seconds": round(seconds, 1)}
    result["pages"] = rows
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{args.clips:,} clips at {SITE} (catalogued in {seconds:.0f} s), best of {args.repeat}:")
    print(f"{'page':<26}{'median ms':>11}{'p95 ms':>9}{'queries ms':>12}{'ratio':>7}")
    for r in rows:
        print(
            f"{r['page']:<26}{r['median_ms']:>11}{r['p95_ms']:>9}{r['queries_ms']:>12}"
            f"{r['ratio']:>7}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
