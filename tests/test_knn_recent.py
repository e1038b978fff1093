"""knn-recent, the traditional recency cache: gati-online's recency memory served alone (no
learned cache) by an online learner of memories only. It hits on near-duplicate frames once
its threshold is certified, agrees at its target, serves nothing before, almost nothing on
distinct images, and the benchmark reports its row with the memory's bytes."""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest
from conftest import tiny_mlp_model

from gati_jax import data
from gati_jax.data.workloads import Workload
from gati_jax.jobs.benchmark import (
    KNN_RECENT,
    Contender,
    benchmark_rows,
    knn_recent,
    knn_recent_figures,
    knn_recent_positions,
    serve_rounds,
)
from gati_jax.jobs.report import _knn_recent_lines
from gati_jax.online.config import online_config
from gati_jax.online.learner import OnlineLearner, OnlineSettings
from gati_jax.runtime.config import served_policy_names
from gati_jax.runtime.deployment import Deployment
from gati_jax.serving.config import benchmark_config, serving_config

SHAPE = (6, 6, 1)
CLASSES = 4
TARGET = 0.95


@pytest.fixture(scope="module")
def model():
    """A tiny MLP whose answers to random images spread over every class (seed 3): distinct
    images are not one class the memory could answer blindly."""
    return tiny_mlp_model(SHAPE, CLASSES, hidden=(32, 32, 32, 32), seed=3)


def _online(**changes) -> ml_collections.ConfigDict:
    """The online section with small, fast test values (one memory)."""
    section = online_config()
    section.update(
        dict(
            audit_fraction=0.2,
            tap_fraction=0.3,
            alarm_audit_fraction=0.0,
            audit_group=2,
            prior_window=0,
            shift_detect=False,
            steps=0,
            calibration_confidence=0.9,
            min_evidence=20,
            recency_positions=1,
            recency_capacity=32,
            recency_neighbours=3,
            recency_min_base_prob=0.0,
            recency_target=TARGET,
            recency_outcomes=200,
            recency_publish_every=2,
            recency_audit_fraction=0.5,
        )
    )
    section.update(changes)
    return section


def _logits(model, images):
    return np.asarray(
        model.network.apply(model.variables, data.normalize(images, model.mean, model.std))
    )


def _sure_images(model, count, seed, cycle_classes):
    """``count`` random images whose base answer has a logit margin (the base network is
    sure of them); with ``cycle_classes`` the i-th answers class i mod CLASSES."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < count:
        images = rng.integers(0, 256, (64, *SHAPE)).astype(np.float32)
        logits = _logits(model, images)
        top = np.sort(logits, -1)
        for image, answer, margin in zip(images, logits.argmax(-1), top[:, -1] - top[:, -2]):
            wanted = not cycle_classes or answer == len(out) % CLASSES
            if margin > 0.1 and wanted and len(out) < count:
                out.append(image)
    return np.stack(out)


def _video(model, scenes, frames, seed=0):
    """Scenes of ``frames`` near-duplicate frames (a little noise on one source image), each
    scene's base answer another class."""
    rng = np.random.default_rng(seed)
    sources = _sure_images(model, scenes, seed, cycle_classes=True)
    noisy = sources[:, None] + 2.0 * rng.standard_normal((scenes, frames, *SHAPE))
    return np.clip(noisy, 0, 255).astype(np.uint8).reshape(-1, *SHAPE)


def _serve(learner, images):
    out = []
    for i in range(len(images)):
        out.append(learner.route(images[i : i + 1]))
        learner.drain()
    return tuple(np.concatenate(parts) for parts in zip(*out))


def _learner(model, **changes):
    settings = OnlineSettings.from_config(_online(**changes))
    return OnlineLearner.memories_only(model, (0,), settings, max_group=1)


def test_knn_recent_hits_near_duplicate_frames_only_once_certified(model):
    images = _video(model, scenes=6, frames=100)
    base = _logits(model, images).argmax(-1)
    assert len(set(base.tolist())) == CLASSES  # scene cuts change the answer
    learner = _learner(model)
    assert learner.positions == () and learner.memory_positions == (0,)
    assert [s.position for s in learner.slots] == [0, learner.last_stage - 1]
    answer, exit_stage, hit = _serve(learner, images)
    summary = learner.summary()
    # Nothing before a threshold was certified on min_evidence would-be hits.
    admitted = next(m for m in summary["memory_log"] if np.isfinite(m["threshold"]))
    assert admitted["evidence"] >= 20 and admitted["bound"] >= TARGET
    assert not hit[: admitted["served"]].any()
    # Then most frames exit at the memory's position, at the target agreement.
    late = slice(admitted["served"] + 20, None)
    assert np.mean(hit[late]) > 0.6
    assert set(np.unique(exit_stage[hit]).tolist()) == {0}
    assert np.mean(answer[hit] == base[hit]) >= TARGET
    assert np.mean(answer == base) >= TARGET
    # Every request that ran to the end answers as the base network; no cache ever learns.
    ran = exit_stage == learner.last_stage
    np.testing.assert_array_equal(answer[ran], base[ran])
    assert summary["updates"] == 0 and summary["audited"] > 0
    assert summary["memory_positions"] == [0]


def test_knn_recent_serves_almost_nothing_on_distinct_images(model):
    images = _sure_images(model, 400, seed=11, cycle_classes=False).astype(np.uint8)
    base = _logits(model, images).argmax(-1)
    assert np.bincount(base, minlength=CLASSES).min() > 30  # every class, none dominating
    learner = _learner(model)
    answer, _, hit = _serve(learner, images)
    assert np.mean(hit) <= 0.02
    assert np.mean(answer == base) >= 0.99


def test_knn_recent_memory_guard_and_settings_are_gati_onlines(model):
    learner = _learner(model, shift_detect=True)  # no detector without a learned cache
    assert learner.shift is None and not learner.trains
    assert learner.memory_guard.positions == (0,)
    assert learner.memory_guard.target == TARGET
    assert learner.memories[0].keys.shape[0] == 32 and learner.memory_head.neighbours == 3
    with pytest.raises(ValueError, match="memory positions"):
        OnlineLearner.memories_only(
            model, (model.network.num_stages - 1,), learner.settings, max_group=1
        )
    # The all-miss timing runs the light program's memory lookup (a finite threshold no
    # similarity reaches) and no request exits.
    router = learner.tapped_router(2)
    images = np.zeros((2, *SHAPE), np.float32)
    out = np.asarray(router.compiled((), np.zeros(1, np.float32), images, np.zeros(2, np.int32)))
    assert out[:, 1].tolist() == [learner.last_stage] * 2


def test_knn_recent_positions_need_no_plan():
    assert knn_recent_positions((5, 0, 3), 1) == (0,)
    assert knn_recent_positions((5, 0, 3), 2) == (0, 3)
    assert KNN_RECENT in served_policy_names()
    assert KNN_RECENT in benchmark_config().policies


def test_benchmark_rows_include_knn_recent_with_its_memory_bytes(model):
    config = ml_collections.ConfigDict(
        dict(online=_online(), serving=serving_config(), benchmark=benchmark_config())
    )
    config.serving.max_group = 1
    contender, learner = knn_recent(config, model, (0,))
    images = _video(model, scenes=2, frames=120, seed=2)
    n = len(images)
    base = _logits(model, images).argmax(-1).astype(np.int32)
    workload = Workload(
        name="video",
        ids=np.arange(n),
        images=images,
        labels=base,
        arrivals=np.arange(n) * 0.01,
        segments=np.repeat(np.arange(2), 120).astype(np.int32),
        corrupted=np.zeros(n, bool),
        source_index=np.full(n, -1),
        corruption=np.full(n, "", dtype="<U16"),
    )
    none = Deployment("none", (), (), (), np.zeros(0, np.float32))
    contenders = {"none": Contender("none", none, None, 0), KNN_RECENT: contender}
    learners = {KNN_RECENT: learner}
    results = serve_rounds(model, contenders, workload, base, config.serving, 1, 40, 5, learners)
    rows = benchmark_rows("video", results, contenders, {"none": 0.0, KNN_RECENT: 0.0})
    row = next(r for r in rows if r["policy"] == KNN_RECENT)
    outcomes = sum(o.scores.nbytes + o.agree.nbytes + o.weights.nbytes for o in learner.outcomes)
    assert row["cache_bytes"] == learner.nbytes() == learner.memories[0].nbytes + outcomes
    assert learner.memories[0].nbytes == 32 * 32 * 4 + 32 * 4 + 32 * 4 + 4  # keys at 32 wide
    assert row["hit_rate"] > 0.5 and row["agreement"] >= TARGET
    figures = knn_recent_figures(results[KNN_RECENT])
    assert figures["hit_rate"] == row["hit_rate"] and figures["first_served"] is not None
    assert figures["memory_bytes"] == [learner.memories[0].nbytes]
    text = "\n".join(_knn_recent_lines({"video": figures}))
    assert f"first served after {figures['first_served']} requests" in text
