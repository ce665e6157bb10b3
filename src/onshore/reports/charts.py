"""The pictures in a report, drawn with matplotlib into PNG bytes: bar charts of volumes, the
training record, and the map of a site's traces before and after de-identification."""

from __future__ import annotations

import io
from typing import Any, Final

import numpy as np
import pyarrow.parquet as pq
from numpy.typing import NDArray

from onshore.classify.zones import load_zones
from onshore.clips.geo import haversine
from onshore.deidentify.profiles import Profile
from onshore.reports.model import Chart
from onshore.store.site import SiteStore

__all__ = ["bar_chart", "trace_map", "training_chart"]

MAP_CLIPS: Final = 40
"""At most this many clips on the map, so a large site's report stays quick to draw."""


def _figure(width: float = 6.5, height: float = 3.0) -> Any:
    # The Agg canvas directly: no pyplot state, no GUI backend, safe in threads and tests.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110)


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def bar_chart(title: str, values: dict[str, int]) -> Chart:
    """A horizontal bar per key; an empty chart says there was nothing."""
    fig = _figure(6.5, max(1.8, 0.45 * len(values) + 1.0))
    ax = fig.add_subplot()
    if values:
        names = sorted(values)
        ax.barh(names, [values[n] for n in names], color="#3b6ea8")
        for i, n in enumerate(names):
            ax.text(values[n], i, f" {values[n]}", va="center", fontsize=8)
        ax.set_xlabel("subjects")
    else:
        ax.text(0.5, 0.5, "nothing was sent", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    ax.set_title(title, fontsize=10)
    return Chart(title, _png(fig))


def training_chart(title: str, updates: list[tuple[int, bool]]) -> Chart:
    """Model updates per federated round: sent and refused, stacked."""
    rounds = sorted({r for r, _ in updates})
    sent = [sum(1 for r, ok in updates if r == x and ok) for x in rounds]
    refused = [sum(1 for r, ok in updates if r == x and not ok) for x in rounds]
    fig = _figure()
    ax = fig.add_subplot()
    ax.bar(rounds, sent, color="#3b6ea8", label="sent")
    ax.bar(rounds, refused, bottom=sent, color="#c0392b", label="refused")
    ax.set_xlabel("round")
    ax.set_ylabel("updates")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return Chart(title, _png(fig), "Each bar counts the site's federated_update entries.")


def _trimmed(lat: NDArray[np.float64], lon: NDArray[np.float64], metres: float) -> NDArray[Any]:
    """Rows within ``metres`` along the road of the clip's start or end (the trip ends that the
    ``trim_ends`` transform drops; one clip is treated as one trip)."""
    step = np.zeros(len(lat))
    step[1:] = haversine(lat[:-1], lon[:-1], lat[1:], lon[1:])
    travelled = np.cumsum(step)
    return np.asarray((travelled < metres) | (travelled[-1] - travelled < metres))


def trace_map(store: SiteStore, profile: Profile | None) -> bytes:
    """PNG: every recorded position of up to :data:`MAP_CLIPS` clips (grey, before), the ones
    ``profile`` keeps (blue, after) and the site's sensitive areas (red)."""
    zones = load_zones(store.objects)
    zone_step = profile.step("drop_zones") if profile is not None else None
    trim_step = profile.step("trim_ends") if profile is not None else None
    buffered = zones.buffered(zone_step.params.get("buffer_m", 0.0)) if zone_step else zones
    fig = _figure(6.5, 5.0)
    ax = fig.add_subplot()
    kept_total = dropped_total = 0
    for record in store.catalogue.clips()[:MAP_CLIPS]:
        # Stored clips are Parquet; only the two columns the map needs are decoded.
        table = pq.read_table(io.BytesIO(store.objects.read(record.path)), columns=["lat", "lon"])
        lat = table.column("lat").to_numpy()
        lon = table.column("lon").to_numpy()
        keep = np.ones(len(lat), dtype=bool)
        if profile is None:
            keep[:] = False
        if zone_step is not None and buffered:
            keep &= ~buffered.inside(lon, lat).any(axis=0)
        if trim_step is not None and len(lat):
            keep &= ~_trimmed(lat, lon, float(trim_step.params.get("metres", 500.0)))
        every = max(1, len(lat) // 400)
        ax.plot(lon[::every], lat[::every], ".", color="#b0b0b0", markersize=1.5)
        ax.plot(lon[keep][::every], lat[keep][::every], ".", color="#3b6ea8", markersize=1.5)
        kept_total += int(keep.sum())
        dropped_total += int((~keep).sum())
    for zone in zones.zones:
        for part in getattr(zone.polygon, "geoms", [zone.polygon]):
            x, y = part.exterior.xy
            ax.fill(x, y, color="#c0392b", alpha=0.35)
            ax.text(float(np.mean(x)), float(np.mean(y)), zone.name or zone.id, fontsize=7)
    for zone in buffered.zones if zone_step is not None else ():
        for part in getattr(zone.polygon, "geoms", [zone.polygon]):
            x, y = part.exterior.xy
            ax.plot(x, y, color="#c0392b", linewidth=0.8, linestyle="--")
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    name = profile.name if profile is not None else "none"
    ax.set_title(
        f"{store.site}: kept {kept_total}, dropped {dropped_total} positions (profile {name})",
        fontsize=9,
    )
    return _png(fig)
