"""The ledger explorer: every ledger the user sees, a page of entries at a time, and exports.

A site's ledger is read from the site, as every other page reads it (:func:`read_site`, the
``ledger`` view of :mod:`onshore.reads.views`): this folder's own site directly, another party's
through its service, whose gate decides and records the read. The page is filtered and paged at
the site, so the console never holds more than a page. The coordinator's ledger is read in the
coordinator's own folder (the console running there, or a lab project), by the roles that see
it; no console opens another party's catalogue.

An export is the filtered entries, every page of them, newest first, as JSON or CSV, streamed
page by page (each page a read, as above). It stops at the entries that were in the ledger when
it began, so it never chases the entries its own reads add.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Final
from urllib.parse import urlencode

import orjson

from onshore.console.access import (
    Forbidden,
    HttpFor,
    RowAccess,
    all_sites,
    read_site,
    sees_site,
)
from onshore.console.auth import Role, User
from onshore.errors import ConfigError, OnshoreError
from onshore.ledger import KINDS
from onshore.ledger.explore import (
    ACTOR_FIELDS,
    MAX_ENTRIES,
    EntryQuery,
    read_page,
    secret_marks,
)
from onshore.reads import VIEWS
from onshore.settings import Project

__all__ = [
    "CSV_COLUMNS",
    "Export",
    "InvalidFilter",
    "csv_row",
    "empty_page",
    "entries",
    "explorable",
    "export",
    "page_of",
    "query_of",
]

CSV_COLUMNS: Final = (
    "ledger",
    "seq",
    "time",
    "kind",
    "actor",
    "reader",
    "view",
    "check",
    "hash_ok",
    "signature_ok",
    "link_ok",
    "problems",
    "hash",
    "prev_hash",
    "signature",
    "payload",
)
"""One CSV row per entry; ``payload`` is its canonical JSON, as the ledger stores it."""
_FORMULA: Final = ("=", "+", "-", "@", "\t", "\r")
"""What a spreadsheet would take a cell starting with for a formula."""
_LOCAL: Final[HttpFor] = lambda _site: None  # noqa: E731


class InvalidFilter(Exception):
    """A filter the explorer cannot take: which, and why (shown with the form, HTTP 400)."""

    def __init__(self, message: str, name: str, params: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.message = message
        self.name = name
        self.params = dict(params)


def query_of(name: str, params: Mapping[str, Any]) -> EntryQuery:
    """The explorer's query from a page's parameters; raises :class:`InvalidFilter`."""
    try:
        return EntryQuery.parse(params)
    except ConfigError as exc:
        message = exc.message + (f" ({exc.hint})" if exc.hint else "")
        raise InvalidFilter(message, name, params) from None


def _coordinator(project: Project) -> str | None:
    """The coordinator's ledger, when it is in this folder (the coordinator's, or a lab's)."""
    if project.party is None or project.is_coordinator:
        return project.settings.coordinator.id
    return None


def explorable(project: Project, user: User) -> list[str]:
    """The ledgers the user may explore: the sites they see, and the coordinator's where it
    is in this folder and their role sees it."""
    names = [s for s in all_sites(project) if sees_site(user, s)]
    coordinator = _coordinator(project)
    if coordinator is not None and user.role is not Role.SITE_OPERATOR:
        names.append(coordinator)
    return names


def _read(
    project: Project,
    user: User,
    name: str,
    query: EntryQuery,
    *,
    http_for: HttpFor,
    today: date | None,
) -> tuple[RowAccess, dict[str, Any] | None]:
    """One page of ``name``'s ledger for ``user``, and how it was read (see the module)."""
    if name == _coordinator(project) and name not in project.settings.sites:
        if user.role is Role.SITE_OPERATOR:
            raise Forbidden(f"{user.name} operates {user.site}, not the coordinator")
        return RowAccess(True, "own site"), _coordinator_page(project, query)
    if name not in all_sites(project):
        raise LookupError(f"no ledger {name!r} here; ledgers: {', '.join(all_sites(project))}")
    if not sees_site(user, name):
        raise Forbidden(f"{user.name} operates {user.site}, not {name}")
    try:
        found = read_site(
            project, user, name, "ledger", query.params(), http_for=http_for, day=today
        )
    except OnshoreError as exc:
        return RowAccess.failed(exc), None
    if not found.access.allowed:
        return found.access, None
    return found.access, found.data


def _coordinator_page(project: Project, query: EntryQuery) -> dict[str, Any]:
    from onshore.release.records import coordinator_ledger
    from onshore.sites.keystore import load_keystore

    coordinator = project.settings.coordinator
    try:
        marks = secret_marks(load_keystore(project.keystore_path(coordinator)))
    except OnshoreError:
        marks = ()  # its keystore is not readable here: there is nothing of it to look for
    with coordinator_ledger(project) as ledger:
        return read_page(ledger, query, secrets=marks).as_dict()


def entries(
    project: Project,
    user: User,
    name: str,
    params: Mapping[str, Any],
    *,
    today: date | None = None,
    http_for: HttpFor = _LOCAL,
) -> dict[str, Any]:
    """A page of ``name``'s ledger as the explorer shows it: the entries the filters in
    ``params`` select, newest first, each checked; the ledgers to choose from; links to the
    pages before and after and to the exports. Raises :class:`InvalidFilter`,
    :class:`Forbidden` for a ledger the user's role does not see, :class:`LookupError` for
    one that is not here."""
    query = query_of(name, params)
    access, data = _read(project, user, name, query, http_for=http_for, today=today)
    return page_of(project, user, name, query, access, data)


def page_of(
    project: Project,
    user: User,
    name: str,
    query: EntryQuery,
    access: RowAccess | None,
    data: dict[str, Any] | None,
    *,
    error: str | None = None,
) -> dict[str, Any]:
    """What the explorer's template takes (also for a form whose filters were refused)."""
    data = data or {}
    filters = dict(query.text)
    shown = urlencode(filters)
    return {
        "name": name,
        "ledgers": explorable(project, user),
        "access": access,
        "allowed": access is not None and access.allowed,
        "filters": filters,
        "kinds": sorted(KINDS | set(ACTOR_FIELDS) | {e["kind"] for e in data.get("entries", [])}),
        "views": sorted(VIEWS),
        "entries": data.get("entries", []),
        "newer": data.get("newer"),
        "older": data.get("older"),
        "total": data.get("total"),
        "key": data.get("key"),
        "head": data.get("head"),
        "query": shown,
        "error": error,
    }


def empty_page(
    project: Project, user: User, name: str, params: Mapping[str, Any], error: str
) -> dict[str, Any]:
    """The explorer's form as it was filled in, with why its filters were refused."""
    shown = {k: str(v) for k, v in params.items() if v not in (None, "")}
    page = page_of(project, user, name, EntryQuery(), None, None, error=error)
    return {**page, "filters": shown, "query": ""}


@dataclass(frozen=True, slots=True)
class Export:
    """An export about to be streamed: its media type, its file name, and its body in
    chunks; or, when the site's gate withheld the first page, why (``withheld``)."""

    media_type: str
    filename: str
    body: Iterator[bytes]
    withheld: RowAccess | None = None


def export(
    project: Project,
    user: User,
    name: str,
    params: Mapping[str, Any],
    fmt: str,
    *,
    today: date | None = None,
    http_for: HttpFor = _LOCAL,
) -> Export:
    """The entries of ``name``'s ledger that ``params`` filter (paging left out: all of
    them), as ``fmt`` (``json`` or ``csv``). The first page is read before this returns, so a
    refusal is an answer, not a broken download; the rest is read as the body is streamed.
    Raises as :func:`entries` does, and :class:`LookupError` for another format."""
    if fmt not in ("json", "csv"):
        raise LookupError(f"no export as {fmt!r}: json or csv")
    query = query_of(name, params).paged(limit=MAX_ENTRIES)
    access, first = _read(project, user, name, query, http_for=http_for, today=today)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    filename = f"{name}-ledger-{stamp}.{fmt}"
    media = "application/json" if fmt == "json" else "text/csv; charset=utf-8"
    if first is None:
        return Export(media, filename, iter(()), withheld=access)
    pages = _pages(project, user, name, query, first, http_for=http_for, today=today)
    body = _json(first, pages) if fmt == "json" else _csv(pages)
    return Export(media, filename, body)


@dataclass(slots=True)
class _Stop:
    """Why an export stopped before its last page (a later page withheld or unanswered)."""

    why: str | None = None


def _pages(
    project: Project,
    user: User,
    name: str,
    query: EntryQuery,
    first: dict[str, Any],
    *,
    http_for: HttpFor,
    today: date | None,
) -> tuple[Iterator[dict[str, Any]], _Stop]:
    stop = _Stop()

    def rows() -> Iterator[dict[str, Any]]:
        page = first
        while True:
            yield from page["entries"]
            older = page.get("older")
            if older is None:
                return
            access, found = _read(
                project, user, name, query.paged(before=older), http_for=http_for, today=today
            )
            if found is None:
                stop.why = access.why or "; ".join(
                    (access.decision or {}).get("reasons", []) or ["withheld by the site's gate"]
                )
                return
            page = found

    return rows(), stop


def _json(first: dict[str, Any], pages: tuple[Iterator[dict[str, Any]], _Stop]) -> Iterator[bytes]:
    rows, stop = pages
    head = {k: first.get(k) for k in ("ledger", "key", "head", "filters")}
    head["exported"] = datetime.now(UTC).isoformat()
    opening = orjson.dumps(head, option=orjson.OPT_SORT_KEYS)
    yield opening[:-1] + b',"entries":['
    comma = b""
    for row in rows:
        yield comma + b"\n" + orjson.dumps(row, option=orjson.OPT_SORT_KEYS)
        comma = b","
    tail = {"complete": stop.why is None, "stopped": stop.why}
    yield b"\n]," + orjson.dumps(tail, option=orjson.OPT_SORT_KEYS)[1:] + b"\n"


def _csv(pages: tuple[Iterator[dict[str, Any]], _Stop]) -> Iterator[bytes]:
    rows, stop = pages
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([_cell(value) for value in csv_row(row)])
        if buffer.tell() > 64_000:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    if stop.why is not None:
        writer.writerow([_cell(f"# export stopped before its end: {stop.why}")])
    yield buffer.getvalue().encode()


def csv_row(row: Mapping[str, Any]) -> list[Any]:
    """An entry's values in the order of :data:`CSV_COLUMNS`."""
    check = row["check"]
    payload = row["payload"]
    text = (
        payload
        if isinstance(payload, str)
        else orjson.dumps(payload, option=orjson.OPT_SORT_KEYS).decode()
    )
    return [
        row["ledger"],
        row["seq"],
        row["time"],
        row["kind"],
        row["actor"],
        row["reader"] or "",
        row["view"] or "",
        "valid" if check["ok"] else "INVALID",
        _flag(check["hash"]),
        _flag(check["signature"]),
        _flag(check["link"]),
        "; ".join(check["problems"]),
        row["hash"],
        row["prev_hash"],
        row["signature"],
        text,
    ]


def _flag(value: bool | None) -> str:
    return "" if value is None else ("true" if value else "false")


def _cell(value: Any) -> Any:
    """A cell as a spreadsheet will not run it: text that would start a formula gets a
    leading apostrophe (the JSON export keeps every value as it is)."""
    if isinstance(value, str) and value.startswith(_FORMULA):
        return "'" + value
    return value
