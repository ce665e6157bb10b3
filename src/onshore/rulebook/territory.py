"""Where a rulebook's law holds on the map: its territory's boundary, and which positions lie
outside it.

A rulebook may name a ``boundary``: a GeoJSON file, relative to the rulebook file, holding a
Polygon or MultiPolygon in WGS-84 longitude and latitude (bare, or as a Feature or a
FeatureCollection of them) that covers the territory with a margin for border crossings, coasts
and bridges. The built-in rulebooks ship theirs in ``builtin/territory/``, derived from Natural
Earth by ``scripts/make-territories``: every point within 10 km of the territory's land, or
within 25 km of it over water. Ingest refuses a clip whose positions lie outside the boundary of
its site's jurisdiction (:class:`onshore.ingest.Residency`), so that a clip's
``recorded_in`` is checked against where it was driven rather than believed.

:meth:`Boundary.load` reads and prepares a file once (again only when the file changes); tests
of positions are vectorised (``shapely.contains_xy`` over whole arrays, after a single test of
the positions' bounding box, which settles most clips in microseconds).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Final

import numpy as np
import orjson
import shapely
from numpy.typing import ArrayLike, NDArray
from shapely.errors import ShapelyError
from shapely.geometry import shape

from onshore.errors import RulebookError

__all__ = ["Boundary", "Outside"]

_AREAS: Final = ("Polygon", "MultiPolygon")
_HINT: Final = (
    "a boundary is GeoJSON: a Polygon or MultiPolygon (or a Feature or FeatureCollection of "
    "them) in WGS-84 longitude, latitude, at a path relative to the rulebook file; "
    "'builtin:territory/eu.geojson' names one onshore ships (cn, eu, us)"
)


@dataclass(frozen=True, slots=True)
class Outside:
    """The positions of a clip that lie outside a boundary."""

    count: int
    """How many lie outside."""
    of: int
    """How many positions were tested (those with a valid latitude and longitude)."""
    first: int
    """Row of the first that lies outside."""
    lat: float
    lon: float
    """Where the first lies (degrees)."""

    @property
    def share(self) -> float:
        """The share of the tested positions that lie outside."""
        return self.count / self.of


class Boundary:
    """A territory's boundary, prepared for fast point tests. Get one with :meth:`load`."""

    __slots__ = ("area", "file")

    def __init__(self, file: str, area: Any) -> None:
        self.file = file
        """The GeoJSON file it was read from."""
        self.area = area
        """The (prepared) shapely Polygon or MultiPolygon, longitude/latitude."""
        shapely.prepare(area)

    @classmethod
    def load(cls, path: Path) -> Boundary:
        """The boundary in the GeoJSON file at ``path``, read once per version of the file.

        Raises :class:`RulebookError` naming the file and what is wrong: missing, unreadable,
        not JSON, not a Polygon or MultiPolygon, coordinates that are not longitude and
        latitude, or an area that is empty or not a valid polygon (rings that cross).
        """
        resolved = path.resolve()
        try:
            stat = resolved.stat()
        except FileNotFoundError:
            raise RulebookError(f"{path}: no such boundary file", hint=_HINT) from None
        except OSError as exc:
            raise RulebookError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
        return _load(str(resolved), stat.st_mtime_ns, stat.st_size)

    def contains(self, lat: ArrayLike, lon: ArrayLike) -> NDArray[np.bool_]:
        """Which of the positions lie inside (on the boundary line itself counts as outside)."""
        lat_ = np.asarray(lat, np.float64)
        lon_ = np.asarray(lon, np.float64)
        if lat_.size and np.isfinite(lat_).all() and np.isfinite(lon_).all():
            box = shapely.box(lon_.min(), lat_.min(), lon_.max(), lat_.max())
            if shapely.contains(self.area, box):
                # The usual clip, a few km of road well inside: one test instead of one a row.
                return np.ones(lat_.shape, dtype=bool)
        return np.asarray(shapely.contains_xy(self.area, lon_, lat_), dtype=bool)

    def outside(self, lat: ArrayLike, lon: ArrayLike) -> Outside | None:
        """The positions that lie outside, or ``None`` if none does. Positions that are not
        coordinates at all (NaN, latitude beyond 90 or longitude beyond 180) are not counted:
        they are not anywhere, and clip validation refuses them."""
        lat_ = np.asarray(lat, np.float64)
        lon_ = np.asarray(lon, np.float64)
        valid = np.isfinite(lat_) & np.isfinite(lon_) & (np.abs(lat_) <= 90) & (np.abs(lon_) <= 180)
        if valid.all():
            out = ~self.contains(lat_, lon_)
        else:
            out = np.zeros(lat_.shape, dtype=bool)
            out[valid] = ~self.contains(lat_[valid], lon_[valid])
        if not out.any():
            return None
        first = int(np.argmax(out))
        return Outside(
            int(out.sum()), int(valid.sum()), first, float(lat_[first]), float(lon_[first])
        )

    def __repr__(self) -> str:
        return f"Boundary({self.file!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # A boundary travels to ingest's workers (on Ray, maybe on machines without the file);
        # shapely pickles the area without its prepared index, which is rebuilt on arrival.
        return (Boundary, (self.file, self.area))


@lru_cache(maxsize=16)
def _load(path: str, _mtime_ns: int, _size: int) -> Boundary:
    """The boundary at ``path`` (resolved); the file's time and size key the cache, so an
    edited file is read again."""
    try:
        data = orjson.loads(Path(path).read_bytes())
    except OSError as exc:
        raise RulebookError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    except orjson.JSONDecodeError as exc:
        raise RulebookError(f"{path}: not JSON ({exc})", hint=_HINT) from exc
    geometries = _geometries(path, data)
    try:
        areas = [shape(g) for g in geometries]
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, ShapelyError) as exc:
        raise RulebookError(f"{path}: malformed coordinates ({exc})", hint=_HINT) from exc
    area = shapely.union_all(areas) if len(areas) > 1 else areas[0]
    if area.is_empty:
        raise RulebookError(f"{path}: the boundary encloses no area", hint=_HINT)
    xmin, ymin, xmax, ymax = area.bounds
    if xmin < -180 or xmax > 180 or ymin < -90 or ymax > 90:
        raise RulebookError(
            f"{path}: coordinates beyond longitude -180..180 or latitude -90..90 "
            f"(bounds {xmin:g}, {ymin:g}, {xmax:g}, {ymax:g})",
            hint="write WGS-84 degrees, longitude first, not a projected system",
        )
    if not area.is_valid:
        raise RulebookError(
            f"{path}: not a valid polygon ({shapely.is_valid_reason(area)})",
            hint="repair it (e.g. shapely.make_valid) so that no ring crosses itself or another",
        )
    if area.area == 0:
        raise RulebookError(f"{path}: the boundary encloses no area", hint=_HINT)
    return Boundary(path, area)


def _geometries(path: str, data: Any) -> list[dict[str, Any]]:
    """The Polygon and MultiPolygon geometries a GeoJSON document holds."""
    kind = data.get("type") if isinstance(data, dict) else None
    if kind == "FeatureCollection":
        features = data.get("features")
        if not isinstance(features, list) or not features:
            raise RulebookError(f"{path}: a FeatureCollection without features", hint=_HINT)
    elif kind == "Feature":
        features = [data]
    elif kind in _AREAS:
        return [data]
    else:
        raise RulebookError(
            f"{path}: GeoJSON of type {kind!r}, not a Polygon or MultiPolygon", hint=_HINT
        )
    out: list[dict[str, Any]] = []
    for i, feature in enumerate(features):
        geometry = feature.get("geometry") if isinstance(feature, dict) else None
        found = geometry.get("type") if isinstance(geometry, dict) else None
        if not isinstance(geometry, dict) or found not in _AREAS:
            raise RulebookError(
                f"{path}: feature {i} is a {found or 'feature without geometry'}, "
                "not a Polygon or MultiPolygon",
                hint=_HINT,
            )
        out.append(geometry)
    return out
