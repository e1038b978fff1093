"""A small MLP for tests: one stage per hidden layer, then a dense head."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

from gati_jax.models.resnet import Head
from gati_jax.models.staged import StagedNetwork


class DenseStage(nn.Module):
    """Flattens its input (the first stage sees images) and applies Dense + ReLU."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train
        x = x.reshape((x.shape[0], -1))
        return nn.relu(nn.Dense(self.features)(x))


def mlp(
    hidden_sizes: Sequence[int], input_shape: tuple[int, int, int], num_classes: int
) -> StagedNetwork:
    """Builds an MLP with one stage per hidden layer."""
    stages = tuple(DenseStage(int(size)) for size in hidden_sizes)
    return StagedNetwork("mlp", (*stages, Head(num_classes)), tuple(input_shape), num_classes)
