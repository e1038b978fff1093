"""The traditional cache GATI argues against: nearest stored activations and their answers.

Per position, a bounded store of pooled activations (keys) with the base network's answer
(values). A lookup hits when the ``neighbours`` nearest valid keys all lie within the radius
(the policy's threshold) and agree on one answer. Inserts evict first-in-first-out once the
store is full. The store is a pytree argument of the router, like any cache's parameters.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from gati_jax.caches.pooling import adaptive_avg_pool
from gati_jax.runtime.policies import register_policy


@dataclasses.dataclass(frozen=True)
class KnnHead:
    """How keys are formed (pool to grid x grid, flatten) and how many neighbours must agree."""

    grid: int = 2
    neighbours: int = 3


def knn_key(activation: jax.Array, grid: int) -> jax.Array:
    """The stored key of an activation: pooled to grid x grid and flattened (vectors as they
    are)."""
    x = activation.astype(jnp.float32)
    if x.ndim == 4:
        x = adaptive_avg_pool(x, min(grid, x.shape[1], x.shape[2]))
    return x.reshape(x.shape[0], -1)


def empty_store(capacity: int, key_size: int) -> dict[str, np.ndarray]:
    """A store with room for ``capacity`` entries; ``next`` is the FIFO insertion slot."""
    if capacity < 1:
        raise ValueError(f"knn capacity must be >= 1, got {capacity}")
    return {
        "keys": np.zeros((capacity, key_size), np.float32),
        "values": np.zeros(capacity, np.int32),
        "valid": np.zeros(capacity, bool),
        "next": np.zeros((), np.int32),
    }


def insert(
    store: dict[str, np.ndarray], keys: np.ndarray, values: np.ndarray
) -> dict[str, np.ndarray]:
    """Inserts entries in order, overwriting the oldest once full; returns a new store."""
    store = {k: np.array(v) for k, v in store.items()}
    capacity = len(store["values"])
    slot = int(store["next"])
    for key, value in zip(np.asarray(keys, np.float32), np.asarray(values, np.int32)):
        store["keys"][slot], store["values"][slot], store["valid"][slot] = key, value, True
        slot = (slot + 1) % capacity
    store["next"] = np.asarray(slot, np.int32)
    return store


def store_from_activations(
    activations: np.ndarray,
    base_answers: np.ndarray,
    capacity: int,
    grid: int,
    batch_size: int = 1000,
) -> dict[str, np.ndarray]:
    """A store filled, in order, with the keys of recorded activations and their base answers.

    Recorded maps may already be average-pooled (see caches.recording); pooling them again to
    ``grid`` gives the same keys as pooling the raw map whenever the bins line up.
    """
    if len(activations) != len(base_answers):
        raise ValueError(f"{len(activations)} activations but {len(base_answers)} answers")
    key_fn = jax.jit(lambda x: knn_key(x, grid))
    keys = np.concatenate(
        [
            np.asarray(key_fn(jnp.asarray(activations[i : i + batch_size])))
            for i in range(0, len(activations), batch_size)
        ]
    )
    return insert(empty_store(capacity, keys.shape[1]), keys, base_answers)


def store_bytes(store: dict[str, np.ndarray]) -> int:
    """Memory held by a store."""
    return int(sum(np.asarray(v).nbytes for v in store.values()))


def nearest(
    store: dict[str, jax.Array], query: jax.Array, neighbours: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """For query keys: the largest squared distance among the ``neighbours`` nearest valid
    entries, the nearest entry's answer, and whether those entries all agree."""
    # Full float32 products: the expanded form cancels, and the GPU's default (TF32, about 10
    # mantissa bits) left an exact match a distance of 1e-3 of its norm away, a miss. As a
    # contraction over both operands' last axis: written as a product with ``keys.T``, XLA on
    # the CPU copied the transposed keys on every call (measured in a chain of lookups on a
    # 256 x 256 store: 84 us a lookup against 13).
    cross = jnp.einsum("nd,cd->nc", query, store["keys"], precision=jax.lax.Precision.HIGHEST)
    d2 = jnp.sum(query**2, -1, keepdims=True) - 2 * cross + jnp.sum(store["keys"] ** 2, -1)[None]
    # The expanded form can dip below zero by rounding for an exact match.
    d2 = jnp.where(store["valid"][None], jnp.maximum(d2, 0.0), jnp.inf)
    k = min(neighbours, store["keys"].shape[0])
    neg, idx = jax.lax.top_k(-d2, k)
    values = store["values"][idx]
    # min over all k, not neg[:, -1]: slicing one column of top_k's output made XLA on the
    # CPU lower it as a full sort (1.1 ms instead of 0.26 ms on a 2000-entry store).
    return -jnp.min(neg, -1), values[:, 0], jnp.all(values == values[:, :1], -1)


@register_policy("knn")
def knn(head: KnnHead):
    """Hit when the nearest stored activations are within the radius and agree."""

    def decide(store, radius, x, base_answer):
        del base_answer
        far, answer, agree = nearest(store, knn_key(x, head.grid), head.neighbours)
        # A negative radius turns the cache off (its square would not).
        return answer, (far <= radius * radius) & agree & (radius >= 0)

    return decide
