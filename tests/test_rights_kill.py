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


@pytest.mark.parametrize(("where", "point"), POINTS)
def test_a_killed_erasure_completes_once_on_rerun(
    where: str, point: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parties = make_parties(tmp_path / "parties")
    _stock(parties[CN], tmp_path, 2)
    _approve(parties[CN])
    log = tmp_path / "us.log"
    if where == "recipient":
        monkeypatch.setenv(FAILPOINT_ENV, point)
    us = serve_party(parties[US], log)
    monkeypatch.delenv(FAILPOINT_ENV, raising=False)
    try:
        sent = transfer(parties[CN], US, "export", "adas_training", day=date(2026, 11, 29))
        assert sent.status == "transferred", sent.decision.reasons
        vin = make_clip(0).meta.vin
        with SiteStore.open(parties[US]) as site:
            received = sorted(site.objects.find(RECEIVED_DIR))
        killed = _erase(parties[CN], vin, point if where == "origin" else None)
        if where == "origin":
            assert killed.returncode == -9, killed.stderr
        else:
            # The recipient died mid-request: the origin's part is done, the rest waits.
            assert killed.returncode == 19, killed.stdout + killed.stderr
            assert json.loads(killed.stdout)["status"] == "incomplete"
            assert us.wait(30) == -9
            stop_party(us)
            us = serve_party(parties[US], log)
        done = _erase(parties[CN], vin)
        assert done.returncode == 0, done.stdout + done.stderr
        assert json.loads(done.stdout)["status"] == "erased"
        # Once, everywhere.
        kinds = _kinds(parties[CN])
        assert kinds.count("erasure") == kinds.count("erasure_confirmed") == 1
        assert kinds.count("erasure_completed") == 1
        assert _kinds(parties[US]).count("erasure_in") == 1
        again = _erase(parties[CN], vin)
        assert json.loads(again.stdout)["status"] == "already_erased"
        for party in (CN, US):
            leftover = [
                n for n, data in _everything(parties[party]).items() if vin.encode() in data
            ]
            assert not leftover, (party, leftover)
            with SiteStore.open(parties[party]) as site:
                report = verify(Ledger.open(site.catalogue), objects=site.objects)
                assert report.ok, report.as_dict()["problems"]
        with SiteStore.open(parties[US]) as site:
            assert len(list(site.objects.find(RECEIVED_DIR))) == len(received) - 1
    finally:
        stop_party(us)
