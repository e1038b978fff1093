"""Default experiment: Fashion-MNIST, narrow ResNet-18 (width 16); the schema's defaults."""

from gati_jax.config import base_config


def get_config():
    """Returns the default config."""
    return base_config()
