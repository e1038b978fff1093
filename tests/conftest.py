"""Shared fixtures; GPU-marked tests are skipped when JAX sees no GPU."""

from __future__ import annotations

import jax
import ml_collections
import pytest

from gati_jax.config import base_config


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
    config.train.batch_size = 50
    config.train.eval_batch_size = 64
    config.train.learning_rate = 0.05
    config.train.checkpoint_every_steps = 4
    for key, value in train.items():
        config.train[key] = value
    return config


@pytest.fixture
def tiny() -> ml_collections.ConfigDict:
    """A fresh tiny training config."""
    return tiny_config()
