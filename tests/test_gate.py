"""Gate decisions against the built-in rulebooks: default deny, the approval that covers a
transfer and every way one fails to (expired, revoked, another recipient, a missing category,
another purpose, too many subjects, not yet valid), the US prohibition whatever the
de-identification, exempt transfers, the history that counts, invalid requests naming their
field; and, under hypothesis, that no sequence of approvals, revocations and dates moves Chinese
important data abroad without an unexpired security assessment covering it, and that splitting a
transfer dodges neither a threshold nor an approval's volume."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

import onshore.gate as gate_pkg
from onshore.errors import InvalidRequest, TransferDenied
from onshore.gate import Approval, Decision, Gate, GateRequest, decide, parse_request
from onshore.rulebook import (
    PastTransfer,
    TransferRequest,
    builtin,
    builtin_rulebooks,
    window_start,
)

BOOKS = builtin_rulebooks()
CN = builtin("cn")
PARTNER = {"name": "Example Motors Inc.", "country": "US", "linked_to": []}
CHINA_LINKED = {"name": "Dragon Drive LLC", "country": "US", "linked_to": ["CN"]}

ISSUE_REQUEST: dict[str, Any] = {
    "origin": "CN",
    "destination": "US",
    "recipient": {"name": "Example Motors Inc.", "country": "US", "linked_to": []},
    "purpose": "adas_training",
    "date": "2026-11-29",
    "data": [{"category": "trajectory", "subjects": 20000, "deid_state": "pseudonymized"}],
    "history": [
        {"date": "2026-03-01", "destination": "US", "category": "vehicle_id", "subjects": 95000}
    ],
    "approvals": [
        {
            "id": "A1",
            "type": "cn_security_assessment",
            "origin": "CN",
            "recipient": "Example Motors Inc.",
            "categories": ["trajectory"],
            "purposes": ["adas_training"],
            "max_subjects": 100000,
            "valid_from": "2026-01-01",
            "valid_to": "2028-12-31",
            "reference": "CAC-2026-001",
        }
    ],
}


def request(
    origin: str = "CN",
    destination: str = "US",
    data: Sequence[tuple[str, int, str]] = (("trajectory", 20_000, "pseudonymized"),),
    *,
    recipient: dict[str, Any] | None = None,
    purpose: str = "adas_training",
    on: str = "2026-11-29",
    history: list[dict[str, Any]] | None = None,
) -> GateRequest:
    raw: dict[str, Any] = {
        "origin": origin,
        "destination": destination,
        "recipient": recipient or PARTNER,
        "purpose": purpose,
        "date": on,
        "data": [{"category": c, "subjects": n, "deid_state": s} for c, n, s in data],
    }
    if history is not None:
        raw["history"] = history
    return parse_request(raw)


def approval(**changes: Any) -> Approval:
    base: dict[str, Any] = {
        "id": "A1",
        "type": "cn_security_assessment",
        "origin": "CN",
        "recipient": "Example Motors Inc.",
        "categories": ["trajectory"],
        "purposes": ["adas_training"],
        "max_subjects": 100_000,
        "valid_from": "2026-01-01",
        "valid_to": "2028-12-31",
        "reference": "CAC-2026-001",
    }
    return Approval.model_validate({**base, **changes})


def test_public_surface() -> None:
    assert all(hasattr(gate_pkg, name) for name in gate_pkg.__all__)
    assert sorted(gate_pkg.__all__) == sorted(set(gate_pkg.__all__))


# -- the issue's example -------------------------------------------------------------------------


def test_issue_example_is_denied_as_the_count_exceeds_the_assessed_scale() -> None:
    req = parse_request(json.dumps(ISSUE_REQUEST))
    assert req.approvals is not None and req.history_given
    decision = decide(req, BOOKS, req.approvals)
    out = decision.as_dict()
    assert list(out) == [
        "allowed",
        "exempt",
        "prohibited",
        "mechanisms",
        "rules",
        "reasons",
        "approval",
        "rulebook_versions",
        "subjects_in_window",
    ]
    assert out["allowed"] is False and out["exempt"] is False and out["prohibited"] is False
    assert out["mechanisms"] == ["cn_security_assessment"]
    assert out["approval"] is None
    assert out["rulebook_versions"] == {"cn": "2026.1"}
    assert out["subjects_in_window"] == {
        "cn.order7.pi_over_100k_persons": 115_000,
        "cn.cbdf.sensitive_10k_or_more": 20_000,
    }
    assert {r["id"] for r in out["rules"]} == {
        "cn.order7.important_data",
        "cn.order7.pi_over_100k_persons",
        "cn.cbdf.sensitive_10k_or_more",
    }
    assert all(set(r) == {"id", "source", "confidence"} for r in out["rules"])
    assert out["reasons"][0].startswith("Denied: it needs an approval of type cn_security")
    [gap] = [r for r in out["reasons"] if r.startswith("Approval A1")]
    assert "at most 100,000" in gap and "115,000" in gap
    assert "cn.order7.pi_over_100k_persons" in gap and "95,000 earlier" in gap
    json.dumps(out)


def test_issue_example_with_a_larger_scale_is_allowed_under_it() -> None:
    raw = json.loads(json.dumps(ISSUE_REQUEST))
    raw["approvals"][0]["max_subjects"] = 200_000
    req = parse_request(raw)
    decision = decide(req, BOOKS, req.approvals or ())
    assert decision.allowed and not decision.exempt
    assert decision.as_dict()["approval"] == {
        "id": "A1",
        "type": "cn_security_assessment",
        "reference": "CAC-2026-001",
    }
    assert decision.reasons[0].startswith("Allowed under approval A1")
    assert "2028-12-31" in decision.reasons[0] and "115,000" in decision.reasons[0]


# -- CN: raw and pseudonymised trajectories, below and above the thresholds ----------------------


def test_cn_trajectory_with_a_covering_assessment_is_allowed() -> None:
    decision = decide(request(history=[]), BOOKS, [approval()])
    assert decision.allowed and decision.approval == approval()


def test_cn_default_deny_without_approvals() -> None:
    decision = decide(request(history=[]), BOOKS)
    assert not decision.allowed and decision.mechanisms == ("cn_security_assessment",)
    assert "no approval for cn data is on file" in decision.reasons[0]
    assert decision.denial().exit_code == 10
    assert isinstance(decision.denial(), TransferDenied)
    assert decision.denial().decision is decision


@pytest.mark.parametrize(
    ("change", "on", "data", "purpose", "recipient", "phrase"),
    [
        ({"valid_to": "2026-06-30"}, "2026-07-01", None, None, None, "expired on 2026-06-30"),
        ({"valid_from": "2027-01-01"}, None, None, None, None, "valid only from 2027-01-01"),
        ({"recipient": "Other Motors"}, None, None, None, None, "is for recipient 'Other Motors'"),
        (
            {},
            None,
            [("trajectory", 20_000, "raw"), ("vehicle_flow", 10, "raw")],
            None,
            None,
            "does not cover the categories vehicle_flow",
        ),
        ({}, None, None, "hd_mapping", None, "not hd_mapping"),
        ({}, None, [("trajectory", 100_001, "raw")], None, None, "covers at most 100,000"),
        ({"type": "cn_standard_contract"}, None, None, None, None, "not of a type"),
        ({"origin": "EU", "type": "eu_scc"}, None, None, None, None, "no approval for cn data"),
        ({}, "2029-01-01", None, None, None, "expired on 2028-12-31"),
    ],
)
def test_cn_approvals_that_do_not_cover_the_transfer(
    change: dict[str, Any],
    on: str | None,
    data: list[tuple[str, int, str]] | None,
    purpose: str | None,
    recipient: dict[str, Any] | None,
    phrase: str,
) -> None:
    req = request(
        data=data or [("trajectory", 20_000, "pseudonymized")],
        on=on or "2026-11-29",
        purpose=purpose or "adas_training",
        recipient=recipient,
        history=[],
    )
    decision = decide(req, BOOKS, [approval(**change)])
    assert not decision.allowed and decision.approval is None
    assert decision.reasons[0].startswith("Denied")
    assert phrase in " ".join(decision.reasons), decision.reasons


def test_an_approval_must_cover_every_category_even_those_exempt_on_their_own() -> None:
    # RULEBOOK.md, "How rules combine": the approval's scope covers every category present.
    alone = decide(request(data=[("aggregate_metrics", 500, "anonymized")], history=[]), BOOKS)
    assert alone.allowed and alone.exempt
    mixed = request(
        data=[("trajectory", 2_000, "pseudonymized"), ("aggregate_metrics", 500, "anonymized")],
        history=[],
    )
    narrow = decide(mixed, BOOKS, [approval()])
    assert not narrow.allowed
    assert "does not cover the categories aggregate_metrics" in " ".join(narrow.reasons)
    wide = approval(categories=["trajectory", "aggregate_metrics"])
    assert decide(mixed, BOOKS, [wide]).allowed


def test_revoked_assessment_covers_nothing() -> None:
    revoked = approval(revoked_at=datetime(2026, 5, 1, tzinfo=UTC), revoke_reason="superseded")
    decision = decide(request(history=[]), BOOKS, [revoked])
    assert not decision.allowed
    assert "Approval A1 (cn_security_assessment, CAC-2026-001) was revoked on 2026-05-01" in (
        " ".join(decision.reasons)
    )


def test_assessment_validity_is_capped_at_three_years_whatever_it_states() -> None:
    long = approval(valid_from="2026-03-01", valid_to="2035-12-31")
    assert decide(request(on="2029-02-28", history=[]), BOOKS, [long]).allowed
    decision = decide(request(on="2029-03-01", history=[]), BOOKS, [long])
    assert not decision.allowed
    assert "expired on 2029-02-28, 3 years after it took effect" in " ".join(decision.reasons)
    open_ended = approval(valid_from="2026-03-01", valid_to=None)
    assert not decide(request(on="2029-03-01", history=[]), BOOKS, [open_ended]).allowed


def test_recipient_names_compare_as_people_read_them() -> None:
    sloppy = approval(recipient="  example   MOTORS inc. ")
    assert decide(request(history=[]), BOOKS, [sloppy]).allowed


@pytest.mark.parametrize(
    ("data", "purpose", "outcome", "mechanisms"),
    [
        ([("vehicle_id", 99_999, "raw")], "fleet_analytics", "exempt", ()),
        (
            [("vehicle_id", 100_000, "pseudonymized")],
            "fleet_analytics",
            "require",
            ("cn_standard_contract", "cn_certification", "cn_security_assessment"),
        ),
        (
            [("trajectory", 9_999, "raw")],
            "fleet_analytics",
            "require",
            ("cn_standard_contract", "cn_certification", "cn_security_assessment"),
        ),
        (
            [("trajectory", 10_000, "raw")],
            "fleet_analytics",
            "require",
            ("cn_security_assessment",),
        ),
        (
            [("trajectory", 50, "pseudonymized")],
            "adas_training",
            "require",
            ("cn_security_assessment",),
        ),
        ([("trajectory", 10**6, "anonymized")], "fleet_analytics", "exempt", ()),
        (
            [("anonymized_motion", 10, "anonymized")],
            "adas_training",
            "require",
            ("cn_security_assessment",),
        ),
        ([("aggregate_metrics", 10**6, "anonymized")], "adas_training", "exempt", ()),
    ],
)
def test_cn_thresholds_without_approvals(
    data: list[tuple[str, int, str]], purpose: str, outcome: str, mechanisms: tuple[str, ...]
) -> None:
    decision = decide(request(data=data, purpose=purpose, history=[]), BOOKS)
    assert decision.allowed is (outcome == "exempt")
    assert decision.exempt is (outcome == "exempt")
    assert decision.mechanisms == mechanisms
    assert decision.approval is None
    if outcome == "exempt":
        assert decision.reasons[0] == "Allowed: the transfer is exempt, no approval is needed."


def test_cn_below_the_assessment_threshold_a_contract_is_enough_and_the_weaker_is_used() -> None:
    contract = approval(id="C1", type="cn_standard_contract", purposes=["fleet_analytics"])
    assessment = approval(id="S1", purposes=["fleet_analytics"])
    req = request(data=[("trajectory", 9_999, "raw")], purpose="fleet_analytics", history=[])
    decision = decide(req, BOOKS, [assessment, contract])
    assert decision.allowed and decision.approval is not None
    assert decision.approval.id == "C1"  # the rulebook lists the weakest first
    assert decide(req, BOOKS, [assessment]).allowed  # an assessment satisfies a contract's rule
    above = request(data=[("trajectory", 10_000, "raw")], purpose="fleet_analytics", history=[])
    decision = decide(above, BOOKS, [contract])
    assert not decision.allowed and "is not of a type this transfer needs" in decision.reasons[-1]


def test_cn_certification_counts_only_once_in_force() -> None:
    cert = approval(type="cn_certification", purposes=["fleet_analytics"], valid_from="2025-01-01")
    req = {"data": [("trajectory", 500, "raw")], "purpose": "fleet_analytics", "history": []}
    assert not decide(request(**req, on="2025-12-31"), BOOKS, [cert]).allowed
    assert decide(request(**req, on="2026-01-01"), BOOKS, [cert]).allowed
    reasons = " ".join(decide(request(**req, on="2025-12-31"), BOOKS, [cert]).reasons)
    assert "cn_certification is not in force on 2025-12-31" in reasons


def test_cn_domestic_transfer_is_exempt() -> None:
    decision = decide(request(destination="CN", data=[("trajectory", 10**6, "raw")]), BOOKS)
    assert decision.allowed and decision.exempt


def test_cn_before_the_2024_provisions_is_denied_by_default() -> None:
    decision = decide(
        request(data=[("vehicle_id", 10, "raw")], purpose="fleet_analytics", on="2024-01-10"),
        BOOKS,
    )
    assert not decision.allowed and not decision.prohibited and decision.mechanisms == ()
    assert decision.reasons[0].startswith("Denied by default")


# -- history: splitting does not dodge thresholds or an approval's volume ------------------------


def test_history_raises_the_count_over_a_threshold() -> None:
    first = [
        {"date": "2026-03-01", "destination": "US", "category": "vehicle_id", "subjects": 60_000}
    ]
    req = request(data=[("vehicle_id", 60_000, "raw")], purpose="fleet_analytics", history=first)
    decision = decide(req, BOOKS)
    assert not decision.allowed
    assert decision.subjects_in_window["cn.cbdf.pi_100k_to_1m"] == 120_000
    alone = request(data=[("vehicle_id", 60_000, "raw")], purpose="fleet_analytics", history=[])
    assert decide(alone, BOOKS).allowed
    last_year = [{**first[0], "date": "2025-12-31"}]
    req = request(
        data=[("vehicle_id", 60_000, "raw")], purpose="fleet_analytics", history=last_year
    )
    assert decide(req, BOOKS).allowed  # China counts from 1 January


def test_approval_volume_counts_what_was_sent_under_its_scope_before() -> None:
    # anonymised motion for ADAS training is important data but not PI: no rule counts it, so
    # only the approval's own scale stops a split
    motion = approval(categories=["anonymized_motion"], max_subjects=100_000)
    sent = {"destination": "US", "category": "anonymized_motion", "subjects": 60_000}
    data = [("anonymized_motion", 60_000, "anonymized")]
    assert decide(request(data=data, history=[]), BOOKS, [motion]).allowed
    earlier = [{**sent, "date": "2026-05-01", "recipient": "Example Motors Inc."}]
    decision = decide(request(data=data, history=earlier), BOOKS, [motion])
    assert not decision.allowed
    assert "120,000 would have been sent within its scope since 2026-01-01" in decision.reasons[-1]
    # before the approval, to someone else, or another category: not under it
    for other in (
        {**sent, "date": "2025-12-31"},
        {**sent, "date": "2026-05-01", "recipient": "Someone Else"},
        {**sent, "date": "2026-05-01", "category": "aggregate_metrics"},
        {**sent, "date": "2026-05-01", "destination": "CN"},
    ):
        assert decide(request(data=data, history=[other]), BOOKS, [motion]).allowed, other
    unknown = [{**sent, "date": "2026-05-01"}]  # recipient not recorded: counted
    assert not decide(request(data=data, history=unknown), BOOKS, [motion]).allowed


def test_history_argument_and_provider() -> None:
    asked: list[tuple[str, date]] = []
    earlier = PastTransfer(
        date=date(2026, 2, 1), destination="US", category="vehicle_id", subjects=95_000
    )

    def ledger(req: TransferRequest, since: date) -> list[PastTransfer]:
        asked.append((req.origin, since))
        return [earlier]

    bare = request(data=[("vehicle_id", 10_000, "raw")], purpose="fleet_analytics")
    assert not bare.history_given
    decision = Gate(BOOKS, [approval(valid_from="2025-06-01")], history=ledger).decide(bare)
    assert asked == [("CN", date(2025, 6, 1))]  # from the oldest approval it could use
    assert decision.subjects_in_window["cn.cbdf.pi_100k_to_1m"] == 105_000
    assert decision.request.history == (earlier,)
    # a request that states its history is a what-if: the ledger is not asked
    stated = request(data=[("vehicle_id", 10_000, "raw")], purpose="fleet_analytics", history=[])
    assert Gate(BOOKS, history=ledger).decide(stated).allowed and len(asked) == 1
    # decide() adds the history it is given to the request's own
    assert not decide(stated, BOOKS, history=[earlier]).allowed


def test_a_decision_says_when_no_history_was_counted() -> None:
    note = "No record of earlier transfers was given"
    bare = request(data=[("vehicle_id", 10_000, "raw")], purpose="fleet_analytics")
    assert note in decide(bare, BOOKS).reasons[-1]
    stated = request(data=[("vehicle_id", 10_000, "raw")], purpose="fleet_analytics", history=[])
    assert all(note not in r for r in decide(stated, BOOKS).reasons)
    uncounted = request("EU", "DE", [("trajectory", 5, "raw")])
    assert all(note not in r for r in decide(uncounted, BOOKS).reasons)  # nothing was counted


# -- EU and US -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["eu_dpf", "eu_scc", "eu_bcr"])
def test_eu_to_us_under_dpf_scc_or_bcr(kind: str) -> None:
    req = request("EU", "US", [("trajectory", 500_000, "pseudonymized")], purpose="hd_mapping")
    on_file = approval(type=kind, origin="EU", purposes=["hd_mapping"], max_subjects=None)
    decision = decide(req, BOOKS, [on_file])
    assert decision.allowed and decision.mechanisms == ("eu_dpf", "eu_scc", "eu_bcr")
    assert decision.rulebook_versions == {"eu": "2026.1"}
    assert not decide(req, BOOKS).allowed
    # an approval for all EU data covers data recorded in one member state
    assert decide(
        request("DE", "US", [("trajectory", 5, "raw")], purpose="hd_mapping"), BOOKS, [on_file]
    ).allowed


def test_eu_dpf_does_not_cover_china_and_eu_stays_exempt() -> None:
    dpf = approval(type="eu_dpf", origin="EU", max_subjects=None)
    to_china = request("EU", "CN", [("trajectory", 5, "raw")], recipient=CHINA_LINKED)
    decision = decide(to_china, BOOKS, [dpf.model_copy(update={"recipient": "Dragon Drive LLC"})])
    assert not decision.allowed and decision.mechanisms == ("eu_scc", "eu_bcr")
    assert decide(request("EU", "FR", [("trajectory", 10**7, "raw")]), BOOKS).exempt


@pytest.mark.parametrize("state", ["raw", "pseudonymized", "anonymized"])
@pytest.mark.parametrize(
    ("destination", "recipient"), [("CN", PARTNER), ("US", CHINA_LINKED), ("DE", CHINA_LINKED)]
)
def test_us_geolocation_to_china_is_prohibited_whatever_the_deidentification(
    state: str, destination: str, recipient: dict[str, Any]
) -> None:
    everything = [
        approval(
            id=f"X{n}", type=kind, origin=origin, recipient=recipient["name"], max_subjects=None
        )
        for n, (kind, origin) in enumerate(
            [("cn_security_assessment", "CN"), ("eu_scc", "EU"), ("eu_dpf", "US")]
        )
    ]
    category = "anonymized_motion" if state == "anonymized" else "trajectory"
    req = request("US", destination, [(category, 5_000, state)], recipient=recipient, history=[])
    decision = decide(req, BOOKS, everything)
    assert not decision.allowed and decision.prohibited and not decision.exempt
    assert decision.mechanisms == () and decision.approval is None
    assert decision.rules[0].id == "us.doj.geolocation_bulk"
    assert decision.reasons[0].startswith("Denied: the transfer is prohibited")
    assert decision.rulebook_versions == {"us": "2026.1"}


def test_us_below_the_bulk_threshold_or_to_an_unlinked_recipient_is_exempt() -> None:
    few = request("US", "CN", [("trajectory", 1_000, "raw")], recipient=CHINA_LINKED, history=[])
    assert decide(few, BOOKS).exempt
    earlier = [{"date": "2025-12-01", "destination": "CN", "category": "trajectory", "subjects": 1}]
    one_more = request(
        "US", "CN", [("trajectory", 1_000, "raw")], recipient=CHINA_LINKED, history=earlier
    )
    assert decide(one_more, BOOKS).prohibited  # the trailing 12 months cross the new year
    assert decide(request("US", "DE", [("trajectory", 10**7, "raw")]), BOOKS).exempt


def test_an_approval_the_rulebooks_do_not_know_covers_nothing() -> None:
    odd = approval(origin="JP")
    decision = decide(request(history=[]), BOOKS, [odd])
    assert not decision.allowed
    wrong = approval(type="eu_scc")  # a CN approval of an EU mechanism
    reasons = " ".join(decide(request(history=[]), BOOKS, [wrong]).reasons)
    assert "'eu_scc' is not a mechanism of the cn rulebook" in reasons


def test_many_approvals_are_summed_up_after_twenty() -> None:
    others = [approval(id=f"B{n}", recipient=f"Other {n}") for n in range(25)]
    decision = decide(request(history=[]), BOOKS, others)
    assert not decision.allowed
    assert "none of the 25 approvals on file for cn data does" in decision.reasons[0]
    assert decision.reasons[-1] == "5 more approval(s) on file do not cover it either."


# -- invalid requests ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"data": [{"category": "trajectroy", "subjects": 1}]}, "data[0].category"),
        ({"data": [{"category": "trajectory", "subjects": -1}]}, "data[0].subjects"),
        (
            {"data": [{"category": "trajectory", "subjects": 1, "deid_state": "x"}]},
            "data[0].deid_state",
        ),
        ({"data": [{"category": "trajectory", "subjects": 1, "colour": 1}]}, "data[0].colour"),
        ({"data": [{"category": "trajectory", "subjects": True}]}, "data[0].subjects"),
        ({"data": [{"category": "trajectory", "subjects": "20000"}]}, "data[0].subjects"),
        ({"data": [{"category": "trajectory", "subjects": 2.5}]}, "data[0].subjects"),
        ({"date": "2026-02-30"}, "date"),
        ({"date": 0}, "date"),
        ({"date": "2026-11-29T10:00:00"}, "date"),
        ({"date": "yesterday"}, "date"),
        ({"origin": "china"}, "origin"),
        ({"destination": "usa"}, "destination"),
        ({"data": []}, "data"),
        ({"priority": "high"}, "priority"),
        ({"recipient": {"name": "X", "country": "US", "owner": "Y"}}, "recipient.owner"),
        (
            {
                "history": [
                    {"date": "2026-01-01", "destination": "US", "category": "x", "subjects": 1}
                ]
            },
            "history[0].category",
        ),
        (
            {"approvals": [{**ISSUE_REQUEST["approvals"][0], "type": "handshake"}]},
            "approvals[0].type",
        ),
        (
            {"approvals": [{**ISSUE_REQUEST["approvals"][0], "valid_to": "2025-01-01"}]},
            "approvals[0]",
        ),
    ],
)
def test_invalid_requests_name_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_request(json.dumps({**ISSUE_REQUEST, **change}))
    assert caught.value.message.startswith(f"request field {field}:"), caught.value.message
    assert caught.value.code == "gate.invalid_request" and caught.value.exit_code == 12


def test_missing_fields_bad_json_and_unknown_origin() -> None:
    without = {k: v for k, v in ISSUE_REQUEST.items() if k != "purpose"}
    with pytest.raises(InvalidRequest, match="request field purpose: Field required"):
        parse_request(without)
    assert parse_request({**ISSUE_REQUEST, "date": date(2026, 11, 29)}).date == date(2026, 11, 29)
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        parse_request(b"{not json")
    two = {**ISSUE_REQUEST, "date": "x", "purpose": "Not A Name"}
    with pytest.raises(InvalidRequest) as caught:
        parse_request(two)
    assert caught.value.hint == "2 problems in all: purpose; date"
    with pytest.raises(InvalidRequest, match="request field origin: no rulebook governs data"):
        decide(request("JP", "US"), BOOKS)


# -- properties ----------------------------------------------------------------------------------

RECIPIENTS = ["Example Motors Inc.", "Autobahn Data GmbH"]
CN_CATEGORIES = ["vehicle_id", "trajectory", "anonymized_motion", "vehicle_flow", "charging",
                 "outside_video_masked", "outside_video_identifiable", "model_parameters",
                 "aggregate_metrics"]  # fmt: skip
PURPOSES = ["adas_training", "fleet_analytics"]
START = date(2026, 1, 1)


def _three_years(start: date) -> date:
    """The last day of a three-year validity, computed apart from the rulebook."""
    try:
        anniversary = start.replace(year=start.year + 3)
    except ValueError:  # 29 February
        anniversary = date(start.year + 3, 3, 1)
    return anniversary - timedelta(days=1)


def _important(category: str, state: str, purpose: str) -> bool:
    return "important_data" in CN.classify(category, state, purpose)  # type: ignore[arg-type]


def _pi(category: str, state: str, purpose: str) -> bool:
    return "personal_information" in CN.classify(category, state, purpose)  # type: ignore[arg-type]


class CnOutbound(RuleBasedStateMachine):
    """Approvals come and go, time passes, transfers are tried; whatever leaves China that is
    important data (by class, or as PI of more than 100,000 persons this year) left under an
    unexpired, unrevoked security assessment whose scope covers it."""

    @initialize(
        recipient=st.sampled_from(RECIPIENTS),
        limit=st.sampled_from([None, 200_000, 10**6]),
    )
    def start(self, recipient: str, limit: int | None) -> None:
        """One broad assessment on file from the start, so that runs reach "allowed" often."""
        self.today = START
        broad = Approval(
            id="P0",
            type="cn_security_assessment",
            origin="CN",
            recipient=recipient,
            categories=tuple(CN_CATEGORIES),
            purposes=tuple(PURPOSES),
            max_subjects=limit,
            valid_from=START - timedelta(days=100),
        )
        self.approvals: dict[str, Approval] = {"P0": broad}
        self.sent: list[PastTransfer] = []
        self.allowed_important = 0

    @rule(
        kind=st.sampled_from(
            ["cn_security_assessment"] * 3 + ["cn_standard_contract", "cn_certification"]
        ),
        recipient=st.sampled_from(RECIPIENTS),
        categories=st.sets(st.sampled_from(CN_CATEGORIES), min_size=1, max_size=7),
        purposes=st.sets(st.sampled_from(PURPOSES), min_size=1),
        limit=st.sampled_from([None, 1_000, 50_000, 200_000]),
        starts_in=st.one_of(st.integers(-300, 0), st.integers(-1200, 200)),
        lasts=st.one_of(st.none(), st.integers(0, 2000)),
    )
    def add_approval(
        self,
        kind: str,
        recipient: str,
        categories: set[str],
        purposes: set[str],
        limit: int | None,
        starts_in: int,
        lasts: int | None,
    ) -> None:
        valid_from = self.today + timedelta(days=starts_in)
        self.approvals[f"P{len(self.approvals)}"] = Approval(
            id=f"P{len(self.approvals)}",
            type=kind,
            origin="CN",
            recipient=recipient,
            categories=tuple(sorted(categories)),
            purposes=tuple(sorted(purposes)),
            max_subjects=limit,
            valid_from=valid_from,
            valid_to=None if lasts is None else valid_from + timedelta(days=lasts),
        )

    @rule(which=st.integers(0, 50))
    def revoke(self, which: int) -> None:
        if self.approvals:
            key = sorted(self.approvals)[which % len(self.approvals)]
            at = datetime.combine(self.today, datetime.min.time(), UTC)
            self.approvals[key] = self.approvals[key].model_copy(update={"revoked_at": at})

    @rule(days=st.integers(0, 500))
    def wait(self, days: int) -> None:
        self.today += timedelta(days=days)

    @rule(
        items=st.lists(
            st.tuples(
                st.sampled_from(CN_CATEGORIES),
                st.sampled_from(["raw", "pseudonymized", "anonymized"]),
                st.sampled_from([10, 900, 9_000, 40_000, 120_000]),
            ),
            min_size=1,
            max_size=3,
        ),
        recipient=st.sampled_from(RECIPIENTS),
        purpose=st.sampled_from(PURPOSES),
        destination=st.sampled_from(["US", "DE", "HK"]),
    )
    def transfer(
        self,
        items: list[tuple[str, str, int]],
        recipient: str,
        purpose: str,
        destination: str,
    ) -> None:
        self._try(items, recipient, purpose, destination)

    @rule(
        which=st.integers(0, 50),
        picks=st.lists(
            st.tuples(
                st.integers(0, 9),
                st.sampled_from(["raw", "pseudonymized", "anonymized"]),
                st.integers(0, 30_000),
            ),
            min_size=1,
            max_size=3,
        ),
        destination=st.sampled_from(["US", "DE", "HK"]),
    )
    def transfer_within_an_approval(
        self, which: int, picks: list[tuple[int, str, int]], destination: str
    ) -> None:
        """A transfer that an approval on file looks made for: the path to "allowed"."""
        if not self.approvals:
            return
        on_file = self.approvals[sorted(self.approvals)[which % len(self.approvals)]]
        items = [(on_file.categories[i % len(on_file.categories)], s, n) for i, s, n in picks]
        purpose = on_file.purposes[which % len(on_file.purposes)]
        self._try(items, on_file.recipient, purpose, destination)

    def _try(
        self, items: list[tuple[str, str, int]], recipient: str, purpose: str, destination: str
    ) -> None:
        req = TransferRequest.model_validate(
            {
                "origin": "CN",
                "destination": destination,
                "recipient": {"name": recipient, "country": destination},
                "purpose": purpose,
                "date": self.today,
                "data": [{"category": c, "deid_state": s, "subjects": n} for c, s, n in items],
                "history": self.sent,
            }
        )
        decision = decide(req, BOOKS, self.approvals.values())
        if not decision.allowed:
            return
        earlier = sum(
            p.subjects
            for p in self.sent
            if p.date.year == self.today.year
            and _pi(p.category, p.deid_state or "raw", p.purpose or purpose)
        )
        pi_this_year = earlier + sum(n for c, s, n in items if _pi(c, s, purpose))
        important = {c for c, s, _ in items if _important(c, s, purpose)}
        if pi_this_year > 100_000:
            important |= {c for c, s, _ in items if _pi(c, s, purpose)}
        if important:
            self.allowed_important += 1
            used = decision.approval
            assert used is not None, decision.reasons
            assert used.type == "cn_security_assessment"
            assert used.revoked_at is None
            assert used.valid_from <= self.today <= _three_years(used.valid_from)
            assert used.valid_to is None or self.today <= used.valid_to
            assert used.recipient == recipient and purpose in used.purposes
            assert important <= set(used.categories)
            volume = sum(n for c, _, n in items if c in important)
            assert used.max_subjects is None or used.max_subjects >= volume
        for c, s, n in items:
            self.sent.append(
                PastTransfer.model_validate(
                    {
                        "date": self.today,
                        "destination": destination,
                        "category": c,
                        "subjects": n,
                        "recipient": recipient,
                        "deid_state": s,
                        "purpose": purpose,
                    }
                )
            )


TestCnOutbound = CnOutbound.TestCase
TestCnOutbound.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)


pieces = st.lists(st.integers(1, 60_000), min_size=1, max_size=12)


@settings(max_examples=80, deadline=None)
@given(pieces=pieces, gaps=st.lists(st.integers(0, 40), min_size=12, max_size=12))
def test_splitting_never_sends_more_than_one_transfer_could(
    pieces: list[int], gaps: list[int]
) -> None:
    """CN vehicle ids without an approval: exempt below 100,000 persons a year, so whatever the
    split, fewer than 100,000 leave in a year. US trajectories to a China-linked recipient: at
    most 1,000 devices in any 12 months."""
    for origin, destination, recipient, category, most in (
        ("CN", "US", PARTNER, "vehicle_id", 99_999),
        ("US", "CN", CHINA_LINKED, "trajectory", 1_000),
    ):
        sent: list[PastTransfer] = []
        day = date(2026, 1, 1)
        for n, gap in zip(pieces, gaps, strict=False):
            day += timedelta(days=gap)
            req = request(
                origin, destination, [(category, n % (most + 1), "pseudonymized")],
                recipient=recipient, purpose="fleet_analytics", on=day.isoformat(), history=[],
            )  # fmt: skip
            if decide(req, BOOKS, history=sent).allowed:
                sent.append(
                    PastTransfer.model_validate(
                        {
                            "date": day,
                            "destination": destination,
                            "category": category,
                            "subjects": req.data[0].subjects,
                            "recipient": recipient["name"],
                        }
                    )
                )
        window = "calendar_year" if origin == "CN" else "trailing_12_months"
        for last in sent:
            start = window_start(window, last.date)
            assert start is not None
            assert sum(p.subjects for p in sent if start <= p.date <= last.date) <= most


@settings(max_examples=60, deadline=None)
@given(pieces=pieces, limit=st.integers(100_000, 999_999))
def test_splitting_never_exceeds_an_approvals_scale(pieces: list[int], limit: int) -> None:
    """Under a standard contract for up to ``limit`` persons, CN vehicle ids sent in pieces
    over one year never add up to more than the contract's scale (or the exempt 99,999)."""
    contract = approval(
        type="cn_standard_contract",
        categories=["vehicle_id"],
        purposes=["fleet_analytics"],
        max_subjects=limit,
    )
    gate = Gate(BOOKS, [contract])
    sent: list[PastTransfer] = []
    for n, piece in enumerate(pieces):
        day = date(2026, 1, 1) + timedelta(days=20 * n)
        req = request(
            data=[("vehicle_id", piece, "raw")], purpose="fleet_analytics",
            on=day.isoformat(), history=[],
        )  # fmt: skip
        decision: Decision = gate.decide(req, sent)
        if decision.allowed:
            sent.append(
                PastTransfer(date=day, destination="US", category="vehicle_id", subjects=piece)
            )
    assert sum(p.subjects for p in sent) <= max(limit, 99_999)


def test_us_bulk_count_takes_only_transfers_the_rule_governs() -> None:
    """Regression (QA): earlier transfers to Germany counted towards the US bulk threshold for
    a recipient in China. An earlier transfer counts when it went to a country of concern or
    to a recipient not recorded, and (the rule counts per counterparty) to the same one."""
    from onshore.gate import decide
    from onshore.rulebook import builtin_rulebooks

    def request(history: list[dict[str, object]]) -> dict[str, object]:
        return {
            "origin": "US",
            "destination": "CN",
            "recipient": {"name": "Shanghai Co.", "country": "CN"},
            "purpose": "adas_training",
            "date": "2026-11-29",
            "data": [{"category": "trajectory", "subjects": 600}],
            "history": history,
        }

    books = builtin_rulebooks()
    earlier = {"date": "2026-06-01", "category": "trajectory", "subjects": 600}
    to_germany = {**earlier, "destination": "DE", "recipient": "Autobahn Data GmbH"}
    to_china = {**earlier, "destination": "CN", "recipient": "Shanghai Co."}
    unknown = {**earlier, "destination": "DE"}
    assert not decide(parse_request(request([to_germany])), books).prohibited
    assert decide(parse_request(request([to_china])), books).prohibited
    assert decide(parse_request(request([unknown])), books).prohibited


def test_a_destination_that_is_no_country_is_an_invalid_request() -> None:
    """Regression (QA): "XX" was decided as if it were a country no rule names."""
    from onshore.errors import InvalidRequest

    request = {
        "origin": "CN",
        "destination": "XX",
        "recipient": {"name": "A", "country": "US"},
        "purpose": "adas_training",
        "date": "2026-11-29",
        "data": [{"category": "trajectory", "subjects": 1}],
    }
    with pytest.raises(InvalidRequest, match="destination"):
        parse_request(request)
    with pytest.raises(InvalidRequest, match=r"recipient\.country"):
        parse_request({**request, "destination": "US", "recipient": {"name": "A", "country": "ZZ"}})
    assert parse_request({**request, "destination": "EU"}).destination == "EU"
