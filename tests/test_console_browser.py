"""The console in a real browser: Debian's headless Chromium, driven by Playwright, against
``onshore console`` served as a user starts it, in the coordinator's folder of a copy of the small
demo, with each site's service (``onshore serve``) running as its own process, reached over
mutual TLS. Each role signs in, follows the main pages and finds what it may see and not what
it may not: the site operator in their site's own console, the engineer and the auditor at the
coordinator, where China's rows are withheld by China's gate; the reports open (the HTML in the
browser, the PDF's first page turned into an image)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from test_console import (
    CN,
    COORD,
    EU,
    PASSWORD,
    SITES,
    US,
    copy_demo,
    make_users,
    revoke_remote_queries,
    write_judged_runs,
)

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]

if not CHROMIUM.exists():
    if os.environ.get("CI"):
        raise RuntimeError(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium")
    pytest.skip(
        f"{CHROMIUM} is missing: apt-get install chromium chromium-driver", allow_module_level=True
    )

from playwright.sync_api import Browser, Page, sync_playwright  # noqa: E402

# The small demo these tests share takes minutes, more on a busy machine.
pytestmark = pytest.mark.timeout(1500)


class Processes:
    """Processes this module started (``onshore serve``, ``onshore console``), started side by
    side and each waited for until it prints the line that says it listens; stopped by PID
    with SIGINT, in reverse."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: dict[str, subprocess.Popen[str]] = {}

    def start(self, name: str, args: list[str]) -> None:
        """Start ``onshore ARGS`` (its stderr in ``NAME.log``)."""
        with open(self.logs / f"{name}.log", "w") as err:
            self.started[name] = subprocess.Popen(
                [sys.executable, "-m", "onshore", *args],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )

    def ready(self, name: str, accept: Callable[[str], bool]) -> str:
        """The first line ``name`` prints, once ``accept`` says it listens."""
        stdout = self.started[name].stdout
        assert stdout is not None
        line = stdout.readline()
        assert accept(line), f"{name}: {line!r}\n{(self.logs / f'{name}.log').read_text()}"
        return line

    def stop(self) -> None:
        for process in reversed(self.started.values()):
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in reversed(self.started.values()):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
        self.started.clear()


def _listens(party: str) -> Callable[[str], bool]:
    """Whether a line is ``onshore serve --json`` saying that ``party``'s service listens."""

    def accept(line: str) -> bool:
        try:
            return bool(json.loads(line).get("party") == party)
        except ValueError:
            return False

    return accept


def _url(line: str) -> str:
    """The URL in ``onshore console``'s first line."""
    return line.split(" at ")[1].split()[0].rstrip("/")


@pytest.fixture(scope="module")
def consoles(
    small_demo: tuple[Path, dict],  # type: ignore[type-arg]
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, str]]:
    """A copy of the small demo with each site's service running, and two consoles: the
    coordinator's (``COORD``) and China's own (``CN``); their URLs."""
    root = tmp_path_factory.mktemp("browser")
    folder = root / "demo"
    parties = copy_demo(small_demo, folder)
    revoke_remote_queries(parties[CN])  # the engineer's read of China's rows has no approval
    make_users(folder)
    processes = Processes(root)
    try:
        for site in SITES:
            processes.start(site, ["serve", "--project", str(folder / site), "--json"])
        for party in (COORD, CN):
            processes.start(
                f"console-{party}", ["console", "--port", "0", "-p", str(folder / party)]
            )
        for site in SITES:
            processes.ready(site, _listens(site))
        yield {
            party: _url(processes.ready(f"console-{party}", lambda line: " at http://" in line))
            for party in (COORD, CN)
        }
    finally:
        processes.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield launched
        launched.close()


def sign_in(browser: Browser, url: str, name: str) -> Page:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{url}/")
    assert page.url.startswith(f"{url}/login")
    page.fill("#username", name)
    page.fill("#password", PASSWORD)
    page.click("#sign-in")
    page.wait_for_selector("#signed-in")
    return page


def nav(page: Page, label: str) -> None:
    page.click(f"header nav >> text={label}")
    page.wait_for_load_state()


def site_cards(page: Page) -> set[str]:
    return {card.get_attribute("id") or "" for card in page.query_selector_all("article.site")}


def test_wrong_password_stays_on_the_sign_in_page(
    browser: Browser, consoles: dict[str, str]
) -> None:
    page = browser.new_page()
    page.goto(f"{consoles[COORD]}/login")
    page.fill("#username", "eng")
    page.fill("#password", "not the password")
    page.click("#sign-in")
    assert page.inner_text("#login-error") == "Wrong user name or password."
    assert page.query_selector("#signed-in") is None
    page.close()


def test_site_operator_in_the_site_s_own_console(
    browser: Browser, consoles: dict[str, str]
) -> None:
    url = consoles[CN]
    page = sign_in(browser, url, "op-cn")
    assert site_cards(page) == {f"site-{CN}"}
    page.click(f"#site-{CN} h2 a")
    assert page.query_selector_all("#clips tr.clip"), "their own clips"
    assert page.query_selector(".access") is None, "no gate between an operator and their site"
    page.goto(f"{url}/sites/{US}")
    assert "Not for your role" in page.inner_text("h1")
    nav(page, "Decisions")
    shown = {row.get_attribute("data-site") for row in page.query_selector_all("tr.decision")}
    assert shown == {CN}
    nav(page, "Ledger")
    assert [r.get_attribute("data-name") for r in page.query_selector_all("tr.ledger")] == [CN]
    page.click(f"#verify-{CN}")
    assert page.get_attribute("#verify-result", "data-ok") == "true"
    # The other sites' services answered the witness over mutual TLS.
    assert all(site in page.inner_text("#verify-result") for site in (EU, US))
    nav(page, "Reports")
    assert {r.get_attribute("data-site") for r in page.query_selector_all("tr.report")} == {CN}
    page.click("#sign-out")
    assert page.url.startswith(f"{url}/login")
    page.goto(f"{url}/")
    assert page.url.startswith(f"{url}/login"), "signed out means signed out"
    page.close()


def test_coordinator_engineer(browser: Browser, consoles: dict[str, str]) -> None:
    url = consoles[COORD]
    page = sign_in(browser, url, "eng")
    assert site_cards(page) == {f"site-{CN}", f"site-{EU}", f"site-{US}"}
    page.click(f"#site-{CN} h2 a")
    withheld = page.query_selector(".access.denied")
    assert withheld is not None and "cn_security_assessment" in withheld.inner_text()
    assert page.get_attribute(".access", "data-allowed") == "false"
    assert not page.query_selector_all("#clips tr.clip")
    assert page.inner_text("#clip-count").isdigit(), "the aggregates stay"
    page.goto(f"{url}/sites/{US}")
    assert page.get_attribute(".access", "data-allowed") == "true"
    assert page.query_selector_all("#clips tr.clip")
    page.goto(f"{url}/sites/{EU}")
    assert page.query_selector(".access") is None and page.query_selector_all("#clips tr.clip")
    nav(page, "Decisions")
    page.select_option("select[name=outcome]", "denied")
    page.select_option("select[name=what]", "remote_read")
    page.click("#filter")
    rows = page.query_selector_all("tr.decision")
    assert rows and all("denied" in (r.get_attribute("class") or "") for r in rows)
    assert {r.get_attribute("data-site") for r in rows} == {CN}, "the read just refused"
    nav(page, "Reports")
    page.click(f"tr.report[data-site='{CN}'] a.html")
    assert page.query_selector(".access.denied") is not None
    page.close()


def test_auditor_and_the_reports(
    browser: Browser, consoles: dict[str, str], tmp_path: Path
) -> None:
    import pymupdf

    url = consoles[COORD]
    page = sign_in(browser, url, "aud")
    assert "read-only" in page.inner_text("footer")
    assert site_cards(page) == {f"site-{CN}", f"site-{EU}", f"site-{US}"}
    # At the coordinator, in Germany, an auditor's read of Chinese rows is an export too.
    page.goto(f"{url}/sites/{CN}")
    assert page.get_attribute(".access", "data-allowed") == "false"
    for site in (EU, US):
        page.goto(f"{url}/sites/{site}")
        assert page.query_selector_all("#clips tr.clip"), site
    nav(page, "Approvals")
    assert page.query_selector_all(f"tr.approval[data-site='{CN}']"), "the demo's approvals"
    nav(page, "Training")
    page.click("text=demo-federated")
    assert page.query_selector_all("figure.chart svg polyline.series"), "curves per region"
    nav(page, "Releases")
    assert page.query_selector("#releases") is not None
    nav(page, "Ledger")
    page.click("#verify-coordinator")
    assert page.get_attribute("#verify-result", "data-ok") == "true"
    assert all(site in page.inner_text("#verify-result") for site in SITES), "peers asked"

    nav(page, "Reports")
    links = page.query_selector_all("tr.report a.html")
    assert len(links) == 3
    page.click(f"tr.report[data-site='{EU}'] a.html")
    body = page.inner_text("body")
    assert EU in body and page.query_selector("table") is not None
    # The PDF, fetched with the auditor's session, rendered to an image that is not blank.
    page.go_back()
    href = page.get_attribute(f"tr.report[data-site='{US}'] a.pdf", "href")
    pdf = page.request.get(f"{url}{href}")
    assert pdf.ok and pdf.headers["content-type"] == "application/pdf"
    document = pymupdf.open(stream=pdf.body(), filetype="pdf")
    pixmap = document[0].get_pixmap(dpi=60)
    image = tmp_path / "us-bulk-data-page1.png"
    pixmap.save(image)
    samples = pixmap.samples
    dark = sum(1 for value in samples[:: pixmap.n] if value < 128)
    assert dark > 0.005 * pixmap.width * pixmap.height, "the first page has text on it"
    page.close()


def test_auditor_follows_an_approval_to_its_ledger_entry_and_exports_it(
    browser: Browser, consoles: dict[str, str]
) -> None:
    import csv

    url = consoles[COORD]
    page = sign_in(browser, url, "aud")
    nav(page, "Approvals")
    link = page.query_selector(f"tr.approval[data-site='{CN}'] a.ledger-entry")
    assert link is not None, "each approval links to the entry that put it on file"
    approval = link.get_attribute("data-approval") or ""
    seq = int((link.get_attribute("href") or "").rsplit("/", 1)[1])
    link.click()
    page.wait_for_load_state()
    # China's ledger, read from the coordinator through China's gate: the entry, checked.
    row = page.query_selector(f"#entry-{seq}")
    assert row is not None and row.get_attribute("data-kind") == "approval_added"
    assert row.get_attribute("data-ok") == "true"
    assert f'"id": "{approval}"' in page.inner_text(f"#entry-{seq} pre.payload")
    assert "signature valid" in row.inner_text() and "links to the entry before" in row.inner_text()

    with page.expect_download() as download:
        page.click("#export-json")
    exported = json.loads(Path(download.value.path()).read_text())
    assert exported["ledger"] == CN and exported["complete"] is True
    (entry,) = exported["entries"]
    assert entry["seq"] == seq and entry["kind"] == "approval_added"
    assert entry["payload"]["approval"]["id"] == approval and entry["check"]["ok"] is True
    with page.expect_download() as download:
        page.click("#export-csv")
    with open(download.value.path(), newline="") as sheet:
        (line,) = list(csv.DictReader(sheet))
    assert int(line["seq"]) == seq and line["hash"] == entry["hash"]
    assert line["check"] == "valid" and json.loads(line["payload"]) == entry["payload"]

    # Who read what: the auditor's own reads of China's approvals, filtered at China's site.
    nav(page, "Ledger")
    page.click(f"#explore-{CN}")
    page.select_option("select[name=view]", "approvals")
    page.fill("input[name=reader]", "aud")
    page.click("#filter-entries")
    reads = page.query_selector_all("tr.entry")
    assert reads and {r.get_attribute("data-kind") for r in reads} == {"remote_read"}
    assert all("approvals by aud" in r.inner_text() for r in reads)
    page.fill("input[name=since]", "not a date")
    page.click("#filter-entries")
    assert "since: 'not a date' is not a date" in page.inner_text("#filter-error")
    page.close()


@pytest.fixture(scope="module")
def lab_console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``onshore console`` in a fresh lab project holding a hand-written federated run whose
    Chinese test split is degenerate (:func:`test_console.write_judged_runs`); its URL. No
    demo: the run page reads only the run's folder."""
    from onshore.console import Role, UserStore
    from onshore.sites import init_project

    root = tmp_path_factory.mktemp("lab-console")
    project = init_project(root / "lab", "three-regions")
    write_judged_runs(project)
    UserStore(project).add("eng", Role.COORDINATOR_ENGINEER, PASSWORD)
    processes = Processes(root)
    try:
        processes.start("console", ["console", "--port", "0", "-p", str(project.root)])
        yield _url(processes.ready("console", lambda line: " at http://" in line))
    finally:
        processes.stop()


def test_engineer_judges_a_run_and_sees_the_degenerate_baseline(
    browser: Browser, lab_console: str
) -> None:
    page = sign_in(browser, lab_console, "eng")
    nav(page, "Training")
    assert "WARNING" in page.inner_text("tr.run[data-run='judged']")
    page.click("text=judged")
    page.wait_for_load_state()
    assert (
        page.inner_text("#settings tr[data-setting='strategy'] td") == "fedprox (proximal_mu 0.01)"
    )
    assert page.inner_text("#settings tr[data-setting='local_steps'] td") == "150"
    assert page.inner_text("#settings tr[data-setting='lr'] td") == "0.002"
    assert (
        page.inner_text("#model-sha256")
        == hashlib.sha256(b"the global model's weights").hexdigest()
    )
    banner = page.inner_text("#untrusted")
    assert banner.startswith("WARNING") and CN in banner and "0.000 m" in banner
    assert "WARNING" in page.inner_text(f"tr.region[data-site='{CN}'] td.trust")
    assert "WARNING" not in page.inner_text(f"tr.region[data-site='{EU}'] td.trust")
    # China keeps its colour on every chart of the page.
    colours = {
        line.get_attribute("data-colour")
        for line in page.query_selector_all(f"figure.chart polyline[data-series='{CN}']")
    }
    assert colours == {page.get_attribute(f"tr.region[data-site='{CN}']", "data-colour")}
    page.click("#local-run a")
    page.wait_for_load_state()
    assert page.inner_text("h1").startswith("local-judged")
    page.close()
