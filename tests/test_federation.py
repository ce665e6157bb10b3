"""Federated training: what leaves a site (checks, gate, ledger, signature), what the coordinator
refuses, FedNova's normalisation, and runs on Flower's Simulation Engine with faulty sites."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy import FedAvgM
from flwr.supercore.task_identity import TaskIdentity
from safetensors.torch import load as load_tensors
from typer.testing import CliRunner

from onshore.cli.app import app
from onshore.clips.mcap import write_mcap
from onshore.clips.schema import OBJECT_TYPE, SCHEMA, Clip, ClipMeta
from onshore.clips.vin import make_vin
from onshore.deidentify import deidentify_site, resolve_profile
from onshore.errors import ConfigError
from onshore.federation import FederatedOptions, run_federated
from onshore.federation.apps import make_client_app, site_public_keys
from onshore.federation.coordinator import Admitted, Governance, make_strategy, normalise
from onshore.federation.envelope import (
    Statement,
    UpdateRefused,
    check_content,
    content_digest,
    open_envelope,
    seal,
    size_limit,
)
from onshore.federation.faults import Fault, drill
from onshore.federation.site import FINE_TUNE, ErrorCode, govern, load_accountant
from onshore.forecast.nets import ModelSpec, build_model, check_weights
from onshore.gate import Approval
from onshore.gate.record import add_approval
from onshore.ingest import ingest
from onshore.ledger import Ledger, verify
from onshore.settings import Project, load_project
from onshore.sites import init_project
from onshore.sites.keystore import load_keystore
from onshore.store import SiteStore
from onshore.store.catalogue import Catalogue

SPEC = ModelSpec("past_mlp")
REGIONS = {
    # site: (lat, lon, speed m/s, yaw rate rad/s): regions drive differently (non-IID).
    "cn-shanghai": (31.2, 121.45, 8.0, 0.02),
    "eu-frankfurt": (50.1, 8.6, 12.0, 0.0),
    "us-oregon": (45.5, -122.6, 16.0, -0.01),
}


def drive(
    site: str, seed: int, clips: int = 8, steps: int = 300, *, simulated: bool = False
) -> list[Clip]:
    """One vehicle's consenting drive at ``site``: steady speed on a gentle arc."""
    lat0, lon0, speed, yaw = REGIONS[site]
    n = clips * steps
    rng = np.random.default_rng(seed)
    speed = speed * (0.8 + 0.4 * rng.random())
    t0 = np.datetime64("2026-03-02T08:00:00", "us").astype(np.int64) + seed * 3_600_000_000
    time_us = t0 + np.arange(n, dtype=np.int64) * 100_000
    heading = np.radians(45.0) + yaw * np.arange(n) * 0.1
    east = np.cumsum(np.sin(heading) * speed * 0.1)
    north = np.cumsum(np.cos(heading) * speed * 0.1)
    lat = lat0 + north / 110_574
    lon = lon0 + east / (111_320 * np.cos(np.radians(lat0)))
    vin = make_vin(random.Random(seed), "WVW", "ZZZ1K", 2026, "W")
    car = [{"track_id": 1, "class": "car", "x": 15.0, "y": 0.0, "vx": 0.0, "vy": 0.0}]
    out = []
    for i in range(clips):
        part = slice(i * steps, (i + 1) * steps)
        table = pa.Table.from_arrays(
            [
                pa.array(time_us[part]).cast(SCHEMA.field("time").type),
                pa.array(lat[part]),
                pa.array(lon[part]),
                pa.array(np.full(steps, speed), pa.float32()),
                pa.array(np.degrees(heading[part]) % 360, pa.float32()),
                pa.array(np.zeros(steps), pa.float32()),
                pa.array(np.full(steps, yaw), pa.float32()),
                pa.array(np.zeros(steps), pa.float32()),
                pa.array(np.zeros(steps), pa.float32()),
                pa.array([car] * steps, pa.list_(OBJECT_TYPE)),
            ],
            schema=SCHEMA,
        )
        meta = ClipMeta(
            f"{site}-{seed}-{i:03d}", vin, "ID.4", "random_sample", True, site, simulated=simulated
        )
        out.append(Clip(meta, table))
    return out


def both_splits(
    project: Project, site_id: str, more: Callable[[int], list[Clip]], folder: Path
) -> None:
    """Add vehicles to ``site_id`` (``more(n)`` makes the n-th one's clips) until its dataset
    has training and test samples: the split goes by a keyed hash of each vehicle's pseudonym,
    and the key is the site's own random secret, so a handful of vehicles may all land on one
    side."""
    from onshore.forecast.dataset import build_site_dataset

    for n in range(40):
        with SiteStore.open(project, site_id) as site:
            data = build_site_dataset(site)
            if len(data.train) and len(data.test):
                return
            uploads = folder / f"more-{site_id}-{n}"
            uploads.mkdir(parents=True)
            for clip in more(n):
                write_mcap(clip, uploads / f"{clip.meta.clip_id}.mcap")
            assert ingest(site, [uploads]).quarantined == []
            secret = load_keystore(project.keystore_path(project.site(site_id))).hmac_secret
            deidentify_site(site, resolve_profile("training", {}), secret=secret)
    raise AssertionError(f"{site_id}: no split with both sides after 40 more vehicles")


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """Three sites, each with six vehicles' drives ingested and de-identified for training."""
    root = tmp_path_factory.mktemp("federation")
    project = init_project(root / "proj", "three-regions")
    for site_id in REGIONS:
        uploads = root / f"uploads-{site_id}"
        uploads.mkdir()
        for seed in range(6):
            for clip in drive(site_id, seed + 10 * len(site_id)):
                write_mcap(clip, uploads / f"{clip.meta.clip_id}.mcap")
        with SiteStore.open(project, site_id) as site:
            assert ingest(site, [uploads]).quarantined == []
            secret = load_keystore(project.keystore_path(project.site(site_id))).hmac_secret
            deidentify_site(site, resolve_profile("training", {}), secret=secret)
        both_splits(project, site_id, lambda n, s=site_id: drive(s, 900 + n), root)
    return project


def options(project: Project, run: str, **changes: object) -> FederatedOptions:
    values: dict[str, object] = {
        "run": run,
        "sites": tuple(REGIONS),
        "project": str(project.root),
        "model": SPEC,
        "rounds": 2,
        "local_steps": 6,
        "batch_size": 64,
        "dp": True,
    }
    values.update(changes)
    return FederatedOptions(**values)  # type: ignore[arg-type]


def entries(project: Project, site_id: str, kind: str) -> list[dict[str, object]]:
    with SiteStore.open(project, site_id) as site:
        return [e.data for e in Ledger.open(site.catalogue).entries(kind=kind)]


def coordinator_entries(project: Project, kind: str) -> list[dict[str, object]]:
    coord = project.settings.coordinator
    catalogue = Catalogue(project.catalogue_url(coord), coord.id)
    try:
        return [e.data for e in Ledger.open(catalogue).entries(kind=kind)]
    finally:
        catalogue.close()


def cn_model_approval(recipient: str) -> Approval:
    return Approval.model_validate(
        {
            "id": "CAC-MODEL-1",
            "type": "cn_security_assessment",
            "origin": "CN",
            "recipient": recipient,
            "categories": ["model_parameters"],
            "purposes": ["adas_training"],
            "max_subjects": 100_000,
            "valid_from": "2026-01-01",
            "reference": "CAC-SA-MODEL-1",
        }
    )


# --- What may leave a site ---------------------------------------------------------------


def reply_content(spec: ModelSpec = SPEC, **metrics: float) -> RecordDict:
    weights = build_model(spec, seed=1).state_dict()
    values = {"num-examples": 10, "num-steps": 3, **metrics}
    return RecordDict({"arrays": ArrayRecord(weights), "metrics": MetricRecord(values)})


def test_the_declared_models_tensors_and_scalar_metrics_pass() -> None:
    digest, size = check_content(reply_content(), SPEC, with_arrays=True)
    assert len(digest) == 64 and 0 < size <= size_limit(SPEC)
    assert content_digest(reply_content())[0] == digest, "the digest is deterministic"


@pytest.mark.parametrize(
    ("alter", "reason"),
    [
        (lambda a: a.__setitem__("extra", np.zeros(3, np.float32)), "wrong_shape"),
        (lambda a: a.pop(sorted(a)[0]), "wrong_shape"),
        (lambda a: a.__setitem__(sorted(a)[0], a[sorted(a)[0]].reshape(1, -1)), "wrong_shape"),
        (lambda a: a.__setitem__(sorted(a)[0], a[sorted(a)[0]].astype(np.float64)), "wrong_shape"),
        (lambda a: a[sorted(a)[0]].reshape(-1).__setitem__(0, np.nan), "not_finite"),
        (lambda a: a[sorted(a)[0]].reshape(-1).__setitem__(0, np.inf), "not_finite"),
        (lambda a: a.__setitem__("big", np.zeros(2_000_000, np.float32)), "oversized"),
    ],
)
def test_anything_but_the_declared_tensors_is_refused(alter: object, reason: str) -> None:
    arrays = {k: v.numpy().copy() for k, v in build_model(SPEC, seed=1).state_dict().items()}
    alter(arrays)  # type: ignore[operator]
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            "metrics": MetricRecord({"num-examples": 10}),
        }
    )
    with pytest.raises(UpdateRefused) as caught:
        check_content(content, SPEC, with_arrays=True)
    assert caught.value.reason == reason


def test_metrics_must_be_finite_scalars_and_nothing_else_may_ride_along() -> None:
    with pytest.raises(UpdateRefused, match="not_finite"):
        check_content(reply_content(ade=float("nan")), SPEC, with_arrays=True)
    content = reply_content()
    content["metrics"]["per_sample"] = [1.0, 2.0]
    with pytest.raises(UpdateRefused, match="not_scalar"):
        check_content(content, SPEC, with_arrays=True)
    content = reply_content()
    content["notes"] = ConfigRecord({"vin": "WVWZZZ1KZ6W000001"})
    with pytest.raises(UpdateRefused, match="wrong_content"):
        check_content(content, SPEC, with_arrays=True)
    with pytest.raises(UpdateRefused, match="wrong_content"):
        check_content(reply_content(), SPEC, with_arrays=False)  # evaluation: metrics only


def test_a_statement_verifies_only_under_the_named_sites_key(federation: Project) -> None:
    keys = load_keystore(federation.keystore_path(federation.site("eu-frankfurt")))
    content = reply_content()
    digest, size = content_digest(content)
    seal(content, Statement("r", 1, "train", "eu-frankfurt", digest, size, {}), keys)
    public = site_public_keys(federation, list(REGIONS))
    assert open_envelope(content, public).sha256 == digest
    forged = reply_content()
    seal(forged, Statement("r", 1, "train", "us-oregon", digest, size, {}), keys)
    with pytest.raises(UpdateRefused, match="unknown_site"):
        open_envelope(forged, public)
    with pytest.raises(UpdateRefused, match="unsigned"):
        open_envelope(reply_content(), public)


@pytest.fixture
def identity() -> Iterator[None]:
    """Flower stamps every Message with the task it belongs to; outside a run, a test is it."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id = 1
    TaskIdentity.node_id = 1
    TaskIdentity.task_id = 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


@pytest.mark.usefixtures("identity")
def test_fednova_counts_each_site_as_if_it_took_the_mean_steps() -> None:
    g = {"w": np.zeros(2, np.float32)}
    current = ArrayRecord({k: Array(v) for k, v in g.items()})

    def admitted(w: list[float], examples: int, steps: int) -> Admitted:
        content = RecordDict(
            {
                "arrays": ArrayRecord({"w": Array(np.array(w, np.float32))}),
                "metrics": MetricRecord({"num-examples": examples, "num-steps": steps}),
            }
        )
        message = Message(content, dst_node_id=0, message_type=MessageType.TRAIN)
        return Admitted("s", message, "", 0, {}, {"num-examples": examples, "num-steps": steps})

    # Site A: 100 examples, 10 steps, moved by (10, 0); site B: 100 examples, 40 steps, (0, 40).
    # Per step both moved 1. FedAvg would give (5, 20); FedNova gives tau_eff (25) x the mean
    # per-step change (0.5, 0.5) = (12.5, 12.5): the site that did more steps does not dominate.
    out = normalise([admitted([10, 0], 100, 10), admitted([0, 40], 100, 40)], current)
    mean = sum(m.content["arrays"]["w"].numpy() for m in out) / 2
    np.testing.assert_allclose(mean, [12.5, 12.5], rtol=1e-6)


# --- The site's outbound mod, one message at a time ----------------------------------------


def train_message(server_round: int = 1) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord(build_model(SPEC, seed=0).state_dict()),
            "config": ConfigRecord({"server-round": server_round}),
        }
    )
    return Message(content, dst_node_id=1, message_type=MessageType.TRAIN)


def context(project: Project, site: str) -> Context:
    return Context(
        run_id=1,
        node_id=1,
        node_config={"site": site, "project": str(project.root)},
        state=RecordDict(),
        run_config={},
    )


def test_server_momentum_is_fedavgm_s_alone_and_old_runs_keep_their_digest() -> None:
    plain = FederatedOptions(run="r", sites=("eu-frankfurt",))
    # A run recorded before fedavgm existed had no server_momentum in its options, and must
    # still resume: the option is not part of another strategy's digest.
    assert "server_momentum" not in plain.settings()
    assert (
        plain.digest() == FederatedOptions(**{**_as_fields(plain), "server_momentum": 0.5}).digest()
    )
    momentum = FederatedOptions(run="r", sites=("eu-frankfurt",), strategy="fedavgm")
    assert momentum.settings()["server_momentum"] == 0.9
    assert (
        momentum.digest()
        != FederatedOptions.from_dict({**momentum.as_dict(), "server_momentum": 0.5}).digest()
    )
    strategy = make_strategy(momentum, Governance(momentum, {}))
    assert isinstance(strategy, FedAvgM)
    assert strategy.server_momentum == 0.9
    assert strategy.server_learning_rate == pytest.approx(0.1)
    with pytest.raises(ConfigError, match="server_momentum"):
        FederatedOptions(run="r", sites=("eu-frankfurt",), server_momentum=1.0)


@pytest.mark.parametrize(
    ("strategy", "digest"),
    [
        ("fedavg", "cbbf296f3509312d548b161fff03a34288df9c853731c16639f4f9b1cd23d382"),
        ("fedprox", "5482cca01b2f0987c48161cc792de704fc4976b8d071da07aa9d8f835edd0666"),
        ("fedadam", "e748aeeb8c80fcd55038a0c9da9c2769d437db934461d5abc08a2e5766254b98"),
    ],
)
def test_a_recorded_run_s_options_keep_their_digest(strategy: str, digest: str) -> None:
    """A run resumes only under the digest it was recorded with: an option added later must
    leave the digests of runs that do not use it as they were (these are the digests since
    before fedavgm). Change them only with a way for recorded runs to resume."""
    options = FederatedOptions(
        run="r",
        sites=("cn-shanghai", "eu-frankfurt"),
        strategy=strategy,  # type: ignore[arg-type]
    )
    assert options.digest() == digest


def _as_fields(options: FederatedOptions) -> dict[str, object]:
    return {f: getattr(options, f) for f in FederatedOptions.__dataclass_fields__}


@pytest.mark.usefixtures("identity")
def test_an_allowed_update_is_checked_recorded_and_signed(federation: Project) -> None:
    opts = options(federation, "mod-eu")
    reply = make_client_app(opts)(train_message(), context(federation, "eu-frankfurt"))
    assert not reply.has_error()
    public = site_public_keys(federation, list(REGIONS))
    statement = open_envelope(reply.content, public)
    assert statement.sha256 == content_digest(reply.content)[0]
    recorded = [e for e in entries(federation, "eu-frankfurt", "federated_update")]
    mine = [e for e in recorded if e["run"] == "mod-eu"]
    assert len(mine) == 1 and mine[0]["sent"] is True
    assert mine[0]["sha256"] == statement.sha256 and mine[0]["items"][0]["category"] == (
        "model_parameters"
    )
    assert statement.ledger["seq"] > 0
    with SiteStore.open(federation, "eu-frankfurt") as site:
        spent = load_accountant(site, "mod-eu")
        assert spent.history and spent.epsilon(1e-5) > 0, "the privacy spent is kept at the site"
        assert verify(Ledger.open(site.catalogue)).ok


@pytest.mark.usefixtures("identity")
def test_weights_never_leave_with_a_fine_tuning_reply(federation: Project) -> None:
    opts = options(federation, "mod-ft", fine_tune_steps=5)
    asked = train_message()
    asked.metadata.message_type = FINE_TUNE

    def leaky(msg: Message, _context: Context) -> Message:
        # A handler that would send the fine-tuned weights back with the metrics.
        return Message(reply_content(ade=1.0), reply_to=msg)

    reply = govern(asked, context(federation, "eu-frankfurt"), leaky, opts)
    assert reply.has_error() and reply.error.code == ErrorCode.CHECK_FAILED
    assert "outgoing check failed" in reply.error.reason
    recorded = [e for e in entries(federation, "eu-frankfurt", "federated_update")]
    mine = [e for e in recorded if e["run"] == "mod-ft"]
    assert [(e["kind"], e["sent"]) for e in mine] == [("fine_tune", False)]
    # Nor does a site answer what it was not built to.
    asked.metadata.message_type = MessageType.QUERY
    refused = govern(asked, context(federation, "eu-frankfurt"), leaky, opts)
    assert refused.has_error() and "not query" in refused.error.reason


@pytest.mark.usefixtures("identity")
def test_chinese_model_parameters_stay_without_an_approval(federation: Project) -> None:
    opts = options(federation, "mod-cn")
    reply = make_client_app(opts)(train_message(), context(federation, "cn-shanghai"))
    assert reply.has_error() and reply.error.code == ErrorCode.GATE_DENIED
    assert "cn_security_assessment" in (reply.error.reason or "")
    mine = [
        e for e in entries(federation, "cn-shanghai", "federated_update") if e["run"] == "mod-cn"
    ]
    assert len(mine) == 1 and mine[0]["sent"] is False
    assert mine[0]["decision"]["allowed"] is False
    # The subjects: the vehicles whose samples trained the update, as the dataset counts them.
    assert mine[0]["items"][0]["subjects"] == _train_vehicles(federation, "cn-shanghai") > 0


def _train_vehicles(project: Project, site: str) -> int:
    from onshore.forecast.dataset import build_site_dataset

    with SiteStore.open(project, site) as store:
        return int(build_site_dataset(store).info["vehicles_train"])


@pytest.mark.usefixtures("identity")
def test_a_site_refuses_to_send_once_its_budget_is_spent(
    tmp_path: Path, federation: Project
) -> None:
    text = federation.config_path.read_text()
    text = text.replace("privacy = { epsilon = 8.0, delta = 1e-5 }", "privacy = { epsilon = 0.05 }")
    (federation.root / "tight.toml").write_text(text)
    tight = federation.root.parent / "tight"
    import shutil

    shutil.copytree(federation.root, tight)
    (tight / "onshore.toml").write_text(text)
    project = load_project(tight)
    # A run whose planned steps would use the budget up is refused before any step is taken.
    with SiteStore.open(project, "eu-frankfurt") as site:
        before = load_accountant(site).history
    planned = options(project, "budget-plan", local_steps=50)
    reply = make_client_app(planned)(train_message(), context(project, "eu-frankfurt"))
    assert reply.has_error() and reply.error.code == ErrorCode.BUDGET_SPENT
    assert "this run would take its privacy spent to epsilon" in reply.error.reason
    assert "--spend-budget" in reply.error.reason
    with SiteStore.open(project, "eu-frankfurt") as site:
        assert load_accountant(site).history == before, "nothing was spent"
    # Asked to, the run spends what is left, and the site then refuses to send.
    opts = options(project, "budget", local_steps=50, spend_budget=True)
    reply = make_client_app(opts)(train_message(), context(project, "eu-frankfurt"))
    if not reply.has_error():  # the budget allowed a few steps: the next round has none left
        reply = make_client_app(opts)(train_message(2), context(project, "eu-frankfurt"))
    assert reply.has_error() and reply.error.code == ErrorCode.BUDGET_SPENT
    last = entries(project, "eu-frankfurt", "federated_update")[-1]
    assert last["sent"] is False and "budget" in str(last["reason"])


# --- Runs on Flower's Simulation Engine ----------------------------------------------------


def test_faulty_sites_are_refused_and_the_run_goes_on(federation: Project, tmp_path: Path) -> None:
    faults = [
        Fault("eu-frankfurt", 1, "nan"),
        Fault("eu-frankfurt", 2, "oversized"),
        Fault("us-oregon", 2, "replay"),
        Fault("eu-frankfurt", 3, "foreign_key"),
        Fault("us-oregon", 3, "wrong_shape"),
        Fault("us-oregon", 4, "crash"),
    ]
    # Runs before any approval is on file (the CLI test below adds one for China).
    project = federation
    opts = options(project, "faults", rounds=4, dp=False)
    summary = run_federated(project, opts, client_mods=[drill(faults, opts, tmp_path / "drill")])
    refused = {
        (r["round"], r["site"]): r["reason"] for r in summary["refusals"] if r["kind"] == "train"
    }
    assert not [r for r in summary["refusals"] if r["kind"] == "evaluate"]
    assert refused[(1, "eu-frankfurt")] == "not_finite"
    assert refused[(2, "eu-frankfurt")] == "oversized"
    assert refused[(2, "us-oregon")] == "replay"
    assert refused[(3, "eu-frankfurt")] == "unknown_site"
    assert refused[(3, "us-oregon")] == "wrong_shape"
    assert refused[(4, "us-oregon")] == "site_error"
    for server_round in range(1, 5):  # no approval on file: China's updates never leave
        assert refused[(server_round, "cn-shanghai")] == "site_error"
    rounds = [r for r in coordinator_entries(project, "federated_round") if r["run"] == "faults"]
    assert len(rounds) == 8, "every phase of every round is in the coordinator's ledger"
    used = [(r["round"], a["site"]) for r in rounds if r["kind"] == "train" for a in r["accepted"]]
    assert used == [(1, "us-oregon"), (4, "eu-frankfurt")]
    # Federated evaluation goes on for every site: only metrics leave, China's included.
    assert set(summary["regions"]) == set(REGIONS)
    cn = [e for e in entries(project, "cn-shanghai", "federated_update") if e["run"] == "faults"]
    assert [e["sent"] for e in cn if e["kind"] == "train"] == [False] * 4
    assert all(e["sent"] for e in cn if e["kind"] == "evaluate")
    assert {e["decision"]["allowed"] for e in cn if e["kind"] == "train"} == {False}


def test_a_federated_run_trains_across_sites_and_the_cli_reports_it(federation: Project) -> None:
    coordinator = federation.settings.coordinator.entity
    add_approval(federation, "cn-shanghai", cn_model_approval(coordinator))
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--mode",
            "federated",
            "--project",
            str(federation.root),
            "--model",
            "past_mlp",
            "--rounds",
            "2",
            "--local-steps",
            "8",
            "--batch-size",
            "64",
            "--fine-tune-steps",
            "12",
            "--run",
            "cli-run",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["run"] == "cli-run" and summary["mode"] == "federated"
    assert summary["rounds"] == 2
    assert summary["refusals"] == [], summary["refusals"]
    for site in REGIONS:
        region = summary["regions"][site]
        assert region["ade"] > 0 and region["fde"] >= region["ade"] * 0.5
        assert 0 <= region["miss_rate"] <= 1
        assert summary["epsilon"][site] > 0
        assert summary["bytes_crossed"][site] > 2 * size_limit(SPEC) // 2
    assert summary["refusals"] == [], summary["refusals"]
    # The Chinese site's compute profile (relative throughput 0.5) halves its local steps.
    rounds = coordinator_entries(federation, "federated_round")
    train = [r for r in rounds if r["run"] == "cli-run" and r["kind"] == "train"]
    steps = {a["site"]: a["metrics"]["num-steps"] for a in train[0]["accepted"]}
    assert steps == {"cn-shanghai": 4, "eu-frankfurt": 8, "us-oregon": 8}
    # Each update went to the gate with the vehicles whose data trained it (the mod and the
    # handler share what the handler found, in a Ray worker as in-process).
    for site in REGIONS:
        updates = [
            e
            for e in entries(federation, site, "federated_update")
            if e["run"] == "cli-run" and e["kind"] == "train"
        ]
        assert updates and all(e["items"][0]["subjects"] > 0 for e in updates), site
    # Lineage: every update used, by the site's ledger entry.
    finished = [e for e in coordinator_entries(federation, "federated_run_finished")]
    lineage = next(e for e in finished if e["run"] == "cli-run")["lineage"]
    assert len(lineage) == 6
    for link in lineage:
        seqs = {e.seq: e.hash for e in _ledger_entries(federation, link["site"])}
        assert seqs[link["seq"]] == link["hash"]
    assert_fine_tuned_at_the_sites(federation, summary, "cli-run", steps=12)


def assert_fine_tuned_at_the_sites(
    project: Project, summary: dict[str, Any], run: str, *, steps: int
) -> None:
    """Each site fine-tuned the global model and kept it; only metrics came back, through its
    gate and ledger, and the coordinator recorded them as the last round's phase."""
    tuned = summary["fine_tuned"]
    assert set(tuned) == set(REGIONS)
    phase = [
        r
        for r in coordinator_entries(project, "federated_round")
        if r["run"] == run and r["kind"] == "fine_tune"
    ]
    assert len(phase) == 1 and {a["site"] for a in phase[0]["accepted"]} == set(REGIONS)
    for site in REGIONS:
        t = tuned[site]
        assert t["steps"] == steps and t["samples"] == summary["regions"][site]["samples"]
        assert t["ade"] > 0 and t["global_ade"] == pytest.approx(summary["regions"][site]["ade"])
        # Down went the global model; up only metrics, far smaller than the model.
        assert phase[0]["sent"][site] >= size_limit(SPEC) // 4
        assert phase[0]["received"][site] < 4096
        with SiteStore.open(project, site) as store:
            weights = load_tensors(store.objects.read(t["weights"]["path"]))
        check_weights(SPEC, weights)
        sent = [
            e
            for e in entries(project, site, "federated_update")
            if e["run"] == run and e["kind"] == "fine_tune"
        ]
        assert sent and sent[-1]["sent"] is True
        assert sent[-1]["items"][0]["category"] == "aggregate_metrics"


def _ledger_entries(project: Project, site_id: str) -> list:  # type: ignore[type-arg]
    with SiteStore.open(project, site_id) as site:
        return list(Ledger.open(site.catalogue).entries())


def test_a_run_that_died_resumes_after_its_last_round(federation: Project) -> None:
    opts = options(federation, "resumed", rounds=2, dp=True)
    first = run_federated(federation, opts)
    # As if the coordinator had died during round 2: its summary, its round-2 checkpoint and
    # its round-2 records are not there.
    folder = federation.root / "runs" / "resumed"
    (folder / "federated.json").unlink()
    records = json.loads((folder / "rounds.json").read_text())
    (folder / "rounds.json").write_text(json.dumps([r for r in records if r["round"] == 1]))
    store = Path(federation.store_url(federation.settings.coordinator))
    (store / "derived" / "runs" / "resumed" / "rounds" / "00002.safetensors").unlink()
    again = run_federated(federation, opts)
    resumed = coordinator_entries(federation, "federated_run_resumed")
    assert [e["after_round"] for e in resumed if e["run"] == "resumed"] == [1]
    rounds = json.loads((folder / "rounds.json").read_text())
    assert [(r["round"], r["kind"]) for r in rounds] == [
        (1, "train"),
        (1, "evaluate"),
        (2, "train"),
        (2, "evaluate"),
    ]
    # Round 1 was not trained again: each site spent its privacy on it once.
    eu = [e for e in entries(federation, "eu-frankfurt", "federated_update")]
    trained = [(e["round"]) for e in eu if e["run"] == "resumed" and e["kind"] == "train"]
    assert trained == [1, 2, 2]
    assert set(again["regions"]) == set(first["regions"])


def test_a_resumed_run_finds_the_fine_tuned_models_the_sites_kept(federation: Project) -> None:
    opts = options(federation, "tuned", rounds=1, fine_tune_steps=10)
    first = run_federated(federation, opts)
    assert_fine_tuned_at_the_sites(federation, first, "tuned", steps=10)
    # The coordinator died before it wrote its summary: the rerun asks again, and each site
    # answers from the model it kept instead of training it again.
    (federation.root / "runs" / "tuned" / "federated.json").unlink()
    again = run_federated(federation, opts)
    rounds = json.loads((federation.root / "runs" / "tuned" / "rounds.json").read_text())
    assert [(r["round"], r["kind"]) for r in rounds] == [
        (1, "train"),
        (1, "evaluate"),
        (1, "fine_tune"),
    ]
    for site in REGIONS:
        assert again["fine_tuned"][site]["ade"] == pytest.approx(first["fine_tuned"][site]["ade"])
        assert again["fine_tuned"][site]["seconds"] == 0


def test_the_counterfactual_refuses_clips_recorded_by_vehicles(federation: Project) -> None:
    from onshore.federation.centralized import NotSimulated, train_centralized

    with pytest.raises(NotSimulated, match="recorded by vehicles"):
        train_centralized(federation, options(federation, "central"))


def test_the_counterfactual_pools_simulated_data_and_says_what_it_is(tmp_path: Path) -> None:
    from onshore.federation.centralized import COUNTERFACTUAL_LABEL

    project = init_project(tmp_path / "sim", "three-regions")
    for site_id in REGIONS:
        uploads = tmp_path / f"uploads-{site_id}"
        uploads.mkdir()
        for seed in range(3):
            for clip in drive(site_id, seed + 7, simulated=True):
                write_mcap(clip, uploads / f"{clip.meta.clip_id}.mcap")
        with SiteStore.open(project, site_id) as site:
            assert ingest(site, [uploads]).quarantined == []
            assert site.catalogue.clip_origins() == {"simulated": 24, "recorded": 0}
            secret = load_keystore(project.keystore_path(project.site(site_id))).hmac_secret
            deidentify_site(site, resolve_profile("training", {}), secret=secret)
        both_splits(
            project, site_id, lambda n, s=site_id: drive(s, 700 + n, simulated=True), tmp_path
        )
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--mode",
            "centralized-counterfactual",
            "--project",
            str(project.root),
            "--model",
            "past_mlp",
            "--rounds",
            "2",
            "--local-steps",
            "20",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["mode"] == "centralized-counterfactual"
    assert summary["label"] == COUNTERFACTUAL_LABEL and "forbids" in summary["label"]
    assert summary["steps"] == 2 * (10 + 20 + 20), "the federation's steps at every site"
    for site_id in REGIONS:
        region = summary["regions"][site_id]
        assert region["ade"] > 0 and region["samples"] > 0
    assert set(summary["bytes_crossed"].values()) == {0}, "nothing real moved"


def test_global_weights_load_into_the_declared_model(federation: Project) -> None:
    from safetensors.torch import load

    summary = json.loads((federation.root / "runs" / "cli-run" / "federated.json").read_text())
    coord = federation.settings.coordinator
    path = Path(federation.store_url(coord)) / summary["model_path"]["path"]
    model = build_model(SPEC)
    model.load_state_dict(load(path.read_bytes()))
    assert all(torch.isfinite(t).all() for t in model.state_dict().values())
