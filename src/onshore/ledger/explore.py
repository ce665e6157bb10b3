"""A ledger read a page at a time: entries filtered, newest first, each with its own check.

What an auditor asks of a ledger is rarely all of it: the entries of one kind, of one party
acting on this one, within some days, or (of ``remote_read`` entries) one view or one reader.
:class:`EntryQuery` is that question, parsed from text (a console's query string, a read's
parameters) with an error naming the field for anything it cannot take; :func:`read_page`
answers it from the database a page at a time, never loading the ledger whole: kind, time and
sequence are filtered in SQL, and so, loosely, are the payload's fields (a text match on the
canonical JSON), which are then matched exactly here, in batches.

Each entry comes with :class:`EntryCheck`: its hash recomputed from the stored fields, its
signature checked under the key the ledger's genesis pins, and whether its ``prev_hash`` is the
stored hash of the entry before. That is the part of ``verify`` that one entry can show; the
whole chain, the store and the peers are ``verify``'s.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import ColumnElement, and_, func, not_, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from onshore.errors import CatalogueError, ConfigError, LedgerError
from onshore.ledger.chain import Ledger, entries_table
from onshore.ledger.entry import (
    GENESIS_PREV_HASH,
    KIND_PATTERN,
    SIGNATURE_CONTEXT,
    Entry,
    Head,
    entry_digest,
    format_time,
)
from onshore.sites.keystore import SiteKeys

__all__ = [
    "ACTOR_FIELDS",
    "FILTERS",
    "MAX_ENTRIES",
    "PAGE_ENTRIES",
    "READ_KIND",
    "EntryCheck",
    "EntryPage",
    "EntryQuery",
    "actor_of",
    "check_entry",
    "entry_row",
    "read_page",
    "secret_marks",
]

PAGE_ENTRIES: Final = 100
"""Entries per page unless a query asks for fewer or more."""
MAX_ENTRIES: Final = 1000
"""The most entries one page holds (an export reads page after page of these)."""
READ_KIND: Final = "remote_read"
"""The kind whose entries name a view and a reader (:mod:`onshore.reads` writes them)."""
ACTOR_FIELDS: Final = {
    "remote_read": "party",
    "transfer_in": "from",
    "erasure_in": "from",
    "erasure_confirmed": "by",
    "transfer_confirmed": "to",
    "request_refused": "from",
}
"""Kinds written at another party's request, and the payload field naming that party. Every
other entry is the ledger's own party acting (its operator's command, its service, its gate)."""
FILTERS: Final = ("kind", "actor", "reader", "view", "since", "until", "seq")
"""The filters a query takes, besides its paging (``before``, ``after``, ``limit``)."""
_PAGING: Final = ("before", "after", "limit")
_TEXT_LIMIT: Final = 200
_BATCH: Final = 500
"""Rows fetched at a time when the payload must be matched here, after SQL's loose match."""
_DATE: Final = re.compile(r"\d{4}-\d{2}-\d{2}")
_SIGNATURE_HEX: Final = re.compile(r"[0-9a-f]{128}")


@dataclass(frozen=True, slots=True)
class EntryQuery:
    """Which entries, and which page of them. Build it with :meth:`parse`."""

    kinds: tuple[str, ...] = ()
    actor: str | None = None
    """The party the entry was written for or at the request of (see :func:`actor_of`)."""
    reader: str | None = None
    """The user named by a ``remote_read`` entry."""
    view: str | None = None
    """The view named by a ``remote_read`` entry."""
    since: datetime | None = None
    """Entries written at or after this time."""
    until: datetime | None = None
    """Entries written before this time (a date given as ``until`` counts whole)."""
    seq: int | None = None
    """That one entry."""
    before: int | None = None
    """Paging: the entries numbered below this, newest first."""
    after: int | None = None
    """Paging: the entries numbered above this (the page of newer entries)."""
    limit: int = PAGE_ENTRIES
    text: dict[str, str] = field(default_factory=dict, compare=False)
    """The filters as they were given, normalised (for links, exports and the form)."""

    @classmethod
    def parse(cls, params: Mapping[str, Any]) -> EntryQuery:
        """The query ``params`` ask (values as text or numbers; empty ones are no filter).
        Raises :class:`~onshore.errors.ConfigError` naming the field and why, for anything else."""
        unknown = sorted(set(params) - set(FILTERS) - set(_PAGING))
        if unknown:
            raise ConfigError(
                f"{unknown[0]}: not a filter of a ledger's entries",
                hint=f"filters: {', '.join(FILTERS + _PAGING)}",
            )
        text: dict[str, str] = {}
        kinds = _kinds(params.get("kind"))
        if kinds:
            text["kind"] = ",".join(kinds)
        words = {}
        for name in ("actor", "reader", "view"):
            words[name] = _word(name, params.get(name))
            if words[name] is not None:
                text[name] = str(words[name])
        if (words["reader"] or words["view"]) and kinds and READ_KIND not in kinds:
            which = "reader" if words["reader"] else "view"
            raise ConfigError(
                f"{which}: only {READ_KIND} entries name a {which}, and kind asks for "
                f"{', '.join(kinds)}",
                hint=f"leave kind empty or include {READ_KIND}",
            )
        since = _moment("since", params.get("since"), end=False)
        until = _moment("until", params.get("until"), end=True)
        if since is not None and until is not None and until <= since:
            raise ConfigError(
                f"until: {params.get('until')} is not after since, {params.get('since')}",
                hint="give the first day as since and the last day as until",
            )
        for name in ("since", "until"):
            if params.get(name) not in (None, ""):
                text[name] = str(params[name]).strip()
        seq = _number("seq", params.get("seq"))
        before = _number("before", params.get("before"))
        after = _number("after", params.get("after"))
        if before is not None and after is not None:
            raise ConfigError("after: a page is either before an entry or after one, not both")
        limit = _number("limit", params.get("limit"))
        if limit is not None and not 1 <= limit <= MAX_ENTRIES:
            raise ConfigError(f"limit: {limit} is not between 1 and {MAX_ENTRIES}")
        if seq is not None:
            text["seq"] = str(seq)
        return cls(
            kinds=kinds,
            actor=words["actor"],
            reader=words["reader"],
            view=words["view"],
            since=since,
            until=until,
            seq=seq,
            before=before,
            after=after,
            limit=PAGE_ENTRIES if limit is None else limit,
            text=text,
        )

    def params(self) -> dict[str, Any]:
        """The query as parameters :meth:`parse` takes back: filters, paging and limit."""
        found: dict[str, Any] = dict(self.text)
        if self.before is not None:
            found["before"] = self.before
        if self.after is not None:
            found["after"] = self.after
        if self.limit != PAGE_ENTRIES:
            found["limit"] = self.limit
        return found

    def paged(
        self, *, before: int | None = None, after: int | None = None, limit: int | None = None
    ) -> EntryQuery:
        """The same filters, another page."""
        return replace(self, before=before, after=after, limit=limit or self.limit)

    def matches(self, entry: Entry) -> bool:
        """Whether ``entry`` passes the filters (what SQL matched loosely, matched exactly)."""
        if self.seq is not None and entry.seq != self.seq:
            return False
        if self.kinds and entry.kind not in self.kinds:
            return False
        if self.since is not None and entry.time < format_time(self.since):
            return False
        if self.until is not None and entry.time >= format_time(self.until):
            return False
        if self.actor is not None and actor_of(entry) != self.actor:
            return False
        if self.reader is not None or self.view is not None:
            if entry.kind != READ_KIND:
                return False
            data = _data(entry)
            if self.reader is not None and data.get("reader") != self.reader:
                return False
            if self.view is not None and data.get("view") != self.view:
                return False
        return True

    def _exact_in_sql(self, site: str) -> bool:
        """Whether the SQL conditions alone select exactly the entries that match."""
        return self.reader is None and self.view is None and self.actor in (None, site)

    def _conditions(self, site: str) -> list[ColumnElement[bool]]:
        c = entries_table.c
        found: list[ColumnElement[bool]] = [c.site == site]
        if self.seq is not None:
            found.append(c.seq == self.seq)
        if self.kinds:
            found.append(c.kind.in_(self.kinds))
        if self.since is not None:
            found.append(c.time >= format_time(self.since))
        if self.until is not None:
            found.append(c.time < format_time(self.until))
        if self.actor == site:
            found.append(not_(c.kind.in_(tuple(ACTOR_FIELDS))))
        elif self.actor is not None:
            found.append(c.kind.in_(tuple(ACTOR_FIELDS)))
            found.append(c.payload.contains(_json(self.actor), autoescape=True))
        if self.reader is not None or self.view is not None:
            found.append(c.kind == READ_KIND)
        for name in ("reader", "view"):
            value = getattr(self, name)
            if value is not None:
                found.append(c.payload.contains(f'"{name}":{_json(value)}', autoescape=True))
        return found


def _kinds(value: object) -> tuple[str, ...]:
    """Kinds given as ``a,b`` or as a list; each must look like a kind."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        items: list[object] = [part.strip() for part in value.split(",")]
    elif isinstance(value, list | tuple):
        items = [part.strip() if isinstance(part, str) else part for part in value]
    else:
        raise ConfigError(f"kind: {value!r} is not a ledger kind or a list of them")
    for kind in items:
        if kind != "" and (not isinstance(kind, str) or not KIND_PATTERN.fullmatch(kind)):
            raise ConfigError(
                f"kind: {kind!r} is not a ledger kind",
                hint="a kind is lower case letters, digits and _, e.g. approval_added",
            )
    return tuple(dict.fromkeys(str(kind) for kind in items if kind != ""))


def _word(name: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{name}: {value!r} is not text")
    value = value.strip()
    if len(value) > _TEXT_LIMIT:
        raise ConfigError(f"{name}: longer than {_TEXT_LIMIT} characters")
    return value or None


def _number(name: str, value: object) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        number = int(value.strip())
    else:
        raise ConfigError(f"{name}: {value!r} is not an entry number (0, 1, 2 ...)")
    if number < 0:
        raise ConfigError(f"{name}: {number} is not an entry number (0, 1, 2 ...)")
    return number


def _moment(name: str, value: object, *, end: bool) -> datetime | None:
    """A date (the whole day: ``until`` ends after it) or a time (UTC unless it says)."""
    if value is None or value == "":
        return None
    text = value.strip() if isinstance(value, str) else None
    when: datetime | None = None
    try:
        if text is not None and _DATE.fullmatch(text):
            day = date.fromisoformat(text)
            when = datetime(day.year, day.month, day.day, tzinfo=UTC)
            return when + timedelta(days=1) if end else when
        if text is not None and _DATE.match(text):
            when = datetime.fromisoformat(text)
    except ValueError:
        when = None
    if when is None:
        raise ConfigError(
            f"{name}: {value!r} is not a date (YYYY-MM-DD) or a time (YYYY-MM-DDTHH:MM:SSZ)",
            hint="e.g. 2026-12-07, or 2026-12-07T09:30:00Z",
        )
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    # A time given as until includes that instant: entries before the next microsecond.
    return when + timedelta(microseconds=1) if end else when


def _json(value: str) -> str:
    """``value`` as the canonical payload writes it: a JSON string."""
    return orjson.dumps(value).decode()


def _data(entry: Entry) -> dict[str, Any]:
    """The payload, or nothing for one that is not a JSON object (a damaged entry)."""
    try:
        return entry.data
    except (orjson.JSONDecodeError, LedgerError):
        return {}


def actor_of(entry: Entry) -> str:
    """The party an entry was written at the request of: the reader's party of a
    ``remote_read``, the sender of what came in, the party that confirmed (see
    :data:`ACTOR_FIELDS`); the ledger's own party for everything else."""
    name = ACTOR_FIELDS.get(entry.kind)
    if name is None:
        return entry.site
    value = _data(entry).get(name)
    return value if isinstance(value, str) else entry.site


@dataclass(frozen=True, slots=True)
class EntryCheck:
    """One entry checked on its own: hash, signature, link to the entry before."""

    hash: bool
    """The stored hash is the hash of the stored fields."""
    signature: bool | None
    """The signature is the pinned key's, over the fields as stored (None: no pinned key)."""
    link: bool | None
    """``prev_hash`` is the stored hash of the entry before (None: that entry is missing)."""

    @property
    def ok(self) -> bool:
        return self.hash and self.signature is True and self.link is True

    def problems(self, seq: int) -> list[str]:
        """What does not hold, one sentence each."""
        found = []
        if not self.hash:
            found.append("the stored hash is not the hash of the entry's fields: it was changed")
        if self.signature is None:
            found.append("the ledger pins no valid key, so the signature cannot be checked")
        elif not self.signature:
            found.append("the signature is not the pinned key's signature of these fields")
        if self.link is None:
            found.append(f"entry {seq - 1}, the one before, is missing")
        elif not self.link:
            found.append(f"prev_hash is not the hash of entry {seq - 1}: the chain is broken")
        return found

    def as_dict(self, seq: int) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "hash": self.hash,
            "signature": self.signature,
            "link": self.link,
            "problems": self.problems(seq),
        }


def check_entry(entry: Entry, key: Ed25519PublicKey | None, before: str | None) -> EntryCheck:
    """Check ``entry`` under the pinned ``key``, given the stored hash of the entry before it
    (``before``; None when that entry is missing). Entry 0 links to no entry."""
    digest = entry_digest(
        entry.site,
        entry.seq,
        str(entry.time),
        str(entry.kind),
        str(entry.payload),
        str(entry.prev_hash),
    )
    signature: bool | None = None
    if key is not None:
        signature = isinstance(entry.signature, str) and bool(
            _SIGNATURE_HEX.fullmatch(entry.signature)
        )
        if signature:
            try:
                key.verify(bytes.fromhex(entry.signature), SIGNATURE_CONTEXT + digest)
            except InvalidSignature:
                signature = False
    if entry.seq == 0:
        link: bool | None = entry.prev_hash == GENESIS_PREV_HASH
    else:
        link = None if before is None else entry.prev_hash == before
    return EntryCheck(digest.hex() == entry.hash, signature, link)


def secret_marks(keys: SiteKeys) -> tuple[str, ...]:
    """The text forms in which a party's secrets (its HMAC secret, its signing key) could be
    written: hex and base64. An entry whose payload holds one is withheld (:func:`read_page`);
    none should, as nothing secret is ever put in a ledger."""
    raw = keys.signing_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    marks = []
    for secret in (keys.hmac_secret.reveal(), raw):
        marks.append(secret.hex())
        marks.append(base64.b64encode(secret).decode().rstrip("="))
        marks.append(base64.urlsafe_b64encode(secret).decode().rstrip("="))
    return tuple(dict.fromkeys(m for m in marks if len(m) >= 16))


@dataclass(frozen=True, slots=True)
class EntryPage:
    """One page of a ledger's entries, newest first, each with its check."""

    ledger: str
    key: str | None
    """Fingerprint of the key the genesis pins (None when it pins none)."""
    head: Head | None
    query: EntryQuery
    entries: tuple[Entry, ...]
    checks: tuple[EntryCheck, ...]
    withheld: frozenset[int]
    """Entries whose payload held a secret of the party: their payload is not shown."""
    newer: int | None
    """``after`` for the page of newer entries (None: none match)."""
    older: int | None
    """``before`` for the page of older entries (None: none match)."""
    total: int | None
    """How many entries match in all (None where counting would read every payload)."""

    def as_dict(self) -> dict[str, Any]:
        """The page as plain data: what the explorer shows and a read of the ``ledger`` view
        carries (:mod:`onshore.reads.views`)."""
        return {
            "ledger": self.ledger,
            "key": self.key,
            "head": None if self.head is None else self.head.as_dict(),
            "filters": dict(self.query.text),
            "limit": self.query.limit,
            "entries": self.rows(),
            "newer": self.newer,
            "older": self.older,
            "total": self.total,
        }

    def rows(self) -> list[dict[str, Any]]:
        """Each entry as plain data: its stored fields, payload parsed, who and what, checked."""
        return [
            entry_row(entry, check, withheld=entry.seq in self.withheld)
            for entry, check in zip(self.entries, self.checks, strict=True)
        ]


def entry_row(entry: Entry, check: EntryCheck, *, withheld: bool = False) -> dict[str, Any]:
    """An entry as the explorer and its exports give it."""
    data = _data(entry)
    reading = entry.kind == READ_KIND
    payload: Any = entry.as_dict()["payload"]
    if withheld:
        payload = "(withheld: the payload holds a secret of the party's keystore)"
    return {
        "ledger": entry.site,
        "seq": entry.seq,
        "time": entry.time,
        "kind": entry.kind,
        "actor": actor_of(entry),
        "reader": data.get("reader") if reading else None,
        "view": data.get("view") if reading else None,
        "payload": payload,
        "prev_hash": entry.prev_hash,
        "hash": entry.hash,
        "signature": entry.signature,
        "check": check.as_dict(entry.seq),
        "withheld": withheld,
    }


def read_page(ledger: Ledger, query: EntryQuery, *, secrets: tuple[str, ...] = ()) -> EntryPage:
    """The page of ``ledger``'s entries that ``query`` asks for, newest first, each checked;
    an entry whose payload holds one of ``secrets`` (:func:`secret_marks`) is withheld. Raises
    :class:`~onshore.errors.CatalogueError` when the database fails."""
    site = ledger.site
    head = ledger.head()
    key = ledger.pinned_key()
    try:
        with ledger.engine.connect() as conn:
            entries, newer, older = _page(conn, site, query)
            total = _total(conn, site, query)
            checks = _checks(conn, site, entries, key)
    except SQLAlchemyError as exc:
        raise CatalogueError(f"ledger of {site}: database failed: {exc}") from exc
    withheld = frozenset(
        e.seq for e in entries if secrets and any(mark in e.payload for mark in secrets)
    )
    return EntryPage(
        ledger=site,
        key=ledger.pinned_fingerprint(),
        head=head,
        query=query,
        entries=tuple(entries),
        checks=tuple(checks),
        withheld=withheld,
        newer=newer,
        older=older,
        total=total,
    )


def _page(
    conn: Connection, site: str, query: EntryQuery
) -> tuple[list[Entry], int | None, int | None]:
    want = query.limit + 1
    if query.after is not None:
        found = list(_scan(conn, site, query, above=query.after, newest_first=False, want=want))
        more_newer = len(found) > query.limit
        found = found[: query.limit][::-1]
        if not found:
            older = query.after + 1 if _any(conn, site, query, below=query.after + 1) else None
            return [], None, older
        newer = found[0].seq if more_newer else None
        older = found[-1].seq if _any(conn, site, query, below=found[-1].seq) else None
        return found, newer, older
    found = list(_scan(conn, site, query, below=query.before, newest_first=True, want=want))
    more_older = len(found) > query.limit
    found = found[: query.limit]
    if not found:
        if query.before is not None and _any(conn, site, query, above=query.before - 1):
            return [], query.before - 1, None
        return [], None, None
    older = found[-1].seq if more_older else None
    newer = None
    if query.before is not None and _any(conn, site, query, above=found[0].seq):
        newer = found[0].seq
    return found, newer, older


def _any(
    conn: Connection,
    site: str,
    query: EntryQuery,
    *,
    below: int | None = None,
    above: int | None = None,
) -> bool:
    """Whether any entry matches beyond a page's edge."""
    scan = _scan(
        conn, site, query, below=below, above=above, newest_first=below is not None, want=1
    )
    return next(iter(scan), None) is not None


def _scan(
    conn: Connection,
    site: str,
    query: EntryQuery,
    *,
    newest_first: bool,
    want: int,
    below: int | None = None,
    above: int | None = None,
) -> Iterator[Entry]:
    """Up to ``want`` matching entries from the edge given, in order, fetched in batches."""
    c = entries_table.c
    conditions = query._conditions(site)
    exact = query._exact_in_sql(site)
    batch = want if exact else max(want, _BATCH)
    found = 0
    while found < want:
        edge = list(conditions)
        if below is not None:
            edge.append(c.seq < below)
        if above is not None:
            edge.append(c.seq > above)
        rows = conn.execute(
            select(entries_table)
            .where(and_(*edge))
            .order_by(c.seq.desc() if newest_first else c.seq.asc())
            .limit(batch)
        ).all()
        for row in rows:
            entry = Entry(**row._mapping)
            if exact or query.matches(entry):
                yield entry
                found += 1
                if found >= want:
                    return
        if len(rows) < batch:
            return
        last = int(rows[-1].seq)
        below, above = (last, above) if newest_first else (below, last)


def _total(conn: Connection, site: str, query: EntryQuery) -> int | None:
    if not query._exact_in_sql(site):
        return None
    count = conn.execute(
        select(func.count()).select_from(entries_table).where(and_(*query._conditions(site)))
    ).scalar_one()
    return int(count)


def _checks(
    conn: Connection, site: str, entries: list[Entry], key: Ed25519PublicKey | None
) -> list[EntryCheck]:
    hashes = {e.seq: e.hash for e in entries}
    missing = sorted({e.seq - 1 for e in entries if e.seq > 0} - set(hashes))
    c = entries_table.c
    for start in range(0, len(missing), _BATCH):
        chunk = missing[start : start + _BATCH]
        rows = conn.execute(select(c.seq, c.hash).where(c.site == site, c.seq.in_(chunk))).all()
        hashes.update({int(r.seq): str(r.hash) for r in rows})
    return [check_entry(e, key, hashes.get(e.seq - 1)) for e in entries]
