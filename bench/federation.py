"""What federation costs and what it buys: per region and per kind of motion (stationary,
cruising, turning or braking), the driving model's ADE, FDE and miss rate for constant velocity,
each site's local model, the federated model (with and without DP, each also fine-tuned at the
site on its own data) and the centralised counterfactual, all measured in one run on the same
data.

For each region's test split (kept at its site) it prints every model's metrics, and whether
the aims hold: the federated ADE at most 1.05 of the counterfactual's on every region; the
federated model (or its fine-tuned version) no worse than the site's own local model; every
model beating constant velocity on every region and every kind of motion with at least 500 test
samples, with DP too. Then each site's funnel, the bytes that crossed each border per round
beside the model's size, and epsilon per site at delta 1e-5.

The runs work on a copy of the project (they write ledgers and spend privacy budgets), to which
a CN security assessment for ``model_parameters`` is added so that every site takes part.

    python bench/federation.py --project /tmp/lab           # a lab `onshore lab` made
    python bench/federation.py --vehicles 250 --minutes 10  # simulates one first

The fine-tuning is the product's (``onshore train --fine-tune-steps``): each site trains the
final global model further on its own training split, keeps it, and sends back its errors.
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

from onshore.federation import STRATEGIES, FederatedOptions, run_federated
from onshore.federation.centralized import train_centralized
from onshore.federation.site import model_parameters_assessment
from onshore.forecast import build_model, build_site_dataset, evaluate, train_local
from onshore.forecast.nets import ModelSpec
from onshore.gate.record import add_approval
from onshore.settings import Project, load_project
from onshore.store import SiteStore

AIM_CENTRAL = 1.05
MIN_GROUP = 500
"""A kind of motion is judged on a region only with at least this many test samples."""


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
        steps = options.rounds * options.site_steps(
            project.site(site_id).compute.relative_throughput
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
    parser.add_argument("--strategy", default="fedavg", choices=list(STRATEGIES))
    parser.add_argument(
        "--server-momentum", type=float, default=0.9, help="fedavgm's server momentum"
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--fine-tune-steps",
        type=int,
        default=1000,
        help="at each site, after the federation (onshore train --fine-tune-steps)",
    )
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
        server_momentum=args.server_momentum,
        fine_tune_steps=args.fine_tune_steps,
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
    for name in ("federated", "federated_dp"):
        # The product's own step: each site fine-tuned the final global model on its data.
        tuned = runs[name]["fine_tuned"]
        runs[f"{name}_ft"] = {"regions": tuned}
        seconds[f"{name}_ft"] = max((t["seconds"] or 0.0) for t in tuned.values())
    started = time.perf_counter()
    central = train_centralized(
        project, FederatedOptions.from_dict({**base.as_dict(), "run": "bench-central"}), say=say
    )
    seconds["centralized"] = round(time.perf_counter() - started, 1)
    regions = {}
    for region in base.sites:
        fed = runs["federated"]["regions"][region]
        others = {s: baselines["local"][s][region] for s in base.sites if s != region}
        own = baselines["local"][region][region]
        best_fed = min(fed["ade"], runs["federated_ft"]["regions"][region]["ade"])
        models = {
            "constant_velocity": baselines["cv"][region],
            "local_own": own,
            "federated": _metrics(fed),
            "federated_ft": _metrics(runs["federated_ft"]["regions"][region]),
            "federated_dp": _metrics(runs["federated_dp"]["regions"][region]),
            "federated_dp_ft": _metrics(runs["federated_dp_ft"]["regions"][region]),
            "centralized": _metrics(central["regions"][region]),
        }
        regions[region] = {
            **models,
            "local_others": others,
            "federated_over_centralized": round(fed["ade"] / central["regions"][region]["ade"], 3),
            "federated_beats_other_locals": all(fed["ade"] < o["ade"] for o in others.values()),
            "federated_beats_own_local": fed["ade"] < own["ade"],
            "federated_or_ft_no_worse_than_own_local": best_fed <= own["ade"],
            "beats_cv_by_motion": {
                name: _beats_cv(m, models["constant_velocity"])
                for name, m in models.items()
                if name != "constant_velocity"
            },
            "funnel": runs["federated"]["regions"][region].get("funnel", {}),
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
            "met_no_worse_than_own_local": all(
                r["federated_or_ft_no_worse_than_own_local"] for r in regions.values()
            ),
            "min_group_samples": MIN_GROUP,
            "met_beats_cv_everywhere": {
                name: all(r["beats_cv_by_motion"][name]["all"] for r in regions.values())
                for name in next(iter(regions.values()))["beats_cv_by_motion"]
            }
            if regions
            else {},
        },
        "model_bytes": fed["model_bytes"],
        "bytes_per_round": per_round,
        "bytes_by_round": fed["bytes_per_round"],
        "epsilon_dp_run": runs["federated_dp"]["epsilon"],
        "refusals": {name: run.get("refusals", []) for name, run in runs.items()},
        "seconds": seconds,
    }


def _beats_cv(model: dict[str, Any], cv: dict[str, Any]) -> dict[str, Any]:
    """Whether ``model`` has a lower ADE than constant velocity on each kind of motion with at
    least :data:`MIN_GROUP` samples (``all``: on every one of them)."""
    judged = {
        name: g["ade"] < cv["groups"][name]["ade"]
        for name, g in model.get("groups", {}).items()
        if g["samples"] >= MIN_GROUP and name in cv.get("groups", {})
    }
    return {**judged, "all": all(judged.values()) and model["ade"] < cv["ade"]}


def _metrics(region: dict[str, Any]) -> dict[str, Any]:
    return {k: region[k] for k in ("ade", "fde", "miss_rate", "samples", "groups") if k in region}


def _print(report: dict[str, Any]) -> None:
    o = report["options"]
    print(
        f"model {o['model']['name']}, {o['rounds']} rounds x {o['local_steps']} local steps, "
        f"{o['strategy']} (FedNova-normalised); ADE / FDE / miss rate at 2 m, on each "
        "region's own test split"
    )
    cols = (
        "constant_velocity",
        "local_own",
        "federated",
        "federated_ft",
        "federated_dp",
        "federated_dp_ft",
        "centralized",
    )
    short = ("CV", "local", "fed", "fed+ft", "fed DP", "DP+ft", "central")
    print(f"{'region':14}{'motion':20}{'n':>7}" + "".join(f"{c:>22}" for c in short))
    for region, r in report["regions"].items():
        groups = ["all", *r["constant_velocity"].get("groups", {})]
        for group in groups:
            cells = []
            for c in cols:
                m = r[c] if group == "all" else r[c].get("groups", {}).get(group)
                cells.append(
                    "-".rjust(22)
                    if m is None
                    else f"{m['ade']:.3f}/{m['fde']:.3f}/{m['miss_rate']:.2f}".rjust(22)
                )
            n = (
                r["constant_velocity"]
                if group == "all"
                else r["constant_velocity"]["groups"][group]
            )["samples"]
            print(f"{region:14}{group:20}{n:>7}" + "".join(cells))
        print(f"{'':14}federated / centralised ADE: {r['federated_over_centralized']:.3f}")
    print()
    print("other sites' local models on each region (ADE), against the federated model:")
    for region, r in report["regions"].items():
        others = ", ".join(f"{s} {m['ade']:.3f}" for s, m in r["local_others"].items())
        verdict = "beats all" if r["federated_beats_other_locals"] else "does NOT beat all"
        print(f"  {region:14} federated {r['federated']['ade']:.3f}; {others} -> {verdict}")
    aims = report["aims"]

    def met(ok: bool) -> str:
        return "met" if ok else "NOT met"

    print()
    print(
        f"aim federated/centralised <= {aims['federated_over_centralized_at_most']} on every "
        f"region: {met(aims['met_central'])}; federated (or fine-tuned) no worse than the "
        f"site's own local model: {met(aims['met_no_worse_than_own_local'])}; beats every "
        f"other local model: {met(aims['met_beats_other_locals'])}"
    )
    print(
        f"beats constant velocity on every region and kind of motion with at least "
        f"{aims['min_group_samples']} test samples: "
        + ", ".join(f"{name} {met(ok)}" for name, ok in aims["met_beats_cv_everywhere"].items())
    )
    print()
    print("each site's data, from clips to samples:")
    for region, r in report["regions"].items():
        funnel = ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in r["funnel"].items())
        print(f"  {region:14} {funnel}")
    print(f"model tensors: {report['model_bytes']:,} bytes")
    for site, size in report["bytes_per_round"].items():
        ratio = size / report["model_bytes"] if report["model_bytes"] else 0
        print(f"  {site:14} {size:>12,} bytes crossed per round ({ratio:.2f} x the model)")
    eps = ", ".join(f"{s} {e:.2f}" for s, e in report["epsilon_dp_run"].items() if e is not None)
    print(f"epsilon per site in the DP run (delta 1e-5): {eps}")
    print(f"seconds: {report['seconds']}")


if __name__ == "__main__":
    raise SystemExit(main())
