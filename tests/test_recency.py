"""The recency memory: lookups (device and host), vetoes, weighted calibration, and the online
learner serving a video-like stream from it without recompiling, safely across a scene cut,
and at no change of answers on a stream without repeats."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_config_rejects, fc_caches, tiny_mlp_model

from gati_jax import data
from gati_jax.online.audit import AuditNetwork
from gati_jax.online.config import online_config
from gati_jax.online.learner import OnlineLearner, OnlineSettings, recency_memory_positions
from gati_jax.online.programs import route_deferred, slot_part, unpack_taps
from gati_jax.online.recency import (
    NO_SCORE,
    UNSURE,
    OutcomeWindow,
    RecencyMemory,
    calibrate_weighted,
    memory_lookup,
    pooled_key,
)
from gati_jax.online.shift import ShiftDetector, ShiftReference
from gati_jax.runtime.deployment import Deployment
from gati_jax.runtime.packing import Packing
from gati_jax.runtime.segments import SegmentedNetwork

SHAPE = (6, 6, 1)
CLASSES = 4
POSITIONS = (0, 1)


@pytest.fixture(scope="module")
def model():
    return tiny_mlp_model(SHAPE, CLASSES)


def _deployment(model, thresholds=(2.0, 2.0)):
    """Caches that never hit (scores are at most 1): every request the memory does not
    answer runs to the end."""
    heads, params = fc_caches(model.network, POSITIONS, CLASSES)
    return Deployment("gati", POSITIONS, heads, params, np.asarray(thresholds, np.float32))


def _settings(**changes):
    """The config section with small, fast test values and a memory at position 0."""
    section = online_config()
    section.update(
        dict(
            update_every=40,
            max_backoff=1,
            audit_fraction=0.2,
            tap_fraction=0.3,
            alarm_audit_fraction=0.0,
            audit_group=2,
            audit_segments=1,
            window_bytes=1 << 16,
            window_items=256,
            prior_window=0,
            shift_detect=False,
            steps=0,
            target=0.9,
            calibration_confidence=0.5,
            min_evidence=10,
            recency_positions=1,
            recency_capacity=32,
            recency_neighbours=3,
            recency_min_base_prob=0.0,
            recency_target=0.95,
            recency_outcomes=200,
            recency_publish_every=2,
            recency_audit_fraction=0.5,
        )
    )
    section.update(changes)
    return OnlineSettings.from_config(section)


def _scenes(model, count, frames, noise=2.0, seed=0):
    """A video-like stream: ``count`` scenes, each one source image (whose base answer is
    sure: a margin of the network's logits) seen ``frames`` times with a little noise."""
    rng = np.random.default_rng(seed)
    sources = []
    while len(sources) < count:
        image = rng.integers(0, 256, SHAPE).astype(np.float32)
        logits = np.asarray(
            model.network.apply(model.variables, data.normalize(image[None], model.mean, model.std))
        )[0]
        top = np.sort(logits)[-2:]
        if top[1] - top[0] > 0.3:
            sources.append(image)
    frames_ = [np.clip(s + noise * rng.standard_normal((frames, *SHAPE)), 0, 255) for s in sources]
    return np.concatenate(frames_).astype(np.uint8)


def _base_answers(model, images):
    logits = model.network.apply(model.variables, data.normalize(images, model.mean, model.std))
    return np.asarray(logits).argmax(-1)


def _serve(learner, images, group=1):
    out = []
    for start in range(0, len(images), group):
        out.append(learner.route(images[start : start + group]))
        learner.drain()
    return tuple(np.concatenate(parts) for parts in zip(*out))


def test_device_and_host_lookups_agree_and_unsure_labels_veto():
    rng = np.random.default_rng(0)
    memory = RecencyMemory(capacity=16, key_size=5, neighbours=3)
    keys = rng.standard_normal((12, 5)).astype(np.float32)
    answers = rng.integers(0, 3, 12)
    memory.add(keys, answers, np.ones(12, bool))
    queries = np.concatenate([keys[:4] + 1e-3, rng.standard_normal((6, 5))]).astype(np.float32)
    host = memory.lookup(queries)
    arrays = jax.tree.map(jnp.asarray, memory.arrays(0.0))
    device = jax.jit(lambda m, q: memory_lookup(m, q, 3))(arrays, queries)
    np.testing.assert_array_equal(np.asarray(device[0]), host[0])
    np.testing.assert_allclose(np.asarray(device[1]), host[1], atol=1e-5)
    # Near-identical keys with one answer: a hit near similarity 1 with that answer.
    near = keys[:1] + 1e-3 * rng.standard_normal((3, 5)).astype(np.float32)
    same = RecencyMemory(8, 5, neighbours=3)
    same.add(near, np.full(3, 2), np.ones(3, bool))
    answer, score = same.lookup(keys[:1] * 2)  # keys are compared by direction
    assert answer[0] == 2 and score[0] == pytest.approx(1.0, abs=1e-4)
    # An unsure label among the neighbours vetoes the hit; so do too few entries.
    same.add(keys[:1], np.array([2]), np.array([False]))
    assert same.values[3] == UNSURE and same.lookup(keys[:1])[1][0] == NO_SCORE
    assert RecencyMemory(8, 5, neighbours=3).lookup(keys[:1])[1][0] == NO_SCORE


def test_memory_ring_keeps_the_newest_in_fixed_arrays():
    memory = RecencyMemory(capacity=4, key_size=2)
    memory.add(np.eye(2)[[0, 1, 0, 1, 0, 1]] + 0.0, np.arange(6), np.ones(6, bool))
    assert memory.size == 4 and memory.count == 6
    assert sorted(memory.values.tolist()) == [2, 3, 4, 5]
    arrays = memory.arrays(0.5)
    assert arrays["keys"].shape == (4, 2) and arrays["threshold"][0] == 0.5
    assert memory.nbytes == 4 * 2 * 4 + 4 * 4 + 4 * 4 + 4


def test_weighted_calibration_needs_evidence_and_weighs_by_inverse_probability():
    rng = np.random.default_rng(1)
    scores = rng.uniform(0, 1, 2000)
    agree = rng.uniform(0, 1, 2000) < np.where(scores > 0.5, 0.999, 0.7)
    got = calibrate_weighted(scores, agree, np.ones(2000), 0.98, 0.9, 50)
    assert got.accepted and 0.45 < got.threshold < 0.6
    assert got.bound >= 0.98 and got.evidence >= 50
    # Too little evidence: no threshold.
    few = calibrate_weighted(scores[:40], agree[:40], np.ones(40), 0.98, 0.9, 50)
    assert not few.accepted
    # Outcomes labelled with probability 0.1 weigh 10: one error among them counts as ten,
    # and the effective sample size shrinks with the weights' spread.
    weights = np.where(scores > 0.5, 10.0, 1.0)
    heavy = calibrate_weighted(scores, agree, weights, 0.98, 0.9, 50)
    assert heavy.evidence < got.evidence * 10
    window = OutcomeWindow(100)
    window.add(scores, agree, np.ones(2000))
    assert window.count == 2000
    np.testing.assert_array_equal(np.sort(window.scores), np.sort(scores[-100:]).astype(np.float32))
    held, evidence = window.at(0.5)
    assert evidence == pytest.approx(np.sum(window.scores >= 0.5))
    assert held <= evidence


def test_memory_answers_a_video_like_stream_early_and_safely_without_recompiling(model):
    images = _scenes(model, count=3, frames=150)
    base = _base_answers(model, images)
    learner = OnlineLearner(model, _deployment(model), _settings(), max_group=1)
    learner.warm_up()
    traces = learner.summary()["trace_count"]
    answer, exit_stage, hit = _serve(learner, images)
    summary = learner.summary()
    assert summary["trace_count"] == traces  # new memories and thresholds, no new program
    assert summary["memory_log"] and np.isfinite(summary["memory_log"][0]["threshold"])
    # Admitted only on evidence, then serving most frames at the first position.
    admitted = summary["memory_log"][0]["served"]
    assert admitted >= 10
    late = slice(admitted + 20, None)
    assert np.mean(exit_stage[late] == 0) > 0.5
    assert np.array_equal(
        answer[exit_stage == learner.last_stage], base[exit_stage == learner.last_stage]
    )
    assert np.mean(answer == base) >= 0.98
    # The memory's arrays keep their shapes (an argument of the compiled program).
    assert learner.serving_params[0]["memory"]["keys"].shape == (32, 16)
    assert summary["memory_bytes"] == [learner.memories[0].nbytes]


def test_a_scene_cut_misses_until_the_new_scene_is_labelled(model):
    images = _scenes(model, count=2, frames=200, seed=3)
    base = _base_answers(model, images)
    learner = OnlineLearner(model, _deployment(model), _settings(), max_group=1)
    answer, exit_stage, _ = _serve(learner, images)
    cut = 200
    assert np.mean(exit_stage[100:cut] == 0) > 0.5  # serving the first scene
    # The first frames of the new scene are far from every stored key: they run to the end
    # and label the memory, which then answers the new scene too.
    assert exit_stage[cut] == learner.last_stage
    assert np.mean(answer[cut:] == base[cut:]) >= 0.98
    assert np.mean(exit_stage[cut + 50 :] == 0) > 0.5


def test_without_repeats_the_memory_never_serves_and_answers_stay_the_static_ones(model):
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (300, *SHAPE), dtype=np.uint8)
    deployment = _deployment(model, (0.6, 0.6))
    # Without the guard, which would switch these untrained caches off, the decisions are
    # comparable request by request.
    # A memory must show 0.995 agreement on the bound before it serves: the tiny network's
    # first activations hardly tell random images apart, so it cannot.
    learner = OnlineLearner(
        model,
        deployment,
        _settings(guard=False, recency_target=0.995, calibration_confidence=0.9),
        max_group=8,
    )
    answer, exit_stage, hit = _serve(learner, images, group=8)
    static = deployment.router(model, max_group=8)
    expected = [
        static.route(deployment.params, deployment.thresholds, images[s : s + 8])
        for s in range(0, 300, 8)
    ]
    np.testing.assert_array_equal(answer, np.concatenate([e.answer for e in expected]))
    np.testing.assert_array_equal(exit_stage, np.concatenate([e.exit_stage for e in expected]))
    assert not learner.summary()["memory_log"]
    assert learner._serving_memories == (False,)


def test_light_taps_carry_keys_and_scores_not_cache_inputs_and_unpack_later(model):
    learner = OnlineLearner(model, _deployment(model), _settings(), max_group=8)
    images = _images = np.random.default_rng(6).integers(0, 256, (5, *SHAPE), dtype=np.uint8)
    result, raw = route_deferred(
        learner.light, learner.serving_params, learner.slot_thresholds(), images
    )
    expected, tapped = learner.light.route_tapped(
        learner.serving_params, learner.slot_thresholds(), images
    )
    for got, want in zip(result, expected):
        np.testing.assert_array_equal(got, want)
    unpacked = unpack_taps(learner.light, raw)
    assert set(unpacked[0]) == {"answer", "score", "key", "m_answer", "m_score"}
    assert set(unpacked[-1]) == {"prob"} and learner.slots[-1].confidence
    for a, b in zip(jax.tree.leaves(unpacked), jax.tree.leaves(tapped)):
        np.testing.assert_array_equal(a, b)
    key = np.asarray(
        pooled_key(
            model.network.apply_stage(
                model.variables, 0, data.normalize(images, model.mean, model.std)
            ),
            7,
        )
    )
    np.testing.assert_allclose(unpacked[0]["key"], key, rtol=1e-5, atol=1e-5)
    # The confidence tap is the base network's top softmax probability.
    logits = model.network.apply(model.variables, data.normalize(images, model.mean, model.std))
    np.testing.assert_allclose(
        unpacked[-1]["prob"], np.asarray(jax.nn.softmax(logits)).max(-1), rtol=1e-5
    )
    # The full program also returns the caches' inputs (for their replay windows).
    assert (
        "x"
        in learner.router.route_tapped(learner.serving_params, learner.slot_thresholds(), images)[
            1
        ][0]
    )


def _memory_arrays(packing, params):
    """Indices of the flat arrays that hold the memories' leaves."""
    paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    return {g for path, (g, _) in zip(paths, packing.offsets) if slot_part(path) == "memory"}


def test_a_memory_publication_sends_the_memory_alone_and_serves_as_a_full_repack(
    model, monkeypatch
):
    learner = OnlineLearner(model, _deployment(model, (0.6, 0.6)), _settings(), max_group=2)
    learner.warm_up()
    router = learner.light
    images = _scenes(model, count=1, frames=4)
    learner.route(images[:2])
    learner.drain()
    traces, programs = router.trace_count, len(router._programs)
    before = router._packed(learner.serving_params)[0]
    memory = learner.memories[0]
    rng = np.random.default_rng(9)
    capacity, size = memory.keys.shape
    memory.add(
        rng.standard_normal((capacity, size)),
        rng.integers(0, CLASSES, capacity),
        rng.random(capacity) < 0.8,
    )
    memory.threshold = 0.5  # kept by the publication: no outcome argues against it
    sent = []
    put = jax.device_put
    monkeypatch.setattr(jax, "device_put", lambda x, *a, **k: sent.append(x) or put(x, *a, **k))
    learner._publish_memories()
    monkeypatch.undo()
    assert learner._serving_memories == (True,)
    packing = router._last_packed.packing
    served = router._packed(learner.serving_params)[0]  # what the next group is served with
    memory_arrays = _memory_arrays(packing, learner.serving_params)
    assert memory_arrays and len(memory_arrays) < len(served)
    # (b) The caches' device arrays are the very same objects; only the memory's were sent.
    for i, (old, new) in enumerate(zip(before, served)):
        assert (old is not new) if i in memory_arrays else (old is new), i
    assert any(not np.array_equal(before[i], served[i]) for i in memory_arrays)
    elements = sum(a.size for a in jax.tree.leaves(learner.serving_params[0]["memory"]))
    assert sum(np.size(a) for a in jax.tree.leaves(sent)) == elements
    # (a) Bit for bit what a full re-pack serves: every leaf copied (NumPy leaves are never
    # reused) goes through the same router, which packs and sends all of it again.
    copy = jax.tree.map(np.array, learner.serving_params)
    thresholds = learner.slot_thresholds()
    incremental = route_deferred(router, learner.serving_params, thresholds, images[2:])[1]
    full = router._packed(copy)[0]
    assert all(f is not s for f, s in zip(full, served))
    assert len(full) == len(served)
    for f, s in zip(full, served):
        assert f.dtype == s.dtype and np.array_equal(f, s)
    np.testing.assert_array_equal(
        route_deferred(router, copy, thresholds, images[2:])[1], incremental
    )
    # (c) Nothing recompiled: the same program took the new arguments.
    assert router.trace_count == traces and len(router._programs) == programs


def test_packing_reuses_unchanged_device_arrays_of_a_part_and_never_numpy_ones():
    tree = (
        {
            "cache": {"w": jnp.ones((70, 70)), "b": jnp.arange(3.0)},
            "memory": {"keys": np.ones((2, 3), np.float32), "threshold": np.zeros(1, np.float32)},
        },
    )
    packing = Packing.of(tree, part=slot_part)
    # Parts never share an array: the caches' small leaves, the big kernel, the memory's.
    assert packing.groups == ("float32", "float32", "float32")
    flats = packing.pack(tree)
    tree[0]["memory"]["keys"][0, 0] = 7.0  # changed in place: the same object
    again = packing.pack(tree, (tree, flats))
    memory = _memory_arrays(packing, tree).pop()
    assert float(again[memory][0]) == 7.0 and again[memory] is not flats[memory]
    assert all(again[i] is flats[i] for i in range(3) if i != memory)
    # A new cache leaf re-packs its array (and the NumPy memory's), not the kernel's own.
    new = ({**tree[0], "cache": {**tree[0]["cache"], "b": jnp.zeros(3)}},)
    assert packing.fits(new, tree)
    third = packing.pack(new, (tree, again))
    leaves = jax.tree.leaves(tree)
    kernel = packing.offsets[next(i for i, x in enumerate(leaves) if x is tree[0]["cache"]["w"])][0]
    assert kernel == 2 and third[kernel] is again[kernel] and third[0] is not again[0]
    np.testing.assert_array_equal(third[0][:3], np.zeros(3))
    assert not packing.fits(({**new[0], "cache": {**new[0]["cache"], "b": jnp.zeros(4)}},), new)


def test_slot_router_times_the_learner_program_on_a_deployment_parameters(model):
    deployment = _deployment(model, (0.0, 0.0))
    learner = OnlineLearner(model, deployment, _settings(), max_group=8)
    router = learner.tapped_router(2)
    images = np.zeros((2, *SHAPE), np.float32)
    rows = np.zeros(2, np.int32)
    out = router.compiled(deployment.params, deployment.thresholds, images, rows)
    assert np.asarray(out)[:, 1].tolist() == [0, 0]  # every request exits at position 0
    assert "dot" in router.hlo_text(deployment.params, deployment.thresholds, images, rows)


def test_audit_network_returns_the_base_answers_and_their_probabilities(model):
    images = np.random.default_rng(7).integers(0, 256, (6, *SHAPE), dtype=np.uint8)
    for segments in (1, 3):
        answers, probs = AuditNetwork(model, segments).answers_and_probs(images)
        np.testing.assert_array_equal(answers, SegmentedNetwork(model, segments).answers(images))
        assert np.all((probs > 1 / CLASSES - 1e-6) & (probs <= 1))


def test_shift_alarm_stays_up_while_the_recent_exceedance_rate_stays_high():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((4000, 6))
    reference = ShiftReference.fit(x, np.zeros(4000, int), 1, 0.95)
    limit = reference.limits[0]

    def stream(rate, n):  # requests exceeding their limit at ``rate``
        far = rng.uniform(0, 1, n) < rate
        out = rng.standard_normal((n, 6)) * 0.5
        out[far] *= np.sqrt(16 * limit)  # a mean square of about 4 limits
        return out

    flapping = ShiftDetector(reference, rate=0.5, level=8.0)
    steady = ShiftDetector(reference, rate=0.5, level=8.0, fall_rate=0.1, fall_window=100)
    for detector in (flapping, steady):
        detector.record(stream(0.8, 40), np.zeros(40, int), 0)
        # A camera's mild shift: scenes exceeding at 15% or 35%, about the CUSUM's
        # break-even (22% at rate 0.5) on either side.
        for scene in range(20):
            for i in range(150):
                rate = 0.15 if scene % 2 else 0.35
                detector.record(stream(rate, 1), np.zeros(1, int), 40 + 150 * scene + i)
    assert len(flapping.events) > 4
    assert steady.alarmed() and len(steady.events) == 1
    for i in range(1000):  # back in distribution: it falls
        steady.record(stream(0.0, 1), np.zeros(1, int), 4000 + i)
    assert not steady.alarmed()


def test_recency_config_is_validated():
    assert_config_rejects("online", "recency_positions", -1)
    assert_config_rejects("online", "recency_neighbours", 1000)  # more than the capacity
    assert_config_rejects("online", "recency_min_base_prob", 1.5)
    assert_config_rejects("online", "recency_target", 0.0)
    assert_config_rejects("online", "recency_audit_fraction", 2.0)
    assert_config_rejects("online", "shift_fall_rate", 0.01)  # below the in-distribution rate
    assert_config_rejects("online", "shift_fall_window", 0)


def test_online_timeline_bins_exits_and_lists_the_learner_events(tmp_path):
    from gati_jax.experiments.online_timeline import (
        exit_timeline,
        learner_events,
        plot_online_timeline,
    )

    exit_stage = np.array([0, 0, 9, 9, 5, 0])
    hit = exit_stage < 9
    answer, base = np.array([1, 1, 2, 2, 3, 0]), np.array([1, 2, 2, 2, 3, 0])
    timeline = exit_timeline(exit_stage, hit, answer, base, bin_size=4)
    assert timeline["start"] == [0, 4]
    assert timeline["hit_rate"] == [0.5, 1.0] and timeline["mean_exit_stage"] == [4.5, 2.5]
    assert timeline["agreement"] == [0.75, 1.0]
    online = {
        "timeline": {"gati": timeline, "gati-online": timeline},
        "update_log": [
            {
                "applied": 40,
                "trained": True,
                "verdicts": [
                    {"reason": "accepted", "updated": True},
                    {"reason": "waiting for data", "updated": False},
                    {"reason": "rejected", "updated": False},
                ],
            }
        ],
        "memory_log": [{"served": 12, "threshold": 0.9}],
        "guard_events": [{"served": 30, "kind": "switch"}, {"served": 31, "kind": "trust"}],
        "shift_events": [{"served": 5, "on": True}, {"served": 9, "on": False}],
    }
    assert learner_events(online) == {
        "accepted": [40],
        "rejected": [40],
        "memory": [12],
        "guard": [30],
        "shift": [5],
    }
    plot_online_timeline({"video": online}, {"video": [3]}, tmp_path / "timeline.png")
    assert (tmp_path / "timeline.png").stat().st_size > 0


def test_memory_positions_first_deployed_or_the_first_stage():
    assert recency_memory_positions((3, 7), 1, earliest=False) == (3,)
    assert recency_memory_positions((3, 7), 1, earliest=True) == (0,)
    assert recency_memory_positions((3, 7), 2, earliest=True) == (0, 3)
    assert recency_memory_positions((0, 7), 2, earliest=True) == (0, 7)
    assert recency_memory_positions((3, 7), 0, earliest=True) == ()
    assert recency_memory_positions((), 1, earliest=True) == (0,)


@pytest.mark.parametrize("earliest", [False, True])
def test_a_memory_at_the_first_stage_serves_before_a_deeper_first_cache(model, earliest):
    heads, params = fc_caches(model.network, (1,), CLASSES)
    deployment = Deployment("gati", (1,), heads, params, np.asarray([2.0], np.float32))
    learner = OnlineLearner(model, deployment, _settings(recency_earliest=earliest), max_group=1)
    assert learner.memory_positions == ((0,) if earliest else (1,))
    images = _scenes(model, count=3, frames=150)
    base = _base_answers(model, images)
    answer, exit_stage, _ = _serve(learner, images)
    admitted = learner.summary()["memory_log"][0]["served"]
    late = exit_stage[admitted + 20 :]
    assert np.mean(late == learner.memory_positions[0]) > 0.5
    assert not np.any(late == (1 if earliest else 0))  # the cache never hits; no memory there
    assert np.mean(answer == base) >= 0.98


def test_shift_detection_reads_the_first_cache_position_with_the_memory_elsewhere(model):
    heads, params = fc_caches(model.network, (1,), CLASSES)
    deployment = Deployment("gati", (1,), heads, params, np.asarray([2.0], np.float32))
    reference = _scenes(model, count=10, frames=3, seed=1)
    settings = _settings(recency_earliest=True, shift_detect=True, shift_reference=20)
    learner = OnlineLearner(model, deployment, settings, 2, reference_images=reference)
    assert learner.memory_positions == (0,)
    slot = learner._cache_slot[0]  # pylint: disable=protected-access
    assert learner.slots[slot].position == 1 and learner.slots[slot].memory is None
    never = np.full(len(learner.slots), np.inf, np.float32)
    _, light = learner.light.route_tapped(learner.serving_params, never, reference[:2])
    key, answer = learner._shift_inputs(light)  # pylint: disable=protected-access
    x = data.normalize(reference[:2], model.mean, model.std)
    for stage in (0, 1):
        x = model.network.apply_stage(model.variables, stage, x)
    np.testing.assert_allclose(key, pooled_key(x, settings.recency_grid), atol=1e-5)
    assert "x" not in light[slot] and answer.shape == (2,)
