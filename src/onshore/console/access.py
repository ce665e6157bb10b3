"""What a console user may see of a site, and the gate in front of rows read from abroad.

The console runs at the coordinator. A site operator sees their own site; an auditor sees
everything, read-only; a coordinator engineer sees every site's metadata and aggregates (counts,
labels, approvals and their deadlines, ledger status, training metrics that already crossed the
gate), but the rows a site holds (its clips, its decisions, its reports) only as that site's
gate allows. Such a read from another country is a transfer like any other: China counts a
remote query from abroad as outbound, and so does the EU. The site's gate decides on what the
page would show (the categories and the number of vehicles in it), towards the coordinator's
entity and country, for the purpose ``remote_query``; the decision is a ``remote_read`` entry
in the site's ledger whichever way it goes, and an allowed read counts towards the rule windows
like any transfer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Final

from onshore.console.auth import Role, User
from onshore.gate import Decision
from onshore.ledger import Ledger
from onshore.rulebook.evaluate import DataItem, Recipient, TransferRequest
from onshore.settings import Project
from onshore.sites.keystore import load_keystore
from onshore.store.site import SiteStore
from onshore.transfer import site_gate

__all__ = ["REMOTE_QUERY", "Forbidden", "RowAccess", "read_rows", "sees_site"]

REMOTE_QUERY: Final = "remote_query"
"""The purpose the gate is asked about when rows are read from another country."""


class Forbidden(Exception):
    """The user's role never sees this (another site's rows for a site operator)."""


@dataclass(frozen=True, slots=True)
class RowAccess:
    """Whether the rows may be shown, and why."""

    allowed: bool
    how: str
    """``own site``, ``auditor``, ``same country`` or ``gate``."""
    decision: Decision | None = None
    ledger_seq: int | None = None
    """The ``remote_read`` entry in the site's ledger (gate reads only)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "allowed": self.allowed,
            "how": self.how,
            "decision": None if self.decision is None else self.decision.as_dict(),
            "ledger_seq": self.ledger_seq,
        }


def sees_site(user: User, site_id: str) -> bool:
    """Whether the user sees anything of the site at all."""
    return user.role is not Role.SITE_OPERATOR or user.site == site_id


def reader_country(project: Project, user: User) -> str:
    """Where the user reads from: a site operator at their site, everyone else at the
    coordinator (the console's host)."""
    if user.role is Role.SITE_OPERATOR and user.site is not None:
        return project.site(user.site).location
    return project.settings.coordinator.country


def read_rows(
    project: Project,
    user: User,
    site_id: str,
    view: str,
    items: Sequence[DataItem],
    *,
    rows: int,
    day: date | None = None,
) -> RowAccess:
    """Decide whether ``user`` may see ``rows`` rows of site ``site_id`` holding ``items`` on
    the page ``view``; a read through the gate is recorded in the site's ledger. Raises
    :class:`Forbidden` for a site operator asking for another site."""
    if not sees_site(user, site_id):
        raise Forbidden(f"{user.name} operates {user.site}, not {site_id}")
    if user.role is Role.SITE_OPERATOR:
        return RowAccess(True, "own site")
    if user.role is Role.AUDITOR:
        return RowAccess(True, "auditor")
    site = project.site(site_id)
    coordinator = project.settings.coordinator
    if reader_country(project, user) == site.location:
        return RowAccess(True, "same country")
    request = TransferRequest(
        origin=site.jurisdiction,
        destination=coordinator.country,
        recipient=Recipient(
            name=coordinator.entity,
            country=coordinator.country,
            linked_to=tuple(coordinator.linked_to),
        ),
        purpose=REMOTE_QUERY,
        date=day or datetime.now(UTC).date(),
        data=tuple(items),
    )
    with SiteStore.open(project, site_id) as store:
        ledger = Ledger.open(store.catalogue, load_keystore(project.keystore_path(site)))
        decision = site_gate(project, store, ledger).decide(request)
        entry = ledger.append(
            "remote_read",
            {
                "reader": user.name,
                "role": str(user.role),
                "view": view,
                "rows": rows,
                "from": site_id,
                "to": coordinator.id,
                "destination": request.destination,
                "recipient": request.recipient.model_dump(mode="json"),
                "purpose": REMOTE_QUERY,
                "date": request.date.isoformat(),
                "items": [item.model_dump(mode="json") for item in items],
                "decision": decision.as_dict(),
                "allowed": decision.allowed,
            },
        )
    return RowAccess(decision.allowed, "gate", decision, entry.seq)
