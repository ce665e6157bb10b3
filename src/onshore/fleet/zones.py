"""Sensitive areas for a simulated region: stand-ins for the zones Chinese law protects.

China's automotive data rules make positions inside military administrative zones, at
defence-industry units and at party and government organs "important data". Real zone lists are
not public, so the simulator places circular stand-ins where the fleet actually drove: centred on
busy cells of the positions it uploaded (below the very busiest hubs), far enough apart not
to overlap. That makes the
classify and de-identify stages meet real hits instead of an empty geofence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

import numpy as np
import orjson
import shapely
from numpy.typing import NDArray

from onshore.fleet.networks import Georeference
from onshore.fleet.profiles import ZoneSpec

__all__ = ["place_zones", "zones_geojson"]

_CELL_M: Final = 100.0
"""Side of the cells positions are counted in."""
_CIRCLE_SEGMENTS: Final = 16
"""Segments per quarter circle of a zone's outline."""


def place_zones(
    x: NDArray[np.float64],
    y: NDArray[np.float64],
    specs: Sequence[ZoneSpec],
    fallback: tuple[float, float],
) -> list[tuple[ZoneSpec, float, float]]:
    """Centres (network x, y) for each zone in ``specs``, on the busiest cells of the positions.

    Zones keep a clearance of both radii from each other; when the positions are too
    concentrated for that, the clearance is relaxed rather than dropping a zone. With no
    positions at all every zone is placed around ``fallback`` (the network's centre).
    """
    if len(x) == 0:
        cx, cy = fallback
        spacing = 2 * max(spec.radius_m for spec in specs)
        # Spread round the centre on a golden-angle spiral, so no two zones overlap.
        return [
            (spec, cx + spacing * math.cos(k * 2.4), cy + spacing * math.sin(k * 2.4))
            for k, spec in enumerate(specs)
        ]
    cells = np.stack([np.floor(x / _CELL_M), np.floor(y / _CELL_M)], axis=1).astype(np.int64)
    unique, inverse, counts = np.unique(cells, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    # Centre on where the points are inside the cell, so a zone certainly covers them.
    mean_x = np.bincount(inverse, weights=x) / counts
    mean_y = np.bincount(inverse, weights=y) / counts
    ranking = np.lexsort((unique[:, 1], unique[:, 0], -counts))
    # Not on the very busiest cells (the hubs every route crosses, which would swallow most of
    # a small network's traffic), but on busy ones below them: traffic passes, and some of it.
    ranking = ranking[len(ranking) // 10 :] if len(ranking) >= 20 else ranking
    for clearance in (1.0, 0.5, 0.25, 0.0):
        placed: list[tuple[ZoneSpec, float, float]] = []
        for cell in ranking.tolist():
            if len(placed) == len(specs):
                break
            spec = specs[len(placed)]
            px, py = float(mean_x[cell]), float(mean_y[cell])
            if all(
                np.hypot(px - qx, py - qy) >= clearance * (spec.radius_m + other.radius_m)
                for other, qx, qy in placed
            ):
                placed.append((spec, px, py))
        if len(placed) == len(specs):
            return placed
    # Fewer cells than zones: the remaining zones share the busiest cell.
    best = int(ranking[0])
    return placed + [
        (spec, float(mean_x[best]), float(mean_y[best])) for spec in specs[len(placed) :]
    ]


def zones_geojson(placed: Sequence[tuple[ZoneSpec, float, float]], georef: Georeference) -> bytes:
    """A GeoJSON FeatureCollection of the zones as WGS-84 polygons (RFC 7946: counter-clockwise
    outer rings, coordinates rounded to 7 decimals, about a centimetre), as stable bytes."""
    features = []
    for number, (spec, cx, cy) in enumerate(placed, start=1):
        circle = shapely.Point(cx, cy).buffer(spec.radius_m, quad_segs=_CIRCLE_SEGMENTS)
        ring = np.asarray(shapely.get_coordinates(shapely.orient_polygons(circle)))
        lon, lat = georef.to_lonlat(ring[:, 0], ring[:, 1])
        coordinates = np.round(np.stack([lon, lat], axis=1), 7)
        coordinates[-1] = coordinates[0]
        features.append(
            {
                "type": "Feature",
                "properties": {
                    "id": f"zone-{number}",
                    "name": spec.name,
                    "kind": spec.kind,
                    "buffer_m": spec.radius_m,
                },
                "geometry": {"type": "Polygon", "coordinates": [coordinates.tolist()]},
            }
        )
    collection = {"type": "FeatureCollection", "features": features}
    return orjson.dumps(collection, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
