"""Which rules match a transfer, and what they require: the rulebook half of a gate decision.

:func:`evaluate` takes a :class:`TransferRequest` (origin, destination, recipient, purpose, date,
the data items, earlier transfers) and returns an :class:`Evaluation`: every matching rule of the
origin's rulebook with its count, threshold, source and confidence, the outcome they combine to,
the mechanisms any one of which would satisfy them all, and reasons a compliance officer can act
on. It does not look at approvals: the gate checks those against ``requirements``.

How rules combine (RULEBOOK.md, "How rules combine"):

- every rule of the origin's rulebook whose conditions hold applies, including rules about who
  the recipient is, wherever the recipient sits;
- the most restrictive outcome wins: ``prohibited`` > ``no_rule`` (some item is covered by no
  rule: no matching permission, so deny) > ``require`` > ``exempt``;
- requirements add up: each requiring rule must be satisfied, and ``mechanisms`` lists those
  that satisfy every one of them at once (a mechanism counts for a rule it ``satisfies``, as a
  CAC security assessment does for a rule that asks for a standard contract);
- de-identification acts only through the rulebook's class memberships: CN and EU personal data
  stops being personal only when ``anonymized``; the US classes hold in every state.

Counting: a rule's threshold counts the subjects of the items it counts in this transfer, plus
those of earlier transfers in its window that it governs (same destination condition; for
``per: counterparty`` the same recipient). Subjects of different items are added up: onshore
cannot tell that two items describe the same persons, so it takes the upper bound. An earlier
transfer whose de-identification state was not recorded counts as ``raw``, and one whose purpose
was not recorded matches every purpose: not knowing never makes data less regulated.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from onshore.rulebook.categories import DeidState
from onshore.rulebook.loader import Rulebooks
from onshore.rulebook.model import (
    CategoryRef,
    Comparison,
    Confidence,
    CountryCode,
    Destination,
    Name,
    Outcome,
    Profile,
    Rule,
    Rulebook,
    SoftwareRestriction,
)
from onshore.rulebook.periods import Window, window_start

__all__ = [
    "DataItem",
    "Decision",
    "Evaluation",
    "ItemClasses",
    "PastTransfer",
    "Recipient",
    "Requirement",
    "RuleMatch",
    "TransferRequest",
    "WindowCount",
    "evaluate",
    "restricted_software",
]

Decision = Literal["exempt", "require", "no_rule", "prohibited"]
"""The combined outcome: ``no_rule`` means no rule covers some item, which the gate denies."""

_SEVERITY: dict[str, int] = {"exempt": 0, "require": 1, "no_rule": 2, "prohibited": 3}


_ISO_TABLE: Final = (
    "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL "
    "BM BN BO BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV "
    "CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD "
    "GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM "
    "IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK "
    "LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW "
    "MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR "
    "PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS "
    "ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY "
    "UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW"
)
ISO_COUNTRIES: Final = frozenset(_ISO_TABLE.split())
"""ISO 3166-1 alpha-2 codes, for the countries a request names: ``EU`` (the Union as one
destination) and ``XK`` (Kosovo, user-assigned) are accepted besides."""


def _country(code: str) -> str:
    if code not in ISO_COUNTRIES and code not in ("EU", "XK"):
        raise ValueError(f"{code!r} is not an ISO 3166-1 alpha-2 country code (or EU)")
    return code


Country = Annotated[CountryCode, AfterValidator(_country)]
"""A country a request names: checked against ISO 3166-1, so a typo is an invalid request,
not a destination no rule happens to match."""


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class Recipient(_Request):
    """Who receives the data."""

    name: Annotated[str, StringConstraints(min_length=1, strip_whitespace=True)]
    country: Country
    """Where the recipient sits (ISO 3166-1 alpha-2)."""
    linked_to: tuple[Country, ...] = ()
    """Countries the recipient is linked to: where its owners, headquarters or controllers are."""


class DataItem(_Request):
    """One kind of data in the transfer."""

    category: CategoryRef
    subjects: int = Field(ge=0)
    """Distinct subjects (vehicles or persons, see the category) in this item."""
    deid_state: DeidState = "raw"


class PastTransfer(_Request):
    """An earlier transfer that counts towards thresholds."""

    date: dt.date
    destination: Country
    category: CategoryRef
    subjects: int = Field(ge=0)
    recipient: str | None = None
    """The recipient's name; unknown counts towards every counterparty."""
    deid_state: DeidState | None = None
    """Unknown counts as ``raw``."""
    purpose: Name | None = None
    """Unknown matches every purpose."""


class TransferRequest(_Request):
    """What would cross a border: the question the gate puts to the rulebooks."""

    origin: CountryCode
    """Jurisdiction (``CN``, ``EU``, ``US``) or country whose law governs the data."""
    destination: Country
    """Where the data would go (a country code, or ``EU``)."""
    recipient: Recipient
    purpose: Name
    date: dt.date
    data: tuple[DataItem, ...] = Field(min_length=1)
    history: tuple[PastTransfer, ...] = ()


@dataclass(frozen=True, slots=True)
class ItemClasses:
    """The legal classes one data item is in, each with the memberships that put it there."""

    category: str
    deid_state: DeidState
    subjects: int
    classes: Mapping[str, tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class WindowCount:
    """A rule's count: subjects in its window, this transfer plus earlier ones, and the
    threshold it was compared with."""

    counted: str
    """What was counted (classes, or the rule's selection)."""
    subject: str
    window: Window
    start: dt.date | None
    end: dt.date
    per: str
    counterparty: str | None
    this_transfer: int
    earlier: int
    comparisons: tuple[Comparison, ...]

    @property
    def total(self) -> int:
        """This transfer plus earlier transfers in the window."""
        return self.this_transfer + self.earlier

    @property
    def threshold(self) -> str:
        """``">= 100,000 and < 1,000,000"``."""
        return " and ".join(str(c) for c in self.comparisons)

    def window_text(self) -> str:
        """The window in words."""
        if self.start is None:
            return "in this transfer alone"
        if self.window == "calendar_year":
            return f"since {self.start.isoformat()}"
        return f"from {self.start.isoformat()} to {self.end.isoformat()}"

    def as_dict(self) -> dict[str, Any]:
        """The count as JSON."""
        return {
            "counted": self.counted,
            "subject": self.subject,
            "window": self.window,
            "start": self.start.isoformat() if self.start else None,
            "end": self.end.isoformat(),
            "per": self.per,
            "counterparty": self.counterparty,
            "this_transfer": self.this_transfer,
            "earlier": self.earlier,
            "total": self.total,
            "threshold": self.threshold,
        }


@dataclass(frozen=True, slots=True)
class RuleMatch:
    """One rule that applies, with what it decides and why."""

    rule: Rule
    rulebook: str
    version: str
    items: tuple[int, ...]
    """Indexes into the request's ``data`` of the items the rule applies to."""
    categories: tuple[str, ...]
    classes: tuple[str, ...]
    """Legal classes of those items that the rule is about."""
    memberships: tuple[str, ...]
    """Ids of the memberships that put the items in those classes."""
    country_sets: tuple[str, ...]
    """Country sets the rule's destination and recipient conditions use."""
    count: WindowCount | None
    reason: str

    @property
    def outcome(self) -> Outcome:
        return self.rule.outcome

    @property
    def mechanisms(self) -> tuple[str, ...]:
        return self.rule.mechanisms

    def as_dict(self) -> dict[str, Any]:
        """The match as JSON (``rules`` in a decision)."""
        return {
            "id": self.rule.id,
            "rulebook": self.rulebook,
            "version": self.version,
            "source": self.rule.source,
            "confidence": self.rule.confidence,
            "outcome": self.rule.outcome,
            "mechanisms": list(self.rule.mechanisms),
            "categories": list(self.categories),
            "classes": list(self.classes),
            "memberships": list(self.memberships),
            "country_sets": list(self.country_sets),
            "count": self.count.as_dict() if self.count else None,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class Requirement:
    """One requiring rule: an approval of any one of ``any_of`` (or of a mechanism that
    satisfies one of them) covering ``categories`` and ``subjects`` satisfies it."""

    rule: str
    any_of: tuple[str, ...]
    """The rule's mechanisms and every mechanism that satisfies one of them."""
    categories: tuple[str, ...]
    subjects: int
    """The volume an approval must cover: the rule's count in its window where it has one,
    else the subjects of the items it applies to in this transfer."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "any_of": list(self.any_of),
            "categories": list(self.categories),
            "subjects": self.subjects,
        }


@dataclass(frozen=True, slots=True)
class Evaluation:
    """What the origin's rulebook says about a transfer. ``outcome`` is the most restrictive
    of the matching rules; ``mechanisms`` are those any one of which satisfies every
    requirement (empty unless ``outcome`` is ``require``)."""

    request: TransferRequest
    rulebook: str
    version: str
    outcome: Decision
    mechanisms: tuple[str, ...]
    requirements: tuple[Requirement, ...]
    matches: tuple[RuleMatch, ...]
    """Every matching rule, most restrictive first."""
    items: tuple[ItemClasses, ...]
    uncovered: tuple[int, ...]
    """Indexes of items no rule covers."""
    reasons: tuple[str, ...]
    confidence: Confidence
    """``unchecked`` if any matching rule or membership behind it is unchecked."""

    @property
    def exempt(self) -> bool:
        return self.outcome == "exempt"

    @property
    def prohibited(self) -> bool:
        return self.outcome == "prohibited"

    @property
    def rule_ids(self) -> tuple[str, ...]:
        return tuple(m.rule.id for m in self.matches)

    @property
    def legal_classes(self) -> tuple[str, ...]:
        """Every legal class some item of the transfer is in."""
        seen: dict[str, None] = {}
        for item in self.items:
            seen.update(dict.fromkeys(item.classes))
        return tuple(seen)

    @property
    def rulebook_versions(self) -> dict[str, str]:
        return {self.rulebook: self.version}

    @property
    def subjects_in_window(self) -> dict[str, int]:
        """Each counting rule's count, by rule id."""
        return {m.rule.id: m.count.total for m in self.matches if m.count is not None}

    def as_dict(self) -> dict[str, Any]:
        """The evaluation as JSON: the rulebook part of a gate decision."""
        return {
            "outcome": self.outcome,
            "exempt": self.exempt,
            "prohibited": self.prohibited,
            "mechanisms": list(self.mechanisms),
            "requirements": [r.as_dict() for r in self.requirements],
            "rules": [m.as_dict() for m in self.matches],
            "legal_classes": list(self.legal_classes),
            "items": [
                {
                    "category": i.category,
                    "deid_state": i.deid_state,
                    "subjects": i.subjects,
                    "classes": {k: list(v) for k, v in i.classes.items()},
                }
                for i in self.items
            ],
            "uncovered": [self.items[i].category for i in self.uncovered],
            "reasons": list(self.reasons),
            "confidence": self.confidence,
            "rulebook_versions": self.rulebook_versions,
            "subjects_in_window": self.subjects_in_window,
        }


def _destination_ok(book: Rulebook, where: Destination, country: str) -> bool:
    domestic = country in book.territory_set
    if where.scope == "abroad" and domestic:
        return False
    if where.scope == "domestic" and not domestic:
        return False
    if where.within and country not in book.countries(where.within):
        return False
    return not (where.not_in and country in book.countries(where.not_in))


def _recipient_ok(book: Rulebook, rule: Rule, request: TransferRequest) -> bool:
    if rule.recipient is None:
        return True
    tied = book.countries(rule.recipient.tied_to)
    r = request.recipient
    return request.destination in tied or r.country in tied or any(c in tied for c in r.linked_to)


def _tied_earlier(
    tied: Collection[str], destination: str, recipient: str | None, current: str
) -> bool:
    """Whether an earlier transfer counts towards a rule about recipients tied to some
    countries: it went to one of them, or to this same recipient (who is tied), or to a
    recipient not recorded (not knowing never makes data less regulated). A transfer to anyone
    else is not one the rule governs (found by QA: earlier transfers to Germany were counted
    towards the US bulk threshold for China)."""
    if destination in tied:
        return True
    return recipient is None or _same_party(recipient, current)


def _same_party(a: str, b: str) -> bool:
    return " ".join(a.casefold().split()) == " ".join(b.casefold().split())


_HistoryKey = tuple[str, DeidState, str | None, str, str | None]
"""category, deid state, purpose, destination, recipient of an earlier transfer."""


class _Context:
    """Per-evaluation state: the request's items with their profiles, history by window."""

    def __init__(self, book: Rulebook, request: TransferRequest) -> None:
        self.book = book
        self.request = request
        self.profiles = tuple(
            book.profile(item.category, item.deid_state, request.purpose) for item in request.data
        )
        self._history: dict[Window, list[tuple[Profile, str, str | None, int, str | None]]] = {}
        self.counts: dict[Hashable, tuple[int, int]] = {}

    def history(self, window: Window) -> list[tuple[Profile, str, str | None, int, str | None]]:
        """Earlier transfers in ``window``, summed by what a rule can tell apart: (profile,
        destination, recipient, subjects, purpose)."""
        found = self._history.get(window)
        if found is None:
            sums: dict[_HistoryKey, int] = {}
            start = window_start(window, self.request.date)
            if start is not None:
                end = self.request.date
                for past in self.request.history:
                    if start <= past.date <= end:
                        key = (
                            past.category,
                            past.deid_state or "raw",
                            past.purpose,
                            past.destination,
                            past.recipient,
                        )
                        sums[key] = sums.get(key, 0) + past.subjects
            found = [
                (self.book.profile(c, s, p), d, r, n, p) for (c, s, p, d, r), n in sums.items()
            ]
            self._history[window] = found
        return found


def _count(ctx: _Context, rule: Rule) -> WindowCount:
    spec = rule.count
    assert spec is not None
    request = ctx.request
    # Tiers of one law (fewer than 100,000 / 100,000 to 1,000,000 / more) count the same thing:
    # count it once.
    key = (spec.of or rule.applies_to, spec.window, spec.per, rule.destination, rule.purposes)
    known = ctx.counts.get(key)
    if known is None:
        known = ctx.counts[key] = _subjects(ctx, rule)
    this, earlier = known
    return WindowCount(
        counted=", ".join(spec.of) if spec.of else rule.applies_to.describe(),
        subject=spec.subject,
        window=spec.window,
        start=window_start(spec.window, request.date),
        end=request.date,
        per=spec.per,
        counterparty=request.recipient.name if spec.per == "counterparty" else None,
        this_transfer=this,
        earlier=earlier,
        comparisons=spec.when,
    )


def _subjects(ctx: _Context, rule: Rule) -> tuple[int, int]:
    """Subjects ``rule`` counts in this transfer, and in earlier transfers in its window."""
    spec = rule.count
    assert spec is not None
    request = ctx.request
    this = sum(
        item.subjects
        for item, profile in zip(request.data, ctx.profiles, strict=True)
        if rule.id in profile.counted_by
    )
    earlier = 0
    for profile, destination, recipient, subjects, purpose in ctx.history(spec.window):
        if rule.id not in profile.counted_by:
            continue
        if rule.purposes and purpose is not None and purpose not in rule.purposes:
            continue
        if not _destination_ok(ctx.book, rule.destination, destination):
            continue
        if rule.recipient is not None and not _tied_earlier(
            ctx.book.countries(rule.recipient.tied_to),
            destination,
            recipient,
            request.recipient.name,
        ):
            continue
        if (
            spec.per == "counterparty"
            and recipient is not None
            and not _same_party(recipient, request.recipient.name)
        ):
            continue
        earlier += subjects
    return this, earlier


def _sets_used(book: Rulebook, rule: Rule) -> tuple[str, ...]:
    refs = (
        *rule.destination.within,
        *rule.destination.not_in,
        *(rule.recipient.tied_to if rule.recipient else ()),
    )
    return tuple(dict.fromkeys(r for r in refs if r in book.country_sets))


def _reason(
    book: Rulebook,
    rule: Rule,
    match_items: str,
    memberships: Sequence[str],
    count: WindowCount | None,
) -> str:
    parts = [f"{rule.id} ({book.key} {book.version}, {rule.confidence}): {rule.summary}"]
    parts.append(f"Applies to {match_items}.")
    for membership_id in memberships:
        membership = book.memberships[membership_id][1]
        if membership.confidence == "unchecked":
            parts.append(
                f"That class rests on an unchecked reading, {membership_id} ({membership.source})."
            )
    for name in _sets_used(book, rule):
        country_set = book.country_sets[name]
        if country_set.confidence == "unchecked":
            parts.append(
                f"It uses the country set {name}, which is unchecked ({country_set.source})."
            )
    if count is not None:
        who = f" to {count.counterparty}" if count.counterparty else ""
        parts.append(
            f"Counted {count.total:,} {count.subject}s of {count.counted}{who} "
            f"{count.window_text()} ({count.this_transfer:,} in this transfer + "
            f"{count.earlier:,} earlier), which is {count.threshold}."
        )
    match rule.outcome:
        case "exempt":
            parts.append("Outcome: exempt, no mechanism needed.")
        case "prohibited":
            parts.append("Outcome: prohibited, no mechanism can allow it.")
        case "require":
            parts.append(f"Outcome: requires one of {', '.join(rule.mechanisms)}.")
    parts.append(f"Source: {rule.source}.")
    if rule.note:
        parts.append(f"Note: {rule.note}")
    return " ".join(parts)


def evaluate(request: TransferRequest, rulebooks: Rulebooks) -> Evaluation:
    """Match ``request`` against the rulebook of its origin. Returns the :class:`Evaluation`;
    raises :class:`RulebookNotFound` if no rulebook governs the origin."""
    book = rulebooks.for_origin(request.origin)
    ctx = _Context(book, request)
    items = tuple(
        ItemClasses(item.category, item.deid_state, item.subjects, profile.classes)
        for item, profile in zip(request.data, ctx.profiles, strict=True)
    )
    matches: list[RuleMatch] = []
    covered: set[int] = set()
    for rule in book.rules.values():
        if not rule.in_force.contains(request.date):
            continue
        if rule.purposes and request.purpose not in rule.purposes:
            continue
        if not _destination_ok(book, rule.destination, request.destination):
            continue
        if not _recipient_ok(book, rule, request):
            continue
        targets = tuple(i for i, p in enumerate(ctx.profiles) if rule.id in p.selected_by)
        if not targets:
            continue
        count = _count(ctx, rule) if rule.count is not None else None
        if count is not None and not all(c.holds(count.total) for c in count.comparisons):
            continue
        covered.update(targets)
        classes: dict[str, None] = {}
        memberships: dict[str, None] = {}
        for i in targets:
            for legal, ids in items[i].classes.items():
                if not rule.applies_to.classes or legal in rule.applies_to.classes:
                    classes[legal] = None
                    memberships.update(dict.fromkeys(ids))
        described = "; ".join(
            f"{items[i].category} ({items[i].subjects:,} subjects, {items[i].deid_state}"
            + (f", {' and '.join(c for c in classes if c in items[i].classes)}" if classes else "")
            + ")"
            for i in targets
        )
        matches.append(
            RuleMatch(
                rule=rule,
                rulebook=book.key,
                version=book.version,
                items=targets,
                categories=tuple(dict.fromkeys(items[i].category for i in targets)),
                classes=tuple(classes),
                memberships=tuple(memberships),
                country_sets=_sets_used(book, rule),
                count=count,
                reason=_reason(book, rule, described, tuple(memberships), count),
            )
        )
    order = {rule_id: n for n, rule_id in enumerate(book.rules)}
    matches.sort(key=lambda m: (-_SEVERITY[m.rule.outcome], order[m.rule.id]))
    uncovered = tuple(i for i in range(len(items)) if i not in covered)
    return _combine(request, book, items, matches, uncovered)


def _combine(
    request: TransferRequest,
    book: Rulebook,
    items: tuple[ItemClasses, ...],
    matches: list[RuleMatch],
    uncovered: tuple[int, ...],
) -> Evaluation:
    requirements = tuple(
        Requirement(
            rule=m.rule.id,
            any_of=_ordered(book, book.closure(m.rule.mechanisms)),
            categories=m.categories,
            subjects=m.count.total if m.count else sum(items[i].subjects for i in m.items),
        )
        for m in matches
        if m.rule.outcome == "require"
    )
    outcome: Decision
    if any(m.rule.outcome == "prohibited" for m in matches):
        outcome = "prohibited"
    elif uncovered:
        outcome = "no_rule"
    elif requirements:
        outcome = "require"
    else:
        outcome = "exempt"

    mechanisms: tuple[str, ...] = ()
    if outcome == "require":
        common = set(requirements[0].any_of)
        for requirement in requirements[1:]:
            common &= set(requirement.any_of)
        mechanisms = _ordered(book, common)

    reasons = [
        _headline(request, book, outcome, mechanisms, requirements, matches, items, uncovered)
    ]
    reasons += [m.reason for m in matches]
    for i in uncovered:
        reasons.append(
            f"No rule of the {book.key} rulebook {book.version} covers {items[i].category} "
            f"({items[i].deid_state}) sent to {request.destination} for {request.purpose}: "
            "denied by default, as there is no matching permission. Check the category, or "
            "add a rule for it to the rulebook."
        )
    unchecked = (
        any(m.rule.confidence == "unchecked" for m in matches)
        or any(
            book.memberships[mid][1].confidence == "unchecked"
            for m in matches
            for mid in m.memberships
        )
        or any(
            book.country_sets[name].confidence == "unchecked"
            for m in matches
            for name in m.country_sets
        )
    )
    return Evaluation(
        request=request,
        rulebook=book.key,
        version=book.version,
        outcome=outcome,
        mechanisms=mechanisms,
        requirements=requirements,
        matches=tuple(matches),
        items=items,
        uncovered=uncovered,
        reasons=tuple(reasons),
        confidence="unchecked" if unchecked else "checked",
    )


def _ordered(book: Rulebook, mechanisms: set[str] | frozenset[str]) -> tuple[str, ...]:
    """Mechanisms in the order the rulebook declares them (weakest first in the built-ins)."""
    declared = [m for m in book.mechanisms if m in mechanisms]
    return (*declared, *sorted(m for m in mechanisms if m not in book.mechanisms))


def _headline(
    request: TransferRequest,
    book: Rulebook,
    outcome: Decision,
    mechanisms: tuple[str, ...],
    requirements: tuple[Requirement, ...],
    matches: list[RuleMatch],
    items: tuple[ItemClasses, ...],
    uncovered: tuple[int, ...],
) -> str:
    route = (
        f"{request.origin} to {request.destination} ({request.recipient.name}, "
        f"{request.purpose}, {request.date.isoformat()}) under the {book.key} rulebook "
        f"{book.version}"
    )
    match outcome:
        case "prohibited":
            ids = ", ".join(m.rule.id for m in matches if m.rule.outcome == "prohibited")
            return f"Prohibited: {route}. No approval can allow it ({ids})."
        case "no_rule":
            what = ", ".join(items[i].category for i in uncovered)
            return f"Denied by default: {route}. No rule covers {what}."
        case "exempt":
            ids = ", ".join(m.rule.id for m in matches)
            return f"Exempt: {route}. No mechanism is needed ({ids})."
        case "require":
            if mechanisms:
                ids = ", ".join(r.rule for r in requirements)
                return (
                    f"Needs an approval: {route}. Any one of {', '.join(mechanisms)} on file "
                    "whose scope covers the origin, the recipient, every category, the purpose, "
                    f"the volume and the date satisfies {ids}."
                )
            each = "; ".join(f"{r.rule}: one of {', '.join(r.any_of)}" for r in requirements)
            return (
                f"Needs several approvals: {route}. No single mechanism satisfies every rule; "
                f"each needs its own: {each}."
            )


def restricted_software(
    rulebooks: Rulebooks,
    *,
    developers_linked_to: Sequence[str],
    market: str,
    model_year: int,
    software: str = "automated_driving",
    on: dt.date | None = None,
) -> list[tuple[Rulebook, SoftwareRestriction]]:
    """Software restrictions that forbid licensing ``software`` whose developers are linked to
    ``developers_linked_to`` for vehicles of ``model_year`` sold in ``market`` (e.g. the US rule
    on China-linked automated-driving software from model year 2027). Empty: none applies."""
    found = []
    for book in rulebooks.values():
        for restriction in book.software_restrictions.values():
            if on is not None and not restriction.in_force.contains(on):
                continue
            if (
                software in restriction.software
                and model_year >= restriction.from_model_year
                and market in book.countries(restriction.markets)
                and any(
                    c in book.countries(restriction.developers_tied_to)
                    for c in developers_linked_to
                )
            ):
                found.append((book, restriction))
    return found
