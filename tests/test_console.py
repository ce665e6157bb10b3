"""The console over HTTP, by role: who signs in, what each role sees, and the gate in front of
another country's rows (every such read in the site's ledger)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from onshore.console import Role, UserStore, create_app
from onshore.console.app import COOKIE
from onshore.console.auth import Sessions, User
from onshore.gate import Approval
from onshore.ledger import Entry, Ledger
from onshore.reports.build import flows
from onshore.settings import Project, load_project
from onshore.store import SiteStore
from onshore.gate.record import add_approval

CN, EU, US = "cn-shanghai", "eu-frankfurt", "us-oregon"
PASSWORD = "correct horse battery"


def make_users(project: Project) -> None:
    users = UserStore(project)
    users.add("op-cn", Role.SITE_OPERATOR, PASSWORD, site=CN)
    users.add("op-us", Role.SITE_OPERATOR, PASSWORD, site=US)
    users.add("eng", Role.COORDINATOR_ENGINEER, PASSWORD)
    users.add("aud", Role.AUDITOR, PASSWORD)


@pytest.fixture(scope="module")
def project(
    small_demo: tuple[Path, dict],  # type: ignore[type-arg]
    tmp_path_factory: pytest.TempPathFactory,
) -> Project:
    folder = tmp_path_factory.mktemp("console") / "demo"
    shutil.copytree(small_demo[0], folder)
    project = load_project(folder)
    make_users(project)
    return project


def client(project: Project, name: str | None = None) -> TestClient:
    c = TestClient(create_app(project))
    if name is not None:
        signed = c.post(
            "/login",
            data={"username": name, "password": PASSWORD, "next": "/"},
            follow_redirects=False,
        )
        assert signed.status_code == 303, signed.text
    return c


def ledger_entries(project: Project, site: str, kind: str) -> list[Entry]:
    with SiteStore.open(project, site) as store:
        return Ledger.open(store.catalogue).entries(kind=kind)


def text_of(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_every_page_needs_a_signed_session(project: Project) -> None:
    anonymous = client(project)
    for path in ["/", "/sites/cn-shanghai", "/decisions", "/ledger", "/runs", "/reports"]:
        response = anonymous.get(path, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"].startswith("/login")
    wrong = anonymous.post("/login", data={"username": "eng", "password": "guess"})
    assert wrong.status_code == 401 and COOKIE not in wrong.cookies
    assert "Wrong user name or password" in wrong.text
    unknown = anonymous.post("/login", data={"username": "nobody", "password": PASSWORD})
    assert unknown.status_code == 401 and "Wrong user name or password" in unknown.text
    # A forged or expired cookie is no session.
    sessions = Sessions(project)
    forged = sessions.issue(User("aud", Role.AUDITOR))[:-2] + "AA"
    expired = sessions.issue(User("aud", Role.AUDITOR), now=0)
    for token in (forged, expired, "garbage"):
        anonymous.cookies.set(COOKIE, token)
        assert anonymous.get("/", follow_redirects=False).status_code == 303
    anonymous.cookies.clear()
    # After signing in, only a path on this site: never another host.
    away = anonymous.post(
        "/login",
        data={"username": "aud", "password": PASSWORD, "next": "//evil.example/"},
        follow_redirects=False,
    )
    assert away.headers["location"] == "/"


def test_passwords_are_stored_hashed_and_the_files_are_private(project: Project) -> None:
    users_db = project.root / "console" / "users.sqlite"
    assert PASSWORD.encode() not in users_db.read_bytes()
    assert users_db.stat().st_mode & 0o077 == 0
    assert (project.root / "console" / "session.key").stat().st_mode & 0o077 == 0


def test_a_site_operator_sees_only_their_site(project: Project) -> None:
    op = client(project, "op-cn")
    home = op.get("/").text
    assert 'id="site-cn-shanghai"' in home
    assert 'id="site-us-oregon"' not in home and 'id="site-eu-frankfurt"' not in home
    site = op.get("/sites/cn-shanghai")
    assert site.status_code == 200 and 'class="clip"' in site.text
    for path in ["/sites/us-oregon", "/reports/us-oregon/us-bulk-data.html"]:
        denied = op.get(path)
        assert denied.status_code == 403 and "operates cn-shanghai" in denied.text
    assert op.post("/ledger/us-oregon/verify").status_code == 403
    assert op.post("/ledger/coordinator/verify").status_code == 403
    decisions = op.get("/decisions").text
    assert 'data-site="cn-shanghai"' in decisions
    assert 'data-site="us-oregon"' not in decisions and 'data-site="eu-frankfurt"' not in decisions
    run = op.get("/runs/demo-federated").text
    assert 'data-site="us-oregon"' not in run and 'data-site="eu-frankfurt"' not in run
    reports = op.get("/reports").text
    assert "cn-annual" in reports and "us-bulk-data" not in reports
    # Reading one's own site is not a transfer: nothing in the ledger.
    reads = ledger_entries(project, CN, "remote_read")
    assert not [e for e in reads if e.data["reader"] == "op-cn"]


def test_an_engineer_reads_another_country_s_rows_only_through_its_gate(project: Project) -> None:
    eng = client(project, "eng")
    home = text_of(eng.get("/").text)
    for site in (CN, EU, US):
        assert site in home, "every site's metadata and aggregates"
    before = {s: len(ledger_entries(project, s, "remote_read")) for s in (CN, EU, US)}

    cn = eng.get("/sites/cn-shanghai")
    assert cn.status_code == 200
    assert 'data-allowed="false"' in cn.text and 'class="clip"' not in cn.text
    assert "cn_security_assessment" in cn.text
    assert 'id="clip-count"' in cn.text, "the aggregates stay"
    read = ledger_entries(project, CN, "remote_read")[-1]
    assert read.data["allowed"] is False and read.data["reader"] == "eng"
    assert read.data["destination"] == project.settings.coordinator.country
    assert {i["category"] for i in read.data["items"]} >= {"vehicle_id", "trajectory"}
    with SiteStore.open(project, CN) as store:
        vins = {c.vin for c in store.catalogue.clips()[:100]}
    assert not any(vin in cn.text for vin in vins), "no VIN of a withheld row on the page"

    us = eng.get("/sites/us-oregon")
    assert 'data-allowed="true"' in us.text and 'class="clip"' in us.text
    assert ledger_entries(project, US, "remote_read")[-1].data["allowed"] is True

    eu = eng.get("/sites/eu-frankfurt")
    assert 'class="clip"' in eu.text and "data-allowed" not in eu.text
    after = {s: len(ledger_entries(project, s, "remote_read")) for s in (CN, EU, US)}
    assert after == {CN: before[CN] + 1, EU: before[EU], US: before[US] + 1}, (
        "a read from the coordinator's own country is not a transfer"
    )

    # The CN report holds its map of traces: opening it from abroad is refused too.
    refused = eng.get("/reports/cn-shanghai/cn-annual.html")
    assert refused.status_code == 403 and 'data-allowed="false"' in refused.text
    # A denied read is an incident of the site like any refused transfer.
    with SiteStore.open(project, CN) as store:
        found = flows(CN, Ledger.open(store.catalogue).entries())
    assert [f for f in found if f.what == "remote_read" and not f.allowed]


def test_an_approval_on_file_lets_the_rows_through(project: Project) -> None:
    coordinator = project.settings.coordinator
    today = datetime.now(UTC).date()
    approval = Approval.model_validate(
        {
            "id": "CAC-REMOTE-1",
            "type": "cn_security_assessment",
            "origin": "CN",
            "recipient": coordinator.entity,
            "categories": ["vehicle_id", "trajectory", "sensitive_area_geodata"],
            "purposes": ["remote_query"],
            "max_subjects": 100_000,
            "valid_from": date(today.year, 1, 1).isoformat(),
            "reference": "CAC-SA-TEST",
        }
    )
    add_approval(project, CN, approval)
    page = client(project, "eng").get("/sites/cn-shanghai").text
    assert 'data-allowed="true"' in page and 'class="clip"' in page
    read = ledger_entries(project, CN, "remote_read")[-1]
    assert read.data["allowed"] and read.data["decision"]["approval"]["id"] == "CAC-REMOTE-1"


def test_an_auditor_sees_everything_and_writes_nothing(project: Project) -> None:
    aud = client(project, "aud")
    counts = {s: len(ledger_entries(project, s, "remote_read")) for s in (CN, EU, US)}
    for site in (CN, EU, US):
        page = aud.get(f"/sites/{site}")
        assert page.status_code == 200 and 'class="clip"' in page.text
    report = aud.get("/reports/cn-shanghai/cn-annual.html")
    assert report.status_code == 200 and "<html" in report.text
    assert "sandbox" in report.headers["content-security-policy"]
    pdf = aud.get("/reports/us-oregon/us-bulk-data.pdf")
    assert pdf.headers["content-type"] == "application/pdf" and pdf.content.startswith(b"%PDF")
    decisions = aud.get("/decisions").text
    for site in (CN, EU, US):
        assert f'data-site="{site}"' in decisions
    assert {s: len(ledger_entries(project, s, "remote_read")) for s in (CN, EU, US)} == counts
    # The only forms an auditor gets verify (reading) and sign out.
    ledger = aud.get("/ledger").text
    actions = set(re.findall(r'<form method="post" action="([^"]+)"', ledger))
    assert actions and all(a == "/logout" or a.endswith("/verify") for a in actions)
    verified = aud.post("/ledger/coordinator/verify")
    assert 'data-ok="true"' in verified.text


def test_decisions_filter(project: Project) -> None:
    aud = client(project, "aud")
    denied = aud.get("/decisions", params={"outcome": "denied"}).text
    assert 'class="decision denied"' in denied and 'class="decision allowed"' not in denied
    transfers = aud.get("/decisions", params={"what": "transfer", "site": CN}).text
    rows = re.findall(r'<tr class="decision [a-z]+" data-site="([^"]+)">', transfers)
    assert rows and set(rows) == {CN}
    assert "<td>transfer</td>" in transfers and "<td>model_update</td>" not in transfers
    searched = aud.get("/decisions", params={"q": "cn.order7"}).text
    assert "cn.order7" in searched
    nothing = aud.get("/decisions", params={"q": "no such rule anywhere"}).text
    assert 'id="decision-count">0<' in nothing


def test_training_run_has_curves_per_region(project: Project) -> None:
    aud = client(project, "aud")
    runs = aud.get("/runs").text
    assert "demo-federated" in runs and "demo-local" in runs
    run = aud.get("/runs/demo-federated").text
    summary = json.loads((project.root / "runs" / "demo-federated" / "federated.json").read_text())
    evaluated = [s for s, r in summary["regions"].items() if r.get("ade") is not None]
    for site in evaluated:
        assert f'data-series="{site}"' in run, "one ADE curve per evaluated region"
        assert f"{summary['regions'][site]['ade']:.3f}" in run
    assert aud.get("/runs/no-such-run").status_code == 404


def test_releases_and_licences(project: Project) -> None:
    page = client(project, "aud").get("/releases").text
    if not (project.root / "releases").is_dir():
        assert "no releases yet" in page
        return
    assert "1.0.0" in page and 'class="licence' in page


def test_console_users_cli(tmp_path: Path, project: Project) -> None:
    def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "onshore", "console", "users", *args, "-p", str(project.root)],
            capture_output=True,
            text=True,
            input=stdin,
            timeout=120,
        )

    added = cli("add", "ops2", "--role", "site-operator", "--site", EU, "--json")
    assert added.returncode == 0, added.stderr
    data = json.loads(added.stdout)
    assert data["site"] == EU and len(data["password"]) >= 12
    assert UserStore(project).sign_in("ops2", data["password"]) == User(
        "ops2", Role.SITE_OPERATOR, EU
    )
    piped = cli("add", "aud2", "--role", "auditor", "--password-stdin", "--json", stdin=PASSWORD)
    assert piped.returncode == 0 and "password" not in json.loads(piped.stdout)
    listed = json.loads(cli("list", "--json").stdout)
    assert {"name": "ops2", "role": "site-operator", "site": EU} in listed
    assert all("password" not in u for u in listed)
    for args, message in [
        (("add", "x", "--role", "admin"), "not a console role"),
        (("add", "x", "--role", "site-operator"), "needs --site"),
        (("add", "x", "--role", "site-operator", "--site", "mars"), "mars"),
        (("add", "ops2", "--role", "auditor"), "already exists"),
        (("remove", "nobody"), "no console user"),
    ]:
        failed = cli(*args)
        assert failed.returncode == 2 and message in failed.stderr, (args, failed.stderr)
    assert cli("remove", "ops2").returncode == 0
    assert UserStore(project).get("ops2") is None


def test_ledger_verify_covers_the_coordinator(
    small_demo: tuple[Path, dict],  # type: ignore[type-arg]
    tmp_path: Path,
) -> None:
    import sqlite3

    folder = tmp_path / "demo"
    shutil.copytree(small_demo[0], folder)

    def verify() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                *(sys.executable, "-m", "onshore", "ledger", "verify", "--site", "coordinator"),
                *("-p", str(folder), "--json"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )

    good = verify()
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["ok"] is True
    database = folder / "coordinator" / "store" / "catalogue.sqlite"
    with sqlite3.connect(database) as db:
        db.execute(
            "UPDATE ledger_entries SET payload = replace(payload, 'demo-federated', 'demo-forged')"
            " WHERE seq = 1"
        )
    bad = verify()
    assert bad.returncode == 11 and json.loads(bad.stdout)["ok"] is False
    # A site whose approvals table disagrees with its ledger: its gate will not decide, so the
    # engineer's page of that site says why instead of showing (or crashing on) its rows.
    make_users(load_project(folder))
    with sqlite3.connect(folder / "sites" / CN / "store" / "catalogue.sqlite") as db:
        assert db.execute("DELETE FROM approvals").rowcount > 0
    page = client(load_project(folder), "eng").get(f"/sites/{CN}")
    assert page.status_code == 503 and "disagree with its ledger" in page.text
    assert 'class="clip"' not in page.text
