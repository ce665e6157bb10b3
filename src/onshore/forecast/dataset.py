"""Forecasting samples built at a site from its de-identified ``training`` outputs.

A sample is one moment of one drive: the ego's last 2 s (20 steps at 10 Hz), the objects it
tracked at the last of those steps, and, as the target, its next 3 s (30 steps). Everything is
expressed in the sample's own frame (origin at the last past position, x along the heading
there, y to its left), so no sample carries where or when it was recorded, only how the vehicle
moved.

Only outputs of the ``training`` profile are read, and of them only the clips whose driver
consented to training, by both the catalogue and the output's own record, and has not withdrawn
that consent since (``onshore consent withdraw``, for any training purpose): a clip without
consent never reaches a model. A window must be 50 rows of one clip, 0.1 s apart: rows dropped
inside sensitive areas or at trip ends leave gaps in time, and no window spans one. The split into
train and test is by vehicle (the output's keyed vehicle pseudonym, hashed), so no vehicle is on
both sides, and both stay at the site.

Windows, frames and the nearest objects are found with NumPy over the rows of a batch of
outputs at once, by the site's engine's workers (:mod:`onshore.sites.compute`); no Python loop
runs per sample, and the windows are those, in the same order, that all rows at once would
give. The built arrays are cached in the site's store under
``derived/forecasting/``, keyed by the hash of the outputs read, their consent and the
configuration, so a rerun on unchanged data reads one object.
"""

from __future__ import annotations

import hashlib
import io
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence, Set
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Final

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from onshore.clips.schema import CLASS_ARRAY, OBJECT_CLASSES
from onshore.deidentify.run import read_output
from onshore.sites.compute import Engine
from onshore.store.catalogue import DeidentifiedRecord
from onshore.store.objects import ObjectStore
from onshore.store.site import SiteStore

__all__ = [
    "CACHE_DIR",
    "FUNNEL",
    "OBJECT_FEATURES",
    "PAST_FEATURES",
    "DatasetConfig",
    "Samples",
    "SiteDataset",
    "build_site_dataset",
    "funnel",
    "samples_from_outputs",
]

DT: Final = 0.1
"""Seconds between two steps of a clip (10 Hz)."""
CACHE_DIR: Final = "derived/forecasting"
_FORMAT: Final = 3
"""Version of the cached arrays' layout and split: bump it when features or the split change,
so old caches go unused."""

PAST_FEATURES: Final = (
    "x",
    "y",
    "vx",
    "vy",
    "cos_heading",
    "sin_heading",
    "accel",
    "yaw_rate",
    "steering",
    "brake",
)
"""Per past step, in the sample's frame: position (m), velocity from speed and heading (m/s),
heading as cosine and sine, acceleration (m/s^2), yaw rate (rad/s, counter-clockwise),
steering (rad) and brake (0..1; 0 where the vehicle does not report them)."""

OBJECT_FEATURES: Final = (
    "x",
    "y",
    "vx",
    "vy",
    "distance",
    "in_path",
    "time_to_reach",
    *(f"is_{c}" for c in OBJECT_CLASSES),
)
"""Per tracked object at the last past step: position and velocity relative to the ego in the
sample's frame (which is the ego frame at that step), distance, whether it is ahead within half
a lane width of the ego's line, the seconds until the ego closes the gap at the present closing
speed (capped at 10; 10 when not closing), and its class one-hot."""
_LANE_HALF_WIDTH_M: Final = 1.8
_MAX_TIME_S: Final = 10.0


@dataclass(frozen=True, slots=True)
class DatasetConfig:
    """How samples are cut from a site's drives."""

    past_steps: int = 20
    """Steps of history (20 = 2 s at 10 Hz)."""
    future_steps: int = 30
    """Steps to predict (30 = 3 s)."""
    max_objects: int = 8
    """Nearest tracked objects kept per sample; fewer are padded and masked out."""
    stride: int = 1
    """Steps between the starts of two windows of the same clip."""
    test_share: float = 0.2
    """Share of vehicles held out for testing (by hash of their pseudonym). Vehicles drive
    unequal amounts, so on a small fleet the hash alone can leave one side with few samples:
    each side then takes the vehicles nearest the line until it holds at least half its share
    of the samples (:func:`_test_side`)."""
    profile: str = "training"
    """The de-identification profile read; its outputs must carry a vehicle pseudonym."""

    def __post_init__(self) -> None:
        if self.past_steps < 2 or self.future_steps < 1 or self.stride < 1:
            raise ValueError("past_steps >= 2, future_steps >= 1 and stride >= 1")
        if self.max_objects < 1 or not 0 < self.test_share < 1:
            raise ValueError("max_objects >= 1 and 0 < test_share < 1")


@dataclass(frozen=True, slots=True)
class Samples:
    """Forecasting samples as float32 arrays, one row per sample."""

    past: NDArray[np.float32]
    """(N, past_steps, len(PAST_FEATURES))"""
    objects: NDArray[np.float32]
    """(N, max_objects, len(OBJECT_FEATURES)), nearest first; padding is zeros."""
    object_mask: NDArray[np.bool_]
    """(N, max_objects): which object slots hold an object."""
    future: NDArray[np.float32]
    """(N, future_steps, 2): the ego's positions to predict."""

    def __len__(self) -> int:
        return int(self.past.shape[0])

    def take(self, index: NDArray[np.intp] | NDArray[np.bool_]) -> Samples:
        """The samples at ``index`` (positions or a mask)."""
        return Samples(
            self.past[index], self.objects[index], self.object_mask[index], self.future[index]
        )

    def slice(self, start: int, stop: int) -> Samples:
        """The samples from ``start`` up to ``stop`` (views of these arrays)."""
        return Samples(
            self.past[start:stop],
            self.objects[start:stop],
            self.object_mask[start:stop],
            self.future[start:stop],
        )

    @staticmethod
    def concat(parts: Sequence[Samples], config: DatasetConfig) -> Samples:
        """The samples of ``parts``, one after the other."""
        if not parts:
            return Samples.empty(config)
        return Samples(
            np.concatenate([p.past for p in parts]),
            np.concatenate([p.objects for p in parts]),
            np.concatenate([p.object_mask for p in parts]),
            np.concatenate([p.future for p in parts]),
        )

    @staticmethod
    def empty(config: DatasetConfig) -> Samples:
        return Samples(
            np.zeros((0, config.past_steps, len(PAST_FEATURES)), np.float32),
            np.zeros((0, config.max_objects, len(OBJECT_FEATURES)), np.float32),
            np.zeros((0, config.max_objects), np.bool_),
            np.zeros((0, config.future_steps, 2), np.float32),
        )


@dataclass(frozen=True, slots=True)
class SiteDataset:
    """A site's samples, split by vehicle, and where they came from."""

    site: str
    config: DatasetConfig
    train: Samples
    test: Samples
    info: dict[str, Any] = field(default_factory=dict)
    """Counts: outputs read, clips used and refused for lack of consent, vehicles on each side,
    the cache key and whether the cache answered, and the ``funnel`` (see :func:`funnel`)."""


def _fraction(vehicle: str) -> float:
    digest = hashlib.sha256(f"onshore.split:{vehicle}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def build_site_dataset(
    site: SiteStore,
    config: DatasetConfig | None = None,
    *,
    cache: bool = True,
    engine: Engine | None = None,
) -> SiteDataset:
    """The forecasting samples of ``site``, from its de-identified outputs of
    ``config.profile`` whose clips the driver consented to training.

    Reads the cached arrays when the outputs, their consent and ``config`` are unchanged since
    they were built, else builds them and caches them in the site's store: ``engine``'s workers
    read the outputs and cut their windows (in this process by default), this process splits
    them by vehicle. Returns the dataset, possibly with no samples; training refuses an empty
    one with :class:`NoTrainingData`.
    """
    config = config or DatasetConfig()
    records = [r for r in site.catalogue.deidentified(config.profile) if r.state != "raw"]
    withdrawn = site.catalogue.withdrawn_vins("training")
    if withdrawn:
        # A driver who withdrew consent for training is, from then on, one who never gave it.
        gone = {c.clip_id for c in site.catalogue.clips_of(sorted(withdrawn))}
        records = [
            replace(r, consent_training=False) if r.clip_id in gone or r.vin in withdrawn else r
            for r in records
        ]
    key = _cache_key(records, config)
    folder = f"{CACHE_DIR}/{_config_digest(config)}"
    path = f"{folder}/{key}.npz"
    if cache and site.objects.exists(path):
        train, test, info = _load(site.objects.read(path))
        # What the outputs hold is cached with the samples (the cache key covers them, and
        # every cache of this format holds the funnel); what the site recorded may have grown
        # since, so only that is read again.
        cached = {**info["funnel"], **_recorded(site.catalogue.clip_totals())}
        info = {**info, "cache": key, "cached": True, "funnel": cached}
        return SiteDataset(site.site, config, train, test, info)
    consented: dict[str, set[str]] = {}
    rows: dict[str, int] = defaultdict(int)
    for record in records:
        if record.consent_training:
            consented.setdefault(record.path, set()).add(record.output_id)
            rows[record.path] += record.rows
    # Each output's place among the rows of all, as the catalogue counts them: the stride
    # counts from the first row of all (see _placed for when an output disagrees).
    outputs: list[_Output] = []
    offset = 0
    for output in sorted({r.path for r in records}):
        outputs.append(_Output(output, frozenset(consented.get(output, ())), offset))
        offset += rows[output]
    cuts = (engine or Engine()).map(
        _CutOutputs, (site.objects, config), outputs, batch_size=_WORKER_OUTPUTS
    )
    train, test, info = _split(_placed(cuts, outputs, site.objects, config), config)
    info["clips_in_catalogue"] = len(records)
    info["funnel"] = funnel(site.catalogue.clip_totals(), records, info)
    if cache:
        site.objects.put(path, _dump(train, test, info))
        for stale in site.objects.find(folder):
            if stale != path:
                site.objects.delete(stale)
    return SiteDataset(site.site, config, train, test, {**info, "cache": key, "cached": False})


FUNNEL: Final = (
    "clips_recorded",
    "clips_consented",
    "clips_kept",
    "positions_recorded",
    "positions_consented",
    "positions_trimmed",
    "positions_in_zones",
    "positions_kept",
    "samples_train",
    "samples_test",
)
"""The steps of the funnel, in the order data passes them."""


def funnel(
    totals: Mapping[str, int], records: Sequence[DeidentifiedRecord], info: Mapping[str, Any]
) -> dict[str, int]:
    """Where a site's data goes on its way to training samples (see :data:`FUNNEL`): the clips
    and positions it holds (``totals``, from :meth:`Catalogue.clip_totals`), those whose driver
    consented to training, the consented clips of which de-identification kept any position,
    the consented positions the trip-end trim and the sensitive areas removed and those kept,
    and the samples cut from them on each side of the split."""
    consented = [r for r in records if r.consent_training]
    removed: dict[str, int] = defaultdict(int)
    for record in consented:
        try:
            transforms = orjson.loads(record.detail).get("removed", {})
        except (orjson.JSONDecodeError, AttributeError):
            transforms = {}
        for name, count in transforms.items() if isinstance(transforms, dict) else ():
            if isinstance(count, int):
                removed[name] += count
    recorded = _recorded(totals)
    return {
        "clips_recorded": recorded["clips_recorded"],
        "clips_consented": recorded["clips_consented"],
        "clips_kept": sum(r.rows > 0 for r in consented),
        "positions_recorded": recorded["positions_recorded"],
        "positions_consented": recorded["positions_consented"],
        "positions_trimmed": removed["trim_ends"],
        "positions_in_zones": removed["drop_zones"],
        "positions_kept": sum(r.rows for r in consented),
        "samples_train": int(info.get("train", 0)),
        "samples_test": int(info.get("test", 0)),
    }


def _recorded(totals: Mapping[str, int]) -> dict[str, int]:
    """The funnel's steps that count what the site holds, from :meth:`Catalogue.clip_totals`."""
    return {
        "clips_recorded": totals["clips"],
        "clips_consented": totals["consented_clips"],
        "positions_recorded": totals["rows"],
        "positions_consented": totals["consented_rows"],
    }


def samples_from_outputs(
    outputs: Iterable[tuple[bytes, set[str]]], config: DatasetConfig
) -> tuple[Samples, Samples, dict[str, Any]]:
    """Train and test samples from de-identified outputs, each given as its Parquet bytes and
    the pseudonyms of its clips that the catalogue says may train a model.

    A clip is used only if it is in that set *and* the output's own record says its driver
    consented; every other row is dropped before any window is cut. Returns the two splits and
    counts of what was used.
    """
    kept = [_kept(data, allowed) for data, allowed in outputs]
    offsets = np.cumsum([0] + [k.table.num_rows for k in kept])[:-1]
    pieces = _cut([k.table for k in kept], offsets.tolist(), config)
    return _split((k.cut(samples) for k, samples in zip(kept, pieces, strict=True)), config)


_WORKER_OUTPUTS: Final = 64
"""Outputs a worker reads and cuts at a time (their windows found with NumPy at once)."""


@dataclass(frozen=True, slots=True)
class _Output:
    """One de-identified output for a worker: where it is stored, which of its clips the
    catalogue lets train, and how many rows of the outputs before it are kept."""

    path: str
    allowed: frozenset[str]
    offset: int


@dataclass(frozen=True, slots=True)
class _Cut:
    """The samples of one output, and what was used of it."""

    rows: int
    """Rows kept (of clips that may train)."""
    used: frozenset[str]
    refused: frozenset[str]
    """Clips of the output whose driver did not consent, by the catalogue or the output."""
    vehicle: str
    samples: Samples


@dataclass(frozen=True, slots=True)
class _Kept:
    """The rows of one output that may train, before any window is cut."""

    table: pa.Table
    used: frozenset[str]
    refused: frozenset[str]
    vehicle: str

    def cut(self, samples: Samples) -> _Cut:
        return _Cut(self.table.num_rows, self.used, self.refused, self.vehicle, samples)


def _kept(data: bytes, allowed: Set[str]) -> _Kept:
    table, record = read_output(data)
    facts = record.get("clips", {})
    ok = {c for c in allowed if facts.get(c, {}).get("consent_training") is True}
    clips = set(table["clip"].unique().to_pylist())
    table = table.filter(pc.is_in(table["clip"], pa.array(sorted(ok), pa.string())))
    vehicle = record.get("vehicle") or hashlib.sha256(data).hexdigest()
    return _Kept(table, frozenset(clips & ok), frozenset(clips - ok), vehicle)


class _CutOutputs:
    """The worker of dataset building (see :mod:`onshore.sites.compute`): reads a batch of
    outputs, keeps their consented rows and cuts their windows. It writes nothing."""

    def __init__(self, store: ObjectStore, config: DatasetConfig) -> None:
        self.store, self.config = store, config

    def __call__(self, outputs: list[_Output]) -> list[_Cut]:
        kept = [_kept(self.store.read(o.path), o.allowed) for o in outputs]
        pieces = _cut([k.table for k in kept], [o.offset for o in outputs], self.config)
        return [k.cut(samples) for k, samples in zip(kept, pieces, strict=True)]


def _placed(
    cuts: Iterable[_Cut], outputs: Sequence[_Output], store: ObjectStore, config: DatasetConfig
) -> Iterator[_Cut]:
    """``cuts``, each checked to have been cut at its true place among the kept rows: an
    output that keeps other rows than the catalogue says (its own record refuses a clip the
    catalogue lets train) moves the stride's count for the outputs after it, which are then
    cut again here."""
    offset = 0
    for output, cut in zip(outputs, cuts, strict=True):
        if (output.offset - offset) % config.stride:
            (cut,) = _CutOutputs(store, config)([replace(output, offset=offset)])
        offset += cut.rows
        yield cut


def _split(cuts: Iterable[_Cut], config: DatasetConfig) -> tuple[Samples, Samples, dict[str, Any]]:
    """The samples of ``cuts`` (in order) split by vehicle, and counts of what was used."""
    vehicles: list[str] = []
    pieces: list[Samples] = []
    used: set[str] = set()
    refused: set[str] = set()
    rows = 0
    for cut in cuts:
        used |= cut.used
        refused |= cut.refused
        if cut.rows:
            vehicles.append(cut.vehicle)
            pieces.append(cut.samples)
            rows += cut.rows
    in_test = _test_side(vehicles, [len(p) for p in pieces], config.test_share)
    info: dict[str, Any] = {
        "outputs": len(vehicles),
        "clips_used": len(used),
        "clips_refused_no_consent": len(refused),
        "vehicles_train": len({v for v, t in zip(vehicles, in_test, strict=True) if not t}),
        "vehicles_test": len({v for v, t in zip(vehicles, in_test, strict=True) if t}),
    }
    if not pieces:
        info.update(rows=0, windows=0, train=0, test=0)
        return Samples.empty(config), Samples.empty(config), info
    train = Samples.concat([p for p, t in zip(pieces, in_test, strict=True) if not t], config)
    test = Samples.concat([p for p, t in zip(pieces, in_test, strict=True) if t], config)
    info.update(rows=rows, windows=len(train) + len(test), train=len(train), test=len(test))
    return train, test, info


def _test_side(vehicles: Sequence[str], samples: Sequence[int], test_share: float) -> np.ndarray:
    """Which of the outputs (of ``vehicles``, with ``samples`` each) are on the test side.

    A vehicle is on the test side when the hash of its pseudonym falls below ``test_share``: the
    answer is the same in every run and does not move when other vehicles come or go. Vehicles
    drive unequal amounts, though, and a small fleet can then leave one side with a few hundred
    samples, or only standing ones. So when the test side holds less than half its share of the
    samples, the training vehicles whose hashes lie nearest the line join it (in hash order)
    until it does, and the same the other way; each side keeps at least one vehicle. On a large
    fleet the hash alone decides.
    """
    names, index = np.unique(np.asarray(vehicles, dtype=object), return_inverse=True)
    if len(names) == 0:
        return np.zeros(0, dtype=bool)
    fraction = np.array([_fraction(str(v)) for v in names])
    counts = np.bincount(index, weights=np.asarray(samples, dtype=np.float64), minlength=len(names))
    test = fraction < test_share
    total = counts.sum()
    if len(names) >= 2:
        # Vehicles in hash order: test takes from the front of train, train from the back of
        # test; a vehicle train took back (one that held most samples) is not offered again.
        order = np.argsort(fraction, kind="stable")
        taken_back = np.zeros(len(names), dtype=bool)

        def fill_test() -> None:
            for vehicle in order:
                if counts[test].sum() >= total * test_share / 2:
                    return
                if not test[vehicle] and not taken_back[vehicle] and (~test).sum() > 1:
                    test[vehicle] = True

        fill_test()
        for vehicle in order[::-1]:
            if counts[~test].sum() >= total * (1 - test_share) / 2:
                break
            if test[vehicle] and test.sum() > 1:
                test[vehicle], taken_back[vehicle] = False, True
        fill_test()
    return np.asarray(test[index], dtype=bool)


def _cut(
    tables: Sequence[pa.Table], offsets: Sequence[int], config: DatasetConfig
) -> list[Samples]:
    """The windows of each of ``tables`` (the kept rows of one output each, no clip in two),
    the stride counted from the first row of all: table ``i`` has ``offsets[i]`` rows before
    it."""
    pieces = [Samples.empty(config)] * len(tables)
    index = [i for i, table in enumerate(tables) if table.num_rows]
    if not index:
        return pieces
    combined = pa.concat_tables(
        [
            tables[i].append_column("vehicle", pa.array(np.full(tables[i].num_rows, n)))
            for n, i in enumerate(index)
        ]
    ).combine_chunks()
    samples, vehicle = _windows(combined, config, np.array([offsets[i] for i in index]))
    # A clip's windows come together and in the order of the clips' first rows, so each
    # table's are one run.
    bounds = np.searchsorted(vehicle, np.arange(len(index) + 1))
    for n, i in enumerate(index):
        pieces[i] = samples.slice(int(bounds[n]), int(bounds[n + 1]))
    return pieces


def _windows(
    table: pa.Table, config: DatasetConfig, offsets: NDArray[np.int64]
) -> tuple[Samples, NDArray[np.intp]]:
    """Every window of ``table`` (rows of many clips and vehicles; ``vehicle`` numbers the
    outputs they come from, in order), and each one's vehicle. ``offsets[v]``: rows before
    output ``v``'s, where the stride counts from."""
    clip = pc.dictionary_encode(table["clip"].combine_chunks()).indices.to_numpy()
    t = table["t"].to_numpy()
    order = np.lexsort((t, clip))
    clip, t = clip[order], t[order]
    n, width = len(t), config.past_steps + config.future_steps
    if n < width:
        return Samples.empty(config), np.zeros(0, np.intp)
    # A step is good when the next row is the same clip, one tick later; a window is good when
    # all its width - 1 steps are.
    good = np.zeros(n, dtype=np.int64)
    good[:-1] = (clip[1:] == clip[:-1]) & (np.abs(np.diff(t) - DT) < DT / 4)
    run = np.concatenate(([0], np.cumsum(good)))
    starts = np.arange(n - width + 1)
    starts = starts[(run[starts + width - 1] - run[starts] == width - 1)]
    if config.stride > 1:
        # Sorted, each output's rows are one run, in order: a row's place among all rows is
        # its output's offset plus its place in that run.
        owner = table["vehicle"].to_numpy()[order]
        counts = np.bincount(owner, minlength=len(offsets))
        shift = (offsets - (np.cumsum(counts) - counts))[owner]
        starts = starts[(starts + shift[starts]) % config.stride == 0]
    if len(starts) == 0:
        return Samples.empty(config), np.zeros(0, np.intp)
    rows = order[starts[:, None] + np.arange(width)]  # (N, width) indices into table
    anchor = rows[:, config.past_steps - 1]

    def col(name: str) -> NDArray[np.float64]:
        return np.asarray(pc.fill_null(table[name], 0.0).to_numpy(), dtype=np.float64)

    x, y = col("x"), col("y")
    # Compass headings turn clockwise; the clip frame's angles turn counter-clockwise.
    theta = -np.radians(col("heading"))
    x0, y0, theta0 = x[anchor][:, None], y[anchor][:, None], theta[anchor][:, None]
    cos0, sin0 = np.cos(theta0), np.sin(theta0)
    dx, dy = x[rows] - x0, y[rows] - y0
    local_x = dx * cos0 + dy * sin0
    local_y = -dx * sin0 + dy * cos0
    past = rows[:, : config.past_steps]
    phi = theta[past] - theta0
    speed = col("speed")[past]
    features = np.stack(
        [
            local_x[:, : config.past_steps],
            local_y[:, : config.past_steps],
            speed * np.cos(phi),
            speed * np.sin(phi),
            np.cos(phi),
            np.sin(phi),
            col("accel")[past],
            -np.radians(col("yaw_rate")[past]),
            col("steering")[past],
            col("brake")[past],
        ],
        axis=-1,
    )
    future = np.stack([local_x[:, config.past_steps :], local_y[:, config.past_steps :]], axis=-1)
    objects, mask = _nearest_objects(table["objects"].combine_chunks(), anchor, config.max_objects)
    vehicle = table["vehicle"].to_numpy()[anchor]
    samples = Samples(features.astype(np.float32), objects, mask, future.astype(np.float32))
    return samples, vehicle


def _nearest_objects(
    objects: pa.ListArray, anchor: NDArray[np.intp], k: int
) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """The ``k`` nearest tracked objects of each anchor row, as features and a mask."""
    out = np.zeros((len(anchor), k, len(OBJECT_FEATURES)), np.float32)
    mask = np.zeros((len(anchor), k), np.bool_)
    offsets = objects.offsets.to_numpy()
    begin, count = offsets[anchor], offsets[anchor + 1] - offsets[anchor]
    if objects.null_count:  # a step with no list at all tracked nothing
        count = np.where(objects.is_null().to_numpy(zero_copy_only=False)[anchor], 0, count)
    total = int(count.sum())
    if total == 0:
        return out, mask
    sample = np.repeat(np.arange(len(anchor)), count)
    first = np.cumsum(count) - count
    flat = begin[sample] + np.arange(total) - first[sample]
    values = objects.values
    fields = {name: values.field(name) for name in ("x", "y", "vx", "vy", "class")}
    ox = fields["x"].to_numpy()[flat].astype(np.float64)
    oy = fields["y"].to_numpy()[flat].astype(np.float64)
    distance = np.hypot(ox, oy)
    order = np.lexsort((distance, sample))
    sample, flat, distance = sample[order], flat[order], distance[order]
    rank = np.arange(total) - first[sample]
    keep = rank < k
    sample, flat, rank, distance = sample[keep], flat[keep], rank[keep], distance[keep]
    kind = pc.index_in(fields["class"], value_set=CLASS_ARRAY).to_numpy(zero_copy_only=False)
    kind = np.nan_to_num(kind.astype(np.float64), nan=-1).astype(np.int64)[flat]
    for i, name in enumerate(("x", "y", "vx", "vy")):
        out[sample, rank, i] = fields[name].to_numpy()[flat]
    out[sample, rank, 4] = distance
    ahead, across = out[sample, rank, 0], out[sample, rank, 1]
    out[sample, rank, 5] = (ahead > 0) & (np.abs(across) < _LANE_HALF_WIDTH_M)
    closing = -out[sample, rank, 2]
    reach = np.where((ahead > 0) & (closing > 0), ahead / np.maximum(closing, 1e-3), _MAX_TIME_S)
    out[sample, rank, 6] = np.minimum(reach, _MAX_TIME_S)
    known = kind >= 0
    out[sample[known], rank[known], 7 + kind[known]] = 1.0
    mask[sample, rank] = True
    return out, mask


def _config_digest(config: DatasetConfig) -> str:
    return hashlib.sha256(orjson.dumps(asdict(config), option=orjson.OPT_SORT_KEYS)).hexdigest()[
        :16
    ]


def _cache_key(records: list[DeidentifiedRecord], config: DatasetConfig) -> str:
    """A hash of everything the samples depend on: each output's content, which of its clips
    may train, the configuration and the layout of the arrays."""
    inputs = sorted((r.path, r.sha256, r.output_id, r.consent_training) for r in records)
    payload = {"format": _FORMAT, "config": asdict(config), "inputs": inputs}
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _dump(train: Samples, test: Samples, info: Mapping[str, Any]) -> bytes:
    arrays: dict[str, Any] = {"info": np.frombuffer(orjson.dumps(info), dtype=np.uint8)}
    for side, samples in (("train", train), ("test", test)):
        for name in ("past", "objects", "object_mask", "future"):
            arrays[f"{side}_{name}"] = getattr(samples, name)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _load(data: bytes) -> tuple[Samples, Samples, dict[str, Any]]:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        sides = [
            Samples(
                npz[f"{side}_past"],
                npz[f"{side}_objects"],
                npz[f"{side}_object_mask"],
                npz[f"{side}_future"],
            )
            for side in ("train", "test")
        ]
        info = orjson.loads(npz["info"].tobytes())
    return sides[0], sides[1], info
