"""Approvals kept on file with their ledger entries: a change to what may leave a site is itself
on the record, in the same transaction as the change, and the gate trusts the registry only as
far as the signed record agrees with it.

The approvals table is a convenience (a query, a status list); the signed ``approval_added`` and
``approval_revoked`` entries are the record. :func:`trusted_approvals` is what the gate uses at
a site: the approvals the ledger records, after checking that the table says the same, so that
editing the table (widening an approval's categories, lifting its scale, un-revoking it) moves
nothing and is reported.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final

from sqlalchemy.engine import Connection

from onshore.errors import LedgerTampered
from onshore.gate import Approval, ApprovalRegistry
from onshore.ledger import Ledger
from onshore.rulebook.loader import project_rulebooks
from onshore.settings import Project
from onshore.sites.keystore import load_keystore
from onshore.store.site import SiteStore

__all__ = [
    "add_approval",
    "approvals_disagreement",
    "recorded_approvals",
    "revoke_approval",
    "trusted_approvals",
]

_BOOKKEEPING: Final = ("added_at", "revoked_at", "revoke_reason")
"""Fields the registry fills in itself; what an approval covers is everything else."""


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
        payload = {
            "approval": approval_id,
            "reason": reason,
            "type": revoked.type,
            "revoked_at": None if revoked.revoked_at is None else revoked.revoked_at.isoformat(),
        }
        entry = ledger.append("approval_revoked", payload, conn=conn)
    return revoked, entry.seq


def recorded_approvals(ledger: Ledger) -> dict[str, tuple[dict[str, Any], bool]]:
    """What the ledger records of each approval: its terms when added, and whether it was
    revoked since."""
    recorded: dict[str, tuple[dict[str, Any], bool]] = {}
    for entry in ledger.entries():
        data = entry.data
        if entry.kind == "approval_added":
            terms = {k: v for k, v in data["approval"].items() if k not in _BOOKKEEPING}
            recorded[str(terms["id"])] = (terms, False)
        elif entry.kind == "approval_revoked" and data.get("approval") in recorded:
            recorded[data["approval"]] = (recorded[data["approval"]][0], True)
    return recorded


def approvals_disagreement(
    table: Sequence[Approval], recorded: dict[str, tuple[dict[str, Any], bool]]
) -> list[str]:
    """Where the approvals table and the ledger's record differ, one sentence each."""
    problems = []
    on_file = {a.id: a for a in table}
    for approval_id in sorted(set(on_file) - set(recorded)):
        problems.append(f"approval {approval_id} is in the table but no ledger entry added it")
    for approval_id in sorted(set(recorded) - set(on_file)):
        problems.append(f"approval {approval_id} was added in the ledger but is not in the table")
    for approval_id in sorted(set(on_file) & set(recorded)):
        terms, revoked = recorded[approval_id]
        dumped = on_file[approval_id].model_dump(mode="json", exclude=set(_BOOKKEEPING))
        changed = sorted(k for k in set(terms) | set(dumped) if terms.get(k) != dumped.get(k))
        if changed:
            problems.append(
                f"approval {approval_id}: the table's {', '.join(changed)} differ from what the "
                "ledger recorded when it was added"
            )
        if on_file[approval_id].revoked != revoked:
            state = "revoked" if revoked else "not revoked"
            problems.append(f"approval {approval_id} is {state} in the ledger but not in the table")
    return problems


def trusted_approvals(registry: ApprovalRegistry, ledger: Ledger) -> list[Approval]:
    """The site's approvals as the gate may use them: the table's, once the signed record
    agrees with it entry for entry. Raises :class:`LedgerTampered` naming the differences."""
    table = registry.approvals()
    problems = approvals_disagreement(table, recorded_approvals(ledger))
    if problems:
        raise LedgerTampered(
            f"site {registry.site}: the approvals on file disagree with its ledger: "
            + "; ".join(problems[:3])
            + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""),
            hint="the gate will not decide on them; restore the approvals table from a backup "
            f"and run 'onshore ledger verify --site {registry.site}'",
        )
    return table
