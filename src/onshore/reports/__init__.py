"""Reports regulators ask for, generated from a site's catalogue, approvals and ledger.

    report = build_report(project, "cn-annual", "cn-shanghai", year=2026)
    paths = write_report(report, project.root / "reports" / "cn-shanghai")

Every figure carries its sources (:class:`Source`: the ledger entries it was computed from, or
the catalogue query for what the site holds); the HTML and PDF cite them as footnotes and list
them in an appendix.
"""

from typing import TYPE_CHECKING

from onshore._lazy import lazy

if TYPE_CHECKING:
    from onshore.reports.build import CONCERN_SET, REPORT_KINDS, Flow, build_report, flows
    from onshore.reports.model import Chart, Figure, Report, Source, TableBlock
    from onshore.reports.render import render_html, render_pdf, write_report

# Imported when first used (see onshore._lazy): importing one module of the package does
# not bring all the others.
__getattr__, __dir__ = lazy(
    __name__,
    {
        "CONCERN_SET": "build",
        "REPORT_KINDS": "build",
        "Flow": "build",
        "build_report": "build",
        "flows": "build",
        "Chart": "model",
        "Figure": "model",
        "Report": "model",
        "Source": "model",
        "TableBlock": "model",
        "render_html": "render",
        "render_pdf": "render",
        "write_report": "render",
    },
)

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
