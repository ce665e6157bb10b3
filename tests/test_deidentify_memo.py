"""The check on masked frames, kept in the store: read back for the very same image, and
ignored, so that the check runs again, when it was not written with the site's secret."""

from __future__ import annotations

from pathlib import Path
from unittest.mock import patch

import numpy as np
import orjson

from onshore.clips.camera import encode_jpeg
from onshore.deidentify.frames import CHECK, check_masked
from onshore.deidentify.video import CheckMemo
from onshore.store.objects import ObjectStore

SECRET = b"s" * 32


def _image(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return encode_jpeg(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8))


def _checked(memo: CheckMemo, image: bytes) -> tuple[tuple[bool, int], int]:
    """The memo's answer, and how many times the detectors ran for it."""
    with patch("onshore.deidentify.video.check_masked", wraps=check_masked) as run:
        answer = memo.check(image, CHECK, "test image")
    return answer, run.call_count


def test_a_result_is_read_back_for_the_same_image_only(tmp_path: Path) -> None:
    store = ObjectStore(str(tmp_path / "store"))
    first = CheckMemo(store, SECRET)
    answer, runs = _checked(first, _image(1))
    assert answer == (True, 0) and runs == 1
    store.put_many(first.take())
    assert first.take() == []
    again = CheckMemo(store, SECRET)
    assert _checked(again, _image(1)) == ((True, 0), 0)
    assert _checked(again, _image(2))[1] == 1, "another image is checked"


def test_a_result_not_written_with_the_site_secret_is_ignored(tmp_path: Path) -> None:
    store = ObjectStore(str(tmp_path / "store"))
    forger = CheckMemo(store, b"not the site's secret".ljust(32))
    _checked(forger, _image(3))
    store.put_many(forger.take())
    memo = CheckMemo(store, SECRET)
    assert _checked(memo, _image(3)) == ((True, 0), 1)


def test_an_edited_result_is_ignored(tmp_path: Path) -> None:
    store = ObjectStore(str(tmp_path / "store"))
    memo = CheckMemo(store, SECRET)
    _checked(memo, _image(4))
    ((path, data),) = memo.take()
    kept = orjson.loads(data)
    # Claiming a finding keeps the MAC of "nothing found": it no longer verifies.
    store.put(path, orjson.dumps({**kept, "held": False, "findings": 1}))
    assert _checked(CheckMemo(store, SECRET), _image(4)) == ((True, 0), 1)
