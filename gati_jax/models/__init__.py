"""Staged base networks chosen by name: ImageNet-style ResNet-18/34/50/101/152, CIFAR-style
ResNet-20/32/44/56/110, VGG-11/16 (batch norm) and an MLP (gati_jax/models/registry.py);
your own Flax stages with one ``register_stages`` call."""

from gati_jax.models.registry import (
    available_networks,
    build_network,
    register_network,
    register_stages,
    staged_network,
)
from gati_jax.models.staged import StagedNetwork, Variables

__all__ = [
    "StagedNetwork",
    "Variables",
    "available_networks",
    "build_network",
    "register_network",
    "register_stages",
    "staged_network",
]
