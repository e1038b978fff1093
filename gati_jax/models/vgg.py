"""A VGG-style network: one stage per block of 3x3 convolutions followed by a 2x2 max-pool."""

from __future__ import annotations

import flax.linen as nn
import jax

from gati_jax.models.resnet import Head
from gati_jax.models.staged import StagedNetwork

# Convolutions per block and the block's width relative to the first block (VGG-11 layout).
VGG11_BLOCKS = ((1, 1), (1, 2), (2, 4), (2, 8), (2, 8))


class ConvBlock(nn.Module):
    """``num_convs`` 3x3 conv-BN-ReLU layers, then a 2x2 max-pool while the map is >= 2 px."""

    features: int
    num_convs: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for _ in range(self.num_convs):
            x = nn.Conv(self.features, (3, 3), use_bias=False)(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
            x = nn.relu(x)
        # Five halvings would take a 28-px input to zero; small maps skip the pool instead.
        if x.shape[1] >= 2 and x.shape[2] >= 2:
            x = nn.max_pool(x, (2, 2), (2, 2))
        return x


def vgg11(width: int, input_shape: tuple[int, int, int], num_classes: int) -> StagedNetwork:
    """Builds a VGG-11-style network whose first block has ``width`` channels."""
    stages = [ConvBlock(width * multiple, convs) for convs, multiple in VGG11_BLOCKS]
    return StagedNetwork("vgg11", (*stages, Head(num_classes)), tuple(input_shape), num_classes)
