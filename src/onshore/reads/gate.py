"""A read of a site by another party: a transfer like any other, decided by the site's gate.

China counts a query from abroad as outbound, and so does the EU. So when another party (the
coordinator's console, an engineer's query) asks a site for a view (:mod:`.views`), the site
computes it, and its gate decides on what the view would show (the categories and subjects of
its rows) towards the reader's entity and country, for the purpose ``remote_query``. The
decision is a ``remote_read`` entry in the site's ledger either way; an allowed read records its
subjects as crossed (:mod:`onshore.gate.crossings`), so it counts towards the law's windows, once
per person. A reader in the site's own country crosses no border: the site answers without its
gate.

Reading the same page again is not a new transfer: a read identical to one recorded today (same
reader, view, parameters and content, under the same approvals) is answered under that entry,
and recorded once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Final

from onshore.gate.site import OpenSite
from onshore.ledger import Entry
from onshore.ledger.entry import canonical_json
from onshore.parties.identity import Counterparty
from onshore.reads.views import compute

__all__ = ["READ_KIND", "REMOTE_QUERY", "Reader", "answer"]

REMOTE_QUERY: Final = "remote_query"
"""The purpose the gate is asked about when rows are read from another country."""
READ_KIND: Final = "remote_read"


@dataclass(frozen=True, slots=True)
class Reader:
    """Who reads: the party asking, and the person it asks for."""

    party: str
    entity: str
    country: str
    linked_to: tuple[str, ...] = ()
    user: str = ""
    role: str = ""

    def counterparty(self) -> Counterparty:
        return Counterparty(self.party, self.entity, self.country, self.linked_to)


def _earlier(site: OpenSite, digest: str, today: date) -> Entry | None:
    start = datetime(today.year, today.month, today.day, tzinfo=UTC)
    for entry in reversed(site.ledger.entries(kind=READ_KIND, since_time=start)):
        if entry.data.get("read") == digest:
            return entry
    return None


def answer(
    site: OpenSite,
    reader: Reader,
    view: str,
    params: Mapping[str, Any],
    *,
    today: date | None = None,
) -> dict[str, Any]:
    """The site's answer to ``reader`` asking for ``view``: ``access`` (allowed, how, the
    decision, the ledger entry) and ``data`` (None when the gate denied it). Raises
    :class:`~onshore.errors.ConfigError` for an unknown view, :class:`LookupError` for an
    unknown report."""
    today = today or datetime.now(UTC).date()
    computed = compute(site, view, params, today)
    data = computed.as_json()
    if reader.country == site.settings.location:
        return {
            "access": {
                "allowed": True,
                "how": "same country",
                "decision": None,
                "ledger_seq": None,
            },
            "data": data,
        }
    # What the gate decides on may change within a day (an approval added or revoked): the
    # same read under other approvals is decided again.
    on_file = sorted((a.id, a.revoked) for a in site.approvals())
    decided = {k: v for k, v in data.items() if k not in computed.volatile}
    digest = hashlib.sha256(
        canonical_json(
            {
                "approvals": [list(a) for a in on_file],
                "party": reader.party,
                "user": reader.user,
                "role": reader.role,
                "view": view,
                "params": dict(params),
                "data": hashlib.sha256(canonical_json(decided).encode()).hexdigest(),
            }
        ).encode()
    ).hexdigest()
    earlier = _earlier(site, digest, today)
    if earlier is not None:
        recorded = earlier.data
        return {
            "access": {
                "allowed": bool(recorded.get("allowed")),
                "how": "gate",
                "decision": recorded.get("decision"),
                "ledger_seq": earlier.seq,
                "repeated": True,
            },
            "data": data if recorded.get("allowed") else None,
        }
    keys = site.crossings.keys(computed.subjects)
    request = site.request(reader.counterparty(), computed.items, REMOTE_QUERY, day=today)
    site.check_ledger()
    decision = site.decide(request, exclude=keys)
    with site.store.catalogue.transaction() as conn:
        entry = site.ledger.append(
            READ_KIND,
            {
                "reader": reader.user,
                "role": reader.role,
                "party": reader.party,
                "view": view,
                "params": dict(params),
                "rows": computed.rows,
                "from": site.id,
                "to": reader.party,
                "destination": request.destination,
                "recipient": request.recipient.model_dump(mode="json"),
                "purpose": REMOTE_QUERY,
                "date": today.isoformat(),
                "items": [item.model_dump(mode="json") for item in computed.items],
                "decision": decision.as_dict(),
                "allowed": decision.allowed,
                "read": digest,
            },
            conn=conn,
        )
        if decision.allowed:
            site.crossings.record(conn, request, keys, entry.seq)
    site.mark_verified()
    return {
        "access": {
            "allowed": decision.allowed,
            "how": "gate",
            "decision": decision.as_dict(),
            "ledger_seq": entry.seq,
            "repeated": False,
        },
        "data": data if decision.allowed else None,
    }
