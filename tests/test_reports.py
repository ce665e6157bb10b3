"""Reports for regulators: built from a project with real transfers, every figure traced to the
ledger entries it cites, rendered to HTML and PDF that open."""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict
from datetime import date
from pathlib import Path

import orjson
import pytest

from conftest import Services, make_parties, write_clips
from onshore.deidentify import deidentify_site, resolve_profile
from onshore.gate import Approval
from onshore.gate.record import add_approval
from onshore.ingest import ingest
from onshore.ledger import Ledger
from onshore.reports import REPORT_KINDS, build_report, write_report
from onshore.reports.model import Report
from onshore.settings import Project
from onshore.sites.keystore import load_keystore
from onshore.store import SiteStore
from onshore.transfer import transfer

CN, US = "cn-shanghai", "us-oregon"
DAY = date(2026, 11, 29)
ZONE = {
    "type": "FeatureCollection",
    "features": [
        {
            "type": "Feature",
            "properties": {"id": "z1", "name": "Test base", "kind": "military"},
            "geometry": {
                "type": "Polygon",
                "coordinates": [
                    [
                        [121.478, 31.236],
                        [121.484, 31.236],
                        [121.484, 31.242],
                        [121.478, 31.242],
                        [121.478, 31.236],
                    ]
                ],
            },
        }
    ],
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """The CN site's folder, with four de-identified clips, one transfer to the US site's
    service approved and one denied (the US site's app runs in process)."""
    root = tmp_path_factory.mktemp("reports")
    parties = make_parties(root / "parties")
    project = parties[CN]
    paths = write_clips(root / "up", 4, steps=1500)
    with SiteStore.open(project) as site:
        site.keep_reference_zones(orjson.dumps(ZONE))
        ingest(site, paths)
        secret = load_keystore(project.keystore_path(project.site(CN))).hmac_secret
        deidentify_site(site, resolve_profile("export", {}), secret=secret)
    approval = Approval.model_validate(
        {
            "id": "CAC-1",
            "type": "cn_security_assessment",
            "origin": "CN",
            "recipient": "Onshore Mobility Inc.",
            "categories": ["anonymized_motion"],
            "purposes": ["adas_training"],
            "max_subjects": 1000,
            "valid_from": "2026-01-01",
            "reference": "CAC-SA-1",
        }
    )
    add_approval(project, CN, approval)
    services = Services(parties)
    try:
        http = services.http(US)
        assert transfer(project, US, "raw", "adas_training", day=DAY, http=http).status == "denied"
        sent = transfer(project, US, "export", "adas_training", day=DAY, http=http)
        assert sent.status == "transferred", sent.decision.reasons
    finally:
        services.close()
    return project


def _entries(project: Project, site_id: str) -> dict[int, object]:
    with SiteStore.open(project, site_id) as site:
        return {e.seq: e for e in Ledger.open(site.catalogue).entries()}


def test_cn_annual_figures_recompute_from_the_ledger(project: Project) -> None:
    report = build_report(project, "cn-annual", CN, year=2026, with_map=False)
    entries = _entries(project, CN)
    out = [e for e in entries.values() if e.kind == "transfer_out"]  # type: ignore[attr-defined]
    denied = [
        e
        for e in entries.values()
        if e.kind == "gate_decision" and e.data["from"] == CN  # type: ignore[attr-defined]
    ]
    subjects: dict[str, int] = defaultdict(int)
    for e in out:
        for item in e.data["items"]:  # type: ignore[attr-defined]
            subjects[item["category"]] += item["subjects"]
    assert report.figure("outbound.transfers").value == len(out) == 1
    assert report.figure("incidents.denied").value == len(denied) == 1
    assert report.figure("outbound.objects").value == sum(
        len(e.data["sent"])
        for e in out  # type: ignore[attr-defined]
    )
    for category, count in subjects.items():
        figure = report.figure(f"outbound.subjects.{category}")
        assert figure.value == count
        # Recompute from exactly the entries the figure cites.
        cited = [entries[s.seq] for s in figure.sources if s.seq is not None]
        assert (
            sum(
                i["subjects"]
                for e in cited
                for i in e.data["items"]  # type: ignore[attr-defined]
                if i["category"] == category
            )
            == count
        )
    # Every cited entry exists with the hash the report gives.
    for source in report.sources():
        if source.seq is not None:
            assert entries[source.seq].hash == source.hash  # type: ignore[attr-defined]
        else:
            assert source.kind in {"catalogue", "settings"}
    (row,) = report.tables[0].rows
    assert "CAC-1" in row[6] and "Onshore Mobility" in row[2]


def test_other_years_report_no_transfers(project: Project) -> None:
    report = build_report(project, "cn-annual", CN, year=2025, with_map=False)
    assert report.figure("outbound.transfers").value == 0
    assert report.figure("held.clips").value == 4  # what the site holds is not by year


def test_dossier_and_records_of_transfers(project: Project) -> None:
    dossier = build_report(
        project, "outbound-dossier", CN, recipient="onshore  mobility inc.", with_map=False
    )
    assert dossier.figure("decisions").value == 2
    assert dossier.figure("sent").value == 1
    assert dossier.figure("denied").value == 1
    us = build_report(project, "us-bulk-data", CN, with_map=False)
    assert us.figure("transactions").value == 1
    eu = build_report(project, "eu-transfers", CN, with_map=False)
    assert eu.figure("transfers").value == 1
    assert REPORT_KINDS == ("cn-annual", "outbound-dossier", "eu-transfers", "us-bulk-data")


def test_the_pdf_and_html_open_and_show_something(project: Project, tmp_path: Path) -> None:
    import pymupdf

    report = build_report(project, "cn-annual", CN, year=2026)
    assert any(c.title.startswith("Traces") for c in report.charts)
    paths = write_report(report, tmp_path)
    html = paths["html"].read_text()
    assert '<h1 id="title">' in html and "CAC-1" in html and "data:image/png;base64," in html
    with pymupdf.open(paths["pdf"]) as pdf:
        assert pdf.page_count >= 2
        text = "".join(page.get_text() for page in pdf)
        assert "Annual automotive data security report 2026" in text
        pix = pdf[0].get_pixmap(dpi=60)
        png = tmp_path / "page1.png"
        pix.save(png)
        samples = pix.samples
        dark = sum(1 for b in samples[:: pix.n] if b < 128)
        assert dark > 500, "the first page is blank"
        assert png.stat().st_size > 1000


def test_the_cli_writes_both_files_and_prints_the_figures(project: Project) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "onshore",
            "report",
            "us-bulk-data",
            "--site",
            CN,
            "--project",
            str(project.root),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    data = orjson.loads(result.stdout)
    assert Path(data["paths"]["pdf"]).parent == project.root / "reports" / CN
    assert Path(data["paths"]["html"]).is_file()
    assert any(f["key"] == "transactions" for f in data["report"]["figures"])


def _table_words(report: Report) -> set[str]:
    """Every word of every table cell the PDF shows (figures, tables, the appendix)."""
    cells = [c for f in report.figures for c in (f.label, str(f.value))]
    shown = [t for t in report.tables if t.rows]  # an empty table shows a line, no header
    cells += [str(c) for t in shown for row in (t.columns, *t.rows) for c in row]
    cells += [s.hash or s.detail for s in report.sources()] + [s.kind for s in report.sources()]
    return {word for cell in cells for word in cell.split()}


def _unbroken(pdf_bytes: bytes, words: set[str]) -> tuple[list[str], list[tuple[float, float]]]:
    """The words of ``words`` the PDF does not show whole (a word broken inside a cell shows
    as two pieces on two lines), and each page's size."""
    import pymupdf

    with pymupdf.open(stream=pdf_bytes, filetype="pdf") as pdf:
        shown = {w[4] for page in pdf for w in page.get_text("words")}
        sizes = [(page.rect.width, page.rect.height) for page in pdf]
    return sorted(w for w in words if w not in shown), sizes


def test_no_word_breaks_inside_a_table_cell(project: Project) -> None:
    """The PDF's tables take their column widths from their content, so that no word of a
    cell is broken across two lines."""
    from onshore.reports.render import render_pdf

    report = build_report(project, "cn-annual", CN, year=2026)
    assert any(len(t.columns) >= 8 and t.rows for t in report.tables)
    broken, _sizes = _unbroken(render_pdf(report), _table_words(report))
    assert not broken


def _wide_report(columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> Report:
    from onshore.reports.model import Figure, Source, TableBlock

    source = Source(CN, "transfer_out", seq=1, hash="ab" * 32)
    report = Report(kind="cn-annual", site=CN, title="Wide", scope="test", generated="now")
    report.figures.append(Figure("k", "a figure", "value", (source,)))
    report.tables.append(TableBlock("wide", columns, tuple(rows), tuple((source,) for _ in rows)))
    return report


def test_a_table_too_wide_for_a_portrait_page_goes_on_a_landscape_one() -> None:
    """The outbound transfers as a site with several recipients and approvals has them: nine
    columns of long words (reportlab's own widths broke them mid-word)."""
    from onshore.reports.render import render_pdf

    columns = ("date", "what", "recipient", "categories and subjects", "purpose", "objects")
    columns += ("approval", "entry")
    rows = [
        (
            "2026-12-07",
            "model_update" if i % 2 else "remote_read",
            "Onshore Mobility Europe GmbH (DE)",
            "sensitive_area_geodata 6, trajectory 6, vehicle_id 6",
            "remote_query",
            str(i),
            "cn_security_assessment CAC-DEMO-2026-003 (CAC-SA-2026-0612 (demo))",
            f"cn-shanghai#{i}",
        )
        for i in range(12)
    ]
    report = _wide_report(columns, rows)
    broken, sizes = _unbroken(render_pdf(report), _table_words(report))
    assert not broken
    assert sizes[0][0] < sizes[0][1], "the report starts on a portrait page"
    assert any(width > height for width, height in sizes), "the wide table's page is landscape"


def test_a_table_too_wide_even_for_landscape_gets_a_smaller_font_not_broken_words() -> None:
    from onshore.reports.render import column_widths, render_pdf

    columns = tuple(f"column_{i}" for i in range(9))
    row = tuple(f"cn_security_assessment_{i}" for i in range(9))
    texts = [[*columns, "sources"], [*row, "[1]"]]
    landscape = 842 - 85 - 12  # A4's long side less the margins and the frame's padding
    assert column_widths(texts, landscape, 7.0) is None, "too wide at 7 points"
    assert column_widths(texts, landscape, 5.0) is not None
    report = _wide_report(columns, [row, row])
    broken, sizes = _unbroken(render_pdf(report), _table_words(report))
    assert not broken
    assert any(width > height for width, height in sizes)


US_CONCERN_PLUS_US = """\
extends: us
version: "2026.1-test"
effective: 2026-04-01
country_sets:
  countries_of_concern:
    description: The DOJ rule's countries, and the US itself, to see where the report reads them.
    countries: [CN, HK, MO, CU, IR, KP, RU, VE, US]
    source: a test
    confidence: checked
"""


def test_the_reports_read_the_law_from_the_rulebooks(project: Project, tmp_path: Path) -> None:
    """Which countries are of concern, and which are inside the EEA, come from the project's
    rulebooks (a user's override included), not from lists of the reports' own."""
    import dataclasses

    us = build_report(project, "us-bulk-data", CN, with_map=False)
    assert us.figure("transactions").value == 1 and us.figure("concern").value == 0
    path = tmp_path / "us-test.yaml"
    path.write_text(US_CONCERN_PLUS_US)
    rulebooks = project.settings.rulebooks.model_copy(update={"overrides": {"us": str(path)}})
    settings = project.settings.model_copy(update={"rulebooks": rulebooks})
    overridden = dataclasses.replace(project, settings=settings)
    us = build_report(overridden, "us-bulk-data", CN, with_map=False)
    assert us.figure("concern").value == 1, "the recipient in the US is now of concern"


def test_an_approval_s_validity_is_the_one_approvals_list_gives(project: Project) -> None:
    # CAC-1 has no end date of its own; the CN rulebook gives a security assessment 3 years.
    listed = subprocess.run(
        [sys.executable, "-m", "onshore", "approvals", "list", "--json"],
        cwd=project.root,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert listed.returncode == 0, listed.stderr
    (approval,) = orjson.loads(listed.stdout)["approvals"]
    assert approval["valid_to"] is None and approval["valid_until"] == "2028-12-31"
    for kind in ("cn-annual", "outbound-dossier", "eu-transfers"):
        report = build_report(
            project, kind, CN, year=2026, recipient="Onshore Mobility Inc.", with_map=False
        )
        (table,) = [t for t in report.tables if t.title == "Approvals on file"]
        (row,) = table.rows
        assert row[table.columns.index("valid")] == "2026-01-01 to 2028-12-31", kind
        assert row[table.columns.index("state")] == approval["status"].replace("_", " ")
