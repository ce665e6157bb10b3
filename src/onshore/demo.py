"""The demo: every stage built so far, end to end, on the embedded defaults.

Creates a project with three sites (local folders, SQLite catalogues), simulates a fleet in each
site's region with SUMO, ingests each fleet into its own site, classifies every clip and
de-identifies the site's clips under the ``training`` and ``export`` profiles; then tries the
gate: raw Chinese clips to the US site are refused with the rule and the count, an approval is
put on file, and what it then lets through (and what it still does not) is shown; then the
driving model is trained at each site alone and across the three sites with Flower (DP-SGD at
each site, every update through its gate: China's model updates stay in China until an
assessment for them is on file); every ledger is verified at the end. Returns what each stage
found, removed, decided and trained.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Final

from onshore.classify import classify_site
from onshore.deidentify import deidentify_site, resolve_profile
from onshore.errors import ConfigError, InvalidApproval
from onshore.fleet import simulate_site
from onshore.gate import Approval
from onshore.gate.record import add_approval
from onshore.ledger import verify_site
from onshore.rulebook.loader import project_rulebooks
from onshore.settings import CONFIG_NAME, Project, load_project
from onshore.sites import init_project
from onshore.sites.keystore import load_keystore
from onshore.store import SiteStore
from onshore.store.ingest import ingest
from onshore.transfer import transfer

__all__ = ["run_demo"]


def run_demo(
    folder: Path,
    *,
    vehicles: int = 150,
    minutes: float = 6.0,
    seed: int = 7,
    rounds: int = 5,
    local_steps: int = 100,
    model: str = "object_encoder",
    say: Callable[[str], None] = lambda _m: None,
) -> dict[str, Any]:
    """Run the demo in ``folder`` (reusing a project already there) and return what it did."""
    started = time.perf_counter()
    if (folder / CONFIG_NAME).exists():
        say(f"reusing the project in {folder}")
        project = load_project(folder)
    else:
        say(f"creating a three-site project in {folder}")
        project = init_project(folder, "three-regions")
    inventories, ingests, classified, deidentified = [], [], [], []
    for site in project.settings.sites.values():
        uploads = project.root / "uploads" / site.id
        say(
            f"{site.id}: simulating {vehicles} vehicles for {minutes:g} min ({site.region_profile})"
        )
        result = simulate_site(site, vehicles=vehicles, minutes=minutes, seed=seed, out=uploads)
        say(f"{site.id}: ingesting {len(result.clips)} clips ({result.frames} camera frames)")
        with SiteStore.open(project, site.id) as opened:
            opened.keep_reference_zones(result.zones.read_bytes())
            report = ingest(opened, result.clips)
            ingests.append(report.as_dict())
            say(f"{site.id}: classifying (faces and plates in the camera frames)")
            book = project_rulebooks(project).for_origin(site.jurisdiction)
            classified.append(classify_site(opened, rulebook=book))
            secret = load_keystore(project.keystore_path(site)).hmac_secret
            for name in ("training", "export"):
                say(f"{site.id}: de-identifying ({name})")
                profile = resolve_profile(name, project.settings.deidentify_profiles)
                deidentified.append(deidentify_site(opened, profile, secret=secret))
            inventories.append(opened.catalogue.inventory())
    transfers = _gate(project, say)
    training = _train(project, rounds, local_steps, model, say) if rounds else None
    reports = _reports(project, say)
    say("verifying every site's ledger")
    ledgers = [verify_site(project, site_id).as_dict() for site_id in project.settings.sites]
    console = _console_users(project, say)
    return {
        "project": str(project.root),
        "ingest": ingests,
        "classify": classified,
        "deidentify": deidentified,
        "inventory": inventories,
        "transfers": transfers,
        "training": training,
        "reports": reports,
        "ledgers": ledgers,
        "console": console,
        "seconds": round(time.perf_counter() - started, 1),
    }


_CN, _US, _EU = "cn-shanghai", "us-oregon", "eu-frankfurt"
_PURPOSE = "adas_training"


def _gate(project: Project, say: Callable[[str], None]) -> list[dict[str, Any]]:
    """The gate's part of the story, on the three-regions sites: what it refuses, what an
    approval changes, and what it still refuses."""
    sites = project.settings.sites
    if not {_CN, _US, _EU} <= set(sites):
        say("the gate's story needs the three-regions sites; skipped")
        return []
    today = datetime.now(UTC).date()
    steps: list[dict[str, Any]] = []

    def attempt(origin: str, destination: str, dataset: str, note: str) -> None:
        say(f"transfer {dataset} {origin} -> {destination}: {note}")
        try:
            report = transfer(project, origin, destination, dataset, _PURPOSE, day=today)
        except ConfigError as exc:  # e.g. a tiny fleet whose export kept no clip
            say(f"skipped: {exc}")
            return
        steps.append({"note": note, **report.as_dict()})

    attempt(_CN, _US, "raw", "raw Chinese clips to the US, no approval on file")
    say(f"{_CN}: putting a CAC security assessment on file for de-identified training data")
    approval = Approval.model_validate(
        {
            "id": "CAC-DEMO-2026-001",
            "type": "cn_security_assessment",
            "origin": "CN",
            "recipient": sites[_US].entity,
            "categories": ["anonymized_motion", "outside_video_masked"],
            "purposes": [_PURPOSE],
            "max_subjects": 100_000,
            "valid_from": date(today.year, 1, 1),
            "reference": "CAC-SA-2026-0417 (demo)",
        }
    )
    try:
        add_approval(project, _CN, approval)
    except InvalidApproval:
        say("(already on file from an earlier run)")
    attempt(_CN, _US, "raw", "raw clips again: the approval does not cover them")
    attempt(_CN, _US, "export", "the anonymised export, consent or not: not for training")
    attempt(_CN, _US, "export:consent=true", "the consenting drivers' anonymised export: approved")
    attempt(_EU, _US, "export:consent=true", "anonymised European data: no longer personal data")
    attempt(
        _EU,
        _US,
        "training:consent=true",
        "pseudonymised European data: personal data, no SCC on file",
    )
    return steps


def _train(
    project: Project, rounds: int, local_steps: int, model: str, say: Callable[[str], None]
) -> dict[str, Any]:
    """Each site's model alone, then the federated model: the same model and local work."""
    from onshore.federation import FederatedOptions, run_federated
    from onshore.model.local import LocalOptions, train_sites_locally
    from onshore.model.nets import ModelSpec

    spec = ModelSpec(model)
    say(f"training {model} at each site alone ({rounds * local_steps} steps)")
    local = train_sites_locally(
        project, None, LocalOptions(model=spec, steps=rounds * local_steps), run="demo-local"
    )
    model_gate = _model_parameters_gate(project, say)
    say(f"federated training: {rounds} rounds across the sites, DP-SGD at each")
    federated = run_federated(
        project,
        FederatedOptions(
            run="demo-federated",
            sites=tuple(project.settings.sites),
            project=str(project.root),
            model=spec,
            rounds=rounds,
            local_steps=local_steps,
            # Small batches keep DP-SGD's sampling rate, and so epsilon, low on small sites.
            batch_size=64,
        ),
        say=say,
    )
    release = None
    if federated["lineage"]:
        from onshore.release.story import release_demo_story

        release = release_demo_story(project, federated["run"], say)
    return {"local": local, "federated": federated, "model_gate": model_gate, "release": release}


def _model_parameters_gate(project: Project, say: Callable[[str], None]) -> dict[str, Any]:
    """China's gate on its model updates: asked before the run, it refuses them without a CAC
    assessment that covers model parameters; one is put on file, and the updates may leave."""
    from onshore.federation.site import model_parameters_assessment, outbound_decision
    from onshore.ledger import Ledger

    if _CN not in project.settings.sites:
        return {}
    coordinator = project.settings.coordinator
    with SiteStore.open(project, _CN) as store:
        keys = load_keystore(project.keystore_path(project.site(_CN)))
        ledger = Ledger.open(store.catalogue, keys)
        before, _ = outbound_decision(project, store, ledger, "model_parameters", 1, _PURPOSE)
    say(
        f"{_CN}: model parameters to the coordinator ({coordinator.entity}, "
        f"{coordinator.country}): {'allowed' if before.allowed else 'denied'}"
        + ("" if before.allowed else f" - {before.reasons[0]}")
    )
    if not before.allowed:
        say(f"{_CN}: putting a CAC security assessment for model parameters on file")
        today = datetime.now(UTC).date()
        approval = model_parameters_assessment(
            project,
            approval_id="CAC-DEMO-2026-002",
            reference="CAC-SA-2026-0533 (demo)",
            valid_from=date(today.year, 1, 1),
            purpose=_PURPOSE,
        )
        try:
            add_approval(project, _CN, approval)
        except InvalidApproval:
            say("(already on file from an earlier run)")
    return {"site": _CN, "before": before.as_dict()}


_REPORTS: dict[str, str] = {"CN": "cn-annual", "EU": "eu-transfers", "US": "us-bulk-data"}
"""The report each jurisdiction's regulator asks of a site."""


def _reports(project: Project, say: Callable[[str], None]) -> list[dict[str, str]]:
    """Each site's report for its regulator, in HTML and PDF under ``reports/<site>/``."""
    from onshore.reports import build_report, write_report

    written = []
    year = datetime.now(UTC).year
    for site in project.settings.sites.values():
        kind = _REPORTS[site.jurisdiction]
        say(f"{site.id}: writing the {kind} report")
        report = build_report(project, kind, site.id, year=year if kind == "cn-annual" else None)
        paths = write_report(report, project.root / "reports" / site.id)
        written.append({"site": site.id, "report": kind, **{k: str(v) for k, v in paths.items()}})
    return written


DEMO_USERS: Final = "demo-users.txt"
"""Under ``console/``: the demo's console users and their passwords (mode 0600)."""


def _console_users(project: Project, say: Callable[[str], None]) -> dict[str, Any]:
    """A console user for each role (an operator per site, an engineer, an auditor), their
    generated passwords in ``console/demo-users.txt`` (0600), never printed; a rerun keeps
    them."""
    from onshore.console import Role, UserStore
    from onshore.console.auth import console_folder

    store = UserStore(project)
    wanted: list[tuple[str, Role, str | None]] = [
        (f"operator-{s}", Role.SITE_OPERATOR, s) for s in project.settings.sites
    ]
    wanted += [("engineer", Role.COORDINATOR_ENGINEER, None), ("auditor", Role.AUDITOR, None)]
    path = console_folder(project) / DEMO_USERS
    known = {u.name for u in store.users()}
    lines = []
    for name, role, site in wanted:
        if name in known:
            continue
        password = secrets.token_urlsafe(12)
        store.add(name, role, password, site=site)
        lines.append(f"{name}\t{role}\t{site or '-'}\t{password}\n")
    if lines:
        say(f"adding console users, one per role; their passwords are in {path}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as out:
            out.writelines(lines)
    return {
        "users": [{"name": name, "role": str(role), "site": site} for name, role, site in wanted],
        "passwords": str(path),
        "command": f"onshore console --project {project.root}",
    }
