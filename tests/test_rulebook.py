"""Rule evaluation against the built-in rulebooks, drawn from RULEBOOK.md: every threshold exactly
at, one below and one above its boundary, and the counting windows at their edges."""

from __future__ import annotations

import json
from datetime import date
from typing import Any, get_args

import pytest

import onshore.rulebook as rb
from onshore.rulebook import (
    CATEGORIES,
    MECHANISMS,
    Evaluation,
    TransferRequest,
    builtin,
    builtin_rulebooks,
    evaluate,
    restricted_software,
    shift_working_days,
    window_start,
)
from onshore.rulebook.categories import CategoryId

CONTRACT_OR_CERT = ("cn_standard_contract", "cn_certification", "cn_security_assessment")
ASSESSMENT = ("cn_security_assessment",)

US_PARTNER = {"name": "Example Motors Inc.", "country": "US", "linked_to": []}
CHINA_LINKED = {"name": "Dragon Drive LLC", "country": "US", "linked_to": ["CN"]}


def request(
    origin: str = "CN",
    destination: str = "US",
    data: list[tuple[str, int, str]] | None = None,
    *,
    recipient: dict[str, Any] | None = None,
    purpose: str = "fleet_analytics",
    on: str = "2026-06-15",
    history: list[dict[str, Any]] | None = None,
) -> TransferRequest:
    return TransferRequest.model_validate(
        {
            "origin": origin,
            "destination": destination,
            "recipient": recipient or US_PARTNER,
            "purpose": purpose,
            "date": on,
            "data": [
                {"category": c, "subjects": n, "deid_state": s}
                for c, n, s in (data or [("vehicle_id", 10, "raw")])
            ],
            "history": history or [],
        }
    )


def run(req: TransferRequest) -> Evaluation:
    return evaluate(req, builtin_rulebooks())


# -- the vocabulary ------------------------------------------------------------------------------


def test_category_ids_are_exactly_the_issue_list() -> None:
    assert list(CATEGORIES) == [
        "vehicle_id",
        "trajectory",
        "sensitive_area_geodata",
        "vehicle_flow",
        "outside_video_identifiable",
        "outside_video_masked",
        "cabin_video",
        "biometric",
        "charging",
        "anonymized_motion",
        "model_parameters",
        "aggregate_metrics",
    ]
    assert tuple(CATEGORIES) == get_args(CategoryId)
    assert rb.DEID_STATES == ("raw", "pseudonymized", "anonymized")
    assert list(MECHANISMS) == [
        "cn_security_assessment",
        "cn_standard_contract",
        "cn_certification",
        "eu_adequacy",
        "eu_dpf",
        "eu_scc",
        "eu_bcr",
        "prohibited",
    ]


def test_public_surface() -> None:
    assert sorted(rb.__all__) == sorted(set(rb.__all__))
    for name in rb.__all__:
        assert hasattr(rb, name), name


def test_builtins_load_from_package_data() -> None:
    books = builtin_rulebooks()
    assert list(books) == ["cn", "eu", "us"]
    for book in books.values():
        assert book.file == f"builtin:{book.key}"
        assert book.version == "2026.1"
        for rule in book.rules.values():
            assert rule.source and rule.confidence in ("checked", "unchecked")
    assert books.versions == {"cn": "2026.1", "eu": "2026.1", "us": "2026.1"}


def test_confidence_follows_rulebook_md_marks() -> None:
    cn, us = builtin("cn"), builtin("us")
    assert cn.memberships["cn.class.important.adas_training_data"][1].confidence == "unchecked"
    assert cn.memberships["cn.class.important.model_parameters"][1].confidence == "unchecked"
    assert cn.memberships["cn.class.important.sensitive_areas"][1].confidence == "checked"
    assert cn.obligations["cn.cbdf.standard_contract_filing"].confidence == "unchecked"
    assert cn.obligations["cn.order7.annual_report_deadline"].confidence == "checked"
    assert cn.obligations["cn.order7.annual_report_content"].confidence == "unchecked"
    assert cn.mechanisms["cn_security_assessment"].confidence == "checked"
    assert us.rules["us.doj.geolocation_bulk"].confidence == "checked"
    assert us.country_sets["countries_of_concern"].countries == (
        "CN",
        "HK",
        "MO",
        "CU",
        "IR",
        "KP",
        "RU",
        "VE",
    )


# -- China ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("persons", "outcome", "mechanisms", "rules"),
    [
        (99_999, "exempt", (), {"cn.cbdf.pi_under_100k"}),
        (100_000, "require", CONTRACT_OR_CERT, {"cn.cbdf.pi_100k_to_1m"}),
        (
            100_001,
            "require",
            ASSESSMENT,
            {"cn.cbdf.pi_100k_to_1m", "cn.order7.pi_over_100k_persons"},
        ),
        (
            999_999,
            "require",
            ASSESSMENT,
            {"cn.cbdf.pi_100k_to_1m", "cn.order7.pi_over_100k_persons"},
        ),
        (
            1_000_000,
            "require",
            ASSESSMENT,
            {"cn.cbdf.pi_1m_or_more", "cn.order7.pi_over_100k_persons"},
        ),
        (
            1_000_001,
            "require",
            ASSESSMENT,
            {"cn.cbdf.pi_1m_or_more", "cn.order7.pi_over_100k_persons"},
        ),
    ],
)
def test_cn_non_sensitive_pi_tiers(
    persons: int, outcome: str, mechanisms: tuple[str, ...], rules: set[str]
) -> None:
    ev = run(request(data=[("vehicle_id", persons, "pseudonymized")]))
    assert ev.outcome == outcome
    assert ev.mechanisms == mechanisms
    assert set(ev.rule_ids) == rules
    assert ev.legal_classes == ("personal_information", "non_sensitive_pi")


@pytest.mark.parametrize(
    ("persons", "mechanisms", "rule"),
    [
        (9_999, CONTRACT_OR_CERT, "cn.cbdf.sensitive_under_10k"),
        (10_000, ASSESSMENT, "cn.cbdf.sensitive_10k_or_more"),
        (10_001, ASSESSMENT, "cn.cbdf.sensitive_10k_or_more"),
    ],
)
def test_cn_sensitive_pi_threshold(persons: int, mechanisms: tuple[str, ...], rule: str) -> None:
    ev = run(request(data=[("trajectory", persons, "raw")]))
    assert ev.outcome == "require"
    assert ev.mechanisms == mechanisms
    assert ev.rule_ids == (rule,)
    assert ev.subjects_in_window == {rule: persons}
    [reason] = [m.reason for m in ev.matches]
    assert rule in reason and f"{persons:,}" in reason
    assert ("< 10,000" if persons < 10_000 else ">= 10,000") in reason


def test_cn_issue_example_needs_an_assessment_and_names_count_and_threshold() -> None:
    ev = run(
        request(
            data=[("trajectory", 20_000, "pseudonymized")],
            purpose="adas_training",
            on="2026-11-29",
            history=[
                {
                    "date": "2026-03-01",
                    "destination": "US",
                    "category": "vehicle_id",
                    "subjects": 95_000,
                }
            ],
        )
    )
    assert ev.outcome == "require" and ev.mechanisms == ASSESSMENT
    assert set(ev.rule_ids) == {
        "cn.order7.important_data",
        "cn.order7.pi_over_100k_persons",
        "cn.cbdf.sensitive_10k_or_more",
    }
    assert ev.subjects_in_window["cn.order7.pi_over_100k_persons"] == 115_000
    assert ev.confidence == "unchecked"  # trajectory is important data only by the 2026 reading
    text = " ".join(ev.reasons)
    assert (
        "115,000" in text
        and "> 100,000" in text
        and "cn.class.important.adas_training_data" in text
    )
    decision = ev.as_dict()
    json.dumps(decision)
    assert decision["rulebook_versions"] == {"cn": "2026.1"}
    assert decision["exempt"] is False and decision["prohibited"] is False


@pytest.mark.parametrize(
    ("category", "outcome"),
    [
        ("vehicle_id", "exempt"),
        ("trajectory", "exempt"),
        ("outside_video_masked", "exempt"),
        ("cabin_video", "exempt"),
        ("biometric", "exempt"),
        ("anonymized_motion", "exempt"),
        ("aggregate_metrics", "exempt"),
        ("sensitive_area_geodata", "require"),
        ("vehicle_flow", "require"),
        ("charging", "require"),
        ("outside_video_identifiable", "require"),
        ("model_parameters", "require"),
    ],
)
def test_cn_anonymized_data_is_exempt_unless_important(category: str, outcome: str) -> None:
    ev = run(request(data=[(category, 5_000_000, "anonymized")]))
    assert ev.outcome == outcome
    if outcome == "require":
        assert ev.mechanisms == ASSESSMENT and "important_data" in ev.legal_classes
    else:
        assert ev.rule_ids == ("cn.not_pi_nor_important",)


@pytest.mark.parametrize("category", ["trajectory", "anonymized_motion", "outside_video_masked"])
def test_cn_adas_training_makes_road_data_important_whatever_its_state(category: str) -> None:
    ev = run(request(data=[(category, 1, "anonymized")], purpose="adas_training"))
    assert ev.outcome == "require" and ev.mechanisms == ASSESSMENT
    assert "cn.order7.important_data" in ev.rule_ids and ev.confidence == "unchecked"


def test_cn_aggregate_metrics_are_not_training_data() -> None:
    ev = run(request(data=[("aggregate_metrics", 0, "raw")], purpose="adas_training"))
    assert ev.exempt and ev.confidence == "checked"


def test_cn_domestic_and_hong_kong() -> None:
    assert run(request(destination="CN", data=[("trajectory", 10**6, "raw")])).exempt
    ev = run(request(destination="HK", data=[("trajectory", 10**6, "raw")]))
    assert ev.outcome == "require" and ev.mechanisms == ASSESSMENT


def test_cn_most_restrictive_item_wins() -> None:
    ev = run(
        request(data=[("vehicle_id", 10, "raw"), ("trajectory", 10, "raw"), ("charging", 1, "raw")])
    )
    assert ev.outcome == "require" and ev.mechanisms == ASSESSMENT
    assert [r.rule for r in ev.requirements] == [
        "cn.order7.important_data",
        "cn.cbdf.sensitive_under_10k",
    ]
    assert ev.requirements[1].any_of == CONTRACT_OR_CERT
    assert ev.matches[-1].rule.outcome == "exempt"  # the exemption is listed, and loses


def test_cn_before_the_2024_provisions_nothing_covers_plain_pi() -> None:
    ev = run(request(data=[("vehicle_id", 50, "raw")], on="2024-03-21"))
    assert ev.outcome == "no_rule" and ev.uncovered == (0,) and not ev.mechanisms
    assert "No rule of the cn rulebook" in ev.reasons[-1]
    assert run(request(data=[("vehicle_id", 50, "raw")], on="2024-03-22")).exempt


def _cn_with_history(on: str, history_day: str, destination: str = "US") -> Evaluation:
    return run(
        request(
            data=[("vehicle_id", 50_000, "raw")],
            on=on,
            history=[
                {
                    "date": history_day,
                    "destination": destination,
                    "category": "vehicle_id",
                    "subjects": 60_000,
                }
            ],
        )
    )


@pytest.mark.parametrize(
    ("on", "history_day", "counted"),
    [
        ("2026-01-05", "2025-12-31", False),
        ("2026-01-05", "2026-01-01", True),
        ("2026-12-31", "2026-01-01", True),
        ("2027-01-01", "2026-12-31", False),
        ("2027-01-01", "2027-01-01", True),
        ("2026-06-15", "2026-06-16", False),  # later than the transfer: not history yet
    ],
)
def test_cn_counts_from_1_january(on: str, history_day: str, counted: bool) -> None:
    ev = _cn_with_history(on, history_day)
    if counted:
        assert ev.mechanisms == ASSESSMENT
        assert ev.subjects_in_window["cn.order7.pi_over_100k_persons"] == 110_000
    else:
        assert ev.exempt and ev.subjects_in_window == {"cn.cbdf.pi_under_100k": 50_000}


def test_cn_domestic_history_does_not_count() -> None:
    assert _cn_with_history("2026-06-15", "2026-02-01", destination="CN").exempt
    assert _cn_with_history("2026-06-15", "2026-02-01", destination="DE").mechanisms == ASSESSMENT


def test_cn_history_of_unknown_state_counts_as_raw() -> None:
    history = [{"date": "2026-02-01", "destination": "US", "category": "trajectory", "subjects": 9}]
    ev = run(request(data=[("trajectory", 9_991, "raw")], history=history))
    assert ev.mechanisms == ASSESSMENT
    anonymized = [{**history[0], "deid_state": "anonymized"}]
    ev = run(request(data=[("trajectory", 9_991, "raw")], history=anonymized))
    assert ev.rule_ids == ("cn.cbdf.sensitive_under_10k",)


# -- EU ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("destination", "mechanisms"),
    [
        ("US", ("eu_dpf", "eu_scc", "eu_bcr")),
        ("CN", ("eu_scc", "eu_bcr")),
        ("JP", ("eu_adequacy", "eu_scc", "eu_bcr")),
        ("BR", ("eu_scc", "eu_bcr")),
        ("HK", ("eu_scc", "eu_bcr")),
    ],
)
def test_eu_personal_data_leaving_the_eea(destination: str, mechanisms: tuple[str, ...]) -> None:
    ev = run(request("EU", destination, [("trajectory", 1, "pseudonymized")]))
    assert ev.outcome == "require" and ev.mechanisms == mechanisms
    assert ev.legal_classes == ("personal_data",)
    # whether a country is adequate rests on the unchecked list of adequacy decisions
    uses_list = destination not in ("US", "CN")
    assert ev.confidence == ("unchecked" if uses_list else "checked")
    assert ("country set adequate, which is unchecked" in ev.reasons[1]) is uses_list


@pytest.mark.parametrize("destination", ["EU", "DE", "FR", "NO"])
def test_eu_inside_the_eea_is_not_a_transfer(destination: str) -> None:
    assert run(request("EU", destination, [("trajectory", 10**7, "raw")])).exempt
    assert run(request("DE", destination, [("trajectory", 10**7, "raw")])).rulebook == "eu"


@pytest.mark.parametrize("category", ["trajectory", "cabin_video", "model_parameters"])
def test_eu_anonymized_or_non_personal_data_is_exempt(category: str) -> None:
    ev = run(request("EU", "CN", [(category, 10**7, "anonymized")]))
    assert ev.exempt and ev.rule_ids == ("eu.gdpr.not_personal_data",)


# -- US ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("category", "limit", "rule"),
    [
        ("trajectory", 1_000, "us.doj.geolocation_bulk"),
        ("biometric", 1_000, "us.doj.biometric_bulk"),
        ("vehicle_id", 100_000, "us.doj.identifiers_bulk"),
    ],
)
@pytest.mark.parametrize("delta", [-1, 0, 1])
def test_us_bulk_thresholds_are_more_than(category: str, limit: int, rule: str, delta: int) -> None:
    ev = run(request("US", "US", [(category, limit + delta, "anonymized")], recipient=CHINA_LINKED))
    if delta > 0:
        assert ev.prohibited and ev.rule_ids[0] == rule and not ev.mechanisms
        assert f"{limit + delta:,}" in ev.reasons[1] and f"> {limit:,}" in ev.reasons[1]
    else:
        assert ev.exempt and ev.rule_ids == ("us.no_general_restriction",)


@pytest.mark.parametrize(
    "recipient",
    [
        {"name": "A", "country": "US", "linked_to": ["CN"]},
        {"name": "B", "country": "DE", "linked_to": ["HK"]},
        {"name": "C", "country": "RU", "linked_to": []},
        {"name": "D", "country": "SG", "linked_to": ["MO", "SG"]},
    ],
)
def test_us_reaches_china_linked_recipients_wherever_they_sit(recipient: dict[str, Any]) -> None:
    ev = run(
        request("US", recipient["country"], [("trajectory", 1_001, "raw")], recipient=recipient)
    )
    assert ev.prohibited


def test_us_destination_in_a_country_of_concern_is_enough() -> None:
    ev = run(request("US", "CN", [("trajectory", 1_001, "raw")], recipient=US_PARTNER))
    assert ev.prohibited


def test_us_unlinked_recipient_and_non_covered_data_are_exempt() -> None:
    assert run(request("US", "DE", [("trajectory", 10**7, "raw")])).exempt
    linked = request("US", "CN", [("model_parameters", 10**7, "raw")], recipient=CHINA_LINKED)
    assert run(linked).exempt


def test_us_rule_starts_2025_04_08() -> None:
    data = [("trajectory", 5_000, "raw")]
    assert run(request("US", "CN", data, recipient=CHINA_LINKED, on="2025-04-07")).exempt
    assert run(request("US", "CN", data, recipient=CHINA_LINKED, on="2025-04-08")).prohibited


def _us_with_history(on: str, history_day: str, recipient: str | None = "Dragon Drive LLC") -> bool:
    history = [
        {
            "date": history_day,
            "destination": "US",
            "category": "trajectory",
            "subjects": 500,
            "recipient": recipient,
        }
    ]
    ev = run(
        request(
            "US", "US", [("trajectory", 600, "raw")], recipient=CHINA_LINKED, on=on, history=history
        )
    )
    return ev.prohibited


@pytest.mark.parametrize(
    ("on", "history_day", "counted"),
    [
        ("2026-06-15", "2025-06-15", True),  # 365 days before: still in the trailing 12 months
        ("2026-06-15", "2025-06-14", False),  # 366 days
        ("2028-06-15", "2027-06-15", True),  # 366 days across 29 February 2028
        ("2028-06-15", "2027-06-14", False),  # 367 days
        ("2029-02-28", "2028-02-28", True),  # 366 days
        ("2029-02-28", "2028-02-27", False),
        ("2028-02-29", "2027-02-28", True),  # no 29 February 2027: the window opens the day before
        ("2028-02-29", "2027-02-27", False),
        ("2026-01-01", "2025-12-31", True),  # no calendar-year reset in the US
    ],
)
def test_us_trailing_12_months(on: str, history_day: str, counted: bool) -> None:
    assert _us_with_history(on, history_day) is counted


def test_us_counts_per_counterparty() -> None:
    assert not _us_with_history("2026-06-15", "2026-01-01", recipient="Someone Else Ltd")
    assert _us_with_history("2026-06-15", "2026-01-01", recipient="  dragon DRIVE llc ")
    assert _us_with_history("2026-06-15", "2026-01-01", recipient=None)  # unknown: counted


# -- windows, mechanisms, obligations, software --------------------------------------------------


def test_window_start() -> None:
    assert window_start("calendar_year", date(2026, 12, 31)) == date(2026, 1, 1)
    assert window_start("trailing_12_months", date(2026, 6, 15)) == date(2025, 6, 15)
    assert window_start("trailing_12_months", date(2024, 2, 29)) == date(2023, 2, 28)
    assert window_start("none", date(2026, 6, 15)) is None


def test_assessment_validity_and_extension_deadline() -> None:
    terms = builtin("cn").mechanisms["cn_security_assessment"]
    assert terms.valid_until(date(2026, 1, 1)) == date(2028, 12, 31)
    assert terms.valid_until(date(2024, 2, 29)) == date(2027, 2, 28)
    assert terms.renew_by(date(2028, 12, 31)) == date(2028, 10, 9)  # 60 weekdays before a Sunday
    assert terms.renew_by(date(2028, 12, 31), holidays={date(2028, 10, 10)}) == date(2028, 10, 6)
    assert builtin("cn").mechanisms["cn_standard_contract"].valid_until(date(2026, 1, 1)) is None
    assert shift_working_days(date(2026, 6, 12), 1) == date(2026, 6, 15)  # Friday -> Monday


def test_annual_report_deadline() -> None:
    due = builtin("cn").obligations["cn.order7.annual_report_deadline"].due
    assert due is not None
    assert due.next_on_or_after(date(2026, 12, 15)) == date(2026, 12, 15)
    assert due.next_on_or_after(date(2026, 12, 16)) == date(2027, 12, 15)


@pytest.mark.parametrize(
    ("linked", "year", "restricted"),
    [
        (["CN"], 2027, True),
        (["CN"], 2026, False),
        (["DE"], 2030, False),
        (["RU", "DE"], 2028, True),
    ],
)
def test_china_linked_ads_software_from_model_year_2027(
    linked: list[str], year: int, restricted: bool
) -> None:
    found = restricted_software(
        builtin_rulebooks(), developers_linked_to=linked, market="US", model_year=year
    )
    assert bool(found) is restricted
    if found:
        assert found[0][1].id == "us.bis.connected_vehicles_ads"


def test_unknown_origin_is_an_error() -> None:
    with pytest.raises(rb.RulebookNotFound, match="'JP'"):
        run(request("JP", "US"))


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"data": [{"category": "trajectroy", "subjects": 1}]}, "data.0.category"),
        ({"data": [{"category": "trajectory", "subjects": -1}]}, "data.0.subjects"),
        ({"date": "2026-02-30"}, "date"),
        ({"origin": "china"}, "origin"),
        ({"data": []}, "data"),
    ],
)
def test_invalid_requests_name_the_field(change: dict[str, Any], field: str) -> None:
    base = request().model_dump(mode="json")
    with pytest.raises(ValueError) as caught:
        TransferRequest.model_validate({**base, **change})
    locs = [".".join(map(str, e["loc"])) for e in caught.value.errors()]  # type: ignore[attr-defined]
    assert field in locs
