"""CIFAR-10, ResNet-50 with bottleneck blocks (for users with the data and a GPU)."""

from gati_jax.config import base_config


def get_config():
    """Returns the CIFAR-10 ResNet-50 config."""
    config = base_config()
    config.data.name = "cifar10"
    config.model.name = "resnet50"
    config.model.width = 64
    config.augment.crop_padding = 4
    config.train.epochs = 30
    config.train.checkpoint_every_steps = 1000
    return config
