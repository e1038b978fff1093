"""The selector: P(predictor answer == base answer) from the predictor's output, and its threshold.

A hit is ``score >= threshold``. The threshold for a precision target is the lowest one whose
hits, on data the selector did not train on, agree with the base network at least that often.

Three kinds score the predictor's output:
- ``learned``: a small MLP on the top-k probabilities, margin and entropy, trained on
  held-out data to predict agreement;
- ``softmax``: ``sigmoid(8 (p_max - 1))``, a monotone function of the predictor's max
  softmax: the confidence threshold of Shallow-Deep Networks;
- ``entropy``: ``sigmoid(-8 H)``, a monotone function of the negated entropy: BranchyNet's
  threshold.
A threshold on the fixed kinds is a threshold on max softmax or entropy, so a cache design
space with them contains what those policies do, and where a few hundred held-out examples
cannot teach a selector more, the planner picks them. The fixed kinds are stored as MLP
parameters (:func:`fixed_selector_params`, one file layout for every kind) but computed bare
(:func:`make_scorer`): running the MLP for them cost a lookup about as much again as the
threshold it computes, so a learned cache lost to the threshold policy it contains.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats as scipy_stats

TOP_K = 3
NUM_FEATURES = TOP_K + 2
# Where selector_features puts the top-1 probability and the entropy.
_TOP1, _ENTROPY = 0, TOP_K + 1
# The fixed kinds' slope: a power of two (the affine map is exact in float32) steep enough
# that a score resolves max-softmax (entropy) differences as finely as float32 holds them.
FIXED_SLOPE = 8.0


def _probabilities(logits: jax.Array) -> jax.Array:
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)


def _entropy(probs: jax.Array) -> jax.Array:
    return -jnp.sum(probs * jnp.log(probs + 1e-12), axis=-1, keepdims=True)


def selector_features(logits: jax.Array) -> jax.Array:
    """Sorted top-k probabilities, top-1 margin and entropy of a predictor's logits."""
    probs = _probabilities(logits)
    top = jax.lax.top_k(probs, min(TOP_K, probs.shape[-1]))[0]
    if top.shape[-1] < TOP_K:  # fewer classes than TOP_K: pad with zero probabilities
        top = jnp.pad(top, ((0, 0), (0, TOP_K - top.shape[-1])))
    margin = top[:, :1] - top[:, 1:2]
    return jnp.concatenate([top, margin, _entropy(probs)], axis=-1)


class Selector(nn.Module):
    """A one-hidden-layer MLP on selector features; outputs the logit of agreement."""

    hidden: int = 16

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        # Full float32 products: a GPU's default TF32 would round p_max = 0.9995 to 0.999.
        precision = jax.lax.Precision.HIGHEST
        x = nn.relu(nn.Dense(self.hidden, precision=precision)(features))
        return nn.Dense(1, precision=precision)(x)[:, 0]


def make_scorer(kind: str, hidden: int) -> Callable[[Any, jax.Array], jax.Array]:
    """``score(selector_params, logits) -> P(agreement)`` for selectors of ``kind``.

    The fixed kinds ignore their parameters and compute what :func:`fixed_selector_params`
    makes the MLP compute, to the bit: the one live path multiplies by 1 and by a power of
    two and adds zeros, all exact in float32, so a threshold calibrated on either serves the
    other."""
    if kind == "softmax":
        return lambda params, logits: jax.nn.sigmoid(
            FIXED_SLOPE * jnp.max(_probabilities(logits), axis=-1) - FIXED_SLOPE
        )
    if kind == "entropy":
        return lambda params, logits: jax.nn.sigmoid(
            -FIXED_SLOPE * _entropy(_probabilities(logits))[:, 0]
        )
    if kind != "learned":
        raise ValueError(f"unknown selector kind '{kind}' (learned, softmax, entropy)")
    selector = Selector(hidden)
    return lambda params, logits: jax.nn.sigmoid(
        selector.apply({"params": params}, selector_features(logits))
    )


def fixed_selector_params(kind: str, hidden: int) -> dict[str, Any]:
    """Parameters that make :class:`Selector` score a fixed function of the predictor's
    output: ``softmax``, ``sigmoid(8 (p_max - 1))``; ``entropy``, ``sigmoid(-8 H)``. One
    hidden unit carries p_max (or H, both >= 0, which the ReLU passes), the rest are zero."""
    if kind not in ("softmax", "entropy"):
        raise ValueError(f"selector kind '{kind}' has no fixed parameters (softmax, entropy)")
    first = np.zeros((NUM_FEATURES, hidden), np.float32)
    first[_TOP1 if kind == "softmax" else _ENTROPY, 0] = 1.0
    second = np.zeros((hidden, 1), np.float32)
    second[0, 0] = FIXED_SLOPE if kind == "softmax" else -FIXED_SLOPE
    bias = np.array([-FIXED_SLOPE if kind == "softmax" else 0.0], np.float32)
    return {
        "Dense_0": {"kernel": first, "bias": np.zeros((hidden,), np.float32)},
        "Dense_1": {"kernel": second, "bias": bias},
    }


def wilson_lower_bound(successes: np.ndarray, trials: np.ndarray, confidence: float) -> np.ndarray:
    """One-sided Wilson score lower bound of a binomial proportion (the point estimate at 0)."""
    successes, trials = np.asarray(successes, np.float64), np.asarray(trials, np.float64)
    p = successes / np.maximum(trials, 1)
    if confidence <= 0:
        return p
    z = float(scipy_stats.norm.ppf(confidence))
    denom = 1 + z * z / trials
    centre = p + z * z / (2 * trials)
    spread = z * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    return (centre - spread) / denom


def calibrate_threshold(
    scores: np.ndarray, agree: np.ndarray, target: float, confidence: float = 0.95
) -> float:
    """Lowest score threshold whose hits reach ``target`` precision; +inf when none does.

    With ``confidence`` > 0 the precision must hold for the Wilson lower bound, not just the
    calibration sample: picking the most permissive cut on a point estimate over-fits that
    sample and misses the target on new data.
    """
    scores, agree = np.asarray(scores, np.float64), np.asarray(agree, bool)
    if scores.size == 0:
        return float("inf")
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_agree = scores[order], agree[order]
    hits = np.arange(1, len(order) + 1)
    precision = wilson_lower_bound(np.cumsum(sorted_agree), hits, confidence)
    # A cut may only fall between distinct scores: ties are all hits or all misses.
    last_of_tie = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    valid = np.flatnonzero((precision >= target) & last_of_tie)
    if valid.size == 0:
        return float("inf")
    return float(sorted_scores[valid[-1]])


def hit_statistics(scores: np.ndarray, agree: np.ndarray, threshold: float) -> dict[str, float]:
    """Hit rate and agreement among hits at a threshold (agreement is 1.0 with no hits)."""
    hits = np.asarray(scores) >= threshold
    n_hits = int(hits.sum())
    return {
        "hit_rate": n_hits / max(len(hits), 1),
        "hit_agreement": float(np.asarray(agree)[hits].mean()) if n_hits else 1.0,
    }
