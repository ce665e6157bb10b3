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

from conftest import write_clips
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
