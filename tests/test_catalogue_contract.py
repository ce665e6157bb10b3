"""One contract suite for the catalogue, run against every backend: SQLite on disk, SQLite in
memory, and PostgreSQL (CI starts one; set ONSHORE_TEST_POSTGRES_URL to run it locally)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from onshore.errors import CatalogueError, ClipConflict, ConfigError
from onshore.store.catalogue import Catalogue, ClipRecord, FileRecord


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
    n: int, *, vin: str = "LSVAB12C2SS140891", consent: bool = True, sha: str | None = None
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
