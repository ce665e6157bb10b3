"""What governance costs a federated round: wall time per round of onshore's governed run over
a bare Flower run of the same model, data and rounds, measured in the same run (aim: at most
1.15).

The governed run is :func:`~onshore.federation.run_federated`: every reply passes the site's
outbound mod (content checks, the gate, a ledger entry, a signature), DP-SGD's steps are kept in
the site's database, and the coordinator checks each reply's signature, round and digest,
normalises the updates (FedNova) and writes each phase to its ledger. The bare run is what a
Flower user would write without onshore: a ClientApp with no mods whose handlers read the site's
cached samples, train with the same DP-SGD (noise and clipping from the site's ``privacy``, its
steps kept in the node's in-memory state from what the site had spent before) and reply the
weights and metrics, or evaluate the model on the test split; a plain ``FedAvg`` in a ServerApp.
Both run in Flower's Simulation Engine with the same Ray backend, the same local steps per site
(its compute profile's share), batch size, learning rate, weight decay and seeds; a site whose
privacy budget runs out sends no further update in either, and the bench checks that both used
the same updates.

Per round is the wall time from the end of round 1 to the end of the last round over the rounds
between, so Ray's start-up and the first round's imports count for neither. Each variant runs
``--repeat`` times, alternating, and the best counts. Both work on copies of the project (the
governed run writes ledgers and spends privacy budgets), to which a CN security assessment for
``model_parameters`` is added so that every site's update is used in both.

    python bench/federation_overhead.py --project /tmp/lab      # a lab `onshore lab` made
    python bench/federation_overhead.py                         # simulates one first (~4 min)
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any, Final, cast

import orjson
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords
from flwr.simulation import run_simulation

from onshore.errors import PrivacyBudgetSpent
from onshore.federation import FederatedOptions, run_federated
from onshore.federation.run import flower_environment
from onshore.federation.site import (
    ErrorCode,
    _seed,
    load_accountant,
    model_parameters_assessment,
    server_round_of,
    site_dp,
    site_of,
)
from onshore.forecast import (
    PrivacyAccountant,
    build_model,
    build_site_dataset,
    evaluate,
    train_local,
)
from onshore.forecast.nets import ModelSpec
from onshore.gate.record import add_approval
from onshore.ledger import Ledger
from onshore.settings import Project, load_project
from onshore.store import SiteStore
from onshore.store.catalogue import Catalogue

AIM: Final = 1.15
Say = Callable[[str], None]


def _copy(source: Path, target: Path) -> Project:
    """A copy of the project to run on, with every CN site's model updates approved."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("runs", "uploads"))
    project = load_project(target)
    for site_id, site in project.settings.sites.items():
        if site.jurisdiction != "CN":
            continue
        add_approval(
            project,
            site_id,
            model_parameters_assessment(
                project,
                approval_id=f"BENCH-OVERHEAD-MODEL-{site_id}",
                reference="bench: an assessment assumed granted",
                valid_from=date(2026, 1, 1),
                max_subjects=1_000_000,
            ),
        )
    return project


def _sites_with_data(project: Project, options: FederatedOptions, say: Say) -> list[str]:
    """The sites with training and test samples; builds each one's dataset cache, so that in
    both runs every message reads it."""
    sites = []
    for site_id in project.settings.sites:
        with SiteStore.open(project, site_id) as store:
            data = build_site_dataset(store, options.dataset)
        say(f"{site_id}: {len(data.train)} train / {len(data.test)} test samples")
        if len(data.train) and len(data.test):
            sites.append(site_id)
    return sites


def _per_round(stamps: dict[int, float], rounds: int) -> float:
    missing = [r for r in range(1, rounds + 1) if r not in stamps]
    if missing:
        raise SystemExit(f"rounds {missing} never finished")
    return (stamps[rounds] - stamps[1]) / (rounds - 1)


# --- onshore's governed run ----------------------------------------------------------------


def _ledger_heads(project: Project) -> dict[str, int]:
    """The last sequence number of every site's ledger and the coordinator's."""
    heads = {}
    coord = project.settings.coordinator
    for site_id in [*project.settings.sites, coord.id]:
        where = coord if site_id == coord.id else project.site(site_id)
        catalogue = Catalogue(project.catalogue_url(where), site_id)
        try:
            head = Ledger.open(catalogue).head()
        finally:
            catalogue.close()
        heads[site_id] = -1 if head is None else head.seq
    return heads


def _ledger_written(project: Project, since: dict[str, int]) -> dict[str, dict[str, int]]:
    """Entries and payload bytes each ledger gained after ``since``."""
    written = {}
    coord = project.settings.coordinator
    for site_id in [*project.settings.sites, coord.id]:
        where = coord if site_id == coord.id else project.site(site_id)
        catalogue = Catalogue(project.catalogue_url(where), site_id)
        try:
            entries = Ledger.open(catalogue).entries(since=since.get(site_id, -1) + 1)
        finally:
            catalogue.close()
        written[site_id] = {
            "entries": len(entries),
            "payload_bytes": sum(len(e.payload.encode()) for e in entries),
        }
    return written


def governed(project: Project, options: FederatedOptions, say: Say) -> dict[str, Any]:
    """onshore's run; the end of each round is when the coordinator reports its evaluation."""
    stamps: dict[int, float] = {}

    def stamp(message: str) -> None:
        head, _, _ = message.partition(":")
        parts = head.split()
        if len(parts) == 3 and parts[0] == "round" and parts[2] == "evaluate":
            stamps[int(parts[1].split("/")[0])] = time.perf_counter()
        say(f"  governed: {message}")

    before = _ledger_heads(project)
    started = time.perf_counter()
    summary = run_federated(project, options, say=stamp)
    total = time.perf_counter() - started
    unexpected = [r for r in summary["refusals"] if r.get("code") != ErrorCode.BUDGET_SPENT]
    if unexpected:
        raise SystemExit(f"the governed run refused replies: {unexpected}")
    written = _ledger_written(project, before)
    rounds = options.rounds
    crossed = summary["bytes_per_round"]
    return {
        "per_round_s": _per_round(stamps, rounds),
        "first_round_end_s": stamps[1] - started,
        "total_s": total,
        "updates_steps": _governed_updates(project, options),
        "ledger_per_round": {
            site: {k: round(v / rounds, 1) for k, v in w.items()} for site, w in written.items()
        },
        "bytes_crossed_per_round": {
            site: {
                d: round(sum(r.get(site, {}).get(d, 0) for r in crossed.values()) / rounds)
                for d in ("down", "up")
            }
            for site in options.sites
        },
        "epsilon": summary["epsilon"],
    }


def _governed_updates(project: Project, options: FederatedOptions) -> list[list[int]]:
    """Per round, the optimiser steps of each update the coordinator used (a site whose privacy
    budget is spent sends none)."""
    rounds = orjson.loads((project.root / "runs" / options.run / "rounds.json").read_bytes())
    return [
        sorted(int(a["metrics"]["num-steps"]) for a in r["accepted"])
        for r in rounds
        if r["kind"] == "train"
    ]


# --- the bare Flower run -------------------------------------------------------------------


def _backend(sites: int) -> dict[str, Any]:
    """The Ray backend :func:`run_federated` configures: one CPU per site, at most all."""
    return {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {
            "num_cpus": max(1, min(sites, os.cpu_count() or 1)),
            "num_gpus": 0,
            "include_dashboard": False,
            "log_to_driver": False,
            "logging_level": logging.ERROR,
        },
    }


def _spent(record: ConfigRecord | None) -> list[tuple[float, float, int]]:
    """The DP-SGD steps a node keeps in its state: (noise multiplier, sample rate, steps)."""
    if record is None:
        return []
    noise = cast("list[float]", record["noise"])
    rate = cast("list[float]", record["rate"])
    steps = cast("list[int]", record["steps"])
    return list(zip(noise, rate, steps, strict=True))


def _bare_client_app(
    options: FederatedOptions, spent_before: dict[str, list[tuple[float, float, int]]]
) -> ClientApp:
    """A plain ClientApp: no mods; train with DP-SGD and reply, or evaluate and reply. Each
    node's accountant starts from what its site had spent before the run (``spent_before``),
    as the governed run's does, and lives in the node's state."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        ref = site_of(context, options)
        site = ref.project.site(ref.site)
        server_round = server_round_of(msg)
        with SiteStore.open(ref.project, ref.site) as store:
            data = build_site_dataset(store, options.dataset)
        dp = site_dp(site) if options.dp else None
        kept = context.state.config_records.get("privacy")
        accountant = PrivacyAccountant(spent_before[ref.site] if kept is None else _spent(kept))
        try:
            result = train_local(
                build_model(options.model, seed=options.seed),
                data.train,
                steps=options.site_steps(site.compute.relative_throughput),
                batch_size=options.batch_size,
                lr=options.lr,
                weight_decay=options.weight_decay,
                dp=dp,
                seed=_seed(options, ref.site, server_round),
                initial=msg.content.array_records["arrays"].to_torch_state_dict(),
                accountant=accountant,
            )
        except PrivacyBudgetSpent as exc:
            return Message(Error(ErrorCode.BUDGET_SPENT, f"{ref.site}: {exc}"), reply_to=msg)
        if accountant.history:
            context.state.config_records["privacy"] = ConfigRecord(
                {
                    "noise": [h[0] for h in accountant.history],
                    "rate": [h[1] for h in accountant.history],
                    "steps": [h[2] for h in accountant.history],
                }
            )
        metrics = MetricRecord(
            {
                "num-examples": result.examples,
                "num-steps": result.steps,
                "epsilon": 0.0 if result.epsilon is None else result.epsilon,
            }
        )
        content = RecordDict({"arrays": ArrayRecord(result.weights), "metrics": metrics})
        return Message(content, reply_to=msg)

    @app.evaluate()
    def evaluate_(msg: Message, context: Context) -> Message:
        ref = site_of(context, options)
        with SiteStore.open(ref.project, ref.site) as store:
            data = build_site_dataset(store, options.dataset)
        model = build_model(options.model)
        model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
        found = evaluate(model, data.test)
        metrics = MetricRecord(
            {
                "num-examples": found.samples,
                "ade": found.ade,
                "fde": found.fde,
                "miss-rate": found.miss_rate,
            }
        )
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    return app


def bare(project: Project, options: FederatedOptions, say: Say) -> dict[str, Any]:
    """The same rounds with plain Flower; the end of each round is when FedAvg calls its
    ``evaluate_fn`` after the clients' evaluation."""
    options = FederatedOptions.from_dict({**options.as_dict(), "project": str(project.root)})
    n = len(options.sites)
    spent_before = {}
    for site_id in options.sites:
        with SiteStore.open(project, site_id) as store:
            spent_before[site_id] = load_accountant(store).history
    stamps: dict[int, float] = {}
    updates: list[list[int]] = []
    used: list[int] = []
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        def train_metrics(contents: list[RecordDict], weighted_by: str) -> MetricRecord:
            used.extend(
                int(cast("int", c.metric_records["metrics"]["num-steps"])) for c in contents
            )
            return aggregate_metricrecords(contents, weighted_by)

        def end_of_round(server_round: int, _arrays: ArrayRecord) -> MetricRecord | None:
            if server_round:
                stamps[server_round] = time.perf_counter()
                updates.append(sorted(used))
                used.clear()
                say(f"  bare: round {server_round}/{options.rounds} evaluated")
            return None

        strategy = FedAvg(
            fraction_train=1.0,
            fraction_evaluate=1.0,
            min_train_nodes=n,
            min_evaluate_nodes=n,
            min_available_nodes=n,
            train_metrics_aggr_fn=train_metrics,
        )
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(build_model(options.model, seed=options.seed).state_dict()),
            num_rounds=options.rounds,
            timeout=options.timeout,
            evaluate_fn=end_of_round,
        )

    started = time.perf_counter()
    with flower_environment():
        run_simulation(
            server_app=server,
            client_app=_bare_client_app(options, spent_before),
            num_supernodes=n,
            backend_config=_backend(n),
        )
    total = time.perf_counter() - started
    return {
        "per_round_s": _per_round(stamps, options.rounds),
        "first_round_end_s": stamps[1] - started,
        "total_s": total,
        "updates_steps": updates,
    }


# --- the comparison ------------------------------------------------------------------------


def measure(source: Path, args: argparse.Namespace, scratch: Path, say: Say) -> dict[str, Any]:
    """Both runs ``args.repeat`` times, alternating, each governed run on a fresh copy."""
    if args.rounds < 2:
        raise SystemExit("--rounds must be at least 2 (round 1 is left out of the timing)")
    bare_project = _copy(source, scratch / "bare")
    probe = FederatedOptions(run="probe", sites=tuple(bare_project.settings.sites))
    sites = tuple(_sites_with_data(bare_project, probe, say))
    if not sites:
        raise SystemExit("no site has both training and test samples")

    def options(run: str) -> FederatedOptions:
        return FederatedOptions(
            run=run,
            sites=sites,
            model=ModelSpec(args.model),
            rounds=args.rounds,
            local_steps=args.local_steps,
            batch_size=args.batch_size,
            dp=args.dp,
            seed=args.seed,
        )

    governed_runs: list[dict[str, Any]] = []
    bare_runs: list[dict[str, Any]] = []
    for i in range(args.repeat):
        order = ("governed", "bare") if i % 2 == 0 else ("bare", "governed")
        for variant in order:
            say(f"repeat {i + 1}/{args.repeat}: {variant} run")
            if variant == "governed":
                project = _copy(source, scratch / f"governed-{i}")
                _sites_with_data(project, probe, lambda _m: None)
                governed_runs.append(governed(project, options(f"bench-overhead-{i}"), say))
                shutil.rmtree(project.root, ignore_errors=True)
            else:
                bare_runs.append(bare(bare_project, options(f"bench-overhead-{i}"), say))
    best_governed = min(governed_runs, key=lambda r: r["per_round_s"])
    best_bare = min(bare_runs, key=lambda r: r["per_round_s"])
    ratio = best_governed["per_round_s"] / best_bare["per_round_s"]
    return {
        "project": str(source),
        "sites": list(sites),
        "model": args.model,
        "rounds": args.rounds,
        "local_steps": args.local_steps,
        "batch_size": args.batch_size,
        "dp": args.dp,
        "repeat": args.repeat,
        "cpus": os.cpu_count(),
        "governed": _rounded(best_governed),
        "bare": _rounded(best_bare),
        "governed_per_round_s_all": [round(r["per_round_s"], 3) for r in governed_runs],
        "bare_per_round_s_all": [round(r["per_round_s"], 3) for r in bare_runs],
        "ratio": round(ratio, 3),
        "same_updates": best_governed["updates_steps"] == best_bare["updates_steps"],
        "aim": AIM,
        "within_aim": ratio <= AIM,
    }


def _rounded(run: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in run.items()}


def _print(report: dict[str, Any]) -> None:
    g, b = report["governed"], report["bare"]
    print(
        f"project {report['project']}: {len(report['sites'])} sites, {report['model']}, "
        f"{report['rounds']} rounds of {report['local_steps']} local steps, batch "
        f"{report['batch_size']}, {'DP-SGD' if report['dp'] else 'no DP'}, "
        f"{report['cpus']} CPUs, best of {report['repeat']}"
    )
    print(f"  reference: bare Flower (FedAvg, no mods)  {b['per_round_s']:8.3f} s per round")
    print(
        f"  onshore governed run                      {g['per_round_s']:8.3f} s per round   "
        f"ratio {report['ratio']:.3f} (aim <= {report['aim']})"
    )
    print(
        f"  (first round ended after {b['first_round_end_s']:.1f} s bare, "
        f"{g['first_round_end_s']:.1f} s governed; whole runs {b['total_s']:.1f} s and "
        f"{g['total_s']:.1f} s)"
    )
    print(f"  steps of the updates used, by round: governed {g['updates_steps']}")
    print(f"                                       bare     {b['updates_steps']}")
    if not report["same_updates"]:
        print(
            "  WARNING: the two runs did not use the same updates; the ratio compares unlike work"
        )
    total = sum(w["entries"] for w in g["ledger_per_round"].values())
    print(f"  the governed run per round wrote {total:.1f} ledger entries:")
    for site, w in g["ledger_per_round"].items():
        crossed = g["bytes_crossed_per_round"].get(site)
        moved = (
            f"; {crossed['down']:,} B down, {crossed['up']:,} B up" if crossed is not None else ""
        )
        print(
            f"    {site:14} {w['entries']:5.1f} entries, {w['payload_bytes']:9,.0f} B payload"
            + moved
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--project", type=Path, help="a project with de-identified data")
    parser.add_argument("--vehicles", type=int, default=100, help="without --project: per site")
    parser.add_argument("--minutes", type=float, default=4.0, help="without --project")
    parser.add_argument("--model", default="past_mlp")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--no-dp", dest="dp", action="store_false", help="train without DP-SGD")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each variant; best counts")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)

    def say(message: str) -> None:
        if not args.json:
            print(message, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="onshore-bench-overhead-") as scratch:
        source = args.project
        if source is None:
            from onshore.lab import build_lab

            say(f"simulating {args.vehicles} vehicles for {args.minutes:g} min per site")
            source = Path(scratch) / "lab"
            # A lab trains nothing, so the sites' privacy budgets are whole.
            build_lab(source, vehicles=args.vehicles, minutes=args.minutes, say=say)
        report = measure(source, args, Path(scratch), say)
    if args.json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        _print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
