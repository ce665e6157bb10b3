"""The driving model trained at each site alone, against constant velocity.

For each region (site) of a project whose sites hold de-identified ``training`` data: builds
its samples (timed, against a plain read of the same Parquet outputs), then trains the MLP over
the past and the object-encoder model on the site's training split and prints ADE, FDE and miss
rate at 2 m on its own test split for constant velocity, both models and the object encoder
under DP-SGD, each model's ADE over constant velocity's, and training samples per second
(DP-SGD against plain training of the same model, measured in the same run). Last, each site's
object-encoder model on every other site's test split: what the federation must beat.

    python bench/forecast.py --project /tmp/lab           # a lab `onshore lab` made
    python bench/forecast.py --vehicles 400 --minutes 15  # simulates one first (~15 min)
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from onshore.deidentify import read_output
from onshore.forecast import (
    DatasetConfig,
    DPConfig,
    Metrics,
    build_model,
    build_site_dataset,
    evaluate,
    train_local,
)
from onshore.forecast.dataset import SiteDataset
from onshore.settings import Project, load_project
from onshore.store import SiteStore


def _dataset(project: Project, site_id: str) -> tuple[SiteDataset, dict[str, float]]:
    """The site's samples, built afresh (timed) beside a plain read of its outputs."""
    with SiteStore.open(project, site_id) as site:
        paths = sorted({r.path for r in site.catalogue.deidentified("training")})
        started = time.perf_counter()
        rows = sum(read_output(site.objects.read(p))[0].num_rows for p in paths)
        read_s = time.perf_counter() - started
        started = time.perf_counter()
        data = build_site_dataset(site, DatasetConfig(), cache=False)
        build_s = time.perf_counter() - started
    return data, {
        "rows": rows,
        "build_rows_per_s": rows / build_s if build_s else math.inf,
        "read_rows_per_s": rows / read_s if read_s else math.inf,
    }


def _row(metrics: Metrics, cv: Metrics) -> dict[str, Any]:
    return {**metrics.as_dict(), "ade_over_cv": round(metrics.ade / cv.ade, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, help="a project with de-identified data")
    parser.add_argument("--vehicles", type=int, default=150, help="without --project: per site")
    parser.add_argument("--minutes", type=float, default=6.0, help="without --project")
    parser.add_argument("--steps", type=int, default=1500, help="optimiser steps per model")
    parser.add_argument("--dp-steps", type=int, default=1000, help="steps with DP-SGD")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--epsilon", type=float, default=8.0, help="DP budget at delta 1e-5")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args(argv)

    def say(message: str) -> None:
        if not args.json:
            print(message, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="onshore-bench-model-") as scratch:
        if args.project is not None:
            project = load_project(args.project)
        else:
            from onshore.lab import build_lab

            say(f"simulating {args.vehicles} vehicles for {args.minutes:g} min per site")
            project, _ = build_lab(
                Path(scratch) / "lab", vehicles=args.vehicles, minutes=args.minutes, say=say
            )
        report = _measure(project, args, say)
    if args.json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        _print(report)
    return 0


def _measure(project: Project, args: argparse.Namespace, say: Any) -> dict[str, Any]:
    regions: dict[str, Any] = {}
    tests: dict[str, Any] = {}
    local: dict[str, Any] = {}
    for site_id in project.settings.sites:
        data, build = _dataset(project, site_id)
        info = data.info
        say(f"{site_id}: {len(data.train)} train / {len(data.test)} test samples")
        if not len(data.train) or not len(data.test):
            regions[site_id] = {"dataset": info, "skipped": "no training or no test samples"}
            continue
        tests[site_id] = data.test
        cv = evaluate(build_model("constant_velocity"), data.test)
        row: dict[str, Any] = {
            "dataset": {k: info[k] for k in ("vehicles_train", "vehicles_test", "train", "test")},
            "build": build,
            "constant_velocity": cv.as_dict(),
        }
        runs: list[tuple[str, DPConfig | None, int]] = [
            ("past_mlp", None, args.steps),
            ("object_encoder", None, args.steps),
        ]
        runs.append(("object_encoder", DPConfig(target_epsilon=args.epsilon), args.dp_steps))
        for name, dp, steps in runs:
            label = name if dp is None else f"{name}_dp"
            say(f"{site_id}: training {label} for {steps} steps")
            model = build_model(name, seed=args.seed)
            result = train_local(
                model,
                data.train,
                steps=steps,
                batch_size=args.batch_size,
                lr=2e-3,
                weight_decay=args.weight_decay,
                dp=dp,
                seed=args.seed,
            )
            model.load_state_dict(result.weights)
            row[label] = {
                **_row(evaluate(model, data.test), cv),
                "steps": result.steps,
                "samples_per_s": round(result.steps * args.batch_size / result.seconds),
                "parameters": sum(int(t.numel()) for t in result.weights.values()),
                **({} if result.epsilon is None else {"epsilon": round(result.epsilon, 3)}),
            }
            if label == "object_encoder":
                local[site_id] = model
        plain = row["object_encoder"]["samples_per_s"]
        row["dp_over_plain_speed"] = round(row["object_encoder_dp"]["samples_per_s"] / plain, 3)
        regions[site_id] = row
    cross = {
        trained_at: {
            tested_at: round(evaluate(model, test).ade, 4) for tested_at, test in tests.items()
        }
        for trained_at, model in local.items()
    }
    return {"project": str(project.root), "steps": args.steps, "regions": regions, "cross": cross}


def _print(report: dict[str, Any]) -> None:
    print(f"project {report['project']}, {report['steps']} steps per model")
    header = (
        f"{'region':14} {'model':18} {'ADE':>7} {'FDE':>7} {'miss':>6} {'/CV':>6} {'samp/s':>8}"
    )
    print(header)
    for site, row in report["regions"].items():
        if "skipped" in row:
            print(f"{site:14} skipped: {row['skipped']}")
            continue
        cv = row["constant_velocity"]
        print(
            f"{site:14} {'constant_velocity':18} {cv['ade']:7.3f} {cv['fde']:7.3f} "
            f"{cv['miss_rate']:6.3f} {1:6.2f} {'-':>8}"
        )
        for label in ("past_mlp", "object_encoder", "object_encoder_dp"):
            m = row[label]
            extra = f"  epsilon {m['epsilon']}" if "epsilon" in m else ""
            print(
                f"{'':14} {label:18} {m['ade']:7.3f} {m['fde']:7.3f} {m['miss_rate']:6.3f} "
                f"{m['ade_over_cv']:6.2f} {m['samples_per_s']:8d}{extra}"
            )
        d, b = row["dataset"], row["build"]
        print(
            f"{'':14} samples {d['train']} train ({d['vehicles_train']} vehicles), {d['test']} "
            f"test ({d['vehicles_test']}); built at {b['build_rows_per_s']:,.0f} rows/s "
            f"against a plain read at {b['read_rows_per_s']:,.0f}; DP-SGD at "
            f"{row['dp_over_plain_speed']:.2f} of plain training's speed"
        )
    if report["cross"]:
        sites = list(report["cross"])
        print("object_encoder ADE, trained at (rows) and tested at (columns):")
        print(f"{'':14}" + "".join(f"{s:>14}" for s in sites))
        for trained_at, row in report["cross"].items():
            print(f"{trained_at:14}" + "".join(f"{row.get(s, math.nan):14.3f}" for s in sites))


if __name__ == "__main__":
    sys.exit(main())
