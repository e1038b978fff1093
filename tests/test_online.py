"""Online learning: windows, updates, rejection, calibration, the guard, no recompilation."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from conftest import assert_config_rejects, fc_caches, tiny_mlp_model

from gati_jax import data
from gati_jax.caches.selector import wilson_lower_bound
from gati_jax.config import ConfigError, base_config, validate_config
from gati_jax.jobs.benchmark import _alarm_spans, _runs
from gati_jax.online.config import online_config
from gati_jax.online.guard import AccuracyGuard, wilson_upper_bound
from gati_jax.online.learner import OnlineLearner, OnlineSettings
from gati_jax.online.shift import ShiftDetector, ShiftReference
from gati_jax.online.updates import Verdict, shift_logits
from gati_jax.online.window import ReplayWindow
from gati_jax.runtime.deployment import Deployment
from gati_jax.runtime.segments import SegmentedNetwork, segment_count
from gati_jax.serving.clock import FakeClock
from gati_jax.serving.loop import serve

SHAPE = (6, 6, 1)
CLASSES = 4
POSITIONS = (0, 1)  # same activation shape: one vmapped group of two caches


@pytest.fixture(scope="module")
def model():
    return tiny_mlp_model(SHAPE, CLASSES)


def _deployment(model, thresholds=(0.99, 0.99)):
    heads, params = fc_caches(model.network, POSITIONS, CLASSES)
    return Deployment("gati", POSITIONS, heads, params, np.asarray(thresholds, np.float32))


def _settings(**changes):
    """Small, fast settings for the tiny test model: the config section with test values."""
    section = online_config()
    section.update(
        dict(
            update_every=40,
            max_backoff=1,
            audit_fraction=1.0,
            tap_fraction=1.0,
            alarm_audit_fraction=0.0,
            audit_group=2,
            audit_segments=1,
            window_bytes=1 << 16,
            window_items=256,
            holdout_every=4,
            prior_window=0,
            shift_detect=False,
            shift_level=6.0,
            learning_rate=1e-2,
            steps=30,
            steps_per_chunk=10,
            batch_size=32,
            target=0.9,
            calibration_confidence=0.0,
            min_train=32,
            min_holdout=16,
            min_evidence=0,
            recency_positions=0,
            observe_every=1,
        )
    )
    section.update(changes)
    return OnlineSettings.from_config(section)


def _images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, *SHAPE), dtype=np.uint8)


def _fill(learner, n=320, seed=0):
    """Serves ``n`` requests in groups of 8, running the bookkeeping and audits but no update."""
    images = _images(n, seed)
    for start in range(0, n, 8):
        learner.route(images[start : start + 8])
        while learner._served_groups or learner._audits or learner._audit_run:
            learner.run_chunk()
    learner._update = None
    return images


def test_window_respects_its_memory_bound_and_keeps_the_newest():
    window = ReplayWindow((4, 4, 2), max_bytes=4096, holdout_every=4)
    item = 2 * 32 + 4
    assert window.train.x.shape[0] + window.holdout.x.shape[0] == 4096 // item
    for start in range(0, 1000, 7):
        x = (
            np.full((7, 4, 4, 2), 0, np.float16)
            + np.arange(start, start + 7)[:, None, None, None] % 1000
        )
        window.add(x, np.arange(start, start + 7))
    assert window.nbytes <= 4096
    _, y = window.train.arrays()
    assert y.min() > 1000 - 2 * len(y)  # only recent items are left
    capped = ReplayWindow((4, 4, 2), max_bytes=4096, max_items=20)
    assert capped.train.x.shape[0] + capped.holdout.x.shape[0] == 20
    with pytest.raises(ValueError, match="window_bytes"):
        ReplayWindow((64, 64, 16), max_bytes=1000)


def test_update_lowers_the_window_loss_and_calibration_meets_the_target(model):
    learner = OnlineLearner(model, _deployment(model), _settings(), max_group=8)
    _fill(learner)
    window = learner.windows[0]
    before = learner.trainer.window_loss(0, learner.params[0], window)
    steps = learner.trainer.update(learner.params, learner.windows, np.random.default_rng(0))
    try:
        while True:
            next(steps)
    except StopIteration as done:
        params, thresholds, verdicts = done.value
    assert learner.trainer.window_loss(0, params[0], window) < before
    for k, verdict in enumerate(verdicts):
        assert verdict.accepted and verdict.updated, verdict.reason
        # The calibrated threshold meets the target on the held-out slice.
        x, y = learner.windows[k].holdout.arrays()
        answer, score = learner.trainer.score(k, params[k], x)
        hits = score >= thresholds[k]
        assert hits.any() and np.mean(answer[hits] == y[hits]) >= 0.9


def test_nan_gradients_are_rejected_and_parameters_stay(model):
    learner = OnlineLearner(model, _deployment(model), _settings(), max_group=8)
    _fill(learner)
    learner.windows[0].train.x[:] = np.nan  # every gradient of cache 0 turns NaN
    old = jax.tree.map(np.asarray, learner.params)
    learner.schedule_update()
    learner.drain()
    verdict = learner.updates[-1].verdicts[0]
    assert not verdict.accepted and not verdict.updated and "non-finite" in verdict.reason
    for a, b in zip(jax.tree.leaves(old[0]), jax.tree.leaves(learner.params[0])):
        np.testing.assert_array_equal(a, np.asarray(b))
    assert learner.nominal[0] == np.float32(0.99)


def test_a_change_needs_enough_held_out_hits(model):
    learner = OnlineLearner(model, _deployment(model), _settings(), max_group=8)
    _fill(learner)
    trainer = learner.trainer
    window = learner.windows[0]
    verdict = trainer.judge(0, learner.params[0], window)
    assert verdict.accepted, verdict.reason
    hits = round(verdict.holdout_hit_rate * verdict.holdout)
    # The same candidate on the same slice, when a change needs one more hit than it has.
    strict = dataclasses.replace(trainer.settings, min_evidence=hits + 1)
    trainer.settings = strict
    refused = trainer.judge(0, learner.params[0], window)
    assert not refused.accepted and f"{hits} held-out hits" in refused.reason
    # More hits than any slice holds: no update may change what serves.
    impossible = dataclasses.replace(strict, min_evidence=window.holdout.y.size + 1)
    trainer.settings = impossible
    old = jax.tree.map(np.asarray, learner.params)
    before = learner.params
    learner.schedule_update()
    learner.drain()
    # Nothing swapped in: the very same parameters serve on, already packed on the device.
    assert learner.params is before
    for k, verdict in enumerate(learner.updates[-1].verdicts):
        assert not verdict.accepted and not verdict.updated, verdict
        for a, b in zip(jax.tree.leaves(old[k]), jax.tree.leaves(learner.params[k])):
            np.testing.assert_array_equal(a, np.asarray(b))
    assert_config_rejects("online", "min_evidence", -1)


def test_a_change_needs_held_out_agreement_whose_lower_bound_meets_the_target(model):
    learner = OnlineLearner(model, _deployment(model, (0.0, 0.0)), _settings(), max_group=8)
    _fill(learner)
    trainer, window = learner.trainer, learner.windows[0]
    answer, _ = trainer.score(0, learner.params[0], window.holdout.x)
    window.holdout.y[:] = answer  # every held-out request agrees: a point estimate of 1.0
    n = window.holdout.size
    target = trainer.settings.target
    for confidence in (0.9, 0.999):
        trainer.settings = dataclasses.replace(trainer.settings, confidence=confidence)
        verdict = trainer.judge(0, learner.params[0], window, threshold_now=0.0)
        bound = wilson_lower_bound(n, n, confidence)
        assert verdict.holdout_agreement == 1.0 and verdict.holdout == n
        assert verdict.accepted == (bound >= target), (confidence, bound, verdict)
    # 64 of 64 agreeing: certain enough at 90%, not at 99.9% (the bound falls below 0.9).
    assert wilson_lower_bound(n, n, 0.9) >= target > wilson_lower_bound(n, n, 0.999)
    assert "lower bound at confidence 0.999" in verdict.reason


def test_poisoned_labels_are_rejected_and_parameters_stay(model):
    learner = OnlineLearner(model, _deployment(model), _settings(), max_group=8)
    _fill(learner)
    rng = np.random.default_rng(1)
    for window in learner.windows:  # training labels no cache can learn to agree with
        window.train.y[:] = rng.integers(0, CLASSES, window.train.y.shape)
    old = jax.tree.map(np.asarray, learner.params)
    before = learner.params
    learner.schedule_update()
    learner.drain()
    # Nothing swapped in: the very same parameters serve on, already packed on the device.
    assert learner.params is before
    for k, verdict in enumerate(learner.updates[-1].verdicts):
        assert not verdict.updated, verdict
        assert "below the target" in verdict.reason or "kept the current" in verdict.reason
        for a, b in zip(jax.tree.leaves(old[k]), jax.tree.leaves(learner.params[k])):
            np.testing.assert_array_equal(a, np.asarray(b))


def test_serving_with_updates_swaps_parameters_without_recompiling(model):
    learner = OnlineLearner(model, _deployment(model), _settings(), max_group=8)
    learner.warm_up()
    traces = learner.router.trace_count
    assert traces == len(learner.router.buckets)
    images = _images(600, seed=2)
    arrivals = np.arange(600) * 0.01
    clock = FakeClock(lambda n: 0.002 if n else 0.001)
    first = learner.params
    prepared = []
    prepare = learner.router.prepare
    learner.router.prepare = lambda params: (prepared.append(params), prepare(params))
    result = serve(
        learner.route,
        images,
        arrivals=arrivals,
        max_group=8,
        max_wait_s=0.0,
        clock=clock,
        progress=False,
        background=learner,
    )
    assert learner.summary()["accepted"] >= 1
    assert learner.params is not first
    assert learner.router.trace_count == traces  # new values, no new program
    # The swapped-in parameters were packed and sent in the background, not by a request.
    assert any(p is learner.serving_params for p in prepared)
    # Misses are the base network's answers, whatever the caches learned.
    full = np.asarray(
        model.network.apply(model.variables, data.normalize(images, model.mean, model.std))
    )
    miss = ~result.hit
    np.testing.assert_array_equal(result.answer[miss], full.argmax(-1)[miss])


@pytest.mark.parametrize("single_program", [False, True])
def test_untapped_groups_serve_the_same_answers_and_only_tapped_ones_teach(model, single_program):
    learner = OnlineLearner(
        model,
        _deployment(model, (0.6, 0.6)),
        _settings(tap_fraction=0.5, audit_fraction=0.0, single_program=single_program),
        max_group=8,
    )
    # With one program, the groups nobody learns from run the tapped one too.
    assert (learner.untapped is None) == single_program
    learner.warm_up()
    compiled = learner.summary()["trace_count"]
    tapped_misses = 0
    for group in _images(160, seed=3).reshape(20, 8, *SHAPE):
        result = learner.route(group)
        expected, _ = learner.router.route_tapped(
            learner.serving_params, learner.slot_thresholds(), group
        )
        for got, want in zip(result, expected):
            np.testing.assert_array_equal(got, want)
        if learner._served_groups[-1][2] is not None:
            tapped_misses += int(np.sum(result.exit_stage == learner.last_stage))
        learner.drain()
    assert 0 < learner.tapped_groups < 20
    assert 0 < tapped_misses
    for window in learner.windows:  # every miss reached both positions; nobody else teaches
        assert window.train.count + window.holdout.count == tapped_misses
    assert learner.summary()["trace_count"] == compiled  # every program was compiled ahead
    # Every chunk is timed under its kind: the waits a request can meet, kind by kind.
    kinds = learner.summary()["chunk_ms_by_kind"]
    assert sum(k["count"] for k in kinds.values()) == learner.chunks
    assert "observe" in kinds and set(kinds) <= {"observe", "audit", "update", "idle"}
    assert all(0 <= k["p50"] <= k["p99"] <= k["max"] for k in kinds.values())
    programs = learner.router.trace_count + (0 if single_program else learner.untapped.trace_count)
    assert programs == (1 if single_program else 2) * len(learner.router.buckets)


@pytest.mark.parametrize("segments", [1, 3])
def test_audits_label_hits_with_the_base_network_and_keep_what_serving_tapped(model, segments):
    # Thresholds of 0: every request hits at position 0, so every request is audited.
    learner = OnlineLearner(
        model,
        _deployment(model, (0.0, 0.0)),
        _settings(update_every=10**6, guard=False, audit_segments=segments),
        max_group=8,
    )
    images = _fill(learner, n=32)
    assert learner.audited == 32
    # 16 audit groups of 2, each run one segment per background chunk.
    assert learner.chunk_kinds.count("audit") == 16 * segments
    full = np.asarray(
        model.network.apply(model.variables, data.normalize(images, model.mean, model.std))
    )
    window = learner.windows[0]
    # Audit-sample requests alternate held out (the 1st, 3rd, ...) and training.
    np.testing.assert_array_equal(window.holdout.y[:16], full.argmax(-1)[0::2])
    np.testing.assert_array_equal(window.train.y[:16], full.argmax(-1)[1::2])
    # Position 1 was never reached: its window learnt nothing from hits at position 0.
    assert learner.windows[1].train.count == learner.windows[1].holdout.count == 0
    served = np.concatenate(
        [
            learner.router.route_tapped(learner.serving_params, np.full(2, np.inf), half)[1][0]["x"]
            for half in np.split(images[1::2], 2)
        ]
    )
    np.testing.assert_allclose(window.train.x[:16].astype(np.float32), served, rtol=1e-3, atol=1e-3)


def test_segmented_network_answers_as_the_plain_network_one_segment_per_step(model):
    images = _images(5, seed=3)
    logits = model.network.apply(model.variables, data.normalize(images, model.mean, model.std))
    stages = model.network.num_stages
    for segments in (1, 2, stages):
        network = SegmentedNetwork(model, segments)
        assert network.bounds[0][0] == 0 and network.bounds[-1][1] == stages
        assert all(a < b for a, b in network.bounds)
        steps = network.run(images)
        for _ in range(segments - 1):
            assert next(steps) is None
        with pytest.raises(StopIteration) as done:
            next(steps)
        np.testing.assert_array_equal(done.value.value, np.argmax(logits, -1))
        assert network.trace_count == segments
    with pytest.raises(ValueError, match="segments must be in"):
        SegmentedNetwork(model, stages + 1)
    with pytest.raises(ValueError, match="NaN|shape|dtype"):
        SegmentedNetwork(model, 2).answers(np.zeros((2, 3, 3, 1), np.uint8))


def test_audit_segments_left_to_the_network_follow_its_depth():
    # 0: one segment per STAGES_PER_SEGMENT stages (ResNet-18: 10 stages, ResNet-56: 29).
    assert [segment_count(n, 0) for n in (3, 10, 14, 29, 56)] == [1, 1, 1, 3, 6]
    assert segment_count(29, 2) == 2 and segment_count(4, 9) == 4  # at most one per stage
    with pytest.raises(ValueError, match=">= 0"):
        segment_count(10, -1)


def test_optimiser_steps_back_off_while_they_do_not_help_and_resume_when_they_do(model):
    learner = OnlineLearner(model, _deployment(model), _settings(max_backoff=4), max_group=8)
    helpful = {280}  # the steps scheduled after this many requests produce a better cache
    calls = []

    def update(params, windows, rng, shifts, thresholds, train):
        calls.append((learner.observed, train))
        yield
        verdict = Verdict(
            True, "test", 0.5, 0.5, 1.0, 16, updated=train and learner.observed in helpful
        )
        return params, [0.5] * len(params), [verdict] * len(params)

    learner.trainer.update = update
    for group in _images(480).reshape(60, 8, *SHAPE):
        learner.route(group)
        learner.drain()
    trained = [at for at, train in calls if train]
    # Every 40 requests an update (recalibration); steps at 40, then 80 and 160 requests
    # later (capped at 4 x 40), every 40 after the helpful steps at 280, then backing off again.
    assert [at for at, _ in calls] == list(range(40, 481, 40))
    assert trained == [40, 120, 280, 320, 400]
    assert learner.summary()["trained"] == len(trained)
    assert learner.summary()["accepted"] == len(learner.positions)  # the one helpful update


def test_shift_logits_moves_only_the_predictor_output_bias(model):
    params = _deployment(model).params[0]
    shift = np.arange(CLASSES, dtype=np.float32)
    shifted = shift_logits(params, shift)
    last = max(k for k in params["predictor"] if k.startswith("Dense_"))
    np.testing.assert_allclose(
        shifted["predictor"][last]["bias"], np.asarray(params["predictor"][last]["bias"]) + shift
    )
    changed = [
        not np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(shifted))
    ]
    assert sum(changed) == 1
    assert shift_logits(params, None) is params


def test_a_prior_shift_serves_only_once_the_held_out_slice_has_judged_it(model):
    # Thresholds of 0: every held-out request is a would-be hit the slice can judge.
    learner = OnlineLearner(
        model,
        _deployment(model, (0.0, 0.0)),
        _settings(prior_window=50, update_every=10**6),
        max_group=8,
    )
    _fill(learner, n=16)  # too few held-out items to judge anything
    learner.schedule_update()
    learner.drain()
    assert [v.reason for v in learner.updates[-1].verdicts] == ["waiting for data"] * 2
    assert learner.shifts == (None, None)
    for a, b in zip(jax.tree.leaves(learner.params), jax.tree.leaves(learner._initial[0])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    _fill(learner, n=320, seed=1)
    for window in learner.windows:
        window.train.count = 0  # no training data: only the prior shift is on offer
        window.holdout.y[:] = (window.holdout.y + 1) % CLASSES  # and every hit disagrees
    learner.schedule_update()
    learner.drain()
    for verdict in learner.updates[-1].verdicts:
        assert not verdict.accepted and verdict.reason.startswith("prior shift only: held-out")
    assert learner.shifts == (None, None)


def test_guard_turns_a_cache_off_on_wrong_answers_and_back_on_after_recovery():
    guard = AccuracyGuard(
        (0, 3), target=0.99, window=100, confidence=0.95, min_samples=30, recover_samples=30
    )
    guard.record(0, np.ones(40, bool), served=40)
    assert guard.on.all()
    guard.record(0, np.r_[np.ones(5, bool), np.zeros(8, bool)], served=60)  # injected errors
    assert list(guard.on) == [False, True]
    assert np.isinf(guard.thresholds(np.array([0.5, 0.5]))[0])
    guard.record(0, np.ones(29, bool), served=90)
    assert not guard.on[0]
    guard.record(0, np.ones(1, bool), served=91)
    assert guard.on[0]
    assert [(e.position, e.on) for e in guard.events] == [(0, False), (0, True)]
    # A few unlucky audits on a good cache are not enough evidence to switch it off.
    guard.record(1, np.r_[np.ones(29, bool), np.zeros(1, bool)], served=100)
    assert guard.on[1]
    assert wilson_upper_bound(29, 30, 0.95) > 0.99 > wilson_upper_bound(28, 30, 0.95)


def test_guard_alarm_rises_on_errors_close_together_and_falls_on_agreement():
    guard = AccuracyGuard(
        (0, 3), target=0.99, window=200, confidence=0.95, min_samples=30, recover_samples=30
    )
    guard.record(0, np.r_[np.zeros(1, bool), np.ones(150, bool)], served=150)
    guard.record(0, np.zeros(1, bool), served=151)
    assert not guard.alarmed()  # a good cache's errors, far apart, decay away
    guard.record(1, np.array([False, True, True, False]), served=155)
    assert guard.alarmed() and guard.on.all()  # two errors in four: undecided, suspicious
    guard.record(1, np.ones(10, bool), served=165)
    assert not guard.alarmed()
    guard.record(1, np.array([False, False]), served=167)
    assert guard.alarmed()
    guard.record(1, np.r_[np.zeros(20, bool), np.ones(10, bool)], served=197)
    assert not guard.on[1] and not guard.alarmed()  # decided: off, and no alarm for it
    # Suspending on the alarm: no hits from a cache under suspicion, until the alarm falls.
    strict = AccuracyGuard(
        (0,), target=0.99, window=200, min_samples=30, recover_samples=30, suspend_on_alarm=True
    )
    nominal = np.array([0.5], np.float32)
    strict.record(0, np.array([False, True, False]), served=3)
    assert strict.on[0] and strict.alarmed() and np.isinf(strict.thresholds(nominal)[0])
    assert guard.thresholds(np.array([0.5, 0.5], np.float32))[0] == 0.5  # not suspending
    strict.record(0, np.ones(5, bool), served=8)
    assert not strict.alarmed() and strict.thresholds(nominal)[0] == 0.5


def test_learner_taps_and_audits_more_while_the_guard_alarm_is_up(model):
    # Thresholds of 0: every request hits at position 0, so every sampled request is audited.
    settings = _settings(
        audit_fraction=0.1, tap_fraction=0.3, alarm_audit_fraction=1.0, update_every=10**6
    )
    learner = OnlineLearner(model, _deployment(model, (0.0, 0.0)), settings, max_group=8)
    groups = _images(40, seed=4).reshape(5, 8, *SHAPE)
    learner.guard.cusum[0] = learner.guard.alarm_level  # as after errors close together
    for group in groups:
        learner.route(group)
    learner.drain()
    assert learner.alarmed_groups == learner.tapped_groups == 5
    assert learner.audited == 40
    learner.reset()  # no alarm: about 30% of groups tapped, 10% of requests audited
    for group in np.tile(groups, (10, 1, 1, 1, 1)).reshape(50, 8, *SHAPE):
        learner.route(group)
    learner.drain()
    assert learner.alarmed_groups == 0 and 5 <= learner.tapped_groups <= 25
    assert learner.audited <= 80


def test_learner_guard_turns_off_a_cache_whose_hits_disagree(model):
    # Thresholds of 0 make every request hit at position 0 with an untrained cache.
    learner = OnlineLearner(
        model, _deployment(model, (0.0, 0.0)), _settings(update_every=10**6), max_group=8
    )
    _fill(learner, n=80)
    assert not learner.guard.on[0]
    assert np.isinf(learner.thresholds()[0])
    assert learner.guard.events[0].agreement < 0.99


def _clusters(n, classes=3, spread=(1.0, 1.0, 4.0), offset=0.0, seed=0):
    """Gaussian inputs around one mean per class (class 2 four times as spread out)."""
    rng = np.random.default_rng(seed)
    answers = rng.integers(0, classes, n)
    means = np.arange(classes)[:, None] * np.ones(8)
    x = means[answers] + rng.normal(size=(n, 8)) * np.asarray(spread)[answers, None]
    return (x + offset).reshape(n, 2, 4), answers


def test_shift_reference_limits_hold_per_class_and_the_alarm_rises_and_falls():
    reference = ShiftReference.fit(*_clusters(6000), num_classes=3, quantile=0.95)
    x, answers = _clusters(6000, seed=1)
    exceeds = reference.exceeds(x, answers)
    # Every class exceeds its limit at about 5%, the wide class too (a segment of it alone
    # is no shift); one limit for all would flag most of the wide class.
    for c in range(3):
        assert 0.03 < exceeds[answers == c].mean() < 0.07
    assert reference.distance(x[answers == 2]).mean() > 4 * reference.limits[0]
    shifted = reference.exceeds(*_clusters(1000, offset=3.0, seed=2))
    assert shifted.mean() > 0.5
    detector = ShiftDetector(reference, rate=0.5, level=8.0)
    wide = answers == 2  # a long segment of the widest class only: in distribution
    for start in range(0, int(wide.sum()), 8):
        detector.record(x[wide][start : start + 8], answers[wide][start : start + 8], start)
    assert not detector.alarmed() and not detector.events
    xs, ans = _clusters(200, offset=3.0, seed=3)
    for i in range(200):
        detector.record(xs[i : i + 1], ans[i : i + 1], served=10_000 + i)
        if detector.alarmed():
            break
    assert detector.alarmed() and detector.events[0].served <= 10_000 + 15
    detector.record(x[:2], answers[:2], served=10_100)
    assert detector.alarmed()  # no flapping: it falls only once the sum is back at zero
    for i in range(200):  # back in distribution: the capped CUSUM falls within a few dozen
        detector.record(x[i : i + 1], answers[i : i + 1], served=20_000 + i)
        if not detector.alarmed():
            break
    assert not detector.alarmed() and detector.events[1].served <= 20_000 + 60
    with pytest.raises(ValueError, match="NaN"):
        ShiftReference.fit(np.full((30, 4), np.nan), np.zeros(30), 3, 0.95)
    with pytest.raises(ValueError, match="rate"):
        ShiftDetector(reference, rate=0.04, level=8.0)


def test_guard_distrusts_every_position_on_a_shift_until_outcomes_on_new_inputs_agree():
    guard = AccuracyGuard((0, 3), target=0.99, window=100, min_samples=30, recover_samples=30)
    nominal = np.array([0.5, 0.5], np.float32)
    guard.record(0, np.ones(40, bool), served=40)
    guard.distrust(served=50)
    assert np.isinf(guard.thresholds(nominal)).all() and guard.on.all()
    assert not guard.evidence[0]  # outcomes on the old inputs speak for nothing now
    guard.record(0, np.ones(29, bool), served=80)
    assert not guard.trusted[0]
    guard.record(0, np.ones(1, bool), served=81)
    assert guard.trusted[0] and list(guard.thresholds(nominal)) == [0.5, np.inf]
    guard.record(1, np.r_[np.ones(20, bool), np.zeros(10, bool)], served=90)
    assert not guard.on[1] and not guard.trusted[1]
    guard.record(1, np.ones(40, bool), served=95)
    assert not guard.on[1]  # no recovery on the shifted inputs it failed on
    guard.record(0, np.r_[np.zeros(1, bool), np.ones(20, bool)], served=95)
    guard.trust_all(served=100)  # inputs back: position 3 stays off until it recovers
    assert list(guard.thresholds(nominal)) == [0.5, np.inf]
    assert not guard.evidence[0] and not guard.evidence[1]  # shifted-input outcomes cleared
    guard.record(1, np.ones(30, bool), served=130)
    assert guard.on[1]  # recovered on outcomes from after the shift alone
    assert [(e.position, e.on, e.kind) for e in guard.events] == [
        (0, False, "trust"),
        (3, False, "trust"),
        (0, True, "trust"),
        (3, False, "switch"),
        (3, True, "switch"),
    ]


def test_learner_stops_serving_hits_and_audits_more_while_the_inputs_look_shifted(model):
    settings = _settings(
        audit_fraction=0.1,
        tap_fraction=1.0,
        alarm_audit_fraction=1.0,
        update_every=10**6,
        shift_detect=True,
        guard_recover_samples=10**3,
        guard_window=10**3,
        guard_min_samples=10**3,
        shift_fall_window=10,
    )
    with pytest.raises(ValueError, match="reference images"):
        OnlineLearner(model, _deployment(model, (0.0, 0.0)), settings, max_group=8)
    learner = OnlineLearner(
        model,
        _deployment(model, (0.0, 0.0)),
        settings,
        max_group=8,
        reference_images=_images(400, seed=5),
    )
    clean = _images(80, seed=6)
    shifted = np.full((80, *SHAPE), 255, np.uint8)  # a saturated sensor, say
    for images in (clean, shifted):
        for start in range(0, 80, 8):
            learner.route(images[start : start + 8])
            learner.drain()
        if images is clean:
            assert not learner.shift.alarmed() and (learner.thresholds() == 0).all()
            assert learner.shifted_groups == 0
    assert learner.shift.alarmed() and np.isinf(learner.thresholds()).all()
    served = learner.shift.events[0].served
    assert 80 < served <= 104  # within three groups of the change
    # From the alarm on nobody hits (no audit needed) and every tapped request is sampled.
    audited = learner.audited
    result = learner.route(shifted[:8])
    learner.drain()
    assert not result.hit.any() and (result.exit_stage == learner.last_stage).all()
    assert learner.shifted_groups >= 7 and learner.audited == audited
    for start in range(0, 80, 8):
        learner.route(clean[start : start + 8])
        learner.drain()
    assert not learner.shift.alarmed() and (learner.thresholds() == 0).all()
    assert learner.summary()["shift_events"][-1]["on"] is False


def test_benchmark_plots_shade_corrupted_runs_and_shift_alarms():
    assert _runs(np.array([0, 1, 1, 0, 1], bool)) == [(1, 3), (4, 5)]
    assert _runs(np.zeros(3, bool)) == []
    events = [{"served": 5, "on": True}, {"served": 9, "on": False}, {"served": 12, "on": True}]
    assert _alarm_spans(events, 20) == [(5, 9), (12, 20)]  # the last never fell


def test_background_work_runs_while_idle_and_delays_only_who_arrives_during_it():
    class Work:
        def __init__(self, chunks):
            self.left, self.ran_at = chunks, []

        def pending(self):
            return self.left > 0

        def overdue(self):
            return False

        def run_chunk(self):
            self.left -= 1
            self.ran_at.append(clock.now())

    clock = FakeClock(lambda n: 0.005 if n == 0 else 0.001)
    work = Work(3)
    images = np.zeros((3, 2), np.uint8)

    def route(group, index):
        work.left += 3 if index[0] == 0 else 0  # the first request schedules work
        n = len(group)
        return np.zeros(n, int), np.zeros(n, int), np.zeros(n, bool)

    result = serve(
        route,
        images,
        arrivals=np.array([0.0, 0.003, 0.1]),
        max_group=1,
        max_wait_s=0.0,
        clock=clock,
        progress=False,
        background=work,
    )
    # Request 1 arrived during the first chunk (0.001..0.006) and waited for its end only.
    np.testing.assert_allclose(result.start, [0.0, 0.006, 0.1])
    assert work.left == 0 and len(work.ran_at) == 6


def test_online_config_is_validated(model):
    assert_config_rejects("online", "audit_fraction", 1.5)
    assert_config_rejects("online", "tap_fraction", 0.0)
    assert_config_rejects("online", "alarm_audit_fraction", -0.1)
    assert_config_rejects("online", "tap_fraction", 0.05)  # below the audit fraction
    with pytest.raises(ValueError, match="drawn among the tapped"):
        OnlineLearner(model, _deployment(model), _settings(audit_fraction=0.5, tap_fraction=0.2))
    assert_config_rejects("online", "guard_window", 5)
    assert_config_rejects("online", "audit_segments", -1)
    assert_config_rejects("online", "shift_rate", 0.05)  # no more than in distribution
    assert_config_rejects("online", "shift_quantile", 1.0)
    config = base_config()
    config.online.guard = False
    with pytest.raises(ConfigError, match="online.shift_detect="):
        validate_config(config)
    settings = OnlineSettings.from_config(base_config().online)
    assert dataclasses.asdict(settings)["update"]["target"] == 0.99
