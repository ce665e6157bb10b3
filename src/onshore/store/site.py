"""A site's store as one thing: its objects and its catalogue.

``SiteStore.open`` gives a site's object store and catalogue; ``check`` says whether store and
catalogue agree (every catalogued clip has its object, every object is catalogued, no partial
write is left), which is what a rerun after a crash must restore.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from onshore.settings import IngestSettings, Project
from onshore.sites.keystore import load_s3_credentials
from onshore.store.catalogue import Catalogue
from onshore.store.objects import (
    CLIPS_DIR,
    FRAMES_DIR,
    ZONES_PATH,
    ObjectStore,
    StoredObject,
    sha256,
)

__all__ = ["SiteStore"]


@dataclass(frozen=True, slots=True)
class SiteStore:
    """A site's object store and catalogue."""

    project: Project
    site: str
    objects: ObjectStore
    catalogue: Catalogue
    uploads: IngestSettings = field(default_factory=IngestSettings)
    """How ingest maps uploads of standard message types (``[sites.<id>.ingest]``)."""

    @classmethod
    def open(cls, project: Project, site_id: str | None = None) -> SiteStore:
        """Open the store and catalogue that ``onshore.toml`` declares for ``site_id`` (in a
        party's folder, its own site; see :meth:`Project.site_for`).

        An ``s3://`` store signs with the S3 credentials in the site's keystore when it keeps
        some, else with the environment's (``AWS_ACCESS_KEY_ID``...). Raises
        :class:`~onshore.errors.KeystoreError` when the keystore's are exposed or malformed,
        :class:`~onshore.errors.CatalogueError` when the catalogue cannot be reached; the
        store's first operation raises :class:`~onshore.errors.StoreError` if it cannot.
        """
        site_id = project.site_for(site_id)
        site = project.site(site_id)
        url = project.store_url(site)
        credentials = None
        if ObjectStore.is_s3(url):
            credentials = load_s3_credentials(project.keystore_path(site))
        return cls(
            project,
            site_id,
            ObjectStore(url, credentials=credentials),
            Catalogue(project.catalogue_url(site), site_id),
            site.ingest,
        )

    def close(self) -> None:
        self.catalogue.close()

    def __enter__(self) -> SiteStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def keep_reference_zones(self, geojson: bytes) -> StoredObject:
        """Store the site's sensitive areas unless it has some already: the first zones a site
        gets stay its zones (classification and de-identification read them)."""
        return self.objects.put(ZONES_PATH, geojson)

    def check(self, *, deep: bool = False) -> dict[str, Any]:
        """Whether store and catalogue agree. ``deep`` also re-hashes every clip and frames
        object.

        Returns ``ok`` and the lists of problems: catalogued clips whose object (or frames
        object) is missing or has another size (or hash), stored objects no clip refers to,
        and partial writes.
        """
        clips = self.catalogue.clips()
        frames = self.catalogue.frames()
        catalogued = {c.path for c in clips} | {f.path for f in frames}
        sizes = self.objects.sizes(CLIPS_DIR) | self.objects.sizes(FRAMES_DIR)
        missing, damaged = [], []
        expected = [(c.clip_id, c.path, c.bytes, c.sha256) for c in clips]
        expected += [(f"{f.clip_id} (frames)", f.path, f.bytes, f.sha256) for f in frames]
        for name, path, size_expected, digest in expected:
            size = sizes.get(path)
            if size is None:
                missing.append(name)
            elif size != size_expected or (deep and sha256(self.objects.read(path)) != digest):
                damaged.append(name)
        orphans = sorted(
            path for path in sizes if path.endswith(".parquet") and path not in catalogued
        )
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
