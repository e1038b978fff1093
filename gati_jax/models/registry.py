"""Base networks by name: a new family is a new builder plus one ``register_network`` call."""

from __future__ import annotations

from collections.abc import Callable

import ml_collections

from gati_jax.models import mlp, resnet, vgg
from gati_jax.models.staged import StagedNetwork
from gati_jax.registry import Registry

Builder = Callable[[ml_collections.ConfigDict, tuple[int, int, int], int], StagedNetwork]
_NETWORKS: Registry[Builder] = Registry("network", "model.name")
register_network = _NETWORKS.register
available_networks = _NETWORKS.names


def build_network(
    model_config: ml_collections.ConfigDict, input_shape: tuple[int, int, int], num_classes: int
) -> StagedNetwork:
    """Builds the network named by ``model_config.name`` for the data set's shape and classes."""
    builder = _NETWORKS.get(model_config.name)
    return builder(model_config, tuple(input_shape), int(num_classes))


def _resnet_builder(name: str, block, blocks_per_group) -> Builder:
    return lambda cfg, shape, classes: resnet.resnet(
        name, block, blocks_per_group, int(cfg.width), shape, classes
    )


# ImageNet-style layouts (four groups, widths w..8w), stem without max-pool for small images.
register_network("resnet18")(_resnet_builder("resnet18", resnet.BasicBlock, (2, 2, 2, 2)))
register_network("resnet34")(_resnet_builder("resnet34", resnet.BasicBlock, (3, 4, 6, 3)))
register_network("resnet50")(_resnet_builder("resnet50", resnet.Bottleneck, (3, 4, 6, 3)))
register_network("resnet101")(_resnet_builder("resnet101", resnet.Bottleneck, (3, 4, 23, 3)))
register_network("resnet152")(_resnet_builder("resnet152", resnet.Bottleneck, (3, 8, 36, 3)))
# CIFAR-style ResNets of depth 6n+2 (He et al. 2016, section 4.2): three groups of n basic
# blocks, widths w, 2w, 4w; one stage per block, so ResNet-56 has 1 + 27 + 1 = 29 stages.
for _depth in (20, 32, 44, 56, 110):
    _n = (_depth - 2) // 6
    register_network(f"resnet{_depth}")(
        _resnet_builder(f"resnet{_depth}", resnet.BasicBlock, (_n, _n, _n))
    )
register_network("vgg11")(lambda cfg, shape, classes: vgg.vgg11(int(cfg.width), shape, classes))
register_network("vgg16")(lambda cfg, shape, classes: vgg.vgg16(int(cfg.width), shape, classes))
register_network("mlp")(lambda cfg, shape, classes: mlp.mlp(cfg.hidden_sizes, shape, classes))
