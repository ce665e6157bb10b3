"""Approvals kept on file with their ledger entries: a change to what may leave a site is itself
on the record, in the same transaction as the change."""

from __future__ import annotations

from onshore.gate import Approval, ApprovalRegistry
from onshore.ledger import Ledger
from onshore.rulebook.loader import project_rulebooks
from onshore.settings import Project
from onshore.sites.keystore import load_keystore
from onshore.store.site import SiteStore

__all__ = ["add_approval", "revoke_approval"]


def add_approval(project: Project, site_id: str, approval: Approval) -> tuple[Approval, int]:
    """Put ``approval`` on file at ``site_id`` and append ``approval_added`` to its ledger, in
    one transaction; returns the stored approval and the entry's sequence number."""
    site = project.site(site_id)
    keys = load_keystore(project.keystore_path(site))
    with SiteStore.open(project, site_id) as store:
        registry = ApprovalRegistry(
            store.catalogue, project_rulebooks(project), jurisdiction=site.jurisdiction
        )
        ledger = Ledger.open(store.catalogue, keys)
        with store.catalogue.transaction() as conn:
            stored = registry.add(approval, conn=conn)
            entry = ledger.append(
                "approval_added", {"approval": stored.model_dump(mode="json")}, conn=conn
            )
    return stored, entry.seq


def revoke_approval(
    project: Project, site_id: str, approval_id: str, reason: str
) -> tuple[Approval, int]:
    """Revoke an approval at ``site_id`` and append ``approval_revoked``, in one transaction."""
    site = project.site(site_id)
    keys = load_keystore(project.keystore_path(site))
    with SiteStore.open(project, site_id) as store:
        registry = ApprovalRegistry(
            store.catalogue, project_rulebooks(project), jurisdiction=site.jurisdiction
        )
        ledger = Ledger.open(store.catalogue, keys)
        with store.catalogue.transaction() as conn:
            revoked = registry.revoke(approval_id, reason, conn=conn)
            entry = ledger.append(
                "approval_revoked",
                {"approval": approval_id, "reason": reason, "type": revoked.type},
                conn=conn,
            )
    return revoked, entry.seq
