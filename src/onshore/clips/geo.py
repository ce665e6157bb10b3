"""Distances and local metric coordinates on WGS-84 positions, vectorised over arrays.

Clips span a few kilometres at most, so a local tangent plane (equirectangular around a point)
is accurate to centimetres there; distances along a track use the haversine formula.
"""

from __future__ import annotations

from typing import Final

import numpy as np
from numpy.typing import NDArray

__all__ = ["EARTH_RADIUS_M", "haversine", "local_metres", "local_to_degrees"]

EARTH_RADIUS_M: Final = 6_371_008.8
"""Mean Earth radius (IUGG)."""
_M_PER_DEG_LAT: Final = 110_574.0
_M_PER_DEG_LON_EQUATOR: Final = 111_320.0

Floats = NDArray[np.float64]


def haversine(lat1: Floats, lon1: Floats, lat2: Floats, lon2: Floats) -> Floats:
    """Great-circle distance in metres between paired positions (degrees)."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp, dl = p2 - p1, np.radians(lon2 - lon1)
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return np.asarray(2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.minimum(a, 1.0))))


def local_metres(
    lat: Floats, lon: Floats, lat0: Floats | float, lon0: Floats | float
) -> tuple[Floats, Floats]:
    """(east, north) in metres of each position from its origin ``(lat0, lon0)``."""
    east = (lon - lon0) * _M_PER_DEG_LON_EQUATOR * np.cos(np.radians(lat0))
    north = (lat - lat0) * _M_PER_DEG_LAT
    return np.asarray(east), np.asarray(north)


def local_to_degrees(
    east: Floats, north: Floats, lat0: float, lon0: float
) -> tuple[Floats, Floats]:
    """The inverse of :func:`local_metres` for one origin: (lat, lon) in degrees."""
    lon = east / (_M_PER_DEG_LON_EQUATOR * np.cos(np.radians(lat0))) + lon0
    lat = north / _M_PER_DEG_LAT + lat0
    return np.asarray(lat), np.asarray(lon)
