"""The clip formats: VINs, MCAP uploads and table exports round-trip exactly."""

from __future__ import annotations

import dataclasses
import io
import os
import random

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import make_clip
from onshore.clips.mcap import read_mcap, write_mcap
from onshore.clips.schema import SCHEMA, Clip, ClipMeta
from onshore.clips.tabular import clip_to_parquet, export_table, read_csv, read_parquet
from onshore.clips.validate import validate_clip
from onshore.clips.vin import check_digit, is_valid_vin, make_vin
from onshore.errors import ClipError, PhysicsError, SchemaError, UnreadableFile


@pytest.mark.parametrize(
    ("vin", "valid"),
    [
        ("1M8GDM9AXKP042788", True),  # the worked example of 49 CFR 565
        ("11111111111111111", True),
        ("1M8GDM9A1KP042788", False),  # wrong check digit
        ("1M8GDM9AXKP04278", False),  # 16 characters
        ("IM8GDM9AXKP042788", False),  # I is not allowed
    ],
)
def test_vin_check_digit(vin: str, valid: bool) -> None:
    assert is_valid_vin(vin) is valid


def test_made_vins_are_valid() -> None:
    rng = random.Random(3)
    vins = {make_vin(rng, "WVW", "ZZZ1K", 2026, "W") for _ in range(200)}
    assert len(vins) > 190
    assert all(is_valid_vin(v) and v.startswith("WVW") and v[9] == "T" for v in vins)
    with pytest.raises(ValueError, match="not a VIN"):
        check_digit("short")


def test_mcap_round_trip_is_exact() -> None:
    clip = make_clip(5)
    buf = io.BytesIO()
    write_mcap(clip, buf)
    back = read_mcap(buf.getvalue(), "x.mcap")
    assert back.meta == clip.meta
    assert back.table.equals(clip.table)
    validate_clip(back, "x.mcap")


def test_stored_parquet_is_deterministic_and_self_describing() -> None:
    clip = make_clip(2)
    first, second = clip_to_parquet(clip), clip_to_parquet(make_clip(2))
    assert first == second
    (back,) = read_parquet(first, "c.parquet")
    assert back.meta == clip.meta and back.table.equals(clip.table)


def test_export_tables_round_trip_in_parquet_and_csv() -> None:
    clips = [make_clip(1), make_clip(2, consent=False)]
    table = export_table(clips)
    sink = io.BytesIO()
    pq.write_table(table, sink)
    from_parquet = read_parquet(sink.getvalue(), "e.parquet")
    assert [c.meta for c in from_parquet] == [c.meta for c in clips]
    assert all(a.table.equals(b.table) for a, b in zip(from_parquet, clips, strict=True))

    csv_table = table.set_column(
        table.schema.get_field_index("objects"),
        "objects",
        pa.array([__import__("orjson").dumps(o).decode() for o in table["objects"].to_pylist()]),
    )
    out = io.BytesIO()
    import pyarrow.csv as pacsv

    pacsv.write_csv(csv_table, out)
    from_csv = read_csv(out.getvalue(), "e.csv")
    assert [c.meta for c in from_csv] == [c.meta for c in clips]
    for got, want in zip(from_csv, clips, strict=True):
        assert got.table["time"].equals(want.table["time"])
        assert got.table["objects"].equals(want.table["objects"])


def _simulated(clip: Clip) -> Clip:
    return dataclasses.replace(clip, meta=dataclasses.replace(clip.meta, simulated=True))


def test_the_simulated_flag_round_trips_through_every_format() -> None:
    made, recorded = _simulated(make_clip(4)), make_clip(6)
    assert recorded.meta.simulated is False, "a clip is recorded unless it says otherwise"
    for clip in (made, recorded):
        buf = io.BytesIO()
        write_mcap(clip, buf)
        assert read_mcap(buf.getvalue(), "x.mcap").meta == clip.meta
        (stored,) = read_parquet(clip_to_parquet(clip), "c.parquet")
        assert stored.meta == clip.meta

    table = export_table([made, recorded])
    sink = io.BytesIO()
    pq.write_table(table, sink)
    assert [c.meta for c in read_parquet(sink.getvalue(), "e.parquet")] == [
        made.meta,
        recorded.meta,
    ]
    out = io.BytesIO()
    pacsv.write_csv(table.drop_columns(["objects"]), out)
    assert [c.meta.simulated for c in read_csv(out.getvalue(), "e.csv")] == [True, False]


def test_a_recorded_clip_is_stored_as_before_the_flag_existed() -> None:
    """A recorded clip's stored Parquet (its content address) must not change with the flag, or
    a clip stored by an earlier onshore would conflict with itself when uploaded again."""
    assert b"simulated" not in make_clip(2).meta.to_json()
    assert b'"simulated":true' in _simulated(make_clip(2)).meta.to_json()


@pytest.mark.parametrize(
    ("value", "simulated"),
    [(True, True), (False, False), ("true", True), ("FALSE", False), ("1", True), ("0", False)],
)
def test_simulated_reads_booleans_and_their_text(value: object, simulated: bool) -> None:
    raw = orjson.loads(make_clip(1).meta.to_json())
    assert ClipMeta.from_mapping({**raw, "simulated": value}).simulated is simulated
    assert ClipMeta.from_mapping(raw).simulated is False


def test_a_simulated_flag_that_is_not_a_boolean_is_a_schema_error() -> None:
    raw = orjson.loads(make_clip(1).meta.to_json())
    with pytest.raises(ValueError, match="simulated must be true or false, not 'maybe'"):
        ClipMeta.from_mapping({**raw, "simulated": "maybe"})
    with pytest.raises(TypeError, match="simulated must be a boolean, not int"):
        ClipMeta.from_mapping({**raw, "simulated": 2})
    table = export_table([make_clip(1)])
    flags = pa.array(["perhaps"] * table.num_rows)
    table = table.set_column(table.schema.get_field_index("simulated"), "simulated", flags)
    sink = io.BytesIO()
    pq.write_table(table, sink)
    with pytest.raises(SchemaError, match=r"e\.parquet: clip test-00001: invalid metadata"):
        read_parquet(sink.getvalue(), "e.parquet")


def test_validation_names_row_and_value() -> None:
    clip = make_clip(1)
    speed = clip.table["speed"].to_numpy().copy()
    speed[17] = 250.0
    bad = clip.table.set_column(3, SCHEMA.field("speed"), pa.array(speed, pa.float32()))
    with pytest.raises(PhysicsError, match=r"speed 250\.00 m/s at row 17"):
        validate_clip(type(clip)(clip.meta, bad), "f.mcap")


def test_empty_and_foreign_bytes_are_unreadable() -> None:
    with pytest.raises(UnreadableFile, match="empty"):
        read_mcap(b"", "a.mcap")
    with pytest.raises(UnreadableFile, match="not an MCAP"):
        read_mcap(b"PAR1....PAR1", "a.mcap")
    with pytest.raises(SchemaError, match="missing column"):
        sink = io.BytesIO()
        pq.write_table(pa.table({"a": [1]}), sink)
        read_parquet(sink.getvalue(), "a.parquet")


MAX_EXAMPLES = int(os.environ.get("ONSHORE_FUZZ_EXAMPLES", "300"))
_UPLOAD = io.BytesIO()
write_mcap(make_clip(21, steps=40), _UPLOAD)
UPLOAD = _UPLOAD.getvalue()


@settings(max_examples=MAX_EXAMPLES, deadline=None)
@given(cut=st.integers(min_value=0, max_value=len(UPLOAD) - 1))
def test_any_truncation_is_reported_as_unreadable(cut: int) -> None:
    with pytest.raises(UnreadableFile, match=r"x\.mcap"):
        read_mcap(UPLOAD[:cut], "x.mcap")


@settings(max_examples=MAX_EXAMPLES, deadline=None)
@given(at=st.integers(min_value=0, max_value=len(UPLOAD) - 1), byte=st.integers(0, 255))
def test_any_corrupted_byte_is_caught_or_harmless(at: int, byte: int) -> None:
    data = bytearray(UPLOAD)
    data[at] = byte
    try:
        validate_clip(read_mcap(bytes(data), "x.mcap"), "x.mcap")
    except ClipError as exc:
        assert "x.mcap" in str(exc)
    # Otherwise the byte changed nothing that matters (padding, an unread index) or changed a
    # value into another plausible one: the clip is still valid, which is all ingest needs.


def test_csv_keeps_metadata_text_and_reads_integer_nanoseconds() -> None:
    clip = make_clip(3)
    ns = pc.multiply(pc.cast(clip.table["time"], pa.int64()), 1000)
    rows = [
        "clip_id,vin,vehicle_model,trigger,consent_training,recorded_in,time,lat,lon,speed,"
        "heading,accel,yaw_rate"
    ]
    for i in range(clip.rows):
        rows.append(
            f"c1,{clip.meta.vin},0300,hard_brake,false,CN,{ns[i].as_py()},"
            f"{clip.table['lat'][i].as_py()},{clip.table['lon'][i].as_py()},10,45,0,0"
        )
    (back,) = read_csv("\n".join(rows).encode(), "e.csv")
    assert back.meta.vehicle_model == "0300" and back.meta.consent_training is False
    assert back.meta.simulated is False, "an export without the column holds recorded clips"
    assert back.table["time"].equals(clip.table["time"])
    validate_clip(back, "e.csv")


def test_a_chunk_that_inflates_past_its_declared_size_is_refused() -> None:
    import struct

    import zstandard

    bomb = zstandard.ZstdCompressor().compress(b"\0" * (64 << 20))

    def record(op: int, body: bytes) -> bytes:
        return struct.pack("<BQ", op, len(body)) + body

    def text(value: bytes) -> bytes:
        return struct.pack("<I", len(value)) + value

    magic = b"\x89MCAP0\r\n"
    chunk = struct.pack("<QQQI", 0, 0, 1 << 20, 0) + text(b"zstd")
    chunk += struct.pack("<Q", len(bomb)) + bomb
    data = magic + record(1, text(b"") + text(b"x")) + record(6, chunk)
    data += record(0x0F, struct.pack("<I", 0)) + record(2, struct.pack("<QQI", 0, 0, 0)) + magic
    with pytest.raises(UnreadableFile, match=r"bomb\.mcap: truncated or corrupt"):
        read_mcap(data, "bomb.mcap")
