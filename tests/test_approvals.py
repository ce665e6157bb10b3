"""The approvals registry, one suite run on every catalogue backend (SQLite on disk and in
memory, PostgreSQL where ONSHORE_TEST_POSTGRES_URL names one), and the deadlines the rulebooks
imply: a CN security assessment is valid 3 years and its extension is applied for 60 working
days before expiry."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from onshore.errors import ApprovalNotFound, InvalidApproval
from onshore.gate import Approval, ApprovalRegistry, Gate, approval_status, parse_request
from onshore.rulebook import builtin_rulebooks
from onshore.store.catalogue import Catalogue

BOOKS = builtin_rulebooks()
NOW = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)


def approval(**changes: Any) -> Approval:
    base: dict[str, Any] = {
        "id": "CAC-2026-001",
        "type": "cn_security_assessment",
        "origin": "CN",
        "recipient": "Example Motors Inc.",
        "categories": ["trajectory", "vehicle_id"],
        "purposes": ["adas_training"],
        "max_subjects": 100_000,
        "valid_from": "2026-01-01",
        "valid_to": "2028-12-31",
        "reference": "CAC outbound assessment 2026-017",
    }
    return Approval.model_validate({**base, **changes})


@pytest.fixture(params=["sqlite-file", "sqlite-memory", "postgres"])
def catalogue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Catalogue]:
    # A fresh site id per test keeps tests apart on a shared PostgreSQL database.
    site = f"site-{uuid.uuid4().hex[:10]}"
    if request.param == "sqlite-file":
        url = f"sqlite:///{tmp_path / 'catalogue.sqlite'}"
    elif request.param == "sqlite-memory":
        url = "sqlite://"
    else:
        url = request.getfixturevalue("postgres_url")
    cat = Catalogue(url, site)
    yield cat
    cat.close()


@pytest.fixture
def registry(catalogue: Catalogue) -> ApprovalRegistry:
    return ApprovalRegistry(catalogue, BOOKS, jurisdiction="CN")


def test_add_then_read_back(registry: ApprovalRegistry) -> None:
    stored = registry.add(approval(), now=NOW)
    assert stored.added_at == NOW
    back = registry.get("CAC-2026-001")
    assert back == stored
    assert back.categories == ("trajectory", "vehicle_id")
    assert back.valid_from == date(2026, 1, 1) and back.valid_to == date(2028, 12, 31)
    assert back.added_at is not None and back.added_at.tzinfo is not None
    open_ended = registry.add(approval(id="C2", type="cn_standard_contract", valid_to=None))
    assert registry.get("C2").valid_to is None and registry.get("C2").max_subjects == 100_000
    assert [a.id for a in registry.approvals()] == ["C2", "CAC-2026-001"]
    assert open_ended.revoked_at is None


def test_listing_is_ordered_by_start_then_id(registry: ApprovalRegistry) -> None:
    registry.add(approval(id="B", valid_from="2026-02-01"))
    registry.add(approval(id="A", valid_from="2026-02-01"))
    registry.add(approval(id="Z", valid_from="2025-06-01"))
    assert [a.id for a in registry.approvals()] == ["Z", "A", "B"]


def test_an_id_is_used_once_per_site(registry: ApprovalRegistry, catalogue: Catalogue) -> None:
    registry.add(approval())
    with pytest.raises(InvalidApproval, match="already on file"):
        registry.add(approval(reference="other"))


def test_sites_do_not_see_each_others_approvals(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.sqlite'}"
    a, b = Catalogue(url, "cn-shanghai"), Catalogue(url, "cn-beijing")
    try:
        ApprovalRegistry(a, BOOKS).add(approval())
        assert ApprovalRegistry(b, BOOKS).approvals() == []
        ApprovalRegistry(b, BOOKS).add(approval())  # same id, another site
        assert len(ApprovalRegistry(a, BOOKS).approvals()) == 1
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"type": "eu_scc"}, "'eu_scc' is not a mechanism of the cn rulebook"),
        ({"origin": "JP"}, "origin 'JP': no rulebook governs data from 'JP'"),
        ({"origin": "EU", "type": "eu_scc"}, "site .* holds CN data"),
        ({"revoked_at": "2026-02-01T00:00:00Z"}, "is revoked"),
    ],
)
def test_the_registry_refuses(
    registry: ApprovalRegistry, changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidApproval, match=message):
        registry.add(approval(**changes))
    assert registry.approvals() == []


def test_revoke_keeps_the_record(registry: ApprovalRegistry) -> None:
    registry.add(approval())
    revoked = registry.revoke("CAC-2026-001", "  superseded by CAC-2027-003 ", now=NOW)
    assert revoked.revoked_at == NOW and revoked.revoke_reason == "superseded by CAC-2027-003"
    assert registry.get("CAC-2026-001") == revoked
    assert registry.approvals(include_revoked=False) == []
    assert registry.approvals() == [revoked]
    with pytest.raises(InvalidApproval, match="already revoked on 2026-03-02"):
        registry.revoke("CAC-2026-001", "again")
    with pytest.raises(ApprovalNotFound, match="no approval 'nope'"):
        registry.revoke("nope", "why")
    with pytest.raises(InvalidApproval, match="reason is required"):
        registry.revoke("CAC-2026-001", " ")


def test_changes_join_the_callers_transaction(
    registry: ApprovalRegistry, catalogue: Catalogue
) -> None:
    """The ledger's seam: an approval change and its ledger entry commit together or not."""

    class Boom(Exception):
        pass

    with pytest.raises(Boom), catalogue.transaction() as conn:
        registry.add(approval(), conn=conn)
        assert registry.get("CAC-2026-001", conn=conn).id == "CAC-2026-001"
        raise Boom
    assert registry.approvals() == []
    with catalogue.transaction() as conn:
        registry.add(approval(), conn=conn)
        registry.revoke("CAC-2026-001", "withdrawn", conn=conn)
    assert registry.get("CAC-2026-001").revoked_at is not None


def test_the_gate_uses_what_the_registry_holds(registry: ApprovalRegistry) -> None:
    registry.add(approval())
    request = parse_request(
        {
            "origin": "CN",
            "destination": "US",
            "recipient": {"name": "Example Motors Inc.", "country": "US"},
            "purpose": "adas_training",
            "date": "2026-06-01",
            "data": [{"category": "trajectory", "subjects": 20_000, "deid_state": "raw"}],
            "history": [],
        }
    )
    assert Gate(BOOKS, registry.approvals()).decide(request).allowed
    registry.revoke("CAC-2026-001", "withdrawn by the CAC")
    decision = Gate(BOOKS, registry.approvals()).decide(request)
    assert not decision.allowed and "withdrawn by the CAC" in decision.reasons[-1]


# -- deadlines -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("on", "status", "warning"),
    [
        ("2025-12-31", "not_yet_valid", None),
        ("2026-01-01", "valid", None),
        ("2028-09-08", "valid", None),
        ("2028-09-09", "renewal_due", "apply for its extension by 2028-10-09, in 30 day(s)"),
        ("2028-10-09", "renewal_due", "apply for its extension by 2028-10-09, in 0 day(s)"),
        ("2028-10-10", "renewal_due", "2028-10-09 (60 working days before expiry), has passed"),
        ("2028-12-31", "renewal_due", "has passed"),
        ("2029-01-01", "expired", "expired on 2028-12-31"),
    ],
)
def test_assessment_deadlines(on: str, status: str, warning: str | None) -> None:
    found = approval_status(approval(valid_to=None), BOOKS, date.fromisoformat(on))
    assert found.valid_until == date(2028, 12, 31)
    assert found.renew_by == date(2028, 10, 9)  # 60 working days before a Sunday
    assert found.status == status
    if warning is None:
        assert found.warning is None
    else:
        assert found.warning is not None and warning in found.warning, found.warning
    out = found.as_dict()
    assert (
        out["renew_by"] == "2028-10-09" and out["status"] == status and out["id"] == "CAC-2026-001"
    )


def test_a_stated_end_past_the_rulebooks_validity_is_capped() -> None:
    found = approval_status(approval(valid_to="2031-06-30"), BOOKS, date(2029, 1, 5))
    assert found.valid_until == date(2028, 12, 31) and found.status == "expired"
    assert (
        found.warning is not None and "later than the 3 years the rulebook allows" in found.warning
    )


def test_an_earlier_stated_end_moves_the_renewal_deadline() -> None:
    found = approval_status(approval(valid_to="2027-06-30"), BOOKS, date(2026, 1, 1))
    assert found.valid_until == date(2027, 6, 30) and found.renew_by == date(2027, 4, 7)


def test_mechanisms_without_terms() -> None:
    scc = approval(origin="EU", type="eu_scc", valid_to=None, max_subjects=None)
    found = approval_status(scc, BOOKS, date(2040, 1, 1))
    assert (found.valid_until, found.renew_by, found.status) == (None, None, "valid")
    dated = approval(origin="EU", type="eu_scc", valid_to="2027-06-30")
    assert approval_status(dated, BOOKS, date(2027, 5, 30)).status == "valid"
    due = approval_status(dated, BOOKS, date(2027, 5, 31))
    assert due.status == "renewal_due" and due.warning is not None
    assert "expires on 2027-06-30, in 30 day(s): renew it before then" in due.warning


def test_revoked_status_says_why(registry: ApprovalRegistry) -> None:
    registry.add(approval())
    registry.revoke("CAC-2026-001", "scope changed", now=NOW)
    [found] = registry.statuses(date(2026, 6, 1))
    assert found.status == "revoked"
    assert found.warning == (
        "CAC-2026-001 (cn_security_assessment, CAC outbound assessment 2026-017) was revoked "
        "on 2026-03-02: scope changed."
    )


def test_approval_fields_are_checked() -> None:
    with pytest.raises(ValueError, match="valid_to 2025-01-01 is before valid_from"):
        approval(valid_to="2025-01-01")
    with pytest.raises(ValueError, match="unknown category"):
        approval(categories=["trajectroy"])
    with pytest.raises(ValueError, match="unknown mechanism"):
        approval(type="handshake")
    with pytest.raises(ValueError):
        approval(max_subjects=-1)
    with pytest.raises(ValueError):
        approval(id="has space")
