"""Transfers between sites: the one code path that moves data from one site's store into
another's, each site a party of its own.

:func:`transfer` runs at the origin (:mod:`.outbound`): it resolves what would leave
(:mod:`.selection`), has the origin's gate decide, records the decision in the origin's ledger,
and only when allowed sends the objects to the destination's service over mutual TLS. The
destination's service receives them (:mod:`.inbound`, which alone calls
:meth:`~onshore.store.objects.ObjectStore.receive`), checks each against the hash the origin
signed, and records them in its own ledger.
"""

from typing import TYPE_CHECKING

from onshore._lazy import lazy

if TYPE_CHECKING:
    from onshore.transfer.outbound import TransferReport, transfer
    from onshore.transfer.selection import Dataset, Selection, StoredRef, resolve

# Imported when first used (see onshore._lazy): importing one module of the package does
# not bring all the others.
__getattr__, __dir__ = lazy(
    __name__,
    {
        "TransferReport": "outbound",
        "transfer": "outbound",
        "Dataset": "selection",
        "Selection": "selection",
        "StoredRef": "selection",
        "resolve": "selection",
    },
)

__all__ = [
    "Dataset",
    "Selection",
    "StoredRef",
    "TransferReport",
    "resolve",
    "transfer",
]
