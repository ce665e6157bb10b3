"""Which recordings may be stored at a site: those recorded under its jurisdiction, inside its
territory. Ingest enforces it (:func:`onshore.ingest.ingest`)."""

from __future__ import annotations

from dataclasses import dataclass

from numpy.typing import ArrayLike

from onshore.rulebook.loader import project_rulebooks
from onshore.rulebook.problems import RulebookNotFound
from onshore.rulebook.territory import Boundary, Outside
from onshore.settings import Project

__all__ = ["Residency"]


@dataclass(frozen=True, slots=True)
class Residency:
    """Which recordings may be stored at a site: those recorded at the site itself, under its
    jurisdiction, or at another site under the same law, and driven inside the boundary of its
    jurisdiction's territory. A clip recorded anywhere else belongs in its own region's site,
    so ingest refuses it."""

    site: str
    jurisdiction: str
    same_law_sites: frozenset[str]
    boundary: Boundary | None = None
    """The territory's boundary in the rulebook of the site's jurisdiction; ``None`` where that
    rulebook has none (or no rulebook governs it), and then positions are not checked."""

    @classmethod
    def of(cls, project: Project, site_id: str) -> Residency:
        """The residency rule of ``site_id``: its peers under the same law and the boundary in
        the project's rulebook for its jurisdiction. Raises
        :class:`~onshore.errors.RulebookError` when the project's rulebooks cannot be read (a
        boundary file missing or malformed included)."""
        site = project.site(site_id)
        sites = project.settings.sites.values()
        peers = {s.id for s in sites if s.jurisdiction == site.jurisdiction}
        if project.party is not None:
            # A party knows the other sites by their identities: those under the same law.
            from onshore.parties.identity import load_peers

            peers |= {
                p.id for p in load_peers(project).sites() if p.jurisdiction == site.jurisdiction
            }
        rulebooks = project_rulebooks(project)
        try:
            path = rulebooks.for_origin(site.jurisdiction).boundary_file
        except RulebookNotFound:
            path = None  # no law on file for the site (and the gate lets nothing leave it)
        boundary = Boundary.load(path) if path is not None else None
        return cls(site_id, site.jurisdiction, frozenset(peers), boundary)

    def allows(self, recorded_in: str) -> bool:
        """Whether a clip recorded in ``recorded_in`` (a site id or jurisdiction) may land here."""
        return recorded_in == self.jurisdiction or recorded_in in self.same_law_sites

    def outside(self, lat: ArrayLike, lon: ArrayLike) -> Outside | None:
        """The positions (degrees) that lie outside the jurisdiction's boundary, or ``None`` if
        none does or there is no boundary to check them against."""
        return None if self.boundary is None else self.boundary.outside(lat, lon)
