"""The console in a real browser: Debian's headless Chromium, driven by Playwright, against
``onshore console`` served as a user starts it. Each role signs in, follows the main pages and
finds what it may see and not what it may not; the reports open (the HTML in the browser, the
PDF's first page turned into an image)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from onshore.settings import load_project
from test_console import CN, EU, PASSWORD, US, make_users

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


@pytest.fixture(scope="module")
def console_url(
    small_demo: tuple[Path, dict],  # type: ignore[type-arg]
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """``onshore console --port 0`` on a copy of the small demo's project; stopped by PID."""
    folder = tmp_path_factory.mktemp("browser") / "demo"
    shutil.copytree(small_demo[0], folder)
    make_users(load_project(folder))
    server = subprocess.Popen(
        [sys.executable, "-m", "onshore", "console", "--port", "0", "-p", str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert "http://127.0.0.1:" in line, server.stderr.read() if server.stderr else line
        yield line.split(" at ")[1].split()[0].rstrip("/")
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        for stream in (server.stdout, server.stderr):
            if stream is not None:
                stream.close()


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


def test_wrong_password_stays_on_the_sign_in_page(browser: Browser, console_url: str) -> None:
    page = browser.new_page()
    page.goto(f"{console_url}/login")
    page.fill("#username", "eng")
    page.fill("#password", "not the password")
    page.click("#sign-in")
    assert page.inner_text("#login-error") == "Wrong user name or password."
    assert page.query_selector("#signed-in") is None
    page.close()


def test_site_operator(browser: Browser, console_url: str) -> None:
    page = sign_in(browser, console_url, "op-cn")
    assert site_cards(page) == {f"site-{CN}"}
    page.click(f"#site-{CN} h2 a")
    assert page.query_selector_all("#clips tr.clip"), "their own clips"
    assert page.query_selector(".access") is None, "no gate between an operator and their site"
    page.goto(f"{console_url}/sites/{US}")
    assert "Not for your role" in page.inner_text("h1")
    nav(page, "Decisions")
    shown = {row.get_attribute("data-site") for row in page.query_selector_all("tr.decision")}
    assert shown == {CN}
    nav(page, "Ledger")
    assert [r.get_attribute("data-name") for r in page.query_selector_all("tr.ledger")] == [CN]
    page.click(f"#verify-{CN}")
    assert page.get_attribute("#verify-result", "data-ok") == "true"
    nav(page, "Reports")
    assert {r.get_attribute("data-site") for r in page.query_selector_all("tr.report")} == {CN}
    page.click("#sign-out")
    assert page.url.startswith(f"{console_url}/login")
    page.goto(f"{console_url}/")
    assert page.url.startswith(f"{console_url}/login"), "signed out means signed out"
    page.close()


def test_coordinator_engineer(browser: Browser, console_url: str) -> None:
    page = sign_in(browser, console_url, "eng")
    assert site_cards(page) == {f"site-{CN}", f"site-{EU}", f"site-{US}"}
    page.click(f"#site-{CN} h2 a")
    withheld = page.query_selector(".access.denied")
    assert withheld is not None and "cn_security_assessment" in withheld.inner_text()
    assert not page.query_selector_all("#clips tr.clip")
    page.goto(f"{console_url}/sites/{US}")
    assert page.get_attribute(".access", "data-allowed") == "true"
    assert page.query_selector_all("#clips tr.clip")
    page.goto(f"{console_url}/sites/{EU}")
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


def test_auditor_and_the_reports(browser: Browser, console_url: str, tmp_path: Path) -> None:
    import pymupdf

    page = sign_in(browser, console_url, "aud")
    assert "read-only" in page.inner_text("footer")
    for site in (CN, EU, US):
        page.goto(f"{console_url}/sites/{site}")
        assert page.query_selector_all("#clips tr.clip"), site
    nav(page, "Approvals")
    assert page.query_selector_all("tr.approval"), "the demo put approvals on file"
    nav(page, "Training")
    page.click("text=demo-federated")
    assert page.query_selector_all("figure.chart svg polyline.series"), "curves per region"
    nav(page, "Releases")
    assert page.query_selector("#releases") is not None
    nav(page, "Ledger")
    page.click("#verify-coordinator")
    assert page.get_attribute("#verify-result", "data-ok") == "true"

    nav(page, "Reports")
    links = page.query_selector_all("tr.report a.html")
    assert len(links) == 3
    page.click(f"tr.report[data-site='{CN}'] a.html")
    body = page.inner_text("body")
    assert "cn-shanghai" in body and page.query_selector("table") is not None
    # The PDF, fetched with the auditor's session, rendered to an image that is not blank.
    page.go_back()
    href = page.get_attribute(f"tr.report[data-site='{US}'] a.pdf", "href")
    pdf = page.request.get(f"{console_url}{href}")
    assert pdf.ok and pdf.headers["content-type"] == "application/pdf"
    document = pymupdf.open(stream=pdf.body(), filetype="pdf")
    pixmap = document[0].get_pixmap(dpi=60)
    image = tmp_path / "us-bulk-data-page1.png"
    pixmap.save(image)
    samples = pixmap.samples
    dark = sum(1 for value in samples[:: pixmap.n] if value < 128)
    assert dark > 0.005 * pixmap.width * pixmap.height, "the first page has text on it"
    page.close()
