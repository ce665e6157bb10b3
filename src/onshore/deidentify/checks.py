"""The checks that prove a de-identified output is what its state says, re-run on the output.

Each returns a record (name, whether it held, and what it looked at), and the state follows
from them: ``anonymized`` only when no identifier is left and every check held, ``pseudonymized``
when a keyed pseudonym is the only link left, ``raw`` otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from itertools import pairwise
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from onshore.checks import Check
from onshore.classify.zones import Zones
from onshore.clips.vin import is_valid_vin

__all__ = ["MAX_LOCAL_EXTENT_M", "Check", "run_checks", "run_checks_by_part", "state_of"]

MAX_LOCAL_EXTENT_M: Final = 50_000.0
"""Clip-local coordinates never reach this far from their origin; absolute ones (metres in a
national grid, degrees scaled up) do."""
_VIN_LIKE: Final = re.compile(rb"(?<![A-Za-z0-9])[A-HJ-NPR-Z0-9]{17}(?![A-Za-z0-9])")
"""A VIN standing as a token of its own. Inside longer tokens (hex digests, pseudonyms) 17
digits in a row turn up by chance and 1 in 11 of them has a valid check digit; this site's own
VINs are searched for everywhere, token or not."""


_NO_FRAMES: Final = Check("no_unmasked_face_or_plate", True, "no camera frames in these clips")


def _strings(table: pa.Table) -> Iterable[bytes]:
    for column in table.columns:
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            for value in pc.unique(column).to_pylist():
                if value is not None:
                    yield value.encode()


def _no_raw_vin(table: pa.Table, metadata: bytes, raw_vins: set[str]) -> Check:
    return _vin_check([metadata, *_strings(table)], _VinSearch(raw_vins))


class _VinSearch:
    """This site's raw VINs, ready to be looked for in texts. A site has thousands of vehicles
    and a text a few hundred bytes: past a few dozen VINs, each window of a text is looked up
    in a set of the VINs of its length rather than each VIN searched for in the text."""

    _SCAN_UP_TO = 64
    """VINs searched for one by one; more are looked up by window (equal cost near 64)."""

    def __init__(self, raw_vins: Iterable[str]) -> None:
        self._vins = {vin.encode() for vin in raw_vins}
        self._by_length: dict[int, set[bytes]] = {}
        for vin in self._vins:
            self._by_length.setdefault(len(vin), set()).add(vin)

    def found(self, texts: Sequence[bytes]) -> int:
        """How many of the VINs occur, anywhere, in any of ``texts``."""
        if len(self._vins) <= self._SCAN_UP_TO:
            return sum(any(vin in text for text in texts) for vin in self._vins)
        seen: set[bytes] = set()
        for length, vins in self._by_length.items():
            for text in texts:
                windows = {text[i : i + length] for i in range(len(text) - length + 1)}
                seen |= vins & windows
        return len(seen)


def _vin_check(texts: Sequence[bytes], search: _VinSearch) -> Check:
    known = search.found(texts)
    if known:
        return Check("no_raw_vin", False, f"{known} raw VIN(s) of this site's vehicles found")
    patterned = {
        m.group().decode()
        for text in texts
        for m in _VIN_LIKE.finditer(text)
        if is_valid_vin(m.group().decode())
    }
    if patterned:
        return Check("no_raw_vin", False, f"{len(patterned)} string(s) that are valid VINs")
    return Check("no_raw_vin", True, f"searched metadata and {len(texts) - 1} distinct strings")


def _no_zone(table: pa.Table, zones: Zones) -> Check:
    if "lat" not in table.column_names:
        return Check("no_position_in_zone", True, "no absolute positions remain")
    inside = zones.inside(table["lon"].to_numpy(), table["lat"].to_numpy()).any(axis=0)
    n = int(inside.sum())
    return Check(
        "no_position_in_zone",
        n == 0,
        f"{n} of {table.num_rows} positions inside {len(zones.zones)} zone(s)",
    )


def _no_absolute_coordinates(table: pa.Table) -> Check:
    if {"lat", "lon"} & set(table.column_names):
        return Check("no_absolute_coordinate", False, "latitude and longitude columns remain")
    if "x" not in table.column_names or table.num_rows == 0:
        return Check("no_absolute_coordinate", True, "no coordinates")
    extent = float(max(np.abs(table["x"].to_numpy()).max(), np.abs(table["y"].to_numpy()).max()))
    return Check(
        "no_absolute_coordinate",
        extent < MAX_LOCAL_EXTENT_M,
        f"clip-local coordinates, largest offset {extent:,.0f} m",
    )


def _no_absolute_timestamp(table: pa.Table) -> Check:
    stamps = [f.name for f in table.schema if pa.types.is_timestamp(f.type)]
    if stamps:
        return Check("no_absolute_timestamp", False, f"timestamp column(s) {stamps} remain")
    if "t" not in table.column_names or table.num_rows == 0:
        return Check("no_absolute_timestamp", True, "no times")
    t = table["t"].to_numpy()
    return Check(
        "no_absolute_timestamp",
        bool(t.min() >= 0 and t.max() < 86_400),
        f"relative time, 0 to {t.max():.1f} s",
    )


def run_checks(
    table: pa.Table,
    metadata: bytes,
    *,
    raw_vins: set[str],
    zones: Zones,
    frames: Check | None = None,
) -> list[Check]:
    """Every check, on the output ``table`` and its serialised ``metadata``."""
    return [
        _no_raw_vin(table, metadata, raw_vins),
        _no_zone(table, zones),
        _no_absolute_coordinates(table),
        _no_absolute_timestamp(table),
        frames or _NO_FRAMES,
    ]


def state_of(checks: list[Check], *, identifier_left: bool) -> str:
    """The de-identification state the checks prove."""
    held = {c.check: c.held for c in checks}
    if not held["no_raw_vin"]:
        return "raw"
    if identifier_left or not all(held.values()):
        return "pseudonymized"
    return "anonymized"


def run_checks_by_part(
    table: pa.Table,
    offsets: Sequence[int],
    metadata: Sequence[bytes],
    *,
    raw_vins: set[str] | frozenset[str],
    zones: Zones,
    frames: Sequence[Check | None],
) -> list[list[Check]]:
    """:func:`run_checks` of each part of ``table``, rows ``offsets[i]`` to ``offsets[i + 1]``,
    with its own ``metadata[i]`` and ``frames[i]``: the same checks, each column read once for
    all parts rather than once per part."""
    parts = len(offsets) - 1
    if len(metadata) != parts or len(frames) != parts:
        raise ValueError(f"{parts} parts, {len(metadata)} metadata, {len(frames)} frames checks")
    bounds = list(pairwise(offsets))
    search = _VinSearch(raw_vins)
    strings = _strings_by_part(table, bounds)
    vin = [_vin_check([metadata[i], *strings[i]], search) for i in range(parts)]
    zone = _by_part_zone(table, bounds, zones)
    coordinates = _by_part_coordinates(table, bounds)
    timestamp = _by_part_timestamp(table, bounds)
    return [
        [
            vin[i],
            zone[i],
            coordinates[i],
            timestamp[i],
            frames[i] or _NO_FRAMES,
        ]
        for i in range(parts)
    ]


def _strings_by_part(table: pa.Table, bounds: list[tuple[int, int]]) -> list[list[bytes]]:
    """Per part, the distinct values of each string column (as :func:`_strings` yields them)."""
    out: list[list[bytes]] = [[] for _ in bounds]
    for column in table.columns:
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            continue
        encoded = pc.dictionary_encode(column.combine_chunks())
        codes = encoded.indices.fill_null(-1).to_numpy()
        values = [None if v is None else v.encode() for v in encoded.dictionary.to_pylist()]
        for part, (start, end) in zip(out, bounds, strict=True):
            for code in np.unique(codes[start:end]).tolist():
                value = values[code] if code >= 0 else None
                if value is not None:
                    part.append(value)
    return out


def _reduce(
    ufunc: np.ufunc, values: NDArray[np.float64], bounds: list[tuple[int, int]]
) -> list[float]:
    """``ufunc`` reduced over each non-empty part (NaN for an empty one, never read)."""
    starts = [start for start, end in bounds if end > start]
    reduced = iter(ufunc.reduceat(values, starts).tolist() if starts else [])
    return [next(reduced) if end > start else float("nan") for start, end in bounds]


def _by_part_zone(table: pa.Table, bounds: list[tuple[int, int]], zones: Zones) -> list[Check]:
    if "lat" not in table.column_names:
        return [_no_zone(table.slice(0, 0), zones) for _ in bounds]
    inside = zones.inside(table["lon"].to_numpy(), table["lat"].to_numpy()).any(axis=0)
    counts = np.r_[0, np.cumsum(inside)]
    return [
        Check(
            "no_position_in_zone",
            bool(counts[end] == counts[start]),
            f"{int(counts[end] - counts[start])} of {end - start} positions inside "
            f"{len(zones.zones)} zone(s)",
        )
        for start, end in bounds
    ]


def _by_part_coordinates(table: pa.Table, bounds: list[tuple[int, int]]) -> list[Check]:
    if {"lat", "lon"} & set(table.column_names) or "x" not in table.column_names:
        return [_no_absolute_coordinates(table.slice(start, end - start)) for start, end in bounds]
    x = _reduce(np.maximum, np.abs(table["x"].to_numpy()), bounds)
    y = _reduce(np.maximum, np.abs(table["y"].to_numpy()), bounds)
    out = []
    for (start, end), x_max, y_max in zip(bounds, x, y, strict=True):
        if end == start:
            out.append(Check("no_absolute_coordinate", True, "no coordinates"))
            continue
        extent = float(max(x_max, y_max))
        out.append(
            Check(
                "no_absolute_coordinate",
                extent < MAX_LOCAL_EXTENT_M,
                f"clip-local coordinates, largest offset {extent:,.0f} m",
            )
        )
    return out


def _by_part_timestamp(table: pa.Table, bounds: list[tuple[int, int]]) -> list[Check]:
    if any(pa.types.is_timestamp(f.type) for f in table.schema) or "t" not in table.column_names:
        return [_no_absolute_timestamp(table.slice(start, end - start)) for start, end in bounds]
    t = table["t"].to_numpy()
    low = _reduce(np.minimum, t, bounds)
    high = _reduce(np.maximum, t, bounds)
    out = []
    for (start, end), t_min, t_max in zip(bounds, low, high, strict=True):
        if end == start:
            out.append(Check("no_absolute_timestamp", True, "no times"))
            continue
        out.append(
            Check(
                "no_absolute_timestamp",
                bool(t_min >= 0 and t_max < 86_400),
                f"relative time, 0 to {t_max:.1f} s",
            )
        )
    return out
