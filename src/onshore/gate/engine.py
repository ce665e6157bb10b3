"""The gate's decision: may this transfer cross the border, and under which approval.

:func:`decide` (or :meth:`Gate.decide`, which prepares the approvals once for many decisions)
takes a :class:`~onshore.rulebook.TransferRequest`, the rulebooks, the approvals on file and the
earlier transfers, and returns a :class:`Decision`. Default deny: a transfer is allowed only when

- the origin's rulebook finds it ``exempt``, or
- it ``require``\\s a mechanism and one approval on file covers the whole of it (RULEBOOK.md,
  "How rules combine"): an approval of one of the mechanisms that satisfy every requiring rule,
  not revoked, for the same origin and recipient, listing every category in the transfer (those
  exempt on their own included) and the purpose, valid on the transfer's date (never longer
  than its rulebook allows, e.g. 3 years for a CN security assessment, and only while the
  mechanism is in force), and whose
  ``max_subjects`` is at least the volume: each requiring rule's count in its window, this
  transfer included, and the subjects sent under the approval's scope since it became valid.

Prohibited transfers (US precise geolocation to a China-linked recipient, whatever the
de-identification), transfers some item of which no rule covers, and transfers whose rules need
different mechanisms that no single approval satisfies are denied whatever is on file.

Whose rules: the origin's rulebook decides. Its rules already carry what matters about the
destination and the recipient (the US rule on countries of concern, the EU list of adequate
countries), wherever the recipient sits. The destination's own rulebook is not applied to data
that is not its own: the US bulk-data rule, say, protects US persons' data, and applying it to
Chinese data sent to a China-linked US recipient would deny for a reason the law does not give.

Earlier transfers count towards every threshold, so splitting a transfer does not dodge one.
They come from the request itself, from the ``history`` argument, or from a
:data:`HistoryProvider` given to :class:`Gate`: the seam through which a site's ledger supplies
its past transfers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import date
from types import MappingProxyType
from typing import Any, Final

import orjson
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from onshore.errors import InvalidApproval, InvalidRequest, RulebookNotFound, TransferDenied
from onshore.gate.approvals import Approval, approval_terms, effective_valid_until
from onshore.rulebook import (
    Evaluation,
    MechanismTerms,
    PastTransfer,
    Rulebook,
    Rulebooks,
    TransferRequest,
    evaluate,
    window_start,
)
from onshore.rulebook.periods import Window

__all__ = [
    "Decision",
    "Gate",
    "GateRequest",
    "HistoryProvider",
    "RuleRef",
    "decide",
    "parse_request",
]

HistoryProvider = Callable[[TransferRequest, date], Sequence[PastTransfer]]
"""Earlier transfers of the request's origin dated from the given day up to the request's date:
what a site's ledger supplies. The gate asks from the earliest day any count could reach back to
(1 January for CN, 12 months back for the US, the start of the oldest approval it may use)."""

_EXPLAINED: Final = 20
"""Approvals explained one by one in a denial's reasons; more are summed up in one sentence."""


class GateRequest(TransferRequest):
    """A request as ``onshore gate check`` reads it (REQUEST.json): a transfer request, and
    optionally the approvals to check it against. Leaving out ``history`` or ``approvals`` means
    "use the site's": its ledger and its approvals registry."""

    approvals: tuple[Approval, ...] | None = None
    """Approvals to check against instead of the site's registry."""

    @property
    def history_given(self) -> bool:
        """Whether the request states its history (even an empty one)."""
        return "history" in self.model_fields_set


def _field(loc: tuple[int | str, ...]) -> str:
    """``("data", 0, "subjects")`` -> ``data[0].subjects``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _problem(error: ErrorDetails) -> str:
    where = _field(tuple(error["loc"]))
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "json_invalid":
        return f"the request is not valid JSON: {error.get('ctx', {}).get('error', message)}"
    if error["type"] not in ("missing", "extra_forbidden"):
        shown = repr(error["input"])
        message += f" (got {shown if len(shown) <= 60 else shown[:57] + '...'})"
    elif error["type"] == "extra_forbidden":
        message = "no such field"
    return f"request field {where}: {message}" if where else f"request: {message}"


def _plain(value: object) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"cannot encode {type(value).__name__}")


def parse_request(source: bytes | str | Mapping[str, Any]) -> GateRequest:
    """A :class:`GateRequest` from JSON text or a mapping. Raises :class:`InvalidRequest`
    naming the first wrong field (``data[0].subjects``), with the number of others in the hint.

    Validation is strict, as JSON reads: a date is a ``YYYY-MM-DD`` string (not ``0``, which lax
    parsing takes for 1970-01-01), a count is an integer (not ``true`` or ``"20000"``). A
    mapping goes through JSON for the same rules."""
    if isinstance(source, bytes | str):
        text = source
    else:
        try:
            text = orjson.dumps(source, default=_plain)
        except TypeError as exc:
            raise InvalidRequest(f"request: {exc}") from None
    try:
        return GateRequest.model_validate_json(text, strict=True)
    except ValidationError as exc:
        errors = exc.errors()
        hint = None
        if len(errors) > 1:
            hint = f"{len(errors)} problems in all: " + "; ".join(
                _field(tuple(e["loc"])) or "request" for e in errors
            )
        raise InvalidRequest(_problem(errors[0]), hint=hint) from None


@dataclass(frozen=True, slots=True)
class RuleRef:
    """A rule a decision rests on: its id, source and confidence."""

    id: str
    source: str
    confidence: str

    def as_dict(self) -> dict[str, str]:
        return {"id": self.id, "source": self.source, "confidence": self.confidence}


@dataclass(frozen=True, slots=True)
class Decision:
    """What the gate decided about one transfer, why, and under which approval. This record is
    what the ledger stores and what ``gate check --json`` prints (:meth:`as_dict`)."""

    allowed: bool
    exempt: bool
    """The origin's rulebook needs no mechanism for it."""
    prohibited: bool
    """No approval can allow it."""
    mechanisms: tuple[str, ...]
    """Approval types any one of which, covering the transfer, would allow it (empty when exempt
    or prohibited)."""
    rules: tuple[RuleRef, ...]
    """The matching rules, most restrictive first."""
    reasons: tuple[str, ...]
    """Sentences a compliance officer can act on: the verdict first, then each rule with its
    threshold and count, then why each approval on file does or does not cover the transfer."""
    approval: Approval | None
    """The approval the transfer is allowed under, if one was needed."""
    rulebook_versions: Mapping[str, str]
    subjects_in_window: Mapping[str, int]
    """Each counting rule's count (this transfer plus earlier ones in its window), by rule id."""
    evaluation: Evaluation = field(repr=False, compare=False)
    """What the origin's rulebook said, in full (requirements, items, classes)."""

    @property
    def request(self) -> TransferRequest:
        """The request decided, with the earlier transfers that were counted."""
        return self.evaluation.request

    def as_dict(self) -> dict[str, Any]:
        """The decision as JSON, in the format of issue 4."""
        return {
            "allowed": self.allowed,
            "exempt": self.exempt,
            "prohibited": self.prohibited,
            "mechanisms": list(self.mechanisms),
            "rules": [r.as_dict() for r in self.rules],
            "reasons": list(self.reasons),
            "approval": self.approval.ref() if self.approval is not None else None,
            "rulebook_versions": dict(self.rulebook_versions),
            "subjects_in_window": dict(self.subjects_in_window),
        }

    def denial(self) -> TransferDenied:
        """The error a transfer raises when this decision denies it."""
        return TransferDenied(self.reasons[0], hint=_denial_hint(self), decision=self)


def _denial_hint(decision: Decision) -> str:
    if decision.prohibited:
        return "no approval can allow it; send less, or data the rule does not cover"
    if decision.mechanisms:
        return f"put one of {', '.join(decision.mechanisms)} on file that covers it"
    return "see the reasons: onshore gate check REQUEST.json"


def _party(name: str) -> str:
    """Recipients are compared as a person would: ignoring case and repeated spaces."""
    return " ".join(name.casefold().split())


@dataclass(frozen=True, slots=True)
class _Candidate:
    """An approval prepared for matching: its scope as sets, its effective validity."""

    approval: Approval
    book: str | None
    """Key of the rulebook governing its origin; ``None`` if none does."""
    refused: str | None
    """Why the rulebooks refuse it, if they do (it then covers nothing)."""
    terms: MechanismTerms | None
    recipient: str
    categories: frozenset[str]
    purposes: frozenset[str]
    valid_until: date | None

    @classmethod
    def of(cls, approval: Approval, rulebooks: Rulebooks) -> _Candidate:
        key: str | None = None
        terms: MechanismTerms | None = None
        refused = None
        try:
            book, terms = approval_terms(approval, rulebooks)
            key = book.key
        except InvalidApproval as exc:
            refused = str(exc)
            # filed under its origin's rulebook, if one exists, so denials explain it
            with suppress(RulebookNotFound):
                key = rulebooks.for_origin(approval.origin).key
        return cls(
            approval=approval,
            book=key,
            refused=refused,
            terms=terms,
            recipient=_party(approval.recipient),
            categories=frozenset(approval.categories),
            purposes=frozenset(approval.purposes),
            valid_until=effective_valid_until(approval, terms),
        )

    @property
    def label(self) -> str:
        a = self.approval
        return f"Approval {a.id} ({a.type}" + (f", {a.reference})" if a.reference else ")")


@dataclass(frozen=True, slots=True)
class _Need:
    """What an approval must cover for one request: derived once, checked per approval."""

    request: TransferRequest
    book: Rulebook
    mechanisms: tuple[str, ...]
    categories: frozenset[str]
    """Every category in the transfer: an approval must list them all."""
    volume: int
    """The largest requiring rule's count."""
    volume_rule: str
    volume_text: str
    this_transfer: int
    """Subjects of the items that need a mechanism, in this transfer."""


def _needs(evaluation: Evaluation, book: Rulebook) -> _Need:
    categories: set[str] = set()
    volume, volume_rule, volume_text = -1, "", ""
    by_rule = {m.rule.id: m for m in evaluation.matches}
    for requirement in evaluation.requirements:
        categories.update(requirement.categories)
        if requirement.subjects > volume:
            volume, volume_rule = requirement.subjects, requirement.rule
            count = by_rule[requirement.rule].count
            if count is not None:
                volume_text = (
                    f"{requirement.rule} counts {count.total:,} {count.subject}s "
                    f"{count.window_text()} ({count.this_transfer:,} in this transfer + "
                    f"{count.earlier:,} earlier)"
                )
            else:
                volume_text = f"{requirement.rule} applies to {volume:,} subjects in this transfer"
    request = evaluation.request
    this = sum(item.subjects for item in request.data if item.category in categories)
    # An approval covers a transfer only if it lists every category in it, those exempt on
    # their own included (RULEBOOK.md, "How rules combine"): what the regulator approved is
    # the whole of what was described to it.
    present = {item.category for item in request.data}
    return _Need(
        request=request,
        book=book,
        mechanisms=evaluation.mechanisms,
        categories=frozenset(categories | present),
        volume=max(volume, 0),
        volume_rule=volume_rule,
        volume_text=volume_text,
        this_transfer=this,
    )


def _gap(candidate: _Candidate, need: _Need) -> str | None:
    """Why ``candidate`` does not cover the transfer, as a sentence; ``None`` if it does."""
    a = candidate.approval
    request = need.request
    day = request.date
    if candidate.refused is not None:
        return f"{candidate.label} covers nothing: {candidate.refused}."
    if a.revoked_at is not None:
        why = f" ({a.revoke_reason})" if a.revoke_reason else ""
        return f"{candidate.label} was revoked on {a.revoked_at.date().isoformat()}{why}."
    if a.type not in need.mechanisms:
        return (
            f"{candidate.label} is not of a type this transfer needs "
            f"(one of {', '.join(need.mechanisms)})."
        )
    if candidate.terms is not None and not candidate.terms.in_force.contains(day):
        return f"{candidate.label}: the mechanism {a.type} is not in force on {day.isoformat()}."
    if a.origin not in (request.origin, need.book.jurisdiction):
        return f"{candidate.label} covers data from {a.origin}, not from {request.origin}."
    if candidate.recipient != _party(request.recipient.name):
        return (
            f"{candidate.label} is for recipient {a.recipient!r}, not {request.recipient.name!r}."
        )
    if request.purpose not in candidate.purposes:
        return (
            f"{candidate.label} covers the purposes {', '.join(a.purposes)}, not {request.purpose}."
        )
    missing = sorted(need.categories - candidate.categories)
    if missing:
        return (
            f"{candidate.label} does not cover the categories {', '.join(missing)} "
            f"(it covers {', '.join(a.categories)})."
        )
    if day < a.valid_from:
        return f"{candidate.label} is valid only from {a.valid_from.isoformat()}."
    if candidate.valid_until is not None and day > candidate.valid_until:
        capped = ""
        if a.valid_to is None or candidate.valid_until < a.valid_to:
            assert candidate.terms is not None and candidate.terms.valid_for is not None
            capped = f", {candidate.terms.valid_for} after it took effect as its rulebook says"
        return f"{candidate.label} expired on {candidate.valid_until.isoformat()}{capped}."
    if a.max_subjects is not None:
        if need.volume > a.max_subjects:
            return (
                f"{candidate.label} covers at most {a.max_subjects:,} subjects, and "
                f"{need.volume_text}."
            )
        earlier = _sent_under(candidate, need)
        if need.this_transfer + earlier > a.max_subjects:
            return (
                f"{candidate.label} covers at most {a.max_subjects:,} subjects, and "
                f"{need.this_transfer + earlier:,} would have been sent within its scope since "
                f"{a.valid_from.isoformat()} ({need.this_transfer:,} in this transfer + "
                f"{earlier:,} earlier)."
            )
    return None


def _sent_under(candidate: _Candidate, need: _Need) -> int:
    """Subjects sent abroad earlier within the approval's scope (its categories, recipient and
    purposes, since it became valid): what a split transfer would otherwise hide from its
    ``max_subjects``. An earlier transfer whose recipient or purpose was not recorded counts."""
    request = need.request
    start, end = candidate.approval.valid_from, request.date
    territory = need.book.territory_set
    total = 0
    for past in request.history:
        if (
            start <= past.date <= end
            and past.category in candidate.categories
            and past.destination not in territory
            and (past.recipient is None or _party(past.recipient) == candidate.recipient)
            and (past.purpose is None or past.purpose in candidate.purposes)
        ):
            total += past.subjects
    return total


def _mechanism_rank(need: _Need) -> Callable[[_Candidate], tuple[int, date, str]]:
    order = {m: n for n, m in enumerate(need.mechanisms)}
    return lambda c: (order.get(c.approval.type, len(order)), c.approval.valid_from, c.approval.id)


class Gate:
    """The gate for one set of rulebooks and approvals: prepares the approvals once (their
    effective validity, their scope as sets) and decides request after request.

    ``history``, when given, supplies earlier transfers for requests that do not state their
    own (see :data:`HistoryProvider`): the seam through which a site's ledger is plugged in.
    """

    def __init__(
        self,
        rulebooks: Rulebooks,
        approvals: Iterable[Approval] = (),
        *,
        history: HistoryProvider | None = None,
    ) -> None:
        self.rulebooks = rulebooks
        self.history = history
        self._candidates: dict[str | None, list[_Candidate]] = {}
        self._windows: dict[str, tuple[Window, ...]] = {}
        for approval in approvals:
            candidate = _Candidate.of(approval, rulebooks)
            self._candidates.setdefault(candidate.book, []).append(candidate)

    @property
    def approvals(self) -> tuple[Approval, ...]:
        return tuple(c.approval for cs in self._candidates.values() for c in cs)

    def _book(self, request: TransferRequest) -> Rulebook:
        try:
            return self.rulebooks.for_origin(request.origin)
        except RulebookNotFound as exc:
            raise InvalidRequest(f"request field origin: {exc.message}", hint=exc.hint) from None

    def since(self, request: TransferRequest) -> date:
        """The earliest day an earlier transfer can count for ``request``: the start of the
        widest counting window of its origin's rulebook, or of the oldest approval it could
        use, whichever is earlier. Raises :class:`InvalidRequest` for an unknown origin."""
        book = self._book(request)
        windows = self._windows.get(book.key)
        if windows is None:
            windows = self._windows[book.key] = tuple(
                {r.count.window for r in book.rules.values() if r.count is not None}
            )
        day = request.date
        for window in windows:
            start = window_start(window, request.date)
            if start is not None and start < day:
                day = start
        for candidate in self._candidates.get(book.key, ()):
            day = min(day, candidate.approval.valid_from)
        return day

    def decide(self, request: TransferRequest, history: Sequence[PastTransfer] = ()) -> Decision:
        """Decide ``request``. Earlier transfers counted: the request's own ``history`` if it
        states one, else what the gate's history provider returns, plus ``history``. Raises
        :class:`InvalidRequest` if no rulebook governs the request's origin.
        """
        book = self._book(request)
        past: Sequence[PastTransfer] = request.history
        known = "history" in request.model_fields_set or bool(history)
        if "history" not in request.model_fields_set and self.history is not None:
            past = (*past, *self.history(request, self.since(request)))
            known = True
        if history:
            past = (*past, *history)
        if past is not request.history:
            request = request.model_copy(update={"history": tuple(past)})
        notes: tuple[str, ...] = ()
        if not known:
            notes = (
                "No record of earlier transfers was given, so every count covers this transfer "
                "alone; earlier transfers in a counting window would raise it.",
            )
        return self._decide(evaluate(request, self.rulebooks), book, notes)

    def _decide(self, evaluation: Evaluation, book: Rulebook, notes: tuple[str, ...]) -> Decision:
        rules = tuple(
            RuleRef(m.rule.id, m.rule.source, m.rule.confidence) for m in evaluation.matches
        )
        versions = MappingProxyType({book.key: book.version})
        counts = MappingProxyType(evaluation.subjects_in_window)
        gaps: list[str] = []  # why each approval looked at does not cover the transfer

        def made(allowed: bool, verdict: str, approval: Approval | None = None) -> Decision:
            return Decision(
                allowed=allowed,
                exempt=evaluation.exempt,
                prohibited=evaluation.prohibited,
                mechanisms=evaluation.mechanisms,
                rules=rules,
                reasons=(verdict, *evaluation.reasons, *gaps, *(notes if counts else ())),
                approval=approval,
                rulebook_versions=versions,
                subjects_in_window=counts,
                evaluation=evaluation,
            )

        match evaluation.outcome:
            case "exempt":
                return made(True, "Allowed: the transfer is exempt, no approval is needed.")
            case "prohibited":
                return made(False, "Denied: the transfer is prohibited; no approval can allow it.")
            case "no_rule":
                return made(
                    False,
                    f"Denied by default: no rule of the {book.key} rulebook {book.version} "
                    "covers every item, and without a matching permission nothing leaves.",
                )
        if not evaluation.mechanisms:
            return made(
                False,
                "Denied: its rules need different mechanisms and no single approval satisfies "
                "them all; send the items separately, each under an approval that covers it.",
            )
        need = _needs(evaluation, book)
        candidates = sorted(self._candidates.get(book.key, ()), key=_mechanism_rank(need))
        for candidate in candidates:
            gap = _gap(candidate, need)
            if gap is None:
                return made(True, _allowed(candidate, need), candidate.approval)
            if len(gaps) < _EXPLAINED:
                gaps.append(gap)
        others = len(candidates) - len(gaps)
        if others:
            gaps.append(f"{others} more approval(s) on file do not cover it either.")
        return made(False, _denied(need, len(candidates)))


def _scope(need: _Need) -> str:
    request = need.request
    return (
        f"{request.origin} data to {request.recipient.name} for {request.purpose} (categories "
        f"{', '.join(sorted(need.categories))}) on {request.date.isoformat()}"
    )


def _allowed(candidate: _Candidate, need: _Need) -> str:
    a = candidate.approval
    until = candidate.valid_until.isoformat() if candidate.valid_until else "until revoked"
    limit = f" for up to {a.max_subjects:,} subjects" if a.max_subjects is not None else ""
    label = candidate.label[0].lower() + candidate.label[1:]
    return (
        f"Allowed under {label}, valid {a.valid_from.isoformat()} to {until}{limit}: it "
        f"covers {_scope(need)}, and the volume, as {need.volume_text}."
    )


def _denied(need: _Need, on_file: int) -> str:
    if on_file == 0:
        found = f"no approval for {need.book.key} data is on file"
    elif on_file == 1:
        found = f"the one approval on file for {need.book.key} data does not"
    else:
        found = f"none of the {on_file} approvals on file for {need.book.key} data does"
    return (
        f"Denied: it needs an approval of type {' or '.join(need.mechanisms)} that covers "
        f"{_scope(need)}, and at least {need.volume:,} subjects, as {need.volume_text}; "
        f"{found}."
    )


def decide(
    request: TransferRequest,
    rulebooks: Rulebooks,
    approvals: Iterable[Approval] = (),
    history: Sequence[PastTransfer] = (),
) -> Decision:
    """Decide one transfer: :meth:`Gate.decide` with these approvals and earlier transfers
    (added to the request's own ``history``). Raises :class:`InvalidRequest` if no rulebook
    governs the request's origin."""
    return Gate(rulebooks, approvals).decide(request, history)
