"""Transfers between sites: the gate decides, both ledgers record, only allowed data is copied,
and no other path writes into another site's store."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import write_clips
from onshore.deidentify import deidentify_site, resolve_profile
from onshore.errors import ConfigError, OnshoreError, StoreError
from onshore.gate import Approval
from onshore.ledger import Ledger, verify_site
from onshore.settings import Project
from onshore.sites.keystore import load_keystore
from onshore.store import SiteStore
from onshore.store.ingest import ingest
from onshore.store.objects import RECEIVED_DIR
from onshore.transfer import Selection, transfer
from onshore.gate.record import add_approval, revoke_approval

CN, US, EU = "cn-shanghai", "us-oregon", "eu-frankfurt"
DAY = date(2026, 11, 29)
SRC = Path(__file__).resolve().parents[1] / "src" / "onshore"


def _stocked(project: Project, tmp_path: Path, count: int = 4) -> Project:
    """The CN site with ``count`` clips long enough to survive trip-end trimming, de-identified
    under ``export``."""
    paths = write_clips(tmp_path / "up", count, steps=1500)
    with SiteStore.open(project, CN) as site:
        ingest(site, paths)
        secret = load_keystore(project.keystore_path(project.site(CN))).hmac_secret
        summary = deidentify_site(site, resolve_profile("export", {}), secret=secret)
        assert summary["clips"] == count
    return project


@pytest.fixture
def stocked(project: Project, tmp_path: Path) -> Project:
    return _stocked(project, tmp_path)


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


def _entries(project: Project, site_id: str, kind: str) -> list[dict[str, object]]:
    with SiteStore.open(project, site_id) as site:
        return [e.data for e in Ledger.open(site.catalogue).entries(kind=kind)]


def _received(project: Project, site_id: str) -> list[str]:
    with SiteStore.open(project, site_id) as site:
        return sorted(site.objects.find(RECEIVED_DIR))


def _verified(project: Project) -> None:
    for site_id in (CN, US, EU):
        report = verify_site(project, site_id)
        assert report.ok, report.as_dict()["problems"]


def test_a_denied_transfer_is_recorded_at_both_ends_and_moves_nothing(stocked: Project) -> None:
    report = transfer(stocked, CN, US, "raw", "adas_training", day=DAY)
    assert report.status == "denied" and not report.allowed
    assert "cn_security_assessment" in report.decision.mechanisms
    assert any("Denied" in reason for reason in report.decision.reasons)
    for site_id in (CN, US):
        (entry,) = _entries(stocked, site_id, "gate_decision")
        assert entry["transfer"] == report.transfer and entry["allowed"] is False
    assert _received(stocked, US) == []
    _verified(stocked)


def test_an_approval_lets_exactly_what_it_covers_through(stocked: Project) -> None:
    add_approval(stocked, CN, _approval())
    raw = transfer(stocked, CN, US, "raw", "adas_training", day=DAY)
    assert raw.status == "denied"  # raw trajectories and VINs are not what was approved
    sent = transfer(stocked, CN, US, "export", "adas_training", day=DAY)
    assert sent.status == "transferred", sent.decision.reasons
    assert sent.decision.approval is not None and sent.decision.approval.id == "CAC-1"
    received = _received(stocked, US)
    assert received and all(
        p.startswith(f"{RECEIVED_DIR}/{CN}/deidentified/export/") for p in received
    )
    (out,) = _entries(stocked, CN, "transfer_out")
    (into,) = _entries(stocked, US, "transfer_in")
    assert out["transfer"] == into["transfer"] == sent.transfer
    assert sorted(o["path"] for o in into["objects"]) == received  # type: ignore[union-attr]
    _verified(stocked)
    again = transfer(stocked, CN, US, "export", "adas_training", day=DAY)
    assert again.status == "already_transferred" and again.copied == 0
    assert _received(stocked, US) == received
    assert len(_entries(stocked, CN, "transfer_out")) == 1


def test_a_revoked_approval_covers_nothing(stocked: Project) -> None:
    add_approval(stocked, CN, _approval())
    revoke_approval(stocked, CN, "CAC-1", "withdrawn by the regulator")
    report = transfer(stocked, CN, US, "export", "adas_training", day=DAY)
    assert report.status == "denied"
    kinds = [e["approval"] for e in _entries(stocked, CN, "approval_revoked")]
    assert kinds == ["CAC-1"]


def test_a_dry_run_records_and_moves_nothing(stocked: Project) -> None:
    add_approval(stocked, CN, _approval())
    report = transfer(stocked, CN, US, "export", "adas_training", day=DAY, dry_run=True)
    assert report.status == "would_transfer"
    assert _entries(stocked, CN, "transfer_out") == [] and _received(stocked, US) == []


def test_earlier_transfers_count_against_an_approvals_volume(stocked: Project) -> None:
    """Splitting does not dodge the approval's scale: the second half is counted with the
    first, which the origin's ledger remembers."""
    add_approval(stocked, CN, _approval(max_subjects=3))
    first = transfer(
        stocked, CN, US, "export:clips=test-00000+test-00001", "adas_training", day=DAY
    )
    assert first.status == "transferred", first.decision.reasons
    second = transfer(
        stocked, CN, US, "export:clips=test-00002+test-00003", "adas_training", day=DAY
    )
    assert second.status == "denied"
    assert any("4" in r and "3" in r for r in second.decision.reasons)


def test_us_data_to_china_follows_the_bulk_threshold(project: Project, tmp_path: Path) -> None:
    """28 CFR 202 prohibits bulk US sensitive data going to China whatever the approvals; two
    vehicles' precise geolocation is under the bulk threshold (1,000 devices), so it may go,
    recorded at both ends; the same data counted with 1,000 earlier devices may not."""
    from onshore.gate import decide
    from onshore.rulebook import DataItem, Recipient, TransferRequest, builtin_rulebooks

    paths = write_clips(tmp_path / "us", 2, recorded_in="us-oregon", steps=200)
    with SiteStore.open(project, US) as site:
        ingest(site, paths)
    report = transfer(project, US, CN, "raw", "adas_training", day=DAY)
    assert report.allowed and report.decision.exempt and report.status == "transferred"
    _verified(project)
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


def test_unknown_clip_or_profile_is_refused(stocked: Project) -> None:
    with pytest.raises(ConfigError, match="no clip nope"):
        transfer(stocked, CN, US, "raw:clips=nope", "adas_training", day=DAY)
    with pytest.raises(ConfigError):
        transfer(stocked, CN, US, "nosuchprofile", "adas_training", day=DAY)
    with pytest.raises(ConfigError, match="between sites"):
        transfer(stocked, CN, CN, "raw", "adas_training", day=DAY)


def test_no_other_path_writes_under_received(project: Project) -> None:
    with SiteStore.open(project, US) as site:
        for path in (f"{RECEIVED_DIR}/x", f"./{RECEIVED_DIR}/x", f"clips/../{RECEIVED_DIR}/x"):
            with pytest.raises(StoreError):
                site.objects.put(path, b"data")
        with pytest.raises(StoreError):
            site.objects.put_many([("clips/a", b"1"), (f"{RECEIVED_DIR}/b", b"2")])
        with pytest.raises(StoreError):
            site.objects.receive([("clips/a", b"1")])
        assert list(site.objects.find(RECEIVED_DIR)) == []
    # Structurally: receive() is called from the transfer module and nowhere else.
    callers = [
        path.relative_to(SRC).as_posix()
        for path in SRC.rglob("*.py")
        if ".receive(" in path.read_text()
    ]
    assert callers == ["transfer/run.py"]


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
def test_every_transfer_is_in_both_ledgers(stocked: Project, steps: list[tuple[str, int]]) -> None:
    """Any sequence of approvals, revocations and transfers on any days: every transfer has an
    entry at both ends, nothing arrives without a transfer_in, and CN important data never
    arrives without an unrevoked assessment valid that day."""
    try:
        _run_steps(stocked, steps)
        _verified(stocked)
    finally:
        _reset(stocked)


def _run_steps(stocked: Project, steps: list[tuple[str, int]]) -> None:
    approvals = 0
    for action, offset in steps:
        day = date.fromordinal(date(2026, 1, 1).toordinal() + offset)
        if action == "add":
            approvals += 1
            add_approval(stocked, CN, _approval(id=f"A{approvals}-{offset}", valid_from=day))
        elif action == "revoke" and approvals:
            # Revoking twice is refused; the sequence goes on either way.
            with contextlib.suppress(OnshoreError):
                revoke_approval(stocked, CN, f"A{approvals}-{_last_offset(steps, approvals)}", "x")
        elif action != "revoke":
            dataset = {"raw": "raw", "export": "export", "export-half": "export:clips=test-00000"}
            report = transfer(stocked, CN, US, dataset[action], "adas_training", day=day)
            kind_out = "transfer_out" if report.allowed else "gate_decision"
            kind_in = "transfer_in" if report.allowed else "gate_decision"
            assert report.transfer in {e["transfer"] for e in _entries(stocked, CN, kind_out)}
            assert report.transfer in {e["transfer"] for e in _entries(stocked, US, kind_in)}
            if report.allowed:
                approval = report.decision.approval
                assert approval is not None and approval.type == "cn_security_assessment"
                assert approval.valid_from <= day and approval.revoked_at is None
                assert action != "raw"


def _last_offset(steps: list[tuple[str, int]], number: int) -> int:
    adds = [offset for action, offset in steps if action == "add"]
    return adds[number - 1]


def _reset(project: Project) -> None:
    """Hypothesis reuses the fixture across examples: start the next from empty ledgers and
    registries (a fresh project per example would cost seconds each)."""
    from sqlalchemy import inspect, text

    for site_id in (CN, US, EU):
        with SiteStore.open(project, site_id) as site:
            present = set(inspect(site.catalogue.engine).get_table_names())
            with site.catalogue.transaction() as conn:
                for table in ("ledger_entries", "ledger_heads", "approvals", "received_objects"):
                    if table in present:
                        conn.execute(text(f"DELETE FROM {table}"))
            for path in list(site.objects.find(RECEIVED_DIR)):
                site.objects.delete(path)


def test_a_transfer_killed_anywhere_completes_once_on_rerun(
    project: Project, tmp_path: Path
) -> None:
    """SIGKILL an allowed transfer at random moments; each rerun leaves both ledgers verified,
    the objects received exactly once, and one transfer_out and one transfer_in."""
    _stocked(project, tmp_path, count=6)
    add_approval(project, CN, _approval())
    env = {**os.environ, "PYTHONPATH": str(SRC.parent)}
    command = [
        sys.executable,
        "-m",
        "onshore",
        "transfer",
        "--project",
        str(project.root),
        "--from",
        CN,
        "--to",
        US,
        "--dataset",
        "export",
        "--purpose",
        "adas_training",
        "--date",
        DAY.isoformat(),
        "--json",
    ]
    draw = random.Random(7)
    for trial in range(4):
        child = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(draw.uniform(0.5, 4.0))
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
        child.wait()
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        assert done.returncode == 0, (trial, done.stdout, done.stderr)
        _verified(project)
        assert len(_entries(project, CN, "transfer_out")) == 1
        assert len(_entries(project, US, "transfer_in")) == 1
        received = _received(project, US)
        assert len(received) == len(set(received)) > 0
        _reset(project)
        add_approval(project, CN, _approval())


def test_the_origin_may_replace_what_it_sent(stocked: Project) -> None:
    """Regression: re-de-identifying after a transfer replaces the outputs that were sent; the
    origin's ledger vouches for what left, not for keeping it, so it still verifies."""
    add_approval(stocked, CN, _approval())
    sent = transfer(stocked, CN, US, "export", "adas_training", day=DAY)
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
    with SiteStore.open(stocked, CN) as site:
        secret = load_keystore(stocked.keystore_path(stocked.site(CN))).hmac_secret
        deidentify_site(site, changed, secret=secret)
        left = {o["path"] for o in _entries(stocked, CN, "transfer_out")[0]["sent"]}  # type: ignore[index, union-attr]
        assert not any(site.objects.exists(p) for p in left)
    _verified(stocked)


def test_gate_check_at_a_site_counts_its_ledger(stocked: Project, tmp_path: Path) -> None:
    """`gate check --site` without a history in the request counts what the site's ledger
    says already left: the second half of a split transfer is over the approval's scale."""
    import json

    from typer.testing import CliRunner

    from onshore.cli.app import app

    add_approval(stocked, CN, _approval(max_subjects=3))
    first = transfer(
        stocked, CN, US, "export:clips=test-00000+test-00001", "adas_training", day=DAY
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
    base = ["gate", "check", "--project", str(stocked.root), "--site", CN, "--json"]
    result = CliRunner().invoke(app, [*base, str(alone)])
    assert result.exit_code == 0, result.stdout  # 2 subjects alone fit the scale of 3
    result = CliRunner().invoke(app, [*base, str(counted)])
    assert result.exit_code == 10, result.stdout  # with the 2 already sent: 4 > 3


def test_a_selection_sends_exactly_its_clips_unlinkable_to_other_profiles(
    stocked: Project,
) -> None:
    """Regression: outputs were one object per vehicle, so a filtered selection sent the
    vehicle's other clips too, and export and training shared clip pseudonyms."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with SiteStore.open(stocked, CN) as site:
        secret = load_keystore(stocked.keystore_path(stocked.site(CN))).hmac_secret
        deidentify_site(site, resolve_profile("training", {}), secret=secret)
        ids = {
            profile: {r.clip_id: r.output_id for r in site.catalogue.deidentified(profile)}
            for profile in ("training", "export")
        }
    assert ids["training"] and not set(ids["training"].values()) & set(ids["export"].values())
    add_approval(stocked, CN, _approval())
    sent = transfer(stocked, CN, US, "export:clips=test-00001", "adas_training", day=DAY)
    assert sent.status == "transferred" and sent.dataset["clips"] == 1
    (path,) = _received(stocked, US)
    with SiteStore.open(stocked, US) as site:
        table = pq.read_table(pa.BufferReader(site.objects.read(path)))
    assert set(table["clip"].to_pylist()) == {ids["export"]["test-00001"]}


def test_editing_the_approvals_table_moves_nothing_and_is_reported(stocked: Project) -> None:
    """Regression (QA): widening an approval in the table let raw clips out, and verify was
    silent. The gate now trusts the table only where the signed record agrees."""
    from sqlalchemy import text

    from onshore.errors import LedgerTampered

    add_approval(stocked, CN, _approval())
    everything = '["anonymized_motion","outside_video_identifiable","outside_video_masked",'
    everything += '"sensitive_area_geodata","trajectory","vehicle_flow","vehicle_id"]'
    with SiteStore.open(stocked, CN) as site, site.catalogue.transaction() as conn:
        conn.execute(text("UPDATE approvals SET categories = :c"), {"c": everything})
    with pytest.raises(LedgerTampered, match="categories"):
        transfer(stocked, CN, US, "raw", "adas_training", day=DAY)
    assert _received(stocked, US) == []
    report = verify_site(stocked, CN)
    assert not report.ok and report.problems[0].check == "approvals"


def test_no_training_abroad_without_consent(project: Project, tmp_path: Path) -> None:
    """Whatever the approvals, clips of drivers who did not consent to training are not sent
    for a training purpose; selecting the consenting drivers' clips is."""
    from conftest import make_clip
    from onshore.clips.mcap import write_mcap

    folder = tmp_path / "up"
    folder.mkdir()
    for seed, consent in ((0, True), (1, False)):
        write_mcap(make_clip(seed, steps=1500, consent=consent), folder / f"c{seed}.mcap")
    with SiteStore.open(project, CN) as site:
        ingest(site, [folder])
        secret = load_keystore(project.keystore_path(project.site(CN))).hmac_secret
        deidentify_site(site, resolve_profile("export", {}), secret=secret)
    add_approval(project, CN, _approval())
    mixed = transfer(project, CN, US, "export", "adas_training", day=DAY)
    assert mixed.status == "denied"
    assert any("did not consent" in reason for reason in mixed.decision.reasons)
    assert mixed.dataset["without_consent"] == 1
    consenting = transfer(project, CN, US, "export:consent=true", "adas_training", day=DAY)
    assert consenting.status == "transferred", consenting.decision.reasons
    analytics = transfer(project, CN, US, "export", "fleet_analytics", day=DAY, dry_run=True)
    assert "did not consent" not in " ".join(analytics.decision.reasons)
