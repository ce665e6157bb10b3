"""A report as files: HTML (Jinja2, pictures inline as PNG data) and PDF (reportlab), with
every figure's sources as footnotes and an appendix table of the ledger entries cited."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import jinja2

from onshore.reports.model import Report, Source

__all__ = ["render_html", "render_pdf", "write_report"]

_TEMPLATE: Final = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ r.title }} ({{ r.site }})</title>
<style>
body { font-family: sans-serif; margin: 2em; max-width: 60em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }
th, td { border: 1px solid #999; padding: 0.2em 0.5em; text-align: left; vertical-align: top; }
th { background: #eee; } sup a { text-decoration: none; } .src { font-family: monospace; }
</style></head><body>
<h1 id="title">{{ r.title }}</h1>
<p>Site <b>{{ r.site }}</b>. Scope: {{ r.scope }}. Generated {{ r.generated }}.</p>
<h2>Figures</h2>
<table id="figures"><tr><th>figure</th><th>value</th><th>sources</th></tr>
{% for f in r.figures %}<tr data-key="{{ f.key }}"><td>{{ f.label }}</td><td>{{ f.value }}</td>
<td>{% for s in f.sources %}<sup><a href="#src-{{ num[key(s)] }}">[{{ num[key(s)] }}]</a></sup>
{% else %}-{% endfor %}</td></tr>
{% endfor %}</table>
{% for t in r.tables %}<h2>{{ t.title }}</h2>
{% if t.rows %}<table><tr>{% for c in t.columns %}<th>{{ c }}</th>{% endfor %}<th>sources</th></tr>
{% for row in t.rows %}<tr>{% for cell in row %}<td>{{ cell }}</td>{% endfor %}<td>
{% for s in t.sources[loop.index0] %}<sup><a href="#src-{{ num[key(s)] }}">[{{ num[key(s)] }}]
</a></sup>{% endfor %}</td></tr>{% endfor %}</table>
{% else %}<p>{{ t.empty }}</p>{% endif %}
{% endfor %}
{% for c in charts %}<h2>{{ c.title }}</h2>
<img alt="{{ c.title }}" src="data:image/png;base64,{{ c.data }}" style="max-width:100%">
{% if c.caption %}<p>{{ c.caption }}</p>{% endif %}{% endfor %}
{% if r.notes %}<h2>Notes</h2><ul>{% for n in r.notes %}<li>{{ n }}</li>{% endfor %}</ul>
{% endif %}
<h2>Appendix: sources</h2>
<p>Check a ledger entry with <code>onshore ledger show --site SITE --since SEQ --limit 1</code>
and its chain with <code>onshore ledger verify --site SITE</code>.</p>
<table id="sources"><tr><th>#</th><th>site</th><th>seq</th><th>kind</th><th>hash</th></tr>
{% for s in sources %}<tr id="src-{{ loop.index }}"><td>{{ loop.index }}</td><td>{{ s.site }}</td>
<td>{{ s.seq if s.seq is not none else "-" }}</td><td>{{ s.kind }}</td>
<td class="src">{{ s.hash or s.detail }}</td></tr>
{% endfor %}</table></body></html>
"""


def _key(source: Source) -> tuple[str, str, int | None, str]:
    return source.key


_FONT: Final = "Helvetica"
_PADDING: Final = 6.0
"""reportlab's default left and right padding of a table cell, in points."""
_SIZES: Final = (7.0, 6.0, 5.0)
"""Font sizes a table's cells are tried in, largest first, before a word must break."""


def column_widths(
    rows: Sequence[Sequence[str]], available: float, size: float
) -> list[float] | None:
    """Widths (points) for a table of ``rows`` (the header first) in ``available`` points, in
    ``_FONT`` at ``size``, laid out as a reader expects: each column at least as wide as its
    longest word, so that no word breaks inside a cell; a column wider than that only where
    there is room, shared out by how much more its text asks for. None when the longest
    words alone do not fit."""
    from reportlab.pdfbase.pdfmetrics import stringWidth

    def width(text: str) -> float:
        return stringWidth(text, _FONT, size) + 2 * _PADDING + 1

    columns = list(zip(*rows, strict=True))
    least = [max(width(w) for cell in col for w in cell.split() or [""]) for col in columns]
    most = [
        max(max(width(line) for line in cell.splitlines() or [""]) for cell in col)
        for col in columns
    ]
    if sum(most) <= available:
        return most
    if sum(least) > available:
        return None
    room = available - sum(least)
    wants = [m - n for m, n in zip(most, least, strict=True)]
    asked = sum(wants)
    return [n + room * w / asked for n, w in zip(least, wants, strict=True)]


def render_html(report: Report) -> str:
    """The report as one self-contained HTML page."""
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    sources = report.sources()
    numbers = {_key(s): i for i, s in enumerate(sources, 1)}
    charts = [
        {"title": c.title, "caption": c.caption, "data": base64.b64encode(c.png).decode()}
        for c in report.charts
    ]
    return env.from_string(_TEMPLATE).render(
        r=report, sources=sources, num=numbers, key=_key, charts=charts
    )


def render_pdf(report: Report) -> bytes:
    """The report as PDF bytes: the same figures, tables, pictures and appendix as the HTML.
    Each table's columns are as wide as its content asks (see :func:`column_widths`); a table
    too wide for a portrait page gets a landscape one, and a smaller font only if it must."""
    from xml.sax.saxutils import escape

    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4, landscape
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.lib.units import cm
    from reportlab.platypus import (
        BaseDocTemplate,
        Flowable,
        Frame,
        Image,
        NextPageTemplate,
        PageBreak,
        PageTemplate,
        Paragraph,
        Spacer,
        Table,
        TableStyle,
    )

    styles = getSampleStyleSheet()
    small = styles["BodyText"].clone("small", fontName=_FONT, fontSize=_SIZES[0], leading=8.5)
    sources = report.sources()
    numbers = {_key(s): i for i, s in enumerate(sources, 1)}
    style = TableStyle(
        [
            ("GRID", (0, 0), (-1, -1), 0.4, colors.grey),
            ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#eeeeee")),
            ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ]
    )
    margin, top = 1.5 * cm, 2.5 * cm
    pages = {"portrait": A4, "landscape": landscape(A4)}
    frames = {
        name: Frame(margin, top, size[0] - 2 * margin, size[1] - 2 * top, id=name)
        for name, size in pages.items()
    }
    # A frame's own padding (6 points a side) is not the table's.
    room = {name: size[0] - 2 * margin - 12 for name, size in pages.items()}
    story: list[Flowable] = []
    orientation = "portrait"

    def turn(to: str) -> None:
        nonlocal orientation
        if to != orientation:
            story.extend([NextPageTemplate(to), PageBreak()])
            orientation = to

    def refs(cited: tuple[Source, ...]) -> str:
        return " ".join(f"[{numbers[_key(s)]}]" for s in cited) or "-"

    def table(title: str, rows: list[list[str]]) -> None:
        """``title`` and the table of ``rows`` (the header first), as wide as they ask."""
        layouts = [("portrait", _SIZES[0])] + [("landscape", size) for size in _SIZES]
        for page, size in layouts:
            widths = column_widths(rows, room[page], size)
            if widths is not None:
                break
        else:
            # Words longer than a landscape page's width: they break, as they must.
            page, size = "landscape", _SIZES[-1]
        turn(page)
        cell = small.clone(f"cell{size:g}", fontSize=size, leading=size * 1.2)
        t = Table(
            [[Paragraph(escape(text), cell) for text in row] for row in rows],
            colWidths=widths,
            repeatRows=1,
            hAlign="LEFT",
        )
        t.setStyle(style)
        story.extend([Paragraph(escape(title), styles["Heading2"]), t])

    story += [
        Paragraph(escape(report.title), styles["Title"]),
        Paragraph(
            escape(f"Site {report.site}. Scope: {report.scope}. Generated {report.generated}."),
            styles["BodyText"],
        ),
    ]
    table(
        "Figures",
        [["figure", "value", "sources"]]
        + [[f.label, str(f.value), refs(f.sources)] for f in report.figures],
    )
    for t in report.tables:
        if not t.rows:
            turn("portrait")
            story.append(Paragraph(escape(t.title), styles["Heading2"]))
            story.append(Paragraph(escape(t.empty), styles["BodyText"]))
            continue
        table(
            t.title,
            [[*t.columns, "sources"]]
            + [
                [*(str(v) for v in row), refs(src)]
                for row, src in zip(t.rows, t.sources, strict=True)
            ],
        )
    turn("portrait")
    for chart in report.charts:
        story.append(Paragraph(escape(chart.title), styles["Heading2"]))
        image = Image(io.BytesIO(chart.png))
        scale = min(1.0, 17 * cm / image.drawWidth)
        image.drawWidth *= scale
        image.drawHeight *= scale
        story.append(image)
        if chart.caption:
            story.append(Paragraph(escape(chart.caption), small))
    for note in report.notes:
        story.append(Paragraph(escape(f"Note: {note}"), styles["BodyText"]))
    story.append(Spacer(1, 0.4 * cm))
    table(
        "Appendix: sources",
        [["#", "site", "seq", "kind", "hash"]]
        + [
            [str(i), s.site, "-" if s.seq is None else str(s.seq), s.kind, s.hash or s.detail]
            for i, s in enumerate(sources, 1)
        ],
    )
    buffer = io.BytesIO()
    document = BaseDocTemplate(buffer, pagesize=A4, title=report.title)
    document.addPageTemplates(
        [PageTemplate(name, [frames[name]], pagesize=pages[name]) for name in pages]
    )
    document.build(story)
    return buffer.getvalue()


def write_report(report: Report, out: Path) -> dict[str, Path]:
    """Write the report's HTML and PDF into ``out`` (created if need be); returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    stem = report.kind
    html, pdf = out / f"{stem}.html", out / f"{stem}.pdf"
    html.write_text(render_html(report), encoding="utf-8")
    pdf.write_bytes(render_pdf(report))
    return {"html": html, "pdf": pdf}
