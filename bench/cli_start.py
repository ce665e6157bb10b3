"""How soon a CLI command starts: the seconds before ``onshore ledger verify`` (a command that
needs the catalogue, the ledger and the release records, not torch) has done its work, against
the same command after importing every module the packages re-exported eagerly before they
imported on first use (:mod:`onshore._lazy`), measured in the same run.

Each repetition runs a fresh Python process; the median of ``--repeat`` runs is reported for
each, with user + system CPU time, and their ratio.

    .venv/bin/python bench/cli_start.py [--repeat 7] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EAGER = [
    # What 'onshore ledger verify' imported through the packages' __init__ files before they
    # imported on first use (listed with python -X importtime at commit 73ae94f's parent).
    "onshore.release.create",
    "onshore.release.load",
    "onshore.forecast.train",
    "onshore.forecast.local",
    "onshore.ingest.run",
    "onshore.deidentify.run",
]
"""The modules the command imported then and does not need."""

COMMAND = (
    "import sys\n"
    "{preload}"
    "from onshore.cli.app import app\n"
    "app(['ledger', 'verify', '--project', sys.argv[1], '--json'], standalone_mode=False)\n"
)


def _once(code: str, project: Path) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one fresh process running ``code``."""
    before = os.times()
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code, str(project)], capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - start
    after = os.times()
    if done.returncode != 0:
        raise SystemExit(f"the command failed:\n{done.stderr[-2000:]}")
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        from onshore.parties.init import init_parties

        parties = init_parties(Path(scratch) / "parties")
        project = parties["cn-shanghai"].root
        subprocess.run(
            [sys.executable, "-m", "onshore", "ledger", "verify", "--project", str(project)],
            capture_output=True,
            check=False,
        )  # warm the disk cache for both
        preload = "".join(f"import {m}\n" for m in EAGER)
        runs: dict[str, list[tuple[float, float]]] = {"lazy": [], "eager": []}
        for _ in range(args.repeat):  # interleaved, so that load on the machine hits both
            runs["lazy"].append(_once(COMMAND.format(preload=""), project))
            runs["eager"].append(_once(COMMAND.format(preload=preload), project))
    wall = {name: statistics.median(w for w, _ in found) for name, found in runs.items()}
    cpu = {name: statistics.median(c for _, c in found) for name, found in runs.items()}
    lazy, eager, lazy_cpu, eager_cpu = wall["lazy"], wall["eager"], cpu["lazy"], cpu["eager"]
    result: dict[str, object] = {
        **{name: {"wall_s": round(wall[name], 2), "cpu_s": round(cpu[name], 2)} for name in runs},
        "ratio_wall": round(eager / lazy, 2),
        "ratio_cpu": round(eager_cpu / lazy_cpu, 2),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"'onshore ledger verify', median of {args.repeat} fresh processes:")
    print(f"  on first use  {lazy:6.2f} s wall  {lazy_cpu:6.2f} s CPU")
    print(f"  eager         {eager:6.2f} s wall  {eager_cpu:6.2f} s CPU")
    print(
        f"  eager / on first use: {result['ratio_wall']}x wall, {result['ratio_cpu']}x CPU "
        "(eager: with the modules the packages imported up front before)"
    )


if __name__ == "__main__":
    main()
