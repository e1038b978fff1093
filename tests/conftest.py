"""Shared fixtures; GPU-marked tests are skipped when JAX sees no GPU."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from gati_jax.config import ConfigError, base_config, validate_config


def _has_gpu() -> bool:
    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


def pytest_collection_modifyitems(config, items):
    if _has_gpu():
        return
    skip = pytest.mark.skip(reason="no GPU visible to JAX")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def tiny_config(**train) -> ml_collections.ConfigDict:
    """A seconds-long training config: small MLP on small synthetic data."""
    config = base_config()
    config.data.name = "synthetic"
    config.data.validation_size = 100
    config.data.synthetic.image_size = 8
    config.data.synthetic.train_size = 600
    config.data.synthetic.test_size = 200
    config.data.synthetic.num_classes = 4
    config.augment.flip = False
    config.augment.crop_padding = 0
    config.model.name = "mlp"
    config.model.hidden_sizes = (32, 16)
    config.train.epochs = 2
    config.train.min_steps = 0
    config.train.batch_size = 50
    config.train.eval_batch_size = 64
    config.train.learning_rate = 0.05
    config.train.checkpoint_every_steps = 4
    for key, value in train.items():
        config.train[key] = value
    return config


def drawn_variables(network, seed: int = 0):
    """Variables of the network's shapes, with non-trivial batch statistics and non-zero
    residual scales.

    Drawn with NumPy on the abstract shapes: the network's own jitted initialisation compiles
    a random-number kernel per parameter (6 s for a ResNet-18, 8 s for a ResNet-50 on two
    cores), and tests of what runs on the variables need values, not the initialiser."""
    abstract = jax.eval_shape(network.init, jax.random.key(0))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = getattr(path[-1], "key", "")
        shape = leaf.shape
        if name == "kernel":  # lecun normal, as Flax initialises convolutions and dense layers
            fan_in = int(np.prod(shape[:-1]))
            value = rng.normal(0.0, 1.0 / np.sqrt(fan_in), shape)
        elif name in ("scale", "var"):
            value = 1.0 + 0.1 * rng.uniform(size=shape)
        else:  # biases, running means
            value = 0.1 * rng.uniform(size=shape)
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, abstract)


def tiny_mlp_model(shape=(6, 6, 1), classes: int = 4, hidden=(16, 16, 16, 8), seed: int = 0):
    """An untrained MLP as a BaseModel (inputs normalised by mean 0.5, std 0.25): the base
    network of the online, recency and serving-adapter tests."""
    import numpy as np

    from gati_jax.inference import BaseModel
    from gati_jax.models import build_network

    config = ml_collections.ConfigDict(dict(name="mlp", width=1, hidden_sizes=tuple(hidden)))
    network = build_network(config, shape, classes)
    return BaseModel(
        network,
        network.init(jax.random.key(seed)),
        np.array([0.5], np.float32),
        np.array([0.25], np.float32),
        {},
    )


def fc_caches(network, positions, classes: int, seed: int = 0) -> tuple[tuple, tuple]:
    """Untrained ``fc-d1-h8`` caches (heads, params) at ``positions`` of a tiny network."""
    import jax.numpy as jnp

    from gati_jax.caches.selector import NUM_FEATURES, Selector
    from gati_jax.caches.variants import Predictor, parse_variant
    from gati_jax.runtime import CacheHead

    shapes = network.activation_shapes()
    spec = parse_variant("fc-d1-h8")
    heads, params = [], []
    for k, p in enumerate(positions):
        key = jax.random.key(seed * 100 + k)
        heads.append(CacheHead(spec, classes, 1, 8))
        params.append(
            {
                "predictor": Predictor(spec, classes).init(key, jnp.zeros(shapes[p]))["params"],
                "selector": Selector(8).init(key, jnp.zeros((1, NUM_FEATURES)))["params"],
            }
        )
    return tuple(heads), tuple(params)


def assert_config_rejects(section: str, key: str, value) -> None:
    """The default config with ``section.key = value`` fails validation naming the key."""
    config = base_config()
    config[section][key] = value
    with pytest.raises(ConfigError, match=rf"{section}\.{key}="):
        validate_config(config)


# The tiny staged network of the router tests (and of every test that routes through one).
ROUTER_SHAPE = (6, 6, 1)
ROUTER_CLASSES = 4


@pytest.fixture(scope="module")
def base():
    """A tiny staged MLP (four hidden stages) and its initial variables."""
    from gati_jax.models import build_network

    config = ml_collections.ConfigDict(dict(name="mlp", width=1, hidden_sizes=(24, 16, 12, 8)))
    network = build_network(config, ROUTER_SHAPE, ROUTER_CLASSES)
    return network, network.init(jax.random.key(0))


@pytest.fixture
def tiny() -> ml_collections.ConfigDict:
    """A fresh tiny training config."""
    return tiny_config()
