"""Road networks for each region, geo-referenced so simulated positions are real coordinates.

- ``berlin-osm``: the OpenStreetMap network of south-east Berlin that SUMO ships (its DRT demo),
  already projected in UTM zone 33.
- ``shanghai-grid``: a dense generated grid (blocks of 100-115 m, two lanes each way plus a bike
  lane, 40-50 km/h, a traffic light at every junction), placed over central Shanghai.
- ``portland-arterials``: wide arterials (three lanes, 45 mph, blocks of 400 m, signals) south of
  which runs a freeway (three lanes each way, 65 mph) with on- and off-ramps at three
  interchanges, placed over Portland, Oregon.

``netgenerate`` and plain-XML ``netconvert`` build in a flat plane with no projection, so after a
build the ``<location>`` element is rewritten: a UTM projection of the city and a ``netOffset``
that puts the centre of the network on the city centre. Generated networks are cached under a
key hashed from everything that went into them, and written by rename so a killed build never
leaves a half-written network behind.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Final

import numpy as np
import orjson
from numpy.typing import NDArray
from pyproj import Transformer

from onshore.errors import SimulationError
from onshore.fleet.sumo_tools import ToolRun, run_tool, sumo_binary, sumo_tool, sumo_version

__all__ = ["NETWORKS", "Georeference", "Network", "default_cache_dir", "load_network"]

_GENERATOR_VERSION: Final = 1
"""Bump when a builder changes in a way its parameters do not show, to invalidate caches."""

_LOCATION_RE: Final = re.compile(rb"<location\s[^>]*/>")
_ATTR_RE: Final = re.compile(rb'(\w+)="([^"]*)"')


@dataclass(frozen=True, slots=True)
class Georeference:
    """How a network's x/y (metres) map to WGS-84, as its ``<location>`` element says."""

    proj: str
    """PROJ string of the projection (UTM for every network here)."""
    offset_x: float
    offset_y: float
    """``netOffset``: network coordinates are projected coordinates plus this offset."""

    def to_lonlat(
        self, x: NDArray[np.float64], y: NDArray[np.float64]
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Longitudes and latitudes (degrees) of network positions, vectorised."""
        lon, lat = _inverse(self.proj).transform(x - self.offset_x, y - self.offset_y)
        return np.asarray(lon, np.float64), np.asarray(lat, np.float64)


@lru_cache(maxsize=8)
def _inverse(proj: str) -> Transformer:
    return Transformer.from_crs(proj, "EPSG:4326", always_xy=True)


@lru_cache(maxsize=8)
def _forward(proj: str) -> Transformer:
    return Transformer.from_crs("EPSG:4326", proj, always_xy=True)


@dataclass(frozen=True, slots=True)
class Network:
    """A SUMO network ready to simulate on."""

    name: str
    path: Path
    georef: Georeference
    centre: tuple[float, float]
    """Centre of the network's extent, in network x/y."""
    description: str


def default_cache_dir() -> Path:
    """Where generated networks are kept between runs: ``~/.cache/onshore/networks``."""
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "onshore" / "networks"


def _location(path: Path) -> dict[str, str]:
    head = b""
    with path.open("rb") as stream:
        # The element comes right after the generator's comment, in the first kilobytes.
        while not (match := _LOCATION_RE.search(head)):
            chunk = stream.read(1 << 16)
            if not chunk or len(head) > 1 << 22:
                raise SimulationError(f"{path}: no <location> element in the network")
            head += chunk
    return {k.decode(): v.decode() for k, v in _ATTR_RE.findall(match.group(0))}


def read_georeference(path: Path) -> Georeference:
    """The projection and offset in the ``<location>`` element of the network at ``path``.

    Raises :class:`SimulationError` when the network has none or is not projected.
    """
    attrs = _location(path)
    proj = attrs.get("projParameter", "!")
    if not proj.startswith("+proj"):
        raise SimulationError(f"{path}: the network is not geo-referenced (projParameter={proj})")
    offset_x, offset_y = (float(v) for v in attrs["netOffset"].split(","))
    return Georeference(proj, offset_x, offset_y)


def _centre(path: Path) -> tuple[float, float]:
    x0, y0, x1, y1 = (float(v) for v in _location(path)["convBoundary"].split(","))
    return (x0 + x1) / 2, (y0 + y1) / 2


@dataclass(frozen=True, slots=True)
class _City:
    lon: float
    lat: float
    utm_zone: int

    @property
    def proj(self) -> str:
        hemisphere = "" if self.lat >= 0 else " +south"
        return f"+proj=utm +zone={self.utm_zone}{hemisphere} +datum=WGS84 +units=m +no_defs"


_SHANGHAI: Final = _City(lon=121.4737, lat=31.2304, utm_zone=51)
_PORTLAND: Final = _City(lon=-122.6784, lat=45.5152, utm_zone=10)


def _georeference(path: Path, city: _City) -> None:
    """Rewrite the ``<location>`` of a freshly built network to put it over ``city``."""
    data = path.read_bytes()
    match = _LOCATION_RE.search(data)
    if match is None:
        raise SimulationError(f"{path}: the built network has no <location> element")
    attrs = {k.decode(): v.decode() for k, v in _ATTR_RE.findall(match.group(0))}
    x0, y0, x1, y1 = (float(v) for v in attrs["convBoundary"].split(","))
    east, north = _forward(city.proj).transform(city.lon, city.lat)
    # Network x/y = projected + netOffset; the network's centre lands on the city centre.
    offset_x = (x0 + x1) / 2 - float(east)
    offset_y = (y0 + y1) / 2 - float(north)
    georef = Georeference(city.proj, offset_x, offset_y)
    lon, lat = georef.to_lonlat(np.array([x0, x1]), np.array([y0, y1]))
    location = (
        f'<location netOffset="{offset_x:.2f},{offset_y:.2f}" '
        f'convBoundary="{x0:.2f},{y0:.2f},{x1:.2f},{y1:.2f}" '
        f'origBoundary="{lon[0]:.6f},{lat[0]:.6f},{lon[1]:.6f},{lat[1]:.6f}" '
        f'projParameter="{city.proj}"/>'
    ).encode()
    path.write_bytes(data[: match.start()] + location + data[match.end() :])


@dataclass(frozen=True, slots=True)
class _RoadClass:
    """Lanes, limit (m/s), junction priority and banned vehicle classes of one kind of road."""

    lanes: int
    speed: float
    priority: int
    disallow: str

    def xml(self) -> str:
        return (
            f'numLanes="{self.lanes}" speed="{self.speed}" priority="{self.priority}" '
            f'disallow="{self.disallow}"'
        )


# --- Shanghai: a dense urban grid -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ShanghaiLayout:
    x_number: int = 16
    y_number: int = 14
    x_length: float = 115.0
    y_length: float = 100.0
    attach_length: float = 120.0
    """Stubs leaving the grid at its border: where through traffic enters and leaves."""
    arterial: _RoadClass = _RoadClass(2, 13.89, 3, "pedestrian")
    branch: _RoadClass = _RoadClass(2, 11.11, 2, "pedestrian")
    bikelane_width: float = 1.8
    seed: int = 31


_SHANGHAI_LAYOUT: Final = _ShanghaiLayout()


def _build_shanghai(workdir: Path, target: Path) -> None:
    layout = _SHANGHAI_LAYOUT
    (workdir / "cn.typ.xml").write_text(
        "<types>\n"
        f'    <type id="cn.arterial" {layout.arterial.xml()}/>\n'
        f'    <type id="cn.branch" {layout.branch.xml()}/>\n'
        "</types>\n"
    )
    grid = workdir / "grid.net.xml"
    run_tool(
        ToolRun(
            "netgenerate",
            (
                str(sumo_binary("netgenerate")),
                "--grid",
                f"--grid.x-number={layout.x_number}",
                f"--grid.y-number={layout.y_number}",
                f"--grid.x-length={layout.x_length}",
                f"--grid.y-length={layout.y_length}",
                f"--grid.attach-length={layout.attach_length}",
                "--type-files=cn.typ.xml",
                # Arterials and branch roads mixed block by block, as in an old city centre.
                "--random-type",
                f"--seed={layout.seed}",
                "--default-junction-type=traffic_light",
                "--tls.default-type=static",
                "--no-warnings",
                f"--output-file={grid.name}",
            ),
        ),
        cwd=workdir,
    )
    # Chinese city streets have a separated non-motorised lane; netgenerate cannot add one.
    run_tool(
        ToolRun(
            "netconvert",
            (
                str(sumo_binary("netconvert")),
                f"--sumo-net-file={grid.name}",
                "--bikelanes.guess",
                f"--default.bikelane-width={layout.bikelane_width}",
                "--no-warnings",
                f"--output-file={target.name}",
            ),
        ),
        cwd=workdir,
    )
    _georeference(workdir / target.name, _SHANGHAI)


# --- Portland: arterials and a freeway ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _PortlandLayout:
    columns: int = 6
    rows: int = 6
    block_m: float = 400.0
    arterial: _RoadClass = _RoadClass(3, 20.12, 3, "pedestrian")
    freeway: _RoadClass = _RoadClass(3, 29.06, 5, "pedestrian bicycle moped")
    ramp: _RoadClass = _RoadClass(1, 15.65, 2, "pedestrian bicycle")
    freeway_y: float = -300.0
    """The freeway's centre line, south of the arterial grid."""
    carriageway_gap: float = 20.0
    freeway_west: float = -1000.0
    freeway_east: float = 3000.0
    interchanges: tuple[int, ...] = (1, 3, 5)
    """Arterial columns with on- and off-ramps in both directions."""
    ramp_offset: float = 200.0
    """Distance along the freeway between an interchange's arterial and its ramp ends."""


_PORTLAND_LAYOUT: Final = _PortlandLayout()


def _portland_plain(layout: _PortlandLayout) -> tuple[str, str]:
    """Nodes and edges of the Portland network in SUMO's plain XML."""
    block = layout.block_m
    nodes: list[str] = []
    edges: list[str] = []

    def node(node_id: str, x: float, y: float, kind: str) -> None:
        nodes.append(f'    <node id="{node_id}" x="{x:.2f}" y="{y:.2f}" type="{kind}"/>')

    def edge(edge_id: str, start: str, end: str, road: _RoadClass) -> None:
        edges.append(f'    <edge id="{edge_id}" from="{start}" to="{end}" {road.xml()}/>')

    for i in range(layout.columns):
        for j in range(layout.rows):
            node(f"a{i}_{j}", i * block, j * block, "traffic_light")
    for i in range(layout.columns):
        for j in range(layout.rows):
            if i + 1 < layout.columns:
                edge(f"a{i}_{j}e", f"a{i}_{j}", f"a{i + 1}_{j}", layout.arterial)
                edge(f"a{i + 1}_{j}w", f"a{i + 1}_{j}", f"a{i}_{j}", layout.arterial)
            if j + 1 < layout.rows:
                edge(f"a{i}_{j}n", f"a{i}_{j}", f"a{i}_{j + 1}", layout.arterial)
                edge(f"a{i}_{j + 1}s", f"a{i}_{j + 1}", f"a{i}_{j}", layout.arterial)

    # Two one-way carriageways with their own nodes, so no junction joins the two directions.
    y_east = layout.freeway_y - layout.carriageway_gap / 2
    y_west = layout.freeway_y + layout.carriageway_gap / 2
    ramp = layout.ramp_offset
    exits = [column * block for column in layout.interchanges]
    # Eastbound traffic leaves before the interchange and joins after it; westbound mirrors it.
    xs = sorted(
        [
            layout.freeway_west,
            layout.freeway_east,
            *(x - ramp for x in exits),
            *(x + ramp for x in exits),
        ]
    )
    for k, x in enumerate(xs):
        node(f"fe{k}", x, y_east, "priority")
        node(f"fw{k}", x, y_west, "priority")
    for k in range(len(xs) - 1):
        edge(f"fe{k}", f"fe{k}", f"fe{k + 1}", layout.freeway)
        edge(f"fw{k + 1}", f"fw{k + 1}", f"fw{k}", layout.freeway)
    for column, x in zip(layout.interchanges, exits, strict=True):
        junction = f"a{column}_0"
        before, after = xs.index(x - ramp), xs.index(x + ramp)
        edge(f"off_e{column}", f"fe{before}", junction, layout.ramp)
        edge(f"on_e{column}", junction, f"fe{after}", layout.ramp)
        edge(f"off_w{column}", f"fw{after}", junction, layout.ramp)
        edge(f"on_w{column}", junction, f"fw{before}", layout.ramp)
    node_xml = "<nodes>\n" + "\n".join(nodes) + "\n</nodes>\n"
    edge_xml = "<edges>\n" + "\n".join(edges) + "\n</edges>\n"
    return node_xml, edge_xml


def _build_portland(workdir: Path, target: Path) -> None:
    node_xml, edge_xml = _portland_plain(_PORTLAND_LAYOUT)
    (workdir / "portland.nod.xml").write_text(node_xml)
    (workdir / "portland.edg.xml").write_text(edge_xml)
    run_tool(
        ToolRun(
            "netconvert",
            (
                str(sumo_binary("netconvert")),
                "--node-files=portland.nod.xml",
                "--edge-files=portland.edg.xml",
                # Acceleration lanes where the on-ramps join the freeway.
                "--ramps.guess",
                "--tls.default-type=actuated",
                "--no-warnings",
                f"--output-file={target.name}",
            ),
        ),
        cwd=workdir,
    )
    _georeference(workdir / target.name, _PORTLAND)


@dataclass(frozen=True, slots=True)
class _Generated:
    description: str
    params: tuple[object, _City]
    """Everything the build depends on besides SUMO itself: hashed into the cache key."""
    build: Callable[[Path, Path], None]


_GENERATED: Final[dict[str, _Generated]] = {
    "shanghai-grid": _Generated(
        "generated dense urban grid over central Shanghai (netgenerate + netconvert)",
        (_SHANGHAI_LAYOUT, _SHANGHAI),
        _build_shanghai,
    ),
    "portland-arterials": _Generated(
        "generated arterial grid and freeway over Portland, Oregon (netconvert, plain XML)",
        (_PORTLAND_LAYOUT, _PORTLAND),
        _build_portland,
    ),
}
_BERLIN: Final = "tools/game/DRT/osm.net.xml"

NETWORKS: Final = ("berlin-osm", *_GENERATED)
"""Names of the networks :func:`load_network` provides."""


def load_network(name: str, cache_dir: Path | None = None) -> Network:
    """The network called ``name``, built into ``cache_dir`` first if it is generated.

    Raises :class:`SimulationError` when SUMO's files are missing or a build fails.
    """
    if name == "berlin-osm":
        path = sumo_tool(_BERLIN)
        if not path.is_file():
            raise SimulationError(
                f"SUMO's Berlin network is missing ({path})",
                hint="reinstall eclipse-sumo; the network ships in its tools/game/DRT folder",
            )
        return Network(
            name,
            path,
            read_georeference(path),
            _centre(path),
            "OpenStreetMap network of south-east Berlin shipped with SUMO (tools/game/DRT)",
        )
    spec = _GENERATED.get(name)
    if spec is None:
        raise SimulationError(f"unknown network {name!r}: one of {', '.join(NETWORKS)}")
    key = hashlib.sha256(
        orjson.dumps(
            {
                "name": name,
                "params": spec.params,
                "generator": _GENERATOR_VERSION,
                "sumo": sumo_version(),
            },
            option=orjson.OPT_SORT_KEYS,
        )
    ).hexdigest()[:16]
    directory = cache_dir or default_cache_dir()
    target = directory / f"{name}-{key}.net.xml"
    if not target.is_file():
        directory.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=directory))
        try:
            spec.build(workdir, target)
            # Atomic within the cache directory: readers see the whole network or none.
            (workdir / target.name).replace(target)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    return Network(name, target, read_georeference(target), _centre(target), spec.description)
