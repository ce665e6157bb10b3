"""The coordinator's side: the ServerApp's strategy, governed.

Flower's FedAvg, FedAvgM (server momentum), FedProx and FedAdam, each with the coordinator's checks
in front of its aggregation. A reply is used only when it carries a statement signed by a site of
the federation (else ``unknown_site``), for this run, round and kind (else ``replay``), whose digest
is the content's (else ``altered``), never seen before (else ``replay``), and whose content passes
the same checks the site applied (``oversized``, ``wrong_shape``, ``not_finite``...). Every refusal,
every error reply and every missing site is recorded in the coordinator's ledger with the round, and
the round goes on with the updates that passed.

Sites do unequal numbers of local steps (their compute profiles differ), and plain FedAvg then
leans towards the sites that did more. Aggregation normalises each update by its steps, as FedNova
does: each site's change is divided by its steps and the average change is scaled by the
examples-weighted mean steps, so ``w = g + tau_eff * sum_i p_i (w_i - g) / tau_i``. The strategy
(FedAvg's weighted mean, FedAdam's server optimiser) then works on those normalised updates.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedProx

from onshore.federation.envelope import (
    ARRAYS,
    METRICS,
    UpdateRefused,
    check_content,
    content_digest,
    metric_values,
    open_envelope,
)
from onshore.federation.options import FederatedOptions
from onshore.forecast.nets import weight_signature

__all__ = ["Admitted", "Governance", "RoundLog", "make_strategy"]


@dataclass(frozen=True, slots=True)
class Admitted:
    """A reply the coordinator accepted."""

    site: str
    message: Message
    sha256: str
    bytes: int
    ledger: Mapping[str, Any]
    metrics: dict[str, float]


@dataclass(slots=True)
class RoundLog:
    """What happened in one phase (train or evaluate) of one round."""

    round: int
    kind: str
    sent: dict[int, int] = field(default_factory=dict)
    """Bytes sent to each node."""
    accepted: list[Admitted] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    """Nodes asked that sent nothing back in time."""
    received: dict[str, int] = field(default_factory=dict)
    """Bytes received from each site that identified itself (accepted or refused)."""


class Governance:
    """The coordinator's checks and its record of each round, shared by the strategy and the
    ServerApp. ``on_phase`` is called with each finished :class:`RoundLog` (the ServerApp writes
    it to the coordinator's ledger)."""

    def __init__(
        self,
        options: FederatedOptions,
        public_keys: Mapping[str, Ed25519PublicKey],
        on_phase: Any = None,
        *,
        on_model: Any = None,
        node_sites: Mapping[int, str] | None = None,
    ) -> None:
        self.options = options
        self.on_model = on_model
        self.offset = 0
        """Rounds done before this start (a resumed run): Flower counts from 1 again."""
        self.public_keys = dict(public_keys)
        self.on_phase = on_phase
        self.seen: set[str] = set()
        self.node_site: dict[int, str] = dict(node_sites or {})
        self.allowed: set[int] | None = set(node_sites) if node_sites else None
        """The nodes the coordinator registered for the run's sites (deployed): no message
        goes to any other node."""
        self.current: RoundLog | None = None
        self.logs: list[RoundLog] = []
        self.evaluations: dict[int, dict[str, dict[str, float]]] = {}

    def start(self, server_round: int, kind: str, messages: Iterable[Message]) -> list[Message]:
        out = [
            m for m in messages if self.allowed is None or m.metadata.dst_node_id in self.allowed
        ]
        log = RoundLog(server_round, kind)
        for message in out:
            arrays = message.content.array_records.get(ARRAYS)
            log.sent[message.metadata.dst_node_id] = (
                sum(len(a.data) for a in arrays.values()) if arrays is not None else 0
            )
        self.current = log
        return out

    def admit(self, server_round: int, kind: str, replies: Iterable[Message]) -> list[Admitted]:
        log = self.current if self.current is not None else RoundLog(server_round, kind)
        answered: set[int] = set()
        for reply in replies:
            node = reply.metadata.src_node_id
            answered.add(node)
            if reply.has_error():
                log.refused.append(
                    {
                        "node": node,
                        "site": self.node_site.get(node) or self._named(reply.error.reason),
                        "reason": "site_error",
                        "detail": reply.error.reason,
                        "code": reply.error.code,
                    }
                )
                continue
            try:
                admitted = self._check(server_round, kind, reply)
            except UpdateRefused as exc:
                claimed = _claimed_site(reply)
                _, size = content_digest(reply.content)
                if claimed in self.public_keys:
                    log.received[claimed] = log.received.get(claimed, 0) + size
                log.refused.append(
                    {
                        "node": node,
                        "site": claimed or self.node_site.get(node),
                        "reason": exc.reason,
                        "detail": exc.detail,
                    }
                )
                continue
            log.received[admitted.site] = log.received.get(admitted.site, 0) + admitted.bytes
            log.accepted.append(admitted)
        log.missing = sorted(set(log.sent) - answered)
        for node in log.missing:
            # Gone mid-round, or too slow: the round went on without it, and says so.
            log.refused.append(
                {
                    "node": node,
                    "site": self.node_site.get(node),
                    "reason": "no_reply",
                    "detail": f"no answer within {self.options.timeout:g} s; the round went on",
                }
            )
        self.current = None
        self.logs.append(log)
        if self.on_phase is not None:
            self.on_phase(log)
        return log.accepted

    def _named(self, reason: str | None) -> str | None:
        """The site an error reply names at its start (``site: ...``), if it is one of the
        run's: a report aid only, never trusted for the model."""
        head = (reason or "").split(":", 1)[0]
        return head if head in self.options.sites else None

    def _check(self, server_round: int, kind: str, reply: Message) -> Admitted:
        statement = open_envelope(reply.content, self.public_keys)
        if statement.site not in self.options.sites:
            raise UpdateRefused("unknown_site", f"{statement.site} is not in this run")
        node = reply.metadata.src_node_id
        known = self.node_site.setdefault(node, statement.site)
        if known != statement.site:
            raise UpdateRefused(
                "unknown_site", f"node {node} answered as {known} before, now as {statement.site}"
            )
        if (statement.run, statement.round, statement.kind) != (
            self.options.run,
            server_round,
            kind,
        ):
            raise UpdateRefused(
                "replay",
                f"signed for run {statement.run} round {statement.round} ({statement.kind}), "
                f"this is run {self.options.run} round {server_round} ({kind})",
            )
        if kind == "train" and statement.sha256 in self.seen:
            # Evaluations of an unchanged model repeat their metrics; updates never repeat.
            raise UpdateRefused("replay", f"update {statement.sha256[:16]} was received before")
        digest, size = check_content(reply.content, self.options.model, with_arrays=kind == "train")
        if digest != statement.sha256:
            raise UpdateRefused(
                "altered", "the content is not what the site signed (digest differs)"
            )
        if kind == "train":
            self.seen.add(digest)
        metrics = metric_values(reply.content)
        if kind == "train" and not (
            metrics.get("num-examples", 0) > 0 and metrics.get("num-steps", 0) > 0
        ):
            raise UpdateRefused("wrong_content", "num-examples and num-steps must be positive")
        return Admitted(statement.site, reply, digest, size, statement.ledger, metrics)


def _claimed_site(reply: Message) -> str | None:
    from onshore.federation.envelope import statement_of

    try:
        statement = statement_of(reply.content)
    except Exception:
        return None
    return None if statement is None else statement.site


def normalise(admitted: list[Admitted], current: ArrayRecord) -> list[Message]:
    """FedNova: each update rescaled so that every site counts as if it had done the mean
    number of steps (weighted by examples); returns replies FedAvg's weighted mean turns into
    ``g + tau_eff * sum_i p_i (w_i - g) / tau_i``."""
    if not admitted:
        return []
    examples = np.array([a.metrics["num-examples"] for a in admitted], dtype=np.float64)
    steps = np.array([a.metrics["num-steps"] for a in admitted], dtype=np.float64)
    tau_eff = float((examples / examples.sum() * steps).sum())
    base = {name: array.numpy() for name, array in current.items()}
    out = []
    for item, tau in zip(admitted, steps, strict=True):
        scale = tau_eff / tau
        arrays = item.message.content.array_records[ARRAYS]
        scaled = {}
        for name, array in arrays.items():
            g = base[name]
            w = array.numpy()
            scaled[name] = Array((g + scale * (w.astype(np.float64) - g)).astype(w.dtype))
        content = RecordDict(
            {ARRAYS: ArrayRecord(scaled), METRICS: item.message.content.metric_records[METRICS]}
        )
        out.append(Message(content, dst_node_id=0, message_type=MessageType.TRAIN))
    return out


def declared(arrays: ArrayRecord, options: FederatedOptions) -> ArrayRecord:
    """``arrays`` in the declared model's dtypes: a server optimiser (FedAdam) computes in
    float64, and the sites accept nothing but the declared model."""
    signature = weight_signature(options.model)
    out = {}
    for name, array in arrays.items():
        dtype = str(signature[name][1]).removeprefix("torch.") if name in signature else None
        values = array.numpy()
        out[name] = Array(values.astype(dtype) if dtype and values.dtype != dtype else values)
    return ArrayRecord(out)


class _Governed:
    """The coordinator's checks and FedNova's normalisation in front of a Flower strategy."""

    governance: Governance
    _current: ArrayRecord | None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        server_round += self.governance.offset
        self._current = arrays
        if server_round > self.governance.offset + 1:
            # Every site joined before round 1; from then on a site that went away must not
            # hold up the others.
            self.min_available_nodes = 1
        messages = super().configure_train(server_round, arrays, config, grid)  # type: ignore[misc]
        return self.governance.start(server_round, "train", messages)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.governance.offset
        admitted = self.governance.admit(server_round, "train", replies)
        arrays, metrics = None, None
        if admitted and self._current is not None:
            normalised = normalise(admitted, self._current)
            arrays, metrics = super().aggregate_train(server_round, normalised)  # type: ignore[misc]
            if arrays is not None:
                arrays = declared(arrays, self.governance.options)
        if self.governance.on_model is not None:
            # Kept every round, changed or not, so a run that dies resumes after it.
            kept = arrays if arrays is not None else self._current
            if kept is not None:
                self.governance.on_model(server_round, kept)
        return arrays, metrics  # None: the global model stays as it was; the next round goes on

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        server_round += self.governance.offset
        messages = super().configure_evaluate(server_round, arrays, config, grid)  # type: ignore[misc]
        return self.governance.start(server_round, "evaluate", messages)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        server_round += self.governance.offset
        admitted = self.governance.admit(server_round, "evaluate", replies)
        self.governance.evaluations[server_round] = {a.site: a.metrics for a in admitted}
        if not admitted:
            return None
        return super().aggregate_evaluate(  # type: ignore[misc, no-any-return]
            server_round,
            [
                Message(
                    RecordDict({METRICS: a.message.content.metric_records[METRICS]}),
                    dst_node_id=0,
                    message_type=MessageType.EVALUATE,
                )
                for a in admitted
            ],
        )


class GovernedFedAvg(_Governed, FedAvg):
    pass


class GovernedFedAvgM(_Governed, FedAvgM):
    pass


class GovernedFedProx(_Governed, FedProx):
    pass


class GovernedFedAdam(_Governed, FedAdam):
    pass


def make_strategy(options: FederatedOptions, governance: Governance) -> FedAvg:
    """The run's strategy with the coordinator's governance in front of it. Every site must
    have joined before the first round; after that a round goes on with whoever answers."""
    n = len(options.sites)
    common: dict[str, Any] = {
        "fraction_train": 1.0,
        "fraction_evaluate": 1.0,
        "min_train_nodes": 1,
        "min_evaluate_nodes": 1,
        "min_available_nodes": n,
    }
    strategy: FedAvg
    if options.strategy == "fedprox":
        strategy = GovernedFedProx(proximal_mu=options.proximal_mu, **common)
    elif options.strategy == "fedavgm":
        strategy = GovernedFedAvgM(
            server_learning_rate=1.0 - options.server_momentum,
            server_momentum=options.server_momentum,
            **common,
        )
    elif options.strategy == "fedadam":
        strategy = GovernedFedAdam(eta=options.server_lr, eta_l=options.lr, **common)
    else:
        strategy = GovernedFedAvg(**common)
    strategy.governance = governance
    strategy._current = None
    return strategy
