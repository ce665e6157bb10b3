"""Clips exported as tables: Parquet and CSV files, one row per ego step.

A stored clip (Parquet with ``onshore.clip`` schema metadata) is read as it is. Other tables are
exports: the ego columns of :data:`~onshore.clips.schema.SCHEMA`, the metadata fields of
:class:`~onshore.clips.schema.ClipMeta` as columns (constant within a clip), and ``clip_id`` to
tell clips apart when one file holds several. ``objects`` is optional: a list of structs in
Parquet, a JSON array per row in CSV. So is ``simulated``: an export without it holds recorded
clips. ``time`` is a timestamp, an ISO 8601 string with a zone, or an integer count of
nanoseconds since the Unix epoch.
"""

from __future__ import annotations

import io
from typing import Any, Final

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from onshore.clips.schema import META_KEY, OBJECT_TYPE, SCHEMA, Clip, ClipMeta
from onshore.errors import SchemaError, UnreadableFile

__all__ = [
    "META_COLUMNS",
    "OPTIONAL_META_COLUMNS",
    "clip_to_parquet",
    "export_table",
    "read_csv",
    "read_parquet",
]

META_COLUMNS: Final = (
    "clip_id",
    "vin",
    "vehicle_model",
    "trigger",
    "consent_training",
    "recorded_in",
)
OPTIONAL_META_COLUMNS: Final = ("simulated",)
"""Metadata columns an export may leave out; :meth:`ClipMeta.from_mapping` defaults them."""
_PARQUET_MAGIC: Final = b"PAR1"
_WRITE_OPTIONS: Final[dict[str, Any]] = {
    "compression": "zstd",
    # Only the objects' class names repeat: dictionaries of measured floats made the stored
    # clips 30% larger and took nearly twice as long to write.
    "use_dictionary": ["objects.list.element.class"],
    # Statistics of the time only (for a reader that selects by time): the other columns'
    # cost as much to write as a short clip's rows.
    "write_statistics": ["time"],
}


def clip_to_parquet(clip: Clip) -> bytes:
    """The clip as the Parquet bytes a store keeps: deterministic for equal clips."""
    table = clip.table.replace_schema_metadata({META_KEY: clip.meta.to_json()})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **_WRITE_OPTIONS)
    return bytes(sink.getvalue().to_pybytes())


def export_table(clips: list[Clip]) -> pa.Table:
    """Flatten clips into one export table (metadata as columns), e.g. to write as Parquet."""
    parts = []
    for clip in clips:
        n = clip.rows
        meta = clip.meta
        cols = {
            name: pa.array([getattr(meta, name)] * n)
            for name in (*META_COLUMNS, *OPTIONAL_META_COLUMNS)
        }
        parts.append(pa.table({**cols, **{f: clip.table[f] for f in SCHEMA.names}}))
    return pa.concat_tables(parts)


def read_parquet(data: bytes, name: str) -> list[Clip]:
    """Decode a Parquet file: a stored clip, or an export holding one or more clips."""
    if not data:
        raise UnreadableFile(f"{name}: the file is empty (0 bytes)", hint="re-export it")
    if not (data.startswith(_PARQUET_MAGIC) and data.endswith(_PARQUET_MAGIC)):
        raise UnreadableFile(
            f"{name}: not a Parquet file, or truncated (no PAR1 magic at both ends)",
            hint="check the file's real format; MCAP, Parquet and CSV are accepted",
        )
    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError) as exc:
        raise UnreadableFile(f"{name}: corrupt Parquet ({exc})") from exc
    metadata = table.schema.metadata or {}
    if META_KEY in metadata:
        try:
            meta = ClipMeta.from_mapping(orjson.loads(metadata[META_KEY]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise SchemaError(f"{name}: the onshore.clip metadata is invalid: {exc}") from exc
        return [Clip(meta, _conform(table.replace_schema_metadata(None), name))]
    return _split(table, name)


def read_csv(data: bytes, name: str) -> list[Clip]:
    """Decode a CSV export holding one or more clips."""
    if not data.strip():
        raise UnreadableFile(f"{name}: the file is empty", hint="re-export it")
    if b"\x00" in data[:4096]:
        raise UnreadableFile(f"{name}: binary content, not CSV text")
    try:
        table = pacsv.read_csv(
            io.BytesIO(data),
            convert_options=pacsv.ConvertOptions(
                # Metadata as written (a model "0300" stays "0300"), and time and objects
                # as text, parsed below.
                column_types={
                    **dict.fromkeys((*META_COLUMNS, *OPTIONAL_META_COLUMNS), pa.string()),
                    "objects": pa.string(),
                    "time": pa.string(),
                },
                strings_can_be_null=True,
            ),
        )
    except pa.ArrowInvalid as exc:
        raise UnreadableFile(f"{name}: not readable as CSV ({exc})") from exc
    if "objects" in table.column_names:
        table = table.set_column(
            table.schema.get_field_index("objects"), "objects", _objects_from_json(table, name)
        )
    return _split(table, name)


def _objects_from_json(table: pa.Table, name: str) -> pa.Array:
    rows = []
    for i, text in enumerate(table["objects"].to_pylist()):
        try:
            rows.append(orjson.loads(text) if text else [])
        except orjson.JSONDecodeError as exc:
            raise SchemaError(f"{name}: row {i}: 'objects' is not a JSON array ({exc})") from exc
    try:
        return pa.array(rows, type=pa.list_(OBJECT_TYPE))
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as exc:
        raise SchemaError(
            f"{name}: 'objects' entries do not match the object schema: {exc}"
        ) from exc


def _split(table: pa.Table, name: str) -> list[Clip]:
    missing = [c for c in (*META_COLUMNS, *SCHEMA.names[:7]) if c not in table.column_names]
    if missing:
        raise SchemaError(
            f"{name}: missing column(s) {', '.join(missing)}",
            hint="an export needs the clip metadata columns "
            f"({', '.join(META_COLUMNS)}) and the ego columns (time, lat, lon, speed, heading, "
            "accel, yaw_rate)",
        )
    if table.num_rows == 0:
        raise SchemaError(f"{name}: the table has no rows")
    if table["clip_id"].null_count:
        raise SchemaError(f"{name}: 'clip_id' is empty in some rows")
    ids = table["clip_id"].cast(pa.string())
    # One stable sort by clip id, then a slice per run of equal ids: rows keep their order
    # within a clip, and a file of many clips is not filtered once per clip.
    order = pc.sort_indices(ids)
    table = table.take(order)
    ids = ids.take(order).to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    ends = np.r_[starts[1:], len(ids)]
    meta_columns = [*META_COLUMNS, *(c for c in OPTIONAL_META_COLUMNS if c in table.column_names)]
    clips = []
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        clip_id = ids[start]
        part = table.slice(start, end - start)
        meta_raw: dict[str, object] = {}
        for col in meta_columns:
            values = pc.unique(part[col]).to_pylist()
            if len(values) != 1 or values[0] is None:
                raise SchemaError(
                    f"{name}: clip {clip_id}: column '{col}' must hold one value per clip, "
                    f"found {values[:3]}"
                )
            meta_raw[col] = values[0]
        try:
            meta = ClipMeta.from_mapping(meta_raw)
        except (KeyError, TypeError, ValueError) as exc:
            raise SchemaError(f"{name}: clip {clip_id}: invalid metadata: {exc}") from exc
        clips.append(Clip(meta, _conform(part, name)))
    return clips


def _conform(table: pa.Table, name: str) -> pa.Table:
    """Cast a table's ego and object columns to :data:`SCHEMA`, naming what does not fit."""
    columns = []
    for field in SCHEMA:
        if field.name not in table.column_names:
            if field.nullable and field.name != "objects":
                columns.append(pa.nulls(table.num_rows, field.type))
                continue
            if field.name == "objects":
                columns.append(pa.array([[]] * table.num_rows, field.type))
                continue
            raise SchemaError(f"{name}: missing column '{field.name}'")
        column = table[field.name]
        try:
            columns.append(_time(column, name) if field.name == "time" else column.cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            raise SchemaError(
                f"{name}: column '{field.name}' has type {column.type}, expected {field.type}"
            ) from exc
    return pa.Table.from_arrays(columns, schema=SCHEMA)


def _time(column: pa.ChunkedArray, name: str) -> pa.ChunkedArray:
    target = SCHEMA.field("time").type
    if pa.types.is_timestamp(column.type):
        if column.type.tz is None:
            raise SchemaError(f"{name}: column 'time' has no time zone; write it in UTC")
        return column.cast(target)
    if pa.types.is_integer(column.type):
        ns = column.cast(pa.int64()).to_numpy()
        return pa.chunked_array([pa.array(np.asarray(ns // 1000), pa.int64()).cast(target)])
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        if pc.all(pc.match_substring_regex(column, r"^-?[0-9]+$")).as_py():
            return _time(column.cast(pa.int64()), name)  # nanoseconds, written as text in CSV
        try:
            return pc.cast(pc.strptime(column, format="%Y-%m-%dT%H:%M:%S%z", unit="us"), target)
        except pa.ArrowInvalid:
            pass
        try:
            return column.cast(pa.timestamp("us", tz="UTC"))
        except pa.ArrowInvalid as exc:
            raise SchemaError(
                f"{name}: column 'time' is not ISO 8601 with a zone: {exc}",
                hint="write times like 2026-03-02T08:00:00.100Z",
            ) from exc
    raise SchemaError(f"{name}: column 'time' has type {column.type}, expected a timestamp")
