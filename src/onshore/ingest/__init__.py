"""Ingest: fleet uploads land in the store and catalogue of the site where they were recorded
(:mod:`.run`), if they were recorded under its law and inside its territory (:mod:`.residency`)."""

from typing import TYPE_CHECKING

from onshore._lazy import lazy

if TYPE_CHECKING:
    from onshore.ingest.residency import Residency
    from onshore.ingest.run import MAX_FILE_BYTES, SUPPORTED, IngestReport, ingest

# Imported when first used (see onshore._lazy): importing one module of the package does
# not bring all the others.
__getattr__, __dir__ = lazy(
    __name__,
    {
        "MAX_FILE_BYTES": "run",
        "SUPPORTED": "run",
        "IngestReport": "run",
        "Residency": "residency",
        "ingest": "run",
    },
)

__all__ = ["MAX_FILE_BYTES", "SUPPORTED", "IngestReport", "Residency", "ingest"]
