"""Base networks by name: a new family is a new builder plus one ``register_network`` call,
or, for your own Flax modules, one ``register_stages`` call (docs/own_data.md)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import ml_collections

from gati_jax.models import mlp, resnet, vgg
from gati_jax.models.staged import StagedNetwork
from gati_jax.registry import Registry

Builder = Callable[[ml_collections.ConfigDict, tuple[int, int, int], int], StagedNetwork]
_NETWORKS: Registry[Builder] = Registry("network", "model.name")
register_network = _NETWORKS.register
available_networks = _NETWORKS.names


StagesBuilder = Callable[[tuple[int, int, int], int], Sequence[nn.Module]]
# Names registered by register_stages, which may be registered again.
_OWN_STAGES: set[str] = set()


class _Stage(nn.Module):
    """A stage whose module takes no ``train`` argument (no batch norm): called without it."""

    module: nn.Module

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train
        return self.module(x)


def _takes_train(module: nn.Module) -> bool:
    return "train" in inspect.signature(type(module).__call__).parameters


def staged_network(
    name: str, stages: Sequence[nn.Module], input_shape: tuple[int, int, int], num_classes: int
) -> StagedNetwork:
    """A StagedNetwork of your Flax ``stages`` (the last one outputs the logits), checked:
    every stage runs on the one before, and the last gives ``num_classes`` logits."""
    stages = tuple(stages)
    if len(stages) < 2 or not all(isinstance(s, nn.Module) for s in stages):
        raise ValueError(
            f"network {name!r}: give two or more Flax modules (stages; every "
            "stage boundary is a cache position, the last stage outputs the "
            f"logits), got {stages!r}"
        )
    stages = tuple(s if _takes_train(s) else _Stage(s) for s in stages)
    network = StagedNetwork(name, stages, tuple(input_shape), int(num_classes))
    try:
        shapes = network.activation_shapes()
    except Exception as error:  # a stage that does not fit the one before: say which network
        raise ValueError(
            f"network {name!r} does not run on inputs of shape {input_shape}: "
            f"{type(error).__name__}: {error}"
        ) from error
    if shapes[-1] != (1, int(num_classes)):
        raise ValueError(
            f"network {name!r}: the last stage must output (batch, {num_classes}) "
            f"logits, got {shapes[-1]} for a batch of 1"
        )
    return network


def register_stages(name: str, build_stages: StagesBuilder) -> StagesBuilder:
    """Registers your own network under ``name`` (then ``model.name = name``) in one call.

    ``build_stages(input_shape, num_classes)`` returns its stages, Flax modules in order; the
    last outputs the logits. A stage is called as ``stage(x, train=...)`` when its
    ``__call__`` takes ``train`` (batch norm: ``use_running_average=not train``), else as
    ``stage(x)``. Stages may keep batch statistics (collection ``batch_stats``) but may not
    draw random numbers (no dropout). Register it in code every process runs that loads
    the network: your config file, or a module it imports. Registering the same name again
    replaces it (a config file run twice); a built-in name is refused. Returns
    ``build_stages``."""

    def builder(
        cfg: ml_collections.ConfigDict, shape: tuple[int, int, int], classes: int
    ) -> StagedNetwork:
        del cfg
        return staged_network(name, build_stages(tuple(shape), int(classes)), shape, classes)

    if name in _OWN_STAGES:  # a config file run again registers its network again: it wins
        _NETWORKS._entries[name] = builder
    else:
        register_network(name)(builder)  # a built-in name is refused
        _OWN_STAGES.add(name)
    return build_stages


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
