"""A site's sensitive areas (military zones, government bodies...) as geofences.

Read from the GeoJSON the site keeps in its store (``reference/sensitive_areas.geojson``).
Point-in-zone tests are vectorised with shapely 2 (``contains_xy`` over whole arrays), never a
Python loop per point. Buffers are in metres: each zone is buffered in a local metric frame
around its own centroid and turned back into longitude and latitude.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import shapely
from numpy.typing import NDArray

from onshore.clips.geo import local_metres, local_to_degrees
from onshore.errors import ConfigError, StoreError
from onshore.store.objects import ZONES_PATH, ObjectStore

__all__ = ["Zone", "Zones", "load_zones", "parse_zones"]


@dataclass(frozen=True, slots=True)
class Zone:
    """One sensitive area."""

    id: str
    name: str
    kind: str
    polygon: Any
    """A shapely polygon in WGS-84 longitude and latitude."""

    def __reduce__(self) -> tuple[Any, ...]:
        # A zone travels to a stage's workers; shapely pickles a polygon without its prepared
        # index, without which every point test is many times slower.
        return (_prepared_zone, (self.id, self.name, self.kind, self.polygon))


def _prepared_zone(zone_id: str, name: str, kind: str, polygon: Any) -> Zone:
    shapely.prepare(polygon)
    return Zone(zone_id, name, kind, polygon)


@dataclass(frozen=True, slots=True)
class Zones:
    """A site's sensitive areas, empty when the site has none on file."""

    zones: tuple[Zone, ...]
    digest: str = ""
    """SHA-256 of the GeoJSON they were read from ("" for none): what labels found with them
    are keyed by."""

    def __bool__(self) -> bool:
        return bool(self.zones)

    def inside(self, lon: NDArray[np.float64], lat: NDArray[np.float64]) -> NDArray[np.bool_]:
        """For each zone, which of the points lie inside it: shape (zones, points)."""
        if not self.zones:
            return np.zeros((0, len(lon)), dtype=bool)
        return np.vstack([shapely.contains_xy(z.polygon, lon, lat) for z in self.zones])

    def buffered(self, metres: float) -> Zones:
        """The zones grown by ``metres`` on every side."""
        if metres <= 0:
            return self
        return Zones(
            tuple(
                Zone(z.id, z.name, z.kind, _buffer_metres(z.polygon, metres)) for z in self.zones
            ),
            f"{self.digest}+{metres}",
        )


def _buffer_metres(polygon: Any, metres: float) -> Any:
    centre = polygon.centroid
    lon0, lat0 = centre.x, centre.y

    def to_metres(coords: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.column_stack(local_metres(coords[:, 1], coords[:, 0], lat0, lon0))

    def to_degrees(coords: NDArray[np.float64]) -> NDArray[np.float64]:
        lat, lon = local_to_degrees(coords[:, 0], coords[:, 1], lat0, lon0)
        return np.column_stack((lon, lat))

    grown = shapely.transform(shapely.transform(polygon, to_metres).buffer(metres), to_degrees)
    shapely.prepare(grown)
    return grown


def parse_zones(data: bytes, where: str) -> Zones:
    """Zones from GeoJSON bytes; raises :class:`ConfigError` naming ``where`` and the problem."""
    try:
        collection = orjson.loads(data)
        features = collection["features"]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"{where}: not a GeoJSON FeatureCollection ({exc})") from exc
    zones = []
    for i, feature in enumerate(features):
        try:
            polygon = shapely.geometry.shape(feature["geometry"])
            props = feature.get("properties") or {}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"{where}: feature {i} has no valid geometry ({exc})") from exc
        if polygon.geom_type not in ("Polygon", "MultiPolygon") or not polygon.is_valid:
            raise ConfigError(f"{where}: feature {i} is not a valid polygon")
        shapely.prepare(polygon)
        zones.append(
            Zone(
                id=str(props.get("id", f"zone-{i + 1}")),
                name=str(props.get("name", "")),
                kind=str(props.get("kind", "sensitive")),
                polygon=polygon,
            )
        )
    return Zones(tuple(zones), hashlib.sha256(data).hexdigest())


def load_zones(store: ObjectStore) -> Zones:
    """The site's sensitive areas, or no zones when it has none on file."""
    try:
        data = store.read(ZONES_PATH)
    except StoreError:
        if store.exists(ZONES_PATH):
            raise
        return Zones(())
    return parse_zones(data, f"{store.url}/{ZONES_PATH}")
