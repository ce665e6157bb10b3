"""Kill ingest at random points: a rerun completes, nothing partial is ever visible, and store
and catalogue agree."""

from __future__ import annotations

import io
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pyarrow.parquet as pq

from conftest import serve_party, stop_party, write_clips
from onshore.settings import Project
from onshore.sites import init_project
from onshore.store import SiteStore
from onshore.store.objects import sha256

SITE = "eu-frankfurt"
FILES = 150
TRIALS = 6


def _clips_in_catalogue(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.2)) as conn:
            return int(conn.execute("select count(*) from clips").fetchone()[0])
    except sqlite3.OperationalError:  # not created yet, or locked by the writer for a moment
        return -1


def _assert_nothing_partial_is_visible(opened: SiteStore) -> None:
    for digest, path in opened.objects.clip_digests():
        data = opened.objects.read(path)
        assert sha256(data) == digest, f"{path} is not the complete object its name promises"
        pq.read_table(io.BytesIO(data))
    for clip in opened.catalogue.clips():
        assert sha256(opened.objects.read(clip.path)) == clip.sha256


def _run_cmd(project: Project, site: str, inbox: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "onshore",
        "ingest",
        "--project",
        str(project.root),
        "--site",
        site,
        str(inbox),
        "--json",
    ]


def test_ingest_survives_being_killed(project: Project, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    write_clips(inbox, FILES, steps=300, recorded_in=SITE)
    for i in range(3):
        (inbox / f"bad-{i}.mcap").write_bytes(b"\x89MCAP0\r\n" + os.urandom(200 + i))
    keep = tmp_path / "keep"
    shutil.copytree(inbox, keep)  # quarantine moves bad files out; each trial starts from all

    # How long an uninterrupted run takes, in another project, so kills can land anywhere in it.
    reference = init_project(tmp_path / "reference")
    started = time.monotonic()
    subprocess.run(_run_cmd(reference, SITE, inbox), capture_output=True, check=True)
    duration = time.monotonic() - started
    shutil.rmtree(inbox)
    shutil.copytree(keep, inbox)

    db = Path(project.catalogue_url(project.site(SITE)).removeprefix("sqlite:///"))
    rng = random.Random(20261129)
    partial = 0
    for trial in range(TRIALS):
        proc = subprocess.Popen(
            _run_cmd(project, SITE, inbox), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        if trial % 2:
            # Anywhere in the run: start-up, decoding, writing objects, committing.
            time.sleep(rng.uniform(0.1, 1.0) * duration)
        else:
            # Just after a commit became visible, with a random lag into the next batch.
            before = max(_clips_in_catalogue(db), 0)
            while proc.poll() is None and _clips_in_catalogue(db) <= before:
                time.sleep(0.005)
            time.sleep(rng.uniform(0, 0.1) * duration)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if 0 < _clips_in_catalogue(db) < FILES:
            partial += 1
        opened = SiteStore.open(project, SITE)
        try:
            _assert_nothing_partial_is_visible(opened)
        finally:
            opened.close()
    assert partial >= 1, "some trials must stop ingest part-way"

    done = subprocess.run(
        _run_cmd(project, SITE, inbox), capture_output=True, text=True, check=True
    )
    assert '"quarantined"' in done.stdout
    opened = SiteStore.open(project, SITE)
    try:
        check = opened.check(deep=True)
        assert check["ok"], check
        assert check["clips"] == FILES
        inventory = opened.catalogue.inventory()
        assert inventory["files"] == {"ingested": FILES, "quarantined": 3}
        assert inventory["rows"] == FILES * 300
        _assert_nothing_partial_is_visible(opened)
    finally:
        opened.close()


def test_two_ingests_into_one_site_at_once(project: Project, tmp_path: Path) -> None:
    shared = write_clips(tmp_path / "a", 40, recorded_in=SITE)
    write_clips(tmp_path / "b", 40, start=20, recorded_in=SITE)  # 20 clips in common with a
    procs = [
        subprocess.Popen(_run_cmd(project, SITE, tmp_path / name), stdout=subprocess.PIPE)
        for name in ("a", "b")
    ]
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    opened = SiteStore.open(project, SITE)
    try:
        check = opened.check(deep=True)
        assert check["ok"] and check["clips"] == 60, check
        assert opened.catalogue.inventory()["vehicles"] == 60
    finally:
        opened.close()
    assert all(path.exists() for path in shared), "good files are never moved"


# -- a transfer between two parties' processes, killed at random points --------------------------


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait()
    if process.stdout is not None:
        process.stdout.close()


def _ledger(project: Project, kind: str) -> list[dict[str, object]]:
    from onshore.ledger import Ledger

    with SiteStore.open(project) as site:
        return [e.data for e in Ledger.open(site.catalogue).entries(kind=kind)]


def test_a_transfer_killed_anywhere_at_either_end_completes_exactly_once(tmp_path: Path) -> None:
    """SIGKILL the origin's transfer, then the destination's service, at random moments;
    rerun: for each transfer one transfer_out, one transfer_in and one receipt, every object
    received once, nothing partial left, and both ledgers verify (with each other)."""
    from conftest import make_parties
    from onshore.gate import Approval
    from onshore.gate.audit import verify_party
    from onshore.gate.record import add_approval
    from onshore.store.objects import RECEIVED_DIR

    parties = make_parties(tmp_path / "parties")
    eu, us = parties["eu-frankfurt"], parties["us-oregon"]
    paths = write_clips(tmp_path / "up", 40, steps=3000, recorded_in="eu-frankfurt")
    with SiteStore.open(eu) as site:
        from onshore.ingest import ingest

        assert ingest(site, paths).quarantined == []
    add_approval(
        eu,
        "eu-frankfurt",
        Approval.model_validate(
            {
                "id": "SCC-1",
                "type": "eu_scc",
                "origin": "EU",
                "recipient": "Onshore Mobility Inc.",
                "categories": [
                    "vehicle_id",
                    "trajectory",
                    "vehicle_flow",
                    "sensitive_area_geodata",
                ],
                "purposes": ["adas_training"],
                "valid_from": "2026-01-01",
                "reference": "SCC-2026-1",
            }
        ),
    )
    log = tmp_path / "us.log"
    server = serve_party(us, log)
    draw = random.Random(13)

    def command(day: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "onshore",
            "transfer",
            "--project",
            str(eu.root),
            "--to",
            "us-oregon",
            "--dataset",
            "raw",
            "--purpose",
            "adas_training",
            "--date",
            day,
            "--json",
        ]

    def check(day: str) -> None:
        (out,) = [e for e in _ledger(eu, "transfer_out") if e["date"] == day]
        transfer_id = out["transfer"]
        assert [e["transfer"] for e in _ledger(us, "transfer_in")].count(transfer_id) == 1
        assert [e["transfer"] for e in _ledger(eu, "transfer_confirmed")].count(transfer_id) == 1
        with SiteStore.open(us) as site:
            received = list(site.objects.find(RECEIVED_DIR))
        sent = [str(o["path"]) for o in out["sent"]]  # type: ignore[union-attr]
        assert sorted(received) == sorted(f"{RECEIVED_DIR}/eu-frankfurt/{p}" for p in sent)

    try:
        for trial, victim in enumerate(["origin"] * 3 + ["destination"] * 3):
            day = f"2026-11-{trial + 10:02d}"
            origin = subprocess.Popen(
                command(day), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            time.sleep(draw.uniform(0.3, 3.0))
            if victim == "origin":
                _kill(origin)
            else:
                _kill(server)
                origin.wait(120)
                server = serve_party(us, log)  # restarted: it cleans what the killed one left
            done = subprocess.run(command(day), capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, (trial, victim, done.stdout, done.stderr)
            check(day)
        with SiteStore.open(us) as site:
            assert site.objects.staging_leftovers() == []
    finally:
        stop_party(server)
    servers = [serve_party(us, log), serve_party(eu, tmp_path / "eu.log")]
    try:
        for project, peer in ((eu, "us-oregon"), (us, "eu-frankfurt")):
            report = verify_party(project)
            assert report.ok, report.as_dict()["problems"]
            assert peer in report.peers and report.peer_heads >= 1, report.notes
    finally:
        for process in servers:
            stop_party(process)
