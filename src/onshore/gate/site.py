"""One site, open: what every process of the site's party works with, built in one place.

:class:`OpenSite` holds a site's settings, store and catalogue, keys and ledger, and gives its
gate: the project's rulebooks, the approvals on file as far as the signed record agrees with
them (:func:`~onshore.gate.record.trusted_approvals`), and its crossings as the history to count
(:mod:`~onshore.gate.crossings`). ``onshore transfer``, ``onshore serve`` (transfers in, remote
reads, licence consents), the federation's outbound mod and ``onshore gate check`` all ask the
gate through it, so a site's gate is the same whoever asks.

In a party's folder the site is the party itself; a lab project names one of its sites.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from onshore.errors import LedgerError
from onshore.gate.approvals import Approval, ApprovalRegistry
from onshore.gate.crossings import Crossings, SubjectKeys
from onshore.gate.engine import Decision, Gate
from onshore.gate.record import trusted_approvals
from onshore.ledger import Ledger, verify
from onshore.parties.identity import Counterparty, coordinator_of
from onshore.rulebook.evaluate import DataItem, Recipient, TransferRequest
from onshore.rulebook.loader import Rulebooks, project_rulebooks
from onshore.settings import Project, SiteSettings
from onshore.sites.keystore import SiteKeys, load_keystore
from onshore.store.site import SiteStore

__all__ = ["OpenSite", "own_site_id"]


def own_site_id(project: Project, site_id: str | None) -> str:
    """See :meth:`~onshore.settings.Project.site_for`."""
    return project.site_for(site_id)


class OpenSite:
    """A site's store, keys, ledger and gate, open together. Close it (or use ``with``)."""

    def __init__(
        self, project: Project, store: SiteStore, keys: SiteKeys | None, ledger: Ledger
    ) -> None:
        self.project = project
        self.store = store
        self._keys = keys
        self.ledger = ledger
        self._rulebooks: Rulebooks | None = None
        self._crossings: Crossings | None = None
        self._verified: str | None = None

    @classmethod
    def open(cls, project: Project, site_id: str | None = None, *, keys: bool = True) -> OpenSite:
        """Open the site (see :func:`own_site_id`). With ``keys``, its keystore is loaded and its
        ledger can be appended to; without, it is read-only."""
        site = own_site_id(project, site_id)
        settings = project.site(site)
        loaded = load_keystore(project.keystore_path(settings)) if keys else None
        store = SiteStore.open(project, site)
        try:
            ledger = Ledger.open(store.catalogue, loaded)
        except BaseException:
            store.close()
            raise
        return cls(project, store, loaded, ledger)

    @property
    def id(self) -> str:
        return self.store.site

    @property
    def settings(self) -> SiteSettings:
        return self.project.site(self.id)

    @property
    def keys(self) -> SiteKeys:
        if self._keys is None:
            raise LedgerError(
                f"{self.id} was opened without its keys", hint="open it with keys=True"
            )
        return self._keys

    @property
    def rulebooks(self) -> Rulebooks:
        if self._rulebooks is None:
            self._rulebooks = project_rulebooks(self.project)
        return self._rulebooks

    def registry(self) -> ApprovalRegistry:
        return ApprovalRegistry(
            self.store.catalogue, self.rulebooks, jurisdiction=self.settings.jurisdiction
        )

    def approvals(self) -> list[Approval]:
        """The approvals on file, as far as the ledger's record agrees with them; raises
        :class:`~onshore.errors.LedgerTampered` where they disagree."""
        return trusted_approvals(self.registry(), self.ledger)

    @property
    def crossings(self) -> Crossings:
        if self._crossings is None:
            self._crossings = Crossings(self.store.catalogue.engine, self.id, self.keys.hmac_secret)
        return self._crossings

    def gate(self, *, exclude: SubjectKeys | None = None) -> Gate:
        """The site's gate: rulebooks, trusted approvals, and its crossings as history (leaving
        out ``exclude``, the subjects of the request about to be decided)."""
        history = self.crossings.history(exclude) if self._keys is not None else None
        return Gate(self.rulebooks, self.approvals(), history=history)

    def check_ledger(self) -> None:
        """Raise :class:`~onshore.errors.LedgerTampered` unless the ledger's chain and
        signatures hold (and pin the keystore's key): the gate decides only on a ledger that
        verifies. A head verified before is not verified again."""
        head = self.ledger.head()
        if head is not None and head.hash == self._verified:
            return
        current = None if self._keys is None else self._keys.public_key
        verify(self.ledger, current_key=current, check_hashes=False).raise_for_problems()
        self._verified = None if head is None else head.hash

    def mark_verified(self) -> None:
        """Note that the chain, verified before this process appended to it, still holds."""
        head = self.ledger.head()
        self._verified = None if head is None else head.hash

    def coordinator(self) -> Counterparty:
        return coordinator_of(self.project)

    def request(
        self,
        to: Counterparty,
        items: tuple[DataItem, ...] | list[DataItem],
        purpose: str,
        *,
        day: date,
    ) -> TransferRequest:
        """What the gate is asked when ``items`` would go to ``to``."""
        return TransferRequest(
            origin=self.settings.jurisdiction,
            destination=to.country,
            recipient=Recipient(name=to.entity, country=to.country, linked_to=to.linked_to),
            purpose=purpose,
            date=day,
            data=tuple(items),
        )

    def decide(self, request: TransferRequest, *, exclude: SubjectKeys | None = None) -> Decision:
        return self.gate(exclude=exclude).decide(request)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> OpenSite:
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.close()
