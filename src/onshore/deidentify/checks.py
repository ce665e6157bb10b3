"""The checks that prove a de-identified output is what its state says, re-run on the output.

Each returns a record (name, whether it held, and what it looked at), and the state follows
from them: ``anonymized`` only when no identifier is left and every check held, ``pseudonymized``
when a keyed pseudonym is the only link left, ``raw`` otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from onshore.classify.zones import Zones
from onshore.clips.vin import is_valid_vin

__all__ = ["MAX_LOCAL_EXTENT_M", "Check", "run_checks", "state_of"]

MAX_LOCAL_EXTENT_M: Final = 50_000.0
"""Clip-local coordinates never reach this far from their origin; absolute ones (metres in a
national grid, degrees scaled up) do."""
_VIN_LIKE: Final = re.compile(rb"(?<![A-Za-z0-9])[A-HJ-NPR-Z0-9]{17}(?![A-Za-z0-9])")
"""A VIN standing as a token of its own. Inside longer tokens (hex digests, pseudonyms) 17
digits in a row turn up by chance and 1 in 11 of them has a valid check digit; this site's own
VINs are searched for everywhere, token or not."""


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    held: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _strings(table: pa.Table) -> Iterable[bytes]:
    for column in table.columns:
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            for value in pc.unique(column).to_pylist():
                if value is not None:
                    yield value.encode()


def _no_raw_vin(table: pa.Table, metadata: bytes, raw_vins: set[str]) -> Check:
    texts = [metadata, *_strings(table)]
    known = [v for v in raw_vins if any(v.encode() in text for text in texts)]
    if known:
        return Check("no_raw_vin", False, f"{len(known)} raw VIN(s) of this site's vehicles found")
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
        frames or Check("no_unmasked_face_or_plate", True, "no camera frames in these clips"),
    ]


def state_of(checks: list[Check], *, identifier_left: bool) -> str:
    """The de-identification state the checks prove."""
    held = {c.name: c.held for c in checks}
    if not held["no_raw_vin"]:
        return "raw"
    if identifier_left or not all(held.values()):
        return "pseudonymized"
    return "anonymized"
