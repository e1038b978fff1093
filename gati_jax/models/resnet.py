"""CIFAR-style ResNets as stages: a 3x3 stem, one stage per residual block, a pooled head."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from gati_jax.models.staged import StagedNetwork

# Batch-norm momentum as in the Flax ImageNet example; running statistics serve inference.
_BN = dict(momentum=0.9, epsilon=1e-5)


class Stem(nn.Module):
    """3x3 convolution, batch norm, ReLU; no max-pool, because inputs are small (28-32 px)."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.Conv(self.features, (3, 3), use_bias=False)(x)
        x = nn.BatchNorm(use_running_average=not train, **_BN)(x)
        return nn.relu(x)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

    features: int
    strides: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        residual = x
        y = nn.Conv(self.features, (3, 3), (self.strides, self.strides), use_bias=False)(x)
        y = nn.relu(nn.BatchNorm(use_running_average=not train, **_BN)(y))
        y = nn.Conv(self.features, (3, 3), use_bias=False)(y)
        # Zero-initialised last scale: each block starts as the identity, which trains faster.
        y = nn.BatchNorm(use_running_average=not train, scale_init=nn.initializers.zeros, **_BN)(y)
        if residual.shape != y.shape:
            residual = nn.Conv(
                self.features,
                (1, 1),
                (self.strides, self.strides),
                use_bias=False,
                name="shortcut_conv",
            )(residual)
            residual = nn.BatchNorm(use_running_average=not train, name="shortcut_bn", **_BN)(
                residual
            )
        return nn.relu(residual + y)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4) with a residual connection (ResNet-50)."""

    features: int
    strides: int = 1
    expansion: int = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        residual = x
        y = nn.Conv(self.features, (1, 1), use_bias=False)(x)
        y = nn.relu(nn.BatchNorm(use_running_average=not train, **_BN)(y))
        y = nn.Conv(self.features, (3, 3), (self.strides, self.strides), use_bias=False)(y)
        y = nn.relu(nn.BatchNorm(use_running_average=not train, **_BN)(y))
        y = nn.Conv(self.features * self.expansion, (1, 1), use_bias=False)(y)
        y = nn.BatchNorm(use_running_average=not train, scale_init=nn.initializers.zeros, **_BN)(y)
        if residual.shape != y.shape:
            residual = nn.Conv(
                self.features * self.expansion,
                (1, 1),
                (self.strides, self.strides),
                use_bias=False,
                name="shortcut_conv",
            )(residual)
            residual = nn.BatchNorm(use_running_average=not train, name="shortcut_bn", **_BN)(
                residual
            )
        return nn.relu(residual + y)


class Head(nn.Module):
    """Global average pool (for feature maps) then a dense classifier: the last stage."""

    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train  # the head has no batch norm
        if x.ndim == 4:
            x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes)(x)


def resnet(
    name: str,
    block: type[nn.Module],
    blocks_per_group: Sequence[int],
    width: int,
    input_shape: tuple[int, int, int],
    num_classes: int,
) -> StagedNetwork:
    """Builds a CIFAR-style ResNet with one stage per residual block."""
    stages: list[nn.Module] = [Stem(width)]
    for group, num_blocks in enumerate(blocks_per_group):
        for index in range(num_blocks):
            strides = 2 if group > 0 and index == 0 else 1
            stages.append(block(features=width * 2**group, strides=strides))
    stages.append(Head(num_classes))
    return StagedNetwork(name, tuple(stages), tuple(input_shape), num_classes)
