"""The region-pinned store of each site: its objects and its catalogue (what ingest,
:mod:`onshore.ingest`, writes into)."""

from typing import TYPE_CHECKING

from onshore._lazy import lazy

if TYPE_CHECKING:
    from onshore.store.catalogue import Catalogue, ClipRecord, FileRecord
    from onshore.store.objects import ObjectStore
    from onshore.store.site import SiteStore

# Imported when first used (see onshore._lazy): importing one module of the package does
# not bring all the others.
__getattr__, __dir__ = lazy(
    __name__,
    {
        "Catalogue": "catalogue",
        "ClipRecord": "catalogue",
        "FileRecord": "catalogue",
        "ObjectStore": "objects",
        "SiteStore": "site",
    },
)

__all__ = [
    "Catalogue",
    "ClipRecord",
    "FileRecord",
    "ObjectStore",
    "SiteStore",
]
