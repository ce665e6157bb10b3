"""Invariants of rule evaluation, under hypothesis: more subjects never make a transfer less
restricted; splitting a transfer does not dodge a threshold; anonymised Chinese data that is not
important is exempt; the US country-of-concern rule ignores de-identification; and every
threshold of every built-in rule decides exactly at its boundary."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from onshore.rulebook import (
    CATEGORIES,
    DEID_STATES,
    Evaluation,
    TransferRequest,
    builtin,
    builtin_rulebooks,
    evaluate,
)

BOOKS = builtin_rulebooks()
SEVERITY = {"exempt": 0, "require": 1, "no_rule": 2, "prohibited": 3}

# Dates from the day every built-in rule is in force: before 2024-03-22 the CN tiers are not
# encoded at all, and "no rule" is not comparable with a later "require".
days = st.dates(min_value=date(2025, 4, 8), max_value=date(2028, 12, 31))
countries = st.sampled_from(["CN", "US", "DE", "EU", "JP", "HK", "BR", "RU", "NO"])
categories = st.sampled_from(list(CATEGORIES))
states = st.sampled_from(DEID_STATES)
purposes = st.sampled_from(["adas_training", "fleet_analytics", "hd_mapping"])
subjects = st.integers(min_value=0, max_value=2_000_000)
recipients = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["Example Motors Inc.", "Dragon Drive LLC"]),
        "country": countries,
        "linked_to": st.lists(countries, max_size=2),
    }
)


@st.composite
def requests(draw: st.DrawFn, origin: st.SearchStrategy[str] | None = None) -> dict[str, Any]:
    on = draw(days)
    items = draw(
        st.lists(
            st.fixed_dictionaries(
                {"category": categories, "subjects": subjects, "deid_state": states}
            ),
            min_size=1,
            max_size=4,
        )
    )
    history = draw(
        st.lists(
            st.fixed_dictionaries(
                {
                    "date": st.integers(0, 500).map(lambda d: on - timedelta(days=d)),
                    "destination": countries,
                    "category": categories,
                    "subjects": subjects,
                    "recipient": st.sampled_from([None, "Example Motors Inc.", "Other Ltd"]),
                    "deid_state": st.sampled_from([None, *DEID_STATES]),
                }
            ),
            max_size=4,
        )
    )
    return {
        "origin": draw(st.sampled_from(["CN", "EU", "US"]) if origin is None else origin),
        "destination": draw(countries),
        "recipient": draw(recipients),
        "purpose": draw(purposes),
        "date": on,
        "data": items,
        "history": history,
    }


def run(raw: dict[str, Any]) -> Evaluation:
    return evaluate(TransferRequest.model_validate(raw), BOOKS)


def at_least_as_restricted(stricter: Evaluation, looser: Evaluation) -> bool:
    if SEVERITY[stricter.outcome] != SEVERITY[looser.outcome]:
        return SEVERITY[stricter.outcome] > SEVERITY[looser.outcome]
    if stricter.outcome == "require":
        return set(stricter.mechanisms) <= set(looser.mechanisms)
    return True


@settings(max_examples=300, deadline=None)
@given(requests(), st.data())
def test_more_subjects_never_make_a_transfer_less_restricted(
    raw: dict[str, Any], data: st.DataObject
) -> None:
    before = run(raw)
    grown = {
        **raw,
        "data": [dict(i) for i in raw["data"]],
        "history": [dict(h) for h in raw["history"]],
    }
    targets = [("data", i) for i in range(len(raw["data"]))] + [
        ("history", i) for i in range(len(raw["history"]))
    ]
    where, index = data.draw(st.sampled_from(targets))
    grown[where][index]["subjects"] += data.draw(st.integers(1, 2_000_000))
    after = run(grown)
    assert at_least_as_restricted(after, before), (before.reasons, after.reasons)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["CN", "US"]),
    categories,
    states,
    st.integers(1, 1_500_000),
    st.lists(st.integers(0, 100), min_size=1, max_size=5),
    purposes,
)
def test_splitting_a_transfer_does_not_dodge_a_threshold(
    origin: str, category: str, state: str, total: int, weights: list[int], purpose: str
) -> None:
    on = date(2026, 12, 20)
    recipient = {"name": "Dragon Drive LLC", "country": "US", "linked_to": ["CN"]}
    whole = {
        "origin": origin,
        "destination": "US" if origin == "CN" else "CN",
        "recipient": recipient,
        "purpose": purpose,
        "date": on,
        "data": [{"category": category, "subjects": total, "deid_state": state}],
    }
    parts = [total * w // (sum(weights) or 1) for w in weights]
    parts[-1] += total - sum(parts)
    split = {
        **whole,
        "data": [{"category": category, "subjects": parts[-1], "deid_state": state}],
        "history": [
            {
                "date": on - timedelta(days=10 * (n + 1)),
                "destination": whole["destination"],
                "category": category,
                "subjects": p,
                "recipient": recipient["name"],
                "deid_state": state,
                "purpose": purpose,
            }
            for n, p in enumerate(parts[:-1])
        ],
    }
    a, b = run(whole), run(split)
    assert (a.outcome, a.mechanisms) == (b.outcome, b.mechanisms)
    assert a.subjects_in_window == {
        k: v for k, v in b.subjects_in_window.items() if k in a.subjects_in_window
    }


def _not_important(category: str, purpose: str) -> bool:
    return "important_data" not in builtin("cn").classify(category, "anonymized", purpose)


@settings(max_examples=200, deadline=None)
@given(requests(origin=st.just("CN")), st.data())
def test_anonymized_cn_data_that_is_not_important_is_exempt(
    raw: dict[str, Any], data: st.DataObject
) -> None:
    allowed = [c for c in CATEGORIES if _not_important(c, raw["purpose"])]
    raw["data"] = [
        {
            "category": data.draw(st.sampled_from(allowed)),
            "subjects": i["subjects"],
            "deid_state": "anonymized",
        }
        for i in raw["data"]
    ]
    ev = run(raw)
    assert ev.exempt, ev.reasons


@settings(max_examples=200, deadline=None)
@given(requests(origin=st.just("US")), states)
def test_us_rules_ignore_de_identification(raw: dict[str, Any], state: str) -> None:
    base = run(raw)
    relabelled = {**raw, "data": [{**i, "deid_state": state} for i in raw["data"]]}
    other = run(relabelled)
    assert (other.outcome, other.mechanisms, other.rule_ids) == (
        base.outcome,
        base.mechanisms,
        base.rule_ids,
    )


def _boundary_cases() -> list[tuple[str, str, int]]:
    """(rulebook, rule id, count) for every comparison of every counting rule, at the boundary
    value, one below and one above."""
    cases = []
    for book in BOOKS.values():
        for rule in book.rules.values():
            if rule.count is None:
                continue
            for comparison in rule.count.when:
                for delta in (-1, 0, 1):
                    if comparison.value + delta >= 0:
                        cases.append((book.key, rule.id, comparison.value + delta))
    return cases


BOUNDARIES = _boundary_cases()


def test_boundaries_cover_every_threshold_in_rulebook_md() -> None:
    values = {(key, n) for key, _, n in BOUNDARIES}
    for key, value in [
        ("cn", 100_000),
        ("cn", 1_000_000),
        ("cn", 10_000),
        ("us", 1_000),
        ("us", 100_000),
    ]:
        assert {(key, value - 1), (key, value), (key, value + 1)} <= values


@settings(max_examples=len(BOUNDARIES), deadline=None)
@given(st.sampled_from(BOUNDARIES), st.integers(0, 1))
def test_every_threshold_decides_exactly_at_its_boundary(
    case: tuple[str, str, int], split: int
) -> None:
    key, rule_id, count = case
    book = BOOKS[key]
    rule = book.rules[rule_id]
    assert rule.count is not None
    legal = book.classes[rule.applies_to.classes[0]]
    membership = next(iter(legal.members.values()))
    category, state = membership.categories[0], membership.deid_states[0]
    on = date(2026, 12, 31)
    this, earlier = (count, 0) if not split else (count - count // 2, count // 2)
    raw = {
        "origin": book.jurisdiction,
        "destination": "US" if key == "cn" else "CN",
        "recipient": {"name": "Dragon Drive LLC", "country": "US", "linked_to": ["CN"]},
        "purpose": "fleet_analytics",
        "date": on,
        "data": [{"category": category, "subjects": this, "deid_state": state}],
        "history": [
            {
                "date": date(2026, 1, 1),
                "destination": "US" if key == "cn" else "CN",
                "category": category,
                "subjects": earlier,
                "deid_state": state,
            }
        ],
    }
    ev = run(raw)
    matched = rule_id in ev.rule_ids
    assert matched is rule.count.holds(count), (rule_id, count, ev.reasons)
    if matched:
        assert ev.subjects_in_window[rule_id] == count
