"""Learned caches: variants, selector calibration, vmap == loop, recording bounds, bank I/O."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import assert_config_rejects, drawn_variables, tiny_config

from gati_jax import data
from gati_jax.caches import (
    CacheBank,
    Candidate,
    Predictor,
    VariantError,
    calibrate_threshold,
    hit_statistics,
    load_bank,
    make_lookup,
    mark_frontier,
    parse_variant,
    record_activations,
    save_bank,
)
from gati_jax.caches.exploration import ExplorationData, explore
from gati_jax.caches.selector import wilson_lower_bound
from gati_jax.caches.training import HeadTraining, selector_scores, train_predictors
from gati_jax.config import ConfigError, base_config, validate_config
from gati_jax.inference import BaseModel
from gati_jax.jobs.train_base import train_and_evaluate
from gati_jax.models import build_network

VARIANTS = [
    "pool-k1",
    "pool-k2-h16",
    "pool-k4-h16-h8",
    "conv1-c4-s1-k2",
    "conv3-c4-s2-k2-h8",
    "fc-d2",
    "fc-d4-h16",
]


@pytest.mark.parametrize("text", VARIANTS)
def test_variant_output_shapes_and_names(text):
    spec = parse_variant(text)
    assert parse_variant(spec.name) == spec
    predictor = Predictor(spec, 7)
    x = jnp.ones((3, 8, 8, 5), jnp.float16)
    params = predictor.init(jax.random.key(0), x)
    assert predictor.apply(params, x).shape == (3, 7)


def test_bad_variants_are_named():
    for text, match in [
        ("knn-k2", "unknown variant"),
        ("pool-k2-x3", "cannot read 'x3'"),
        ("conv5-c4-k2", "kernels are 1 or 3"),
        ("pool-k0", "positive"),
        ("fc-d2-h8-h8-h8", "at most 2"),
    ]:
        with pytest.raises(VariantError, match=match):
            parse_variant(text)
    with pytest.raises(VariantError, match="larger than the 2x2 map at position 7"):
        parse_variant("pool-k4").check_fits((2, 2, 8), "position 7")
    with pytest.raises(VariantError, match="needs a feature map"):
        parse_variant("pool-k2").check_fits((32,), "position 0")
    config = base_config()
    config.caches.variants = ("pool-k2", "poll-k1")
    with pytest.raises(ConfigError, match="caches.variants.*poll-k1"):
        validate_config(config)


def test_calibrated_threshold_is_the_most_permissive_one_meeting_the_target():
    rng = np.random.default_rng(0)
    scores = rng.uniform(size=2000)
    agree = rng.uniform(size=2000) < scores  # higher scores agree more often
    for target in (0.99, 0.95, 0.9):
        threshold = calibrate_threshold(scores, agree, target, confidence=0.0)
        stats = hit_statistics(scores, agree, threshold)
        assert stats["hit_agreement"] >= target
        # One more example admitted would break the target (or there is none left).
        lower = scores[scores < threshold]
        if lower.size:
            looser = hit_statistics(scores, agree, lower.max())
            assert looser["hit_agreement"] < target or looser["hit_rate"] == 1.0
        # The confidence-bounded threshold is stricter and its hits clear the bound.
        bounded = calibrate_threshold(scores, agree, target, confidence=0.95)
        assert bounded >= threshold
        hits = scores >= bounded
        if hits.any():
            assert wilson_lower_bound(agree[hits].sum(), hits.sum(), 0.95) >= target
    assert calibrate_threshold(scores, np.zeros(2000, bool), 0.5) == float("inf")


def test_wilson_lower_bound_matches_known_values():
    # 95 of 100, one-sided 95% (z = 1.645): (0.9635 - 0.0383) / 1.0271 = 0.9008 by hand.
    assert float(wilson_lower_bound(95, 100, 0.95)) == pytest.approx(0.9008, abs=5e-4)
    assert float(wilson_lower_bound(95, 100, 0.0)) == 0.95
    assert float(wilson_lower_bound(1000, 1000, 0.95)) < 1.0


def test_vmapped_training_equals_looped_training():
    spec = parse_variant("pool-k2-h16")
    rng = np.random.default_rng(1)
    features = rng.normal(size=(96, 6, 6, 4)).astype(np.float16)
    teacher = rng.normal(size=(96, 5)).astype(np.float32)
    hp = HeadTraining(epochs=2, batch_size=32)
    seeds, rates = np.array([0, 1, 2, 3]), np.array([1e-3, 1e-2, 1e-3, 3e-2], np.float32)
    vmapped, v_loss = train_predictors(spec, 5, features, teacher, seeds, rates, hp)
    looped, l_loss = train_predictors(
        spec, 5, features, teacher, seeds, rates, hp, vectorised=False
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6), vmapped, looped
    )
    np.testing.assert_allclose(v_loss, l_loss, rtol=2e-5)
    # The members really differ (seeds and rates reach the parameters).
    first = jax.tree.leaves(vmapped)[0]
    assert not np.allclose(first[0], first[1])


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A trained base network on synthetic data (a small MLP) and its data set."""
    config = tiny_config(epochs=4)
    config.data.validation_size = 400
    config.data.synthetic.train_size = 2000
    config.data.synthetic.test_size = 600
    out = train_and_evaluate(config, str(tmp_path_factory.mktemp("base")))
    return out["model"], data.load_dataset(config.data)


def _exploration_data(model, dataset):
    def rec(split):
        return record_activations(model, split.images, split.labels)

    half = len(dataset.validation.labels) // 2
    val = rec(dataset.validation)
    return ExplorationData(
        rec(dataset.train),
        val.take(np.arange(half)),
        val.take(np.arange(half, len(val.labels))),
        rec(dataset.test),
    )


def _caches_config(**kwargs) -> ml_collections.ConfigDict:
    caches = base_config().caches
    caches.variants = ("fc-d1", "fc-d1-h32")
    caches.seeds = 2
    caches.learning_rates = (3e-3, 1e-2)
    caches.epochs = 6
    caches.latency_repeats = 5
    caches.targets = (0.95, 0.9)
    for key, value in kwargs.items():
        caches[key] = value
    return caches


def test_exploration_predictors_agree_and_thresholds_hold(tiny_base, tmp_path):
    model, dataset = tiny_base
    recorded = _exploration_data(model, dataset)
    bank = explore(model, recorded, _caches_config())
    # positions x variants x (2 seeds x 2 rates) x selector kinds (learned, softmax, entropy)
    assert len(bank.candidates) == 2 * 2 * 4 * 3
    assert {c.spec.selector for c in bank.candidates} == {"learned", "softmax", "entropy"}
    best = max(c.metrics["agreement"] for c in bank.at(1))
    assert best > 0.85  # 4 classes: chance agreement is about 0.25
    for c in bank.candidates:
        assert c.metrics["lookup_latency_s"] > 0 and c.metrics["param_bytes"] > 0
        # Held-out (test split) agreement among hits meets the calibrated target, up to the
        # sampling error of a few hundred examples.
        if c.metrics["hit_rate@0.9"] > 0.2:
            assert c.metrics["hit_agreement@0.9"] >= 0.85
    assert any(c.metrics["on_frontier"] for c in bank.at(0))

    save_bank(tmp_path / "bank", bank)
    loaded = load_bank(tmp_path / "bank")
    assert [c.key for c in loaded.candidates] == [c.key for c in bank.candidates]
    for a, b in zip(loaded.candidates, bank.candidates):
        assert a.metrics == b.metrics and a.thresholds == b.thresholds
        jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
    # The loaded parameters serve: the lookup reproduces the recorded agreement.
    c = loaded.candidates[0]
    lookup = jax.jit(make_lookup(c.spec, bank.num_classes, c.pool_factor, bank.selector_hidden))
    answers, scores = lookup(c.params, jnp.asarray(recorded.test.features[c.position], jnp.float32))
    agreement = float(np.mean(np.asarray(answers) == recorded.test.base_predictions))
    assert agreement == pytest.approx(c.metrics["agreement"], abs=1e-6)
    assert np.all((np.asarray(scores) >= 0) & (np.asarray(scores) <= 1))


def test_recording_respects_its_memory_limit():
    config = ml_collections.ConfigDict(dict(name="resnet18", width=4, hidden_sizes=()))
    network = build_network(config, (16, 16, 1), 3)
    model = BaseModel(
        network,
        drawn_variables(network),
        np.zeros(1, np.float32),
        np.ones(1, np.float32),
        {},
    )
    images = np.random.default_rng(0).integers(0, 255, (40, 16, 16, 1), dtype=np.uint8)
    labels = np.zeros(40, np.int32)
    full = record_activations(model, images, labels)
    assert set(full.pool_factors.values()) == {1}
    limit = full.nbytes // 3
    bounded = record_activations(model, images, labels, max_bytes=limit)
    assert bounded.nbytes <= limit and max(bounded.pool_factors.values()) > 1
    # Pooled storage is the average of the full map.
    p = max(bounded.pool_factors, key=bounded.pool_factors.get)
    f = bounded.pool_factors[p]
    n, h, w, c = full.features[p].shape
    expect = full.features[p].astype(np.float32).reshape(n, h // f, f, w // f, f, c).mean((2, 4))
    np.testing.assert_allclose(bounded.features[p].astype(np.float32), expect, atol=2e-2)
    np.testing.assert_array_equal(bounded.logits, full.logits)
    with pytest.raises(ValueError, match="caches.record_max_bytes"):
        record_activations(model, images, labels, max_bytes=1000)
    # A range of examples is a view of the recording (no second copy of several GB), and
    # holds what the same examples taken by index hold.
    part, copied = full.take(slice(10, 30)), full.take(np.arange(10, 30))
    for q in full.positions:
        assert np.shares_memory(part.features[q], full.features[q])
        np.testing.assert_array_equal(part.features[q], copied.features[q])
    np.testing.assert_array_equal(part.labels, copied.labels)
    np.testing.assert_array_equal(part.logits, full.logits[10:30])


def test_frontier_keeps_only_undominated_candidates():
    def cand(seed, lat, hit, variant="pool-k1"):
        return Candidate(
            0,
            variant,
            seed,
            1e-3,
            1,
            (2, 2, 1),
            {},
            {},
            {"lookup_latency_s": lat, "hit_rate@0.99": hit},
        )

    cands = [
        cand(0, 1.0, 0.5),
        cand(1, 2.0, 0.4),
        cand(2, 2.0, 0.7),
        cand(3, 3.0, 0.7),
        cand(4, 0.5, 0.1),
    ]
    mark_frontier(cands)
    assert [c.metrics["on_frontier"] for c in cands] == [True, False, True, False, True]
    bank = CacheBank(3, 16, cands, {})
    assert [c.metrics["lookup_latency_s"] for c in bank.frontier(0)] == [0.5, 1.0, 2.0]


def test_the_selector_kinds_of_a_frontier_predictor_are_all_on_the_frontier():
    """A predictor is on the frontier by its best selector, and then all its selector kinds
    are, for the planner to choose from; a dominated predictor takes all of them off."""

    def cand(seed, variant, lat, hit):
        return Candidate(
            0,
            variant,
            seed,
            1e-3,
            1,
            (2, 2, 1),
            {},
            {},
            {"lookup_latency_s": lat, "hit_rate@0.99": hit},
        )

    kept = [
        cand(0, "pool-k1", 1.0, 0.2),
        cand(0, "pool-k1-msp", 1.0, 0.6),
        cand(0, "pool-k1-ent", 1.0, 0.5),
    ]
    dropped = [cand(1, "pool-k2-h8", 2.0, 0.55), cand(1, "pool-k2-h8-msp", 2.0, 0.3)]
    mark_frontier(kept + dropped)
    assert all(c.metrics["on_frontier"] for c in kept)
    assert not any(c.metrics["on_frontier"] for c in dropped)


def test_the_frontier_is_drawn_at_the_strictest_target_anything_hits():
    from gati_jax.caches.exploration import frontier_target

    def cand(hits):
        return Candidate(
            0,
            "pool-k1",
            0,
            1e-3,
            1,
            (2, 2, 1),
            {},
            {},
            {f"hit_rate@{t:g}": h for t, h in zip((0.99, 0.98, 0.95), hits)},
        )

    assert frontier_target([cand((0.1, 0.2, 0.3))], (0.99, 0.98, 0.95)) == 0.99
    # 300 calibration requests certify nothing at 0.99: the frontier is drawn at 0.98.
    assert frontier_target([cand((0, 0.2, 0.3)), cand((0, 0, 0.4))], (0.95, 0.99, 0.98)) == 0.98
    assert frontier_target([cand((0, 0, 0))], (0.99, 0.98, 0.95)) == 0.95


def test_fixed_selectors_score_monotone_functions_of_max_softmax_and_entropy():
    """The softmax and entropy selectors are the Selector network with fixed weights: their
    scores order requests as the predictor's max softmax (negated entropy) does, as finely as
    float32 holds them."""
    from gati_jax.caches.selector import FIXED_SLOPE
    from gati_jax.caches.training import fixed_selectors

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(1, 3000, 10)) * rng.uniform(0, 14, (1, 3000, 1))
    logits = logits.astype(np.float32)
    probs = np.asarray(jax.nn.softmax(jnp.asarray(logits[0])), np.float64)  # float32 values
    hp = HeadTraining(selector_hidden=16)
    for kind, reference in (
        ("softmax", probs.max(-1)),
        ("entropy", np.sum(probs * np.log(probs + 1e-30), -1)),
    ):
        scores = selector_scores(fixed_selectors(kind, 1, 16), logits, hp, kind)[0]
        order = np.argsort(reference, kind="stable")
        # Monotone wherever float32 can tell the two references apart: the float32 entropy of
        # two requests whose float64 entropies differ by 1e-8 may come out in either order.
        apart = np.diff(reference[order]) > 4 * np.finfo(np.float32).eps * np.abs(
            reference[order][1:]
        )
        assert np.all((np.diff(scores[order]) >= 0) | ~apart), kind
        ties = np.sum(np.diff(scores[order]) == 0)
        if kind == "softmax":  # ties exactly where float32 ties the max softmax itself
            assert ties == np.sum(np.diff(reference[order]) == 0)
        else:  # a few ties, almost all among near-certain answers (float32 resolution)
            tied = np.flatnonzero(np.diff(scores[order]) == 0)
            assert len(tied) <= 0.02 * len(scores)
            assert np.mean(reference[order][tied] > -1e-6) >= 0.8
    top = jax.nn.sigmoid(FIXED_SLOPE * (jnp.asarray(probs.max(-1), jnp.float32) - 1))
    np.testing.assert_allclose(
        selector_scores(fixed_selectors("softmax", 1, 16), logits, hp, "softmax")[0],
        top,
        rtol=1e-6,
        atol=1e-7,
    )


def test_fixed_selectors_computed_bare_score_exactly_what_their_network_scores():
    """The router computes the fixed kinds without their network; thresholds calibrated on
    either must serve the other, so the two agree to the bit."""
    from gati_jax.caches.selector import fixed_selector_params, make_scorer

    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4000, 10)) * rng.uniform(0, 20, (4000, 1))
    logits = jnp.asarray(logits, jnp.float32)
    network = jax.jit(make_scorer("learned", 16))
    for kind in ("softmax", "entropy"):
        bare = np.asarray(jax.jit(make_scorer(kind, 16))({}, logits))
        through = np.asarray(network(fixed_selector_params(kind, 16), logits))
        np.testing.assert_array_equal(bare, through, err_msg=kind)
        assert len(np.unique(bare)) > 1000, kind  # not a degenerate constant
    with pytest.raises(ValueError, match="unknown selector kind 'margin'"):
        make_scorer("margin", 16)


def test_variant_strings_name_the_selector_kind():
    for text, kind in (
        ("pool-k2-h64", "learned"),
        ("pool-k2-h64-msp", "softmax"),
        ("conv3-c16-s2-k2-ent", "entropy"),
        ("fc-d1-msp", "softmax"),
    ):
        spec = parse_variant(text)
        assert spec.selector == kind and spec.name == text
        assert spec.predictor == parse_variant(text.removesuffix("-msp").removesuffix("-ent"))
        assert spec.with_selector(kind) == spec
    with pytest.raises(VariantError, match="selector suffix"):
        parse_variant("pool-msp-k2")
    assert_config_rejects("caches", "variants", ("pool-k1-msp",))
    assert_config_rejects("caches", "selectors", ("learned", "knn"))
    assert_config_rejects("caches", "selectors", ())


def test_adaptive_avg_pool_uses_pytorch_bins_and_leaves_a_grid_sized_map_alone():
    from gati_jax.caches.pooling import adaptive_avg_pool

    x = np.random.default_rng(0).normal(size=(2, 7, 5, 3)).astype(np.float32)
    pooled = np.asarray(adaptive_avg_pool(jnp.asarray(x), 3))
    # PyTorch's adaptive bins: [floor(i * n / k), ceil((i + 1) * n / k)), overlapping here.
    rows, cols = [(0, 3), (2, 5), (4, 7)], [(0, 2), (1, 4), (3, 5)]
    for i, (r0, r1) in enumerate(rows):
        for j, (c0, c1) in enumerate(cols):
            np.testing.assert_allclose(
                pooled[:, i, j], x[:, r0:r1, c0:c1].mean((1, 2)), rtol=1e-5, atol=1e-6
            )
    grid = jnp.asarray(x[:, :3, :3])
    assert adaptive_avg_pool(grid, 3) is grid


@pytest.mark.parametrize(
    "size,factor,grid",
    [(28, 2, 4), (28, 2, 1), (28, 2, 14), (28, 4, 2), (14, 1, 4), (12, 3, 3), (8, 2, 3), (7, 1, 7)],
)
def test_pooling_by_slices_equals_the_pooling_matrices(size, factor, grid):
    """pool_map, adaptive pooling and the one-step pooled_grid (written as slices, see
    caches/pooling.py) average exactly the values the pooling matrices weigh."""
    from gati_jax.caches.pooling import (
        adaptive_avg_pool,
        adaptive_pool_matrix,
        pool_map,
        pooled_grid,
    )

    x = np.random.default_rng(size + grid).normal(size=(2, size, size + factor, 3))
    x = x.astype(np.float32)
    blocks = np.asarray(
        x.reshape(2, size // factor, factor, (size + factor) // factor, factor, 3).mean((2, 4))
    )
    np.testing.assert_allclose(pool_map(jnp.asarray(x), factor), blocks, rtol=1e-5, atol=1e-6)
    rows = adaptive_pool_matrix(blocks.shape[1], grid)
    cols = adaptive_pool_matrix(blocks.shape[2], grid)
    want = np.einsum("ih,jw,nhwc->nijc", rows, cols, blocks)
    np.testing.assert_allclose(
        adaptive_avg_pool(jnp.asarray(blocks), grid), want, rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        jax.jit(pooled_grid, static_argnums=(1, 2))(jnp.asarray(x), factor, grid),
        want,
        rtol=1e-5,
        atol=1e-6,
    )


def test_pool_map_names_a_factor_that_does_not_divide_the_map():
    from gati_jax.caches.pooling import pool_map

    with pytest.raises(ValueError, match="cannot be pooled by 3"):
        pool_map(jnp.zeros((1, 8, 8, 2)), 3)


@pytest.mark.parametrize(
    "variant", ["pool-k4-h8", "fc-d2-h8", "conv3-c4-s2-k2", "pool-k1", "fc-d3-h8"]
)
def test_a_predictor_on_the_raw_map_equals_it_on_the_recorded_one(variant):
    """Served lookups hand the predictor the raw activation (pre_pool = the recording's
    factor); it must answer as on the pooled activation the cache was trained on."""
    from gati_jax.caches.pooling import pool_map

    x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 16, 16, 4)), jnp.float32)
    spec = parse_variant(variant)
    params = Predictor(spec, 5).init(jax.random.key(0), pool_map(x, 2))
    recorded = Predictor(spec, 5).apply(params, pool_map(x, 2))
    raw = Predictor(spec, 5, pre_pool=2).apply(params, x)
    np.testing.assert_allclose(raw, recorded, rtol=1e-5, atol=1e-5)
    # The former pooling (block reshape, pooling matrices), which bench_lookup compares with.
    matrices = Predictor(spec, 5, pre_pool=2, pooling="matrices").apply(params, x)
    np.testing.assert_allclose(matrices, recorded, rtol=1e-5, atol=1e-5)


def test_lookups_of_one_computation_share_one_cost():
    """One predictor architecture on one activation shape is one program whatever its
    position, seed or (under a threshold policy, which ignores it) selector kind: the
    planner prices each at the median of their timings, so it cannot pick whichever copy
    happened to time lowest. Under gati a learned selector is a program of its own; the fixed
    kinds run bare, so they are the threshold policies' program of the same predictor.
    Another shape or pooling is another program."""
    from gati_jax.caches.bank import Candidate
    from gati_jax.planner.build import _pooled, _program_siblings, lookup_program, same_program
    from gati_jax.planner.costs import Profile

    def cand(position, variant, shape=(16, 8, 8), factor=1, seed=0):
        return Candidate(position, variant, seed, 0.01, factor, shape, {}, {}, {})

    cands = [
        cand(0, "pool-k1"),
        cand(0, "pool-k1-msp"),
        cand(3, "pool-k1-ent", seed=1),
        cand(0, "pool-k2-h8"),
        cand(5, "pool-k1", shape=(32, 4, 4)),
        cand(6, "pool-k1", factor=2),
    ]
    keys = [c.key for c in cands]
    groups = same_program({c.key: lookup_program(c, "classifier") for c in cands})
    assert groups[keys[1]] == keys[:3] and groups[keys[3]] == [keys[3]]
    assert groups[keys[4]] == [keys[4]] and groups[keys[5]] == [keys[5]]
    gati = same_program({c.key: lookup_program(c, "gati") for c in cands})
    assert gati[keys[0]] == [keys[0]] and gati[keys[1]] == keys[1:3]
    assert lookup_program(cands[1], "gati") == lookup_program(cands[0], "classifier")
    assert lookup_program(cands[0], "gati") != lookup_program(cands[0], "classifier")
    moved = cand(7, "pool-k1-msp", seed=2)  # another position and seed, the same program
    assert lookup_program(moved, "gati") == lookup_program(cands[1], "gati")
    profile = Profile(
        "cpu",
        "cpu",
        1,
        "m",
        [1e-3],
        {f"classifier/{k}": s for k, s in zip(keys[:3], (30e-6, 0.0, 50e-6), strict=True)},
    )
    same = ["classifier/" + k for k in groups[keys[1]]]
    assert _pooled(profile, profile.marginal, same) == pytest.approx(30e-6)
    assert _pooled(profile, profile.marginal, same[:2]) == pytest.approx(15e-6)
    # A fixed-selector gati lookup is priced at the threshold policies' timings of its
    # predictor less their router's charge: its own part (a gati router adds gati's charges).
    profile.router_s = {"classifier": 10e-6, "gati": 25e-6}
    profile.programs = {f"classifier/{c.key}": lookup_program(c, "classifier") for c in cands}
    msp = cands[1]
    same = _program_siblings(profile, "gati", {msp.key: lookup_program(msp, "gati")})[msp.key]
    assert same[0] == f"gati/{msp.key}"
    assert sorted(same[1:]) == sorted(f"classifier/{k}" for k in keys[:3])
    assert _pooled(profile, profile.marginal, same) == pytest.approx(20e-6)


def test_a_recording_that_cannot_fit_names_the_key_to_raise():
    from gati_jax.caches.recording import choose_pool_factors
    from gati_jax.config_checks import ConfigError

    shapes = {0: (7, 7, 16), 1: (7, 7, 32)}  # odd maps: no pooling left to fit them
    assert choose_pool_factors(shapes, 10, 10 * (784 + 1568) * 2) == {0: 1, 1: 1}
    with pytest.raises(ConfigError, match=r"caches\.record_max_bytes=1000: .* 2 positions"):
        choose_pool_factors(shapes, 10, 1000)
