"""Reports regulators ask for, generated from a site's catalogue, approvals and ledger.

    report = build_report(project, "cn-annual", "cn-shanghai", year=2026)
    paths = write_report(report, project.root / "reports" / "cn-shanghai")

Every figure carries its sources (:class:`Source`: the ledger entries it was computed from, or
the catalogue query for what the site holds); the HTML and PDF cite them as footnotes and list
them in an appendix.
"""

from onshore.reports.build import CONCERN_SET, REPORT_KINDS, Flow, build_report, flows
from onshore.reports.model import Chart, Figure, Report, Source, TableBlock
from onshore.reports.render import render_html, render_pdf, write_report

__all__ = [
    "CONCERN_SET",
    "REPORT_KINDS",
    "Chart",
    "Figure",
    "Flow",
    "Report",
    "Source",
    "TableBlock",
    "build_report",
    "flows",
    "render_html",
    "render_pdf",
    "write_report",
]
