"""`onshore plan`: each option wins where the rules say it should, and each figure of the memo
matches its source (the sites' catalogues, the rulebooks' lead times, the approvals on file)."""

from __future__ import annotations

import json
import shutil
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import make_clip
from onshore.classify import classify_site
from onshore.cli.app import app
from onshore.clips.mcap import write_mcap
from onshore.deidentify import deidentify_site, resolve_profile
from onshore.errors import ConfigError, SiteNotFound
from onshore.forecast.local import LocalOptions, train_sites_locally
from onshore.gate import Approval
from onshore.gate.record import add_approval
from onshore.ingest import ingest
from onshore.ledger import Ledger
from onshore.plan import PlanOptions, make_plan, memo_report, write_memo
from onshore.rulebook.loader import project_rulebooks
from onshore.settings import Project, load_project
from onshore.sites import init_project
from onshore.sites.keystore import load_keystore
from onshore.store import SiteStore
from onshore.store.catalogue import _meta

TODAY = date(2027, 1, 4)
NEAR = TODAY + timedelta(days=30)
PLACES = {
    "cn-shanghai": (31.23, 121.47),
    "eu-frankfurt": (50.11, 8.68),
    "us-oregon": (45.52, -122.68),
}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three sites, each with eight vehicles' clips classified and de-identified under both
    profiles, and a short local run at each (the measured throughput: long enough that its
    seconds, kept to a tenth, are not 0)."""
    root = tmp_path_factory.mktemp("plan")
    project = init_project(root / "proj", "three-regions")
    for n, (site_id, (lat, lon)) in enumerate(PLACES.items()):
        uploads = root / f"uploads-{site_id}"
        uploads.mkdir()
        for seed in range(100 * n, 100 * n + 8):
            clip = make_clip(
                seed, steps=1600, lat0=lat, lon0=lon, recorded_in=site_id, consent=seed % 8 != 7
            )
            write_mcap(clip, uploads / f"{clip.meta.clip_id}.mcap")
        with SiteStore.open(project, site_id) as site:
            assert ingest(site, [uploads]).quarantined == []
            classify_site(site, as_of=TODAY)
            secret = load_keystore(project.keystore_path(project.site(site_id))).hmac_secret
            for profile in ("training", "export"):
                deidentify_site(site, resolve_profile(profile, {}), secret=secret)
    train_sites_locally(
        project, list(PLACES), LocalOptions(steps=60, batch_size=32), run="measured"
    )
    return project.root


@pytest.fixture
def proj(lab: Path, tmp_path: Path) -> Project:
    """A copy of the lab for one test: approvals and settings changed here stay here."""
    copy = tmp_path / "proj"
    shutil.copytree(lab, copy)
    return load_project(copy)


STRICT_US = """\
extends: us
version: "2026.1-strict"
rules:
  us.doj.geolocation_bulk:
    summary: Precise geolocation of more than 5 US devices to a country of concern (a test).
    applies_to: {classes: [precise_geolocation]}
    recipient: {tied_to: [countries_of_concern]}
    count: {subject: device, window: trailing_12_months, per: counterparty, when: ["> 5"]}
    outcome: prohibited
    source: 28 CFR Part 202, threshold lowered for a test
    confidence: unchecked
"""


def plan(project: Project, **changes: Any) -> dict[str, Any]:
    values: dict[str, Any] = {"today": TODAY, "horizon": NEAR}
    values.update(changes)
    return make_plan(project, PlanOptions(**values))


def option(result: dict[str, Any], option_id: str) -> dict[str, Any]:
    return next(o for o in result["options"] if o["id"] == option_id)


def cac_lead(project: Project) -> date:
    terms = project_rulebooks(project).for_origin("CN").mechanisms["cn_security_assessment"]
    assert terms.lead_time is not None
    return terms.lead_time.typical.after(TODAY)


def test_without_approvals_and_a_near_horizon_train_where_it_lies(proj: Project) -> None:
    result = plan(proj)
    assert result["recommended"] == "federated", result["decided_by"]
    out = option(result, "transfer_out")
    # China's data and China's updates both wait for a CAC assessment: 57 working days, past
    # the horizon. Europe's and America's data could move, but it is personal data.
    assert out["included"] == ["eu-frankfurt", "us-oregon"]
    assert any("cn-shanghai" in b and "after the horizon" in b for b in out["blockers"])
    cn = out["sites"]["cn-shanghai"]
    assert cn["law"]["via"] == "cn_security_assessment"
    assert cn["earliest"] == cac_lead(proj).isoformat()
    assert out["personal_subjects_crossing"] > 0
    fed = option(result, "federated")
    assert fed["included"] == ["eu-frankfurt", "us-oregon"]
    assert fed["personal_subjects_crossing"] == 0
    assert "personal data" in result["decided_by"]
    # With the horizon past the assessment, China's site takes part in both, from that day.
    later = plan(proj, horizon=TODAY + timedelta(days=200))
    assert option(later, "federated")["start"] == cac_lead(proj).isoformat()
    assert "cn-shanghai" in option(later, "transfer_out")["included"]


def test_a_cac_assessment_for_training_data_makes_transfer_out_feasible(proj: Project) -> None:
    first = plan(proj)
    items = first["sites"]["cn-shanghai"]["datasets"]["training"]["items"]
    centre = proj.site(first["centre"])
    approval = Approval.model_validate(
        {
            "id": "CAC-TEST-1",
            "type": "cn_security_assessment",
            "origin": "CN",
            "recipient": centre.entity,
            "categories": sorted({i["category"] for i in items}),
            "purposes": ["adas_training"],
            "max_subjects": 100_000,
            "valid_from": date(2026, 12, 1),
            "reference": "CAC-SA-TEST-1",
        }
    )
    add_approval(proj, "cn-shanghai", approval)
    result = plan(proj)
    out = option(result, "transfer_out")
    assert out["included"] == ["cn-shanghai", "eu-frankfurt", "us-oregon"]
    law = out["sites"]["cn-shanghai"]["law"]
    assert law["allowed"] and law["approval"]["id"] == "CAC-TEST-1"
    table = next(t for t in memo_report(result).tables if t.title.startswith("Approvals on file"))
    assert [(r[0], r[1], r[6]) for r in table.rows] == [("cn-shanghai", "CAC-TEST-1", "2029-11-30")]
    assert out["start"] == TODAY.isoformat()
    # Model updates are not training data: the assessment does not cover them.
    assert "cn-shanghai" not in option(result, "federated")["included"]
    assert result["recommended"] == "transfer_out"
    assert "data it can use" in result["decided_by"]
    # The hybrid moves what may move now: China's data included.
    hybrid = option(result, "hybrid")
    assert hybrid["sites"]["cn-shanghai"]["role"].startswith("moves its training data")
    # The assessment expires within three years: a horizon past its renewal date lists it.
    far = plan(proj, horizon=date(2030, 1, 1))
    renewals = option(far, "transfer_out")["renewals"]
    assert [r["approval"]["id"] for r in renewals] == ["CAC-TEST-1"]
    assert renewals[0]["valid_until"] == "2029-11-30"


def test_markets_with_the_us_from_2027_bring_a_model_per_market(proj: Project) -> None:
    result = plan(
        proj, markets=("CN", "EU", "US"), model_years=(2026, 2027, 2028), horizon=date(2027, 12, 1)
    )
    fed = option(result, "federated")
    assert "cn-shanghai" in fed["trainers"]
    us = fed["markets"]["US"]
    assert us["2026"]["allowed"] or "cn_security_assessment" in us["2026"].get("reason", "")
    assert not us["2027"]["allowed"] and us["2027"]["rule"] == "us.bis.connected_vehicles_ads"
    assert us["2027"]["restricted_parties"] == ["cn-shanghai"]
    per_market = option(result, "per_market:cn-shanghai")
    assert per_market["trainers"] == ["eu-frankfurt", "us-oregon"]
    assert per_market["markets"]["US"]["2027"]["allowed"]
    assert per_market["markets"]["US"]["2028"]["allowed"]
    assert per_market["for_markets"]["US"] == ["2027", "2028"]
    # Without the US among the markets there is no such model.
    eu_only = plan(proj, markets=("CN", "EU"), model_years=(2027,))
    assert not [o for o in eu_only["options"] if o["id"].startswith("per_market")]


def test_a_centre_in_china_cannot_take_american_data(proj: Project) -> None:
    # 28 CFR 202 prohibits precise geolocation of more than 1,000 US devices a year to a
    # country of concern, however de-identified: seven vehicles may go.
    first = option(plan(proj, centre="cn-shanghai"), "transfer_out")
    assert first["sites"]["us-oregon"]["law"]["allowed"]
    assert first["sites"]["us-oregon"]["law"]["rules"][0]["id"].startswith("us.")
    # A fleet over the threshold, as a user's rulebook with a threshold of 5 plays it: the law
    # is the rulebook's, and the plan follows it.
    (proj.root / "rulebooks").mkdir()
    (proj.root / "rulebooks" / "us-strict.yaml").write_text(STRICT_US)
    with (proj.root / "onshore.toml").open("a") as toml:
        toml.write('\n[rulebooks.overrides]\nus = "rulebooks/us-strict.yaml"\n')
    proj = load_project(proj.root)
    result = plan(proj, centre="cn-shanghai", horizon=TODAY + timedelta(days=200))
    out = option(result, "transfer_out")
    us = out["sites"]["us-oregon"]
    assert us["law"]["prohibited"] and us["earliest"] is None
    assert us["law"]["rules"][0]["id"] == "us.doj.geolocation_bulk"
    assert "us-oregon" not in out["included"]
    assert out["model"]["us-oregon"]["ade"] is None
    # The centre trains on China's export-capped compute.
    assert out["compute"]["where"] == ["cn-shanghai"]
    assert "relative throughput of 0.5" in out["compute"]["per_site"]["cn-shanghai"]["basis"]
    # Trained by a China-established operator, its model is refused for US model year 2027.
    assert not out["markets"]["US"][str(TODAY.year)]["allowed"]
    events = [e["event"] for e in option(result, "federated")["timeline"]]
    assert events[0].startswith("cn-shanghai: apply for cn_security_assessment")
    assert "the model is ready" in events


def test_a_site_with_half_the_compute_trains_twice_as_long(proj: Project) -> None:
    later = TODAY + timedelta(days=200)
    half = option(plan(proj, horizon=later), "federated")["compute"]["per_site"]
    assert proj.site("cn-shanghai").compute.relative_throughput == 0.5
    toml = proj.root / "onshore.toml"
    text = toml.read_text()
    toml.write_text(text.replace("relative_throughput = 0.5", "relative_throughput = 1.0", 1))
    full = option(plan(load_project(proj.root), horizon=later), "federated")["compute"]["per_site"]
    assert half["cn-shanghai"]["steps"] == full["cn-shanghai"]["steps"]
    assert half["cn-shanghai"]["seconds"] == pytest.approx(
        2 * full["cn-shanghai"]["seconds"], rel=0.02
    )
    assert half["eu-frankfurt"]["seconds"] == pytest.approx(full["eu-frankfurt"]["seconds"])
    assert "measured" in half["cn-shanghai"]["basis"]


def test_each_figure_of_the_memo_matches_its_source(proj: Project, tmp_path: Path) -> None:
    result = plan(proj)
    report = memo_report(result)
    written = write_memo(result, tmp_path / "memo")
    assert Path(written["pdf"]).read_bytes().startswith(b"%PDF")
    html = Path(written["html"]).read_text()
    assert option(result, result["recommended"])["title"] in html
    catalogue: dict[str, dict[str, Any]] = {}
    for site_id in PLACES:
        with SiteStore.open(proj, site_id) as site:
            catalogue[site_id] = site.catalogue.dataset_totals("training")
    fed = option(result, "federated")
    assert report.figure("federated.vehicles").value == sum(
        catalogue[s]["vehicles"] for s in fed["included"]
    )
    out = option(result, "transfer_out")
    assert report.figure("transfer_out.vehicles").value == sum(
        catalogue[s]["vehicles"] for s in out["included"]
    )
    # The consenting drivers only: one vehicle in eight at each site did not consent.
    assert all(c["vehicles"] == 7 for c in catalogue.values())
    start = report.figure("federated.start")
    assert start.value == TODAY.isoformat()
    later = memo_report(plan(proj, horizon=TODAY + timedelta(days=200)))
    figure = later.figure("federated.start")
    assert figure.value == cac_lead(proj).isoformat()
    details = " ".join(s.detail for s in figure.sources)
    assert "lead time of cn_security_assessment: 57 working days" in details
    assert "Measures for the Security Assessment" in details


def test_the_plan_is_asked_of_each_site_and_recorded_there(proj: Project) -> None:
    plan(proj)
    with SiteStore.open(proj, "cn-shanghai") as site:
        reads = [
            e.data
            for e in Ledger.open(site.catalogue).entries(kind="remote_read")
            if e.data.get("view") == "plan"
        ]
    assert reads and reads[-1]["party"] == proj.settings.coordinator.id
    assert reads[-1]["allowed"] and reads[-1]["items"][0]["category"] == "aggregate_metrics"


def test_the_cli_writes_the_plan_and_its_memo(proj: Project) -> None:
    result = CliRunner().invoke(
        app,
        [
            "plan",
            "--project",
            str(proj.root),
            "--markets",
            "eu,us",
            "--model-years",
            "2027-2028",
            "--today",
            TODAY.isoformat(),
            "--horizon",
            NEAR.isoformat(),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert found["markets"] == ["EU", "US"] and found["model_years"] == [2027, 2028]
    kept = proj.root / "plans" / found["plan"]
    assert json.loads((kept / "plan.json").read_text())["recommended"] == found["recommended"]
    assert (kept / "plan.html").exists() and (kept / "plan.pdf").exists()
    bad = CliRunner().invoke(
        app, ["plan", "--project", str(proj.root), "--horizon", "next week", "--json"]
    )
    assert isinstance(bad.exception, ConfigError) and "--horizon" in str(bad.exception)
    unknown = CliRunner().invoke(
        app, ["plan", "--project", str(proj.root), "--centre", "mars-base", "--json"]
    )
    assert isinstance(unknown.exception, SiteNotFound) and "mars-base" in str(unknown.exception)
    nameless = CliRunner().invoke(
        app, ["plan", "--project", str(proj.root), "--profile", "bogus", "--json"]
    )
    assert isinstance(nameless.exception, ConfigError) and "bogus" in str(nameless.exception)


def test_a_site_s_kept_aggregates_follow_its_catalogue(project: Project, tmp_path: Path) -> None:
    site_id = "eu-frankfurt"
    lat, lon = PLACES[site_id]
    uploads = tmp_path / "up"
    uploads.mkdir()
    for seed in range(6):
        clip = make_clip(seed, steps=1600, lat0=lat, lon0=lon, recorded_in=site_id)
        write_mcap(clip, uploads / f"{clip.meta.clip_id}.mcap")
    secret = load_keystore(project.keystore_path(project.site(site_id))).hmac_secret
    with SiteStore.open(project, site_id) as site:
        catalogue = site.catalogue
        assert catalogue.dataset_totals()["clips"] == 0  # kept from here on
        ingest(site, [uploads])
        assert catalogue.dataset_totals()["clips"] == 6, "an ingest is counted at once"
        assert catalogue.dataset_totals()["categories"] == {}
        classify_site(site, as_of=TODAY)
        categories = catalogue.dataset_totals()["categories"]
        assert categories["trajectory"]["vehicles"] == 6, "so is a classification"
        deidentify_site(site, resolve_profile("training", {}), secret=secret)
        more = tmp_path / "more"
        more.mkdir()
        for seed in range(6, 9):
            clip = make_clip(
                seed, steps=1600, lat0=lat, lon0=lon, recorded_in=site_id, consent=seed != 8
            )
            write_mcap(clip, more / f"{clip.meta.clip_id}.mcap")
        ingest(site, [more])
        classify_site(site, as_of=TODAY)
        kept = {p: catalogue.dataset_totals(p) for p in (None, "training")}
        assert kept[None]["clips"] == 8 and kept[None]["vehicles"] == 8
        assert kept["training"]["outputs"] == 6
        # Counted from the rows again, the totals are the same.
        with catalogue.engine.begin() as db:
            db.execute(_meta.delete().where(_meta.c.key == f"dataset_totals:{site_id}"))
        assert {p: catalogue.dataset_totals(p) for p in (None, "training")} == kept
