"""Config section ``model``: which base network, and its validation."""

from __future__ import annotations

import ml_collections

from gati_jax.config_checks import require


def model_config() -> ml_collections.ConfigDict:
    """The ``model`` section: a registered network (gati_jax/models/registry.py) and its size."""
    c = ml_collections.ConfigDict()
    c.name = "resnet18"
    # Channels of the first stage; later groups double it (64 is the standard ImageNet ResNet,
    # 16 the CIFAR ResNets of He et al.).
    c.width = 16
    # Only for the MLP family.
    c.hidden_sizes = (128, 64)
    return c


def validate_model(m: ml_collections.ConfigDict) -> None:
    """Checks the ``model`` section."""
    from gati_jax.models.registry import available_networks

    require(
        m.name in available_networks(), "model.name", m.name, f"one of {list(available_networks())}"
    )
    require(int(m.width) > 0, "model.width", m.width, "> 0")
    require(
        all(int(h) > 0 for h in m.hidden_sizes),
        "model.hidden_sizes",
        m.hidden_sizes,
        "positive sizes",
    )
