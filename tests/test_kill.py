"""Kill ingest at random points: a rerun completes, nothing partial is ever visible, and store
and catalogue agree."""

from __future__ import annotations

import io
import os
import random
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
from onshore.store import SiteStore
from onshore.store.objects import sha256

SITE = "eu-frankfurt"
FILES = 60
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


def test_ingest_survives_being_killed(project: Project, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    write_clips(inbox, FILES, steps=300)
    for i in range(3):
        (inbox / f"bad-{i}.mcap").write_bytes(b"\x89MCAP0\r\n" + os.urandom(200 + i))
    db = Path(project.catalogue_url(project.site(SITE)).removeprefix("sqlite:///"))
    cmd = [
        sys.executable,
        "-m",
        "onshore",
        "ingest",
        "--project",
        str(project.root),
        "--site",
        SITE,
        str(inbox),
        "--json",
    ]
    rng = random.Random(20261129)
    kills = 0
    for _ in range(TRIALS):
        before = max(_clips_in_catalogue(db), 0)
        if before >= FILES:
            break
        target = before + rng.randint(1, max(1, (FILES - before) // 2))
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while proc.poll() is None and _clips_in_catalogue(db) < target:
            assert time.monotonic() < deadline, "ingest made no progress"
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.03))  # land anywhere inside the next file's work
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        opened = SiteStore.open(project, SITE)
        try:
            _assert_nothing_partial_is_visible(opened)
        finally:
            opened.close()
    assert kills >= TRIALS // 2, "the trials must really interrupt ingest"

    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
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
