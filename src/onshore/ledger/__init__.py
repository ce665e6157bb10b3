"""The ledger: per site, append-only, hash-chained entries signed with the site's key.

Every decision, transfer, model update, approval change and release is an entry in the ledger of
the site it concerns; an exchange between two sites is an entry at both ends, each recording the
other's head, so a site that rewrites its history is caught by the others. ``verify`` checks the
chain, the signatures, the cross-recorded heads, and that store and ledger agree.

Writing, inside a transfer's transaction::

    ledger = Ledger.open(site.catalogue, keys)
    with site.catalogue.transaction() as conn:
        ...  # register what arrived
        ledger.append(
            "transfer_in",
            {"objects": [{"path": "received/...", "sha256": "..."}], "decision": {...}},
            conn=conn,
            peer_heads=[origin_ledger.head()],
        )

The entry format and the payload conventions (``objects``, ``peer_heads``, ``received/``) are in
:mod:`onshore.ledger.entry`; the checks in :mod:`onshore.ledger.verify`.
"""

from onshore.ledger.chain import Ledger
from onshore.ledger.entry import (
    ERASED_FIELD,
    GENESIS,
    KINDS,
    OBJECTS_FIELD,
    PEER_HEADS_FIELD,
    RECEIVED_DIR,
    Entry,
    Head,
    canonical_json,
    fingerprint,
)
from onshore.ledger.verify import VerifyReport, verify

__all__ = [
    "ERASED_FIELD",
    "GENESIS",
    "KINDS",
    "OBJECTS_FIELD",
    "PEER_HEADS_FIELD",
    "RECEIVED_DIR",
    "Entry",
    "Head",
    "Ledger",
    "VerifyReport",
    "canonical_json",
    "fingerprint",
    "verify",
]
