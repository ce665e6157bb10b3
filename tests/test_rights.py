"""Drivers' rights: an erasure reaches every copy (the origin's store and catalogue, the caches,
the parties that received any of it, each confirming in its signed ledger) and leaves every
ledger verifying; a withdrawal keeps a vehicle out of training and of transfers for the purpose;
an access request writes what the site holds; retention deletes what its periods no longer
allow. The recipients' apps run in process here; tests/test_rights_kill.py uses real
processes."""

from __future__ import annotations

import contextlib
from datetime import date, timedelta
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from conftest import Services, make_clip, make_parties, write_clips
from onshore.cli.app import app
from onshore.deidentify import deidentify_site, resolve_profile
from onshore.errors import ConfigError, ErasureBlocked, InvalidVin, PeerUnreachable, UnknownVehicle
from onshore.forecast.dataset import DatasetConfig, build_site_dataset
from onshore.gate.audit import verify_party
from onshore.gate.record import add_approval
from onshore.ingest import ingest
from onshore.ledger import Ledger, verify
from onshore.reports.build import build_report
from onshore.rights.access import access_vehicle
from onshore.rights.consent import withdraw_consent
from onshore.rights.erase import erase_vehicle
from onshore.rights.retention import run_retention
from onshore.settings import Project, load_project
from onshore.sites.keystore import load_keystore
from onshore.store import SiteStore
from onshore.store.objects import RECEIVED_DIR
from onshore.transfer import transfer
from test_transfer import _approval

CN, US = "cn-shanghai", "us-oregon"
DAY = date(2026, 11, 29)
Parties = dict[str, Project]


def _stock(project: Project, folder: Path, count: int, start: int = 0) -> None:
    """``count`` clips (each its own vehicle), ingested and de-identified under ``training``
    and ``export``."""
    paths = write_clips(folder / f"up-{start}", count, start=start, steps=1500)
    with SiteStore.open(project) as site:
        ingest(site, paths)
        secret = load_keystore(project.keystore_path(project.site(site.site))).hmac_secret
        for profile in ("training", "export"):
            deidentify_site(site, resolve_profile(profile, {}), secret=secret)


def _approve(project: Project) -> None:
    """China's assessment for anonymised motion to the US site, for ADAS training."""
    add_approval(project, CN, _approval())


def _vins(project: Project) -> list[str]:
    with SiteStore.open(project) as site:
        return sorted(site.catalogue.clip_vins())


def _everything(project: Project) -> dict[str, bytes]:
    """Every file of the party's folder, by path: the store, the database and its log."""
    return {
        str(p.relative_to(project.root)): p.read_bytes()
        for p in project.root.rglob("*")
        if p.is_file()
    }


def _ledgers_verify(parties: Parties, services: Services) -> None:
    for party in (CN, US):
        report = verify_party(parties[party], http_for=services.http)
        assert report.ok, report.as_dict()["problems"]


@pytest.fixture
def sent(parties: Parties, services: Services, tmp_path: Path) -> Parties:
    """Three Chinese vehicles, the anonymised export of all of them sent to the US."""
    _stock(parties[CN], tmp_path, 3)
    _approve(parties[CN])
    report = transfer(parties[CN], US, "export", "adas_training", day=DAY, http=services.http(US))
    assert report.status == "transferred", report.decision.reasons
    return parties


def test_an_erasure_reaches_the_copy_abroad_and_leaves_no_byte_of_the_vehicle(
    sent: Parties, services: Services
) -> None:
    vin, *others = _vins(sent[CN])
    with SiteStore.open(sent[US]) as us:
        received_before = sorted(us.objects.find(RECEIVED_DIR))
    inbox = sent[CN].root.parent.parent / "up-0"
    uploads = sorted(inbox.iterdir())
    report = erase_vehicle(sent[CN], vin, reason="DSR-1", http=services.http)
    assert report.status == "erased", report.as_dict()
    assert report.recipients[US]["status"] == "confirmed"
    assert report.recipients[US]["objects"] == 1  # its one anonymised output went there
    # Nothing of the vehicle is left at the origin, in any file of its folder (the store, the
    # catalogue's database and its log), and the other vehicles are untouched.
    files = _everything(sent[CN])
    assert not [name for name, data in files.items() if vin.encode() in data]
    assert _vins(sent[CN]) == others
    # Its upload went from the inbox it was ingested from; the others' stayed. Sent again,
    # it is removed, not ingested.
    assert len(sorted(inbox.iterdir())) == len(uploads) - 1
    resent = write_clips(inbox.parent / "again", 3, steps=1500)
    with SiteStore.open(sent[CN]) as cn:
        reingest = ingest(cn, resent).as_dict()
    assert reingest["erased_before"] == 1 and reingest["clips"] == 0
    assert len(list((inbox.parent / "again").iterdir())) == 2
    with SiteStore.open(sent[CN]) as cn:
        assert all(c.vin != vin for c in cn.catalogue.clips())
        assert cn.catalogue.inventory()["vehicles"] == len(others)
    # The copy abroad went; the others' stayed.
    with SiteStore.open(sent[US]) as us:
        received_after = sorted(us.objects.find(RECEIVED_DIR))
        (erasure_in,) = [e.data for e in Ledger.open(us.catalogue).entries(kind="erasure_in")]
    assert len(received_after) == len(received_before) - 1
    assert erasure_in["from"] == CN and erasure_in["request"] == report.request
    assert [e["path"] for e in erasure_in["erased"]] == sorted(
        set(received_before) - set(received_after)
    )
    # The ledgers name the vehicle by its keyed hash only, and still verify (the objects the
    # transfer listed are accounted for as erased, not lost).
    for party in (CN, US):
        with SiteStore.open(sent[party]) as site:
            for entry in Ledger.open(site.catalogue).entries():
                assert vin not in orjson.dumps(entry.data).decode()
    _ledgers_verify(sent, services)
    with SiteStore.open(sent[CN]) as cn:
        kinds = [e.kind for e in Ledger.open(cn.catalogue).entries()]
    assert kinds[-3:] == ["erasure", "erasure_confirmed", "erasure_completed"]
    # The reports list it, at the origin and at the recipient, citing the entries.
    year = date.today().year
    cn_report = build_report(sent[CN], "cn-annual", CN, year=year, with_map=False)
    assert cn_report.figure("rights.erasures").value == 1
    assert cn_report.figure("rights.erasures_completed").value == 1
    (row,) = next(t for t in cn_report.tables if t.title.startswith("Drivers' rights")).rows[:1]
    assert row[1] == "erasure" and US in row[3] and vin not in "".join(row)
    us_report = build_report(sent[US], "us-bulk-data", US, with_map=False)
    assert us_report.figure("rights.erasures_received").value == 1
    # A second request for the same vehicle says it is done, and changes nothing.
    again = erase_vehicle(sent[CN], vin, http=services.http)
    assert again.status == "already_erased" and again.request == report.request
    with SiteStore.open(sent[CN]) as cn:
        assert [e.kind for e in Ledger.open(cn.catalogue).entries()] == kinds


def test_erasure_answers_bad_input_clearly_and_does_nothing(
    sent: Parties, services: Services
) -> None:
    before = _everything(sent[CN])
    with pytest.raises(InvalidVin, match="not a VIN: 5 characters"):
        erase_vehicle(sent[CN], "ABCDE", http=services.http)
    with pytest.raises(InvalidVin, match="'I'"):
        erase_vehicle(sent[CN], "I" * 17, http=services.http)
    with pytest.raises(UnknownVehicle, match="holds no data of vehicle"):
        erase_vehicle(sent[CN], "1HGCM82633A004352", http=services.http)
    with pytest.raises(UnknownVehicle):
        withdraw_consent(sent[CN], "1HGCM82633A004352", "training")
    assert _everything(sent[CN]).keys() == before.keys()


def test_two_erasures_of_one_vehicle_at_once_are_one_request(
    parties: Parties, tmp_path: Path
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    _stock(parties[CN], tmp_path, 2)
    vin = _vins(parties[CN])[0]
    with ThreadPoolExecutor(max_workers=2) as pool:
        reports = list(pool.map(lambda _n: erase_vehicle(parties[CN], vin), range(2)))
    assert {r.request for r in reports} == {reports[0].request}
    assert {r.status for r in reports} <= {"erased", "already_erased"}
    with SiteStore.open(parties[CN]) as cn:
        kinds = [e.kind for e in Ledger.open(cn.catalogue).entries()]
    assert kinds.count("erasure") == 1 and kinds.count("erasure_completed") == 1


def test_a_recipient_that_is_down_is_asked_again_on_the_next_run(
    sent: Parties, services: Services
) -> None:
    vin = _vins(sent[CN])[0]
    # No http for the peer: the real address on file, where nothing listens.
    first = erase_vehicle(sent[CN], vin)
    assert first.status == "incomplete"
    assert first.recipients[US]["status"] == "unreachable"
    # The origin's part is done already: nothing of the vehicle is left there.
    assert vin not in _vins(sent[CN])
    second = erase_vehicle(sent[CN], vin, http=services.http)
    assert second.status == "erased" and second.request == first.request
    with SiteStore.open(sent[CN]) as cn:
        kinds = [e.kind for e in Ledger.open(cn.catalogue).entries()]
    assert kinds.count("erasure") == 1 and kinds.count("erasure_completed") == 1
    _ledgers_verify(sent, services)


def test_an_erasure_waits_for_a_transfer_in_flight(
    parties: Parties, services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _stock(parties[CN], tmp_path, 2)
    _approve(parties[CN])

    def cut(*_args: object) -> None:
        raise PeerUnreachable("us-oregon went down mid-transfer")

    # The US service goes down after the transfer was recorded: sent, never confirmed.
    with monkeypatch.context() as patch:
        patch.setattr("onshore.transfer.outbound._deliver", cut)
        with pytest.raises(PeerUnreachable):
            transfer(parties[CN], US, "export", "adas_training", day=DAY, http=services.http(US))
    vin = _vins(parties[CN])[0]
    before = _everything(parties[CN])
    with pytest.raises(ErasureBlocked, match="has not confirmed it"):
        erase_vehicle(parties[CN], vin, http=services.http)
    assert _everything(parties[CN]).keys() == before.keys() and vin in _vins(parties[CN])
    done = transfer(parties[CN], US, "export", "adas_training", day=DAY, http=services.http(US))
    assert done.status == "transferred"
    assert erase_vehicle(parties[CN], vin, http=services.http).status == "erased"


def test_a_withdrawal_keeps_the_vehicle_out_of_training_and_of_transfers(
    parties: Parties, services: Services, tmp_path: Path
) -> None:
    _stock(parties[CN], tmp_path, 3)
    _approve(parties[CN])
    vin = _vins(parties[CN])[0]
    config = DatasetConfig()
    with SiteStore.open(parties[CN]) as cn:
        before = build_site_dataset(cn, config).info["funnel"]
    done = withdraw_consent(parties[CN], vin, "training")
    assert done["status"] == "withdrawn"
    assert withdraw_consent(parties[CN], vin, "training")["status"] == "already_withdrawn"
    with SiteStore.open(parties[CN]) as cn:
        after = build_site_dataset(cn, config).info
        assert after["cached"] is False  # the cache built before held the vehicle
        outputs = {
            o.output_id
            for o in cn.catalogue.deidentified("training")
            if o.clip_id in {c.clip_id for c in cn.catalogue.clips_of([vin])}
        }
    assert after["funnel"]["clips_kept"] == before["clips_kept"] - 1
    samples = after["funnel"]["samples_train"] + after["funnel"]["samples_test"]
    assert samples < before["samples_train"] + before["samples_test"]
    report = transfer(parties[CN], US, "export", "adas_training", day=DAY, http=services.http(US))
    assert report.status == "transferred"
    assert report.as_dict()["dataset"]["withdrawn"] == 1
    assert report.as_dict()["dataset"]["clips"] == 2
    assert outputs  # the vehicle had training outputs, which no longer train
    with SiteStore.open(parties[CN]) as cn:
        (entry,) = [e.data for e in Ledger.open(cn.catalogue).entries(kind="consent_withdrawn")]
    assert entry["purpose"] == "training" and vin not in orjson.dumps(entry).decode()


def test_an_access_request_writes_what_the_site_holds_and_where_it_went(
    sent: Parties, tmp_path: Path
) -> None:
    vin = _vins(sent[CN])[0]
    out = tmp_path / "answer"
    data = access_vehicle(sent[CN], vin, out)
    assert data["clips"] == 1 and data["deidentified"] == 2 and data["transfers"] == 1
    vehicle = orjson.loads((out / "vehicle.json").read_bytes())
    assert vehicle["vin"] == vin and len(vehicle["clips"]) == 1
    (went,) = orjson.loads((out / "sent.json").read_bytes())
    assert went["to"] == US and went["purpose"] == "adas_training" and went["files"]
    manifest = orjson.loads((out / "manifest.json").read_bytes())
    assert {m["file"] for m in manifest} == {
        str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != "manifest.json"
    }
    with pytest.raises(ConfigError, match="not an empty folder"):
        access_vehicle(sent[CN], vin, out)


def test_retention_deletes_what_the_periods_no_longer_allow(
    parties: Parties, services: Services, tmp_path: Path
) -> None:
    project = parties[CN]
    toml = project.root / "onshore.toml"
    text = toml.read_text()
    assert "retention = {" in text
    _stock(project, tmp_path, 2)
    project = load_project(project.root)
    raw_days = project.site(CN).retention.raw_days
    deid_days = project.site(CN).retention.deidentified_days
    assert raw_days is not None and deid_days is not None
    today = date.today()
    nothing = run_retention(project, as_of=today)
    assert nothing["raw"]["clips"] == 0 and nothing["ledger"] == {}
    # After the raw period: the raw clips go, their outputs stay.
    later = today + timedelta(days=raw_days + 1)
    dry = run_retention(project, as_of=later, dry_run=True)
    assert dry["raw"]["clips"] == 2 and _vins(project)
    ran = run_retention(project, as_of=later)
    assert ran["raw"]["clips"] == 2 and ran["deidentified"]["outputs"] == 0
    with SiteStore.open(project) as cn:
        assert cn.catalogue.clips() == []
        assert len(cn.catalogue.deidentified("training")) == 2
        # A training set is still built from the outputs kept.
        assert build_site_dataset(cn, DatasetConfig()).info["funnel"]["clips_kept"]
        assert not list(cn.objects.find("clips"))
        # The uploads went from the inbox, and the same uploads again are not ingested.
        assert not list((tmp_path / "up-0").iterdir())
        again = write_clips(tmp_path / "again", 2, steps=1500)
        assert ingest(cn, again).as_dict()["clips"] == 0
    # After the de-identified period too: the outputs go.
    last = run_retention(project, as_of=today + timedelta(days=deid_days + 1))
    assert last["deidentified"]["outputs"] == 4
    with SiteStore.open(project) as cn:
        assert cn.catalogue.deidentified() == []
        report = verify(Ledger.open(cn.catalogue), objects=cn.objects)
    assert report.ok, report.as_dict()["problems"]
    # As a user checks it: the store and the ledger hold (erased objects are not lost ones).
    for command in (["store", "verify", "--deep"], ["ledger", "verify", "--offline"]):
        done = CliRunner().invoke(app, [*command, "--project", str(project.root), "--json"])
        assert done.exit_code == 0, done.output


# -- the property -----------------------------------------------------------------------------

_STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("ingest"), st.integers(0, 3)),
        st.tuples(st.just("deidentify"), st.just(0)),
        st.tuples(st.just("send"), st.just(0)),
        # Erasures twice as often: they are what the property is about.
        st.tuples(st.just("erase"), st.integers(0, 3)),
        st.tuples(st.just("erase"), st.integers(0, 1)),
        st.tuples(st.just("withdraw"), st.integers(0, 3)),
        st.tuples(st.just("retention"), st.integers(0, 2)),
    ),
    min_size=3,
    max_size=8,
)


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=_STEPS)
def test_no_byte_of_an_erased_vehicle_survives_any_sequence(
    steps: list[tuple[str, int]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("prop")
    parties = make_parties(root / "parties")
    services = Services(parties)
    periods = parties[CN].site(CN).retention
    assert periods.raw_days is not None and periods.deidentified_days is not None
    # Retention on: nothing due; the raw period over (outputs stay); both over.
    after = (0, periods.raw_days + 1, periods.deidentified_days + 1)
    try:
        _approve(parties[CN])
        uploads = root / "uploads"
        erased: set[str] = set()
        withdrawn: set[str] = set()
        # Every sequence starts from two vehicles whose export went abroad.
        for step, n in [("ingest", 0), ("ingest", 1), ("send", 0), *steps]:
            vin = make_clip(n).meta.vin
            with SiteStore.open(parties[CN]) as cn:
                held = set(cn.catalogue.clip_vins())
                held |= {o.vin for o in cn.catalogue.deidentified()}
            if step == "ingest" and vin not in held and vin not in erased:
                _stock(parties[CN], uploads, 1, start=n)
            elif step == "deidentify":
                with SiteStore.open(parties[CN]) as cn:
                    secret = load_keystore(parties[CN].keystore_path(parties[CN].site(CN)))
                    for profile in ("training", "export"):
                        deidentify_site(cn, resolve_profile(profile, {}), secret=secret.hmac_secret)
            elif step == "send":
                with contextlib.suppress(ConfigError):  # nothing left to send
                    transfer(
                        parties[CN], US, "export", "adas_training", day=DAY, http=services.http(US)
                    )
            elif step == "erase" and vin in held:
                assert erase_vehicle(parties[CN], vin, http=services.http).status == "erased"
                erased.add(vin)
            elif step == "withdraw" and vin in held:
                withdraw_consent(parties[CN], vin, "adas_training")
                withdrawn.add(vin)
            elif step == "retention":
                run_retention(parties[CN], as_of=date.today() + timedelta(days=after[n]))
        event(f"erased {len(erased)}, withdrawn {len(withdrawn)}")
        for party in (CN, US):
            for name, data in _everything(parties[party]).items():
                for vin in erased:
                    assert vin.encode() not in data, (party, name)
        with SiteStore.open(parties[CN]) as cn:
            assert not {c.vin for c in cn.catalogue.clips()} & erased
            assert not {o.vin for o in cn.catalogue.deidentified()} & erased
            # The training samples hold exactly the consenting, not withdrawn, outputs' clips.
            expected = sum(
                o.consent_training and o.rows > 0 and o.vin not in withdrawn
                for o in cn.catalogue.deidentified("training")
            )
            samples = build_site_dataset(cn, DatasetConfig(), cache=False)
            assert samples.info["funnel"]["clips_kept"] == expected
        _ledgers_verify(parties, services)
    finally:
        services.close()
