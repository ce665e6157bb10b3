"""The console over HTTP, by role, as it runs in one party's folder: who signs in, what each role
sees, and every other party's site read through that site's service, whose gate decides a read
from abroad and records it in the site's ledger (once a day for the same read).

The console under test runs in a copy of the small demo's coordinator folder; the three sites'
services run in process (:class:`conftest.Services`), each in its own copied folder, so every
read goes through the same service code as across data centres. The demo put an assessment for
remote queries from the coordinator on file at the Chinese site; it is revoked here, so that the
engineer's first read of China's rows has no approval to go on.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from conftest import Services
from onshore.console import Role, UserStore, create_app
from onshore.console.access import HttpFor
from onshore.console.app import COOKIE
from onshore.console.auth import Sessions, User
from onshore.console.charts import series_colour
from onshore.forecast.runs import RunFolder
from onshore.gate import Approval
from onshore.gate.crossings import crossings_table
from onshore.gate.record import add_approval, revoke_approval
from onshore.gate.site import OpenSite
from onshore.ledger import Entry, Ledger
from onshore.parties.identity import load_peers
from onshore.reports.build import flows
from onshore.settings import Project, load_project
from onshore.store import SiteStore

# The small demo these tests share takes minutes, more on a busy machine.
pytestmark = pytest.mark.timeout(1500)

CN, EU, US, COORD = "cn-shanghai", "eu-frankfurt", "us-oregon", "coordinator"
SITES = (CN, EU, US)
PASSWORD = "correct horse battery"


def make_users(folder: Path) -> None:
    """In the coordinator's folder an engineer, an auditor and China's operator; in China's own
    folder its operator, for the site's own console."""
    users = UserStore(load_project(folder / COORD))
    users.add("eng", Role.COORDINATOR_ENGINEER, PASSWORD)
    users.add("aud", Role.AUDITOR, PASSWORD)
    users.add("op-cn", Role.SITE_OPERATOR, PASSWORD, site=CN)
    UserStore(load_project(folder / CN)).add("op-cn", Role.SITE_OPERATOR, PASSWORD, site=CN)


def revoke_remote_queries(cn: Project) -> list[str]:
    """Revoke, at China's site, every approval for remote queries (the demo's included)."""
    with OpenSite.open(cn) as site:
        found = [a.id for a in site.approvals() if "remote_query" in a.purposes and not a.revoked]
    for approval_id in found:
        revoke_approval(cn, CN, approval_id, "withdrawn for the console's tests")
    return found


@dataclass
class World:
    """A copy of the small demo: the four party folders, and the sites' services in process."""

    folder: Path
    parties: dict[str, Project]
    services: Services

    def reach(self, party: str) -> httpx.Client | None:
        """A client for a site's service in process; None (mutual TLS) for anything else."""
        return self.services.http(party) if party in SITES else None

    def console(
        self, name: str | None = None, *, party: str = COORD, http_for: HttpFor | None = None
    ) -> TestClient:
        """The console running in ``party``'s folder, signed in as ``name``."""
        c = TestClient(create_app(self.parties[party], http_for=http_for or self.reach))
        if name is not None:
            signed = c.post(
                "/login",
                data={"username": name, "password": PASSWORD, "next": "/"},
                follow_redirects=False,
            )
            assert signed.status_code == 303, signed.text
        return c

    def entries(self, site: str, kind: str | None = None) -> list[Entry]:
        """The site's ledger entries (of ``kind``), read in its own folder."""
        with SiteStore.open(self.parties[site]) as store:
            return Ledger.open(store.catalogue).entries(kind=kind)

    def reads(self, site: str, view: str | None = None) -> list[Entry]:
        return [
            e for e in self.entries(site, "remote_read") if view is None or e.data["view"] == view
        ]

    def crossed(self, site: str) -> list[tuple[Any, ...]]:
        """Every row of the site's ``crossed_subjects`` table."""
        with SiteStore.open(self.parties[site]) as store, store.catalogue.engine.connect() as db:
            return sorted(tuple(r) for r in db.execute(select(crossings_table)).all())


def copy_demo(small_demo: tuple[Path, dict], folder: Path) -> dict[str, Project]:  # type: ignore[type-arg]
    shutil.copytree(small_demo[0], folder)
    return {party: load_project(folder / party) for party in (*SITES, COORD)}


@pytest.fixture(scope="module")
def world(
    small_demo: tuple[Path, dict],  # type: ignore[type-arg]
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("console") / "demo"
    parties = copy_demo(small_demo, folder)
    assert revoke_remote_queries(parties[CN]), "the demo put an assessment for remote queries"
    make_users(folder)
    services = Services({site: parties[site] for site in SITES})
    try:
        yield World(folder, parties, services)
    finally:
        services.close()


def text_of(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def cards(html: str) -> set[str]:
    return set(re.findall(r'<article class="card site" id="site-([^"]+)"', html))


def remote_query_approval(approval_id: str, recipient: str, categories: list[str]) -> Approval:
    today = datetime.now(UTC).date()
    return Approval.model_validate(
        {
            "id": approval_id,
            "type": "cn_security_assessment",
            "origin": "CN",
            "recipient": recipient,
            "categories": categories,
            "purposes": ["remote_query"],
            "max_subjects": 100_000,
            "valid_from": date(today.year, 1, 1).isoformat(),
            "reference": f"CAC-SA-{approval_id}",
        }
    )


# -- signing in ----------------------------------------------------------------------------------


def test_every_page_needs_a_signed_session(world: World) -> None:
    anonymous = world.console()
    for path in ["/", "/sites/cn-shanghai", "/decisions", "/ledger", "/runs", "/reports"]:
        response = anonymous.get(path, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"].startswith("/login")
    login = anonymous.get("/login")
    assert login.status_code == 200 and "console users add" in login.text
    assert str(world.parties[COORD].root) not in login.text, "no folder path for strangers"
    wrong = anonymous.post("/login", data={"username": "eng", "password": "guess"})
    assert wrong.status_code == 401 and COOKIE not in wrong.cookies
    assert "Wrong user name or password" in wrong.text
    unknown = anonymous.post("/login", data={"username": "nobody", "password": PASSWORD})
    assert unknown.status_code == 401 and "Wrong user name or password" in unknown.text
    # A forged or expired cookie is no session.
    sessions = Sessions(world.parties[COORD])
    forged = sessions.issue(User("aud", Role.AUDITOR))[:-2] + "AA"
    expired = sessions.issue(User("aud", Role.AUDITOR), now=0)
    for token in (forged, expired, "garbage"):
        anonymous.cookies.set(COOKIE, token)
        assert anonymous.get("/", follow_redirects=False).status_code == 303
    anonymous.cookies.clear()
    # A session signed by another party's console is no session here either.
    elsewhere = Sessions(world.parties[CN]).issue(User("op-cn", Role.SITE_OPERATOR, CN))
    anonymous.cookies.set(COOKIE, elsewhere)
    assert anonymous.get("/", follow_redirects=False).status_code == 303
    anonymous.cookies.clear()
    # After signing in, only a path on this site: never another host.
    away = anonymous.post(
        "/login",
        data={"username": "aud", "password": PASSWORD, "next": "//evil.example/"},
        follow_redirects=False,
    )
    assert away.headers["location"] == "/"


def test_passwords_are_stored_hashed_and_the_files_are_private(world: World) -> None:
    for party in (COORD, CN):
        folder = world.parties[party].root / "console"
        users_db = folder / "users.sqlite"
        assert PASSWORD.encode() not in users_db.read_bytes()
        assert users_db.stat().st_mode & 0o077 == 0
        assert (folder / "session.key").stat().st_mode & 0o077 == 0
        assert folder.stat().st_mode & 0o077 == 0


# -- site operators ------------------------------------------------------------------------------


def test_a_site_operator_reads_their_own_site_directly_in_its_console(world: World) -> None:
    """In the site's own console (its folder) the operator's site is read in process: no gate,
    no border, nothing in the site's ledger; the other sites are not theirs to see."""
    before = len(world.entries(CN))
    op = world.console("op-cn", party=CN)
    home = op.get("/").text
    assert cards(home) == {CN}
    site = op.get(f"/sites/{CN}")
    assert site.status_code == 200 and 'class="clip"' in site.text
    assert 'class="access' not in site.text and "data-allowed" not in site.text
    with SiteStore.open(world.parties[CN]) as store:
        first = store.catalogue.clips()[0]
    assert first.vin in site.text
    for path in [f"/sites/{US}", f"/sites/{EU}", "/reports/us-oregon/us-bulk-data.html"]:
        denied = op.get(path)
        assert denied.status_code == 403 and "operates cn-shanghai" in denied.text
    decisions = op.get("/decisions").text
    assert 'data-site="cn-shanghai"' in decisions and 'data-site="us-oregon"' not in decisions
    reports = op.get("/reports").text
    assert "cn-annual" in reports and "us-bulk-data" not in reports
    own_report = op.get("/reports/cn-shanghai/cn-annual.html")
    assert own_report.status_code == 200 and "<html" in own_report.text
    ledger = op.get("/ledger").text
    assert re.findall(r'<tr class="ledger" data-name="([^"]+)"', ledger) == [CN]
    assert len(world.entries(CN)) == before, "reading one's own site is not a transfer"
    verified = op.post(f"/ledger/{CN}/verify")
    assert verified.status_code == 200 and 'data-ok="true"' in verified.text


def test_a_site_operator_at_the_coordinator_sees_their_site_as_its_gate_decides(
    world: World,
) -> None:
    """At the coordinator (in Germany) the operator sees only their site, and its rows only as
    its gate decides on a read from Germany, like anyone's."""
    op = world.console("op-cn")
    assert cards(op.get("/").text) == {CN}
    for path in [f"/sites/{US}", f"/sites/{EU}", "/reports/us-oregon/us-bulk-data.html"]:
        denied = op.get(path)
        assert denied.status_code == 403 and "operates cn-shanghai" in denied.text
    assert op.post("/ledger/us-oregon/verify").status_code == 403
    assert op.post("/ledger/coordinator/verify").status_code == 403
    decisions = op.get("/decisions").text
    assert 'data-site="cn-shanghai"' in decisions
    assert 'data-site="us-oregon"' not in decisions and 'data-site="eu-frankfurt"' not in decisions
    run = op.get("/runs/demo-federated").text
    assert 'data-series="us-oregon"' not in run and 'data-series="eu-frankfurt"' not in run
    reports = op.get("/reports").text
    assert "cn-annual" in reports and "us-bulk-data" not in reports

    before = len(world.reads(CN, "clips"))
    page = op.get(f"/sites/{CN}")
    assert page.status_code == 200
    shown = re.search(r'data-site="cn-shanghai" data-allowed="(true|false)"', page.text)
    assert shown is not None, "a read through the site's gate, and the page says how it went"
    reads = world.reads(CN, "clips")
    assert len(reads) == before + 1
    read = reads[-1].data
    assert (read["reader"], read["role"], read["party"]) == ("op-cn", "site-operator", COORD)
    assert read["destination"] == "DE"
    assert read["allowed"] is (shown.group(1) == "true")
    assert ('class="clip"' in page.text) is read["allowed"]


# -- the engineer, and the gate in front of another country's rows -------------------------------


def test_an_engineer_reads_china_s_rows_only_through_china_s_gate(world: World) -> None:
    eng = world.console("eng")
    home = eng.get("/")
    assert cards(home.text) == set(SITES), "every site's metadata and aggregates"
    before = {s: len(world.reads(s, "clips")) for s in SITES}
    eu_before = len(world.entries(EU))

    cn = eng.get(f"/sites/{CN}")
    assert cn.status_code == 200
    assert 'data-allowed="false"' in cn.text and 'class="clip"' not in cn.text
    assert "Rows withheld" in cn.text and "cn_security_assessment" in cn.text
    with SiteStore.open(world.parties[CN]) as store:
        clips = store.catalogue.clips()
    count = re.search(r'id="clip-count">(\d+)<', cn.text)
    assert count is not None and int(count.group(1)) == len(clips), "the aggregates stay"
    assert not any(c.vin in cn.text for c in clips), "no VIN of a withheld row on the page"
    read = world.reads(CN, "clips")[-1]
    assert read.data["allowed"] is False and read.data["reader"] == "eng"
    assert read.data["destination"] == world.parties[COORD].settings.coordinator.country
    assert {i["category"] for i in read.data["items"]} >= {"vehicle_id", "trajectory"}
    assert f"entry {read.seq}" in text_of(cn.text), "the page names the ledger entry"
    # A denied read is an incident of the site like any refused transfer.
    assert [f for f in flows(CN, world.entries(CN)) if f.what == "remote_read" and not f.allowed]

    us = eng.get(f"/sites/{US}")
    assert 'data-allowed="true"' in us.text and 'class="clip"' in us.text
    assert world.reads(US, "clips")[-1].data["allowed"] is True

    eu = eng.get(f"/sites/{EU}")
    assert 'class="clip"' in eu.text and "data-allowed" not in eu.text
    after = {s: len(world.reads(s, "clips")) for s in SITES}
    assert after == {CN: before[CN] + 1, EU: before[EU], US: before[US] + 1}
    assert len(world.entries(EU)) == eu_before, (
        "a read from the coordinator's own country is no transfer: nothing in EU's ledger"
    )


def test_thirty_views_of_the_same_page_are_one_read_and_count_no_one_twice(world: World) -> None:
    """'Thirty page views by one engineer took the Chinese ledger from 19 to 48 entries' must
    not happen: the same page read again the same day is answered under the first read's
    entry, and the persons on it are not counted again."""
    eng = world.console("eng")
    eng.get(f"/sites/{CN}")
    clip_reads, crossed = len(world.reads(CN, "clips")), world.crossed(CN)
    for _ in range(30):
        page = eng.get(f"/sites/{CN}")
        assert page.status_code == 200 and 'data-allowed="false"' in page.text
    assert "recorded earlier today" in page.text
    assert len(world.reads(CN, "clips")) == clip_reads
    assert world.crossed(CN) == crossed


def test_thirty_views_of_the_same_page_add_at_most_one_entry_to_the_site_s_ledger(
    world: World,
) -> None:
    eng = world.console("eng")
    before = len(world.reads(CN))
    for _ in range(30):
        assert eng.get(f"/sites/{CN}").status_code == 200
    assert len(world.reads(CN)) - before <= 1


def test_an_approval_on_file_lets_the_rows_through(world: World) -> None:
    entity = world.parties[COORD].settings.coordinator.entity
    assert entity == "Onshore Mobility Europe GmbH"
    approval = remote_query_approval(
        "CAC-REMOTE-1", entity, ["vehicle_id", "trajectory", "sensitive_area_geodata"]
    )
    add_approval(world.parties[CN], CN, approval)
    page = world.console("eng").get(f"/sites/{CN}").text
    assert 'data-allowed="true"' in page and 'class="clip"' in page
    assert "under approval CAC-REMOTE-1" in text_of(page)
    read = world.reads(CN, "clips")[-1]
    assert read.data["allowed"] and read.data["decision"]["approval"]["id"] == "CAC-REMOTE-1"
    # Each vehicle on the page has crossed for remote queries to Germany, once. (The demo's
    # own read of this page counted its vehicles; one of them has since been erased, and stays
    # counted: the law counts who crossed, and the count keeps only a keyed hash.)
    with SiteStore.open(world.parties[CN]) as store:
        vins = {c.vin for c in store.catalogue.clips()[:100]}
    crossed = [r for r in world.crossed(CN) if r[3:5] == ("remote_query", "DE")]
    counted = [r for r in crossed if r[1] == "vehicle_id"]
    assert len(counted) >= len(vins)
    # Shown again and again: one read, no one counted twice.
    rows = world.crossed(CN)
    for _ in range(5):
        assert 'class="clip"' in world.console("eng").get(f"/sites/{CN}").text
    assert world.reads(CN, "clips")[-1].seq == read.seq and world.crossed(CN) == rows


def test_china_s_report_read_from_the_coordinator_goes_through_its_gate(world: World) -> None:
    """A report holds the site's map of traces (trajectory) and its figures (aggregate metrics):
    the gate wants an approval that lists every category in it."""
    eng = world.console("eng")
    refused = eng.get("/reports/cn-shanghai/cn-annual.html")
    assert refused.status_code == 403 and 'data-allowed="false"' in refused.text
    read = world.reads(CN, "report")[-1].data
    assert read["allowed"] is False and read["reader"] == "eng"
    assert {i["category"] for i in read["items"]} == {"trajectory", "aggregate_metrics"}
    entity = world.parties[COORD].settings.coordinator.entity
    add_approval(
        world.parties[CN],
        CN,
        remote_query_approval("CAC-REPORT-1", entity, ["trajectory", "aggregate_metrics"]),
    )
    report = eng.get("/reports/cn-shanghai/cn-annual.html")
    assert report.status_code == 200 and "<html" in report.text
    assert "sandbox" in report.headers["content-security-policy"]
    assert world.reads(CN, "report")[-1].data["decision"]["approval"]["id"] == "CAC-REPORT-1"
    assert eng.get("/reports/cn-shanghai/no-such.html").status_code == 404


# -- the auditor ---------------------------------------------------------------------------------


def test_an_auditor_sees_every_site_and_reads_abroad_through_the_gates(world: World) -> None:
    """An auditor sees every site and writes nothing but reads and verifications. The auditor
    works at the coordinator, in Germany: reading Chinese or American rows from there is an
    export like anyone's, so it goes through each site's gate and is recorded in its ledger
    (a change from the lab console, where an auditor read every site directly)."""
    aud = world.console("aud")
    assert cards(aud.get("/").text) == set(SITES)
    eu_before = len(world.entries(EU))
    for site in SITES:
        page = aud.get(f"/sites/{site}")
        assert page.status_code == 200 and 'class="clip"' in page.text, site
        if site != EU:
            read = world.reads(site, "clips")[-1].data
            assert (read["reader"], read["role"], read["allowed"]) == ("aud", "auditor", True)
    assert len(world.entries(EU)) == eu_before, "same country: no gate, nothing recorded"
    pdf = aud.get("/reports/us-oregon/us-bulk-data.pdf")
    assert pdf.status_code == 200
    assert pdf.headers["content-type"] == "application/pdf" and pdf.content.startswith(b"%PDF")
    assert world.reads(US, "report")[-1].data["reader"] == "aud"
    decisions = aud.get("/decisions").text
    for site in SITES:
        assert f'data-site="{site}"' in decisions
    # The only forms an auditor gets verify (reading) and sign out.
    ledger = aud.get("/ledger").text
    assert re.findall(r'<tr class="ledger" data-name="([^"]+)"', ledger) == [*SITES, COORD]
    actions = set(re.findall(r'<form method="post" action="([^"]+)"', ledger))
    assert actions and all(a == "/logout" or a.endswith("/verify") for a in actions)
    verified = aud.post("/ledger/coordinator/verify")
    assert 'data-ok="true"' in verified.text
    compared = re.search(r"heads compared with ([a-z, -]+)", text_of(verified.text))
    assert compared is not None and set(compared.group(1).split(", ")) == set(SITES)


# -- the pages in the coordinator's folder -------------------------------------------------------


def test_decisions_filter(world: World) -> None:
    aud = world.console("aud")
    denied = aud.get("/decisions", params={"outcome": "denied"}).text
    assert 'class="decision denied"' in denied and 'class="decision allowed"' not in denied
    transfers = aud.get("/decisions", params={"what": "transfer", "site": CN}).text
    rows = re.findall(r'<tr class="decision [a-z]+" data-site="([^"]+)">', transfers)
    assert rows and set(rows) == {CN}
    assert "<td>transfer</td>" in transfers and "<td>model_update</td>" not in transfers
    reads = aud.get("/decisions", params={"what": "remote_read", "outcome": "denied"}).text
    assert set(re.findall(r'<tr class="decision denied" data-site="([^"]+)">', reads)) == {CN}
    searched = aud.get("/decisions", params={"q": "cn.order7"}).text
    assert "cn.order7" in searched
    nothing = aud.get("/decisions", params={"q": "no such rule anywhere"}).text
    assert 'id="decision-count">0<' in nothing


def test_training_run_has_curves_per_region(world: World) -> None:
    aud = world.console("aud")
    runs = aud.get("/runs").text
    assert "demo-federated" in runs
    run = aud.get("/runs/demo-federated").text
    root = world.parties[COORD].root
    summary = json.loads((root / "runs" / "demo-federated" / "federated.json").read_text())
    evaluated = [s for s, r in summary["regions"].items() if r.get("ade") is not None]
    assert evaluated
    for site in evaluated:
        assert f'data-series="{site}"' in run, "one ADE curve per evaluated region"
        assert f"{summary['regions'][site]['ade']:.3f}" in run
    assert aud.get("/runs/no-such-run").status_code == 404
    assert aud.get("/runs/%2e%2e").status_code == 404


def test_releases_and_licences(world: World) -> None:
    page = world.console("aud").get("/releases").text
    assert "1.0.0" in page and 'class="licence' in page
    (path,) = (world.parties[COORD].root / "licences").glob("*.json")
    assert json.loads(path.read_text())["licence"]["id"] in page


def test_the_plan_page_shows_the_latest_plan(world: World) -> None:
    root = world.parties[COORD].root
    kept = json.loads(sorted((root / "plans").glob("*/plan.json"))[-1].read_text())
    page = world.console("aud").get("/plan").text
    assert kept["plan"] in page
    assert f"Recommended: <b>{kept['recommended']}</b>" in page
    for option in kept["options"]:
        assert f'id="option-{option["id"]}"' in page
    rows = re.findall(r"<tr><td>([a-z]+-[a-z]+)</td><td>", page)
    assert set(rows) == set(SITES)
    # China's operator at the coordinator sees the options, and of the sites only China.
    own = world.console("op-cn").get("/plan").text
    assert set(re.findall(r"<tr><td>([a-z]+-[a-z]+)</td><td>", own)) == {CN}


def test_the_rights_page_shows_the_demo_s_erasure_at_both_ends(world: World) -> None:
    page = world.console("aud").get("/rights").text
    assert 'class="right erasure"' in page and f'data-site="{CN}"' in page
    assert 'class="right erasure_in" data-site="us-oregon"' in page
    counts = dict(
        re.findall(r'<tr class="rights-site" data-site="([^"]+)"><td>[^<]+</td><td>(\d+)', page)
    )
    assert counts[CN] == "1"
    # The page names no vehicle: not the VIN, not its keyed hash.
    erasure = world.entries(CN, "erasure")[0].data
    assert erasure["vehicle"] not in page and erasure["vehicle"][:12] not in page


def test_console_users_cli(world: World) -> None:
    coordinator = world.parties[COORD]

    def start(*args: str) -> subprocess.Popen[str]:
        """``onshore console users ARGS -p COORDINATOR``, its own process, as a user runs it;
        independent commands run side by side (each starts the CLI, which takes seconds)."""
        return subprocess.Popen(
            [
                *(sys.executable, "-m", "onshore", "console", "users", *args),
                *("-p", str(coordinator.root)),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def done(process: subprocess.Popen[str], stdin: str = "") -> subprocess.CompletedProcess[str]:
        out, err = process.communicate(stdin, timeout=120)
        return subprocess.CompletedProcess(process.args, process.returncode, out, err)

    # The coordinator's console knows its peers' sites: an operator of any of them may sign in.
    assert {p.id for p in load_peers(coordinator).sites()} == set(SITES)
    adding = start("add", "ops2", "--role", "site-operator", "--site", EU, "--json")
    piping = start("add", "aud2", "--role", "auditor", "--password-stdin", "--json")
    added, piped = done(adding), done(piping, PASSWORD)
    assert added.returncode == 0, added.stderr
    data = json.loads(added.stdout)
    assert data["site"] == EU and len(data["password"]) >= 12
    assert UserStore(coordinator).sign_in("ops2", data["password"]) == User(
        "ops2", Role.SITE_OPERATOR, EU
    )
    assert piped.returncode == 0 and "password" not in json.loads(piped.stdout)
    assert UserStore(coordinator).sign_in("aud2", PASSWORD) == User("aud2", Role.AUDITOR)
    refusals = [
        (("add", "x", "--role", "admin"), "not a console role"),
        (("add", "x", "--role", "site-operator"), "needs --site"),
        (("add", "x", "--role", "site-operator", "--site", "mars"), "mars"),
        (("add", "x", "--role", "site-operator", "--site", COORD), "no site 'coordinator'"),
        (("add", "ops2", "--role", "auditor"), "already exists"),
        (("remove", "nobody"), "no console user"),
    ]
    listing = start("list", "--json")
    failing = [start(*args) for args, _ in refusals]
    listed = json.loads(done(listing).stdout)
    assert {"name": "ops2", "role": "site-operator", "site": EU} in listed
    assert all("password" not in u for u in listed)
    for (args, message), process in zip(refusals, failing, strict=True):
        failed = done(process)
        assert failed.returncode == 2 and message in failed.stderr, (args, failed.stderr)
    assert UserStore(coordinator).get("x") is None
    removing = [start("remove", name) for name in ("ops2", "aud2")]
    assert [done(process).returncode for process in removing] == [0, 0]
    assert UserStore(coordinator).get("ops2") is None and UserStore(coordinator).get("aud2") is None


# -- what can go wrong ---------------------------------------------------------------------------


def test_ledger_verify_catches_a_changed_byte_in_the_coordinator_s_ledger(
    small_demo: tuple[Path, dict],  # type: ignore[type-arg]
    tmp_path: Path,
) -> None:
    parties = copy_demo(small_demo, tmp_path / "demo")
    coordinator = parties[COORD].root

    def verify() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                *(sys.executable, "-m", "onshore", "ledger", "verify"),
                *("-p", str(coordinator), "--offline", "--json"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )

    good = verify()
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["ok"] is True
    with sqlite3.connect(coordinator / "store" / "catalogue.sqlite") as db:
        (payload,) = db.execute("SELECT payload FROM ledger_entries WHERE seq = 1").fetchone()
        at = payload.index('"rounds":') + len('"rounds":')
        changed = payload[:at] + str((int(payload[at]) + 1) % 10) + payload[at + 1 :]
        db.execute("UPDATE ledger_entries SET payload = ? WHERE seq = 1", (changed,))
    bad = verify()
    assert bad.returncode == 11, bad.stderr
    assert json.loads(bad.stdout)["ok"] is False


def test_a_site_whose_approvals_disagree_with_its_ledger_says_why(
    small_demo: tuple[Path, dict],  # type: ignore[type-arg]
    tmp_path: Path,
) -> None:
    """Its gate will not decide on them, so the engineer's page of that site says why instead of
    showing (or crashing on) its rows."""
    parties = copy_demo(small_demo, tmp_path / "demo")
    make_users(tmp_path / "demo")
    with sqlite3.connect(parties[CN].root / "store" / "catalogue.sqlite") as db:
        assert db.execute("DELETE FROM approvals").rowcount > 0
    services = Services({site: parties[site] for site in SITES})
    try:
        world = World(tmp_path / "demo", parties, services)
        eng = world.console("eng")
        page = eng.get(f"/sites/{CN}")
        assert page.status_code == 503 and "disagree with its ledger" in page.text
        assert 'class="clip"' not in page.text
        home = eng.get("/")
        assert home.status_code == 200 and cards(home.text) == set(SITES)
        assert "disagree with its ledger" in home.text
        decisions = eng.get("/decisions").text
        assert "cn-shanghai refused to answer" in decisions and "did not answer" not in decisions
        assert 'data-site="eu-frankfurt"' in decisions
    finally:
        services.close()


def test_a_site_whose_service_does_not_answer(world: World) -> None:
    """No app in process for the US site: the console tries mutual TLS to its address, where
    nothing listens."""
    endpoint = httpx.URL(load_peers(world.parties[COORD])[US].endpoint)
    assert endpoint.host and endpoint.port
    with socket.socket() as probe:
        assert probe.connect_ex((endpoint.host, endpoint.port)) != 0, "nothing may listen there"
    eng = world.console("eng", http_for=lambda s: None if s == US else world.reach(s))
    home = eng.get("/")
    assert home.status_code == 200 and cards(home.text) == set(SITES)
    card = home.text.split('id="site-us-oregon"')[1].split("</article>")[0]
    assert "did not answer" in card
    assert 'class="clips"' in home.text.split('id="site-eu-frankfurt"')[1].split("</article>")[0]
    page = eng.get(f"/sites/{US}")
    assert page.status_code == 503 and 'id="error"' in page.text
    assert "did not answer" in page.text
    decisions = eng.get("/decisions")
    assert decisions.status_code == 200 and "us-oregon did not answer" in text_of(decisions.text)
    approvals = eng.get("/approvals")
    assert approvals.status_code == 200 and "us-oregon did not answer" in text_of(approvals.text)


# A run an engineer judges: written by hand into a lab project, so these tests need no demo.

JUDGED_SHA256 = hashlib.sha256(b"the global model's weights").hexdigest()


def _evaluated(ade: float, cv: float, samples: int, *, stationary: int = 0) -> dict[str, Any]:
    """A region's figures as ``federated.json`` holds them."""
    groups = {"stationary": {"ade": ade, "fde": ade, "miss_rate": 0.0, "samples": stationary}}
    return {
        "round": 2,
        "ade": ade,
        "fde": ade * 2,
        "miss_rate": 0.1,
        "samples": samples,
        "groups": groups if stationary else {},
        "baselines": {"constant_velocity": {"ade": cv, "fde": cv * 2, "miss_rate": 0.2}},
        "epsilon_total": 3.5,
    }


def write_judged_runs(project: Project) -> None:
    """Into ``project``'s ``runs/``: ``judged`` (federated, FedProx, 2 rounds, fine-tuned)
    where China's test split is 151 standing vehicles (constant velocity 0.000 m), and
    ``local-judged``, a local run of the same model beside it."""
    model = {"name": "object_encoder", "config": {"hidden": 64}}
    options = {
        "sites": list(SITES),
        "model": model,
        "rounds": 2,
        "local_steps": 150,
        "batch_size": 128,
        "lr": 0.002,
        "weight_decay": 0.1,
        "strategy": "fedprox",
        "proximal_mu": 0.01,
        "server_lr": 0.05,
        "dp": True,
        "fine_tune_steps": 40,
        "fine_tune_lr": 0.0,
        "seed": 0,
        "dataset": {"history": 20},
    }
    rounds: list[dict[str, Any]] = []
    for n in (1, 2):
        for kind in ("train", "evaluate"):
            accepted = [
                {
                    "site": site,
                    "sha256": "0" * 64,
                    "bytes": 5000,
                    "ledger": {"site": site, "seq": 10 * n + i, "hash": f"{i}" * 64},
                    "metrics": {"train-loss": round(1.0 / n + i / 10, 4)}
                    if kind == "train"
                    else {"ade": 0.5 / n, "cv-ade": 0.0 if site == CN else 1.0},
                }
                for i, site in enumerate(SITES)
            ]
            rounds.append(
                {
                    "round": n,
                    "kind": kind,
                    "sent": dict.fromkeys(SITES, 40_000 if kind == "train" else 20_000),
                    "received": dict.fromkeys(SITES, 40_100 if kind == "train" else 300),
                    "accepted": accepted,
                    "refused": [],
                    "missing": [],
                    "seconds": 3.25 if kind == "train" else 1.5,
                }
            )
    summary = {
        "run": "judged",
        "mode": "federated",
        "rounds": 2,
        "strategy": "fedprox",
        "dp": True,
        "model": model,
        "options": options,
        "regions": {
            CN: _evaluated(0.031, 0.0, 151, stationary=151),
            EU: _evaluated(0.812, 1.204, 2400),
            US: _evaluated(0.934, 1.118, 1800),
        },
        "fine_tuned": {
            CN: {"site": CN, "ade": 0.021},
            EU: {"site": EU, "ade": 0.777},
            US: {"site": US, "ade": 0.901},
        },
        "epsilon": {CN: 1.25, EU: 0.75, US: 0.5},
        "delta": dict.fromkeys(SITES, 1e-5),
        "budget_epsilon": dict.fromkeys(SITES, 8.0),
        "bytes_crossed": dict.fromkeys(SITES, 200_800),
        "dp_settings": {s: {"noise_multiplier": 1.1, "max_grad_norm": 0.9} for s in SITES},
        "refusals": [],
        "model_path": {"store": COORD, "path": "derived/runs/judged/global.safetensors"},
        "model_bytes": 123_456,
        "coordinator_ledger": {"started": 4, "finished": 9},
        "lineage": [a["ledger"] for r in rounds if r["kind"] == "train" for a in r["accepted"]],
        "finished_at": "2026-03-01T12:00:00+00:00",
    }
    summary["model_path"]["sha256"] = JUDGED_SHA256
    folder = RunFolder.of(project, "judged")
    folder.write("options.json", options)
    folder.write("rounds.json", rounds)
    folder.write("federated.json", summary)
    local = RunFolder.of(project, "local-judged")
    local.write("options.json", {"model": model, "steps": 1500, "dataset": {"history": 20}})
    local.write(
        "run.json",
        {
            "run": "local-judged",
            "mode": "local",
            "model": model,
            "options": {"model": model, "steps": 1500, "dataset": {"history": 20}},
            "regions": {
                s: {**_evaluated(ade, 1.0, 2000), "train_loss": 0.5, "seconds": 12.0}
                for s, ade in ((CN, 0.044), (EU, 0.865), (US, 0.955))
            },
            "finished_at": "2026-02-28T12:00:00+00:00",
        },
    )


@pytest.fixture
def judged(project: Project) -> Project:
    """A lab project holding :func:`write_judged_runs`, an engineer and the EU's operator."""
    write_judged_runs(project)
    users = UserStore(project)
    users.add("eng", Role.COORDINATOR_ENGINEER, PASSWORD)
    users.add("op-eu", Role.SITE_OPERATOR, PASSWORD, site=EU)
    return project


def _signed_in(project: Project, name: str) -> TestClient:
    c = TestClient(create_app(project))
    signed = c.post(
        "/login",
        data={"username": name, "password": PASSWORD, "next": "/runs"},
        follow_redirects=False,
    )
    assert signed.status_code == 303, signed.text
    return c


def test_an_engineer_judges_a_run_by_its_settings_hash_and_warnings(judged: Project) -> None:
    eng = _signed_in(judged, "eng")
    page = eng.get("/runs/judged")
    assert page.status_code == 200, page.text
    html = page.text

    def setting(key: str) -> str:
        found = re.search(rf'<tr data-setting="{key}"><th>[^<]*</th><td>([^<]*)</td>', html)
        assert found, key
        return found.group(1)

    assert setting("strategy") == "fedprox (proximal_mu 0.01)"
    assert (setting("rounds"), setting("local_steps")) == ("2", "150")
    assert (setting("lr"), setting("batch_size")) == ("0.002", "128")
    assert (
        setting("dp") == "DP-SGD at each site" and setting("fine_tune_steps") == "40 at each site"
    )
    assert setting("model") == "object_encoder hidden=64"
    privacy = html.split('id="privacy"')[1].split("</table>")[0]
    cn_privacy = privacy.split(f'data-site="{CN}">')[1].split("</tr>")[0]
    assert re.findall(r"<td>([^<]+)</td>", cn_privacy)[:5] == [
        "1.1",
        "0.9",
        "1e-05",
        "8.00",
        "1.25",
    ]
    assert f'<code id="model-sha256">{JUDGED_SHA256}</code>' in html
    # Lineage: the coordinator's start and end, and each site's model updates.
    assert 'href="/ledger/coordinator/entries/9"' in html
    assert f'href="/ledger/{CN}/entries/20"' in html

    # The degenerate baseline: China's row says so, a banner says why; the others are trusted.
    banner = text_of(html.split('id="untrusted"')[1].split("</div>")[0])
    assert f"cannot be trusted for {CN}." in banner
    assert "test split of 151 samples, fewer than 500" in banner
    assert "constant velocity scores 0.000 m" in banner and "standing still" in banner
    rows = {
        site: html.split(f'data-site="{site}" data-colour=')[1].split("</tr>")[0] for site in SITES
    }
    assert "WARNING" in rows[CN] and "WARNING" not in rows[EU] + rows[US]
    assert f'<tr class="region untrusted" data-site="{CN}"' in html
    # The local run of the same model beside the federated and fine-tuned ADE.
    assert 'href="/runs/local-judged"' in html.split('id="local-run"')[1].split("</p>")[0]
    assert re.findall(r"<td(?: class=\"\w+\")?>(\d\.\d{3})</td>", rows[CN])[:6] == [
        "0.031",
        "0.062",
        "0.100",
        "0.000",
        "0.021",
        "0.044",
    ]
    # Each round's duration, loss and bytes per region; one colour per region on every chart.
    first = html.split('data-round="1">')[1].split("</tr>")[0]
    assert "4.8 s" in first and "1.0000" in first
    assert html.count(f'data-series="{CN}" ') == 3, "ADE, loss and bytes curves"
    for site in SITES:
        colour = series_colour(site)
        assert f'data-site="{site}" data-colour="{colour}"' in html
        assert all(
            f'data-colour="{colour}"' in line
            for line in re.findall(rf'<polyline[^>]*data-series="{site}[" ][^>]*>', html)
        )
    runs = eng.get("/runs").text
    listed = runs.split('data-run="judged"')[1].split("</tr>")[0]
    assert "WARNING" in listed.split(CN)[1].split(" · ")[0]


def test_a_site_operator_sees_only_their_region_of_a_run(judged: Project) -> None:
    html = _signed_in(judged, "op-eu").get("/runs/judged").text
    assert f'data-site="{EU}"' in html
    assert not any(f'data-site="{s}"' in html for s in (CN, US))
    assert 'id="untrusted"' not in html, "China's warning is China's to see"
    assert "/ledger/coordinator/" not in html and f"/ledger/{CN}/" not in html
    assert f'data-series="{CN}"' not in html
