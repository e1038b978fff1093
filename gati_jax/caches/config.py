"""Config section ``caches``: the base model the caches attach to, the design space explored
and how its candidates are trained and calibrated."""

from __future__ import annotations

import ml_collections

from gati_jax.config_checks import ConfigError, require, require_at_least


def caches_config() -> ml_collections.ConfigDict:
    """The ``caches`` section (gati_jax/caches, gati_jax/jobs/exploration.py)."""
    c = ml_collections.ConfigDict()
    # The exported base model the caches attach to.
    c.checkpoint = "checkpoints/fashion_mnist_resnet18"
    # True: when `checkpoint` holds no base model, the main job trains one there first (into
    # a folder it creates; an existing folder that is not a base model is never replaced).
    c.train_base = False
    # Candidate positions; empty means every position before the head.
    c.positions = ()
    # The predictor design space (gati_jax/caches/variants.py explains the strings). A
    # full-resolution conv head only pays at the last positions and is left out to keep the
    # main job short.
    c.variants = ("pool-k1", "pool-k2-h64", "pool-k4-h64", "conv3-c16-s2-k2", "fc-d4-h128")
    # The selector kinds that judge every predictor (gati_jax/caches/selector.py): learned
    # (trained on the validation split's first half), softmax (the predictor's own max
    # softmax) and entropy (its negated entropy). Each kind is a candidate; the planner picks
    # per position the one the data supports, so gati's design space holds what the
    # confidence and entropy thresholds do.
    c.selectors = ("learned", "softmax", "entropy")
    # Members of each (position, variant) group, trained together by vmap: seeds x rates.
    c.seeds = 1
    c.learning_rates = (1e-2,)
    # Predictors train on base answers for this many train-split examples (at most the
    # split); the validation split trains (first half) and calibrates (second half) the
    # selectors; test reports. Heads trained on a fifth of Fashion-MNIST for 4 epochs were
    # far from converged: five times the optimiser steps, and more examples, raised early
    # positions' hit rates by half (docs/exploration.md).
    c.predictor_examples = 50000
    c.test_examples = 10000
    c.epochs = 4
    c.batch_size = 128
    c.temperature = 2.0
    c.distill_weight = 0.7
    c.selector_epochs = 30
    c.selector_learning_rate = 1e-2
    c.selector_hidden = 16
    # Predictors and learned selectors train for at least this many optimiser steps: on a
    # small data set the epochs above are raised (250 leaves Fashion-MNIST's as they are).
    c.min_steps = 250
    c.targets = (0.99, 0.98, 0.95)
    # Thresholds must meet each target for the one-sided Wilson lower bound at this confidence
    # on the calibration half (0: the point estimate, which over-fits the calibration sample).
    c.calibration_confidence = 0.95
    c.record_max_bytes = 2 * 1024**3
    c.record_batch_size = 250
    c.latency_batch_size = 1
    c.latency_repeats = 10
    return c


def validate_caches(c: ml_collections.ConfigDict) -> None:
    """Checks the ``caches`` section."""
    from gati_jax.caches.variants import SELECTORS, VariantError, parse_variant

    require(len(c.variants) > 0, "caches.variants", c.variants, "at least one variant")
    for text in c.variants:
        try:
            parse_variant(text)
        except VariantError as error:
            raise ConfigError(f"invalid config value caches.variants: {error}") from None
    for text in c.variants:
        if parse_variant(text).selector != "learned":
            raise ConfigError(
                f"invalid config value caches.variants={tuple(c.variants)!r}: "
                f"'{text}' names a selector; list predictors here and selector "
                "kinds in caches.selectors"
            )
    require(
        len(c.selectors) > 0
        and len(set(c.selectors)) == len(c.selectors)
        and all(k in SELECTORS for k in c.selectors),
        "caches.selectors",
        c.selectors,
        f"distinct selector kinds of {SELECTORS}",
    )
    require(int(c.min_steps) >= 0, "caches.min_steps", c.min_steps, ">= 0")
    require(all(int(p) >= 0 for p in c.positions), "caches.positions", c.positions, ">= 0")
    require(int(c.seeds) >= 1, "caches.seeds", c.seeds, ">= 1")
    require(
        len(c.learning_rates) > 0 and all(lr > 0 for lr in c.learning_rates),
        "caches.learning_rates",
        c.learning_rates,
        "positive rates",
    )
    require_at_least(
        c,
        "caches",
        (
            "predictor_examples",
            "test_examples",
            "epochs",
            "batch_size",
            "selector_epochs",
            "selector_hidden",
            "record_batch_size",
            "latency_batch_size",
            "latency_repeats",
        ),
        1,
    )
    require(c.temperature > 0, "caches.temperature", c.temperature, "> 0")
    require(
        c.selector_learning_rate > 0,
        "caches.selector_learning_rate",
        c.selector_learning_rate,
        "> 0",
    )
    require(0 <= c.distill_weight <= 1, "caches.distill_weight", c.distill_weight, "in [0, 1]")
    require(
        all(0 < t < 1 for t in c.targets) and len(c.targets) > 0,
        "caches.targets",
        c.targets,
        "precision targets in (0, 1)",
    )
    require(
        0 <= c.calibration_confidence < 1,
        "caches.calibration_confidence",
        c.calibration_confidence,
        "in [0, 1)",
    )
    require(int(c.record_max_bytes) > 0, "caches.record_max_bytes", c.record_max_bytes, "> 0")
