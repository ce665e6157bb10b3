"""The region-pinned store of each site: its objects, its catalogue, ingest and inventory.

``SiteStore.open`` gives a site's object store and catalogue together; ``check`` says whether
they agree (every catalogued clip has its object, every object is catalogued, no partial write
is left), which is what a rerun after a crash must restore.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from onshore.settings import Project
from onshore.store.catalogue import Catalogue, ClipRecord, FileRecord
from onshore.store.ingest import IngestReport, ingest
from onshore.store.objects import ObjectStore, sha256

__all__ = [
    "Catalogue",
    "ClipRecord",
    "FileRecord",
    "IngestReport",
    "ObjectStore",
    "SiteStore",
    "ingest",
]


@dataclass(frozen=True, slots=True)
class SiteStore:
    """A site's object store and catalogue."""

    site: str
    objects: ObjectStore
    catalogue: Catalogue

    @classmethod
    def open(cls, project: Project, site_id: str) -> SiteStore:
        """Open the store and catalogue that ``onshore.toml`` declares for ``site_id``."""
        site = project.site(site_id)
        return cls(
            site_id,
            ObjectStore(project.store_url(site)),
            Catalogue(project.catalogue_url(site), site_id),
        )

    def close(self) -> None:
        self.catalogue.close()

    def check(self, *, deep: bool = False) -> dict[str, Any]:
        """Whether store and catalogue agree. ``deep`` also re-hashes every clip object.

        Returns ``ok`` and the lists of problems: catalogued clips whose object is missing or
        has another size (or hash), stored objects no clip refers to, and partial writes.
        """
        clips = self.catalogue.clips()
        catalogued = {c.path for c in clips}
        missing, damaged = [], []
        for clip in clips:
            if not self.objects.exists(clip.path):
                missing.append(clip.clip_id)
            elif self.objects.size(clip.path) != clip.bytes or (
                deep and sha256(self.objects.read(clip.path)) != clip.sha256
            ):
                damaged.append(clip.clip_id)
        orphans = [path for _, path in self.objects.clip_digests() if path not in catalogued]
        partial = self.objects.staging_leftovers()
        return {
            "site": self.site,
            "ok": not (missing or damaged or orphans or partial),
            "clips": len(clips),
            "missing_objects": missing,
            "damaged_objects": damaged,
            "uncatalogued_objects": orphans,
            "partial_writes": partial,
        }
