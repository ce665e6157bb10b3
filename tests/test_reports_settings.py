"""What a site declares in onshore.toml (storage period, responsible person) reaches the reports
that must state it, cited to the settings key; a site that declares nothing is told what to set."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from onshore.reports import build_report, write_report
from onshore.reports.model import Report
from onshore.settings import CONFIG_NAME, Project, load_project
from onshore.sites import EXAMPLES, init_project

CN, EU, US = "cn-shanghai", "eu-frankfurt", "us-oregon"


def _report(project: Project, kind: str, site: str) -> Report:
    return build_report(
        project, kind, site, year=2026, recipient="Onshore Mobility Inc.", with_map=False
    )


@pytest.fixture(scope="module")
def declared(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """The three-regions example, which declares both for every site."""
    return init_project(tmp_path_factory.mktemp("declared") / "proj")


@pytest.fixture(scope="module")
def undeclared(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """The same project with every retention and responsible_person removed."""
    project = init_project(tmp_path_factory.mktemp("undeclared") / "proj")
    text = re.sub(r"\[sites\.[a-z-]+\.responsible_person\][^\[]*", "", EXAMPLES["three-regions"])
    text = re.sub(r"^retention = .*\n", "", text, flags=re.MULTILINE)
    assert "retention" not in text and "responsible_person" not in text
    project.config_path.write_text(text, encoding="utf-8")
    return load_project(project.root)


def test_the_cn_annual_report_states_the_declared_period_and_person(
    declared: Project, tmp_path: Path
) -> None:
    report = _report(declared, "cn-annual", CN)
    person = report.figure("responsible_person")
    assert person.value == "Li Wei, Data security officer <li.wei@example.com>"
    assert report.figure("storage.period.raw").value == "365 days from storage"
    assert report.figure("storage.period.deidentified").value == "1095 days from storage"
    (source,) = person.sources
    assert (source.kind, source.seq) == ("settings", None)
    assert source.detail == f"{CONFIG_NAME} [sites.{CN}] responsible_person"
    assert report.figure("storage.period.raw").sources[0].detail.endswith("retention.raw_days")
    assert not any("Not configured" in n for n in report.notes)
    html = write_report(report, tmp_path)["html"].read_text()
    assert "li.wei@example.com" in html and "1095 days from storage" in html
    assert f"{CONFIG_NAME} [sites.{CN}] retention.raw_days" in html  # in the sources appendix


def test_an_undeclared_site_is_told_which_key_to_set(undeclared: Project, tmp_path: Path) -> None:
    report = _report(undeclared, "cn-annual", CN)
    person = str(report.figure("responsible_person").value)
    raw = str(report.figure("storage.period.raw").value)
    assert person.startswith("not configured: set responsible_person = {")
    assert (
        raw == f"not configured: set retention = {{ raw_days = N }} in [sites.{CN}] of onshore.toml"
    )
    assert any(
        n.startswith("Not configured for this site: responsible_person, retention.")
        and str(undeclared.config_path) in n
        for n in report.notes
    )
    html = write_report(report, tmp_path)["html"].read_text()
    assert "not configured: set retention = { deidentified_days = N }" in html


@pytest.mark.parametrize(
    ("kind", "site", "person", "periods"),
    [
        ("outbound-dossier", CN, "Li Wei", False),
        ("eu-transfers", EU, "Anna Weber, Data protection officer <anna.weber@example.com>", True),
        ("us-bulk-data", US, "Jordan Reed", False),
    ],
)
def test_the_other_records_name_the_person_and_where_due_the_period(
    declared: Project, undeclared: Project, kind: str, site: str, person: str, periods: bool
) -> None:
    report = _report(declared, kind, site)
    assert person in str(report.figure("responsible_person").value)
    keys = {f.key for f in report.figures}
    assert ("storage.period.raw" in keys) is periods
    if periods:
        assert report.figure("storage.period.raw").value == "180 days from storage"
        assert "Art. 30(1)(f)" in report.figure("storage.period.raw").label
    bare = _report(undeclared, kind, site)
    assert str(bare.figure("responsible_person").value).startswith("not configured")
    assert any("responsible_person" in n for n in bare.notes)
