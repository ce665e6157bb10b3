"""Witnessing from this party's side: ask each peer for its head, and whether the heads each
side holds of the other still hold (:mod:`onshore.ledger.witness` judges the answers).

``onshore ledger witness`` does it and records the peers' heads; ``onshore ledger verify``
does it without recording anything, to check the heads held; ``onshore party peers --check``
to see who answers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from onshore.errors import OnshoreError
from onshore.ledger.witness import judge, record_if_new
from onshore.parties.client import PeerClient
from onshore.parties.identity import LocalParty, load_peers
from onshore.parties.own import own_ledger
from onshore.settings import Project

__all__ = ["witness_peers"]


def witness_peers(
    project: Project,
    *,
    record: bool,
    only: list[str] | None = None,
    http_for: Callable[[str], httpx.Client | None] = lambda _peer: None,
) -> list[dict[str, Any]]:
    """Exchange heads with every peer (or those in ``only``): for each, its head, the problems
    its answer shows (:class:`~onshore.ledger.Problem` as dicts) and how many heads were
    compared, or the error that kept it from answering. With ``record``, each side records the
    other's head when it changed. ``http_for`` gives a client per peer (tests)."""
    local = LocalParty.of(project)
    out: list[dict[str, Any]] = []
    with own_ledger(project) as (ledger, keys):
        for peer in load_peers(project).values():
            if only is not None and peer.id not in only:
                continue
            held = ledger.last_peer_head(peer.id)
            row: dict[str, Any] = {
                "peer": peer.id,
                "held": None if held is None else held.as_dict(),
            }
            try:
                with PeerClient(local, peer, keys, head=ledger.head, http=http_for(peer.id)) as c:
                    answer = c.post(
                        "ledger.witness",
                        "/v1/witness",
                        {"head_of_you": None if held is None else held.as_dict(), "record": record},
                    )
            except OnshoreError as exc:
                row["error"] = exc.message
                out.append(row)
                continue
            problems, compared = judge(ledger, peer.id, held, answer.body)
            row["head"] = None if answer.head is None else answer.head.as_dict()
            row["problems"] = [p.as_dict() for p in problems]
            row["compared"] = compared
            if record and answer.head is not None and not problems:
                entry = record_if_new(ledger, answer.head)
                row["recorded"] = None if entry is None else entry.seq
            out.append(row)
    return out
