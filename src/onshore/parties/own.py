"""A party's own ledger and keys, whichever party it is (a site or the coordinator)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from onshore.ledger import Ledger
from onshore.parties.client import PeerClient
from onshore.parties.identity import LocalParty, load_peers
from onshore.settings import Project
from onshore.sites.keystore import SiteKeys
from onshore.store.catalogue import Catalogue

__all__ = ["own_ledger", "peer_client"]


@contextmanager
def own_ledger(project: Project) -> Iterator[tuple[Ledger, SiteKeys]]:
    """This party's ledger (able to append) and its keys, in its own catalogue database.
    Raises :class:`~onshore.errors.NotAParty` outside a party's folder."""
    local = LocalParty.of(project)
    keys = local.keys()
    if project.is_coordinator:
        settings = project.settings.coordinator
        if "://" not in settings.store:
            (project.root / settings.store).mkdir(parents=True, exist_ok=True)
    else:
        settings = project.site(local.id)  # type: ignore[assignment]
    catalogue = Catalogue(project.catalogue_url(settings), local.id)
    try:
        yield Ledger.open(catalogue, keys), keys
    finally:
        catalogue.close()


@contextmanager
def peer_client(
    project: Project, peer_id: str, *, http: httpx.Client | None = None
) -> Iterator[PeerClient]:
    """A client from this party to ``peer_id``, signing with this party's key and telling its
    head. Raises :class:`~onshore.errors.PeerNotFound` for a peer not on file."""
    local = LocalParty.of(project)
    peer = load_peers(project).get_peer(peer_id)
    with (
        own_ledger(project) as (ledger, keys),
        PeerClient(local, peer, keys, head=ledger.head, http=http) as client,
    ):
        yield client
