"""Reads of a site: what a console page or a query shows of a site, and the gate in front of it.

:mod:`.views` computes each view at the site from its own store and ledger; :mod:`.gate`
decides a read by another party and records it; :func:`read` is how a party asks: its own
site it reads directly, another party's site through that site's service (``POST /v1/reads``),
so no process of one party opens another party's catalogue.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from onshore.reads.gate import READ_KIND, REMOTE_QUERY, Reader, answer
from onshore.reads.views import PAGE_ROWS, REPORTS_DIR, VIEWS, View, compute
from onshore.settings import Project

__all__ = [
    "PAGE_ROWS",
    "READ_KIND",
    "REMOTE_QUERY",
    "REPORTS_DIR",
    "VIEWS",
    "Reader",
    "View",
    "answer",
    "compute",
    "is_local",
    "read",
]


def is_local(project: Project, site_id: str) -> bool:
    """Whether ``site_id``'s data is in this folder: a lab project's site, or a site party's
    own."""
    return project.party is None or site_id == project.party.id


def read(
    project: Project,
    site_id: str,
    view: str,
    params: Mapping[str, Any] | None = None,
    *,
    user: str = "",
    role: str = "",
    http: httpx.Client | None = None,
) -> dict[str, Any]:
    """Ask site ``site_id`` for ``view``: ``{"access": ..., "data": ...}``.

    From a party's folder, another site is asked through its service and decides with its own
    gate; the folder's own site answers directly (``how``: ``own site``). In a lab project the
    reader is the project's coordinator, and the site's gate decides in this process, as the
    site's service would. Raises :class:`~onshore.errors.PeerUnreachable` or
    :class:`~onshore.errors.RequestRefused` for a site that does not answer or refuses.
    """
    from onshore.gate.site import OpenSite

    params = dict(params or {})
    if project.party is not None and site_id == project.party.id:
        with OpenSite.open(project) as site:
            data = compute(site, view, params, _today()).as_json()
        return {"access": {"allowed": True, "how": "own site", "decision": None}, "data": data}
    if project.party is None:
        coord = project.settings.coordinator
        reader = Reader(
            coord.id, coord.entity, coord.country, tuple(coord.linked_to), user=user, role=role
        )
        with OpenSite.open(project, site_id) as site:
            return answer(site, reader, view, params)
    from onshore.parties.own import peer_client

    with peer_client(project, site_id, http=http) as client:
        return client.post(
            "read", "/v1/reads", {"view": view, "params": params, "user": user, "role": role}
        ).body


def _today() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC).date()
