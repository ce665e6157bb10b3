"""The rule model: one jurisdiction's law as typed, frozen data.

A :class:`Rulebook` is what one YAML file holds (see ``builtin/cn.yaml`` for a full example):

- ``classes``: the legal classes of that law (CN personal information, sensitive PI, important
  data...), each made of *memberships* saying which categories, in which de-identification states,
  for which purposes, belong to it;
- ``rules``: which data (``applies_to`` classes), going where (``destination``, ``recipient``),
  for what (``purposes``), in what volume (``count``: a threshold over a counting window), needs
  which ``outcome``: ``exempt``, ``require`` one of some ``mechanisms``, or ``prohibited``;
- ``mechanisms``: the terms of each legal mechanism (validity, renewal lead time, which weaker
  mechanisms it also satisfies);
- ``country_sets``, ``obligations`` (duties that are not transfer decisions: reports, deadlines,
  notes) and ``software_restrictions`` (who may supply automated-driving software).

Every membership, rule, mechanism, set and obligation cites its ``source`` and a ``confidence``:
``checked`` where the text was read, ``unchecked`` where it still needs a lawyer's look.
Entries are keyed by their id, so an id used twice is a duplicate key, refused with its line::

    jurisdiction: CN
    title: China outbound
    version: "2026.1"                    # quoted: a version is text
    effective: 2026-03-01
    territory: [CN]
    classes:
      sensitive_pi:
        name: sensitive personal information
        members:
          cn.class.sensitive_pi.trajectories:
            categories: [trajectory]
            deid_states: [raw, pseudonymized]    # anonymised data is not PI
            source: CAC Order 7, Art. 3
            confidence: checked
    mechanisms:
      cn_security_assessment:
        name: CAC outbound data security assessment
        valid_for: {years: 3}
        renew_before: {working_days: 60}
        source: CAC guidance of 2025-06
        confidence: checked
    rules:
      cn.cbdf.sensitive_10k_or_more:
        summary: Sensitive PI of 10,000 or more persons needs a CAC security assessment.
        applies_to: {classes: [sensitive_pi]}
        destination: {scope: abroad}
        count: {subject: person, window: calendar_year, per: entity, when: [">= 10000"]}
        outcome: require                   # or exempt, or prohibited
        mechanisms: [cn_security_assessment]  # any one of
        source: Provisions on Promoting and Regulating Cross-Border Data Flows, Art. 7
        confidence: checked

A user's file may instead start with ``extends: cn`` and hold only what differs (see
:mod:`onshore.rulebook.loader`). ``boundary: cn.geojson`` (a path relative to the rulebook
file, or ``builtin:territory/cn.geojson`` for the one onshore ships) names the territory's area
on the map, against which ingest checks where clips were driven (see
:mod:`onshore.rulebook.territory`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    model_serializer,
    model_validator,
)

from onshore.rulebook.categories import (
    APPROVAL_MECHANISMS,
    CATEGORIES,
    DEID_STATES,
    PROHIBITED,
    DeidState,
)
from onshore.rulebook.periods import Window, shift_months, shift_working_days

__all__ = [
    "AnnualDate",
    "Comparison",
    "Confidence",
    "Count",
    "CountrySet",
    "Destination",
    "Duration",
    "LeadTime",
    "LegalClass",
    "MechanismTerms",
    "Membership",
    "Obligation",
    "Operator",
    "Outcome",
    "Period",
    "Profile",
    "RecipientCondition",
    "Rule",
    "Rulebook",
    "Selector",
    "SoftwareRestriction",
]

Confidence = Literal["checked", "unchecked"]
"""``checked``: the fact was read in a copy of the text. ``unchecked``: it comes from secondary
reporting or is onshore's reading, and a compliance officer should have it looked at."""

Operator = Literal[">=", ">", "<", "<="]
"""How legal wording maps to operators: "N or more" ``>=``, "more than N" ``>``, "fewer than N"
``<``, "N or fewer" ``<=``."""

Outcome = Literal["exempt", "require", "prohibited"]
"""What a matching rule decides: no mechanism needed, one of ``mechanisms`` needed, or forbidden."""

Scope = Literal["abroad", "domestic", "any"]
Aggregation = Literal["entity", "counterparty"]

OPERATORS: tuple[Operator, ...] = (">=", ">", "<", "<=")

EntryId = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]*$", max_length=120),
]
"""Id of a rule, membership, obligation or restriction: lower case, digits, ``_ . -``."""

Name = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)]
"""Id of a legal class, country set or purpose."""

CountryCode = Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")]
"""ISO 3166-1 alpha-2 code, or ``EU`` for the Union as a whole."""

CountryRef = Annotated[str, StringConstraints(pattern=r"^([A-Z]{2}|[a-z][a-z0-9_]*)$")]
"""A country code, or the name of one of the rulebook's ``country_sets``."""

Text = Annotated[str, StringConstraints(min_length=1, strip_whitespace=True)]


def _known_category(value: str) -> str:
    if value not in CATEGORIES:
        raise ValueError(f"unknown category {value!r}; known: {', '.join(CATEGORIES)}")
    return value


def _known_mechanism(value: str) -> str:
    if value == PROHIBITED:
        raise ValueError("'prohibited' is not a mechanism here: write 'outcome: prohibited'")
    if value not in APPROVAL_MECHANISMS:
        raise ValueError(f"unknown mechanism {value!r}; known: {', '.join(APPROVAL_MECHANISMS)}")
    return value


CategoryRef = Annotated[str, AfterValidator(_known_category)]
MechanismRef = Annotated[str, AfterValidator(_known_mechanism)]


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
    )


class _Cited(_Model):
    source: Text
    """Where the fact comes from: instrument, article, date."""
    confidence: Confidence
    """``checked`` or ``unchecked`` (see :data:`Confidence`)."""
    note: str | None = None
    """Anything a compliance officer should know about how onshore reads the source."""


class Duration(_Model):
    """A length of time as the law states it: years, months and days, or working days."""

    years: int = Field(default=0, ge=0)
    months: int = Field(default=0, ge=0)
    days: int = Field(default=0, ge=0)
    working_days: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _one_kind(self) -> Duration:
        calendar = self.years or self.months or self.days
        if not calendar and not self.working_days:
            raise ValueError("a duration needs years, months, days or working_days")
        if calendar and self.working_days:
            raise ValueError("give either working_days or years/months/days, not both")
        return self

    @model_serializer
    def _non_zero(self) -> dict[str, int]:
        return {k: v for k, v in self.__dict__.items() if v}

    def after(self, start: date, holidays: Collection[date] = ()) -> date:
        """``start`` plus this duration (an anniversary that does not exist, such as 29 February,
        falls on the 1st of the next month)."""
        if self.working_days:
            return shift_working_days(start, self.working_days, holidays)
        moved = shift_months(start, self.years * 12 + self.months, overflow="next")
        return moved + timedelta(days=self.days)

    def before(self, end: date, holidays: Collection[date] = ()) -> date:
        """``end`` minus this duration (a day that does not exist falls on the month's last)."""
        if self.working_days:
            return shift_working_days(end, -self.working_days, holidays)
        moved = shift_months(end, -(self.years * 12 + self.months), overflow="clamp")
        return moved - timedelta(days=self.days)

    def __str__(self) -> str:
        if self.working_days:
            return _plural(self.working_days, "working day")
        parts = [
            _plural(n, unit)
            for n, unit in ((self.years, "year"), (self.months, "month"), (self.days, "day"))
            if n
        ]
        return " ".join(parts)


def _plural(n: int, unit: str) -> str:
    return f"{n} {unit}" if n == 1 else f"{n} {unit}s"


class Period(_Model):
    """When something is in force: from a day, until a day (both inclusive, both optional)."""

    start: date | None = Field(default=None, alias="from")
    """First day in force."""
    until: date | None = None
    """Last day in force."""

    @model_validator(mode="after")
    def _ordered(self) -> Period:
        if self.start and self.until and self.until < self.start:
            raise ValueError(f"'until' {self.until} is before 'from' {self.start}")
        return self

    def contains(self, day: date) -> bool:
        """Whether ``day`` is in force."""
        return (self.start is None or self.start <= day) and (
            self.until is None or day <= self.until
        )


class AnnualDate(_Model):
    """A day that comes back every year, such as a report due on 15 December."""

    month: int = Field(ge=1, le=12)
    day: int = Field(ge=1, le=31)

    @model_validator(mode="after")
    def _exists(self) -> AnnualDate:
        date(2024, self.month, self.day)  # a leap year: 29 February is allowed
        return self

    def next_on_or_after(self, day: date) -> date:
        """The first occurrence on or after ``day``."""
        for year in range(day.year, day.year + 9):
            try:
                candidate = date(year, self.month, self.day)
            except ValueError:
                continue
            if candidate >= day:
                return candidate
        raise AssertionError("unreachable: every month/day recurs within 8 years")


class Membership(_Cited):
    """One reason data belongs to a legal class: these categories, in these de-identification
    states, for these purposes."""

    id: EntryId
    categories: tuple[CategoryRef, ...] = Field(min_length=1)
    """Data categories this membership covers."""
    deid_states: tuple[DeidState, ...] = Field(default=DEID_STATES, min_length=1)
    """De-identification states in which they belong (default: all, however de-identified)."""
    purposes: tuple[Name, ...] = ()
    """Only when transferred for one of these purposes (default: any purpose)."""

    def matches(self, category: str, deid_state: DeidState, purpose: str | None) -> bool:
        """Whether data of ``category`` in ``deid_state`` sent for ``purpose`` belongs. An unknown
        purpose (``None``, e.g. an earlier transfer whose purpose was not recorded) matches, so
        that not knowing never makes data less regulated."""
        return (
            category in self.categories
            and deid_state in self.deid_states
            and (not self.purposes or purpose is None or purpose in self.purposes)
        )


class LegalClass(_Model):
    """A class the law puts data in (CN "sensitive personal information", US "precise
    geolocation data"), defined by its memberships."""

    id: Name
    name: Text
    """The law's own name for the class."""
    description: str = ""
    members: dict[EntryId, Membership] = Field(min_length=1)
    """Which categories belong, keyed by membership id."""


class CountrySet(_Cited):
    """A named list of countries, e.g. the US countries of concern."""

    id: Name
    description: str = ""
    countries: tuple[CountryCode, ...] = Field(min_length=1)


class Selector(_Model):
    """Which data items a rule is about. Every part given must hold; none given: every item."""

    classes: tuple[Name, ...] = ()
    """The item is in at least one of these legal classes."""
    not_classes: tuple[Name, ...] = ()
    """... and in none of these."""
    categories: tuple[CategoryRef, ...] = ()
    """... and of one of these categories."""
    deid_states: tuple[DeidState, ...] = ()
    """... and in one of these de-identification states."""

    def selects(self, category: str, deid_state: DeidState, classes: Collection[str]) -> bool:
        """Whether an item of ``category`` in ``deid_state``, in legal ``classes``, is selected."""
        return (
            (not self.classes or any(c in classes for c in self.classes))
            and not any(c in classes for c in self.not_classes)
            and (not self.categories or category in self.categories)
            and (not self.deid_states or deid_state in self.deid_states)
        )

    def describe(self) -> str:
        """The selection in words, for reasons and ``show``."""
        parts = []
        if self.classes:
            parts.append(" or ".join(self.classes))
        if self.not_classes:
            parts.append("not " + " or ".join(self.not_classes))
        if self.categories:
            parts.append("categories " + ", ".join(self.categories))
        if self.deid_states:
            parts.append(" or ".join(self.deid_states))
        return "; ".join(parts) or "all data"


class Destination(_Model):
    """Where the data goes. ``scope``: outside the rulebook's territory (``abroad``), inside it
    (``domestic``) or ``any``; ``in`` / ``not_in``: the destination country is (not) one of
    these codes or sets."""

    scope: Scope = "any"
    within: tuple[CountryRef, ...] = Field(default=(), alias="in")
    not_in: tuple[CountryRef, ...] = ()


class RecipientCondition(_Model):
    """Who receives the data: ``tied_to`` holds when the destination, the recipient's country or
    any country the recipient is linked to (owner, headquarters, control) is in these."""

    tied_to: tuple[CountryRef, ...] = Field(min_length=1)


class Comparison(_Model):
    """One side of a threshold: the count compared with a value. Written in YAML as a string,
    ``">= 100000"`` (``_`` and ``,`` may group digits), or as ``{op: ">=", value: 100000}``."""

    op: Operator
    value: int = Field(ge=0)

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, data: Any) -> Any:
        if not isinstance(data, str):
            return data
        text = data.strip()
        for op in sorted(OPERATORS, key=len, reverse=True):
            if text.startswith(op):
                number = text[len(op) :].strip().replace("_", "").replace(",", "")
                if not number.isdigit():
                    raise ValueError(f"{data!r}: {number!r} is not a whole number")
                return {"op": op, "value": int(number)}
        raise ValueError(
            f"{data!r}: bad operator; write one of {', '.join(OPERATORS)} then a number"
        )

    @model_serializer
    def _as_text(self) -> str:
        return f"{self.op} {self.value}"

    def holds(self, count: int) -> bool:
        """Whether ``count`` satisfies this comparison."""
        match self.op:
            case ">=":
                return count >= self.value
            case ">":
                return count > self.value
            case "<":
                return count < self.value
            case "<=":
                return count <= self.value

    def __str__(self) -> str:
        return f"{self.op} {self.value:,}"


class Count(_Model):
    """A threshold: the subjects of some classes, counted over a window (this transfer plus
    earlier ones), compared with values."""

    of: tuple[Name, ...] = ()
    """Legal classes whose subjects are counted; empty: the items the rule ``applies_to``."""
    subject: Literal["person", "device"]
    """What the law counts (persons, or devices such as vehicles)."""
    window: Window
    """``calendar_year`` (CN), ``trailing_12_months`` (US) or ``none`` (this transfer alone)."""
    per: Aggregation = "entity"
    """``entity``: every earlier transfer of the exporter that this rule governs; ``counterparty``:
    only those to the same recipient (and those whose recipient was not recorded)."""
    when: tuple[Comparison, ...] = Field(min_length=1)
    """Comparisons that must all hold for the rule to match."""

    def holds(self, count: int) -> bool:
        """Whether ``count`` satisfies every comparison."""
        return all(c.holds(count) for c in self.when)

    def describe(self) -> str:
        """``">= 100,000 and < 1,000,000"``."""
        return " and ".join(str(c) for c in self.when)


class Rule(_Cited):
    """One rule: which data, going where and why, in what volume, needs what."""

    id: EntryId
    summary: Text
    """What the rule says, in one sentence a compliance officer can act on."""
    applies_to: Selector = Selector()
    destination: Destination = Destination()
    recipient: RecipientCondition | None = None
    purposes: tuple[Name, ...] = ()
    """Only for these purposes (default: any purpose)."""
    count: Count | None = None
    outcome: Outcome
    mechanisms: tuple[MechanismRef, ...] = ()
    """With ``outcome: require``: any one of these mechanisms satisfies the rule."""
    in_force: Period = Period()


class LeadTime(_Cited):
    """How long obtaining a mechanism takes, from the application (or the contract's signing)
    to the day a transfer under it may start: what a plan counts with. Its own source and
    confidence, as statutory review periods and practice differ."""

    typical: Duration
    """The time it usually takes."""


class MechanismTerms(_Cited):
    """The terms of a legal mechanism under this law."""

    id: MechanismRef
    name: Text
    lead_time: LeadTime | None = None
    """How long it takes to obtain (none: no period is known; a plan says so)."""
    valid_for: Duration | None = None
    """How long an approval of this kind is valid; none: until revoked."""
    renew_before: Duration | None = None
    """How long before expiry a renewal or extension must be applied for."""
    satisfies: tuple[MechanismRef, ...] = ()
    """Weaker mechanisms an approval of this kind also stands in for (a CAC security assessment
    covering a transfer also does what a standard contract would)."""
    in_force: Period = Period()

    def valid_until(self, valid_from: date) -> date | None:
        """Last valid day of an approval granted on ``valid_from``, or ``None`` if unlimited:
        the day before the anniversary (valid 3 years from 2026-01-01: until 2028-12-31)."""
        if self.valid_for is None:
            return None
        return self.valid_for.after(valid_from) - timedelta(days=1)

    def renew_by(self, valid_until: date, holidays: Collection[date] = ()) -> date | None:
        """Last day to apply for renewal of an approval valid until ``valid_until``, or ``None``
        if no lead time applies. Working days skip weekends and ``holidays``."""
        if self.renew_before is None:
            return None
        return self.renew_before.before(valid_until, holidays)


class Obligation(_Cited):
    """A duty or fact that is not a transfer decision: a yearly report, a filing deadline, how
    remote access counts, a precedent."""

    id: EntryId
    kind: Literal["obligation", "note", "precedent"] = "obligation"
    text: Text
    due: AnnualDate | None = None
    """A yearly deadline (e.g. 15 December)."""
    within: Duration | None = None
    """A deadline counted from an event (e.g. filing within 10 working days)."""
    in_force: Period = Period()


class SoftwareRestriction(_Cited):
    """Who may not supply some kind of vehicle software for some market, from a model year."""

    id: EntryId
    summary: Text
    software: tuple[Name, ...] = Field(min_length=1)
    """Kinds of software, e.g. ``automated_driving``, ``vehicle_connectivity``."""
    developers_tied_to: tuple[CountryRef, ...] = Field(min_length=1)
    """Restricted when a developer is linked to one of these."""
    markets: tuple[CountryRef, ...] = Field(min_length=1)
    """Vehicles sold in these."""
    from_model_year: int = Field(ge=1900, le=2200)
    in_force: Period = Period()


@dataclass(frozen=True, slots=True)
class Profile:
    """What a rulebook makes of data of one category, de-identification state and purpose."""

    classes: Mapping[str, tuple[str, ...]]
    """Legal classes, each with the ids of the memberships that put the data there."""
    selected_by: frozenset[str]
    """Ids of the rules whose ``applies_to`` selects the data."""
    counted_by: frozenset[str]
    """Ids of the rules whose threshold counts its subjects."""


class Rulebook(_Model):
    """One jurisdiction's law, one version."""

    format: Literal[1] = Field(default=1, alias="onshore_rulebook")
    """Version of the file format."""
    jurisdiction: CountryCode
    """``CN``, ``EU``, ``US``, or a user's own."""
    title: Text
    version: Annotated[str, StringConstraints(min_length=1, max_length=40)]
    """The rulebook's own version (quote it in YAML: ``version: "2026.1"``)."""
    effective: date
    """When this version took effect."""
    territory: tuple[CountryCode, ...] = Field(min_length=1)
    """Countries where this law governs the data: a request whose origin is one of them is
    decided by this rulebook, and a destination in them is ``domestic``."""
    boundary: Annotated[str, StringConstraints(min_length=1, strip_whitespace=True)] | None = None
    """A GeoJSON file covering the territory on the map, with a margin (a Polygon or
    MultiPolygon in longitude/latitude; see :mod:`onshore.rulebook.territory`): a path relative
    to the rulebook file, or ``builtin:territory/cn.geojson`` for one onshore ships. Ingest at a
    site under this law refuses clips whose positions lie outside it; without one, positions
    are not checked. A rulebook that ``extends`` another keeps its boundary unless it names its
    own (or ``boundary: null``)."""
    description: str = ""
    country_sets: dict[Name, CountrySet] = {}
    classes: dict[Name, LegalClass] = Field(min_length=1)
    mechanisms: dict[MechanismRef, MechanismTerms] = {}
    rules: dict[EntryId, Rule] = Field(min_length=1)
    obligations: dict[EntryId, Obligation] = {}
    software_restrictions: dict[EntryId, SoftwareRestriction] = {}

    _file: str = PrivateAttr(default="")
    _boundary_file: Path | None = PrivateAttr(default=None)
    _lines: Mapping[str, tuple[str, int | None]] = PrivateAttr(default_factory=dict)
    _countries: dict[tuple[str, ...], frozenset[str]] = PrivateAttr(default_factory=dict)
    _profiles: dict[tuple[str, str, str | None], Profile] = PrivateAttr(default_factory=dict)

    @property
    def key(self) -> str:
        """The rulebook's name in decisions and settings: the jurisdiction in lower case."""
        return self.jurisdiction.lower()

    @property
    def file(self) -> str:
        """Where it was loaded from (a path, or ``builtin:cn``)."""
        return self._file

    @property
    def boundary_file(self) -> Path | None:
        """The ``boundary`` file, found from the file that names it (for a built-in, the
        package's ``builtin`` folder); ``None`` without one, or when the rulebook was not
        read by the loader."""
        return self._boundary_file

    def location(self, entry_id: str) -> tuple[str, int | None] | None:
        """``(file, line)`` where an entry (rule, membership, mechanism...) was defined."""
        return self._lines.get(entry_id)

    @cached_property
    def territory_set(self) -> frozenset[str]:
        """The territory as a set."""
        return frozenset(self.territory)

    def countries(self, refs: tuple[str, ...]) -> frozenset[str]:
        """Country codes for a list of codes and set names."""
        known = self._countries.get(refs)
        if known is None:
            out: set[str] = set()
            for ref in refs:
                if ref in self.country_sets:
                    out.update(self.country_sets[ref].countries)
                else:
                    out.add(ref)
            known = self._countries[refs] = frozenset(out)
        return known

    @cached_property
    def memberships(self) -> dict[str, tuple[LegalClass, Membership]]:
        """Every membership by id, with its class."""
        return {m.id: (c, m) for c in self.classes.values() for m in c.members.values()}

    def classify(
        self, category: str, deid_state: DeidState, purpose: str | None
    ) -> dict[str, tuple[str, ...]]:
        """The legal classes data of ``category`` in ``deid_state`` sent for ``purpose`` is in,
        each with the ids of the memberships that put it there."""
        found: dict[str, tuple[str, ...]] = {}
        for legal in self.classes.values():
            ids = tuple(
                m.id for m in legal.members.values() if m.matches(category, deid_state, purpose)
            )
            if ids:
                found[legal.id] = ids
        return found

    def profile(self, category: str, deid_state: DeidState, purpose: str | None) -> Profile:
        """What this rulebook makes of data of ``category`` in ``deid_state`` sent for
        ``purpose``: its classes and the rules that select and count it (cached: evaluation
        asks this for every item of every request)."""
        key = (category, deid_state, purpose)
        found = self._profiles.get(key)
        if found is None:
            classes = self.classify(category, deid_state, purpose)
            selected = frozenset(
                r.id
                for r in self.rules.values()
                if r.applies_to.selects(category, deid_state, classes)
            )
            counted = frozenset(
                r.id
                for r in self.rules.values()
                if r.count is not None
                and (any(c in classes for c in r.count.of) if r.count.of else r.id in selected)
            )
            found = Profile(MappingProxyType(classes), selected, counted)
            if len(self._profiles) > 10_000:  # purposes are open-ended: keep the cache bounded
                self._profiles.clear()
            self._profiles[key] = found
        return found

    def entry_ids(self) -> list[str]:
        """Every id that decisions can cite, in file order."""
        return [
            *self.memberships,
            *self.mechanisms,
            *self.rules,
            *self.obligations,
            *self.software_restrictions,
        ]

    def closure(self, mechanisms: Collection[str]) -> frozenset[str]:
        """``mechanisms`` plus every mechanism that satisfies one of them, transitively."""
        out = set(mechanisms)
        changed = True
        while changed:
            changed = False
            for terms in self.mechanisms.values():
                if terms.id not in out and any(s in out for s in terms.satisfies):
                    out.add(terms.id)
                    changed = True
        return frozenset(out)
