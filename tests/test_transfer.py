"""Transfers between parties: the origin's gate decides, the origin's ledger records every
decision, only an allowed transfer reaches the destination's service, which checks and records
what it receives; nothing else writes into a site's store under received/, and the law's counts
count persons once. The destination's app runs in process here (tests/test_parties.py and
tests/test_kill.py use real processes over TLS)."""

from __future__ import annotations

import contextlib
from datetime import date
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Services, write_clips
from onshore.deidentify import deidentify_site, resolve_profile
from onshore.errors import ConfigError, NotAParty, OnshoreError, PeerUnreachable, StoreError
from onshore.gate import Approval
from onshore.gate.audit import verify_party
from onshore.gate.record import add_approval, revoke_approval
from onshore.ingest import ingest
from onshore.ledger import Ledger
from onshore.settings import Project
from onshore.sites import init_project
from onshore.sites.keystore import load_keystore
from onshore.store import SiteStore
from onshore.store.objects import RECEIVED_DIR
from onshore.transfer import Selection, transfer

CN, US, EU = "cn-shanghai", "us-oregon", "eu-frankfurt"
DAY = date(2026, 11, 29)
SRC = Path(__file__).resolve().parents[1] / "src" / "onshore"

Parties = dict[str, Project]


def _stock(project: Project, tmp_path: Path, count: int = 4, start: int = 0) -> None:
    """The site with ``count`` clips (each its own vehicle) long enough to survive trip-end
    trimming, de-identified under ``export``."""
    paths = write_clips(tmp_path / f"up-{start}", count, start=start, steps=1500)
    with SiteStore.open(project) as site:
        ingest(site, paths)
        secret = load_keystore(project.keystore_path(project.site(site.site))).hmac_secret
        deidentify_site(site, resolve_profile("export", {}), secret=secret)


@pytest.fixture
def stocked(parties: Parties, tmp_path: Path) -> Parties:
    _stock(parties[CN], tmp_path)
    return parties


def _approval(**changes: object) -> Approval:
    fields: dict[str, object] = {
        "id": "CAC-1",
        "type": "cn_security_assessment",
        "origin": "CN",
        "recipient": "Onshore Mobility Inc.",
        "categories": ["anonymized_motion"],
        "purposes": ["adas_training"],
        "max_subjects": 1000,
        "valid_from": "2026-01-01",
        "reference": "CAC-SA-1",
    }
    fields.update(changes)
    return Approval.model_validate(fields)


def _entries(project: Project, kind: str) -> list[dict[str, object]]:
    with SiteStore.open(project) as site:
        return [e.data for e in Ledger.open(site.catalogue).entries(kind=kind)]


def _received(project: Project) -> list[str]:
    with SiteStore.open(project) as site:
        return sorted(site.objects.find(RECEIVED_DIR))


def _send(parties: Parties, services: Services, dataset: str, **kwargs: object) -> object:
    return transfer(
        parties[CN],
        US,
        dataset,
        str(kwargs.pop("purpose", "adas_training")),
        day=kwargs.pop("day", DAY),  # type: ignore[arg-type]
        http=services.http(US),
        **kwargs,  # type: ignore[arg-type]
    )


def _verified(parties: Parties, services: Services) -> None:
    for party in (CN, US):
        report = verify_party(parties[party], http_for=services.http)
        assert report.ok, report.as_dict()["problems"]
        assert not [n for n in report.notes if "not asked" in n and US in n], report.notes


def test_a_denied_transfer_is_recorded_at_the_origin_and_moves_nothing(
    stocked: Parties, services: Services
) -> None:
    report = transfer(stocked[CN], US, "raw", "adas_training", day=DAY, http=services.http(US))
    assert report.status == "denied" and not report.allowed
    assert "cn_security_assessment" in report.decision.mechanisms
    (entry,) = _entries(stocked[CN], "gate_decision")
    assert entry["transfer"] == report.transfer and entry["allowed"] is False
    assert _received(stocked[US]) == [] and _entries(stocked[US], "transfer_in") == []


def test_an_approval_lets_exactly_what_it_covers_through(
    stocked: Parties, services: Services
) -> None:
    add_approval(stocked[CN], CN, _approval())
    http = services.http(US)
    raw = transfer(stocked[CN], US, "raw", "adas_training", day=DAY, http=http)
    assert raw.status == "denied"  # raw trajectories and VINs are not what was approved
    sent = transfer(stocked[CN], US, "export", "adas_training", day=DAY, http=http)
    assert sent.status == "transferred", sent.decision.reasons
    assert sent.decision.approval is not None and sent.decision.approval.id == "CAC-1"
    received = _received(stocked[US])
    assert received and all(
        p.startswith(f"{RECEIVED_DIR}/{CN}/deidentified/export/") for p in received
    )
    (out,) = _entries(stocked[CN], "transfer_out")
    (into,) = _entries(stocked[US], "transfer_in")
    (confirmed,) = _entries(stocked[CN], "transfer_confirmed")
    assert out["transfer"] == into["transfer"] == confirmed["transfer"] == sent.transfer
    assert sorted(o["path"] for o in into["objects"]) == received  # type: ignore[union-attr]
    # The destination recorded the origin's head, the origin the destination's.
    assert into["peer_heads"][0]["site"] == CN  # type: ignore[index]
    assert confirmed["peer_heads"][0]["site"] == US  # type: ignore[index]
    _verified(stocked, services)
    again = transfer(stocked[CN], US, "export", "adas_training", day=DAY, http=http)
    assert again.status == "already_transferred" and again.copied == 0
    assert _received(stocked[US]) == received
    assert len(_entries(stocked[CN], "transfer_out")) == 1
    assert len(_entries(stocked[US], "transfer_in")) == 1


def test_a_revoked_approval_covers_nothing(stocked: Parties, services: Services) -> None:
    add_approval(stocked[CN], CN, _approval())
    revoke_approval(stocked[CN], CN, "CAC-1", "withdrawn by the regulator")
    report = transfer(stocked[CN], US, "export", "adas_training", day=DAY, http=services.http(US))
    assert report.status == "denied"
    assert [e["approval"] for e in _entries(stocked[CN], "approval_revoked")] == ["CAC-1"]


def test_a_dry_run_records_and_sends_nothing(stocked: Parties) -> None:
    # No destination service at all: a dry run does not contact it.
    add_approval(stocked[CN], CN, _approval())
    report = transfer(stocked[CN], US, "export", "adas_training", day=DAY, dry_run=True)
    assert report.status == "would_transfer"
    assert _entries(stocked[CN], "transfer_out") == [] and _received(stocked[US]) == []


def test_a_destination_that_is_down_gets_a_clear_error_and_nothing_half_done(
    stocked: Parties,
) -> None:
    add_approval(stocked[CN], CN, _approval())
    before = len(_entries(stocked[CN], "transfer_out"))
    with pytest.raises(PeerUnreachable, match="did not answer") as caught:
        transfer(stocked[CN], US, "export", "adas_training", day=DAY)
    assert "onshore serve" in (caught.value.hint or "")
    assert len(_entries(stocked[CN], "transfer_out")) == before
    assert _received(stocked[US]) == []


def test_earlier_transfers_count_against_an_approvals_volume(
    stocked: Parties, services: Services
) -> None:
    """Splitting does not dodge the approval's scale: the second half is counted with the
    first, which the origin remembers."""
    add_approval(stocked[CN], CN, _approval(max_subjects=3))
    first = _send(stocked, services, "export:clips=test-00000+test-00001")
    assert first.status == "transferred", first.decision.reasons  # type: ignore[attr-defined]
    second = _send(stocked, services, "export:clips=test-00002+test-00003")
    assert second.status == "denied"  # type: ignore[attr-defined]
    assert any("4" in r and "3" in r for r in second.decision.reasons)  # type: ignore[attr-defined]


def test_the_law_counts_persons_not_transfers(stocked: Parties, services: Services) -> None:
    """The same vehicles sent again are the same persons: an approval's scale of 3 holds the
    same two vehicles sent twice and a third added, and refuses a fourth."""
    add_approval(stocked[CN], CN, _approval(max_subjects=3))
    first = _send(stocked, services, "export:clips=test-00000+test-00001")
    assert first.status == "transferred"  # type: ignore[attr-defined]
    again = _send(stocked, services, "export:clips=test-00000+test-00001", day=date(2026, 11, 30))
    assert again.status == "transferred", again.decision.reasons  # type: ignore[attr-defined]
    third = _send(stocked, services, "export:clips=test-00001+test-00002", day=date(2026, 12, 1))
    assert third.status == "transferred", third.decision.reasons  # type: ignore[attr-defined]
    fourth = _send(stocked, services, "export:clips=test-00003", day=date(2026, 12, 2))
    assert fourth.status == "denied"  # type: ignore[attr-defined]
    reasons = " ".join(fourth.decision.reasons)  # type: ignore[attr-defined]
    assert "covers at most 3" in reasons and "3 earlier" in reasons, reasons


def test_us_data_to_china_follows_the_bulk_threshold(
    parties: Parties, services: Services, tmp_path: Path
) -> None:
    """28 CFR 202 prohibits bulk US sensitive data going to China whatever the approvals; two
    vehicles' precise geolocation is under the bulk threshold (1,000 devices), so it may go,
    recorded at both ends; the same data counted with 1,000 earlier devices may not."""
    from onshore.gate import decide
    from onshore.rulebook import DataItem, Recipient, TransferRequest, builtin_rulebooks

    paths = write_clips(tmp_path / "us", 2, recorded_in="us-oregon", steps=200)
    with SiteStore.open(parties[US]) as site:
        ingest(site, paths)
    report = transfer(parties[US], CN, "raw", "adas_training", day=DAY, http=services.http(CN))
    assert report.allowed and report.decision.exempt and report.status == "transferred"
    assert len(_entries(parties[CN], "transfer_in")) == 1
    items = tuple(DataItem.model_validate(i) for i in report.dataset["data"])
    request = TransferRequest(
        origin="US",
        destination="CN",
        recipient=Recipient(name="Onshore Mobility (Shanghai) Co., Ltd.", country="CN"),
        purpose="adas_training",
        date=DAY,
        data=items,
        history=(
            {"date": "2026-06-01", "destination": "CN", "category": "trajectory", "subjects": 1000},
        ),
    )
    decision = decide(request, builtin_rulebooks())
    assert decision.prohibited and not decision.allowed


def test_selections_are_checked() -> None:
    assert Selection.parse("export:since=2026-03-01,consent=true").consent is True
    for bad in (
        "",
        "raw:since=yesterday",
        "raw:colour=red",
        "raw:clips",
        "raw:since=2026-01-01,since=2026-02-01",
    ):
        with pytest.raises(ConfigError):
            Selection.parse(bad)


def test_bad_requests_are_refused_before_anything_is_sent(stocked: Parties, tmp_path: Path) -> None:
    cn = stocked[CN]
    with pytest.raises(ConfigError, match="no clip nope"):
        transfer(cn, US, "raw:clips=nope", "adas_training", day=DAY)
    with pytest.raises(ConfigError):
        transfer(cn, US, "nosuchprofile", "adas_training", day=DAY)
    with pytest.raises(ConfigError, match="a transfer goes to a peer"):
        transfer(cn, CN, "raw", "adas_training", day=DAY)
    with pytest.raises(ConfigError, match="holds no fleet data"):
        transfer(cn, "coordinator", "raw", "adas_training", day=DAY)
    with pytest.raises(OnshoreError, match="no peer 'us-nowhere'"):
        transfer(cn, "us-nowhere", "raw", "adas_training", day=DAY)
    with pytest.raises(ConfigError, match="runs at its origin"):
        transfer(cn, US, "raw", "adas_training", origin_id=EU, day=DAY)
    lab = init_project(tmp_path / "lab", "three-regions")
    with pytest.raises(NotAParty):
        transfer(lab, US, "raw", "adas_training", day=DAY)


def test_no_other_path_writes_under_received(parties: Parties) -> None:
    with SiteStore.open(parties[US]) as site:
        for path in (f"{RECEIVED_DIR}/x", f"./{RECEIVED_DIR}/x", f"clips/../{RECEIVED_DIR}/x"):
            with pytest.raises(StoreError):
                site.objects.put(path, b"data")
        with pytest.raises(StoreError):
            site.objects.put_many([("clips/a", b"1"), (f"{RECEIVED_DIR}/b", b"2")])
        with pytest.raises(StoreError):
            site.objects.receive([("clips/a", b"1")])
        assert list(site.objects.find(RECEIVED_DIR)) == []
    # Structurally: receive() is called by the destination's side of a transfer, nowhere else.
    callers = [
        path.relative_to(SRC).as_posix()
        for path in SRC.rglob("*.py")
        if ".receive(" in path.read_text()
    ]
    assert callers == ["transfer/inbound.py"]


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory) -> Parties:
    """One set of parties for the property test (made once: parties cost seconds each)."""
    from conftest import make_parties

    root = tmp_path_factory.mktemp("machine")
    found = make_parties(root / "parties")
    _stock(found[CN], root)
    return found


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["add", "revoke", "raw", "export", "export-half"]),
            st.integers(min_value=0, max_value=400),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_every_transfer_is_in_both_ledgers(machine: Parties, steps: list[tuple[str, int]]) -> None:
    """Any sequence of approvals, revocations and transfers on any days: every decision is in
    the origin's ledger, every allowed transfer in both, nothing arrives without a
    transfer_in, and CN important data never arrives without an unrevoked assessment valid
    that day."""
    services = Services(machine)
    try:
        _run_steps(machine, services, steps)
        _verified(machine, services)
    finally:
        services.close()
        _reset(machine)


def _run_steps(parties: Parties, services: Services, steps: list[tuple[str, int]]) -> None:
    approvals = 0
    cn = parties[CN]
    for action, offset in steps:
        day = date.fromordinal(date(2026, 1, 1).toordinal() + offset)
        if action == "add":
            approvals += 1
            add_approval(cn, CN, _approval(id=f"A{approvals}-{offset}", valid_from=day))
        elif action == "revoke" and approvals:
            # Revoking twice is refused; the sequence goes on either way.
            with contextlib.suppress(OnshoreError):
                revoke_approval(cn, CN, f"A{approvals}-{_last_offset(steps, approvals)}", "x")
        elif action != "revoke":
            dataset = {"raw": "raw", "export": "export", "export-half": "export:clips=test-00000"}
            report = transfer(
                cn, US, dataset[action], "adas_training", day=day, http=services.http(US)
            )
            kind_out = "transfer_out" if report.allowed else "gate_decision"
            assert report.transfer in {e["transfer"] for e in _entries(cn, kind_out)}
            if report.allowed:
                ins = {e["transfer"] for e in _entries(parties[US], "transfer_in")}
                assert report.transfer in ins
                approval = report.decision.approval
                assert approval is not None and approval.type == "cn_security_assessment"
                assert approval.valid_from <= day and approval.revoked_at is None
                assert action != "raw"


def _last_offset(steps: list[tuple[str, int]], number: int) -> int:
    adds = [offset for action, offset in steps if action == "add"]
    return adds[number - 1]


def _reset(parties: Parties) -> None:
    """Hypothesis reuses the fixture across examples: start the next from empty ledgers,
    registries and crossings (fresh parties per example would cost seconds each)."""
    from sqlalchemy import inspect, text

    for party in (CN, US):
        with SiteStore.open(parties[party]) as site:
            present = set(inspect(site.catalogue.engine).get_table_names())
            with site.catalogue.transaction() as conn:
                for table in (
                    "ledger_entries",
                    "ledger_heads",
                    "approvals",
                    "received_objects",
                    "incoming_transfers",
                    "crossed_subjects",
                ):
                    if table in present:
                        conn.execute(text(f"DELETE FROM {table}"))
            for path in list(site.objects.find(RECEIVED_DIR)):
                site.objects.delete(path)


def test_the_origin_may_replace_what_it_sent(stocked: Parties, services: Services) -> None:
    """Regression: re-de-identifying after a transfer replaces the outputs that were sent; the
    origin's ledger vouches for what left, not for keeping it, so it still verifies."""
    cn = stocked[CN]
    add_approval(cn, CN, _approval())
    sent = transfer(cn, US, "export", "adas_training", day=DAY, http=services.http(US))
    assert sent.status == "transferred"
    changed = resolve_profile(
        "export",
        {
            "export": [
                {"name": "drop_id"},
                {"name": "drop_zones", "buffer_m": 80},
                {"name": "trim_ends", "metres": 600},
                {"name": "to_local"},
                {"name": "mask_frames"},
            ]
        },
    )
    with SiteStore.open(cn) as site:
        secret = load_keystore(cn.keystore_path(cn.site(CN))).hmac_secret
        deidentify_site(site, changed, secret=secret)
        left = {o["path"] for o in _entries(cn, "transfer_out")[0]["sent"]}  # type: ignore[index, union-attr]
        assert not any(site.objects.exists(p) for p in left)
    _verified(stocked, services)


def test_gate_check_at_a_site_counts_what_crossed(
    stocked: Parties, services: Services, tmp_path: Path
) -> None:
    """`gate check` in a site's folder, without a history in the request, counts the persons
    that already crossed: the second half of a split transfer is over the approval's scale."""
    import json

    from typer.testing import CliRunner

    from onshore.cli.app import app

    cn = stocked[CN]
    add_approval(cn, CN, _approval(max_subjects=3))
    first = transfer(
        cn,
        US,
        "export:clips=test-00000+test-00001",
        "adas_training",
        day=DAY,
        http=services.http(US),
    )
    assert first.status == "transferred"
    request = {
        "origin": "CN",
        "destination": "US",
        "recipient": {"name": "Onshore Mobility Inc.", "country": "US"},
        "purpose": "adas_training",
        "date": DAY.isoformat(),
        "data": [{"category": "anonymized_motion", "subjects": 2, "deid_state": "anonymized"}],
    }
    alone, counted = tmp_path / "alone.json", tmp_path / "counted.json"
    alone.write_text(json.dumps({**request, "history": []}))  # an explicit, empty history
    counted.write_text(json.dumps(request))
    base = ["gate", "check", "--project", str(cn.root), "--json"]
    result = CliRunner().invoke(app, [*base, str(alone)])
    assert result.exit_code == 0, result.stdout  # 2 subjects alone fit the scale of 3
    result = CliRunner().invoke(app, [*base, str(counted)])
    assert result.exit_code == 10, result.stdout  # with the 2 already sent: 4 > 3


def test_a_selection_sends_exactly_its_clips_unlinkable_to_other_profiles(
    stocked: Parties, services: Services
) -> None:
    """Regression: outputs were one object per vehicle, so a filtered selection sent the
    vehicle's other clips too, and export and training shared clip pseudonyms."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cn = stocked[CN]
    with SiteStore.open(cn) as site:
        secret = load_keystore(cn.keystore_path(cn.site(CN))).hmac_secret
        deidentify_site(site, resolve_profile("training", {}), secret=secret)
        ids = {
            profile: {r.clip_id: r.output_id for r in site.catalogue.deidentified(profile)}
            for profile in ("training", "export")
        }
    assert ids["training"] and not set(ids["training"].values()) & set(ids["export"].values())
    add_approval(cn, CN, _approval())
    sent = transfer(
        cn, US, "export:clips=test-00001", "adas_training", day=DAY, http=services.http(US)
    )
    assert sent.status == "transferred" and sent.dataset["clips"] == 1
    (path,) = _received(stocked[US])
    with SiteStore.open(stocked[US]) as site:
        table = pq.read_table(pa.BufferReader(site.objects.read(path)))
    assert set(table["clip"].to_pylist()) == {ids["export"]["test-00001"]}


def test_editing_the_approvals_table_moves_nothing_and_is_reported(
    stocked: Parties, services: Services
) -> None:
    """Regression (QA): widening an approval in the table let raw clips out, and verify was
    silent. The gate now trusts the table only where the signed record agrees."""
    from sqlalchemy import text

    from onshore.errors import LedgerTampered

    cn = stocked[CN]
    add_approval(cn, CN, _approval())
    everything = '["anonymized_motion","outside_video_identifiable","outside_video_masked",'
    everything += '"sensitive_area_geodata","trajectory","vehicle_flow","vehicle_id"]'
    with SiteStore.open(cn) as site, site.catalogue.transaction() as conn:
        conn.execute(text("UPDATE approvals SET categories = :c"), {"c": everything})
    with pytest.raises(LedgerTampered, match="categories"):
        transfer(cn, US, "raw", "adas_training", day=DAY, http=services.http(US))
    assert _received(stocked[US]) == []
    report = verify_party(cn, witness=False)
    assert not report.ok and report.problems[0].check == "approvals"


def test_no_training_abroad_without_consent(
    parties: Parties, services: Services, tmp_path: Path
) -> None:
    """Whatever the approvals, clips of drivers who did not consent to training are not sent
    for a training purpose; selecting the consenting drivers' clips is."""
    from conftest import make_clip
    from onshore.clips.mcap import write_mcap

    cn = parties[CN]
    folder = tmp_path / "up"
    folder.mkdir()
    for seed, consent in ((0, True), (1, False)):
        write_mcap(make_clip(seed, steps=1500, consent=consent), folder / f"c{seed}.mcap")
    with SiteStore.open(cn) as site:
        ingest(site, [folder])
        secret = load_keystore(cn.keystore_path(cn.site(CN))).hmac_secret
        deidentify_site(site, resolve_profile("export", {}), secret=secret)
    add_approval(cn, CN, _approval())
    http = services.http(US)
    mixed = transfer(cn, US, "export", "adas_training", day=DAY, http=http)
    assert mixed.status == "denied"
    assert any("did not consent" in reason for reason in mixed.decision.reasons)
    assert mixed.dataset["without_consent"] == 1
    consenting = transfer(cn, US, "export:consent=true", "adas_training", day=DAY, http=http)
    assert consenting.status == "transferred", consenting.decision.reasons
    analytics = transfer(cn, US, "export", "fleet_analytics", day=DAY, dry_run=True)
    assert "did not consent" not in " ".join(analytics.decision.reasons)
