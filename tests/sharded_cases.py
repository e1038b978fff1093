"""Multi-device code paths, run on 4 forced CPU devices by tests/test_sharding.py.

Not collected directly (the name does not match test_*.py): it needs
XLA_FLAGS=--xla_force_host_platform_device_count=4 set before JAX starts, which the
launcher does in a subprocess.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
import pytest
from conftest import fc_caches

from gati_jax import sharding
from gati_jax.caches.training import HeadTraining, train_predictors
from gati_jax.caches.variants import parse_variant
from gati_jax.experiments.device_scaling import device_scaling
from gati_jax.inference import BaseModel
from gati_jax.models import build_network
from gati_jax.online.config import online_config
from gati_jax.online.updates import OnlineTrainer, UpdateSettings, make_tap, make_tapped_decide
from gati_jax.online.window import ReplayWindow
from gati_jax.runtime import Router, policy_builder
from gati_jax.runtime.deployment import Deployment
from gati_jax.training.checkpointing import TrainCheckpointer
from gati_jax.training.optim import make_optimizer
from gati_jax.training.steps import create_train_state, train_step

pytestmark = pytest.mark.skipif(jax.device_count() < 4, reason="needs 4 (forced) devices")
SHAPE, CLASSES = (6, 6, 1), 4


def _network():
    config = ml_collections.ConfigDict(dict(name="mlp", width=1, hidden_sizes=(16, 16, 16, 8)))
    return build_network(config, SHAPE, CLASSES)


def _images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, *SHAPE), dtype=np.uint8)


def _close(a, b, tol=1e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


def test_mesh_has_a_data_and_a_model_axis():
    mesh = sharding.make_mesh(devices=4, model=2)
    assert dict(mesh.shape) == {"data": 2, "model": 2}
    with pytest.raises(ValueError, match="only 4 devices"):
        sharding.make_mesh(devices=8)
    with pytest.raises(ValueError, match="must divide"):
        sharding.make_mesh(devices=4, model=3)
    with pytest.raises(ValueError, match="multiple"):
        sharding.shard_batch(sharding.make_mesh(devices=4), np.zeros(6))


def test_sharded_base_training_step_equals_the_single_device_step():
    network = _network()
    config = ml_collections.ConfigDict(
        dict(
            learning_rate=0.05,
            momentum=0.9,
            nesterov=True,
            weight_decay=5e-4,
            schedule="cosine",
            warmup_fraction=0.1,
        )
    )
    tx = make_optimizer(config, 100)
    state = create_train_state(network, tx, jax.random.key(0))
    images = _images(16)
    labels = np.arange(16, dtype=np.int32) % CLASSES
    step = jax.jit(
        lambda s, x, y: train_step(
            network, tx, s, x, y, jax.random.key(1), np.float32(0.5), np.float32(0.25), False, 0
        )
    )
    single = step(state, images, labels)
    mesh = sharding.make_mesh(devices=4)
    sharded = step(
        sharding.replicate(mesh, state),
        sharding.shard_batch(mesh, images),
        sharding.shard_batch(mesh, labels),
    )
    assert len(jax.tree.leaves(sharded.params)[0].sharding.device_set) == 4
    _close(single.params, sharded.params)
    _close(single.opt_state, sharded.opt_state)


def test_sharded_activation_recording_equals_the_single_device_one():
    from gati_jax.caches.recording import record_activations

    network = _network()
    model = BaseModel(
        network,
        network.init(jax.random.key(0)),
        np.array([0.5], np.float32),
        np.array([0.25], np.float32),
        {},
    )
    images, labels = _images(50), np.zeros(50, np.int32)
    single = record_activations(model, images, labels, batch_size=16)
    sharded = record_activations(
        model, images, labels, batch_size=16, mesh=sharding.make_mesh(devices=4, model=2)
    )
    for p in single.positions:
        np.testing.assert_allclose(
            single.features[p].astype(np.float32), sharded.features[p].astype(np.float32), atol=1e-2
        )
    np.testing.assert_allclose(single.logits, sharded.logits, rtol=1e-5, atol=1e-5)


def test_sharded_exploration_equals_the_single_device_run():
    spec = parse_variant("fc-d1-h8")
    rng = np.random.default_rng(0)
    features = rng.normal(size=(256, 16)).astype(np.float16)
    teacher = rng.normal(size=(256, CLASSES)).astype(np.float32)
    hp = HeadTraining(epochs=2, batch_size=64)
    seeds, rates = np.arange(4), np.array([1e-2, 1e-2, 3e-3, 3e-3], np.float32)
    single, loss1 = train_predictors(spec, CLASSES, features, teacher, seeds, rates, hp)
    mesh = sharding.make_mesh(devices=4, model=2)  # batch over 2, members over 2
    sharded, loss2 = train_predictors(spec, CLASSES, features, teacher, seeds, rates, hp, mesh=mesh)
    _close(single, sharded, 1e-4)
    np.testing.assert_allclose(loss1, loss2, rtol=1e-4)


def _heads_and_params(network, positions=(0, 1)):
    return fc_caches(network, positions, CLASSES)


def test_sharded_online_update_equals_the_single_device_update():
    network = _network()
    heads, params = _heads_and_params(network)
    section = online_config()
    section.update(
        dict(
            learning_rate=1e-3,
            steps=6,
            steps_per_chunk=3,
            batch_size=32,
            target=0.5,
            calibration_confidence=0.0,
            min_train=8,
            min_holdout=4,
            min_evidence=0,
        )
    )
    settings = UpdateSettings.from_config(section)
    rng = np.random.default_rng(0)
    windows = []
    for _ in heads:
        window = ReplayWindow((16,), 1 << 16, max_items=256)
        window.add(rng.normal(size=(200, 16)), rng.integers(0, CLASSES, 200))
        windows.append(window)

    def run(mesh):
        trainer = OnlineTrainer(heads, ((16,), (16,)), params, settings, mesh)
        steps = trainer.update(params, windows, np.random.default_rng(1))
        try:
            while True:
                next(steps)
        except StopIteration as done:
            return trainer, done.value[0]

    trainer, single = run(None)
    assert len(trainer.groups) == 1  # the two caches train as one vmapped group
    _, sharded = run(sharding.make_mesh(devices=4))
    _close(single, sharded, 1e-4)


def test_multi_device_serving_answers_like_one_device():
    network = _network()
    variables = network.init(jax.random.key(0))
    model = BaseModel(
        network, variables, np.array([0.5], np.float32), np.array([0.25], np.float32), {}
    )
    heads, params = _heads_and_params(network, (0, 2))
    decides = tuple(policy_builder("gati")(h) for h in heads)
    one = Router(model, (0, 2), decides, 8)
    four = Router(model, (0, 2), decides, 8, mesh=sharding.make_mesh(devices=4))
    assert four.buckets == (4, 8)
    images = _images(64, seed=3)
    for seed in range(4):
        thresholds = np.random.default_rng(seed).uniform(0.2, 0.8, 2)
        for n in (1, 3, 8):
            a = one.route(params, thresholds, images[:n])
            b = four.route(params, thresholds, images[:n])
            for x, y in zip(a, b):
                np.testing.assert_array_equal(x, y)
    tapped = Router(
        model,
        (0, 2),
        tuple(make_tapped_decide(h) for h in heads),
        8,
        taps=tuple(make_tap(h) for h in heads),
        mesh=sharding.make_mesh(devices=4),
    )
    (result, taps) = tapped.route_tapped(params, [0.5, 0.5], images[:5])
    want = one.route(params, [0.5, 0.5], images[:5])
    np.testing.assert_array_equal(result.answer, want.answer)
    assert taps[0][0].shape == (5, 16)
    deployment = Deployment("gati", (0, 2), heads, params, np.array([0.5, 0.5], np.float32))
    rows = device_scaling(model, deployment, images, (1, 2, 4), group=8, repeats=1)
    assert [r["devices"] for r in rows] == [1, 2, 4]
    assert all(r["same_answers_as_1_device"] for r in rows)


def test_sharded_checkpoint_round_trip(tmp_path):
    network = _network()
    config = ml_collections.ConfigDict(
        dict(
            learning_rate=0.05,
            momentum=0.9,
            nesterov=True,
            weight_decay=5e-4,
            schedule="cosine",
            warmup_fraction=0.1,
        )
    )
    tx = make_optimizer(config, 100)
    mesh = sharding.make_mesh(devices=4)
    state = sharding.replicate(mesh, create_train_state(network, tx, jax.random.key(0)))
    checkpointer = TrainCheckpointer(tmp_path / "ckpt", 2)
    checkpointer.save(state, [{"epoch": 1}])
    checkpointer._manager.wait_until_finished()
    template = sharding.replicate(mesh, create_train_state(network, tx, jax.random.key(5)))
    restored, history = checkpointer.restore(template)
    checkpointer.close()
    assert history == [{"epoch": 1}]
    _close(state.params, restored.params, 0)
    for leaf in jax.tree.leaves(restored.params):
        assert leaf.sharding.is_equivalent_to(sharding.replicated(mesh), leaf.ndim)
