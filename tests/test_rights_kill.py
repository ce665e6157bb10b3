"""Kill an erasure outright (SIGKILL, as a power cut would) between any two of its steps, at the
origin and at the recipient, with real processes over TLS: a rerun completes it everywhere,
once, and every ledger verifies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from conftest import make_clip, make_parties, serve_party, stop_party
from onshore.ledger import Ledger
from onshore.ledger.verify import verify
from onshore.processes import FAILPOINT_ENV
from onshore.settings import Project
from onshore.store import SiteStore
from onshore.store.objects import RECEIVED_DIR
from onshore.transfer import transfer
from test_rights import CN, US, _approve, _everything, _stock

POINTS = [
    ("origin", "erase.recorded"),
    ("origin", "erase.deleted"),
    ("origin", "erase.confirmed"),
    ("recipient", "erase_in.recorded"),
]


def _erase(
    project: Project, vin: str, failpoint: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != FAILPOINT_ENV}
    if failpoint is not None:
        env[FAILPOINT_ENV] = failpoint
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "onshore",
            "erase",
            "--vin",
            vin,
            "--project",
            str(project.root),
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def _kinds(project: Project) -> list[str]:
    with SiteStore.open(project) as site:
        return [e.kind for e in Ledger.open(site.catalogue).entries()]


def test_a_killed_erasure_completes_once_on_rerun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One vehicle per point: each erasure killed there, then run again."""
    parties = make_parties(tmp_path / "parties")
    _stock(parties[CN], tmp_path, len(POINTS))
    _approve(parties[CN])
    log = tmp_path / "us.log"
    us = serve_party(parties[US], log)
    try:
        sent = transfer(parties[CN], US, "export", "adas_training", day=date(2026, 11, 29))
        assert sent.status == "transferred", sent.decision.reasons
        with SiteStore.open(parties[US]) as site:
            received = len(list(site.objects.find(RECEIVED_DIR)))
        erased = []
        for n, (where, point) in enumerate(POINTS):
            vin = make_clip(n).meta.vin
            if where == "recipient":  # the recipient's service dies mid-request
                stop_party(us)
                monkeypatch.setenv(FAILPOINT_ENV, point)
                us = serve_party(parties[US], log)
                monkeypatch.delenv(FAILPOINT_ENV)
            killed = _erase(parties[CN], vin, point if where == "origin" else None)
            if where == "origin":
                assert killed.returncode == -9, killed.stderr
            else:
                # The origin's part is done; the rest waits for the recipient.
                assert killed.returncode == 19, killed.stdout + killed.stderr
                assert json.loads(killed.stdout)["status"] == "incomplete"
                assert us.wait(30) == -9
                stop_party(us)
                us = serve_party(parties[US], log)
            done = _erase(parties[CN], vin)
            assert done.returncode == 0, (point, done.stdout + done.stderr)
            assert json.loads(done.stdout)["status"] == "erased", point
            again = _erase(parties[CN], vin)
            assert json.loads(again.stdout)["status"] == "already_erased", point
            erased.append(vin)
        # Once each, everywhere.
        kinds = _kinds(parties[CN])
        assert kinds.count("erasure") == kinds.count("erasure_confirmed") == len(POINTS)
        assert kinds.count("erasure_completed") == len(POINTS)
        assert _kinds(parties[US]).count("erasure_in") == len(POINTS)
        for party in (CN, US):
            files = _everything(parties[party])
            for vin in erased:
                leftover = [name for name, data in files.items() if vin.encode() in data]
                assert not leftover, (party, vin, leftover)
            with SiteStore.open(parties[party]) as site:
                report = verify(Ledger.open(site.catalogue), objects=site.objects)
                assert report.ok, report.as_dict()["problems"]
        with SiteStore.open(parties[US]) as site:
            assert len(list(site.objects.find(RECEIVED_DIR))) == received - len(POINTS)
    finally:
        stop_party(us)
