"""One contract suite for the catalogue, run against every backend: SQLite on disk, SQLite in
memory, and PostgreSQL (CI starts one; set ONSHORE_TEST_POSTGRES_URL to run it locally)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    inspect,
    text,
)
from sqlalchemy.engine import make_url

from onshore.errors import CatalogueError, ClipConflict, ConfigError
from onshore.store.catalogue import (
    Catalogue,
    ClipRecord,
    DeidentifiedRecord,
    FileRecord,
    FramesRecord,
    LabelRecord,
)


@pytest.fixture(params=["sqlite-file", "sqlite-memory", "postgres"])
def catalogue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Catalogue]:
    # A fresh site id per test keeps tests apart on a shared PostgreSQL database.
    site = f"site-{uuid.uuid4().hex[:10]}"
    if request.param == "sqlite-file":
        url = f"sqlite:///{tmp_path / 'catalogue.sqlite'}"
    elif request.param == "sqlite-memory":
        url = "sqlite://"
    else:
        url = request.getfixturevalue("postgres_url")
    cat = Catalogue(url, site)
    yield cat
    cat.close()


T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def _clip(
    n: int,
    *,
    vin: str = "LSVAB12C2SS140891",
    consent: bool = True,
    sha: str | None = None,
    simulated: bool = False,
) -> ClipRecord:
    start = T0 + timedelta(minutes=n)
    return ClipRecord(
        clip_id=f"clip-{n}",
        sha256=sha or f"{n:064x}",
        path=f"clips/00/{n:064x}.parquet",
        vin=vin,
        vehicle_model="Model S",
        trigger="hard_brake" if n % 2 else "random_sample",
        consent_training=consent,
        recorded_in="cn-shanghai",
        start_time=start,
        end_time=start + timedelta(seconds=20),
        rows=200,
        objects=1500,
        bytes=40_000,
        min_lat=31.2,
        max_lat=31.3,
        min_lon=121.4,
        max_lon=121.5,
        source_sha256=f"{n:064x}",
        simulated=simulated,
    )


def _file(n: int, clips: int = 1) -> FileRecord:
    return FileRecord(f"{n:064x}", f"/in/{n}.mcap", 1000 + n, "ingested", clips=clips)


def test_register_then_read_back(catalogue: Catalogue) -> None:
    new = catalogue.register(_file(1, 2), [_clip(1), _clip(2, vin="1FAHP3F21CL123456")])
    assert new == ["clip-1", "clip-2"]
    clip = catalogue.clip("clip-1")
    assert clip is not None and clip.start_time == T0 + timedelta(minutes=1)
    assert clip.start_time.tzinfo is not None and clip.consent_training is True
    assert [c.clip_id for c in catalogue.clips()] == ["clip-1", "clip-2"]
    file = catalogue.file(f"{1:064x}")
    assert file is not None and file.status == "ingested" and file.clips == 2
    assert catalogue.clip("nope") is None and catalogue.file("0" * 64) is None


def test_register_is_idempotent(catalogue: Catalogue) -> None:
    catalogue.register(_file(1), [_clip(1)])
    assert catalogue.register(_file(1), [_clip(1)]) == []
    assert len(catalogue.clips()) == 1
    assert catalogue.inventory()["files"]["ingested"] == 1


def test_conflicting_clip_records_nothing(catalogue: Catalogue) -> None:
    catalogue.register(_file(1), [_clip(1)])
    with pytest.raises(ClipConflict, match="clip-1 is already stored"):
        catalogue.register(_file(2, 2), [_clip(3), _clip(1, sha="f" * 64)])
    assert [c.clip_id for c in catalogue.clips()] == ["clip-1"], "the transaction rolled back"
    assert catalogue.file(f"{2:064x}") is None


def test_quarantine_record_replaces_nothing_else(catalogue: Catalogue) -> None:
    catalogue.register(_file(1), [_clip(1)])
    catalogue.record_quarantine(
        FileRecord(
            "a" * 64,
            "/in/bad.mcap",
            0,
            "quarantined",
            error_code="clip.unreadable",
            reason="empty",
            quarantine_path="quarantine/x",
        )
    )
    assert [f.path for f in catalogue.files("quarantined")] == ["/in/bad.mcap"]
    assert len(catalogue.files()) == 2


def test_inventory(catalogue: Catalogue) -> None:
    empty = catalogue.inventory()
    assert empty["clips"] == 0 and empty["time_range"] == {"start": None, "end": None}
    assert empty["consent"]["training_share_of_clips"] is None
    catalogue.register(
        _file(1, 3), [_clip(1), _clip(2, consent=False), _clip(3, vin="1FAHP3F21CL123456")]
    )
    inv = catalogue.inventory()
    assert (inv["clips"], inv["vehicles"], inv["rows"], inv["bytes"]) == (3, 2, 600, 120_000)
    assert inv["time_range"]["start"] == (T0 + timedelta(minutes=1)).isoformat()
    assert inv["time_range"]["end"] == (T0 + timedelta(minutes=3, seconds=20)).isoformat()
    assert inv["consent"]["training_share_of_clips"] == round(2 / 3, 4)
    assert inv["consent"]["training_share_of_vehicles"] == 1.0
    assert inv["triggers"] == {"hard_brake": 2, "random_sample": 1}


def test_clip_origins_count_simulated_and_recorded_clips(catalogue: Catalogue) -> None:
    assert catalogue.clip_origins() == {"simulated": 0, "recorded": 0}
    catalogue.register(_file(1, 3), [_clip(1, simulated=True), _clip(2, simulated=True), _clip(3)])
    assert catalogue.clip_origins() == {"simulated": 2, "recorded": 1}
    assert [c.simulated for c in catalogue.clips()] == [True, True, False]
    one, three = catalogue.clip("clip-1"), catalogue.clip("clip-3")
    assert one is not None and one.simulated is True
    assert three is not None and three.simulated is False


def _output(n: int, profile: str, *, consent: bool = True) -> DeidentifiedRecord:
    return DeidentifiedRecord(
        profile=profile,
        clip_id=f"clip-{n}",
        source_sha256=f"{n:064x}",
        output_id=f"{n:016x}",
        path=f"deidentified/{profile}/{n}.parquet",
        sha256=f"{n:064x}",
        state="pseudonymized" if profile == "training" else "anonymized",
        consent_training=consent,
        rows=150,
        rows_in=200,
        detail="{}",
    )


def test_dataset_totals_are_kept_by_every_write(catalogue: Catalogue) -> None:
    other = "1FAHP3F21CL123456"
    assert catalogue.dataset_totals()["clips"] == 0  # kept from here on
    catalogue.register(
        _file(1, 3), [_clip(1), _clip(2, vin=other), _clip(3, vin=other, consent=False)]
    )
    raw = catalogue.dataset_totals()
    assert (raw["clips"], raw["vehicles"], raw["rows"], raw["bytes"]) == (2, 2, 400, 80_000)
    catalogue.replace_labels(
        ["clip-1", "clip-2", "clip-3"],
        [
            LabelRecord("clip-1", "trajectory", 200, "positions"),
            LabelRecord("clip-2", "trajectory", 200, "positions"),
            LabelRecord("clip-3", "trajectory", 200, "positions"),
            LabelRecord("clip-2", "outside_video_identifiable", 3, "faces"),
        ],
    )
    categories = catalogue.dataset_totals()["categories"]
    assert categories["trajectory"] == {"clips": 2, "vehicles": 2, "count": 400}
    assert categories["outside_video_identifiable"] == {"clips": 1, "vehicles": 1, "count": 3}
    catalogue.replace_deidentified(
        "training", [_output(1, "training"), _output(3, "training", consent=False)]
    )
    training = catalogue.dataset_totals("training")
    assert (training["clips"], training["vehicles"], training["outputs"]) == (1, 1, 2)
    assert training["states"] == {"pseudonymized": 1}
    assert training["categories"] == {"trajectory": {"clips": 1, "vehicles": 1, "count": 200}}
    # Labels changed again: the raw dataset and the profile's both move.
    catalogue.replace_labels(["clip-1"], [])
    assert catalogue.dataset_totals()["categories"]["trajectory"]["vehicles"] == 1
    assert catalogue.dataset_totals("training")["categories"] == {}
    catalogue.register(_file(4), [_clip(4)])
    assert catalogue.dataset_totals()["clips"] == 3
    assert catalogue.dataset_totals()["vehicles"] == 2
    # A clip's camera frames count in its bytes, registered with it in one transaction.
    frames = FramesRecord("clip-5", "e" * 64, "frames/5.tar", 7_000, 20, "front:20")
    catalogue.register(_file(5), [_clip(5)], [frames])
    assert catalogue.dataset_totals()["bytes"] == 4 * 40_000 + 7_000


def test_a_vehicle_is_counted_once(catalogue: Catalogue) -> None:
    catalogue.register(_file(5), [_clip(5)])
    catalogue.register(_file(1), [_clip(1)])
    catalogue.register(_file(9), [_clip(9)])
    assert catalogue.inventory()["vehicles"] == 1


def test_sites_sharing_a_database_do_not_see_each_other(catalogue: Catalogue) -> None:
    catalogue.register(_file(1), [_clip(1)])
    other = Catalogue(_raw_url(catalogue), catalogue.site + "-other")
    try:
        if catalogue.url == "sqlite://":
            pytest.skip("each in-memory SQLite engine is its own database")
        assert other.clips() == [] and other.inventory()["clips"] == 0
        other.register(_file(1), [_clip(1)])
        assert len(catalogue.clips()) == 1
    finally:
        other.close()


def _raw_url(catalogue: Catalogue) -> str:
    return catalogue._engine.url.render_as_string(hide_password=False)


def test_bad_urls_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a SQLAlchemy URL"):
        Catalogue("not a url", "s")
    with pytest.raises(CatalogueError, match="cannot open catalogue"):
        Catalogue(f"sqlite:///{tmp_path}/missing/dir/c.sqlite", "s")


def test_an_unreachable_catalogue_is_said_promptly_without_its_password() -> None:
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    password = f"pw-{uuid.uuid4().hex}"
    url = f"postgresql+psycopg://onshore:{password}@127.0.0.1:{port}/onshore"
    started = time.monotonic()
    with pytest.raises(CatalogueError) as caught:
        Catalogue(url, "s")
    assert time.monotonic() - started < 15
    error = caught.value
    assert error.message.startswith(
        f"cannot reach catalogue postgresql+psycopg://onshore:***@127.0.0.1:{port}/onshore"
    )
    assert "refused" in error.message.lower() and "database server" in (error.hint or "")
    assert password not in str(error) and password not in repr(error.to_dict())


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    from sqlalchemy import create_engine, text

    url = f"sqlite:///{tmp_path / 'c.sqlite'}"
    Catalogue(url, "s").close()
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("update onshore_meta set value = '99' where key = 'schema'"))
    engine.dispose()
    with pytest.raises(CatalogueError, match="schema version 99"):
        Catalogue(url, "s")


# --- catalogues made by an earlier onshore --------------------------------------------------

_V1 = MetaData()
_V1_CLIPS = Table(
    "clips",
    _V1,
    Column("site", String(64), primary_key=True),
    Column("clip_id", String(200), primary_key=True),
    Column("sha256", String(64), nullable=False, index=True),
    Column("path", Text, nullable=False),
    Column("vin", String(17), nullable=False, index=True),
    Column("vehicle_model", Text, nullable=False),
    Column("trigger", String(32), nullable=False),
    Column("consent_training", Boolean, nullable=False),
    Column("recorded_in", String(64), nullable=False),
    Column("start_time", DateTime(timezone=True), nullable=False),
    Column("end_time", DateTime(timezone=True), nullable=False),
    Column("rows", Integer, nullable=False),
    Column("objects", Integer, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("min_lat", Float, nullable=False),
    Column("max_lat", Float, nullable=False),
    Column("min_lon", Float, nullable=False),
    Column("max_lon", Float, nullable=False),
    Column("source_sha256", String(64), nullable=False),
    Column("ingested_at", DateTime(timezone=True), nullable=False),
)
"""The clips table as onshore created it before clips said whether a simulator made them."""
_V1_META = Table(
    "onshore_meta",
    _V1,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)


def _v1_row(site: str, n: int) -> dict[str, object]:
    record = _clip(n)
    names = [column.name for column in _V1_CLIPS.columns if column.name != "site"]
    return {**{name: getattr(record, name) for name in names}, "site": site, "ingested_at": T0}


@pytest.fixture(params=["sqlite-file", "postgres"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a new SQLite file, or a new schema in the PostgreSQL database (an old
    layout built there must not meet the tables the other tests share)."""
    if request.param == "sqlite-file":
        yield f"sqlite:///{tmp_path / 'old.sqlite'}"
        return
    base = make_url(request.getfixturevalue("postgres_url"))
    schema = f"old_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        url = base.update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def _v1_catalogue(url: str, site: str, clips: int) -> None:
    """Make at ``url`` the catalogue an earlier onshore left: no ``simulated`` column."""
    engine = create_engine(url)
    try:
        _V1.create_all(engine)
        with engine.begin() as conn:
            conn.execute(_V1_META.insert().values(key="schema", value="1"))
            conn.execute(_V1_CLIPS.insert(), [_v1_row(site, n) for n in range(1, clips + 1)])
    finally:
        engine.dispose()


def _clip_columns(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return {column["name"] for column in inspect(conn).get_columns("clips")}
    finally:
        engine.dispose()


def test_an_old_catalogue_gains_the_simulated_column_and_keeps_its_clips(
    empty_database: str,
) -> None:
    _v1_catalogue(empty_database, "old-site", clips=2)
    assert "simulated" not in _clip_columns(empty_database)
    catalogue = Catalogue(empty_database, "old-site")
    try:
        assert "simulated" in _clip_columns(empty_database)
        old = catalogue.clips()
        assert [(c.clip_id, c.simulated) for c in old] == [("clip-1", False), ("clip-2", False)]
        assert old[0].start_time == T0 + timedelta(minutes=1) and old[0].consent_training
        catalogue.register(_file(3), [_clip(3, simulated=True)])
        assert catalogue.clip_origins() == {"simulated": 1, "recorded": 2}
    finally:
        catalogue.close()
    # An older onshore still writing to it leaves the column out: its clips count as recorded.
    engine = create_engine(empty_database)
    with engine.begin() as conn:
        conn.execute(_V1_CLIPS.insert(), [_v1_row("old-site", 4)])
    engine.dispose()
    again = Catalogue(empty_database, "old-site")
    try:
        assert again.clip_origins() == {"simulated": 1, "recorded": 3}
    finally:
        again.close()


def test_many_processes_may_open_an_old_catalogue_at_once(tmp_path: Path) -> None:
    import threading

    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    _v1_catalogue(url, "s0", clips=3)
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []

    def open_it(n: int) -> None:
        barrier.wait()
        try:
            Catalogue(url, f"s{n}").close()
        except BaseException as exc:  # collected and asserted on below
            errors.append(exc)

    threads = [threading.Thread(target=open_it, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    catalogue = Catalogue(url, "s0")
    try:
        assert catalogue.clip_origins() == {"simulated": 0, "recorded": 3}
    finally:
        catalogue.close()


def test_many_processes_may_open_a_new_catalogue_at_once(tmp_path: Path) -> None:
    import threading

    url = f"sqlite:///{tmp_path / 'new.sqlite'}"
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []

    def open_it(n: int) -> None:
        barrier.wait()
        try:
            Catalogue(url, f"s{n}").close()
        except BaseException as exc:  # collected and asserted on below
            errors.append(exc)

    threads = [threading.Thread(target=open_it, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_clip_pages_list_every_clip_once_in_order(catalogue: Catalogue) -> None:
    # Two vehicles, clips out of order and two starting at once (the clip id breaks the tie);
    # pages of two, so every page boundary falls inside a run of equal keys somewhere.
    vins = ("LSVAB12C2SS140891", "1FAHP3F21CL123456")
    clips = [_clip(n, vin=vins[n % 2]) for n in (5, 1, 4, 2, 3, 6, 7)]
    clips.append(replace(_clip(8, vin=vins[0]), start_time=clips[0].start_time))
    catalogue.register(_file(1, len(clips)), clips)
    assert catalogue.clip_count() == len(clips)
    assert catalogue.clip_vins() == frozenset(vins)
    by_time = [c for page in catalogue.clip_pages(size=2) for c in page]
    assert by_time == catalogue.clips()
    order = [c.clip_id for c in by_time]
    assert order == [f"clip-{n}" for n in (1, 2, 3, 4, 5, 8, 6, 7)]
    by_vin = [c for page in catalogue.clip_pages(by="vin", size=3) for c in page]
    assert by_vin == sorted(by_time, key=lambda c: (c.vin, c.start_time, c.clip_id))
    assert all(len(page) <= 3 for page in catalogue.clip_pages(by="vin", size=3))


def test_a_page_of_clips_is_filtered_sorted_and_counted_by_the_database(
    catalogue: Catalogue,
) -> None:
    vins = ("LSVAB12C2SS140891", "1FAHP3F21CL123456", "LSVZZ12C2SS000001")
    clips = [
        replace(_clip(n, vin=vins[n % 3], consent=n % 4 != 0), bytes=40_000 + (n * 37) % 1000)
        for n in range(60)
    ]
    catalogue.register(_file(1, len(clips)), clips)
    catalogue.replace_labels(
        [c.clip_id for c in clips],
        [LabelRecord(c.clip_id, "trajectory", 200, "positions") for c in clips[::5]],
    )

    def expect(keep: Callable[[ClipRecord], bool], key: Callable[[ClipRecord], Any]) -> list[str]:
        return [c.clip_id for c in sorted(filter(keep, clips), key=lambda c: (key(c), c.clip_id))]

    page, total = catalogue.clip_page(limit=7)
    assert total == 60 and [c.clip_id for c in page] == expect(bool, lambda c: c.start_time)[:7]
    page, total = catalogue.clip_page(label="trajectory", limit=100)
    assert total == 12 and {c.clip_id for c in page} == {c.clip_id for c in clips[::5]}
    page, total = catalogue.clip_page(consent=False, vin="lsva", sort="bytes", limit=100)
    wanted = expect(
        lambda c: not c.consent_training and c.vin.startswith("LSVA"), lambda c: c.bytes
    )
    assert total == len(wanted) and [c.clip_id for c in page] == wanted
    page, total = catalogue.clip_page(
        trigger="hard_brake", sort="vin", descending=True, offset=5, limit=5
    )
    wanted = expect(lambda c: c.trigger == "hard_brake", lambda c: c.vin)[::-1]
    assert total == 30 and [c.clip_id for c in page] == wanted[5:10]
    assert catalogue.clip_page(vin="%", limit=5) == ([], 0)  # a LIKE wildcard is a character


def test_forgetting_a_vehicle_leaves_nothing_of_it_and_keeps_the_totals(
    catalogue: Catalogue,
) -> None:
    gone, kept = "LSVAB12C2SS140891", "1FAHP3F21CL123456"
    catalogue.register(_file(1, 2), [_clip(1, vin=gone), _clip(2, vin=gone)])
    catalogue.register(_file(3), [_clip(3, vin=kept)])
    catalogue.replace_deidentified("training", [_output(n, "training") for n in (1, 2, 3)])
    before = catalogue.dataset_totals()  # kept from here on by every write
    with catalogue.transaction() as conn:
        catalogue.withdraw_consent(conn, gone, "training", 7)
    assert catalogue.withdrawn_vins("adas_training") == {gone}
    assert catalogue.withdrawn_vins("remote_query") == frozenset()
    with catalogue.transaction() as conn:
        catalogue.forget_clips(conn, ["clip-1", "clip-2"])
        catalogue.drop_withdrawals(conn, gone)
    assert catalogue.scrub() is True
    assert [c.vin for c in catalogue.clips()] == [kept]
    assert [d.clip_id for d in catalogue.deidentified()] == ["clip-3"]
    assert catalogue.withdrawals() == []
    assert catalogue.inventory()["vehicles"] == 1
    file = catalogue.file(f"{1:064x}")
    assert file is not None and file.status == "erased" and file.path == ""
    assert f"{1:064x}" in catalogue.ingested_files(), "an erased upload is not ingested again"
    after = catalogue.dataset_totals()
    assert after["vehicles"] == before["vehicles"] - 1 == 1
    assert after["clips"] == before["clips"] - 2


def test_outputs_keep_their_first_storage_date_and_outlive_their_raw_clip(
    catalogue: Catalogue,
) -> None:
    catalogue.register(_file(1), [_clip(1)])
    catalogue.replace_deidentified("training", [_output(1, "training")])
    (first,) = catalogue.outputs_stored_before(datetime.now(UTC) + timedelta(days=1))
    assert catalogue.clips_stored_before(datetime.now(UTC) - timedelta(days=1)) == []
    with catalogue.transaction() as conn:
        catalogue.forget_clips(conn, ["clip-1"], keep_outputs=True, status="expired")
    # A rerun of de-identification (no raw clip left, so no output of it) keeps the output.
    catalogue.replace_deidentified("training", [])
    assert [d.clip_id for d in catalogue.deidentified("training")] == ["clip-1"]
    file = catalogue.file(f"{1:064x}")
    assert file is not None and file.status == "expired"
    with catalogue.transaction() as conn:
        catalogue.forget_outputs(conn, [first])
    assert catalogue.deidentified() == []
