"""Releases and licences: a federated run released as a signed bundle, verified, licensed per
territory through the gate, and loaded only when the licence and the law allow; every refusal,
a tampered bundle, a forged licence, and the round trip to the trained model's predictions."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from datetime import date, timedelta
from importlib.resources import files
from pathlib import Path
from typing import Any

import orjson
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from typer.testing import CliRunner

import onshore
from onshore.cli.app import app
from onshore.clips.mcap import write_mcap
from onshore.deidentify import deidentify_site, resolve_profile
from onshore.errors import (
    BundleInvalid,
    LicenceDenied,
    LicenceInvalid,
    LicenceRefused,
    NotReleasable,
    OnshoreError,
    ReleaseExists,
    UseProhibited,
)
from onshore.federation import run_federated
from onshore.forecast import OBJECT_FEATURES, PAST_FEATURES
from onshore.forecast.nets import ModelSpec, build_model
from onshore.gate import Approval
from onshore.gate.record import add_approval
from onshore.ingest import ingest
from onshore.ledger.entry import canonical_json
from onshore.release import (
    create_release,
    grant_licence,
    parse_model_years,
    read_bundle,
    verify_bundle,
)
from onshore.release.bundle import CARD, LINEAGE, MANIFEST, WEIGHTS, pack
from onshore.release.card import Party
from onshore.release.licence import LICENCE_CONTEXT
from onshore.release.records import RELEASE_CREATED, RELEASE_REFUSED, coordinator_ledger
from onshore.release.restrictions import prohibitions
from onshore.release.story import release_demo_story
from onshore.rulebook import Rulebooks, builtin, builtin_rulebooks, load_text
from onshore.settings import Project
from onshore.sites import init_project
from onshore.sites.keystore import load_keystore
from onshore.store import SiteStore
from test_federation import REGIONS, both_splits, cn_model_approval, drive, options

RUN = "rel"
PARTNER = "Partner Motors GmbH"
TODAY = date.today()


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Project, Path]]:
    """Three sites, a federated run with China's updates in (an assessment for model
    parameters to the coordinator is on file), and release 1.0.0 of it."""
    root = tmp_path_factory.mktemp("release")
    project = init_project(root / "proj", "three-regions")
    for site_id in REGIONS:
        uploads = root / f"uploads-{site_id}"
        uploads.mkdir()
        for seed in range(3):
            for clip in drive(site_id, seed + 10 * len(site_id), clips=6):
                write_mcap(clip, uploads / f"{clip.meta.clip_id}.mcap")
        with SiteStore.open(project, site_id) as site:
            assert ingest(site, [uploads]).quarantined == []
            secret = load_keystore(project.keystore_path(project.site(site_id))).hmac_secret
            deidentify_site(site, resolve_profile("training", {}), secret=secret)
        both_splits(project, site_id, lambda n, s=site_id: drive(s, 900 + n, clips=6), root)
    add_approval(project, "cn-shanghai", cn_model_approval(project.settings.coordinator.entity))
    run_federated(project, options(project, RUN, rounds=1, local_steps=4))
    result = CliRunner().invoke(
        app,
        [
            "release",
            "create",
            "--run",
            RUN,
            "--version",
            "1.0.0",
            "-p",
            str(project.root),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    yield project, Path(json.loads(result.stdout)["bundle"])


def cli(*args: str) -> tuple[int, Any]:
    """Run a command as ``onshore ... --json`` would: its exit code and what it prints (an
    error as the entry point prints it)."""
    result = CliRunner().invoke(app, [*args, "--json"])
    if isinstance(result.exception, OnshoreError):
        return result.exception.exit_code, result.exception.to_dict()
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, json.loads(result.stdout)


def partner_approval() -> Approval:
    """What the Chinese site needs on file before its data's model parameters go to the
    partner outside China."""
    return Approval.model_validate(
        {
            "id": "CAC-PARTNER-1",
            "type": "cn_security_assessment",
            "origin": "CN",
            "recipient": PARTNER,
            "categories": ["model_parameters"],
            "purposes": ["adas"],
            "max_subjects": 100_000,
            "valid_from": f"{TODAY.year}-01-01",
            "reference": "CAC-SA-PARTNER-1",
        }
    )


@pytest.fixture(scope="module")
def licence(released: tuple[Project, Path]) -> Path:
    """A licence to Partner Motors for the EU and China, adas, model years 2026-2028: refused
    until the Chinese site has an approval covering the partner, then granted."""
    project, _ = released
    grant = [
        "license", "grant", "-p", str(project.root), "--release", "1.0.0",
        "--licensee", PARTNER, "--licensee-country", "DE", "--territories", "EU,CN",
        "--purposes", "adas", "--model-years", "2026-2028",
        "--expires", (TODAY + timedelta(days=365)).isoformat(),
    ]  # fmt: skip
    code, refused = cli(*grant)
    assert code == LicenceDenied.exit_code and refused["error"] == "licence.denied"
    assert "cn_security_assessment" in refused["message"] and PARTNER in refused["message"]
    add_approval(project, "cn-shanghai", partner_approval())
    code, granted = cli(*grant)
    assert code == 0, granted
    with coordinator_ledger(project) as ledger:
        kinds = [e.kind for e in ledger.entries()]
    assert kinds[-2:] == ["licence_refused", "licence_granted"]
    return Path(granted["licence"])


def sample(n: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    past = torch.cumsum(torch.randn(n, 20, len(PAST_FEATURES), generator=g), dim=1)
    objects = torch.randn(n, 8, len(OBJECT_FEATURES), generator=g) * 10
    return past, objects, torch.ones(n, 8, dtype=torch.bool)


# --- release ------------------------------------------------------------------------------


def test_a_release_verifies_and_loads_to_the_trained_models_predictions(
    released: tuple[Project, Path], licence: Path
) -> None:
    project, bundle = released
    code, report = cli("release", "verify", str(bundle))
    assert code == 0 and report["valid"] is True, report
    assert report["lineage"]["checked"] == report["lineage"]["links"] == 3
    assert report["signer_trusted_by"].startswith("the ledger of coordinator")
    card = read_bundle(bundle).card
    assert {s["id"] for s in card["sites"]} == set(REGIONS)
    assert set(card["privacy"]) == set(REGIONS) and card["rulebooks"]["at_release"]["us"]
    assert {"ade", "fde", "baselines"} <= set(card["regions"]["us-oregon"])
    roles = {(p["role"], p["party"], p["country"]) for p in card["parties"]}
    assert ("developer", "coordinator", "DE") in roles
    assert ("operator", "cn-shanghai", "CN") in roles
    with coordinator_ledger(project) as ledger:
        created = ledger.entries(kind=RELEASE_CREATED)
    assert created[-1].data["manifest_sha256"] == report["manifest_sha256"]

    loaded = onshore.load_model(bundle, licence, territory="DE", model_year=2027)
    assert loaded.check.allowed and loaded.card["version"] == "1.0.0"
    summary = json.loads((project.root / "runs" / RUN / "federated.json").read_text())
    store = Path(project.store_url(project.settings.coordinator))
    trained = build_model(ModelSpec("past_mlp"))
    trained.load_state_dict(load_tensors((store / summary["model_path"]["path"]).read_bytes()))
    trained.eval()
    with torch.no_grad():
        expected = trained(*sample())
    assert torch.equal(loaded.predict(*sample()), expected)


def test_only_a_finished_federated_run_is_released(released: tuple[Project, Path]) -> None:
    from onshore.forecast.local import LocalOptions, train_sites_locally

    project, _ = released
    train_sites_locally(
        project, ["eu-frankfurt"], LocalOptions(model=ModelSpec("past_mlp"), steps=2), run="loc"
    )
    with pytest.raises(NotReleasable, match="local run"):
        create_release(project, "loc", "2.0.0")
    # The counterfactual never has a coordinator's record; neither has any made-up run.
    with pytest.raises(NotReleasable, match="no finished federated run"):
        create_release(project, "centralized-x", "2.0.0")
    with pytest.raises(ReleaseExists):
        create_release(project, RUN, "1.0.0")
    with coordinator_ledger(project) as ledger:
        refused = [e.data for e in ledger.entries(kind=RELEASE_REFUSED)]
    assert [r["run"] for r in refused[-2:]] == ["loc", "centralized-x"]
    assert not (project.root / "releases" / "2.0.0").exists()


def altered(bundle: Path, tmp_path: Path, **changes: bytes) -> Path:
    members = dict(read_bundle(bundle).members)
    members.update({name.replace("_", "."): data for name, data in changes.items()})
    out = tmp_path / "altered.onshore"
    out.write_bytes(pack(members))
    return out


def _card_without_china(bundle: Path) -> bytes:
    card = read_bundle(bundle).card
    card["parties"] = [p for p in card["parties"] if p["country"] != "CN"]
    return canonical_json(card).encode()


def _other_weights(bundle: Path) -> bytes:
    tensors = load_tensors(read_bundle(bundle).weights)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 0.01
    return save_tensors(tensors)


@pytest.mark.parametrize(
    ("member", "change", "problem"),
    [
        (WEIGHTS, _other_weights, "weights.safetensors: its sha256"),
        (CARD, _card_without_china, "card.json: its sha256"),
        (
            LINEAGE,
            lambda b: canonical_json({**read_bundle(b).lineage, "updates": []}).encode(),
            "lineage.json: its sha256",
        ),
        (
            MANIFEST,
            lambda b: read_bundle(b).members[MANIFEST].replace(b'"1.0.0"', b'"1.0.1"'),
            "the signature does not verify",
        ),
    ],
)
def test_a_bundle_changed_after_signing_is_refused(
    released: tuple[Project, Path],
    licence: Path,
    tmp_path: Path,
    member: str,
    change: Any,
    problem: str,
) -> None:
    _, bundle = released
    bad = altered(bundle, tmp_path, **{member.replace(".", "_"): change(bundle)})
    code, report = cli("release", "verify", str(bad))
    assert code == BundleInvalid.exit_code and report["valid"] is False
    assert any(problem in p for p in report["problems"]), report["problems"]
    with pytest.raises(BundleInvalid):
        onshore.load_model(bad, licence, territory="DE", model_year=2027)


def test_a_bundle_resigned_by_another_key_is_not_the_releasers(
    released: tuple[Project, Path], tmp_path: Path
) -> None:
    """A forger who rewrites the manifest for his changed card and signs it with his own key
    makes a bundle that holds together, but not one the coordinator signed."""
    from onshore.release.bundle import Signer, build_bundle
    from onshore.sites.keystore import Secret, SiteKeys

    project, bundle = released
    original = read_bundle(bundle)
    keys = SiteKeys(Ed25519PrivateKey.generate(), Secret(b"x" * 32))
    forged = build_bundle(
        version="1.0.0",
        run=RUN,
        created=original.manifest["created"],
        project=original.project,
        signer=Signer.of(keys, project.settings.coordinator),
        keys=keys,
        weights=original.weights,
        card=orjson.loads(_card_without_china(bundle)),
        lineage=original.lineage,
    )
    path = tmp_path / "forged.onshore"
    path.write_bytes(forged)
    report = verify_bundle(path)
    assert not report.valid
    assert any("not the coordinator's" in p for p in report.problems), report.problems
    assert any("records no release" in p for p in report.problems)


def test_a_lineage_entry_changed_in_its_sites_ledger_is_caught(
    released: tuple[Project, Path], tmp_path: Path
) -> None:
    project, bundle = released
    copy = tmp_path / "proj"
    shutil.copytree(project.root, copy)
    link = next(u for u in read_bundle(bundle).lineage["updates"] if u["site"] == "cn-shanghai")
    db = copy / "sites" / "cn-shanghai" / "store" / "catalogue.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute(
            "UPDATE ledger_entries SET payload = replace(payload, '\"sent\":true', "
            "'\"sent\":false') WHERE site = 'cn-shanghai' AND seq = ?",
            (link["seq"],),
        )
    from onshore.settings import load_project

    report = verify_bundle(bundle, project=load_project(copy))
    assert not report.valid
    assert any(f"cn-shanghai entry {link['seq']}" in p for p in report.problems), report.problems


def test_release_verify_lists_the_erasures_made_after_the_training_run(
    released: tuple[Project, Path], tmp_path: Path
) -> None:
    from onshore.rights.erase import erase_vehicle
    from onshore.settings import load_project

    project, bundle = released
    copy = tmp_path / "proj"
    shutil.copytree(project.root, copy)
    copied = load_project(copy)
    with SiteStore.open(copied, "cn-shanghai") as site:
        vin = sorted(site.catalogue.clip_vins())[0]
    assert verify_bundle(bundle, project=copied).lineage["erasures_after_training"] == {}
    erased = erase_vehicle(copied, vin, site_id="cn-shanghai")
    report = verify_bundle(bundle, project=copied)
    assert report.valid, report.problems  # the model stays as released: no unlearning
    (found,) = report.lineage["erasures_after_training"]["cn-shanghai"]
    assert found["request"] == erased.request
    assert any("erasure(s) after its updates" in n for n in report.notes), report.notes


# --- licences -----------------------------------------------------------------------------


def test_each_use_the_licence_does_not_cover_is_refused(
    released: tuple[Project, Path], licence: Path
) -> None:
    _, bundle = released

    def refused(**use: Any) -> LicenceRefused:
        with pytest.raises(LicenceRefused) as caught:
            onshore.load_model(bundle, licence, **{"territory": "DE", "model_year": 2027, **use})
        assert caught.value.check is not None and not caught.value.check.allowed
        return caught.value

    assert "covers EU, CN, not JP" in refused(territory="JP").message
    assert "not research" in refused(purpose="research").message
    assert "not 2029" in refused(model_year=2029).message
    assert "expired" in refused(on=TODAY + timedelta(days=400)).message
    assert "valid only from" in refused(on=TODAY - timedelta(days=1)).message
    # EU covers its member states, as the EU rulebook's territory says; CN itself.
    assert onshore.load_model(bundle, licence, territory="CN", model_year=2026).check.allowed


def test_the_us_rule_refuses_china_linked_software_from_model_year_2027(
    released: tuple[Project, Path], licence: Path
) -> None:
    project, bundle = released
    with pytest.raises(UseProhibited) as caught:
        onshore.load_model(bundle, licence, territory="US", model_year=2027)
    message = caught.value.message
    assert "us.bis.connected_vehicles_ads" in message and "15 CFR 791" in message
    assert "Onshore Mobility (Shanghai) Co., Ltd." in message and "from model year 2027" in message
    assert "not US" in (caught.value.hint or "")  # the licence does not cover it either
    # Nor can a licence be granted for it: the law, not the gate's approvals, refuses.
    with pytest.raises(LicenceDenied, match="Prohibited by law") as denied:
        grant_licence(
            project,
            "1.0.0",
            licensee=PARTNER,
            territories=["US"],
            purposes=["adas"],
            model_years=parse_model_years("2026-2027"),
            expires=TODAY + timedelta(days=30),
        )
    assert "up to 2026" in str(denied.value)
    code, report = cli(
        "license", "verify", str(licence), "-p", str(project.root),
        "--territory", "US", "--model-year", "2027",
    )  # fmt: skip
    assert code == UseProhibited.exit_code and report["valid"] is False
    assert report["check"]["prohibited"][0]["rule"] == "us.bis.connected_vehicles_ads"


def _us_rule_from(year: int) -> Rulebooks:
    """The built-in rulebooks, with the US rule on connected-vehicle software moved to
    ``year``: as a user's edited rulebook would say it."""
    source = (files("onshore.rulebook") / "builtin" / "us.yaml").read_text()
    assert "from_model_year: 2027" in source
    us = load_text(source.replace("from_model_year: 2027", f"from_model_year: {year}"))
    return Rulebooks([builtin("cn"), builtin("eu"), us])


def test_the_law_refuses_what_a_licence_allows_and_comes_from_the_rulebook(
    released: tuple[Project, Path],
) -> None:
    """A licence for US model year 2026 is granted (the rule starts at 2027); if the US
    rulebook moves the rule to 2026, the same licence no longer loads; the rule is data."""
    project, bundle = released
    granted = grant_licence(
        project,
        "1.0.0",
        licensee=PARTNER,
        territories=["US"],
        purposes=["adas"],
        model_years=parse_model_years("2026"),
        expires=TODAY + timedelta(days=30),
    )
    us_licence = Path(granted["licence"])
    assert onshore.load_model(bundle, us_licence, territory="US", model_year=2026).check.allowed
    with pytest.raises(UseProhibited) as caught:
        onshore.load_model(
            bundle, us_licence, territory="US", model_year=2026, rulebooks=_us_rule_from(2026)
        )
    assert caught.value.check is not None
    assert all(c.held for c in caught.value.check.checks)  # the licence alone would allow it


def test_the_rule_applies_by_who_made_the_model() -> None:
    books = builtin_rulebooks()
    de = Party("developer", "Onshore Mobility Europe GmbH", "DE", (), "coordinator")
    cn = Party("operator", "Onshore Mobility (Shanghai) Co., Ltd.", "CN", (), "cn-shanghai")
    linked = Party("operator", "Owned from Moscow GmbH", "DE", ("RU",), "eu-x")

    def hits(*makers: Party, territory: str = "US", year: int = 2027) -> int:
        return len(
            prohibitions(
                books,
                makers,
                territory=territory,
                model_year=year,
                software="automated_driving",
                on=TODAY,
            )
        )

    assert hits(de) == 0
    assert hits(de, cn) == 1 and hits(de, linked) == 1
    assert hits(de, cn, year=2026) == 0 and hits(de, cn, territory="DE") == 0


def test_a_forged_licence_is_refused(
    released: tuple[Project, Path], licence: Path, tmp_path: Path
) -> None:
    _, bundle = released
    raw = json.loads(licence.read_text())
    widened = {**raw, "licence": {**raw["licence"], "territories": ["EU", "CN", "US"]}}
    (tmp_path / "widened.json").write_text(json.dumps(widened))
    with pytest.raises(LicenceInvalid, match="not signed by the releaser"):
        onshore.load_model(bundle, tmp_path / "widened.json", territory="JP", model_year=2027)
    # Signed by another key: the signature holds, but it is not the releaser's.
    other = Ed25519PrivateKey.generate()
    from onshore.release.bundle import signed_digest

    message = signed_digest(LICENCE_CONTEXT, canonical_json(widened["licence"]).encode())
    forged = {**widened, "signature": {**raw["signature"], "signature": other.sign(message).hex()}}
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    code, report = cli("license", "verify", str(tmp_path / "forged.json"), "--bundle", str(bundle))
    assert code == LicenceInvalid.exit_code and "not signed by the releaser" in report["message"]
    (tmp_path / "junk.json").write_text('{"licence": {}, "signature": {}}')
    with pytest.raises(LicenceInvalid, match=r"junk\.json: licence"):
        onshore.load_model(bundle, tmp_path / "junk.json", territory="DE", model_year=2027)


def test_a_licence_is_for_one_release(released: tuple[Project, Path], licence: Path) -> None:
    project, _ = released
    other = Path(create_release(project, RUN, "1.0.1")["bundle"])
    with pytest.raises(LicenceRefused, match=r"for release 1\.0\.0"):
        onshore.load_model(other, licence, territory="DE", model_year=2027)


def test_a_revoked_licence_is_refused_and_listed_so(
    released: tuple[Project, Path], tmp_path: Path
) -> None:
    project, bundle = released
    granted = grant_licence(
        project,
        "1.0.0",
        licensee="Short Term Co., Ltd.",
        licensee_country="CN",
        territories=["CN"],
        purposes=["research"],
        model_years=parse_model_years("2026-2030"),
        expires=TODAY + timedelta(days=10),
    )
    path = Path(granted["licence"])
    use = {"territory": "CN", "model_year": 2030, "purpose": "research"}
    assert onshore.load_model(bundle, path, **use).check.allowed
    code, revoked = cli("license", "revoke", granted["id"], "--reason", "contract ended",
                        "-p", str(project.root))  # fmt: skip
    assert code == 0 and revoked["revoked"] is True
    with pytest.raises(LicenceRefused, match=r"revoked .*contract ended"):
        onshore.load_model(bundle, path, **use)
    code, rows = cli("license", "list", "-p", str(project.root))
    assert code == 0
    assert {r["id"]: r["status"] for r in rows}[granted["id"]] == "revoked"

    # Away from the project: nothing vouches for the signer without a key, and a revocation
    # cannot be checked unless the caller accepts that (offline).
    away = tmp_path / "away"
    moved = project.root.with_name(project.root.name + "-moved")
    project.root.rename(moved)
    try:
        shutil.copy(moved / bundle.relative_to(project.root), away.with_suffix(".onshore"))
        copy = away.with_suffix(".onshore")
        lic = moved / path.relative_to(project.root)
        key = load_keystore(moved / "keys" / "coordinator").public_key
        with pytest.raises(BundleInvalid, match="nothing vouches"):
            onshore.load_model(copy, lic, **use)
        with pytest.raises(LicenceRefused, match="cannot be checked"):
            onshore.load_model(copy, lic, releaser_key=key, **use)
        offline = onshore.load_model(copy, lic, releaser_key=key, offline=True, **use)
        assert offline.check.allowed and "not checked" in " ".join(offline.check.notes)
    finally:
        moved.rename(project.root)


def test_the_demo_story_releases_licenses_and_shows_the_us_refusal(
    released: tuple[Project, Path],
) -> None:
    project, _ = released
    said: list[str] = []
    story = release_demo_story(project, RUN, said.append)
    assert story["release"]["version"] == "1.0.0" and story["release"]["created"] is False
    assert story["licence"]["territories"] == ["EU", "CN"]
    loads = {(load["territory"], load["model_year"]): load for load in story["loads"]}
    assert loads[("DE", 2027)]["loaded"] and loads[("CN", 2028)]["loaded"]
    us = loads[("US", 2027)]
    assert not us["loaded"] and us["error"] == "licence.prohibited" and story["us_rule_applies"]
    json.dumps(story)
