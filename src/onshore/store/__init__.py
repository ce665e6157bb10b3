"""The region-pinned store of each site: its objects, its catalogue, ingest and inventory.

Ingest is :func:`onshore.store.ingest.ingest`; it is not re-exported here, so that the name
``onshore.store.ingest`` always means the module."""

from typing import TYPE_CHECKING

from onshore._lazy import lazy

if TYPE_CHECKING:
    from onshore.store.catalogue import Catalogue, ClipRecord, FileRecord
    from onshore.store.ingest import IngestReport
    from onshore.store.objects import ObjectStore
    from onshore.store.site import Residency, SiteStore

# Imported when first used (see onshore._lazy): importing one module of the package does
# not bring all the others.
__getattr__, __dir__ = lazy(
    __name__,
    {
        "Catalogue": "catalogue",
        "ClipRecord": "catalogue",
        "FileRecord": "catalogue",
        "IngestReport": "ingest",
        "ObjectStore": "objects",
        "Residency": "site",
        "SiteStore": "site",
    },
)

__all__ = [
    "Catalogue",
    "ClipRecord",
    "FileRecord",
    "IngestReport",
    "ObjectStore",
    "Residency",
    "SiteStore",
]
