"""The site's side of federated training: what runs next to the site's data, in its ClientApp.

- :func:`train_reply` trains the global model on the site's own consented, de-identified
  samples for the local steps its compute profile allows, with DP-SGD within the site's budget;
  :func:`evaluate_reply` measures the global model on the site's own test split.
- :func:`fine_tune_reply`, after the last round, trains the final global model further on the
  site's own training split; the weights stay in the site's store, only their errors on the
  site's test split leave.
- :func:`outbound` is the ClientApp mod every reply passes on its way out, which the job cannot
  switch off: the reply must hold only the declared model's tensors and scalar metrics; it must
  pass the site's gate as ``model_parameters`` or ``aggregate_metrics`` towards the coordinator;
  it is written to the site's ledger with its digest, and signed. A reply that fails any of these
  does not leave: the coordinator gets an error in its place, and the ledger says why.

The privacy a site has spent is kept in its catalogue database (``privacy_spent``): every DP-SGD
step ever taken on its data, by run, so the budget in ``onshore.toml`` holds across runs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Final

import orjson
import torch
from flwr.app import ArrayRecord, Context, Error, Message, MessageType, MetricRecord, RecordDict
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_bytes
from sqlalchemy import Column, DateTime, Float, Integer, MetaData, String, Table, insert, select

from onshore.errors import OnshoreError, PrivacyBudgetSpent
from onshore.federation.envelope import (
    ARRAYS,
    METRICS,
    Statement,
    UpdateRefused,
    arrays_digest,
    check_content,
    seal,
)
from onshore.federation.options import FederatedOptions
from onshore.forecast.dataset import SiteDataset, build_site_dataset
from onshore.forecast.metrics import Metrics, evaluate
from onshore.forecast.nets import build_model, check_weights
from onshore.forecast.runs import run_object
from onshore.forecast.train import DPConfig, PrivacyAccountant, train_local
from onshore.gate import Approval, Decision
from onshore.gate.site import OpenSite
from onshore.ledger import Ledger
from onshore.parties.identity import coordinator_of
from onshore.rulebook.evaluate import DataItem, TransferRequest
from onshore.settings import Project, SiteSettings, load_project
from onshore.sites.keystore import SiteKeys, load_keystore
from onshore.store.objects import sha256
from onshore.store.site import SiteStore

__all__ = [
    "ErrorCode",
    "SiteRef",
    "evaluate_reply",
    "fine_tune_reply",
    "load_accountant",
    "model_parameters_assessment",
    "outbound",
    "outbound_decision",
    "privacy_table",
    "site_of",
    "train_reply",
]

LEDGER_KIND: Final = "federated_update"
FINE_TUNE: Final = "evaluate.fine_tune"
"""The message type that asks a site to fine-tune the final global model (an evaluation: only
metrics come back)."""
PHASES: Final = {
    MessageType.TRAIN: "train",
    MessageType.EVALUATE: "evaluate",
    FINE_TUNE: "fine_tune",
}
"""The messages a site answers, by type, and the phase each is recorded and signed as."""
FINE_TUNED: Final = "fine_tuned.safetensors"
"""The fine-tuned model's file in the site's ``derived/runs/<run>/``."""

_metadata = MetaData()
privacy_table: Final = Table(
    "privacy_spent",
    _metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("site", String(64), nullable=False),
    Column("run", String(100), nullable=False, index=True),
    Column("round", Integer, nullable=False),
    Column("noise_multiplier", Float, nullable=False),
    Column("sample_rate", Float, nullable=False),
    Column("steps", Integer, nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
)
"""Every run of DP-SGD steps taken on the site's data, in the site's catalogue database: the
accountant's history, appended in a transaction once the steps are done."""


class ErrorCode:
    """Codes of the error replies a site sends in place of an update."""

    GATE_DENIED: Final = 4001
    CHECK_FAILED: Final = 4002
    BUDGET_SPENT: Final = 4003
    NO_DATA: Final = 4004
    SITE_ERROR: Final = 4005


@dataclass(frozen=True, slots=True)
class SiteRef:
    """Which site this SuperNode serves, and its project."""

    project: Project
    site: str


_PROJECTS: dict[str, Project] = {}
_FACTS: dict[str, dict[str, Any]] = {}
"""Per message type: site-local facts the handler leaves for the mod (never sent). A SuperNode
handles one message at a time, so the mod reads what the handler of its message left."""


_KEYS: dict[tuple[Path, str], SiteKeys] = {}
_VERIFIED: dict[tuple[Path, str], str] = {}
"""Per site: the ledger head this process verified last, or appended itself on top of one it
had verified. A message finding the head unchanged does not verify the chain again."""
_BASELINES: dict[str, Metrics] = {}
"""Constant velocity's metrics per dataset cache key (the test split does not change under a
key)."""


_OPEN: dict[tuple[Path, str], OpenSite] = {}
"""The site the outbound mod opened for the message in hand, which the handler shares."""


@contextmanager
def _store(ref: SiteRef) -> Iterator[SiteStore]:
    """The site's store and catalogue for one message: the one the outbound mod opened for it,
    else one opened here and closed after. (Kept open across messages, SQLite catalogues were
    found corrupted after Ray ended its workers.)"""
    shared = _OPEN.get((ref.project.root, ref.site))
    if shared is not None:
        yield shared.store
        return
    with SiteStore.open(ref.project, ref.site) as store:
        yield store


def _keys(ref: SiteRef) -> SiteKeys:
    key = (ref.project.root, ref.site)
    if key not in _KEYS:
        _KEYS[key] = load_keystore(ref.project.keystore_path(ref.project.site(ref.site)))
    return _KEYS[key]


def _project(folder: str) -> Project:
    if folder not in _PROJECTS:
        _PROJECTS[folder] = load_project(Path(folder))
    return _PROJECTS[folder]


def site_of(context: Context, options: FederatedOptions) -> SiteRef:
    """The site a SuperNode serves: ``site`` (and ``project``) in its node config when it was
    started by ``onshore site join``; in simulation, ``sites[partition-id]`` of the run."""
    node = context.node_config
    if "site" in node:
        folder = str(node.get("project") or options.project)
        return SiteRef(_project(folder), str(node["site"]))
    index = int(node["partition-id"])
    return SiteRef(_project(options.project), options.sites[index])


def _seed(options: FederatedOptions, site: str, server_round: int) -> int:
    digest = hashlib.sha256(f"{options.seed}:{options.run}:{site}:{server_round}".encode())
    return int.from_bytes(digest.digest()[:4], "big")


def load_accountant(store: SiteStore, run: str | None = None) -> PrivacyAccountant:
    """The privacy the site has spent on its data: every DP-SGD step of every run, or of
    ``run`` alone."""
    _metadata.create_all(store.catalogue.engine, tables=[privacy_table])
    query = select(privacy_table).where(privacy_table.c.site == store.site)
    if run is not None:
        query = query.where(privacy_table.c.run == run)
    with store.catalogue.transaction() as conn:
        rows = conn.execute(query.order_by(privacy_table.c.id)).all()
    return PrivacyAccountant([(r.noise_multiplier, r.sample_rate, r.steps) for r in rows])


def _record_spent(
    store: SiteStore, run: str, server_round: int, spent: list[tuple[float, float, int]]
) -> None:
    if not spent:
        return
    now = datetime.now(UTC)
    with store.catalogue.transaction() as conn:
        conn.execute(
            insert(privacy_table),
            [
                {
                    "site": store.site,
                    "run": run,
                    "round": server_round,
                    "noise_multiplier": noise,
                    "sample_rate": rate,
                    "steps": steps,
                    "recorded_at": now,
                }
                for noise, rate, steps in spent
            ],
        )


def server_round_of(msg: Message) -> int:
    """The round a message from the coordinator is for."""
    value = msg.content.config_records["config"]["server-round"]
    if not isinstance(value, int):
        raise TypeError("server-round is not an integer")
    return value


def _error(msg: Message, code: int, reason: str) -> Message:
    return Message(Error(code=code, reason=reason), reply_to=msg)


def _dataset(store: SiteStore, options: FederatedOptions) -> SiteDataset:
    return build_site_dataset(store, options.dataset)


def train_reply(msg: Message, context: Context, options: FederatedOptions) -> Message:
    """Train the global model in ``msg`` at this site and reply with the new weights, the
    examples and steps they took, and the privacy spent."""
    ref = site_of(context, options)
    site = ref.project.site(ref.site)
    server_round = server_round_of(msg)
    initial = msg.content.array_records[ARRAYS].to_torch_state_dict()
    check_weights(options.model, initial)
    mu_value = msg.content.config_records["config"].get("proximal-mu", 0.0)
    mu = float(mu_value) if isinstance(mu_value, int | float) else 0.0
    dp = site_dp(site) if options.dp else None
    steps = options.site_steps(site.compute.relative_throughput)
    with _store(ref) as store:
        data = _dataset(store, options)
        _FACTS["train"] = {"vehicles": data.info.get("vehicles_train", 0)}
        if len(data.train) == 0:
            return _error(msg, ErrorCode.NO_DATA, f"{ref.site}: no training sample")
        accountant = load_accountant(store)
        before = list(accountant.history)
        if dp is not None and not options.spend_budget:
            planned = planned_epsilon(accountant, dp, options, steps, len(data.train), server_round)
            if planned >= dp.target_epsilon:
                return _error(
                    msg,
                    ErrorCode.BUDGET_SPENT,
                    f"{ref.site}: this run would take its privacy spent to epsilon "
                    f"{planned:.2f} (spent so far {accountant.epsilon(dp.delta):.2f}, budget "
                    f"{dp.target_epsilon:g}), after which its data could never train again; "
                    "use fewer rounds or local steps or a larger batch, or --spend-budget",
                )
        try:
            result = train_local(
                build_model(options.model, seed=options.seed),
                data.train,
                steps=steps,
                batch_size=options.batch_size,
                lr=options.lr,
                weight_decay=options.weight_decay,
                dp=dp,
                seed=_seed(options, ref.site, server_round),
                initial=initial,
                accountant=accountant,
                proximal_mu=mu,
            )
        except PrivacyBudgetSpent as exc:
            return _error(msg, ErrorCode.BUDGET_SPENT, f"{ref.site}: {exc}")
        eps_run = 0.0
        if dp is not None:
            _record_spent(store, options.run, server_round, _new_steps(before, accountant.history))
            eps_run = load_accountant(store, options.run).epsilon(dp.delta)
    metrics = MetricRecord(
        {
            "num-examples": result.examples,
            "num-steps": result.steps,
            "train-loss": result.loss if result.loss == result.loss else 0.0,
            "epsilon": 0.0 if result.epsilon is None else result.epsilon,
            "epsilon-run": eps_run,
            "budget-exhausted": int(result.budget_exhausted),
        }
    )
    content = RecordDict({ARRAYS: ArrayRecord(result.weights), METRICS: metrics})
    return Message(content, reply_to=msg)


def site_dp(site: SiteSettings) -> DPConfig:
    """DP-SGD at ``site`` as its ``privacy`` settings say: noise, clipping and budget."""
    privacy = site.privacy
    return DPConfig(privacy.epsilon, privacy.delta, privacy.noise_multiplier, privacy.max_grad_norm)


def planned_epsilon(
    accountant: PrivacyAccountant,
    dp: DPConfig,
    options: FederatedOptions,
    steps: int,
    samples: int,
    server_round: int,
) -> float:
    """Epsilon a site will have spent once it has done its steps of this round and of every
    later round of the run, on top of all it spent before."""
    rate = min(1.0, options.batch_size / max(samples, 1))
    rounds_left = max(1, options.rounds - server_round + 1)
    planned = PrivacyAccountant(
        [*accountant.history, (dp.noise_multiplier, rate, steps * rounds_left)]
    )
    return planned.epsilon(dp.delta)


def _new_steps(
    before: list[tuple[float, float, int]], after: list[tuple[float, float, int]]
) -> list[tuple[float, float, int]]:
    """The DP-SGD steps ``after`` holds beyond ``before`` (the accountant merges a run of
    steps at the same noise and rate into its last entry)."""
    new = list(after[len(before) :])
    if before and len(after) >= len(before) and after[len(before) - 1] != before[-1]:
        noise, rate, steps = after[len(before) - 1]
        new.insert(0, (noise, rate, steps - before[-1][2]))
    return new


def evaluate_reply(msg: Message, context: Context, options: FederatedOptions) -> Message:
    """Evaluate the global model in ``msg`` on this site's own test split; only the metrics
    leave."""
    ref = site_of(context, options)
    weights = msg.content.array_records[ARRAYS].to_torch_state_dict()
    check_weights(options.model, weights)
    with _store(ref) as store:
        data = _dataset(store, options)
        _FACTS["evaluate"] = {"vehicles": data.info.get("vehicles_test", 0)}
        if len(data.test) == 0:
            return _error(msg, ErrorCode.NO_DATA, f"{ref.site}: no test sample")
        accountant = load_accountant(store)
        run_accountant = load_accountant(store, options.run)
    privacy = ref.project.site(ref.site).privacy
    delta = privacy.delta
    model = build_model(options.model)
    model.load_state_dict(weights)
    metrics = evaluate(model, data.test)
    baseline = _baseline(data)
    values: dict[str, int | float | list[int] | list[float]] = {
        "num-examples": metrics.samples,
        **metrics.scalars(),
        **baseline.scalars("cv-"),
        # Counts of where the site's data went (clips, positions, samples): no record leaves.
        **{f"funnel-{k}": v for k, v in data.info.get("funnel", {}).items()},
        "epsilon": accountant.epsilon(delta),
        "epsilon-run": run_accountant.epsilon(delta),
        # The site's budget, which only it knows, for the model card.
        "delta": delta,
        "budget-epsilon": privacy.epsilon,
    }
    return Message(RecordDict({METRICS: MetricRecord(values)}), reply_to=msg)


def _baseline(data: SiteDataset) -> Metrics:
    """Constant velocity on the site's test split, once per dataset cache."""
    cache = str(data.info.get("cache", ""))
    if cache not in _BASELINES or not cache:
        _BASELINES[cache] = evaluate(build_model("constant_velocity"), data.test)
    return _BASELINES[cache]


def fine_tune_reply(msg: Message, context: Context, options: FederatedOptions) -> Message:
    """Train the final global model in ``msg`` ``options.fine_tune_steps`` more steps on this
    site's own training split and keep the result in the site's store
    (``derived/runs/<run>/fine_tuned.safetensors``); reply with its errors on the site's test
    split, beside the global model's. The weights never leave, so the steps run without DP-SGD
    and spend no budget. Asked again for the same global model (a run resumed after it died),
    the site evaluates what it kept instead of training again."""
    ref = site_of(context, options)
    arrays = msg.content.array_records[ARRAYS]
    weights = arrays.to_torch_state_dict()
    check_weights(options.model, weights)
    global_sha = arrays_digest(arrays)
    path = run_object(options.run, FINE_TUNED)
    with _store(ref) as store:
        data = _dataset(store, options)
        # What leaves is measured on the test vehicles, of a model trained on the others.
        _FACTS["fine_tune"] = {
            "vehicles": data.info.get("vehicles_train", 0) + data.info.get("vehicles_test", 0)
        }
        if len(data.train) == 0 or len(data.test) == 0:
            return _error(msg, ErrorCode.NO_DATA, f"{ref.site}: no training or test sample")
        kept = _kept_fine_tuned(store, path, global_sha, options)
        if kept is not None:
            tuned, steps, seconds = kept, options.fine_tune_steps, 0.0
        else:
            result = train_local(
                build_model(options.model, seed=options.seed),
                data.train,
                steps=options.fine_tune_steps,
                batch_size=options.batch_size,
                lr=options.fine_tune_rate,
                weight_decay=options.weight_decay,
                seed=_seed(options, ref.site, options.rounds + 1),
                initial=weights,
            )
            tuned, steps, seconds = result.weights, result.steps, result.seconds
            blob = safetensors_bytes(
                tuned,
                metadata={
                    "run": options.run,
                    "site": ref.site,
                    "model": orjson.dumps(options.model.as_dict()).decode(),
                },
            )
            store.objects.put(path, blob)
            # Written last: a record means the weights beside it are whole.
            record = {**_fine_tune_key(global_sha, options), "sha256": sha256(blob)}
            store.objects.put(_record_path(path), orjson.dumps(record))
    model = build_model(options.model)
    model.load_state_dict(tuned)
    metrics = evaluate(model, data.test)
    model.load_state_dict(weights)
    before = evaluate(model, data.test)
    values: dict[str, int | float | list[int] | list[float]] = {
        "num-examples": metrics.samples,
        "num-steps": steps,
        "seconds": round(seconds, 1),
        **metrics.scalars(),
        "global-ade": before.ade,
        "cv-ade": _baseline(data).ade,
    }
    return Message(RecordDict({METRICS: MetricRecord(values)}), reply_to=msg)


def _fine_tune_key(global_sha: str, options: FederatedOptions) -> dict[str, Any]:
    return {
        "global_sha256": global_sha,
        "steps": options.fine_tune_steps,
        "lr": options.fine_tune_rate,
        "batch_size": options.batch_size,
        "seed": options.seed,
    }


def _record_path(path: str) -> str:
    return path.removesuffix(".safetensors") + ".json"


def _kept_fine_tuned(
    store: SiteStore, path: str, global_sha: str, options: FederatedOptions
) -> dict[str, torch.Tensor] | None:
    """The fine-tuned weights this site kept for the same global model and fine-tuning, if
    it has them whole."""
    if not store.objects.exists(_record_path(path)) or not store.objects.exists(path):
        return None
    record = orjson.loads(store.objects.read(_record_path(path)))
    blob = store.objects.read(path)
    if record != {**_fine_tune_key(global_sha, options), "sha256": sha256(blob)}:
        return None
    return dict(safetensors_load(blob))


def model_parameters_assessment(
    project: Project,
    *,
    approval_id: str,
    reference: str,
    valid_from: date,
    max_subjects: int = 100_000,
    purpose: str = "adas_training",
) -> Approval:
    """A CAC security assessment covering model parameters from Chinese data to the project's
    coordinator: what a Chinese site needs on file before its updates may leave."""
    return Approval.model_validate(
        {
            "id": approval_id,
            "type": "cn_security_assessment",
            "origin": "CN",
            "recipient": coordinator_of(project).entity,
            "categories": ["model_parameters"],
            "purposes": [purpose],
            "max_subjects": max_subjects,
            "valid_from": valid_from,
            "reference": reference,
        }
    )


def outbound_decision(
    site: OpenSite,
    category: str,
    subjects: int,
    purpose: str,
    *,
    day: date | None = None,
) -> tuple[Decision, TransferRequest]:
    """The site's gate on sending its coordinator ``category`` (``model_parameters`` or
    ``aggregate_metrics``) derived from ``subjects`` vehicles' data: the decision the outbound
    mod acts on, and what an operator can ask before a run (``onshore gate outbound``)."""
    item = DataItem(category=category, subjects=subjects, deid_state="anonymized")
    request = site.request(
        site.coordinator(), (item,), purpose, day=day or datetime.now(UTC).date()
    )
    return site.decide(request), request


def _open(ref: SiteRef) -> OpenSite:
    """The site for one message: its store, its keys (loaded once per process), its ledger."""
    keys = _keys(ref)
    store = SiteStore.open(ref.project, ref.site)
    try:
        return OpenSite(ref.project, store, keys, Ledger.open(store.catalogue, keys))
    except BaseException:
        store.close()
        raise


Next = Callable[[Message, Context], Message]


def outbound(
    options_of: Callable[[Context], FederatedOptions],
) -> Callable[[Message, Context, Next], Message]:
    """The site's outbound mod: every reply is checked, put to the gate, recorded and signed
    before it may leave (see the module's description). ``options_of`` gives the run's options
    from the context (the run config when deployed)."""

    def mod(msg: Message, context: Context, call_next: Next) -> Message:
        # Only module-level names here: Ray pickles this closure by value, with copies of the
        # globals it names, so state it shared with the handler would not be shared.
        return govern(msg, context, call_next, options_of(context))

    return mod


def govern(msg: Message, context: Context, call_next: Next, options: FederatedOptions) -> Message:
    """The outbound mod's work for one message (see :func:`outbound`)."""
    ref = site_of(context, options)
    kind = PHASES.get(msg.metadata.message_type)
    if kind is None:
        return _error(
            msg,
            ErrorCode.CHECK_FAILED,
            f"{ref.site} answers {', '.join(PHASES)} only, not {msg.metadata.message_type}",
        )
    _FACTS.pop(kind, None)
    key = (ref.project.root, ref.site)
    with _open(ref) as site:
        _OPEN[key] = site
        try:
            try:
                reply = call_next(msg, context)
            except OnshoreError as exc:
                reply = _error(msg, ErrorCode.SITE_ERROR, f"{ref.site}: {exc}")
            facts = _FACTS.pop(kind, {})
            try:
                return _let_go(msg, reply, site, options, kind, facts)
            except OnshoreError as exc:
                # A ledger that does not verify, approvals that disagree with it: nothing
                # leaves.
                return _error(msg, ErrorCode.CHECK_FAILED, f"{ref.site}: {exc}")
        finally:
            _OPEN.pop(key, None)


def _let_go(
    msg: Message,
    reply: Message,
    site: OpenSite,
    options: FederatedOptions,
    kind: str,
    facts: dict[str, Any],
) -> Message:
    server_round = server_round_of(msg)
    coordinator = site.coordinator()
    ledger = site.ledger
    base: dict[str, Any] = {
        "run": options.run,
        "round": server_round,
        "kind": kind,
        "from": site.id,
        "to": coordinator.id,
        "destination": coordinator.country,
        "purpose": options.purpose,
        "date": datetime.now(UTC).date().isoformat(),
    }
    if reply.has_error():
        ledger.append(LEDGER_KIND, {**base, "sent": False, "reason": reply.error.reason})
        return reply
    try:
        digest, size = check_content(reply.content, options.model, with_arrays=kind == "train")
    except UpdateRefused as exc:
        ledger.append(
            LEDGER_KIND,
            {**base, "sent": False, "reason": f"outgoing check failed: {exc}"},
        )
        return _error(msg, ErrorCode.CHECK_FAILED, f"{site.id}: outgoing check failed: {exc}")
    category = "model_parameters" if kind == "train" else "aggregate_metrics"
    key = (site.project.root, site.id)
    head = ledger.head()
    if head is None or _VERIFIED.get(key) != head.hash:
        site.check_ledger()
    decision, request = outbound_decision(
        site, category, int(facts.get("vehicles", 0)), options.purpose
    )
    item, recipient = request.data[0], request.recipient
    record = {
        **base,
        "recipient": recipient.model_dump(mode="json"),
        "items": [item.model_dump(mode="json")],
        "sha256": digest,
        "bytes": size,
        "decision": decision.as_dict(),
        "sent": decision.allowed,
    }
    entry = ledger.append(LEDGER_KIND, record)
    if head is not None and entry.prev_hash == head.hash:
        _VERIFIED[key] = entry.hash  # on top of the chain just verified
    if not decision.allowed:
        return _error(
            msg,
            ErrorCode.GATE_DENIED,
            f"{site.id}: the gate denied {category} to {coordinator.entity}: "
            f"{decision.reasons[0] if decision.reasons else 'denied'}",
        )
    statement = Statement(
        run=options.run,
        round=server_round,
        kind=kind,
        site=site.id,
        sha256=digest,
        size=size,
        ledger={"site": site.id, "seq": entry.seq, "hash": entry.hash},
    )
    seal(reply.content, statement, site.keys)
    return reply
