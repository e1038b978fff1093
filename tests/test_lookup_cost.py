"""The lookup benchmark's two pooling forms: the same decisions, and figures for every cache."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from conftest import drawn_variables

from gati_jax.caches import CacheBank, Candidate, Predictor, parse_variant
from gati_jax.caches.selector import NUM_FEATURES, Selector
from gati_jax.experiments.lookup_benchmark import (
    benchmark_lookups,
    chained_lookup_seconds,
    with_pooling,
)
from gati_jax.inference import BaseModel
from gati_jax.models import build_network
from gati_jax.runtime.deployment import deploy

SHAPE, CLASSES, FACTOR = (12, 12, 1), 5, 2
VARIANTS = {0: "fc-d3-h8", 2: "conv3-c4-s2-k2", 3: "pool-k1"}  # 12x12, 6x6, 6x6 maps


def _system():
    """A width-2 ResNet-18 on 12x12 images and a bank of untrained caches on maps recorded at
    pooling factor 2 (fc with overlapping bins, conv, global pooling)."""
    config = ml_collections.ConfigDict(dict(name="resnet18", width=2, hidden_sizes=()))
    network = build_network(config, SHAPE, CLASSES)
    model = BaseModel(
        network,
        drawn_variables(network),
        np.array([0.5], np.float32),
        np.array([0.25], np.float32),
        {},
    )
    shapes = network.activation_shapes()
    cands = []
    for k, (p, variant) in enumerate(VARIANTS.items()):
        spec, key = parse_variant(variant), jax.random.key(k)
        recorded = (1, shapes[p][1] // FACTOR, shapes[p][2] // FACTOR, shapes[p][3])
        params = {
            "predictor": Predictor(spec, CLASSES).init(key, jnp.zeros(recorded))["params"],
            "selector": Selector(8).init(key, jnp.zeros((1, NUM_FEATURES)))["params"],
        }
        cands.append(
            Candidate(
                p,
                variant,
                0,
                1e-3,
                FACTOR,
                recorded[1:],
                params,
                {"0.99": 0.5},
                {"hit_rate@0.99": 0.1, "lookup_latency_s": 1e-4},
            )
        )
    return model, CacheBank(CLASSES, 8, cands, {"positions": list(VARIANTS)})


def test_both_pooling_forms_route_alike_and_every_cache_gets_figures():
    model, bank = _system()
    dep = deploy(bank, bank.candidates)
    images = np.random.default_rng(0).integers(0, 256, (8, *SHAPE), dtype=np.uint8)
    slices = dep.router(model, max_group=8)
    matrices = with_pooling(dep, "matrices")
    assert {h.pooling for h in matrices.heads} == {"matrices"}
    routed_by_matrices = matrices.router(model, max_group=8)
    exits = set()
    for thresholds in np.random.default_rng(1).uniform(0.3, 0.7, (5, len(VARIANTS))):
        a = slices.route(dep.params, thresholds, images)
        b = routed_by_matrices.route(dep.params, thresholds, images)
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
        exits |= set(a.exit_stage.tolist())
    assert len(exits) >= 2  # real early exits were compared, not only full runs

    chained = chained_lookup_seconds(
        model, {"slices": dep, "matrices": matrices}, links=2, repeats=3
    )
    assert set(chained) == {"slices", "matrices"}
    assert all(len(v) == len(VARIANTS) and np.isfinite(v).all() for v in chained.values())

    result = benchmark_lookups(model, bank, trials=1, links=2, repeats=3, router_repeats=3)
    assert result["positions"] == list(VARIANTS)
    assert result["variants"] == list(VARIANTS.values())
    assert set(result["all_miss_overhead"]) == {"all_positions", "[0]", "[2]", "[3]"}
    for row in result["all_miss_overhead"].values():
        assert len(row["slices"]) == len(row["matrices"]) == 1
        assert np.isfinite(row["slices"] + row["matrices"]).all()
