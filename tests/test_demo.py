"""The demo runs end to end on a small setting: three sites and a coordinator, each its own
process with its own folder, each fleet in its own region, every crossing between their
services."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_demo_cli
from onshore.ledger import Ledger
from onshore.settings import Project, load_project
from onshore.store import SiteStore
from onshore.store.objects import ZONES_PATH

# The small demo these tests share takes minutes, more on a busy machine.
pytestmark = pytest.mark.timeout(1500)

# Rough boxes around the three cities the profiles are geo-referenced in.
CITY = {
    "cn-shanghai": ((30.7, 31.9), (120.9, 122.1)),
    "eu-frankfurt": ((52.3, 52.7), (13.0, 13.8)),  # the Berlin OSM network
    "us-oregon": ((45.2, 45.8), (-123.1, -122.3)),
}


def test_demo_end_to_end(small_demo: tuple[Path, dict]) -> None:  # type: ignore[type-arg]
    folder, first = small_demo
    parties = {p["party"]: p for p in first["parties"]}
    assert set(parties) == {*CITY, "coordinator"}
    assert len({p["pid"] for p in parties.values()}) == 4, "each party its own process"
    for party in parties:
        keys = folder / party / "keys"
        assert (keys / "ed25519.key").stat().st_mode & 0o077 == 0
        assert sorted(p.stem for p in (folder / party / "peers").glob("*.json")) == sorted(
            set(parties) - {party}
        )
    inventories = {inv["site"]: inv for inv in first["inventory"]}
    assert set(inventories) == set(CITY)
    for report in first["ingest"]:
        assert report["quarantined"] == [] and report["clips"] > 0
    for site_id, ((lat0, lat1), (lon0, lon1)) in CITY.items():
        project = load_project(folder / site_id)
        assert list(project.settings.sites) == [site_id], "a site's folder holds only itself"
        inv = inventories[site_id]
        assert inv["clips"] > 0 and inv["vehicles"] > 0 and inv["rows"] >= 50 * inv["clips"]
        opened = SiteStore.open(project, site_id)
        try:
            assert opened.check(deep=True)["ok"]
            clips = opened.catalogue.clips()
            assert all(c.recorded_in == site_id for c in clips)
            assert all(lat0 < c.min_lat and c.max_lat < lat1 for c in clips), site_id
            assert all(lon0 < c.min_lon and c.max_lon < lon1 for c in clips), site_id
            zones = json.loads(opened.objects.read(ZONES_PATH))
            assert zones["type"] == "FeatureCollection" and zones["features"]
        finally:
            opened.close()

    for found in first["classify"]:
        assert found["categories"]["trajectory"]["clips"] == inventories[found["site"]]["clips"]
        assert found["categories"]["trajectory"]["legal_classes"]
    states = {(d["site"], d["profile"]): d["state"] for d in first["deidentify"]}
    assert set(states.values()) <= {"pseudonymized", "anonymized"}
    assert all(states[(site, "export")] == "anonymized" for site in CITY)
    assert all(all(c["held"] for c in d["checks"]) for d in first["deidentify"])

    _check_gate_story(first)
    _check_reads(first, folder)
    _check_training(first, load_project(folder / "cn-shanghai"))
    reports = {r["site"]: r for r in first["reports"]}
    assert {s: r["report"] for s, r in reports.items()} == {
        "cn-shanghai": "cn-annual",
        "eu-frankfurt": "eu-transfers",
        "us-oregon": "us-bulk-data",
    }
    for report in reports.values():
        assert Path(report["pdf"]).read_bytes().startswith(b"%PDF")
        assert "<html" in Path(report["html"]).read_text()

    # The story ends with the plan, made at the coordinator from each site's answer through
    # its service (the coordinator's folder holds no site's catalogue).
    plan = first["plan"]
    assert {"transfer_out", "federated", "hybrid"} <= {o["id"] for o in plan["options"]}
    assert all(s["error"] is None for s in plan["sites"].values()), plan["sites"]
    assert Path(plan["memo"]["pdf"]).read_bytes().startswith(b"%PDF")
    federated = next(o for o in plan["options"] if o["id"] == "federated")
    # The assessment for model parameters the demo put on file lets China's updates leave.
    assert federated["sites"]["cn-shanghai"]["law"]["allowed"]
    assert not (folder / "coordinator" / "sites").exists()

    console = first["console"]
    assert {u["role"] for u in console["users"]} == {
        "site-operator",
        "coordinator-engineer",
        "auditor",
    }
    assert console["command"] == f"onshore console --project {folder / 'coordinator'}"
    files = {u["passwords"] for u in console["users"]}
    for users_file in map(Path, files):
        assert users_file.stat().st_mode & 0o077 == 0, "the passwords file is private"
    lines = sum(len(Path(f).read_text().splitlines()) for f in files)
    assert lines == len(console["users"])

    # The rerun leaves training out (the federated runs' resumption and digests have tests of
    # their own in test_federation), to keep the suite's time.
    again = run_demo_cli(folder, rounds=0)
    before = {inv["site"]: inv for inv in first["inventory"]}
    after = {inv["site"]: inv for inv in again["inventory"]}
    assert {s: after[s] for s in ("eu-frankfurt", "us-oregon")} == {
        s: before[s] for s in ("eu-frankfurt", "us-oregon")
    }, "a rerun stores nothing twice"
    # China holds what it held less the vehicle erased, whose uploads are not ingested again.
    erased = first["rights"]["erasure"]
    assert after["cn-shanghai"]["clips"] == before["cn-shanghai"]["clips"] - erased["clips"]
    assert after["cn-shanghai"]["vehicles"] == before["cn-shanghai"]["vehicles"] - 1
    assert again["rights"]["erasure"]["status"] == "already_erased"
    assert again["rights"]["erasure"]["request"] == erased["request"]
    assert all(r["clips"] == 0 for r in again["ingest"])
    assert all(v["ok"] for v in again["ledgers"]), "every ledger verifies after a rerun"
    assert again["training"] is None
    again_lines = sum(len(Path(f).read_text().splitlines()) for f in files)
    assert again_lines == len(console["users"]), "users kept"


def _check_training(result: dict, project: Project) -> None:  # type: ignore[type-arg]
    """Each site alone, then federated: sites with data trained and were evaluated on their own
    test splits; China's updates never left (no data, or no assessment for model parameters),
    and its ledger says so."""
    local, federated = result["training"]["local"], result["training"]["federated"]
    assert federated["mode"] == "federated" and federated["rounds"] == 2
    # The split by vehicle is a hash keyed by each site's random secret: on these small fleets
    # a site may have no test vehicle. Such a site says so; every other one is evaluated.
    tested = {s for s, r in local["regions"].items() if r.get("ade") is not None}
    for site, r in local["regions"].items():
        if site not in tested:
            assert r.get("error") or r["samples"] == 0, site
    assert {"eu-frankfurt", "us-oregon"} & {
        s for s, r in local["regions"].items() if r.get("steps")
    }, "the sites with data trained"
    for site in tested:
        region = federated["regions"][site]
        assert region["ade"] > 0 and federated["bytes_crossed"][site] > 0
        # Fine-tuned at the site, over the deployment engine: only its errors came back.
        tuned = federated["fine_tuned"][site]
        assert tuned["steps"] == 20 and tuned["ade"] > 0, tuned
        assert tuned["global_ade"] == pytest.approx(region["ade"])
    with SiteStore.open(project) as site:
        sent = [
            e.data["sent"]
            for e in Ledger.open(site.catalogue).entries(kind="federated_update")
            if e.data["kind"] == "train"
        ]
    # Asked before the run, China's gate refused its model updates; with an assessment for
    # model parameters on file they then left, and the release names its operator.
    assert result["training"]["model_gate"]["before"]["allowed"] is False
    assert sent, "China's model updates were put to its gate"
    release = result["training"]["release"]
    if release is not None:
        assert release["verify"]["valid"] is True
        assert release["verify"]["lineage"]["checked"] == release["verify"]["lineage"]["links"]
        refused = [load for load in release["loads"] if not load["loaded"]]
        assert [load["territory"] for load in refused] == ["US"]
        # Every site whose updates went into the model consented, signed, to the licence.
        trained = {p["party"] for p in release["release"]["parties"] if p["role"] == "operator"}
        assert set(release["licence"]["consents"]) == trained


def _check_gate_story(result: dict) -> None:  # type: ignore[type-arg]
    """The gate's part: raw Chinese clips refused with the rule that refuses them, an approval
    on file, and what it then lets through; every decision in both ledgers."""
    steps = result["transfers"]
    raw = steps[0]
    assert (raw["from"], raw["to"], raw["dataset"]["source"]) == ("cn-shanghai", "us-oregon", "raw")
    assert raw["status"] == "denied" and "cn_security_assessment" in raw["decision"]["mechanisms"]
    assert any("cn.order7" in reason for reason in raw["decision"]["reasons"])
    assert steps[1]["status"] == "denied"  # the approval does not cover raw clips
    for step in steps:
        # Every decision is in the origin's ledger; what moved, in the destination's too (a
        # selection that moved in an earlier step is not sent again).
        if step["status"] == "already_transferred":
            continue
        moved = step["status"] == "transferred"
        assert set(step["ledger"]) >= ({step["from"], step["to"]} if moved else {step["from"]})
    exported = [
        s for s in steps if s["from"] == "cn-shanghai" and s["dataset"]["source"] == "export"
    ]
    for step in exported:
        if step["dataset"]["without_consent"]:
            # Clips of drivers who did not consent may not go for training, anonymised or not.
            assert step["status"] == "denied", step["decision"]["reasons"]
        else:
            assert step["status"] in ("transferred", "already_transferred")
            assert step["decision"]["approval"]["id"] == "CAC-DEMO-2026-001"
    assert any(s["status"] == "transferred" for s in exported), "the consenting export went"
    assert all(v["ok"] for v in result["ledgers"])


def _check_reads(result: dict, folder: Path) -> None:  # type: ignore[type-arg]
    """The coordinator reads each site's clips through the site's service: China's gate
    withholds them until an assessment for remote queries is on file; a read from the site's
    own country crosses no border; every read from abroad is in the site's ledger."""
    reads = result["reads"]
    first, second = reads[0], reads[1]
    assert first["site"] == second["site"] == "cn-shanghai"
    assert not first["access"]["allowed"] and first["access"]["how"] == "gate"
    assert second["access"]["allowed"]
    assert second["access"]["decision"]["approval"]["id"] == "CAC-DEMO-2026-003"
    same = [r for r in reads if r["site"] == "eu-frankfurt"]
    assert same and same[0]["access"]["how"] == "same country"
    with SiteStore.open(load_project(folder / "cn-shanghai")) as site:
        recorded = [e.seq for e in Ledger.open(site.catalogue).entries(kind="remote_read")]
    assert first["access"]["ledger_seq"] in recorded and second["access"]["ledger_seq"] in recorded


def test_the_demo_serves_an_erasure_that_reaches_a_copy_abroad(
    small_demo: tuple[Path, dict],  # type: ignore[type-arg]
) -> None:
    folder, result = small_demo
    rights = result["rights"]
    assert rights is not None, "a consenting Chinese driver's export went to the US"
    access, erasure = rights["access"], rights["erasure"]
    assert access["transfers"] >= 1 and access["clips"] >= 1
    assert (Path(access["out"]) / "manifest.json").is_file()
    assert erasure["status"] == "erased" and erasure["clips"] == access["clips"]
    assert erasure["recipients"]["us-oregon"]["status"] == "confirmed"
    # The model released before stays as it is; verifying it lists the erasure since.
    verified = rights["release_verify"]
    assert verified["valid"]
    assert len(verified["lineage"]["erasures_after_training"]["cn-shanghai"]) == 1
    vin = json.loads((Path(access["out"]) / "vehicle.json").read_text())["vin"]
    project = load_project(folder / "cn-shanghai")
    with SiteStore.open(project, "cn-shanghai") as opened:
        assert vin not in opened.catalogue.clip_vins()
    # No byte of it is left in the site's folder: store, database, inbox, logs, reports.
    left = [
        str(p.relative_to(folder))
        for p in (folder / "cn-shanghai").rglob("*")
        if p.is_file() and vin.encode() in p.read_bytes()
    ]
    assert not left
