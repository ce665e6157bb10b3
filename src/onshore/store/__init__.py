"""The region-pinned store of each site: its objects, its catalogue, ingest and inventory.

Ingest is :func:`onshore.store.ingest.ingest`; it is not re-exported here, so that the name
``onshore.store.ingest`` always means the module."""

from onshore.store.catalogue import Catalogue, ClipRecord, FileRecord
from onshore.store.ingest import IngestReport
from onshore.store.objects import ObjectStore
from onshore.store.site import Residency, SiteStore

__all__ = [
    "Catalogue",
    "ClipRecord",
    "FileRecord",
    "IngestReport",
    "ObjectStore",
    "Residency",
    "SiteStore",
]
