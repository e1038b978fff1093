"""Staged networks: stage-by-stage equals whole, declared shapes, inference-mode batch norm."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import drawn_variables

from gati_jax.models import available_networks, build_network

# Tiny widths keep every family's test to about a second on two cores.
FAMILIES = [
    ("resnet18", 4),
    ("resnet34", 2),
    ("resnet50", 2),
    ("resnet20", 2),
    ("vgg11", 4),
    ("vgg16", 2),
    ("mlp", 0),
]
# Registered but too deep to run in every test; their shapes and sizes are checked abstractly.
DEEP = ["resnet32", "resnet44", "resnet56", "resnet110", "resnet101", "resnet152"]
INPUT_SHAPE = (12, 12, 3)


def build(name: str, width: int):
    config = ml_collections.ConfigDict(dict(name=name, width=max(width, 1), hidden_sizes=(16, 8)))
    return build_network(config, INPUT_SHAPE, 5)


def test_registry_lists_every_family():
    assert set(available_networks()) == {name for name, _ in FAMILIES} | set(DEEP)


class _ConvBN(nn.Module):
    """A user's stage with batch norm: takes ``train``."""

    features: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(self.features, (3, 3), strides=(2, 2))(x)
        return nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))


class _Classifier(nn.Module):
    """A user's stage without ``train``: pooled logits."""

    classes: int

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.classes)(x.mean(axis=(1, 2)))


class _Flatten(nn.Module):
    @nn.compact
    def __call__(self, x):
        return x.reshape((x.shape[0], -1))


@pytest.fixture
def own_registry(monkeypatch):
    """Registrations made in a test vanish after it."""
    from gati_jax.models import registry

    monkeypatch.setattr(registry._NETWORKS, "_entries", dict(registry._NETWORKS._entries))
    monkeypatch.setattr(registry, "_OWN_STAGES", set(registry._OWN_STAGES))


def test_your_own_stages_register_in_one_call_and_train_and_route(own_registry):
    from gati_jax.models import register_stages

    register_stages(
        "my_cnn", lambda shape, classes: [_ConvBN(8), _ConvBN(16), _Classifier(classes)]
    )
    assert "my_cnn" in available_networks()
    config = ml_collections.ConfigDict(dict(name="my_cnn", width=1, hidden_sizes=()))
    network = build_network(config, INPUT_SHAPE, 5)
    assert network.name == "my_cnn" and network.num_stages == 3
    assert network.activation_shapes(2) == ((2, 6, 6, 8), (2, 3, 3, 16), (2, 5))
    variables = drawn_variables(network)
    x = jax.random.normal(jax.random.key(3), (2, *INPUT_SHAPE))
    whole = jax.jit(network.apply)(variables, x)
    h = network.apply_range(variables, x, 0, 2)
    np.testing.assert_allclose(network.apply_range(variables, h, 2, 3), whole, rtol=1e-5, atol=1e-5)
    logits, stats = network.apply_train(variables, x)  # batch statistics update in training
    assert logits.shape == (2, 5) and set(stats[0]) == {"BatchNorm_0"} and stats[2] == {}
    # A config file run again registers again: the new definition wins; built-ins are kept.
    register_stages("my_cnn", lambda shape, classes: [_ConvBN(4), _Classifier(classes)])
    assert build_network(config, INPUT_SHAPE, 5).num_stages == 2
    with pytest.raises(ValueError, match="already registered"):
        register_stages("resnet18", lambda shape, classes: [])


def test_your_own_stages_are_checked_when_built(own_registry):
    from gati_jax.models import register_stages

    def config_of(name):
        return ml_collections.ConfigDict(dict(name=name, width=1, hidden_sizes=()))

    config = config_of("one_stage")
    register_stages("one_stage", lambda shape, classes: [_Classifier(classes)])
    with pytest.raises(ValueError, match="two or more Flax modules"):
        build_network(config, INPUT_SHAPE, 5)
    register_stages("wrong_head", lambda shape, classes: [_ConvBN(8), _Classifier(3)])
    with pytest.raises(ValueError, match=r"must output \(batch, 5\) logits, got \(1, 3\)"):
        build_network(config_of("wrong_head"), INPUT_SHAPE, 5)
    register_stages(
        "flat_first", lambda shape, classes: [_Flatten(), _ConvBN(8), _Classifier(classes)]
    )
    with pytest.raises(ValueError, match="'flat_first' does not run on inputs of shape"):
        build_network(config_of("flat_first"), INPUT_SHAPE, 5)


@pytest.mark.parametrize("name,width", FAMILIES)
def test_stages_one_by_one_equal_whole_network(name, width):
    network = build(name, width)
    variables = drawn_variables(network)
    x = jax.random.normal(jax.random.key(2), (3, *INPUT_SHAPE))
    # Jitted, as the router runs them: eager dispatch would compile every op separately.
    whole = jax.jit(network.apply)(variables, x)
    assert whole.shape == (3, 5)
    declared = network.activation_shapes(batch_size=3)
    assert len(declared) == network.num_stages
    stage = jax.jit(network.apply_stage, static_argnums=1)
    h = x
    for index in range(network.num_stages):
        h = stage(variables, index, h)
        assert tuple(h.shape) == declared[index], (name, index)
    np.testing.assert_allclose(h, whole, rtol=1e-5, atol=1e-5)
    # A prefix and the matching suffix, run separately, also give the whole network.
    mid = network.num_stages // 2
    run_range = jax.jit(network.apply_range, static_argnums=(2, 3))
    prefix = run_range(variables, x, 0, mid)
    np.testing.assert_allclose(
        run_range(variables, prefix, mid, network.num_stages), whole, rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("name,width", [("resnet18", 4), ("vgg11", 4)])
def test_batch_norm_uses_running_statistics_at_inference(name, width):
    network = build(name, width)
    variables = drawn_variables(network)
    x = jax.random.normal(jax.random.key(3), (4, *INPUT_SHAPE))
    # Inference is per-example: a row's logits do not depend on the rest of the batch.
    apply = jax.jit(network.apply)
    np.testing.assert_allclose(
        apply(variables, x)[:1], apply(variables, x[:1]), rtol=1e-5, atol=1e-5
    )
    logits, new_stats = jax.jit(network.apply_train)(variables, x)
    assert logits.shape == (4, 5)
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"], new_stats)
    assert any(jax.tree.leaves(changed))


def test_resnet_width_multiplier_and_input_size():
    config = ml_collections.ConfigDict(dict(name="resnet18", width=16, hidden_sizes=()))
    network = build_network(config, (28, 28, 1), 10)
    shapes = network.activation_shapes()
    assert shapes[0] == (1, 28, 28, 16)
    assert shapes[-2] == (1, 4, 4, 128)
    assert shapes[-1] == (1, 10)
    assert network.num_stages == 10  # stem, 8 basic blocks, head
    resnet50 = build_network(
        ml_collections.ConfigDict(dict(name="resnet50", width=8, hidden_sizes=())), (32, 32, 3), 100
    )
    assert resnet50.num_stages == 18 and resnet50.activation_shapes()[1] == (1, 32, 32, 32)


def test_bad_input_is_named():
    network = build("resnet18", 4)
    variables = drawn_variables(network)
    with pytest.raises(ValueError, match=r"expects inputs of shape \(batch, 12, 12, 3\)"):
        network.apply(variables, jnp.zeros((2, 12, 12, 1)))
    with pytest.raises(ValueError, match="shape"):
        network.apply(variables, jnp.zeros((12, 12, 3)))
    with pytest.raises(TypeError, match="normalize"):
        network.apply(variables, jnp.zeros((2, 12, 12, 3), jnp.uint8))
    with pytest.raises(ValueError, match="empty batch"):
        network.apply(variables, jnp.zeros((0, 12, 12, 3)))
    with pytest.raises(ValueError, match="unknown network 'resnet19'"):
        build("resnet19", 4)
    with pytest.raises(ValueError, match="outside"):
        network.apply_range(variables, jnp.zeros((1, 12, 12, 3)), 3, 99)


def _param_count(name: str, width: int, input_shape=(32, 32, 3), classes=10) -> int:
    network = build_network(
        ml_collections.ConfigDict(dict(name=name, width=width)), input_shape, classes
    )
    abstract = jax.eval_shape(network.init, jax.random.key(0))
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(abstract["params"]))


@pytest.mark.parametrize(
    "name,published_millions",
    [
        # He et al. 2016, table 6 (CIFAR-10, width 16). Our shortcuts are 1x1 projections where
        # the shape changes (option B), which adds about 3 k parameters to each.
        ("resnet20", 0.27),
        ("resnet32", 0.46),
        ("resnet44", 0.66),
        ("resnet56", 0.85),
        ("resnet110", 1.7),
    ],
)
def test_cifar_resnet_parameter_counts_match_the_paper(name, published_millions):
    assert _param_count(name, 16) / 1e6 == pytest.approx(published_millions, rel=0.03)


@pytest.mark.parametrize(
    "name,published_millions",
    [
        # ImageNet figures less the 1000-way classifier (2048 x 1000 + 1000 for bottlenecks);
        # VGG-16's convolutions alone are 14.7 M (its FC layers are replaced by the pooled head).
        ("resnet101", 44.5 - 2.05),
        ("resnet152", 60.2 - 2.05),
        ("vgg16", 14.7),
    ],
)
def test_imagenet_style_parameter_counts_match_published_figures(name, published_millions):
    assert _param_count(name, 64) / 1e6 == pytest.approx(published_millions, rel=0.03)


@pytest.mark.parametrize(
    "name,stages,last_map",
    [
        ("resnet20", 11, (1, 7, 7, 64)),
        ("resnet56", 29, (1, 7, 7, 64)),
        ("resnet110", 56, (1, 7, 7, 64)),
        ("resnet101", 35, (1, 4, 4, 512)),
        ("resnet152", 52, (1, 4, 4, 512)),
        ("vgg16", 6, (1, 1, 1, 128)),
    ],
)
def test_deep_networks_have_one_stage_per_block(name, stages, last_map):
    network = build_network(ml_collections.ConfigDict(dict(name=name, width=16)), (28, 28, 1), 10)
    shapes = network.activation_shapes()
    assert network.num_stages == stages
    assert shapes[0][1] == (14 if name.startswith("vgg") else 28)  # VGG pools after a block
    assert shapes[-2] == last_map
    assert shapes[-1] == (1, 10)
