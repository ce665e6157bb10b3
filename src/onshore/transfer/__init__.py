"""Transfers between sites: the one code path that writes into another site's store.

:func:`transfer` resolves what would leave (:mod:`.selection`), has the gate decide, records the
decision in both sites' ledgers, and only when allowed copies the data into the destination's
store under ``received/`` (:meth:`~onshore.store.objects.ObjectStore.receive`, which nothing
else calls) and its catalogue.
"""

from onshore.transfer.run import TransferReport, ledger_history, site_gate, transfer
from onshore.transfer.selection import Dataset, Selection, StoredRef, resolve

__all__ = [
    "Dataset",
    "Selection",
    "StoredRef",
    "TransferReport",
    "ledger_history",
    "resolve",
    "site_gate",
    "transfer",
]
