"""One contract suite for the object store, on a local folder and on fsspec's memory store."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from onshore.errors import StoreError
from onshore.store.objects import ObjectStore, sha256


@pytest.fixture(params=["local", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "local":
        yield ObjectStore(str(tmp_path / "store"))
    else:
        url = f"memory://onshore-test-{uuid.uuid4().hex}"
        yield ObjectStore(url)
        import fsspec

        with contextlib.suppress(FileNotFoundError):
            fsspec.filesystem("memory").rm(url.removeprefix("memory://"), recursive=True)


def test_put_is_content_addressed_and_idempotent(store: ObjectStore) -> None:
    data = b"clip bytes"
    path = ObjectStore.clip_path(sha256(data))
    first = store.put(path, data)
    second = store.put(path, data)
    assert first.written and not second.written
    assert store.read(path) == data and store.size(path) == len(data)
    assert list(store.clip_digests()) == [(sha256(data), path)]


def test_find_lists_sorted_paths_below_a_prefix(store: ObjectStore) -> None:
    for name in ("b", "a", "c"):
        store.put(f"clips/x/{name}.parquet", name.encode())
    store.put("other/z", b"z")
    assert list(store.find("clips")) == [f"clips/x/{n}.parquet" for n in "abc"]
    assert list(store.find("nothing")) == []


def test_reading_a_missing_object_names_it(store: ObjectStore) -> None:
    with pytest.raises(StoreError, match="clips/none is not in store"):
        store.read("clips/none")
    assert not store.exists("clips/none")


def test_quarantine_keeps_file_and_reason(store: ObjectStore, tmp_path: Path) -> None:
    source = tmp_path / "bad file.mcap"
    source.write_bytes(b"\0\1")
    where = store.quarantine_file(source, sha256(b"\0\1"), {"reason": "truncated"})
    assert where.endswith("bad_file.mcap") and store.read(where) == b"\0\1"
    assert b"truncated" in store.read(where + ".reason.json")
    again = store.quarantine_file(source, sha256(b"\0\1"), {"reason": "again"})
    assert again == where and b"truncated" in store.read(where + ".reason.json")


def test_delete(store: ObjectStore) -> None:
    store.put("a/b", b"1")
    store.delete("a/b")
    store.delete("a/b")
    assert not store.exists("a/b")


def test_a_dead_writer_s_partial_file_is_never_a_clip(tmp_path: Path) -> None:
    store = ObjectStore(str(tmp_path / "s"))
    staging = tmp_path / "s" / ".staging"
    staging.mkdir(parents=True)
    (staging / "999999999-dead.part").write_bytes(b"half")
    assert store.staging_leftovers() == [".staging/999999999-dead.part"]
    assert list(store.clip_digests()) == []
    assert store.clean_staging() == 1 and store.staging_leftovers() == []
