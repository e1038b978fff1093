"""GPU checks (skipped without a GPU): the router on the GPU agrees with the CPU reference."""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
import pytest
from test_router import CLASSES, MEAN, SHAPE, STD, _caches, _images

from gati_jax.inference import BaseModel
from gati_jax.models import build_network
from gati_jax.runtime import ReferenceRouter, Router
from gati_jax.runtime.policies import policy_builder

POSITIONS = (0, 1)


def _network_on(*devices):
    """A tiny staged MLP and, per device, a BaseModel with its variables there."""
    config = ml_collections.ConfigDict(dict(name="mlp", width=1, hidden_sizes=(24, 16, 12)))
    network = build_network(config, SHAPE, CLASSES)
    with jax.default_device(jax.devices("cpu")[0]):
        variables = network.init(jax.random.key(0))
    return network, *(
        BaseModel(network, jax.device_put(variables, d), MEAN, STD, {}) for d in devices
    )


@pytest.mark.gpu
@pytest.mark.parametrize(
    "policy,compact", [("gati", False), ("gati", True), ("confidence", False), ("oracle", True)]
)
def test_router_on_gpu_matches_the_cpu_reference(policy, compact):
    cpu, gpu = jax.devices("cpu")[0], jax.devices("gpu")[0]
    network, cpu_model, gpu_model = _network_on(cpu, gpu)
    with jax.default_device(cpu):
        heads, params = _caches(network, POSITIONS)
    decides = tuple(policy_builder(policy)(h) for h in heads)
    images = _images(16, seed=3)
    with jax.default_device(cpu):
        base = np.asarray(ReferenceRouter(cpu_model, (), ()).route((), [], images).answer)
    rng = np.random.default_rng(0)
    for _ in range(4):
        thresholds = rng.uniform(0.3, 0.6, len(POSITIONS))
        n = int(rng.integers(1, 17))
        with jax.default_device(cpu):
            want = ReferenceRouter(cpu_model, POSITIONS, decides).route(
                params, thresholds, images[:n], base[:n]
            )
        got = Router(gpu_model, POSITIONS, decides, max_group=16, compact=compact).route(
            jax.device_put(params, gpu), thresholds, images[:n], base[:n]
        )
        # Float rounding differs between devices, so a score right at a threshold may flip;
        # decisions and answers must agree almost everywhere.
        assert np.mean(got.exit_stage == want.exit_stage) >= 0.9
        assert np.mean(got.answer == want.answer) >= 0.9
        # A request that runs to the end gets the base network's answer on any device.
        np.testing.assert_array_equal(got.answer[~got.hit], base[:n][~got.hit])


@pytest.mark.gpu
def test_router_on_gpu_never_recompiles_for_new_parameters_or_thresholds():
    gpu = jax.devices("gpu")[0]
    network, model = _network_on(gpu)
    heads, params = _caches(network, POSITIONS)
    router = Router(model, POSITIONS, tuple(policy_builder("gati")(h) for h in heads), max_group=8)
    images = _images(8)
    router.route(jax.device_put(params, gpu), [0.5, 0.5], images)
    for seed in range(1, 4):
        _, new_params = _caches(network, POSITIONS, seed=seed)
        result = router.route(
            jax.device_put(new_params, gpu), np.random.default_rng(seed).uniform(size=2), images
        )
        assert result.answer.shape == (8,)
    assert router.trace_count == 1


@pytest.mark.gpu
def test_knn_on_gpu_hits_on_its_own_stored_activations():
    from gati_jax import data
    from gati_jax.runtime import knn

    gpu = jax.devices("gpu")[0]
    network, model = _network_on(gpu)
    images = _images(12, seed=7)
    base = np.asarray(ReferenceRouter(model, (), ()).route((), [], images).answer)
    x = network.apply_range(model.variables, data.normalize(images, MEAN, STD), 0, 2)
    store = knn.store_from_activations(np.asarray(x[:6]), base[:6], capacity=8, grid=1)
    decide = policy_builder("knn")(knn.KnnHead(grid=1, neighbours=1))
    # A radius of 1e-3 is far below the keys' norms: only an exact match (up to float32
    # rounding) hits, which reduced-precision products on the GPU would miss.
    result = Router(model, (1,), (decide,), max_group=16).route(
        (jax.device_put(store, gpu),), [1e-3], images
    )
    assert result.hit[:6].all()
    np.testing.assert_array_equal(result.answer, base)
