"""The compiled router: equals the Python-loop reference, skips exited groups, never recompiles."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROUTER_CLASSES, ROUTER_SHAPE, fc_caches

from gati_jax.inference import BaseModel
from gati_jax.models import StagedNetwork
from gati_jax.models.mlp import DenseStage
from gati_jax.models.resnet import Head
from gati_jax.runtime import ReferenceRouter, Router, bucket_sizes, policy_builder
from gati_jax.runtime.packing import Packing

SHAPE, CLASSES = ROUTER_SHAPE, ROUTER_CLASSES  # the `base` fixture's network (conftest.py)
MEAN, STD = np.array([0.5], np.float32), np.array([0.25], np.float32)


def _model(network, variables):
    return BaseModel(network, variables, MEAN, STD, {})


def _router(network, variables, positions, heads, max_group, policy="gati"):
    decides = tuple(policy_builder(policy)(h) for h in heads)
    return Router(_model(network, variables), positions, decides, max_group)


def _caches(network, positions, seed=0):
    heads, params = fc_caches(network, positions, CLASSES, seed)
    return list(heads), params


def _bank(network, positions, thresholds, metrics=None):
    """Untrained ``fc-d1-h8`` caches at ``positions`` as bank candidates, each calibrated to
    its threshold for 99% agreement; returns (candidates, bank)."""
    from gati_jax.caches import CacheBank, Candidate

    _, params = _caches(network, positions)
    cands = [
        Candidate(
            p,
            "fc-d1-h8",
            0,
            1e-3,
            1,
            network.activation_shapes()[p][1:],
            params[k],
            {"0.99": t},
            dict(metrics or {}),
        )
        for k, (p, t) in enumerate(zip(positions, thresholds))
    ]
    return cands, CacheBank(CLASSES, 8, cands, {"positions": list(positions)})


def _images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, *SHAPE), dtype=np.uint8)


def _base_answers(network, variables, images):
    from gati_jax import data

    logits = network.apply(variables, data.normalize(images, MEAN, STD))
    return np.asarray(jnp.argmax(logits, -1))


def test_bucket_sizes():
    assert bucket_sizes(32) == (1, 2, 4, 8, 16, 32)
    assert bucket_sizes(12) == (1, 2, 4, 8, 12)
    assert bucket_sizes(1) == (1,)


def test_none_policy_returns_the_base_answers(base):
    network, variables = base
    router = Router(_model(network, variables), (), (), max_group=16)
    images = _images(13)
    result = router.route((), [], images)
    np.testing.assert_array_equal(result.answer, _base_answers(network, variables, images))
    assert (result.exit_stage == network.num_stages - 1).all() and not result.hit.any()


# Compaction is policy-agnostic: gati, and the oracle (whose base answers are gathered too).
@pytest.mark.parametrize(
    "policy,compact",
    [
        *((p, False) for p in ("gati", "confidence", "entropy", "oracle")),
        ("gati", True),
        ("oracle", True),
    ],
)
def test_router_equals_reference_for_random_thresholds(base, policy, compact):
    network, variables = base
    positions = (0, 1, 3)
    heads, params = _caches(network, positions)
    decides = tuple(policy_builder(policy)(h) for h in heads)
    router = Router(_model(network, variables), positions, decides, max_group=16, compact=compact)
    rng = np.random.default_rng(1)
    images = _images(16, seed=2)
    base_answers = _base_answers(network, variables, images)
    exits_seen = set()
    for _ in range(6):
        if policy == "entropy":
            thresholds = rng.uniform(0.5, 1.4, 3)
        else:
            thresholds = rng.uniform(0.2, 0.7, 3)
        n = int(rng.integers(1, 17))
        got = router.route(params, thresholds, images[:n], base_answers[:n])
        want = ReferenceRouter(_model(network, variables), positions, decides).route(
            params, thresholds, images[:n], base_answers[:n]
        )
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
        # Requests that do not exit get exactly the base network's answer.
        full = ~got.hit
        np.testing.assert_array_equal(got.answer[full], base_answers[:n][full])
        exits_seen |= set(got.exit_stage.tolist())
    assert len(exits_seen) >= 2  # the thresholds produced real early exits
    if policy == "oracle":
        assert (
            router.route(params, thresholds, images, base_answers).answer.tolist()
            == base_answers.tolist()
        )


def test_new_parameters_and_thresholds_never_recompile(base):
    network, variables = base
    heads, params = _caches(network, (0, 2))
    router = _router(network, variables, (0, 2), heads, 8)
    images = _images(8)
    router.route(params, [0.5, 0.5], images)
    traces = router.trace_count
    for seed in range(1, 4):
        _, new_params = _caches(network, (0, 2), seed=seed)
        router.route(new_params, np.random.default_rng(seed).uniform(size=2), images)
    assert router.trace_count == traces == 1
    router.route(params, [0.5, 0.5], images[:3])  # a new bucket (4)
    assert router.trace_count == 2


def test_thresholds_changed_in_place_take_effect(base):
    # The router keeps the last thresholds on the device and sends them again only when their
    # values change: an array the caller edits in place must not be mistaken for the old one.
    network, variables = base
    heads, params = _caches(network, (0, 2))
    router = _router(network, variables, (0, 2), heads, 4)
    images = _images(4)
    thresholds = np.array([2.0, 2.0], np.float32)  # scores lie in [0, 1]: nobody exits
    assert (router.route(params, thresholds, images).exit_stage == network.num_stages - 1).all()
    thresholds[0] = -1.0  # everybody exits at the first position
    assert (router.route(params, thresholds, images).exit_stage == 0).all()
    thresholds[:] = [2.0, -1.0]
    assert (router.route(params, thresholds, images).exit_stage == 2).all()
    assert (router.route(params, [2.0, 2.0], images).exit_stage == network.num_stages - 1).all()


def test_prepared_parameters_are_not_packed_again_by_the_next_group(base, monkeypatch):
    network, variables = base
    heads, params = _caches(network, (0, 2))
    router = _router(network, variables, (0, 2), heads, 4)
    images = _images(4)
    router.route(params, [0.5, 0.5], images)
    _, new_params = _caches(network, (0, 2), seed=1)
    want = _router(network, variables, (0, 2), heads, 4).route(new_params, [0.5, 0.5], images)
    router.prepare(new_params)

    def fail(*args):
        raise AssertionError("packed on the serving path")

    monkeypatch.setattr(Packing, "pack", fail)
    got = router.route(new_params, [0.5, 0.5], images)  # served from the prepared copy
    assert router.trace_count == 1
    with pytest.raises(AssertionError, match="packed on the serving path"):
        router.route(params, [0.5, 0.5], images)  # the old ones are no longer held
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_packing_round_trips_whole_and_one_item_at_a_time():
    rng = np.random.default_rng(0)
    tree = (
        {"w": rng.normal(size=(3, 4)).astype(np.float32), "n": np.arange(5, dtype=np.int32)},
        {"b": rng.normal(size=(2,)).astype(np.float32)},
        {"w": rng.normal(size=(4, 1)).astype(np.float32), "s": np.float32(2.5)},
    )
    packing = Packing.of(tree)
    flats = packing.pack(tree)
    assert [str(f.dtype) for f in flats] == ["int32", "float32"]
    whole = packing.unpack(flats)
    for k, item in enumerate(tree):
        one = packing.unpack_item(flats, k)
        for got in (whole[k], one):
            assert jax.tree.structure(got) == jax.tree.structure(item)
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(item)):
                np.testing.assert_array_equal(np.asarray(a), b)
    with pytest.raises(ValueError, match=r"\(1, 4\) float32 where \(4, 1\)"):
        packing.pack((tree[0], tree[1], {"w": np.zeros((1, 4), np.float32), "s": np.float32(1)}))


def test_packing_gives_large_leaves_arrays_of_their_own():
    # Sliced out of a shared array, a large kernel would be copied on every call.
    rng = np.random.default_rng(1)
    tree = (
        {"big": rng.normal(size=(64, 8)).astype(np.float32), "b": np.ones(8, np.float32)},
        {"big": rng.normal(size=(8, 64)).astype(np.float32), "n": np.arange(3)},
    )
    packing = Packing.of(tree, own_array_min=512)
    flats = packing.pack(tree)
    assert [f.shape for f in flats] == [(8,), (3,), (512,), (512,)]
    np.testing.assert_array_equal(np.asarray(flats[2]), tree[0]["big"].reshape(-1))
    np.testing.assert_array_equal(np.asarray(flats[3]), tree[1]["big"].reshape(-1))
    for k, item in enumerate(tree):
        for got, want in zip(jax.tree.leaves(packing.unpack_item(flats, k)), jax.tree.leaves(item)):
            np.testing.assert_array_equal(np.asarray(got), want)
    # Inside the compiled program a large leaf is the argument itself, not a slice of it.
    shared = Packing.of(tree, own_array_min=10**9)
    for layout, slices in ((packing, 0), (shared, 1)):
        hlo = (
            jax.jit(lambda f, p=layout: p.unpack_item(f, 1)["big"])
            .lower(layout.pack(tree))
            .as_text()
        )
        assert hlo.count("stablehlo.slice") == slices


class CountingDense(nn.Module):
    """A stage that reports to the host each time it actually runs."""

    features: int

    @nn.compact
    def __call__(self, x, train=False):
        jax.debug.callback(CALLS.append, 1)
        return DenseStage(self.features)(x)


CALLS: list[int] = []


def test_a_group_that_exits_at_the_first_position_runs_no_later_stage():
    network = StagedNetwork(
        "counting", (DenseStage(16), CountingDense(12), Head(CLASSES)), SHAPE, CLASSES
    )
    variables = network.init(jax.random.key(0))
    heads, params = _caches(network, (0,))
    router = _router(network, variables, (0,), heads, 8)
    images = _images(5)  # padded to a bucket of 8: the 3 padding rows must not count
    CALLS.clear()
    result = router.route(params, [0.0], images)  # everyone hits
    jax.effects_barrier()
    assert result.hit.all() and (result.exit_stage == 0).all()
    assert CALLS == []
    result = router.route(params, [1.1], images)  # nobody hits
    jax.effects_barrier()
    assert not result.hit.any() and CALLS == [1]


ROWS: list[int] = []


class RowCountingDense(nn.Module):
    """A stage that reports to the host how many rows it ran on, each time it runs."""

    features: int

    @nn.compact
    def __call__(self, x, train=False):
        jax.debug.callback(lambda a: ROWS.append(a.shape[0]), x)
        return DenseStage(self.features)(x)


def test_compaction_runs_later_stages_on_the_smallest_bucket_of_rows_left():
    network = StagedNetwork(
        "rows",
        (DenseStage(16), RowCountingDense(12), DenseStage(8), RowCountingDense(8), Head(CLASSES)),
        SHAPE,
        CLASSES,
    )
    variables = network.init(jax.random.key(0))
    heads, params = _caches(network, (0, 2))
    decides = tuple(policy_builder("gati")(h) for h in heads)
    model = _model(network, variables)
    plain = Router(model, (0, 2), decides, 16)
    compact = Router(model, (0, 2), decides, 16, compact=True)
    images = _images(13, seed=3)  # a bucket of 16, 3 padding rows
    from gati_jax import data
    from gati_jax.caches.lookup import make_lookup

    head = heads[0]
    x = network.apply_stage(variables, 0, data.normalize(images, MEAN, STD))
    scores = np.sort(
        np.asarray(
            make_lookup(head.spec, head.num_classes, head.pool_factor, head.selector_hidden)(
                params[0], x
            )[1]
        )
    )
    seen = set()
    # Just above the (left)th lowest score, `left` rows miss: 1, 2, 3, 5, 9, 13 and none.
    for threshold in [*(scores[left - 1] + 1e-6 for left in (1, 2, 3, 5, 9, 13)), 0.0]:
        thresholds = [threshold, 1.1]  # only position 0 exits
        want = plain.route(params, thresholds, images)
        ROWS.clear()
        got = compact.route(params, thresholds, images)
        jax.effects_barrier()
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
        left = int((~got.hit).sum())
        bucket = 0 if left == 0 else min(b for b in compact.buckets if b >= left)
        # Stage 1 runs on the rows left after position 0; stage 3 on those left after 2.
        assert ROWS == ([bucket, bucket] if left else []), (left, ROWS)
        seen.add(bucket)
    assert seen == {0, 1, 2, 4, 8, 16}  # every bucket, and the skip
    assert compact.trace_count == 1


def test_compaction_needs_no_taps_and_no_mesh(base):
    network, variables = base
    heads, _ = _caches(network, (0,))
    decides = (policy_builder("gati")(heads[0]),)
    with pytest.raises(ValueError, match="compaction"):
        Router(_model(network, variables), (0,), decides, 8, taps=(lambda p, x: x,), compact=True)


@pytest.mark.parametrize("compact", [False, True], ids=["plain", "compacted"])
def test_padding_rows_never_change_results(base, compact):
    network, variables = base
    heads, params = _caches(network, (0, 2))
    router = Router(
        _model(network, variables),
        (0, 2),
        tuple(policy_builder("gati")(h) for h in heads),
        16,
        compact=compact,
    )
    images = _images(16, seed=5)
    together = router.route(params, [0.45, 0.4], images[:11])
    for i in range(11):
        alone = router.route(params, [0.45, 0.4], images[i : i + 1])
        assert (alone.answer[0], alone.exit_stage[0], alone.hit[0]) == (
            together.answer[i],
            together.exit_stage[i],
            together.hit[i],
        )


def test_bad_requests_get_clear_errors(base):
    network, variables = base
    router = Router(_model(network, variables), (), (), max_group=4)
    with pytest.raises(ValueError, match="shape"):
        router.route((), [], np.zeros((2, 5, 5, 1), np.uint8))
    with pytest.raises(TypeError, match="dtype"):
        router.route((), [], np.zeros((2, *SHAPE), np.int64))
    bad = np.zeros((2, *SHAPE), np.float32)
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        router.route((), [], bad)
    with pytest.raises(ValueError, match="empty"):
        router.route((), [], np.zeros((0, *SHAPE), np.uint8))
    with pytest.raises(ValueError, match="exceeds max_group=4"):
        router.route((), [], np.zeros((5, *SHAPE), np.uint8))
    with pytest.raises(ValueError, match="positions"):
        Router(_model(network, variables), (2, 1), (None, None))


def test_knn_store_respects_capacity_and_evicts_oldest():
    from gati_jax.runtime import knn

    store = knn.empty_store(4, 2)
    store = knn.insert(store, np.arange(12, dtype=np.float32).reshape(6, 2), np.arange(6))
    assert store["valid"].sum() == 4
    assert sorted(store["values"].tolist()) == [2, 3, 4, 5]  # 0 and 1 were evicted first
    assert knn.store_bytes(store) == 4 * 2 * 4 + 4 * 4 + 4 + 4
    with pytest.raises(ValueError, match="capacity"):
        knn.empty_store(0, 2)


def test_knn_policy_hits_on_stored_activations_and_matches_reference(base):
    from gati_jax import data
    from gati_jax.runtime import knn

    network, variables = base
    images = _images(12, seed=7)
    base_answers = _base_answers(network, variables, images)
    x = network.apply_range(variables, data.normalize(images, MEAN, STD), 0, 2)
    head = knn.KnnHead(grid=1, neighbours=1)
    # Store the first 6 requests' position-1 activations with their base answers.
    store = knn.store_from_activations(np.asarray(x[:6]), base_answers[:6], capacity=8, grid=1)
    assert store["valid"].sum() == 6
    decide = policy_builder("knn")(head)
    router = Router(_model(network, variables), (1,), (decide,), max_group=16)
    result = router.route((store,), [1e-3], images)
    assert result.hit[:6].all()
    np.testing.assert_array_equal(result.answer, base_answers)
    want = ReferenceRouter(_model(network, variables), (1,), (decide,)).route(
        (store,), [1e-3], images
    )
    for a, b in zip(result, want):
        np.testing.assert_array_equal(a, b)


def test_oracle_is_never_worse_on_agreement(base):
    network, variables = base
    positions = (0, 1, 2)
    heads, params = _caches(network, positions)
    images = _images(16, seed=9)
    base_answers = _base_answers(network, variables, images)
    agreement = {}
    for policy, thresholds in [
        ("oracle", [0, 0, 0]),
        ("gati", [0.3, 0.3, 0.3]),
        ("confidence", [0.3, 0.3, 0.3]),
        ("entropy", [1.3, 1.3, 1.3]),
    ]:
        router = _router(network, variables, positions, heads, 16, policy)
        result = router.route(params, thresholds, images, base_answers)
        agreement[policy] = float(np.mean(result.answer == base_answers))
    assert agreement["oracle"] == 1.0
    assert all(agreement["oracle"] >= a for a in agreement.values())


def test_deploy_takes_calibrated_thresholds_and_checks_its_arguments(base):
    from gati_jax.runtime import deploy

    network, variables = base
    cands, bank = _bank(network, (0, 2), (0.8, 0.9))
    cands = cands[::-1]  # deploy sorts them by position
    dep = deploy(bank, cands)
    assert dep.positions == (0, 2)
    np.testing.assert_allclose(dep.thresholds, [0.8, 0.9])
    router = dep.router(_model(network, variables), 4)
    result = router.route(dep.params, dep.thresholds, _images(3))
    assert result.answer.shape == (3,)
    with pytest.raises(ValueError, match="unknown exit policy 'branchy'"):
        deploy(bank, cands, policy="branchy")
    with pytest.raises(ValueError, match="needs explicit thresholds"):
        deploy(bank, cands, policy="confidence")
    with pytest.raises(ValueError, match="one cache per position"):
        deploy(bank, [cands[0], cands[0]])


def test_policies_are_chosen_by_name_in_the_config(base):
    from gati_jax.caches import record_activations
    from gati_jax.config import ConfigError, base_config, validate_config
    from gati_jax.runtime import deployment_from_config

    network, variables = base
    model = _model(network, variables)
    positions = (0, 1, 2)
    _, bank = _bank(network, positions, (0.6,) * 3, {"hit_rate@0.99": 0.5, "lookup_latency_s": 1.0})
    images = _images(16, seed=11)
    base_answers = _base_answers(network, variables, images)
    recording = record_activations(model, images, base_answers)
    config = base_config()
    config.policy.knn_neighbours = 1  # exact matches hit; their neighbours are other requests
    for name, thresholds in [
        ("none", ()),
        ("gati", ()),
        ("confidence", (0.5, 0.5, 0.5)),
        ("entropy", (1.0, 1.0, 1.0)),
        ("knn", (0.05, 0.05, 0.05)),
        ("oracle", ()),
    ]:
        config.policy.name, config.policy.thresholds = name, thresholds
        validate_config(config)
        dep = deployment_from_config(config.policy, bank, recording)
        assert dep.policy == name and dep.positions == (() if name == "none" else positions)
        router = dep.router(model, 16)
        result = router.route(dep.params, dep.thresholds, images, base_answers)
        if name in ("none", "knn", "oracle"):
            # none runs the base network; knn stores hold these very activations; the oracle
            # exits only where it agrees.
            np.testing.assert_array_equal(result.answer, base_answers)
        if name == "knn":
            assert result.hit.all() and (result.exit_stage == 0).all()
    config.policy.name = "branchy"
    with pytest.raises(ConfigError, match="policy.name"):
        validate_config(config)
    config.policy.name, config.policy.thresholds = "entropy", ()
    with pytest.raises(ConfigError, match="needs thresholds"):
        validate_config(config)
    config.policy.name, config.policy.target = "gati", 0.97
    with pytest.raises(ConfigError, match="policy.target"):
        validate_config(config)
