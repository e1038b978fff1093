"""Seconds-long smoke run: a small MLP on the synthetic data set (used by tests)."""

from gati_jax.config import base_config


def get_config():
    """Returns the synthetic MLP smoke config."""
    config = base_config()
    config.data.name = "synthetic"
    config.data.validation_size = 500
    config.augment.flip = False
    config.augment.crop_padding = 0
    config.model.name = "mlp"
    config.model.hidden_sizes = (64, 32)
    config.train.epochs = 2
    config.train.min_steps = 0  # exactly 2 epochs, as the shipped checkpoint was trained
    config.train.batch_size = 64
    config.train.learning_rate = 0.05
    config.train.checkpoint_every_steps = 20
    return config
