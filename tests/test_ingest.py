"""Ingest: good files land once, every kind of bad file is quarantined with its reason, and
nothing else is lost."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import make_clip, write_clips
from onshore.clips.mcap import write_mcap
from onshore.clips.schema import SCHEMA, Clip
from onshore.clips.tabular import export_table
from onshore.ingest import ingest
from onshore.settings import Project
from onshore.store import SiteStore

SITE = "cn-shanghai"


@pytest.fixture
def site(project: Project) -> SiteStore:
    opened = SiteStore.open(project, SITE)
    yield opened  # type: ignore[misc]
    opened.close()


def _mcap_bytes(clip: Clip) -> bytes:
    buf = io.BytesIO()
    write_mcap(clip, buf)
    return buf.getvalue()


def _with_column(clip: Clip, name: str, values: object) -> Clip:
    i = SCHEMA.get_field_index(name)
    return Clip(
        clip.meta,
        clip.table.set_column(i, SCHEMA.field(name), pa.array(values, SCHEMA.field(name).type)),
    )


def test_ingest_is_idempotent(site: SiteStore, tmp_path: Path) -> None:
    files = write_clips(tmp_path / "up", 5)
    first = ingest(site, [tmp_path / "up"])
    assert (first.files, first.clips, first.rows, first.quarantined) == (5, 5, 600, [])
    assert first.bytes == sum(f.stat().st_size for f in files)
    again = ingest(site, files)
    assert (again.clips, again.already_ingested) == (0, 5)
    assert len(list(site.objects.clip_digests())) == 5
    assert site.check(deep=True)["ok"]


def test_the_same_clip_in_another_file_is_stored_once(site: SiteStore, tmp_path: Path) -> None:
    clip = make_clip(9)
    a = tmp_path / "a.mcap"
    write_mcap(clip, a)
    sink = io.BytesIO()
    pq.write_table(export_table([clip]), sink)
    b = tmp_path / "b.parquet"
    b.write_bytes(sink.getvalue())
    report = ingest(site, [a, b])
    assert (report.clips, report.duplicate_clips, report.quarantined) == (1, 1, [])
    assert len(site.catalogue.clips()) == 1


def test_a_clip_stored_by_an_earlier_encoding_is_a_duplicate_not_a_conflict(
    site: SiteStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An earlier onshore wrote clips with dictionaries and statistics on every column: the
    # same clip uploaded again since is the clip already stored, and the new copy goes.
    clip = make_clip(11)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write_mcap(clip, tmp_path / "a" / "a.mcap")
    pq.write_table(export_table([clip]), tmp_path / "b" / "b.parquet")
    earlier = {"compression": "zstd", "use_dictionary": True, "write_statistics": True}
    monkeypatch.setattr("onshore.clips.tabular._WRITE_OPTIONS", earlier)
    assert ingest(site, [tmp_path / "a"]).clips == 1
    (stored,) = site.catalogue.clips()
    monkeypatch.undo()
    report = ingest(site, [tmp_path / "b"])
    assert (report.clips, report.duplicate_clips, report.quarantined) == (0, 1, [])
    assert site.catalogue.clips() == [stored]
    assert site.check(deep=True)["ok"], "the new copy was removed, the stored one kept"
    assert len(list(site.objects.clip_digests())) == 1


def test_the_catalogue_knows_which_clips_a_simulator_made(site: SiteStore, tmp_path: Path) -> None:
    def simulated(clip: Clip) -> Clip:
        return dataclasses.replace(clip, meta=dataclasses.replace(clip.meta, simulated=True))

    write_mcap(simulated(make_clip(1)), tmp_path / "made.mcap")
    write_mcap(make_clip(2), tmp_path / "recorded.mcap")
    sink = io.BytesIO()
    pq.write_table(export_table([simulated(make_clip(3)), make_clip(4)]), sink)
    (tmp_path / "export.parquet").write_bytes(sink.getvalue())
    report = ingest(site, [tmp_path])
    assert (report.clips, report.quarantined) == (4, [])
    flags = {c.clip_id: c.simulated for c in site.catalogue.clips()}
    assert flags == {
        "test-00001": True,
        "test-00002": False,
        "test-00003": True,
        "test-00004": False,
    }
    assert site.catalogue.clip_origins() == {"simulated": 2, "recorded": 2}


def _bad_inputs(tmp: Path) -> dict[str, tuple[Path, str]]:
    """Each bad file, and a fragment its quarantine reason must contain."""
    good = _mcap_bytes(make_clip(1))
    cases: dict[str, tuple[bytes, str, str]] = {
        "truncated": (good[: len(good) * 2 // 3], "trunc.mcap", "truncated"),
        "truncated_at_footer": (good[:-30], "trunc2.mcap", "truncated"),
        "zero_bytes": (b"", "empty.mcap", "empty (0 bytes)"),
        "png_named_mcap": (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "photo.mcap", "content is a PNG"),
        "csv_named_parquet": (b"a,b\n1,2\n", "table.parquet", "not a Parquet file"),
        "mcap_named_csv": (good, "upload.csv", "content is MCAP"),
        "unknown_extension": (_mcap_bytes(make_clip(11)), "upload.bin", "unsupported file type"),
        "non_monotonic_time": (
            _mcap_bytes(_with_column(make_clip(2), "time", _swap(make_clip(2).table["time"], 40))),
            "time.mcap",
            "not strictly increasing at row",
        ),
        "latitude_out_of_range": (
            _mcap_bytes(_with_column(make_clip(3), "lat", [95.0] * 120)),
            "lat.mcap",
            "latitude 95.0 at row 0 is outside -90..90",
        ),
        "longitude_out_of_range": (
            _mcap_bytes(_with_column(make_clip(4), "lon", [121.47] * 60 + [-200.0] * 60)),
            "lon.mcap",
            "longitude -200.0 at row 60",
        ),
        "position_jump": (
            _mcap_bytes(_with_column(make_clip(5), "lat", [31.2] * 50 + [32.2] * 70)),
            "jump.mcap",
            "position jumps",
        ),
    }
    sink = io.BytesIO()
    pq.write_table(pa.table({"time": [1, 2], "latitude": [1.0, 2.0]}), sink)
    cases["wrong_schema_parquet"] = (sink.getvalue(), "wrong.parquet", "missing column(s)")
    cases["wrong_schema_csv"] = (b"when,where\n1,2\n", "wrong.csv", "missing column(s)")
    wrong_type = (
        export_table([make_clip(6)])
        .drop_columns(["speed"])
        .append_column("speed", pa.array(["fast"] * 120))
    )
    sink = io.BytesIO()
    pq.write_table(wrong_type, sink)
    cases["wrong_type_parquet"] = (
        sink.getvalue(),
        "type.parquet",
        "column 'speed' has type string",
    )
    out = {}
    for key, (data, name, reason) in cases.items():
        path = tmp / name
        path.write_bytes(data)
        out[key] = (path, reason)
    return out


def _swap(column: pa.ChunkedArray, i: int) -> pa.Array:
    values = column.to_pylist()
    values[i], values[i + 1] = values[i + 1], values[i]
    return values  # type: ignore[return-value]


def test_every_bad_input_is_quarantined_with_its_reason(site: SiteStore, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    good = write_clips(inbox / "good", 3, start=100)
    bad = _bad_inputs(inbox)
    path_bytes = {key: path.read_bytes() for key, (path, _) in bad.items()}
    report = ingest(site, [*good, *(p for p, _ in bad.values())])

    assert report.clips == 3, "the good files are not lost"
    by_path = {q["path"]: q for q in report.quarantined}
    assert set(by_path) == {str(p) for p, _ in bad.values()}
    for key, (path, fragment) in bad.items():
        reason = by_path[str(path)]["reason"]
        assert fragment in reason, f"{key}: {reason!r}"
        assert str(path) in reason, f"{key}: the reason names the file"
        assert not path.exists(), f"{key}: moved out of the inbox"
        kept = by_path[str(path)]["quarantine"]
        assert site.objects.read(str(kept)) == path_bytes[key]
        note = json.loads(site.objects.read(f"{kept}.reason.json"))
        assert note["reason"] == reason and note["source"] == str(path)
    inventory = site.catalogue.inventory()
    assert inventory["files"] == {"ingested": 3, "quarantined": len(bad)}
    assert site.check()["ok"]


def test_one_bad_clip_in_an_export_quarantines_the_file_and_nothing_else(
    site: SiteStore, tmp_path: Path
) -> None:
    bad = _with_column(make_clip(8), "lat", [95.0] * 120)
    sink = io.BytesIO()
    pq.write_table(export_table([make_clip(7), bad]), sink)
    export = tmp_path / "export.parquet"
    export.write_bytes(sink.getvalue())
    report = ingest(site, [export, *write_clips(tmp_path / "g", 1)])
    assert report.clips == 1 and len(report.quarantined) == 1
    assert site.catalogue.clips()[0].clip_id == "test-00000"
    assert list(site.objects.clip_digests()) and site.check()["ok"]


def test_a_clip_id_reused_with_other_content_is_a_conflict(site: SiteStore, tmp_path: Path) -> None:
    write_mcap(make_clip(1, clip_id="same"), tmp_path / "one.mcap")
    write_mcap(make_clip(2, clip_id="same"), tmp_path / "two.mcap")
    report = ingest(site, [tmp_path / "one.mcap", tmp_path / "two.mcap"])
    assert report.clips == 1
    assert "already stored with different content" in report.quarantined[0]["reason"]


def test_a_missing_path_fails_before_anything_is_ingested(site: SiteStore, tmp_path: Path) -> None:
    from onshore.errors import ConfigError

    files = write_clips(tmp_path / "up", 2)
    with pytest.raises(ConfigError, match="no such file"):
        ingest(site, [*files, tmp_path / "nope.mcap"])
    assert site.catalogue.clips() == []


def test_ingest_into_an_in_memory_store(tmp_path: Path) -> None:
    from onshore.settings import load_project

    (tmp_path / "onshore.toml").write_text(
        '[sites.eu-test]\njurisdiction = "EU"\nentity = "Test GmbH"\n'
        f'store = "memory://onshore-{tmp_path.name}"\n'
        f'catalogue = "sqlite:///{tmp_path}/catalogue.sqlite"\n'
    )
    opened = SiteStore.open(load_project(tmp_path), "eu-test")
    try:
        files = write_clips(tmp_path / "up", 30, recorded_in="EU")
        (tmp_path / "up" / "bad.csv").write_bytes(b"\x00\x01binary")
        report = ingest(opened, [tmp_path / "up"])
        assert (report.clips, len(report.quarantined)) == (30, 1)
        assert opened.objects.url.startswith("memory://")
        assert opened.check(deep=True)["ok"]
        assert len(files) == 30 and not (tmp_path / "up" / "bad.csv").exists()
    finally:
        opened.close()


def test_a_clip_recorded_in_another_region_is_refused(project: Project, tmp_path: Path) -> None:
    eu = SiteStore.open(project, "eu-frankfurt")
    try:
        chinese = write_clips(tmp_path / "cn", 2, recorded_in="cn-shanghai")
        european = write_clips(tmp_path / "eu", 2, start=10, recorded_in="EU")
        report = ingest(eu, [*chinese, *european])
        assert report.clips == 2
        assert {q["error"] for q in report.quarantined} == {"clip.residency"}
        assert "recorded in 'cn-shanghai'" in str(report.quarantined[0]["reason"])
        assert all(q["quarantine"] is None for q in report.quarantined)
        assert all(c.recorded_in == "EU" for c in eu.catalogue.clips())
        assert all(path.exists() for path in chinese), "another region's uploads stay put"
        assert list(eu.objects.find("quarantine")) == [], "not a byte of them is stored here"
    finally:
        eu.close()


def test_only_conflicting_files_in_a_batch_are_quarantined(site: SiteStore, tmp_path: Path) -> None:
    write_mcap(make_clip(1, clip_id="same"), tmp_path / "a.mcap")
    ingest(site, [tmp_path / "a.mcap"])
    # A batch holding nothing but a conflict, then one where a good file shares the batch.
    write_mcap(make_clip(2, clip_id="same"), tmp_path / "b.mcap")
    alone = ingest(site, [tmp_path / "b.mcap"], remove_quarantined_source=False)
    assert alone.clips == 0 and alone.quarantined[0]["error"] == "clip.conflict"
    again = ingest(site, [tmp_path / "b.mcap", *write_clips(tmp_path / "g", 2, start=40)])
    assert again.clips == 2 and len(again.quarantined) == 1
    assert site.check()["ok"]


def test_unreadable_and_oversized_files_do_not_stop_the_run(
    site: SiteStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onshore.ingest.run as ingest_module

    good = write_clips(tmp_path / "in", 2)
    big = tmp_path / "in" / "big.mcap"
    big.write_bytes(b"\x89MCAP0\r\n" + b"\0" * 300_000)
    monkeypatch.setattr(ingest_module, "MAX_FILE_BYTES", 200_000)
    locked = good[1]
    real_read = Path.read_bytes

    def read_bytes(path: Path) -> bytes:  # as for a file root may not read (NFS, SELinux)
        if path == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_read(path)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    (tmp_path / "in" / "gone.mcap").symlink_to(tmp_path / "in" / "nowhere")
    (tmp_path / "in" / "notes.txt").write_text("not an upload")
    report = ingest(site, [tmp_path / "in"])
    assert report.clips == 1, "the readable good file is not lost"
    by_path = {q["path"]: q for q in report.quarantined}
    assert "293 KiB is more than the 195 KiB" in str(by_path[str(big)]["reason"])
    assert by_path[str(locked)]["quarantine"] is None and locked.exists()
    assert "cannot be read (Permission denied)" in str(by_path[str(locked)]["reason"])
    assert str(tmp_path / "in" / "gone.mcap") in report.ignored
    assert str(tmp_path / "in" / "notes.txt") in report.ignored


def test_one_vehicle_cannot_be_in_two_places_at_once(project: Project, tmp_path: Path) -> None:
    """Regression (QA): clips of one VIN overlapping in time at different places were accepted
    (and made trip-end trimming meaningless). Overlapping clips at the same place are fine."""
    import dataclasses

    from conftest import make_clip
    from onshore.clips.mcap import write_mcap

    here = make_clip(1, clip_id="here")

    def same_vehicle(clip_id: str, lat0: float):  # type: ignore[no-untyped-def]
        clip = make_clip(1, clip_id=clip_id, lat0=lat0)
        return dataclasses.replace(clip, meta=dataclasses.replace(clip.meta, vin=here.meta.vin))

    folder = tmp_path / "up"
    folder.mkdir()
    # The same drive uploaded again, and the same VIN at the same times 30 km north.
    for clip in (here, same_vehicle("again", 31.23), same_vehicle("far", 31.5)):
        write_mcap(clip, folder / f"{clip.meta.clip_id}.mcap")
    with SiteStore.open(project, "cn-shanghai") as site:
        report = ingest(site, [folder])
    assert report.clips == 2
    (refused,) = report.quarantined
    assert "far.mcap" in refused["path"] and "two places" in refused["reason"]
