"""A cache lookup as served: raw activation -> (answer, selector score), with explicit params."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from gati_jax.caches.selector import make_scorer
from gati_jax.caches.variants import Predictor, VariantSpec


def make_lookup(
    spec: VariantSpec,
    num_classes: int,
    pool_factor: int,
    selector_hidden: int,
    pooling: str = "slices",
) -> Callable[[dict[str, Any], jax.Array], tuple[jax.Array, jax.Array]]:
    """Returns ``lookup(params, activation) -> (answer, score)``; params are an argument, so new
    values never force a recompile. ``pooling``: see caches/pooling.py."""
    # The raw activation goes in: the predictor pools it as the recording did (one step for
    # pool and fc heads, see caches/pooling.py).
    predictor = Predictor(spec, num_classes, pool_factor, pooling)
    score = make_scorer(spec.selector, selector_hidden)

    def lookup(params, activation):
        logits = predictor.apply({"params": params["predictor"]}, activation)
        return jnp.argmax(logits, -1), score(params["selector"], logits)

    return lookup
