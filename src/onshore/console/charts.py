"""Line charts as inline SVG: drawn on the server, crisp at any zoom, no script in the page."""

from __future__ import annotations

import colorsys
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape

__all__ = ["SvgChart", "line_chart", "series_colour"]

_W, _H, _LEFT, _RIGHT, _TOP, _BOTTOM = 700, 280, 56, 230, 16, 40

Points = Sequence[tuple[float, float]]


@dataclass(frozen=True, slots=True)
class SvgChart:
    """A chart: its title and the SVG markup (escaped, safe to put in a page as is)."""

    title: str
    svg: str
    series: tuple[str, ...]


def series_colour(name: str) -> str:
    """The colour of ``name`` (a site's id) in every chart and table of the console: derived
    from the name alone, so a region keeps its colour from page to page and run to run, however
    many other regions a chart holds. Its hue comes from the name's hash; lightness and
    saturation are fixed, dark enough to read on white."""
    digest = hashlib.sha256(name.encode()).digest()
    hue = int.from_bytes(digest[:2], "big") / 65536
    r, g, b = colorsys.hls_to_rgb(hue, 0.4, 0.6)
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        return [low]
    step = (high - low) / (count - 1)
    return [low + i * step for i in range(count)]


def line_chart(
    title: str,
    series: Mapping[str, Points],
    *,
    dashed: Mapping[str, Points] | None = None,
    x_label: str = "",
    y_label: str = "",
) -> SvgChart:
    """One line per series in its own colour (:func:`series_colour`: a site's series is drawn in
    the site's colour on every page), ``dashed`` ones dashed in the colour of the series whose
    name they start with; axes with five ticks, a legend on the right. Each line carries a
    ``<title>`` naming its series, which a browser shows on hover."""
    dashed = dashed or {}
    every = [p for pts in (*series.values(), *dashed.values()) for p in pts]
    if not every:
        empty = f'<svg viewBox="0 0 {_W} 60" role="img"><text x="8" y="30">no data</text></svg>'
        return SvgChart(title, empty, ())
    xs, ys = [p[0] for p in every], [p[1] for p in every]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(0.0, min(ys)), max(ys) * 1.05 or 1.0
    if x1 == x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM

    def sx(x: float) -> float:
        return _LEFT + (x - x0) / (x1 - x0) * plot_w

    def sy(y: float) -> float:
        return _TOP + plot_h - (y - y0) / (y1 - y0) * plot_h

    parts = [
        f'<svg viewBox="0 0 {_W} {_H}" role="img" aria-label="{escape(title)}" '
        'xmlns="http://www.w3.org/2000/svg" font-size="11" font-family="sans-serif">',
        f'<rect x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}" fill="#fafafa" '
        'stroke="#ccc"/>',
    ]
    for y in _ticks(y0, y1):
        parts.append(
            f'<line x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" '
            'stroke="#e5e5e5"/>'
            f'<text x="{_LEFT - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:.3g}</text>'
        )
    for x in sorted(set(xs)) if len(set(xs)) <= 12 else _ticks(x0, x1):
        parts.append(
            f'<text x="{sx(x):.1f}" y="{_TOP + plot_h + 16}" text-anchor="middle">{x:g}</text>'
        )
    parts.append(
        f'<text x="{_LEFT + plot_w / 2}" y="{_H - 6}" text-anchor="middle">{escape(x_label)}</text>'
        f'<text x="12" y="{_TOP + plot_h / 2}" transform="rotate(-90 12 {_TOP + plot_h / 2})" '
        f'text-anchor="middle">{escape(y_label)}</text>'
    )
    colours = {name: series_colour(name) for name in series}
    legend_y = _TOP + 8
    drawn = []
    for name, pts in [*series.items(), *dashed.items()]:
        is_dashed = name in dashed
        colour = colours.get(name) or next(
            (c for s, c in colours.items() if name.startswith(s)), series_colour(name)
        )
        ordered = sorted(pts)
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in ordered)
        dash = ' stroke-dasharray="5 4"' if is_dashed else ""
        parts.append(
            f'<polyline class="series" data-series="{escape(name)}" points="{path}" fill="none" '
            f'data-colour="{colour}" stroke="{colour}" stroke-width="2"{dash}>'
            f"<title>{escape(name)}</title></polyline>"
        )
        for x, y in ordered:
            parts.append(
                f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{colour}">'
                f"<title>{escape(name)}: round {x:g}, {y:.4g}</title></circle>"
            )
        parts.append(
            f'<line x1="{_W - _RIGHT + 10}" x2="{_W - _RIGHT + 30}" y1="{legend_y}" '
            f'y2="{legend_y}" stroke="{colour}" stroke-width="2"{dash}/>'
            f'<text x="{_W - _RIGHT + 34}" y="{legend_y + 4}">{escape(name)}</text>'
        )
        legend_y += 16
        drawn.append(name)
    parts.append("</svg>")
    return SvgChart(title, "".join(parts), tuple(drawn))
