"""Witnessing between parties: each keeps the other's latest ledger head, and each can ask the
other whether the head it keeps still holds.

A party holds its own key, so it could rewrite its history and sign all of it again; its own
``verify`` would pass. Its peers catch it: every message between parties carries the sender's
head, and a party records a peer's head (``peer_heads`` in one of its entries) whenever it
changed. Because each entry hashes the one before, the latest head a peer recorded vouches for
everything up to it. A witness exchange asks the peer two things at once (:func:`answer`):
is the head of yours that I hold still in your chain, and which head of mine do you hold? The
asker then judges both (:func:`judge`): a mismatch on the peer's side means the peer rewrote its
history; on its own side, that it did.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from onshore.checks import Check
from onshore.errors import LedgerError
from onshore.ledger.chain import Ledger
from onshore.ledger.entry import Entry, Head

__all__ = ["answer", "judge", "record_if_new", "vouch"]


def record_if_new(
    ledger: Ledger, head: Head | None, *, also: tuple[Head, ...] = ()
) -> Entry | None:
    """Append a ``peer_head`` entry for each head not yet recorded (``head`` and ``also``);
    returns the entry, or None when every one was recorded already."""
    fresh = []
    for found in (head, *also):
        if found is None or found.site == ledger.site:
            continue
        last = ledger.last_peer_head(found.site)
        if last is None or (last.seq, last.hash) != (found.seq, found.hash):
            fresh.append(found)
    if not fresh:
        return None
    return ledger.append("peer_head", {}, peer_heads=fresh)


def answer(
    ledger: Ledger,
    requester: str,
    asked: Mapping[str, Any] | None,
    *,
    intact: Callable[[], str | None],
) -> dict[str, Any]:
    """The witness answer of ``ledger``'s party to ``requester``, which holds ``asked`` (a head
    of this ledger, or None). ``intact`` returns why this ledger's chain does not verify, or
    None when it does."""
    check: dict[str, Any] | None = None
    if asked is not None:
        try:
            head = Head.from_dict(asked)
        except LedgerError as exc:
            check = {"malformed": exc.message}
        else:
            entry = ledger.entry(head.seq)
            check = {
                "seq": head.seq,
                "hash": head.hash,
                "found": entry is not None,
                "matches": entry is not None and entry.hash == head.hash,
                "key_matches": head.key == ledger.pinned_fingerprint(),
            }
    mine = ledger.last_peer_head(requester)
    return {
        "check": check,
        "problem": intact(),
        "head_of_you": None if mine is None else mine.as_dict(),
    }


def judge(
    ledger: Ledger, peer: str, held: Head | None, reply: Mapping[str, Any]
) -> tuple[list[Check], int]:
    """The problems a witness ``reply`` from ``peer`` shows, and how many heads it compared.
    ``held`` is the head of the peer this ledger holds (what was asked about)."""
    problems: list[Check] = []
    compared = 0
    check = reply.get("check")
    if held is not None and isinstance(check, dict):
        compared += 1
        if not check.get("found"):
            problems.append(
                Check.failed(
                    peer,
                    held.seq,
                    "peer_head",
                    f"{peer} has no entry {held.seq}, whose hash {ledger.site} recorded: "
                    f"{peer}'s history was truncated",
                )
            )
        elif not check.get("matches"):
            problems.append(
                Check.failed(
                    peer,
                    held.seq,
                    "peer_head",
                    f"{peer}'s entry {held.seq} is not the one {ledger.site} recorded "
                    f"({held.hash[:12]}): {peer} rewrote its history",
                )
            )
        if check.get("key_matches") is False:
            problems.append(
                Check.failed(
                    peer, 0, "key", f"{peer}'s ledger now pins another key than it did: swapped"
                )
            )
    if reply.get("problem"):
        problems.append(
            Check.failed(
                peer, None, "peer_head", f"{peer}'s own chain does not verify: {reply['problem']}"
            )
        )
    theirs = reply.get("head_of_you")
    if isinstance(theirs, dict):
        try:
            head = Head.from_dict(theirs)
        except LedgerError as exc:
            problems.append(Check.failed(peer, None, "payload", exc.message))
        else:
            compared += 1
            entry = ledger.entry(head.seq)
            if entry is None:
                problems.append(
                    Check.failed(
                        ledger.site,
                        head.seq,
                        "peer_head",
                        f"no entry {head.seq}, whose hash {peer} recorded: "
                        f"{ledger.site}'s history was truncated",
                    )
                )
            elif entry.hash != head.hash:
                problems.append(
                    Check.failed(
                        ledger.site,
                        head.seq,
                        "peer_head",
                        f"entry {head.seq} hashes to {entry.hash[:12]}, but {peer} recorded "
                        f"{head.hash[:12]}: {ledger.site} rewrote its history",
                    )
                )
            if head.key != ledger.pinned_fingerprint():
                problems.append(
                    Check.failed(
                        ledger.site,
                        0,
                        "key",
                        f"{peer} recorded {ledger.site}'s key as {head.key[:16]}..., but the "
                        "genesis pins another: the key was swapped",
                    )
                )
    return problems, compared


def vouch(
    ledger: Ledger,
    seqs: list[int],
    *,
    intact: Callable[[], str | None],
    limit: int = 10_000,
    erasures_after: int | None = None,
) -> dict[str, Any]:
    """The entries at ``seqs`` as stored (or None where there is none), and whether the chain
    holding them verifies: what a peer checks a lineage or a receipt against without reading
    this party's database; with ``erasures_after``, the ``erasure`` entries after that seq too
    (what ``release verify`` lists of a model's data erased since its training). Raises
    :class:`LedgerError` for more than ``limit`` at once."""
    if len(seqs) > limit:
        raise LedgerError(f"at most {limit:,} entries are vouched for at once")
    entries = []
    for seq in seqs:
        entry = ledger.entry(seq) if isinstance(seq, int) and not isinstance(seq, bool) else None
        entries.append(None if entry is None else entry.stored())
    answer: dict[str, Any] = {"entries": entries, "problem": intact()}
    if isinstance(erasures_after, int) and not isinstance(erasures_after, bool):
        found = ledger.entries(kind="erasure", since=erasures_after + 1, limit=limit)
        answer["erasures"] = [e.stored() for e in found]
    return answer
