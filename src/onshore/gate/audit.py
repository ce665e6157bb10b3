"""A party's records checked whole: its ledger, its store, its approvals, and the heads its peers
hold of it.

:func:`onshore.ledger.verify` checks one ledger's chain and signatures, and what it lists of a
store. A site is more than its ledger: :func:`verify_site` also compares the site's approvals
table with the approvals its ledger records (:mod:`onshore.gate.record`), and the ledgers of the
other sites of a lab project as peers. :func:`verify_party` is what ``onshore ledger verify``
runs in a party's folder: that check, then each peer asked whether the heads each side holds of
the other still hold (:func:`onshore.parties.witness.witness_peers`).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from typing import Any

import httpx

from onshore.checks import Check
from onshore.errors import OnshoreError
from onshore.gate.approvals import ApprovalRegistry
from onshore.gate.record import approvals_disagreement, recorded_approvals
from onshore.ledger import Ledger, VerifyReport, verify
from onshore.parties.identity import LocalParty
from onshore.parties.own import own_ledger
from onshore.parties.witness import witness_peers
from onshore.rulebook.loader import project_rulebooks
from onshore.settings import Project
from onshore.sites.keystore import load_keystore
from onshore.store.site import SiteStore

__all__ = ["verify_party", "verify_site"]


def verify_site(project: Project, site_id: str, *, check_hashes: bool = True) -> VerifyReport:
    """Verify a site of ``project``: its ledger against its keystore's key and its store, and
    against the ledgers of every other site of the project as peers. A peer whose catalogue
    cannot be opened, or a keystore that cannot be read, becomes a note in the report."""
    notes: list[str] = []
    with ExitStack() as stack:
        store = stack.enter_context(SiteStore.open(project, site_id))
        ledger = Ledger.open(store.catalogue)
        current = None
        try:
            current = load_keystore(project.keystore_path(project.site(site_id))).public_key
        except OnshoreError as exc:
            notes.append(f"keystore not read, so the pinned key was not compared with it: {exc}")
        peers = []
        for other in project.settings.sites:
            if other == site_id:
                continue
            try:
                peer_store = stack.enter_context(SiteStore.open(project, other))
                peers.append(Ledger.open(peer_store.catalogue))
            except OnshoreError as exc:
                notes.append(f"peer {other} could not be opened: {exc}")
        report = verify(
            ledger,
            peers=peers,
            objects=store.objects,
            current_key=current,
            check_hashes=check_hashes,
        )
        approvals = _approvals_problems(project, site_id, store, ledger)
    return replace(report, notes=tuple(notes) + report.notes, problems=report.problems + approvals)


def _approvals_problems(
    project: Project, site_id: str, store: Any, ledger: Ledger
) -> tuple[Check, ...]:
    """Where the site's approvals table and its signed record of approvals differ."""
    registry = ApprovalRegistry(store.catalogue, project_rulebooks(project))
    found = approvals_disagreement(registry.approvals(), recorded_approvals(ledger))
    return tuple(Check.failed(site_id, None, "approvals", reason) for reason in found)


def verify_party(
    project: Project,
    *,
    check_hashes: bool = True,
    witness: bool = True,
    http_for: Callable[[str], httpx.Client | None] = lambda _peer: None,
) -> VerifyReport:
    """Verify this party's ledger fully (chain, signatures, pinned key; for a site also that
    store and ledger agree and the approvals table matches its record), then, unless
    ``witness`` is off, ask every peer whether the head held of it still holds and which head
    of this party it holds (nothing is recorded). A peer that does not answer is a note."""
    local = LocalParty.of(project)
    if project.is_coordinator:
        with own_ledger(project) as (ledger, keys):
            report = verify(ledger, current_key=keys.public_key)
    else:
        report = verify_site(project, local.id, check_hashes=check_hashes)
    if not witness:
        return replace(report, notes=(*report.notes, "peers not asked (--offline)"))
    problems, peers = list(report.problems), []
    # The peers are asked below: the heads this ledger holds of them are compared there.
    notes = [n for n in report.notes if not n.startswith("heads recorded of")]
    compared = 0
    for row in witness_peers(project, record=False, http_for=http_for):
        if "error" in row:
            notes.append(f"peer {row['peer']} not asked: {row['error']}")
            continue
        peers.append(row["peer"])
        compared += int(row["compared"])
        problems.extend(Check.from_dict(p) for p in row["problems"])
    return replace(
        report,
        peers=tuple(peers),
        peer_heads=compared,
        problems=tuple(problems),
        notes=tuple(notes),
    )
