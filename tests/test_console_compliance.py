"""What a compliance officer reads in the console before an inspection, against what the
commands and the reports say: approvals with their reference, validity and document; the
subjects of each transfer, summed over categories and each once; what each site received;
what a site stores, camera frames included; and the deadlines the rulebooks set.

Four fresh party folders (the sites' services in process): China holds de-identified clips and
an assessment on file, and sends its `export` outputs to the US site, whose service records
them received. The console runs in the coordinator's folder, signed in as an auditor, and
reads every site through that site's service.
"""

from __future__ import annotations

import html
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from conftest import Services, signed_in_console, write_clips
from onshore.deidentify import deidentify_site, resolve_profile
from onshore.gate import Approval
from onshore.gate.record import add_approval
from onshore.ingest import ingest
from onshore.ledger import Ledger
from onshore.rulebook import builtin_rulebooks
from onshore.settings import Project
from onshore.sites.keystore import load_keystore
from onshore.store import SiteStore
from onshore.transfer import transfer

CN, EU, US, COORD = "cn-shanghai", "eu-frankfurt", "us-oregon", "coordinator"
SITES = (CN, EU, US)
DOCUMENT = "https://records.example.com/cac/CAC-SA-7.pdf"
Parties = dict[str, Project]


@pytest.fixture
def world(parties: Parties, services: Services) -> Iterator[tuple[Parties, TestClient]]:
    cn = parties[CN]
    with SiteStore.open(cn) as site:
        ingest(site, write_clips(cn.root.parent / "up", 4, steps=1500))
        secret = load_keystore(cn.keystore_path(cn.site(CN))).hmac_secret
        deidentify_site(site, resolve_profile("export", {}), secret=secret)
    approval = Approval.model_validate(
        {
            "id": "CAC-7",
            "type": "cn_security_assessment",
            "origin": "CN",
            "recipient": "Onshore Mobility Inc.",
            "categories": ["anonymized_motion"],
            "purposes": ["adas_training"],
            "max_subjects": 1000,
            "valid_from": f"{datetime.now(UTC).year}-01-01",
            "reference": "CAC-SA-7",
            "document": DOCUMENT,
        }
    )
    add_approval(cn, CN, approval)
    sent = transfer(cn, US, "export", "adas_training", http=services.http(US))
    assert sent.status == "transferred", sent.decision.reasons
    yield parties, signed_in_console(parties[COORD], "aud", "auditor", services=services)


def _cli(project: Project, *args: str) -> Any:
    done = subprocess.run(
        [sys.executable, "-m", "onshore", *args, "--json"],
        cwd=project.root,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return orjson.loads(done.stdout)


def _rows(page: str, table: str, row_class: str) -> list[dict[str, str]]:
    """Each row of class ``row_class`` in table ``table``: its cells' text by their class (the
    cells that have one) and its data attributes."""
    body = re.search(rf'<table id="{table}">(.*?)</table>', page, re.S)
    assert body is not None, f"no table {table}"
    rows = []
    for attributes, cells in re.findall(
        rf'<tr class="{row_class}[^"]*"([^>]*)>(.*?)</tr>', body.group(1), re.S
    ):
        row = {k: html.unescape(v) for k, v in re.findall(r'data-([\w-]+)="([^"]*)"', attributes)}
        for name, text in re.findall(r'<td class="([\w-]+)"[^>]*>(.*?)</td>', cells, re.S):
            row[name] = html.unescape(re.sub(r"<[^>]+>", " ", text)).split()[0] if text else ""
        row["_cells"] = html.unescape(re.sub(r"<[^>]+>", " ", cells))
        rows.append(row)
    return rows


def test_approvals_show_reference_validity_and_document_as_approvals_list_does(
    world: tuple[Parties, TestClient],
) -> None:
    parties, console = world
    listed = {a["id"]: a for a in _cli(parties[CN], "approvals", "list")["approvals"]}
    page = console.get("/approvals").text
    (row,) = [r for r in _rows(page, "approvals", "approval") if r["site"] == CN]
    approval = listed["CAC-7"]
    assert row["reference"] == approval["reference"] == "CAC-SA-7"
    assert approval["document"] == DOCUMENT and DOCUMENT in page
    assert row["valid-from"] == approval["valid_from"]
    # No end date of its own: the rulebook's three years, as `approvals list` gives it.
    assert row["valid-until"] == approval["valid_until"] == f"{date.today().year + 2}-12-31"


def test_a_transfer_s_subjects_are_said_summed_and_each_once_and_the_recipient_sees_it(
    world: tuple[Parties, TestClient],
) -> None:
    parties, console = world
    with SiteStore.open(parties[CN]) as site:
        (out,) = Ledger.open(site.catalogue).entries(kind="transfer_out")
    with SiteStore.open(parties[US]) as site:
        (received,) = Ledger.open(site.catalogue).entries(kind="transfer_in")
    page = console.get("/decisions").text
    (row,) = [r for r in _rows(page, "decisions", "decision") if r["site"] == CN]
    summed = sum(item["subjects"] for item in out.data["items"])
    distinct = out.data["distinct_subjects"]
    assert row["subjects"] == str(summed) and row["distinct"] == str(distinct)
    assert 0 < distinct <= summed
    (inbound,) = _rows(page, "inbound", "inbound")
    assert (inbound["site"], inbound["from"]) == (US, CN)
    assert out.data["transfer"] in inbound["_cells"]
    assert f"#{received.seq}" in inbound["_cells"] and f"{CN} #{out.seq}" in inbound["_cells"]


def test_what_a_site_stores_is_what_inventory_says_frames_included(
    world: tuple[Parties, TestClient],
) -> None:
    parties, console = world
    inventory = _cli(parties[CN], "inventory")
    page = console.get(f"/sites/{CN}").text
    stored = re.search(r'id="stored" data-bytes="(\d+)"', page)
    frames = re.search(r'id="frames" data-frames="(\d+)"', page)
    assert stored is not None and frames is not None
    assert int(stored.group(1)) == inventory["bytes"] + inventory["frames"]["bytes"]
    assert int(frames.group(1)) == inventory["frames"]["frames"]
    assert re.search(r'id="clip-count">(\d+)<', page).group(1) == str(inventory["clips"])  # type: ignore[union-attr]


def test_the_next_deadline_of_each_site_s_rulebook_with_the_days_left(
    world: tuple[Parties, TestClient],
) -> None:
    _, console = world
    page = console.get("/reports").text
    rows = _rows(page, "deadlines", "deadline")
    today = datetime.now(UTC).date()
    due = builtin_rulebooks().for_origin("CN").obligations["cn.order7.annual_report_deadline"].due
    assert due is not None
    expected = due.next_on_or_after(today)
    (cn,) = [r for r in rows if r["obligation"] == "cn.order7.annual_report_deadline"]
    assert cn["site"] == CN and cn["due"] == expected.isoformat()
    assert cn["days-left"] == str((expected - today).days)
    assert [int(r["days-left"]) for r in rows] == sorted(int(r["days-left"]) for r in rows)


def test_a_site_s_clips_are_filtered_and_sorted_by_the_site(
    world: tuple[Parties, TestClient],
) -> None:
    parties, _ = world
    # China's own console, in its own folder: its operator reads its clips directly.
    console = signed_in_console(parties[CN], "op", "site-operator", site=CN)
    with SiteStore.open(parties[CN]) as site:
        clips = site.catalogue.clips()
    biggest = sorted(clips, key=lambda c: (c.bytes, c.clip_id), reverse=True)
    page = console.get(f"/sites/{CN}", params={"sort": "bytes", "order": "desc"}).text
    shown = re.findall(r'<tr class="clip"><td>([^<]+)</td>', page)
    assert shown == [c.clip_id for c in biggest]
    first = clips[0]
    page = console.get(f"/sites/{CN}", params={"vin": first.vin[:11]}).text
    matching = [c.clip_id for c in clips if c.vin.startswith(first.vin[:11])]
    assert re.findall(r'<tr class="clip"><td>([^<]+)</td>', page) == matching
    assert f'<span id="clip-matches">{len(matching)}</span>' in page
    refused = console.get(f"/sites/{CN}", params={"sort": "colour"})
    assert refused.status_code == 400 and "sort: &#39;colour&#39; is not one of" in refused.text
