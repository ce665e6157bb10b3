"""The region-pinned store of each site: its objects, its catalogue, ingest and inventory."""

from onshore.store.catalogue import Catalogue, ClipRecord, FileRecord
from onshore.store.ingest import IngestReport, ingest
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
    "ingest",
]
