"""The driving model: samples only from consented clips, windows that never span a gap, a split
by vehicle, the constant-velocity baseline, models that learn, DP-SGD within its budget, stable
declared weights, determinism, and ``onshore train`` end to end."""

from __future__ import annotations

import json
import random

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from onshore.cli.app import app
from onshore.clips.mcap import write_mcap
from onshore.clips.schema import OBJECT_TYPE, SCHEMA, Clip, ClipMeta
from onshore.clips.vin import make_vin
from onshore.deidentify import deidentify_site, resolve_profile
from onshore.deidentify.run import DEID_KEY
from onshore.deidentify.trajectory import LOCAL_SCHEMA
from onshore.errors import ConfigError, InvalidWeights, NoTrainingData, PrivacyBudgetSpent
from onshore.forecast import (
    MODELS,
    OBJECT_FEATURES,
    PAST_FEATURES,
    DatasetConfig,
    DPConfig,
    ModelSpec,
    PrivacyAccountant,
    Samples,
    build_model,
    build_site_dataset,
    check_weights,
    evaluate,
    train_local,
    weight_signature,
)
from onshore.forecast.dataset import FUNNEL, _fraction, _test_side, samples_from_outputs
from onshore.forecast.metrics import MOTION_GROUPS, Metrics, motion_groups
from onshore.ingest import ingest
from onshore.settings import Project
from onshore.sites import init_project
from onshore.sites.keystore import load_keystore
from onshore.store import SiteStore

SITE = "eu-frankfurt"
BRAKE = PAST_FEATURES.index("brake")
STEERING = PAST_FEATURES.index("steering")
CAR_AHEAD = [{"track_id": 1, "class": "car", "x": 15.0, "y": 0.0, "vx": 0.0, "vy": 0.0}]


# --- Synthetic de-identified outputs --------------------------------------------------------


def local_rows(
    clip: str,
    n: int,
    *,
    speed: float = 10.0,
    angle_deg: float = 0.0,
    drop: range | None = None,
    marker: float = 0.0,
) -> pa.Table:
    """``n`` rows of one clip in clip-local form: straight at ``speed`` in direction
    ``angle_deg`` (counter-clockwise from the clip's x), ``steering`` set to ``marker`` to tell
    the clip's rows apart, rows in ``drop`` removed (as a sensitive area removes them)."""
    t = np.arange(n) * 0.1
    theta = np.radians(angle_deg)
    keep = np.ones(n, bool)
    if drop is not None:
        keep[list(drop)] = False
    columns = {
        "clip": pa.array([clip] * n),
        "t": pa.array(t),
        "x": pa.array(speed * t * np.cos(theta)),
        "y": pa.array(speed * t * np.sin(theta)),
        "speed": pa.array(np.full(n, speed), pa.float32()),
        "heading": pa.array(np.full(n, -angle_deg), pa.float32()),
        "accel": pa.array(np.zeros(n), pa.float32()),
        "yaw_rate": pa.array(np.zeros(n), pa.float32()),
        "steering": pa.array(np.full(n, marker), pa.float32()),
        "brake": pa.nulls(n, pa.float32()),
        "objects": pa.array([CAR_AHEAD] * n, pa.list_(OBJECT_TYPE)),
    }
    return pa.Table.from_pydict(columns, schema=LOCAL_SCHEMA).filter(pa.array(keep))


def output(vehicle: str, clips: dict[str, tuple[pa.Table, bool]]) -> bytes:
    """A de-identified output as the training profile writes it: the vehicle's clips and a
    record saying whose driver consented."""
    record = {
        "profile": "training",
        "vehicle": vehicle,
        "clips": {name: {"consent_training": consent} for name, (_, consent) in clips.items()},
    }
    table = pa.concat_tables([rows for rows, _ in clips.values()])
    table = table.replace_schema_metadata({DEID_KEY: orjson.dumps(record)})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return bytes(sink.getvalue().to_pybytes())


def test_windows_never_span_a_gap() -> None:
    # 100 rows, 5 dropped in the middle: two runs of 40 and 55 rows, no window of 50 across.
    rows = local_rows("pc-a", 100, speed=10.0, drop=range(40, 45))
    data = output("pv-1", {"pc-a": (rows, True)})
    config = DatasetConfig(test_share=0.5)
    train, test, info = samples_from_outputs([(data, {"pc-a"})], config)
    assert info["windows"] == 55 - 50 + 1
    samples = train if len(train) else test
    # Every window is evenly spaced: 1 m per tick through past and future alike.
    path = np.concatenate([samples.past[..., :2], samples.future], axis=1)
    steps = np.linalg.norm(np.diff(path, axis=1), axis=-1)
    np.testing.assert_allclose(steps, 1.0, atol=1e-4)
    # A time step of 0.2 s is a gap too, even without a missing row number.
    slow = local_rows("pc-b", 60)
    slow = slow.set_column(1, "t", pa.array(np.r_[np.arange(30), np.arange(31, 61)] * 0.1))
    _, _, info = samples_from_outputs([(output("pv-2", {"pc-b": (slow, True)}), {"pc-b"})], config)
    assert info["windows"] == 0


def test_windows_are_in_the_sample_frame_and_cv_is_exact_on_constant_velocity() -> None:
    clips = {
        f"pc-{i}": (local_rows(f"pc-{i}", 80, speed=4.0 + i, angle_deg=35.0 * i), True)
        for i in range(4)
    }
    train, test, _ = samples_from_outputs(
        [(output("pv-1", clips), set(clips))], DatasetConfig(test_share=0.5)
    )
    samples = train if len(train) else test
    assert len(samples) == 4 * (80 - 50 + 1)
    # Origin at the last past step, x along the heading: the future lies straight ahead.
    np.testing.assert_allclose(samples.past[:, -1, :2], 0.0, atol=1e-4)
    np.testing.assert_allclose(samples.future[..., 1], 0.0, atol=1e-3)
    assert (samples.future[:, -1, 0] > 0).all()
    # The car 15 m ahead is the nearest object, in the ego frame, with its class set.
    assert samples.object_mask[:, 0].all() and not samples.object_mask[:, 1:].any()
    np.testing.assert_allclose(samples.objects[:, 0, 0], 15.0)
    assert (samples.objects[:, 0, OBJECT_FEATURES.index("is_car")] == 1).all()
    metrics = evaluate(build_model("constant_velocity"), samples)
    assert metrics.ade < 1e-3 and metrics.fde < 1e-3 and metrics.miss_rate == 0


def test_no_clip_without_consent_reaches_a_dataset() -> None:
    clips = {
        "pc-yes": (local_rows("pc-yes", 60, marker=1), True),
        "pc-no": (local_rows("pc-no", 60, marker=2), False),  # the driver said no
        "pc-unlisted": (local_rows("pc-unlisted", 60, marker=3), True),  # not in catalogue
        "pc-record-no": (local_rows("pc-record-no", 60, marker=4), False),
    }
    data = output("pv-1", clips)
    allowed = {"pc-yes", "pc-record-no"}  # what the catalogue says may train
    train, test, info = samples_from_outputs([(data, allowed)], DatasetConfig(test_share=0.5))
    markers = set(np.concatenate([train.past, test.past])[..., STEERING].ravel().tolist())
    assert markers == {1.0}
    assert info["clips_used"] == 1 and info["clips_refused_no_consent"] == 3


def test_split_is_by_vehicle() -> None:
    outputs = []
    for v in range(12):
        name = f"pc-{v}"
        outputs.append(
            (output(f"pv-{v:03d}", {name: (local_rows(name, 70, marker=v), True)}), {name})
        )
    train, test, info = samples_from_outputs(outputs, DatasetConfig(test_share=0.3))
    on_train = set(train.past[..., STEERING].ravel().tolist())
    on_test = set(test.past[..., STEERING].ravel().tolist())
    assert on_train and on_test and not on_train & on_test
    assert on_train | on_test == set(map(float, range(12)))
    assert info["vehicles_train"] + info["vehicles_test"] == 12
    # The same vehicles are held out every time.
    again = samples_from_outputs(outputs, DatasetConfig(test_share=0.3))[1]
    assert np.array_equal(again.past, test.past)


# --- The site's store end to end ----------------------------------------------------------


def raw_drive(seed: int, *, consent: list[bool], steps: int = 200) -> list[Clip]:
    """One vehicle's drive north-east at 12 m/s, cut into clips; ``brake`` is 1 on the clips
    whose driver did not consent, so their rows are recognisable in any sample."""
    n = len(consent) * steps
    t0 = np.datetime64("2026-03-02T08:00:00", "us").astype(np.int64) + seed * 3_600_000_000
    time_us = t0 + np.arange(n, dtype=np.int64) * 100_000
    dist = np.arange(n) * 1.2
    lat = 50.1 + dist * np.cos(np.radians(45)) / 110_574
    lon = 8.6 + dist * np.sin(np.radians(45)) / (111_320 * np.cos(np.radians(50.1)))
    vin = make_vin(random.Random(seed), "WVW", "ZZZ1K", 2026, "W")
    clips = []
    for i, ok in enumerate(consent):
        part = slice(i * steps, (i + 1) * steps)
        table = pa.Table.from_arrays(
            [
                pa.array(time_us[part]).cast(SCHEMA.field("time").type),
                pa.array(lat[part]),
                pa.array(lon[part]),
                pa.array(np.full(steps, 12.0), pa.float32()),
                pa.array(np.full(steps, 45.0), pa.float32()),
                pa.array(np.zeros(steps), pa.float32()),
                pa.array(np.zeros(steps), pa.float32()),
                pa.array(np.zeros(steps), pa.float32()),
                pa.array(np.full(steps, 0.0 if ok else 1.0), pa.float32()),
                pa.array([CAR_AHEAD] * steps, pa.list_(OBJECT_TYPE)),
            ],
            schema=SCHEMA,
        )
        meta = ClipMeta(f"{vin}-{i:03d}", vin, "ID.4", "random_sample", ok, SITE)
        clips.append(Clip(meta, table))
    return clips


@pytest.fixture(scope="module")
def trained_project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """A project whose EU site holds five vehicles' drives, some clips without consent, ingested
    and de-identified under the training profile."""
    root = tmp_path_factory.mktemp("model")
    project = init_project(root / "proj", "three-regions")
    uploads = root / "uploads"
    uploads.mkdir()
    plans = [[True] * 8, [True, True, False, False, True, True, True, True], [False] * 8]
    plans += [[True] * 8, [True] * 8]
    for seed, plan in enumerate(plans):
        for clip in raw_drive(seed, consent=plan):
            write_mcap(clip, uploads / f"{clip.meta.clip_id}.mcap")
    with SiteStore.open(project, SITE) as site:
        assert ingest(site, [uploads]).quarantined == []
        secret = load_keystore(project.keystore_path(project.site(SITE))).hmac_secret
        deidentify_site(site, resolve_profile("training", {}), secret=secret)
    return project


@pytest.mark.parametrize("secret", range(8))
def test_each_side_of_the_split_holds_half_its_share_whatever_the_secret(secret: int) -> None:
    """A small fleet whose vehicles drive unequal amounts (one long trip, many short ones):
    with any site secret (which decides the pseudonyms, hence the hash), the test side holds
    at least half its share of the samples, and the training side half of its."""
    rng = np.random.default_rng(secret)
    vehicles = [f"pv-{secret}-{rng.integers(1 << 62):x}" for _ in range(9)]
    samples = [12_000, *rng.integers(200, 1_500, size=8).tolist()]
    # Several outputs (clips) per vehicle, in no particular order.
    outputs = [(v, n // 3) for v, n in zip(vehicles, samples, strict=True) for _ in range(3)]
    rng.shuffle(outputs)
    names = [v for v, _ in outputs]
    counts = [n for _, n in outputs]
    test = _test_side(names, counts, 0.2)
    total = sum(counts)
    on_test = sum(n for n, t in zip(counts, test, strict=True) if t)
    assert on_test >= 0.1 * total and total - on_test >= 0.4 * total
    # Whole vehicles: no vehicle on both sides.
    assert not {v for v, t in zip(names, test, strict=True) if t} & {
        v for v, t in zip(names, test, strict=True) if not t
    }
    # The same answer every time, whatever the order of the outputs.
    order = rng.permutation(len(names))
    again = _test_side([names[i] for i in order], [counts[i] for i in order], 0.2)
    assert np.array_equal(again, test[order])


def test_a_large_fleet_is_split_by_the_hash_alone() -> None:
    vehicles = [f"pv-{i:04d}" for i in range(400)]
    test = _test_side(vehicles, [100] * 400, 0.2)
    hashed = np.array([_fraction(v) < 0.2 for v in vehicles])
    assert np.array_equal(test, hashed) and 0.1 < test.mean() < 0.3


def test_site_dataset_holds_only_consented_clips_and_is_cached(trained_project: Project) -> None:
    with SiteStore.open(trained_project, SITE) as site:
        records = site.catalogue.deidentified("training")
        refused = {r.output_id for r in records if not r.consent_training}
        assert refused, "the fixture must have kept some clips without consent"
        data = build_site_dataset(site)
        assert not data.info["cached"]
        assert data.info["clips_refused_no_consent"] == len(refused)
        everything = np.concatenate([data.train.past, data.test.past])
        assert len(everything) > 0
        assert (everything[..., BRAKE] == 0).all()
        assert data.info["vehicles_train"] >= 1 and data.info["vehicles_test"] >= 1
        again = build_site_dataset(site)
        assert again.info["cached"] and again.info["cache"] == data.info["cache"]
        assert np.array_equal(again.train.future, data.train.future)
        # The cache is keyed by the configuration too.
        other = build_site_dataset(site, DatasetConfig(stride=5))
        assert not other.info["cached"] and len(other.train) < len(data.train)
        # The funnel says where the data went, and agrees with the catalogue and the samples.
        funnel = data.info["funnel"]
        assert list(funnel) == list(FUNNEL) and again.info["funnel"] == funnel
        clips = site.catalogue.clips()
        assert funnel["clips_recorded"] == len(clips)
        assert funnel["clips_consented"] == sum(c.consent_training for c in clips)
        assert funnel["positions_recorded"] == sum(c.rows for c in clips)
        assert funnel["positions_consented"] == sum(c.rows for c in clips if c.consent_training)
        assert funnel["clips_kept"] <= funnel["clips_consented"] < funnel["clips_recorded"]
        removed = funnel["positions_trimmed"] + funnel["positions_in_zones"]
        assert funnel["positions_trimmed"] > 0, "the trip-end trim removes the trips' ends"
        assert funnel["positions_consented"] - removed == funnel["positions_kept"]
        assert (funnel["samples_train"], funnel["samples_test"]) == (
            len(data.train),
            len(data.test),
        )


def test_a_site_without_training_data_is_refused(project: Project) -> None:
    with SiteStore.open(project, "us-oregon") as site:
        data = build_site_dataset(site)
    assert len(data.train) == 0 and len(data.test) == 0
    with pytest.raises(NoTrainingData):
        train_local(build_model("past_mlp"), data.train, steps=1)


# --- Models, training, privacy ----------------------------------------------------------------


def kinematic(n: int, seed: int) -> Samples:
    """Samples of vehicles that accelerate or brake and turn at constant rates: constant
    velocity is metres off after 3 s, and the past says how to do better."""
    rng = np.random.default_rng(seed)
    speed, accel, yaw = rng.uniform(3, 15, n), rng.uniform(-2, 1.5, n), rng.uniform(-0.3, 0.3, n)
    t = (np.arange(50) - 19) * 0.1
    v = np.maximum(speed[:, None] + accel[:, None] * t, 0.0)
    theta = yaw[:, None] * t
    x, y = np.cumsum(v * np.cos(theta) * 0.1, 1), np.cumsum(v * np.sin(theta) * 0.1, 1)
    x, y = x - x[:, 19:20], y - y[:, 19:20]
    past = np.zeros((n, 20, len(PAST_FEATURES)), np.float32)
    past[..., 0], past[..., 1] = x[:, :20], y[:, :20]
    past[..., 2], past[..., 3] = (
        v[:, :20] * np.cos(theta[:, :20]),
        v[:, :20] * np.sin(theta[:, :20]),
    )
    past[..., 4], past[..., 5] = np.cos(theta[:, :20]), np.sin(theta[:, :20])
    past[..., 6], past[..., 7] = accel[:, None], yaw[:, None]
    objects = np.zeros((n, 8, len(OBJECT_FEATURES)), np.float32)
    objects[:, 0, 0] = objects[:, 0, 4] = 20.0
    mask = np.zeros((n, 8), bool)
    mask[:, 0] = True
    future = np.stack([x[:, 20:], y[:, 20:]], -1).astype(np.float32)
    return Samples(past, objects, mask, future)


def test_trained_models_beat_constant_velocity() -> None:
    train, test = kinematic(1500, 0), kinematic(300, 1)
    cv = evaluate(build_model("constant_velocity"), test)
    for name in ("past_mlp", "object_encoder"):
        model = build_model(name)
        result = train_local(model, train, steps=250, batch_size=64, lr=3e-3, seed=0)
        assert result.steps == 250 and result.examples == 1500 and result.epsilon is None
        model.load_state_dict(result.weights)
        learned = evaluate(model, test)
        assert learned.ade < 0.5 * cv.ade, (name, learned, cv)


def test_motion_groups_follow_the_present_speed_and_what_comes_next() -> None:
    samples = kinematic(400, 3)
    future = samples.future.copy()
    past = samples.past.copy()
    # Sample 0 stands; 1 cruises straight on; 2 turns left; 3 brakes hard; 4 stands then goes.
    past[0, :, :4] = 0.0
    future[0] = 0.0
    ticks = np.arange(1, 31, dtype=np.float32) * 0.1
    for i in (1, 2, 3):
        past[i, :, 0] = (np.arange(20) - 19) * 1.0
        past[i, :, 1] = 0.0
        past[i, :, 2], past[i, :, 3] = 10.0, 0.0
    future[1] = np.stack([10 * ticks, 0 * ticks], -1)
    heading = 0.4 * ticks  # about 69 degrees over 3 s
    future[2] = np.stack([np.cumsum(np.cos(heading)), np.cumsum(np.sin(heading))], -1).astype(
        np.float32
    )
    future[3] = np.stack([10 * ticks - 1.5 * ticks**2, 0 * ticks], -1)
    past[4, :, :4] = 0.0
    future[4] = np.stack([0.5 * ticks**2, 0 * ticks], -1)
    groups = motion_groups(Samples(past, samples.objects, samples.object_mask, future))
    names = [MOTION_GROUPS[g] for g in groups[:5]]
    assert names == [
        "stationary",
        "cruising",
        "turning_or_braking",
        "turning_or_braking",
        "stationary",
    ]


def test_metrics_are_reported_per_kind_of_motion_and_survive_the_wire() -> None:
    samples = kinematic(300, 4)
    samples.past[:40, :, :4] = 0.0  # some vehicles standing
    samples.future[:40] = 0.0
    metrics = evaluate(build_model("constant_velocity"), samples)
    groups = motion_groups(samples)
    assert set(metrics.groups) <= set(MOTION_GROUPS)
    assert sum(g.samples for g in metrics.groups.values()) == metrics.samples == len(samples)
    assert metrics.groups["stationary"].samples == int((groups == 0).sum()) >= 40
    assert metrics.groups["stationary"].ade == 0.0, "constant velocity keeps a standing car"
    weighted = sum(g.ade * g.samples for g in metrics.groups.values()) / metrics.samples
    assert weighted == pytest.approx(metrics.ade)
    wire = metrics.scalars("cv-")
    assert all(isinstance(v, float) for v in wire.values())
    assert Metrics.groups_from_scalars(wire, "cv-") == metrics.as_dict()["groups"]
    # Every site sends the same keys, whatever kinds of motion its samples have.
    standing = evaluate(build_model("constant_velocity"), samples.take(np.arange(40)))
    assert list(standing.groups) == ["stationary"]
    assert standing.scalars().keys() == metrics.scalars().keys()
    assert list(Metrics.groups_from_scalars(standing.scalars())) == ["stationary"]


def test_the_kinematic_layer_drives_like_a_car() -> None:
    samples = kinematic(64, 5)
    samples.past[:8, :, :4] = 0.0  # standing
    model = build_model("object_encoder")
    args = (
        torch.from_numpy(samples.past),
        torch.from_numpy(samples.objects),
        torch.from_numpy(samples.object_mask),
    )
    cv = build_model("constant_velocity")(*args)
    moving = torch.from_numpy(np.hypot(samples.past[:, -1, 2], samples.past[:, -1, 3]) > 0.5)
    # Controls of zero are constant velocity.
    zero = model._path(args[0], torch.zeros(64, 60))
    assert torch.allclose(zero[moving], cv[moving], atol=1e-3)
    # Full braking stops a vehicle and keeps it stopped; a standing one does not drift.
    brake = model._path(args[0], torch.full((64, 60), -10.0))
    assert torch.all(brake[:8] == 0), "a standing vehicle held by the brake stays exactly put"
    travelled = brake[:, -1] - brake[:, -2]
    assert torch.all(travelled.norm(dim=-1) < 1e-6), "braked to a stand by the horizon"
    # Full lock at a stand does not turn the car on the spot; moving, a gentle curvature (40 m
    # radius) turns it left.
    lock = model._path(args[0], torch.cat([torch.zeros(64, 30), torch.full((64, 30), 10.0)], 1))
    assert torch.all(lock[:8] == 0)
    turn = model._path(args[0], torch.cat([torch.zeros(64, 30), torch.full((64, 30), 0.1)], 1))
    assert torch.all(turn[moving][:, -1, 1] > cv[moving][:, -1, 1] + 0.5), "it turns left"


def test_training_is_deterministic_for_a_seed() -> None:
    data = kinematic(300, 2)
    model = build_model("object_encoder", seed=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for dp in (None, DPConfig(target_epsilon=50.0)):
        a = train_local(model, data, steps=20, batch_size=32, dp=dp, seed=5)
        b = train_local(model, data, steps=20, batch_size=32, dp=dp, seed=5)
        c = train_local(model, data, steps=20, batch_size=32, dp=dp, seed=6)
        assert all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights)
        assert not all(torch.equal(a.weights[k], c.weights[k]) for k in a.weights)
    # The model handed in is a template: training never changes it.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(
        torch.equal(build_model("object_encoder", seed=3).state_dict()[k], v)
        for k, v in before.items()
    )


def test_training_starts_from_given_weights() -> None:
    data = kinematic(200, 4)
    first = train_local(build_model("past_mlp"), data, steps=10, seed=0)
    fresh = build_model("past_mlp", seed=99)
    zero = train_local(fresh, data, steps=0, initial=first.weights)
    assert zero.steps == 0
    assert all(torch.equal(zero.weights[k], first.weights[k]) for k in first.weights)
    # FedProx's pull keeps the weights nearer the start.
    free = train_local(fresh, data, steps=30, initial=first.weights, seed=1)
    held = train_local(fresh, data, steps=30, initial=first.weights, seed=1, proximal_mu=50.0)

    def drift(result: object) -> float:
        weights = result.weights  # type: ignore[attr-defined]
        return sum(float((weights[k] - first.weights[k]).norm()) for k in weights)

    assert drift(held) < drift(free)


def test_dp_spends_a_finite_epsilon_and_refuses_beyond_the_budget() -> None:
    data = kinematic(400, 5)
    budget = DPConfig(target_epsilon=3.0, noise_multiplier=1.0, max_grad_norm=1.0)
    accountant = PrivacyAccountant()
    first = train_local(
        build_model("object_encoder"),
        data,
        steps=5,
        batch_size=20,
        dp=budget,
        accountant=accountant,
    )
    assert first.steps == 5 and first.epsilon is not None
    assert 0 < first.epsilon <= budget.target_epsilon and np.isfinite(first.epsilon)
    assert first.delta == 1e-5 and not first.budget_exhausted
    # Asking for far more: only the steps that fit are done, and the budget holds.
    second = train_local(
        build_model("object_encoder"),
        data,
        steps=100_000,
        batch_size=20,
        dp=budget,
        accountant=accountant,
        initial=first.weights,
    )
    assert second.budget_exhausted and 0 < second.steps < 100_000
    assert second.epsilon is not None and first.epsilon < second.epsilon <= budget.target_epsilon
    with pytest.raises(PrivacyBudgetSpent, match="budget"):
        train_local(build_model("object_encoder"), data, steps=1, dp=budget, accountant=accountant)
    # The history survives a round trip (to keep with a site's runs) and says the same.
    again = PrivacyAccountant.from_dict(json.loads(json.dumps(accountant.as_dict())))
    assert again.epsilon(1e-5) == pytest.approx(second.epsilon)


def test_declared_weights_are_stable_and_checked() -> None:
    assert set(MODELS) == {"constant_velocity", "past_mlp", "object_encoder"}
    assert weight_signature("constant_velocity") == {}
    signature = weight_signature("object_encoder")
    shapes = {name: shape for name, (shape, _) in signature.items()}
    assert shapes == {
        "ego.0.weight": (64, 200),
        "ego.0.bias": (64,),
        "ego.2.weight": (64, 64),
        "ego.2.bias": (64,),
        "scene.0.weight": (32, len(OBJECT_FEATURES)),
        "scene.0.bias": (32,),
        "scene.2.weight": (32, 32),
        "scene.2.bias": (32,),
        "head.0.weight": (64, 96),
        "head.0.bias": (64,),
        "head.2.weight": (60, 64),
        "head.2.bias": (60,),
    }
    assert {dtype for _, dtype in signature.values()} == {torch.float32}
    assert list(signature) == list(build_model("object_encoder", seed=9).state_dict())
    assert 10_000 < sum(int(np.prod(s)) for s in shapes.values()) < 100_000
    smaller = weight_signature(ModelSpec("object_encoder", {"hidden": 32}))
    assert smaller["ego.0.weight"][0] == (32, 200)

    weights = build_model("object_encoder").state_dict()
    check_weights("object_encoder", weights)
    for bad in (
        {**weights, "extra": torch.zeros(1)},
        {k: v for k, v in weights.items() if k != "head.2.bias"},
        {**weights, "head.2.bias": torch.zeros(61)},
        {**weights, "head.2.bias": torch.zeros(60, dtype=torch.float64)},
        {**weights, "head.2.bias": torch.full((60,), float("nan"))},
    ):
        with pytest.raises(InvalidWeights):
            check_weights("object_encoder", bad)


# --- onshore train -----------------------------------------------------------------------------


def test_cli_trains_each_site_alone(trained_project: Project) -> None:
    runner = CliRunner()
    args = ["train", "--project", str(trained_project.root), "--site", SITE, "--steps", "30"]
    result = runner.invoke(app, [*args, "--dp", "--run", "t1", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["run"] == "t1" and summary["mode"] == "local"
    region = summary["regions"][SITE]
    for key in ("ade", "fde", "miss_rate"):
        assert region[key] >= 0 and region["baselines"]["constant_velocity"][key] >= 0
    assert 0 < summary["epsilon"][SITE] <= 8.0
    folder = trained_project.root / "runs" / "t1"
    assert json.loads((folder / "run.json").read_text())["regions"][SITE]["ade"] == region["ade"]
    with SiteStore.open(trained_project, SITE) as site:
        assert site.objects.exists(region["weights"]["path"])
    # The same run id resumes: the finished site is read back, not trained again.
    again = runner.invoke(app, [*args, "--dp", "--run", "t1", "--json"])
    assert again.exit_code == 0 and json.loads(again.stdout)["regions"][SITE] == region
    # ...but not with other options.
    other = runner.invoke(app, [*args, "--run", "t1", "--json"])
    assert isinstance(other.exception, ConfigError) and "other options" in str(other.exception)
    table = runner.invoke(app, [*args])
    assert table.exit_code == 0, table.output
    assert SITE in table.stdout and "ADE" in table.stdout
    unknown = runner.invoke(app, [*args, "--model", "transformer", "--json"])
    assert isinstance(unknown.exception, ConfigError) and "no model" in str(unknown.exception)
