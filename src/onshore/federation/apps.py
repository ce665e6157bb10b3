"""onshore's Flower apps: the ClientApp each site runs next to its data, and the coordinator's
ServerApp.

Deployed (``flwr run`` against a SuperLink), Flower loads :data:`client_app` and
:data:`server_app`, and both read the run's options from the run config
(:data:`~onshore.federation.options.RUN_CONFIG_KEY`). In simulation, :func:`make_client_app`
and :func:`make_server_app` bind the options directly. Either way the site's outbound mod is the
first mod of every ClientApp onshore builds; nothing a run is given can remove it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from safetensors.torch import save as safetensors_bytes

from onshore.errors import KeystoreError
from onshore.federation.coordinator import Governance, RoundLog, make_strategy
from onshore.federation.envelope import ARRAYS, arrays_digest, public_key, size_limit
from onshore.federation.options import FederatedOptions
from onshore.federation.site import (
    FINE_TUNE,
    FINE_TUNED,
    evaluate_reply,
    fine_tune_reply,
    outbound,
    train_reply,
)
from onshore.forecast.dataset import FUNNEL
from onshore.forecast.metrics import Metrics
from onshore.forecast.nets import build_model
from onshore.forecast.runs import RunFolder, run_object
from onshore.ledger import Ledger
from onshore.parties.identity import load_peers, site_facts
from onshore.settings import Project, load_project
from onshore.sites.keystore import PUBLIC_FILE, SiteKeys, create_keystore, load_keystore
from onshore.store.catalogue import Catalogue
from onshore.store.objects import ObjectStore, sha256

__all__ = [
    "GLOBAL_MODEL",
    "client_app",
    "coordinator_keys",
    "make_client_app",
    "make_server_app",
    "server_app",
    "site_public_keys",
]

GLOBAL_MODEL: Final = "global.safetensors"

Mod = Callable[[Message, Context, Callable[[Message, Context], Message]], Message]


def make_client_app(
    options: FederatedOptions | None = None, *, outer_mods: Sequence[Mod] = ()
) -> ClientApp:
    """A site's ClientApp. ``outer_mods`` run outside the outbound mod (they see replies after
    it let them go): fault drills use them to play a broken or hostile site."""

    def options_of(context: Context) -> FederatedOptions:
        return options or FederatedOptions.from_run_config(context.run_config)

    app = ClientApp(mods=[*outer_mods, outbound(options_of)])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return train_reply(msg, context, options_of(context))

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return evaluate_reply(msg, context, options_of(context))

    @app.evaluate(FINE_TUNE.split(".", 1)[1])
    def fine_tune(msg: Message, context: Context) -> Message:
        return fine_tune_reply(msg, context, options_of(context))

    return app


def coordinator_keys(project: Project) -> SiteKeys:
    """The coordinator's keystore, created on first use."""
    folder = project.keystore_path(project.settings.coordinator)
    try:
        return load_keystore(folder)
    except KeystoreError:
        if folder.exists():
            raise
        return create_keystore(folder)


def site_public_keys(project: Project, sites: Sequence[str]) -> dict[str, Ed25519PublicKey]:
    """The sites' public keys: their identities on file in the coordinator's folder, or, in
    a lab project, what each site's keystore publishes (``ed25519.pub``)."""
    if project.party is not None:
        peers = load_peers(project)
        return {site_id: peers.get_peer(site_id).key for site_id in sites}
    keys = {}
    for site_id in sites:
        path = project.keystore_path(project.site(site_id)) / PUBLIC_FILE
        try:
            keys[site_id] = public_key(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise KeystoreError(
                f"{site_id}: cannot read its public key {path}: {exc}",
                hint="copy the site's ed25519.pub there (it is public)",
            ) from exc
    return keys


def make_server_app(
    options: FederatedOptions | None = None, *, say: Callable[[str], None] = lambda _m: None
) -> ServerApp:
    """The coordinator's ServerApp: the governed strategy for ``options.rounds`` rounds from
    a fresh model; the coordinator's ledger records the run, each phase of each round and the
    result; the global model goes to the coordinator's store; the run's summary to the
    project's ``runs/<run>/federated.json``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        coordinate(grid, options or FederatedOptions.from_run_config(context.run_config), say)

    return app


def coordinate(grid: Grid, options: FederatedOptions, say: Callable[[str], None]) -> None:
    project = load_project(Path(options.project))
    coord = project.settings.coordinator
    keys = coordinator_keys(project)
    if "://" not in coord.store:
        (project.root / coord.store).mkdir(parents=True, exist_ok=True)
    catalogue = Catalogue(project.catalogue_url(coord), coord.id)
    try:
        ledger = Ledger.open(catalogue, keys)
        objects = ObjectStore(project.store_url(coord))
        folder = RunFolder.of(project, options.run)
        model = build_model(options.model, seed=options.seed)
        initial = ArrayRecord(model.state_dict())
        started = ledger.append(
            "federated_run_started",
            {
                "run": options.run,
                "options": options.settings(),
                "options_sha256": options.digest(),
                "global_initial_sha256": arrays_digest(initial),
                "size_limit": size_limit(options.model),
            },
        )
        rounds: list[dict[str, Any]] = []
        done, initial = _checkpoint(objects, options, initial)
        if done:
            # A run that died part-way goes on from its last aggregated round: the rounds
            # before are in the ledger and rounds.json, and the sites' privacy spent on them
            # is not spent again.
            rounds = [
                r
                for r in (folder.read("rounds.json") or [])
                if r["round"] <= done and r["kind"] != "fine_tune"
            ]
            ledger.append("federated_run_resumed", {"run": options.run, "after_round": done})
            say(f"run {options.run} resumes after round {done}")

        clock = [time.monotonic()]

        def on_phase(log: RoundLog) -> None:
            record = _phase_record(log, governance)
            entry = ledger.append("federated_round", {"run": options.run, **record})
            record["ledger"] = {"site": coord.id, "seq": entry.seq, "hash": entry.hash}
            # The phase's wall time, from the end of the one before (or the first round's
            # start): what the sites took and the coordinator's checks and aggregation.
            now = time.monotonic()
            record["seconds"] = round(now - clock[0], 3)
            record["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
            clock[0] = now
            rounds.append(record)
            folder.write("rounds.json", rounds)
            accepted = ", ".join(a["site"] for a in record["accepted"]) or "none"
            refused = "; ".join(
                f"{r['site'] or 'node ' + str(r['node'])}: {r['reason']}" for r in record["refused"]
            )
            say(
                f"round {log.round}/{options.rounds} {log.kind}: accepted {accepted}"
                + (f"; refused {refused}" if refused else "")
            )

        def on_model(server_round: int, arrays: ArrayRecord) -> None:
            objects.put(_checkpoint_path(options, server_round), _safetensors(arrays, options))

        registered = _registered(project, options)
        governance = Governance(
            options,
            site_public_keys(project, options.sites),
            on_phase,
            on_model=on_model,
            node_sites=registered,
        )
        governance.offset = done
        strategy = make_strategy(options, governance)
        present = _await_sites(grid, options, registered, say)
        strategy.min_available_nodes = max(1, len(present))
        absent = [s for s in options.sites if s not in present.values()] if registered else []
        if absent:
            ledger.append(
                "federated_sites_absent",
                {
                    "run": options.run,
                    "sites": absent,
                    "join_timeout": options.join_timeout,
                    "reason": "their SuperNodes did not connect before round 1",
                },
            )
            rounds.append(
                {
                    "round": done + 1,
                    "kind": "join",
                    "sent": {},
                    "received": {},
                    "accepted": [],
                    "refused": [
                        {
                            "site": s,
                            "reason": "not_connected",
                            "detail": f"its SuperNode did not connect within "
                            f"{options.join_timeout:g} s; the run went on without it",
                        }
                        for s in absent
                    ],
                    "missing": absent,
                }
            )
            say(
                f"going on without {', '.join(absent)}: not connected in {options.join_timeout:g} s"
            )
        final = initial
        clock[0] = time.monotonic()
        if options.rounds > done and present:
            result = strategy.start(
                grid=grid,
                initial_arrays=initial,
                num_rounds=options.rounds - done,
                timeout=options.timeout,
            )
            final = result.arrays if len(result.arrays) else initial
        if options.fine_tune_steps and present:
            say(
                f"fine-tuning at each site: {options.fine_tune_steps} steps on its own data, "
                "the weights stay there"
            )
            _fine_tune(grid, options, governance, final, list(present))
        blob = _safetensors(final, options)
        path = run_object(options.run, GLOBAL_MODEL)
        objects.put(path, blob)
        lineage = [
            {"site": a["ledger"]["site"], "seq": a["ledger"]["seq"], "hash": a["ledger"]["hash"]}
            for r in rounds
            if r["kind"] == "train"
            for a in r["accepted"]
        ]
        finished = ledger.append(
            "federated_run_finished",
            {
                "run": options.run,
                "global_sha256": sha256(blob),
                "global_path": path,
                "rounds": options.rounds,
                "updates_used": len(lineage),
                "lineage": lineage,
            },
        )
        summary = _summary(options, rounds, project)
        summary["model_path"] = {"store": coord.id, "path": path, "sha256": sha256(blob)}
        summary["model_bytes"] = sum(len(a.data) for a in final.values())
        summary["coordinator_ledger"] = {"started": started.seq, "finished": finished.seq}
        summary["lineage"] = lineage
        folder.write("federated.json", summary)
    finally:
        catalogue.close()


def _fine_tune(
    grid: Grid,
    options: FederatedOptions,
    governance: Governance,
    final: ArrayRecord,
    nodes: Sequence[int],
) -> None:
    """Ask every site to fine-tune the final global model on its own data; each keeps the
    weights and answers with their errors, which the coordinator checks like any reply and
    records as the last round's ``fine_tune`` phase."""
    messages = [
        Message(
            RecordDict({ARRAYS: final, "config": ConfigRecord({"server-round": options.rounds})}),
            dst_node_id=node,
            message_type=FINE_TUNE,
        )
        for node in nodes
    ]
    sent = governance.start(options.rounds, "fine_tune", messages)
    replies = grid.send_and_receive(sent, timeout=options.timeout) if sent else []
    governance.admit(options.rounds, "fine_tune", replies)


def _registered(project: Project, options: FederatedOptions) -> dict[int, str]:
    """Deployed: which SuperNode is which of the run's sites, as the coordinator registered
    them; empty in simulation, where nodes are the run's sites in order."""
    if project.party is None:
        return {}
    from onshore.federation.deploy import node_sites

    return {node: site for node, site in node_sites(project).items() if site in options.sites}


def _await_sites(
    grid: Grid, options: FederatedOptions, registered: Mapping[int, str], say: Callable[[str], None]
) -> dict[int, str]:
    """Wait, at most ``options.join_timeout`` seconds, for every site's node to connect;
    return the nodes that did (by site when registered)."""
    wanted = len(options.sites)
    deadline = time.monotonic() + options.join_timeout
    told = False
    while True:
        ids = set(grid.get_node_ids())
        if registered:
            present = {n: s for n, s in registered.items() if n in ids}
        else:
            present = {n: str(n) for n in ids}
        if len(present) >= wanted or time.monotonic() >= deadline:
            return present
        if not told:
            say(f"waiting for the sites' SuperNodes: {len(present)} of {wanted} connected")
            told = True
        time.sleep(1.0)


def _safetensors(arrays: ArrayRecord, options: FederatedOptions) -> bytes:
    return safetensors_bytes(
        arrays.to_torch_state_dict(),
        metadata={"run": options.run, "model": orjson.dumps(options.model.as_dict()).decode()},
    )


def _checkpoint_path(options: FederatedOptions, server_round: int) -> str:
    return run_object(options.run, f"rounds/{server_round:05d}.safetensors")


def _checkpoint(
    objects: ObjectStore, options: FederatedOptions, initial: ArrayRecord
) -> tuple[int, ArrayRecord]:
    """The last round of ``options.run`` whose global model was kept, and that model (0 and
    ``initial`` for a new run)."""
    from safetensors.torch import load

    kept = sorted(objects.find(run_object(options.run, "rounds/")))
    if not kept:
        return 0, initial
    last = kept[-1]
    done = int(last.rsplit("/", 1)[-1].split(".")[0])
    return min(done, options.rounds), ArrayRecord(load(objects.read(last)))


def _phase_record(log: RoundLog, governance: Governance) -> dict[str, Any]:
    sites = governance.node_site
    return {
        "round": log.round,
        "kind": log.kind,
        "sent": {sites.get(node, f"node {node}"): size for node, size in log.sent.items()},
        "received": dict(log.received),
        "accepted": [
            {
                "site": a.site,
                "sha256": a.sha256,
                "bytes": a.bytes,
                "ledger": dict(a.ledger),
                "metrics": {k: round(v, 6) for k, v in a.metrics.items()},
            }
            for a in log.accepted
        ],
        "refused": list(log.refused),
        "missing": [sites.get(node, f"node {node}") for node in log.missing],
    }


def _summary(
    options: FederatedOptions,
    rounds: list[dict[str, Any]],
    project: Project,
) -> dict[str, Any]:
    evaluations: dict[int, dict[str, dict[str, float]]] = {}
    for record in rounds:
        if record["kind"] == "evaluate":
            evaluations[record["round"]] = {a["site"]: a["metrics"] for a in record["accepted"]}
    regions: dict[str, Any] = {}
    for server_round in sorted(evaluations):
        for site, metrics in evaluations[server_round].items():
            regions[site] = {
                "site": site,
                "jurisdiction": site_facts(project, site).jurisdiction,
                "round": server_round,
                "ade": metrics.get("ade"),
                "fde": metrics.get("fde"),
                "miss_rate": metrics.get("miss-rate"),
                "samples": int(metrics.get("num-examples", 0)),
                "groups": Metrics.groups_from_scalars(metrics),
                "baselines": {
                    "constant_velocity": {
                        "ade": metrics.get("cv-ade"),
                        "fde": metrics.get("cv-fde"),
                        "miss_rate": metrics.get("cv-miss-rate"),
                        "groups": Metrics.groups_from_scalars(metrics, "cv-"),
                    }
                },
                "funnel": {
                    name: int(metrics[f"funnel-{name}"])
                    for name in FUNNEL
                    if f"funnel-{name}" in metrics
                },
                "epsilon_total": metrics.get("epsilon"),
            }
    epsilon: dict[str, float | None] = {}
    for site in options.sites:
        found = None
        for server_round in sorted(evaluations):
            m = evaluations[server_round].get(site)
            if m is not None:
                found = m.get("epsilon-run")
        epsilon[site] = None if not options.dp else found
    reported: dict[str, dict[str, float]] = {}
    for server_round in sorted(evaluations):
        for site, metrics in evaluations[server_round].items():
            reported[site] = metrics
    crossed: dict[str, int] = dict.fromkeys(options.sites, 0)
    per_round: dict[int, dict[str, dict[str, int]]] = {}
    seconds: dict[str, float] = {}
    for record in rounds:
        if "seconds" in record:
            key = str(record["round"])
            seconds[key] = round(seconds.get(key, 0.0) + record["seconds"], 3)
        slot = per_round.setdefault(record["round"], {})
        for site, size in record["sent"].items():
            if site in crossed:
                crossed[site] += size
                slot.setdefault(site, {"down": 0, "up": 0})["down"] += size
        for site, size in record["received"].items():
            if site in crossed:
                crossed[site] += size
                slot.setdefault(site, {"down": 0, "up": 0})["up"] += size
    fine_tuned = {
        a["site"]: {
            "site": a["site"],
            "ade": a["metrics"].get("ade"),
            "fde": a["metrics"].get("fde"),
            "miss_rate": a["metrics"].get("miss-rate"),
            "samples": int(a["metrics"].get("num-examples", 0)),
            "groups": Metrics.groups_from_scalars(a["metrics"]),
            "global_ade": a["metrics"].get("global-ade"),
            "steps": int(a["metrics"].get("num-steps", 0)),
            "seconds": a["metrics"].get("seconds"),
            # Where the site keeps the weights: they never left it.
            "weights": {
                "store": a["site"],
                "path": run_object(options.run, FINE_TUNED),
            },
        }
        for r in rounds
        if r["kind"] == "fine_tune"
        for a in r["accepted"]
    }
    refusals = [
        {"round": r["round"], "kind": r["kind"], **refused}
        for r in rounds
        for refused in r["refused"]
    ]
    return {
        "run": options.run,
        "mode": "federated",
        "rounds": options.rounds,
        "strategy": options.strategy,
        "dp": options.dp,
        "model": options.model.as_dict(),
        "options": options.settings(),
        "regions": regions,
        "fine_tuned": fine_tuned,
        "epsilon": epsilon,
        # Each site states its own budget: the coordinator knows it only from the site.
        "delta": {s: reported.get(s, {}).get("delta") for s in options.sites},
        "budget_epsilon": {s: reported.get(s, {}).get("budget-epsilon") for s in options.sites},
        "bytes_crossed": crossed,
        "bytes_per_round": {str(k): v for k, v in sorted(per_round.items())},
        "seconds_per_round": seconds,
        "dp_settings": {s: _declared_dp(project, s) if options.dp else None for s in options.sites},
        "refusals": refusals,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _declared_dp(project: Project, site_id: str) -> dict[str, float] | None:
    """The DP-SGD noise and clipping ``site_id`` trains with, where this folder declares the
    site (a lab project, whose sites train under these very settings); None for a deployed
    site, which states only its budget."""
    if project.party is not None or site_id not in project.settings.sites:
        return None
    privacy = project.site(site_id).privacy
    return {
        "noise_multiplier": privacy.noise_multiplier,
        "max_grad_norm": privacy.max_grad_norm,
    }


client_app = make_client_app()
"""The ClientApp ``flwr run`` loads at each site's SuperNode."""
server_app = make_server_app()
"""The ServerApp ``flwr run`` loads at the coordinator."""
