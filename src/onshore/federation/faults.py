"""Fault drills: a site that misbehaves after its outbound mod let a reply go.

Each :class:`Fault` turns one site's reply in one round into what a broken or hostile site would
send: NaN weights, a wrong shape, an oversized update, a replay of an earlier round's update, a
signature by a key that is no site's, or a crash in the middle of the round. The altered reply is
signed again with the site's own key (a site whose software is broken still has its key), so the
coordinator's own checks, not the signature alone, must catch it. Only tests and drills install
these mods (``run_federated(..., client_mods=[drill(...)])``); ``onshore train`` never does.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Array, ArrayRecord, Context, Message, MessageType, RecordDict

from onshore.federation.envelope import ARRAYS, ENVELOPE, Statement, content_digest, seal
from onshore.federation.options import FederatedOptions
from onshore.federation.site import server_round_of, site_of
from onshore.sites.keystore import Secret, SiteKeys, load_keystore

__all__ = ["FAULTS", "Fault", "FaultKind", "drill"]

FaultKind = Literal["nan", "wrong_shape", "oversized", "replay", "foreign_key", "crash"]
FAULTS: Final = ("nan", "wrong_shape", "oversized", "replay", "foreign_key", "crash")


@dataclass(frozen=True, slots=True)
class Fault:
    """``site`` misbehaves in the training phase of ``round``."""

    site: str
    round: int
    kind: FaultKind


class SiteCrashed(RuntimeError):
    """A drill's site process failing in the middle of a round."""


def drill(faults: Sequence[Fault], options: FederatedOptions, memory: Path) -> Drill:
    """An outer ClientApp mod playing ``faults``. ``memory`` is a folder where each site's
    signed training replies are kept for replays (Ray may run a site's rounds in different
    worker processes, so nothing is kept in memory)."""
    memory.mkdir(parents=True, exist_ok=True)
    return Drill({(f.site, f.round): f.kind for f in faults}, options, memory)


@dataclass(frozen=True, slots=True)
class Drill:
    """The mod :func:`drill` makes: plain data, so it pickles into the run's processes."""

    faults: dict[tuple[str, int], FaultKind]
    options: FederatedOptions
    memory: Path

    def __call__(
        self, msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
    ) -> Message:
        ref = site_of(context, self.options)
        server_round = server_round_of(msg)
        is_train = msg.metadata.message_type == MessageType.TRAIN
        kind = self.faults.get((ref.site, server_round)) if is_train else None
        if kind == "crash":
            raise SiteCrashed(f"{ref.site} crashed in round {server_round} (drill)")
        reply = call_next(msg, context)
        if not is_train or reply.has_error():
            return reply
        kept = self.memory / f"{ref.site}-{server_round}.pickle"
        kept.write_bytes(pickle.dumps(reply.content))
        if kind is None:
            return reply
        keys = load_keystore(ref.project.keystore_path(ref.project.site(ref.site)))
        if kind == "replay":
            earlier = sorted(self.memory.glob(f"{ref.site}-*.pickle"))
            earlier = [p for p in earlier if p != kept]
            if earlier:
                old = pickle.loads(earlier[-1].read_bytes())
                return Message(old, reply_to=msg)
            return reply
        content = _alter(reply.content, kind)
        statement = _statement(reply.content)
        digest, size = content_digest(content)
        signer = keys if kind != "foreign_key" else _stranger()
        seal(
            content,
            Statement(
                statement.run,
                statement.round,
                statement.kind,
                statement.site,
                digest,
                size,
                statement.ledger,
            ),
            signer,
        )
        return Message(content, reply_to=msg)


def _statement(content: RecordDict) -> Statement:
    from onshore.federation.envelope import statement_of

    statement = statement_of(content)
    if statement is None:
        raise ValueError("the reply was not signed by the outbound mod")
    return statement


def _alter(content: RecordDict, kind: str) -> RecordDict:
    arrays = {name: array.numpy().copy() for name, array in content.array_records[ARRAYS].items()}
    first = sorted(arrays)[0]
    if kind == "nan":
        arrays[first].flat[0] = np.nan
    elif kind == "wrong_shape":
        arrays[first] = arrays[first].reshape(-1)[:-1].copy()
    elif kind == "oversized":
        arrays["extra.payload"] = np.zeros(1_000_000, np.float32)
    out = RecordDict(
        {
            ARRAYS: ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            **{k: v for k, v in content.metric_records.items()},
        }
    )
    if ENVELOPE in out:
        del out[ENVELOPE]
    return out


def _stranger() -> SiteKeys:
    """Keys no site of the federation has."""
    return SiteKeys(Ed25519PrivateKey.generate(), Secret(b"\0" * 32))
