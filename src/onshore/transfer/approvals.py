"""Approvals kept on file with their ledger entries: a change to what may leave a site is itself
on the record, in the same transaction as the change."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.engine import Connection

from onshore.gate import Approval, ApprovalRegistry
from onshore.ledger import Ledger
from onshore.rulebook.loader import project_rulebooks
from onshore.settings import Project
from onshore.sites.keystore import load_keystore
from onshore.store.site import SiteStore

__all__ = ["add_approval", "revoke_approval"]


@contextmanager
def _recorded(
    project: Project, site_id: str
) -> Iterator[tuple[ApprovalRegistry, Ledger, Connection]]:
    """The site's registry and ledger, and one transaction for a change and its entry."""
    site = project.site(site_id)
    keys = load_keystore(project.keystore_path(site))
    with SiteStore.open(project, site_id) as store:
        registry = ApprovalRegistry(
            store.catalogue, project_rulebooks(project), jurisdiction=site.jurisdiction
        )
        ledger = Ledger.open(store.catalogue, keys)
        with store.catalogue.transaction() as conn:
            yield registry, ledger, conn


def add_approval(project: Project, site_id: str, approval: Approval) -> tuple[Approval, int]:
    """Put ``approval`` on file at ``site_id`` and append ``approval_added`` to its ledger, in
    one transaction; returns the stored approval and the entry's sequence number."""
    with _recorded(project, site_id) as (registry, ledger, conn):
        stored = registry.add(approval, conn=conn)
        payload: dict[str, Any] = {"approval": stored.model_dump(mode="json")}
        entry = ledger.append("approval_added", payload, conn=conn)
    return stored, entry.seq


def revoke_approval(
    project: Project, site_id: str, approval_id: str, reason: str
) -> tuple[Approval, int]:
    """Revoke an approval at ``site_id`` and append ``approval_revoked``, in one transaction."""
    with _recorded(project, site_id) as (registry, ledger, conn):
        revoked = registry.revoke(approval_id, reason, conn=conn)
        payload = {"approval": approval_id, "reason": reason, "type": revoked.type}
        entry = ledger.append("approval_revoked", payload, conn=conn)
    return revoked, entry.seq
