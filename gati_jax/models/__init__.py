"""Staged base networks (ResNet-18/34/50, VGG-11, MLP) chosen by name."""

from gati_jax.models.registry import available_networks, build_network, register_network
from gati_jax.models.staged import StagedNetwork, Variables

__all__ = ["StagedNetwork", "Variables", "available_networks", "build_network",
           "register_network"]
