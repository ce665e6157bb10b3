"""Approvals: the legal mechanisms a site has on file, and the deadlines the rulebook implies.

An :class:`Approval` records one mechanism (a CAC security assessment, a CN standard contract,
EU standard contractual clauses, a recipient's DPF certification...) with the scope the gate
checks a transfer against: origin, recipient, categories, purposes, maximum subjects, validity.

Deadlines are not typed in by hand: they follow from the origin's rulebook
(:class:`~onshore.rulebook.MechanismTerms`). A CN security assessment is valid 3 years and its
extension must be applied for 60 working days before expiry, so :func:`approval_status` gives the
last valid day (the earlier of the approval's own ``valid_to`` and what the rulebook allows), the
day to apply for renewal by, and a status relative to a date (``not_yet_valid``, ``valid``,
``renewal_due``, ``expired``, ``revoked``), with a warning as the deadline approaches.

:class:`ApprovalRegistry` keeps a site's approvals in the site's catalogue database (its own
``approvals`` table, one row per site and id, created on first use, SQLite or PostgreSQL), so
that an approval change and the ledger entry recording it can share one transaction: ``add`` and
``revoke`` take the caller's connection for that.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Final, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from sqlalchemy import (
    BigInteger,
    Column,
    Date,
    DateTime,
    MetaData,
    String,
    Table,
    Text,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError, SQLAlchemyError

from onshore.errors import ApprovalNotFound, CatalogueError, InvalidApproval, RulebookNotFound
from onshore.rulebook import MechanismTerms, Rulebook, Rulebooks
from onshore.rulebook.model import CategoryRef, CountryCode, MechanismRef, Name
from onshore.store.catalogue import Catalogue, add_missing_columns

__all__ = [
    "WARN_DAYS",
    "Approval",
    "ApprovalRegistry",
    "ApprovalStatus",
    "Status",
    "approval_status",
    "approval_terms",
    "check_approval",
    "effective_valid_until",
]

WARN_DAYS: Final = 30
"""How many days before a renewal deadline (or, without one, before expiry) ``list`` starts
warning. Renewal deadlines in working days are computed without public holidays, which only
onshore's user knows: a month's warning leaves room for the holidays that move them earlier."""

Status = Literal["not_yet_valid", "valid", "renewal_due", "expired", "revoked"]
"""Where an approval stands on a given day."""

ApprovalId = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$", max_length=64)
]
"""An approval's id on file: letters, digits and ``. _ : / -``, e.g. ``A1`` or ``CAC-2026-017``."""

Party = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]


class Approval(BaseModel):
    """One legal mechanism on file and the scope it covers."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    id: ApprovalId
    type: MechanismRef
    """The mechanism (``cn_security_assessment``, ``eu_scc``...) its origin's rulebook names."""
    origin: CountryCode
    """Whose data it covers: a jurisdiction (``CN``, ``EU``) or a country of its territory."""
    recipient: Party
    """Who may receive the data (compared ignoring case and repeated spaces)."""
    categories: tuple[CategoryRef, ...] = Field(min_length=1)
    """The data categories covered; a transfer must stay within them."""
    purposes: tuple[Name, ...] = Field(min_length=1)
    """The purposes covered; a transfer's purpose must be one of them."""
    max_subjects: int | None = Field(default=None, ge=0)
    """The largest volume covered (the assessed scale); none: no limit (e.g. SCCs)."""
    valid_from: date
    valid_to: date | None = None
    """Last valid day as the approval states it; none: as long as the rulebook allows."""
    reference: str = ""
    """The authority's or the contract's reference number."""
    document: str = ""
    """Where the decision or the signed contract is filed (a path or URL in the carmaker's
    records), for an inspector to be shown."""
    revoked_at: datetime | None = None
    """When it was revoked; a revoked approval covers nothing any more."""
    revoke_reason: str | None = None
    added_at: datetime | None = None
    """When it was put on file (set by the registry)."""

    @model_validator(mode="after")
    def _ordered(self) -> Approval:
        if self.valid_to is not None and self.valid_to < self.valid_from:
            raise ValueError(f"valid_to {self.valid_to} is before valid_from {self.valid_from}")
        return self

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def ref(self) -> dict[str, str]:
        """What a decision names of the approval it used: id, type and reference."""
        return {"id": self.id, "type": self.type, "reference": self.reference}


def approval_terms(approval: Approval, rulebooks: Rulebooks) -> tuple[Rulebook, MechanismTerms]:
    """The rulebook governing the approval's origin and its terms for the approval's type.
    Raises :class:`InvalidApproval` when no rulebook governs the origin or its rulebook does not
    know the mechanism (a CN security assessment cannot cover EU data)."""
    try:
        book = rulebooks.for_origin(approval.origin)
    except RulebookNotFound as exc:
        raise InvalidApproval(
            f"approval {approval.id}: origin {approval.origin!r}: {exc.message}", hint=exc.hint
        ) from None
    terms = book.mechanisms.get(approval.type)
    if terms is None:
        known = ", ".join(book.mechanisms) or "none"
        raise InvalidApproval(
            f"approval {approval.id}: type {approval.type!r} is not a mechanism of the "
            f"{book.key} rulebook {book.version}, which governs data from {approval.origin}",
            hint=f"its mechanisms: {known}",
        )
    return book, terms


def check_approval(approval: Approval, rulebooks: Rulebooks) -> None:
    """Raise :class:`InvalidApproval` unless the approval's origin has a rulebook that knows its
    type (see :func:`approval_terms`)."""
    approval_terms(approval, rulebooks)


def effective_valid_until(approval: Approval, terms: MechanismTerms | None) -> date | None:
    """The approval's last valid day: its own ``valid_to``, but never later than the validity the
    rulebook gives the mechanism (3 years for a CN security assessment); none: until revoked."""
    limit = terms.valid_until(approval.valid_from) if terms is not None else None
    if approval.valid_to is None:
        return limit
    return approval.valid_to if limit is None else min(approval.valid_to, limit)


@dataclass(frozen=True, slots=True)
class ApprovalStatus:
    """An approval with its deadlines and where it stands on ``as_of``."""

    approval: Approval
    as_of: date
    valid_until: date | None
    renew_by: date | None
    """Last day to apply for renewal or extension (the rulebook's lead time before expiry)."""
    status: Status
    warning: str | None
    """A sentence to act on when renewal is due, the deadline has passed or it expired."""

    def as_dict(self) -> dict[str, Any]:
        """The approval and its deadlines as ``approvals list --json`` prints them."""
        return {
            **self.approval.model_dump(mode="json"),
            "valid_until": self.valid_until.isoformat() if self.valid_until else None,
            "renew_by": self.renew_by.isoformat() if self.renew_by else None,
            "status": self.status,
            "warning": self.warning,
        }


def approval_status(
    approval: Approval,
    rulebooks: Rulebooks,
    on: date,
    *,
    warn_days: int = WARN_DAYS,
    holidays: Collection[date] = (),
) -> ApprovalStatus:
    """Deadlines of ``approval`` from its origin's rulebook, and its status on ``on``.

    ``renewal_due`` starts ``warn_days`` before the renewal deadline (or before expiry, for a
    mechanism without a lead time) and lasts until expiry. Working-day deadlines skip weekends
    and ``holidays`` only. Raises :class:`InvalidApproval` if the rulebooks do not know the
    approval's origin or type.
    """
    book, terms = approval_terms(approval, rulebooks)
    until = effective_valid_until(approval, terms)
    renew_by = terms.renew_by(until, holidays) if until is not None else None
    capped = ""
    if until is not None and approval.valid_to is not None and until < approval.valid_to:
        capped = (
            f" (its own end date {approval.valid_to.isoformat()} is later than the "
            f"{terms.valid_for} the rulebook allows)"
        )
    status: Status
    warning: str | None = None
    label = f"{approval.id} ({approval.type}"
    label += f", {approval.reference})" if approval.reference else ")"
    if approval.revoked_at is not None:
        status = "revoked"
        why = f": {approval.revoke_reason}" if approval.revoke_reason else ""
        warning = f"{label} was revoked on {approval.revoked_at.date().isoformat()}{why}."
    elif on < approval.valid_from:
        status = "not_yet_valid"
    elif until is not None and on > until:
        status = "expired"
        warning = f"{label} expired on {until.isoformat()}{capped}: it covers no transfer."
    elif until is not None and on >= (renew_by or until) - timedelta(days=warn_days):
        status = "renewal_due"
        if renew_by is None:
            warning = (
                f"{label} expires on {until.isoformat()}{capped}, in {(until - on).days} "
                "day(s): renew it before then."
            )
        elif on <= renew_by:
            warning = (
                f"{label} expires on {until.isoformat()}{capped}: apply for its extension by "
                f"{renew_by.isoformat()}, in {(renew_by - on).days} day(s) ({terms.renew_before} "
                f"before expiry, as the {book.key} rulebook {book.version} says)."
            )
        else:
            warning = (
                f"{label} expires on {until.isoformat()}{capped}; the day to apply for its "
                f"extension, {renew_by.isoformat()} ({terms.renew_before} before expiry), has "
                "passed: apply now or plan for it to lapse."
            )
    else:
        status = "valid"
    return ApprovalStatus(approval, on, until, renew_by, status, warning)


_metadata = MetaData()

_approvals = Table(
    "approvals",
    _metadata,
    Column("site", String(64), primary_key=True),
    Column("id", String(64), primary_key=True),
    Column("type", String(64), nullable=False),
    Column("origin", String(8), nullable=False),
    Column("recipient", Text, nullable=False),
    Column("categories", Text, nullable=False),
    Column("purposes", Text, nullable=False),
    Column("max_subjects", BigInteger),
    Column("valid_from", Date, nullable=False),
    Column("valid_to", Date),
    Column("reference", Text, nullable=False),
    Column("document", Text, nullable=False, server_default=""),
    Column("added_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
    Column("revoke_reason", Text),
)

_RETRIES: Final = 5


def _utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every time onshore stores is UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _row(approval: Approval, site: str) -> dict[str, Any]:
    return {
        "site": site,
        "id": approval.id,
        "type": approval.type,
        "origin": approval.origin,
        "recipient": approval.recipient,
        "categories": orjson.dumps(approval.categories).decode(),
        "purposes": orjson.dumps(approval.purposes).decode(),
        "max_subjects": approval.max_subjects,
        "valid_from": approval.valid_from,
        "valid_to": approval.valid_to,
        "reference": approval.reference,
        "document": approval.document,
        "added_at": approval.added_at,
        "revoked_at": approval.revoked_at,
        "revoke_reason": approval.revoke_reason,
    }


def _from_row(row: Any) -> Approval:
    values = dict(row._mapping)
    values.pop("site")
    values["categories"] = tuple(orjson.loads(values["categories"]))
    values["purposes"] = tuple(orjson.loads(values["purposes"]))
    values["added_at"] = _utc(values["added_at"])
    values["revoked_at"] = _utc(values["revoked_at"])
    return Approval.model_validate(values)


class ApprovalRegistry:
    """The approvals on file at one site, in that site's catalogue database.

    ``jurisdiction`` (the site's) makes ``add`` refuse approvals for data another rulebook
    governs: a site keeps the mechanisms under which *its* data may leave.
    """

    def __init__(
        self, catalogue: Catalogue, rulebooks: Rulebooks, *, jurisdiction: str | None = None
    ) -> None:
        self.catalogue = catalogue
        self.site = catalogue.site
        self.rulebooks = rulebooks
        self.jurisdiction = jurisdiction
        self._create_table()

    def _create_table(self) -> None:
        for attempt in range(_RETRIES):
            try:
                # Two processes opening a new catalogue at once may both find the table
                # missing; the loser's CREATE fails and its next look finds the table there.
                _metadata.create_all(self.catalogue.engine)
                with self.catalogue.engine.begin() as conn:
                    add_missing_columns(conn, _metadata)  # a table an earlier onshore made
                return
            except (OperationalError, ProgrammingError, IntegrityError) as exc:
                if attempt == _RETRIES - 1:
                    raise CatalogueError(
                        f"cannot create the approvals table in {self.catalogue.url}: {exc}"
                    ) from exc
            except SQLAlchemyError as exc:
                raise CatalogueError(
                    f"cannot create the approvals table in {self.catalogue.url}: {exc}"
                ) from exc

    @contextmanager
    def _tx(self, conn: Connection | None) -> Iterator[Connection]:
        """The caller's connection (its transaction, e.g. with a ledger entry), or our own."""
        if conn is not None:
            yield conn
            return
        with self.catalogue.transaction() as own:
            yield own

    def add(
        self, approval: Approval, *, conn: Connection | None = None, now: datetime | None = None
    ) -> Approval:
        """Put ``approval`` on file and return it as stored (with ``added_at``). Raises
        :class:`InvalidApproval` if the id is taken at this site, the approval is already
        revoked, or the rulebooks refuse it (unknown origin, a type its rulebook does not know,
        data of another jurisdiction than the site's)."""
        if approval.revoked_at is not None:
            raise InvalidApproval(
                f"approval {approval.id} is revoked: put it on file first, then revoke it"
            )
        book, _ = approval_terms(approval, self.rulebooks)
        if self.jurisdiction is not None:
            own = self.rulebooks.for_origin(self.jurisdiction)
            if own.key != book.key:
                raise InvalidApproval(
                    f"approval {approval.id} covers data from {approval.origin} ({book.key} "
                    f"rulebook), but site {self.site} holds {self.jurisdiction} data",
                    hint="put it on file at a site of that jurisdiction, where the data is",
                )
        stored = approval.model_copy(
            update={"added_at": (now or datetime.now(UTC)).astimezone(UTC)}
        )
        try:
            with self._tx(conn) as tx:
                tx.execute(_approvals.insert().values(**_row(stored, self.site)))
        except IntegrityError:
            raise InvalidApproval(
                f"an approval with id {approval.id!r} is already on file at site {self.site}",
                hint="give the new one its own id; revoke the old one if it is replaced",
            ) from None
        return stored

    def get(self, approval_id: str, *, conn: Connection | None = None) -> Approval:
        """The approval with this id; raises :class:`ApprovalNotFound`."""
        with self._tx(conn) as tx:
            row = tx.execute(
                select(_approvals).where(
                    _approvals.c.site == self.site, _approvals.c.id == approval_id
                )
            ).first()
        if row is None:
            raise ApprovalNotFound(
                f"no approval {approval_id!r} on file at site {self.site}",
                hint=f"list them with: onshore approvals list --site {self.site}",
            )
        return _from_row(row)

    def approvals(self, *, include_revoked: bool = True) -> list[Approval]:
        """Every approval on file, by start of validity then id."""
        query = select(_approvals).where(_approvals.c.site == self.site)
        if not include_revoked:
            query = query.where(_approvals.c.revoked_at.is_(None))
        with self.catalogue.transaction() as tx:
            rows = tx.execute(query.order_by(_approvals.c.valid_from, _approvals.c.id)).all()
        return [_from_row(r) for r in rows]

    def revoke(
        self,
        approval_id: str,
        reason: str,
        *,
        conn: Connection | None = None,
        now: datetime | None = None,
    ) -> Approval:
        """Mark the approval revoked (it stays on file, for the record) and return it. Raises
        :class:`ApprovalNotFound`, or :class:`InvalidApproval` if it is revoked already or no
        reason is given."""
        if not reason.strip():
            raise InvalidApproval(f"revoking {approval_id}: say why (a reason is required)")
        at = (now or datetime.now(UTC)).astimezone(UTC)
        with self._tx(conn) as tx:
            current = self.get(approval_id, conn=tx)
            if current.revoked_at is not None:
                raise InvalidApproval(
                    f"approval {approval_id} was already revoked on "
                    f"{current.revoked_at.date().isoformat()}"
                )
            tx.execute(
                update(_approvals)
                .where(
                    _approvals.c.site == self.site,
                    _approvals.c.id == approval_id,
                    _approvals.c.revoked_at.is_(None),
                )
                .values(revoked_at=at, revoke_reason=reason.strip())
            )
        return current.model_copy(update={"revoked_at": at, "revoke_reason": reason.strip()})

    def statuses(self, on: date, *, warn_days: int = WARN_DAYS) -> list[ApprovalStatus]:
        """Every approval on file with its deadlines and status on ``on``."""
        return [
            approval_status(a, self.rulebooks, on, warn_days=warn_days) for a in self.approvals()
        ]
