"""Exit policies: one decision rule per position, all with the same signature.

``decide(params, threshold, activation, base_answer) -> (answer, hit)`` runs inside the
compiled router. ``params`` and ``threshold`` are traced arguments, so new values (online
learning, threshold tuning) never recompile; ``base_answer`` is only read by the oracle.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from gati_jax.caches.lookup import make_lookup
from gati_jax.caches.pooling import POOLINGS
from gati_jax.caches.variants import Predictor, VariantSpec
from gati_jax.registry import Registry

Decide = Callable[[Any, jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


@dataclasses.dataclass(frozen=True)
class CacheHead:
    """What a policy needs to build its decision at one position: the cache's architecture."""

    spec: VariantSpec
    num_classes: int
    pool_factor: int
    selector_hidden: int
    pooling: str = "slices"  # how the predictor pools (caches/pooling.py)

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling '{self.pooling}': one of {sorted(POOLINGS)}")


def _predictor_logits(head: CacheHead) -> Callable[[Any, jax.Array], jax.Array]:
    predictor = Predictor(head.spec, head.num_classes, head.pool_factor, head.pooling)
    return lambda params, x: predictor.apply({"params": params["predictor"]}, x)


_POLICIES: Registry[Callable[[Any], Decide]] = Registry("exit policy", "deploy(policy=...)")
register_policy = _POLICIES.register
available_policies = _POLICIES.names
policy_builder = _POLICIES.get


@register_policy("gati")
def gati(head: CacheHead) -> Decide:
    """Learned cache: hit when the selector's agreement probability reaches the threshold."""
    lookup = make_lookup(
        head.spec, head.num_classes, head.pool_factor, head.selector_hidden, head.pooling
    )

    def decide(params, threshold, x, base_answer):
        del base_answer
        answer, score = lookup(params, x)
        return answer, score >= threshold

    return decide


def _classifier_policy(head: CacheHead, hit: Callable[[jax.Array, jax.Array], jax.Array]) -> Decide:
    # The cache's predictor serves as the internal classifier; ``hit`` reads its log-probs.
    logits_fn = _predictor_logits(head)

    def decide(params, threshold, x, base_answer):
        del base_answer
        log_probs = jax.nn.log_softmax(logits_fn(params, x))
        return jnp.argmax(log_probs, -1), hit(log_probs, threshold)

    return decide


@register_policy("confidence")
def confidence(head: CacheHead) -> Decide:
    """Shallow-Deep Networks: hit when the internal classifier's max softmax reaches the
    threshold."""
    return _classifier_policy(head, lambda lp, t: jnp.max(jnp.exp(lp), -1) >= t)


@register_policy("apparate")
def apparate(head: CacheHead) -> Decide:
    """Apparate's ramps: a max-softmax exit like ``confidence``; its ramps and thresholds come
    from Apparate's placement and step search (gati_jax/planner/apparate.py)."""
    return confidence(head)


@register_policy("entropy")
def entropy(head: CacheHead) -> Decide:
    """BranchyNet: hit when the internal classifier's entropy is at most the threshold."""
    return _classifier_policy(head, lambda lp, t: -jnp.sum(jnp.exp(lp) * lp, -1) <= t)


@register_policy("oracle")
def oracle(head: CacheHead) -> Decide:
    """Exits where the predictor agrees with the base answer: a bound, for evaluation only."""
    logits_fn = _predictor_logits(head)

    def decide(params, threshold, x, base_answer):
        del threshold
        answer = jnp.argmax(logits_fn(params, x), -1)
        return answer, answer == base_answer

    return decide
