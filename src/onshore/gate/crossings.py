"""The persons that crossed a site's borders, counted once each: the gate's history.

The law counts persons, not transfers: China's thresholds count the individuals whose personal
information left in a year, the US bulk thresholds the US persons in twelve months. Summing each
transfer's subjects would count a vehicle sent twice as two, and a page of 22 vehicles viewed
thirty times from abroad as 660. So every crossing a site allows (a transfer, a remote read)
records, at the origin, a keyed hash of each subject it carried (:func:`subject_key`, keyed with
the site's HMAC secret, so the table names nobody), per category and per what a rule can tell
apart (de-identification state, purpose, destination, recipient), with the day it last crossed.

The history the gate counts is then one :class:`~onshore.rulebook.evaluate.PastTransfer` per
group and day, whose ``subjects`` are the subjects that last crossed on that day: a window from
any day to today sums exactly the distinct subjects that crossed within it. The subjects of the
request being decided are left out of that history, since the request counts them itself.

The table is written in the same transaction as the ledger entry of the crossing, so the count
and the record never disagree.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import date
from typing import Final

from sqlalchemy import BigInteger, Column, Date, MetaData, String, Table, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, OperationalError

from onshore.errors import CatalogueError
from onshore.rulebook.evaluate import PastTransfer, TransferRequest
from onshore.sites.keystore import Secret

__all__ = ["Crossings", "SubjectKeys", "crossings_table", "subject_key"]

SubjectKeys = Mapping[str, frozenset[str]]
"""Per category, the keyed hashes of the subjects an item carries."""

_metadata = MetaData()
crossings_table: Final = Table(
    "crossed_subjects",
    _metadata,
    Column("site", String(64), primary_key=True),
    Column("category", String(64), primary_key=True),
    Column("deid_state", String(16), primary_key=True),
    Column("purpose", String(64), primary_key=True),
    Column("destination", String(8), primary_key=True),
    Column("recipient", String(200), primary_key=True),
    Column("subject", String(32), primary_key=True),
    Column("last_day", Date, nullable=False),
    Column("entry", BigInteger, nullable=False),
)
"""One row per subject and group: the day it last crossed, and that crossing's ledger entry."""


def subject_key(secret: Secret, category: str, subject: str) -> str:
    """The keyed hash that stands for ``subject`` (a VIN, a clip's person) in ``category``."""
    message = f"onshore.crossing\x00{category}\x00{subject}".encode()
    return hmac.new(secret.reveal(), message, hashlib.sha256).hexdigest()[:32]


class Crossings:
    """The crossed subjects of ``site`` in ``engine``'s database."""

    def __init__(self, engine: Engine, site: str, secret: Secret) -> None:
        self.engine = engine
        self.site = site
        self._secret = secret
        for attempt in range(5):
            try:
                _metadata.create_all(engine, tables=[crossings_table])
                break
            except (OperationalError, IntegrityError) as exc:  # another process made it
                if attempt == 4:
                    raise CatalogueError(f"cannot create the crossings table: {exc}") from exc

    def keys(self, subjects: Mapping[str, Iterable[str]]) -> dict[str, frozenset[str]]:
        """Per category, the keyed hashes of ``subjects`` (raw identifiers)."""
        return {
            category: frozenset(subject_key(self._secret, category, s) for s in found)
            for category, found in subjects.items()
        }

    def history(self, exclude: SubjectKeys | None = None) -> _History:
        """A gate history provider over this site's crossings, leaving out ``exclude`` (the
        subjects of the request being decided, which it counts itself)."""
        return _History(self, exclude or {})

    def past(self, since: date, exclude: SubjectKeys) -> list[PastTransfer]:
        t = crossings_table
        query = select(
            t.c.category,
            t.c.deid_state,
            t.c.purpose,
            t.c.destination,
            t.c.recipient,
            t.c.subject,
            t.c.last_day,
        ).where(t.c.site == self.site, t.c.last_day >= since)
        groups: dict[tuple[str, str, str, str, str, date], int] = defaultdict(int)
        with self.engine.connect() as conn:
            for row in conn.execute(query):
                if row.subject in exclude.get(row.category, ()):
                    continue
                key = (
                    row.category,
                    row.deid_state,
                    row.purpose,
                    row.destination,
                    row.recipient,
                    row.last_day,
                )
                groups[key] += 1
        return [
            PastTransfer.model_validate(
                {
                    "date": day,
                    "destination": destination,
                    "category": category,
                    "subjects": count,
                    "recipient": recipient,
                    "deid_state": state,
                    "purpose": purpose,
                }
            )
            for (category, state, purpose, destination, recipient, day), count in sorted(
                groups.items()
            )
        ]

    def record(
        self, conn: Connection, request: TransferRequest, keys: SubjectKeys, entry: int
    ) -> int:
        """Record that the subjects of ``request`` (``keys``, per category) crossed, as its
        ledger entry ``entry`` says; inside that entry's transaction ``conn``. Returns how many
        subjects crossed this group for the first time."""
        t = crossings_table
        states = {item.category: item.deid_state for item in request.data}
        new = 0
        for category, subjects in keys.items():
            if not subjects or category not in states:
                continue
            group = {
                "site": self.site,
                "category": category,
                "deid_state": states[category],
                "purpose": request.purpose,
                "destination": request.destination,
                "recipient": request.recipient.name,
            }
            known = set(
                conn.execute(
                    select(t.c.subject).where(*(t.c[k] == v for k, v in group.items()))
                ).scalars()
            )
            fresh = [s for s in sorted(subjects) if s not in known]
            again = sorted(subjects & known)
            if fresh:
                conn.execute(
                    t.insert(),
                    [
                        {**group, "subject": s, "last_day": request.date, "entry": entry}
                        for s in fresh
                    ],
                )
            for chunk in _chunks(again, 500):
                conn.execute(
                    t.update()
                    .where(
                        *(t.c[k] == v for k, v in group.items()),
                        t.c.subject.in_(chunk),
                        t.c.last_day < request.date,
                    )
                    .values(last_day=request.date, entry=entry)
                )
            new += len(fresh)
        return new


def _chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class _History:
    """A :data:`~onshore.gate.HistoryProvider` over a site's crossings."""

    def __init__(self, crossings: Crossings, exclude: SubjectKeys) -> None:
        self.crossings = crossings
        self.exclude = exclude

    def __call__(self, _request: TransferRequest, since: date) -> list[PastTransfer]:
        return self.crossings.past(since, self.exclude)
