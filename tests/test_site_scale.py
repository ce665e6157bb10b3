"""A site at fleet scale: its batch stages on Ray, its objects in S3, its catalogue in PostgreSQL.

One site runs its pipeline from uploads to training samples on the production services (a real
S3 server, PostgreSQL, a local Ray instance of two workers), as a user runs it, and a second run
changes nothing. A Ray worker killed mid-stage leaves nothing half-visible, and the rerun reaches
the catalogue a clean run reaches.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from conftest import S3Server
from onshore.fleet import simulate_site
from onshore.forecast.dataset import build_site_dataset
from onshore.settings import Project, load_project
from onshore.sites import init_project
from onshore.sites.compute import Engine
from onshore.store import SiteStore

pytestmark = pytest.mark.slow

SITE = "eu-frankfurt"


@pytest.fixture
def fresh_database(postgres_url: str) -> Iterator[str]:
    """A database of its own on the PostgreSQL server, dropped afterwards."""
    name = f"onshore_scale_{uuid.uuid4().hex[:10]}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _project(root: Path, *, store: str, catalogue: str, workers: int) -> Project:
    """The three-regions example, its Frankfurt site on ``store`` and ``catalogue`` with
    ``workers`` batch workers."""
    init_project(root, "three-regions")
    toml = root / "onshore.toml"
    lines = toml.read_text().splitlines()
    at = lines.index(f"[sites.{SITE}]")
    end = next(i for i in range(at + 1, len(lines)) if lines[i].startswith("["))
    for i in range(at + 1, end):
        key = lines[i].split("=", 1)[0].strip()
        if key == "store":
            lines[i] = f'store = "{store}"'
        elif key == "catalogue":
            lines[i] = f'catalogue = "{catalogue}"'
        elif key == "compute":
            lines[i] = f'compute = {{ device = "cpu", workers = {workers} }}'
    toml.write_text("\n".join(lines) + "\n")
    project = load_project(root)
    assert project.site(SITE).compute.workers == workers
    return project


def _uploads(project: Project, out: Path) -> Path:
    """A small simulated fleet of the site's region, a tenth of it filming."""
    simulate_site(
        project.site(SITE), vehicles=40, minutes=4, seed=5, out=out, camera_share=0.1, trip_km=1.0
    )
    return out


def _onshore(project: Project, *args: str, env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "onshore", *args, "--project", str(project.root), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, f"onshore {' '.join(args)}: {done.stdout}\n{done.stderr}"
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _pipeline(project: Project, uploads: Path, env: dict[str, str]) -> dict[str, Any]:
    """Uploads to de-identified outputs, through the CLI as a user runs it."""
    zones = uploads / "sensitive_areas.geojson"
    with SiteStore.open(project, SITE) as site:
        site.keep_reference_zones(zones.read_bytes())
    return {
        "ingest": _onshore(project, "ingest", str(uploads), "--site", SITE, env=env),
        "classify": _onshore(project, "classify", "--site", SITE, env=env),
        "deidentify": _onshore(
            project, "deidentify", "--profile", "training", "--site", SITE, env=env
        ),
    }


def _state(project: Project) -> dict[str, Any]:
    """What the site's catalogue and store hold, less the times things were done."""
    with SiteStore.open(project, SITE) as site:
        catalogue = site.catalogue
        return {
            "clips": sorted(
                (c.clip_id, c.sha256, c.path, c.rows, c.bytes, c.consent_training)
                for c in catalogue.clips()
            ),
            "files": sorted((f.sha256, f.status, f.clips) for f in catalogue.files()),
            "frames": sorted((f.clip_id, f.sha256, f.frames) for f in catalogue.frames()),
            "labels": sorted(
                (x.clip_id, x.category, x.count, x.evidence) for x in catalogue.labels()
            ),
            "deidentified": sorted(
                (d.profile, d.clip_id, d.output_id, d.path, d.sha256, d.state, d.rows)
                for d in catalogue.deidentified()
            ),
            "objects": site.objects.sizes(""),
            "check": site.check(),
        }


def _env() -> dict[str, str]:
    """The environment of the commands: this one's, and never a Ray cluster of the machine's."""
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


def test_a_site_on_s3_postgresql_and_ray_runs_uploads_to_samples_and_a_rerun_changes_nothing(
    s3_server: S3Server,
    fresh_database: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    ray_engine: Engine,
) -> None:
    project = _project(
        tmp_path / "proj",
        store=s3_server.url(f"scale-{uuid.uuid4().hex[:8]}"),
        catalogue=fresh_database,
        workers=2,
    )
    for name in [name for name in os.environ if name.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    env = _env()
    # The site's S3 keys in its keystore, as an operator keeps them: the secret from stdin.
    keys = ["--access-key-id", s3_server.key, "--endpoint-url", s3_server.endpoint]
    where = ["--region", "us-east-1", "--site", SITE, "--project", str(project.root)]
    kept = subprocess.run(
        [sys.executable, "-m", "onshore", "store", "credentials", *keys, *where, "--json"],
        input=s3_server.secret + "\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert kept.returncode == 0, kept.stderr
    assert s3_server.secret not in kept.stdout + kept.stderr
    uploads = _uploads(project, tmp_path / "uploads")
    first = _pipeline(project, uploads, env)
    for stage in first.values():
        assert stage["compute"] == {"engine": "ray", "ray": "local", "workers": 2}
    ingested = first["ingest"]
    assert ingested["clips"] > 0 and ingested["quarantined"] == [] and ingested["frames"] > 0
    assert first["deidentify"]["clips"] > 0
    assert s3_server.secret not in json.dumps(first)
    before = _state(project)
    assert before["check"]["ok"], before["check"]
    assert before["check"]["clips"] == ingested["clips"]
    assert any(path.startswith("deidentified/training/") for path in before["objects"])
    assert not list((tmp_path / "proj" / "sites" / SITE).glob("**/*.parquet")), "all in S3"

    # Training samples, built by the site's workers from what the pipeline stored.
    with SiteStore.open(project, SITE) as site:
        samples = build_site_dataset(site, engine=ray_engine, cache=False)
        inline = build_site_dataset(site, cache=False)
    assert len(samples.train) + len(samples.test) > 0
    assert (samples.train.past == inline.train.past).all()
    assert (samples.test.future == inline.test.future).all()

    again = _pipeline(project, uploads, env)
    assert again["ingest"]["clips"] == 0
    assert again["ingest"]["already_ingested"] == ingested["files"]
    assert _state(project) == before


def _descendants(root: int) -> list[int]:
    """Every process below ``root`` (Ray's raylet, its workers), read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, pending = [], [root]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def _map_workers(root: int) -> list[int]:
    """Ray actors of a stage's pool, below ``root``."""
    found = []
    for pid in _descendants(root):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"MapWorker" in command:
            found.append(pid)
    return found


def test_a_ray_worker_killed_mid_stage_and_the_rerun_reach_a_clean_runs_catalogue(
    tmp_path: Path,
) -> None:
    clean = _project(tmp_path / "clean", store="store", catalogue="sqlite:///cat.sqlite", workers=1)
    killed = _project(
        tmp_path / "killed", store="store", catalogue="sqlite:///cat.sqlite", workers=2
    )
    uploads = _uploads(clean, tmp_path / "uploads")
    for project in (clean, killed):
        with SiteStore.open(project, SITE) as site:
            site.keep_reference_zones((uploads / "sensitive_areas.geojson").read_bytes())
    env = _env()
    _onshore(clean, "ingest", str(uploads), "--site", SITE, env=env)
    _onshore(clean, "classify", "--site", SITE, env=env)

    # The killed site's ingest and classification, each with one of its Ray workers killed.
    for stage in (["ingest", str(uploads)], ["classify"]):
        command = [sys.executable, "-m", "onshore", *stage, "--site", SITE]
        command += ["--project", str(killed.root), "--json"]
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True
        )
        victim = None
        deadline = time.monotonic() + 300
        while victim is None and process.poll() is None and time.monotonic() < deadline:
            workers = _map_workers(process.pid)
            if workers:
                victim = workers[0]
                os.kill(victim, signal.SIGKILL)
            time.sleep(0.02)
        out, err = process.communicate(timeout=600)
        assert victim is not None, f"no Ray worker was seen running {stage[0]}: {out}\n{err}"
        # Ray restarts the worker and retries its batch, or the stage fails as a whole: either
        # way nothing half-done is visible, and the rerun completes it.
        if process.returncode != 0:
            assert json.loads(out)["error"] == "compute", out
        _onshore(killed, *stage, "--site", SITE, env=env)

    got, want = _state(killed), _state(clean)
    assert got["check"]["ok"], got["check"]
    for key in ("clips", "frames", "labels", "objects"):
        assert got[key] == want[key], key
    assert [f[:2] for f in got["files"]] == [f[:2] for f in want["files"]]
