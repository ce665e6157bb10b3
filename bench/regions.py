"""How different the simulated regions are: per-region statistics of the fleet's clips.

Simulates each region with the same number of vehicles, minutes and seed, reads the clips back
from their MCAP files, and prints per region: ego speed (mean, p50, p90), headway to the leader
in the ego's lane (mean, p50), density (objects within sensor range per step), the share of
two-wheelers and buses among tracked objects and the share of hard-brake clips. Then, for each
pair of regions, the two-sample Kolmogorov-Smirnov statistic of ego speed and of headway: the
reference a region is compared with is each other region, measured in the same run.

    python bench/regions.py                      # defaults finish in a couple of minutes
    python bench/regions.py --vehicles 600 --minutes 10 --json
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import tempfile
import time
from pathlib import Path

import orjson

from onshore.clips.mcap import read_mcap
from onshore.fleet import REGIONS, FleetStatistics, fleet_statistics, ks_statistic, simulate_fleet

_COLUMNS = (
    ("clips", "clips", "{:.0f}"),
    ("speed_mean", "v mean", "{:.2f}"),
    ("speed_p50", "v p50", "{:.2f}"),
    ("speed_p90", "v p90", "{:.2f}"),
    ("headway_mean", "hw mean", "{:.2f}"),
    ("headway_p50", "hw p50", "{:.2f}"),
    ("density", "objects", "{:.2f}"),
    ("two_wheeler_share", "2-wheel", "{:.3f}"),
    ("bus_share", "bus", "{:.3f}"),
    ("hard_brake_share", "hard brk", "{:.3f}"),
)


def _format(value: float, pattern: str) -> str:
    return "-" if isinstance(value, float) and math.isnan(value) else pattern.format(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vehicles", type=int, default=500, help="vehicles per region")
    parser.add_argument("--minutes", type=float, default=10.0, help="simulated minutes")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, help="keep the clips here (default: a temp dir)")
    parser.add_argument("--cache-dir", type=Path, help="where generated networks are cached")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="onshore-bench-regions-") as scratch:
        root = args.out or Path(scratch)
        stats: dict[str, FleetStatistics] = {}
        seconds: dict[str, float] = {}
        for region in REGIONS:
            started = time.perf_counter()
            result = simulate_fleet(
                region,
                vehicles=args.vehicles,
                minutes=args.minutes,
                seed=args.seed,
                out=root / region,
                recorded_in=region.upper(),
                cache_dir=args.cache_dir,
            )
            seconds[region] = time.perf_counter() - started
            clips = [read_mcap(path.read_bytes(), path.name) for path in result.clips]
            stats[region] = fleet_statistics(clips)

    pairs = {
        f"{a}-{b}": {
            "ks_speed": ks_statistic(stats[a].speeds, stats[b].speeds),
            "ks_headway": ks_statistic(stats[a].headways, stats[b].headways),
        }
        for a, b in itertools.combinations(REGIONS, 2)
    }
    if args.json:
        report = {
            "params": {"vehicles": args.vehicles, "minutes": args.minutes, "seed": args.seed},
            "regions": {
                region: {**stats[region].summary(), "seconds": seconds[region]}
                for region in REGIONS
            },
            "pairs": pairs,
        }
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0

    print(
        f"{args.vehicles} vehicles, {args.minutes:g} minutes, seed {args.seed}; "
        "speeds m/s, headways s"
    )
    header = ["region", *(title for _, title, _ in _COLUMNS), "sim s"]
    rows = [
        [
            region,
            *(_format(stats[region].summary()[key], fmt) for key, _, fmt in _COLUMNS),
            f"{seconds[region]:.1f}",
        ]
        for region in REGIONS
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))
    print()
    print("pairwise two-sample KS statistic (0 = same distribution, 1 = disjoint)")
    print(f"{'pair':>6}  {'speed':>6}  {'headway':>7}")
    for pair, ks in pairs.items():
        speed, headway = _format(ks["ks_speed"], "{:.3f}"), _format(ks["ks_headway"], "{:.3f}")
        print(f"{pair:>6}  {speed:>6}  {headway:>7}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
