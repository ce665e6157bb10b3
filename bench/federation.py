"""What federation costs and what it buys: per region, the driving model's ADE, FDE and miss
rate for constant velocity, each site's local model, the federated model (with and without DP)
and the centralised counterfactual, all measured in one run on the same data.

For each region's test split (kept at its site) it prints every model's metrics, the federated
ADE over the counterfactual's (aim: at most 1.05 on every region) and whether the federated model
beats every other site's local model there (aim: yes). Then the bytes that crossed each border
per round beside the model's size, and epsilon per site at delta 1e-5.

The runs work on a copy of the project (they write ledgers and spend privacy budgets), to which
a CN security assessment for ``model_parameters`` is added so that every site takes part.

    python bench/federation.py --project /tmp/lab           # a lab `onshore lab` made
    python bench/federation.py --vehicles 250 --minutes 10  # simulates one first
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import orjson

from onshore.federation import FederatedOptions, run_federated
from onshore.federation.centralized import train_centralized
from onshore.federation.site import model_parameters_assessment
from onshore.gate.record import add_approval
from onshore.model import build_model, build_site_dataset, evaluate, train_local
from onshore.model.nets import ModelSpec
from onshore.settings import Project, load_project
from onshore.store import SiteStore

AIM_CENTRAL = 1.05


def _approve_cn(project: Project) -> None:
    for site_id, site in project.settings.sites.items():
        if site.jurisdiction != "CN":
            continue
        add_approval(
            project,
            site_id,
            model_parameters_assessment(
                project,
                approval_id=f"BENCH-CAC-MODEL-{site_id}",
                reference="bench: an assessment assumed granted",
                valid_from=date(2026, 1, 1),
                max_subjects=1_000_000,
            ),
        )


def _locals(project: Project, options: FederatedOptions, say: Any) -> dict[str, Any]:
    """Each site's model trained alone with the compute it spends in the federation, and its
    metrics on every region's test split (a measurement only: the test splits never move)."""
    tests, models = {}, {}
    for site_id in options.sites:
        with SiteStore.open(project, site_id) as store:
            data = build_site_dataset(store, options.dataset)
        tests[site_id] = data.test
        steps = options.rounds * max(
            1, round(options.local_steps * project.site(site_id).compute.relative_throughput)
        )
        say(f"local: {site_id} trains alone for {steps} steps on {len(data.train)} samples")
        result = train_local(
            build_model(options.model, seed=options.seed),
            data.train,
            steps=steps,
            batch_size=options.batch_size,
            lr=options.lr,
            weight_decay=options.weight_decay,
            seed=options.seed,
        )
        model = build_model(options.model)
        model.load_state_dict(result.weights)
        models[site_id] = model
    cv = build_model("constant_velocity")
    return {
        "cv": {r: evaluate(cv, t).as_dict() for r, t in tests.items()},
        "local": {
            s: {r: evaluate(m, t).as_dict() for r, t in tests.items()} for s, m in models.items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, help="a project with de-identified data")
    parser.add_argument("--vehicles", type=int, default=250, help="without --project: per site")
    parser.add_argument("--minutes", type=float, default=10.0, help="without --project")
    parser.add_argument("--model", default="object_encoder")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--local-steps", type=int, default=50)
    parser.add_argument("--strategy", default="fedavg", choices=["fedavg", "fedprox", "fedadam"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args(argv)

    def say(message: str) -> None:
        if not args.json:
            print(message, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="onshore-bench-federation-") as scratch:
        if args.project is not None:
            source = args.project
        else:
            from onshore.lab import build_lab

            source = Path(scratch) / "lab"
            say(f"simulating {args.vehicles} vehicles for {args.minutes:g} min per site")
            build_lab(source, vehicles=args.vehicles, minutes=args.minutes, say=say)
        copy = Path(scratch) / "project"
        shutil.copytree(source, copy, ignore=shutil.ignore_patterns("runs", "uploads"))
        project = load_project(copy)
        _approve_cn(project)
        report = _measure(project, args, say)
    if args.json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        _print(report)
    return 0


def _measure(project: Project, args: argparse.Namespace, say: Any) -> dict[str, Any]:
    base = FederatedOptions(
        run="bench-federated",
        sites=tuple(project.settings.sites),
        project=str(project.root),
        model=ModelSpec(args.model),
        rounds=args.rounds,
        local_steps=args.local_steps,
        batch_size=args.batch_size,
        strategy=args.strategy,
        dp=False,
        seed=args.seed,
    )
    started = time.perf_counter()
    baselines = _locals(project, base, say)
    local_s = time.perf_counter() - started
    runs: dict[str, Any] = {}
    seconds: dict[str, float] = {"local": round(local_s, 1)}
    for name, options in (
        ("federated", base),
        (
            "federated_dp",
            FederatedOptions.from_dict({**base.as_dict(), "run": "bench-dp", "dp": True}),
        ),
    ):
        started = time.perf_counter()
        runs[name] = run_federated(project, options, say=say)
        seconds[name] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    central = train_centralized(
        project, FederatedOptions.from_dict({**base.as_dict(), "run": "bench-central"}), say=say
    )
    seconds["centralized"] = round(time.perf_counter() - started, 1)
    regions = {}
    for region in base.sites:
        fed = runs["federated"]["regions"][region]
        others = {s: baselines["local"][s][region] for s in base.sites if s != region}
        regions[region] = {
            "constant_velocity": baselines["cv"][region],
            "local_own": baselines["local"][region][region],
            "local_others": others,
            "federated": _metrics(fed),
            "federated_dp": _metrics(runs["federated_dp"]["regions"][region]),
            "centralized": _metrics(central["regions"][region]),
            "federated_over_centralized": round(fed["ade"] / central["regions"][region]["ade"], 3),
            "federated_beats_other_locals": all(fed["ade"] < o["ade"] for o in others.values()),
            "federated_beats_own_local": fed["ade"] < baselines["local"][region][region]["ade"],
        }
    fed = runs["federated"]
    per_round = {site: round(total / base.rounds) for site, total in fed["bytes_crossed"].items()}
    return {
        "options": base.settings(),
        "regions": regions,
        "aims": {
            "federated_over_centralized_at_most": AIM_CENTRAL,
            "met_central": all(
                r["federated_over_centralized"] <= AIM_CENTRAL for r in regions.values()
            ),
            "met_beats_other_locals": all(
                r["federated_beats_other_locals"] for r in regions.values()
            ),
        },
        "model_bytes": fed["model_bytes"],
        "bytes_per_round": per_round,
        "bytes_by_round": fed["bytes_per_round"],
        "epsilon_dp_run": runs["federated_dp"]["epsilon"],
        "refusals": {name: run["refusals"] for name, run in runs.items()},
        "seconds": seconds,
    }


def _metrics(region: dict[str, Any]) -> dict[str, Any]:
    return {k: region[k] for k in ("ade", "fde", "miss_rate")}


def _print(report: dict[str, Any]) -> None:
    o = report["options"]
    print(
        f"model {o['model']['name']}, {o['rounds']} rounds x {o['local_steps']} local steps, "
        f"{o['strategy']} (FedNova-normalised); ADE / FDE / miss rate at 2 m, on each "
        "region's own test split"
    )
    cols = ("constant_velocity", "local_own", "federated", "federated_dp", "centralized")
    print(f"{'region':14}" + "".join(f"{c:>24}" for c in cols) + f"{'fed/central':>13}")
    for region, r in report["regions"].items():
        cells = "".join(
            f"{r[c]['ade']:>8.3f}/{r[c]['fde']:.3f}/{r[c]['miss_rate']:.2f}".rjust(24) for c in cols
        )
        print(f"{region:14}{cells}{r['federated_over_centralized']:>13.3f}")
    print()
    print("other sites' local models on each region (ADE), against the federated model:")
    for region, r in report["regions"].items():
        others = ", ".join(f"{s} {m['ade']:.3f}" for s, m in r["local_others"].items())
        verdict = "beats all" if r["federated_beats_other_locals"] else "does NOT beat all"
        print(f"  {region:14} federated {r['federated']['ade']:.3f}; {others} -> {verdict}")
    aims = report["aims"]
    print()
    print(
        f"aim federated/centralised <= {aims['federated_over_centralized_at_most']} on every "
        f"region: {'met' if aims['met_central'] else 'NOT met'}; beats every other local "
        f"model: {'met' if aims['met_beats_other_locals'] else 'NOT met'}"
    )
    print(f"model tensors: {report['model_bytes']:,} bytes")
    for site, size in report["bytes_per_round"].items():
        ratio = size / report["model_bytes"] if report["model_bytes"] else 0
        print(f"  {site:14} {size:>12,} bytes crossed per round ({ratio:.2f} x the model)")
    eps = ", ".join(f"{s} {e:.2f}" for s, e in report["epsilon_dp_run"].items() if e is not None)
    print(f"epsilon per site in the DP run (delta 1e-5): {eps}")
    print(f"seconds: {report['seconds']}")


if __name__ == "__main__":
    raise SystemExit(main())
