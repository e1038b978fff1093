"""A VGG-style network: one stage per block of 3x3 convolutions followed by a 2x2 max-pool."""

from __future__ import annotations

import flax.linen as nn
import jax

from gati_jax.models.resnet import Head
from gati_jax.models.staged import StagedNetwork

# Convolutions per block and the block's width relative to the first block (VGG-11 layout).
VGG11_BLOCKS = ((1, 1), (1, 2), (2, 4), (2, 8), (2, 8))
# VGG-16 (configuration D of Simonyan & Zisserman) with batch norm: 13 convolutions.
VGG16_BLOCKS = ((2, 1), (2, 2), (3, 4), (3, 8), (3, 8))


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


def vgg(
    name: str,
    blocks: tuple[tuple[int, int], ...],
    width: int,
    input_shape: tuple[int, int, int],
    num_classes: int,
) -> StagedNetwork:
    """Builds a VGG-style network, one stage per block, whose first block has ``width`` channels."""
    stages = [ConvBlock(width * multiple, convs) for convs, multiple in blocks]
    return StagedNetwork(name, (*stages, Head(num_classes)), tuple(input_shape), num_classes)


def vgg11(width: int, input_shape: tuple[int, int, int], num_classes: int) -> StagedNetwork:
    """Builds a VGG-11-style network whose first block has ``width`` channels."""
    return vgg("vgg11", VGG11_BLOCKS, width, input_shape, num_classes)


def vgg16(width: int, input_shape: tuple[int, int, int], num_classes: int) -> StagedNetwork:
    """Builds a VGG-16-style network (batch norm) whose first block has ``width`` channels."""
    return vgg("vgg16", VGG16_BLOCKS, width, input_shape, num_classes)
