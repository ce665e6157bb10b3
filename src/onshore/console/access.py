"""What a console user may see of a site, and how the console asks for it.

The console runs in one party's folder (the coordinator's, or a site's). A site operator sees
their own site; an auditor and a coordinator engineer see every site. What the console shows of
a site comes from the site itself (:mod:`onshore.reads`): the folder's own site it reads
directly; another party's site it asks through that site's service, and that site's gate
decides. A read from another country is a transfer like any other: China counts a remote query
from abroad as outbound, and so does the EU. The site decides on what the page would show (the
categories and subjects in it), towards the console's party, for the purpose ``remote_query``,
and records it as a ``remote_read`` entry in its ledger whichever way it goes; the same page
read again the same day is recorded once. No process of the console's party opens another
party's catalogue.

In a lab project (every site's data in one folder, on one machine) a coordinator engineer's
reads go through each site's gate the same way, in this process; a site operator and an auditor
read directly, as they would at the site.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Final

import httpx

from onshore.console.auth import Role, User
from onshore.errors import OnshoreError, PeerUnreachable
from onshore.reads import REMOTE_QUERY, compute, is_local, read
from onshore.settings import Project

__all__ = [
    "REMOTE_QUERY",
    "Forbidden",
    "HttpFor",
    "RowAccess",
    "SiteRead",
    "all_sites",
    "read_site",
    "sees_site",
]

HttpFor = Callable[[str], httpx.Client | None]
"""A client for a site's service (tests drive the sites' apps in process); None: mutual TLS."""

_NONE: Final[HttpFor] = lambda _site: None  # noqa: E731


class Forbidden(Exception):
    """The user's role never sees this (another site for a site operator)."""


@dataclass(frozen=True, slots=True)
class RowAccess:
    """Whether a site's data may be shown, and why."""

    allowed: bool
    how: str
    """``own site``, ``auditor``, ``same country`` or ``gate``; ``unreachable`` (the site's
    service did not answer) or ``refused`` (it answered no, e.g. its gate will not decide)."""
    decision: Mapping[str, Any] | None = None
    """The site's gate decision, as it recorded it (gate reads only)."""
    ledger_seq: int | None = None
    """The ``remote_read`` entry in the site's ledger (gate reads only)."""
    repeated: bool = False
    """The same read was recorded earlier today, under that entry."""
    why: str | None = None
    """Why the site could not be read (``unreachable`` and ``refused`` only)."""

    @classmethod
    def failed(cls, exc: OnshoreError) -> RowAccess:
        """The access of a read that got no answer: the site did not answer, or refused."""
        how = "unreachable" if isinstance(exc, PeerUnreachable) else "refused"
        return cls(False, how, why=exc.message)

    def as_dict(self) -> dict[str, Any]:
        return {
            "allowed": self.allowed,
            "how": self.how,
            "decision": None if self.decision is None else dict(self.decision),
            "ledger_seq": self.ledger_seq,
            "repeated": self.repeated,
            "why": self.why,
        }


@dataclass(frozen=True, slots=True)
class SiteRead:
    """A view of a site, and whether and how it could be read."""

    access: RowAccess
    data: dict[str, Any] | None


def all_sites(project: Project) -> list[str]:
    """The sites the console knows: a lab project's, or this party's own and its peers'."""
    if project.party is None:
        return list(project.settings.sites)
    from onshore.parties.identity import load_peers

    own = [project.party.id] if project.party.id in project.settings.sites else []
    return own + sorted(p.id for p in load_peers(project).sites())


def sees_site(user: User, site_id: str) -> bool:
    """Whether the user sees anything of the site at all."""
    return user.role is not Role.SITE_OPERATOR or user.site == site_id


def read_site(
    project: Project,
    user: User,
    site_id: str,
    view: str,
    params: Mapping[str, Any] | None = None,
    *,
    http_for: HttpFor = _NONE,
    day: date | None = None,
) -> SiteRead:
    """Read ``view`` of ``site_id`` for ``user`` (see the module's description). Raises
    :class:`Forbidden` for a site operator asking for another site,
    :class:`~onshore.errors.PeerUnreachable` for a site whose service does not answer."""
    from onshore.gate.site import OpenSite

    if not sees_site(user, site_id):
        raise Forbidden(f"{user.name} operates {user.site}, not {site_id}")
    params = dict(params or {})
    if is_local(project, site_id) and (
        project.party is not None or user.role is not Role.COORDINATOR_ENGINEER
    ):
        how = "auditor" if user.role is Role.AUDITOR and project.party is None else "own site"
        with OpenSite.open(project, site_id) as site:
            data = compute(site, view, params, day or datetime.now(UTC).date()).as_json()
        return SiteRead(RowAccess(True, how), data)
    answer = read(
        project, site_id, view, params, user=user.name, role=str(user.role), http=http_for(site_id)
    )
    access = answer["access"]
    return SiteRead(
        RowAccess(
            bool(access["allowed"]),
            str(access["how"]),
            access.get("decision"),
            access.get("ledger_seq"),
            bool(access.get("repeated", False)),
        ),
        answer.get("data"),
    )
