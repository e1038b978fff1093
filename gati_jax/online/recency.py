"""The recency memory: a cache of the stream's recent past, looked up by one matrix product.

Consecutive frames of a camera's scene are near-duplicates, so the requests served a moment
ago answer the next one, at the earliest cache position. Per memory position, a fixed-capacity
ring holds keys of recently labelled requests (their activation there, average-pooled to
``grid`` x ``grid`` and scaled to unit length) with the base network's answer. A lookup
compares the request's key with every entry (one product: cosine similarities), takes its
``neighbours`` nearest and hits when they all hold the same answer and the farthest of them
is at least the memory's threshold similar: the score is that similarity, or ``NO_SCORE``
when the neighbours disagree, so a hit is ``score >= threshold`` as for a learned cache.

**Uncertain labels veto.** The base network is not a function of the scene: on transformed
frames (noise, lighting, occlusion) its answer flickers where it is unsure, and no early
activation predicts which way. So a label whose base answer was unsure (its top softmax
probability below ``min_base_prob``) is stored as ``UNSURE``, which no answer equals: a request
near such a frame misses. Measured offline on the video stream (5,000 frames, shipped
ResNet-18, memory at position 0, grid 4, 8 neighbours, labels only from requests that ran to
the end and a 10% audit of hits): at similarity 0.99 the memory hit 45% at 0.988 agreement
with vetoes at probability 0.7, 29% at 0.996 at 0.9; without vetoes (grid 2, 12
neighbours) no threshold reached 0.99 on its hits (0.98 at 21% hits).

The threshold is calibrated on labelled outcomes (:class:`OutcomeWindow`), weighted by the
inverse of the probability that each was labelled (1 for a request that ran to the end, the
audit fraction for a hit): an unbiased estimate over every request that reached the memory,
which uses every free label instead of the audit sample alone. The lowest threshold whose
would-be hits agree at ``target`` on the Wilson lower bound (with the effective sample size
of the weights) serves; none until ``min_evidence`` would-be hits support one.

The memory's arrays (keys, answers, validity, threshold) are an argument of the compiled
router, like a learned cache's parameters: replacing them is one assignment and never
recompiles.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from gati_jax.caches.pooling import adaptive_avg_pool
from gati_jax.caches.selector import wilson_lower_bound

NO_SCORE = -2.0  # below every cosine similarity: the score of a lookup that cannot hit
UNSURE = -1  # the stored answer of a label the base network was unsure of


@dataclasses.dataclass(frozen=True)
class RecencyHead:
    """How a memory forms its keys (pool to ``grid`` x ``grid``) and how many nearest
    entries must agree (``neighbours``)."""

    grid: int
    neighbours: int


def pooled_key(activation: jax.Array, grid: int) -> jax.Array:
    """A request's raw key: its activation average-pooled to ``grid`` x ``grid`` (or the map's
    size, if smaller) and flattened; vectors stay as they are."""
    x = activation.astype(jnp.float32)
    if x.ndim == 4:
        x = adaptive_avg_pool(x, min(grid, x.shape[1], x.shape[2]))
    return x.reshape(x.shape[0], -1)


def unit(keys: jax.Array | np.ndarray) -> jax.Array | np.ndarray:
    """Keys scaled to unit length (a zero key stays zero)."""
    xp = jnp if isinstance(keys, jax.Array) else np
    norm = xp.sqrt(xp.sum(keys * keys, axis=-1, keepdims=True))
    return keys / xp.maximum(norm, 1e-12)


def memory_lookup(
    memory: dict[str, jax.Array], raw_key: jax.Array, neighbours: int
) -> tuple[jax.Array, jax.Array]:
    """(answer, score) per request: the nearest entry's answer and the similarity of the
    ``neighbours``-th nearest, ``NO_SCORE`` unless all of them are valid, sure and agree."""
    # Full float32 products: the GPU's default (TF32) would blur similarities near 1. As a
    # contraction over both operands' last axis: written as a product with ``keys.T``, XLA on
    # the CPU copied the transposed keys on every call (measured in a chain of lookups on
    # 256 x 256 keys: 84 us a lookup against 13).
    sims = jnp.einsum(
        "nd,cd->nc", unit(raw_key), memory["keys"], precision=jax.lax.Precision.HIGHEST
    )
    sims = jnp.where(memory["valid"][None] > 0, sims, NO_SCORE)
    k = min(neighbours, memory["keys"].shape[0])
    top, index = jax.lax.top_k(sims, k)
    values = memory["values"][index]
    answer = values[:, 0]
    # min over all k, not top[:, -1]: one column of top_k's output made XLA on the CPU lower
    # it as a full sort (see runtime/knn.py).
    far = jnp.min(top, -1)
    agree = jnp.all(values == answer[:, None], -1) & (answer != UNSURE) & (far > NO_SCORE)
    return jnp.maximum(answer, 0), jnp.where(agree, far, NO_SCORE)


def served_lookup(
    memory: dict[str, jax.Array], raw_key: jax.Array, neighbours: int
) -> tuple[jax.Array, jax.Array]:
    """:func:`memory_lookup` where the memory serves (a finite threshold); elsewhere no
    lookup runs (``lax.cond``) and the score is ``NO_SCORE``: a memory waiting for its
    admission costs a request only its key (measured at batch 1 on the shipped ResNet-18, a
    lookup of 256 entries cost a request about 5% of its latency)."""

    def look(operands):
        return memory_lookup(*operands, neighbours)

    def skip(operands):
        n = operands[1].shape[0]
        return jnp.zeros(n, jnp.int32), jnp.full(n, NO_SCORE, jnp.float32)

    return jax.lax.cond(jnp.isfinite(memory["threshold"][0]), look, skip, (memory, raw_key))


class RecencyMemory:
    """The host side of one memory: a ring of unit keys with their answers (the oldest entry
    overwritten first), the threshold it serves at, and its lookup on the host (the learner
    scores labelled requests with it in the background: a memory that does not serve is not
    looked up in the compiled program, see programs.py)."""

    def __init__(self, capacity: int, key_size: int, neighbours: int = 1):
        if capacity < 1:
            raise ValueError(f"a recency memory needs capacity >= 1, got {capacity}")
        self.neighbours = int(neighbours)
        self.keys = np.zeros((capacity, key_size), np.float32)
        self.values = np.zeros(capacity, np.int32)
        self.valid = np.zeros(capacity, np.float32)
        self.count = 0  # entries ever added
        self.threshold = float("inf")

    @property
    def size(self) -> int:
        """Entries held."""
        return min(self.count, len(self.values))

    def add(self, raw_keys: np.ndarray, answers: np.ndarray, sure: np.ndarray) -> None:
        """Appends labelled keys in order; ``answers`` where ``sure``, else ``UNSURE``."""
        raw_keys = np.asarray(raw_keys, np.float32).reshape(len(answers), -1)
        values = np.where(np.asarray(sure, bool), np.asarray(answers, np.int32), UNSURE)
        capacity, added = len(self.values), len(values)
        if added > capacity:  # only the newest fit
            raw_keys, values = raw_keys[-capacity:], values[-capacity:]
        slots = (self.count + added - len(values) + np.arange(len(values))) % capacity
        self.keys[slots], self.values[slots], self.valid[slots] = unit(raw_keys), values, 1.0
        self.count += added

    def lookup(self, raw_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:func:`memory_lookup` on the host, over the entries held now: (answer, score)."""
        raw_keys = np.asarray(raw_keys, np.float32).reshape(len(raw_keys), -1)
        n, k = len(raw_keys), min(self.neighbours, len(self.values))
        if self.size < k:
            return np.zeros(n, np.int32), np.full(n, NO_SCORE, np.float32)
        held = slice(0, self.size)
        sims = unit(raw_keys) @ self.keys[held].T
        index = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        values = self.values[held][index]
        answer = values[:, 0]
        agree = np.all(values == answer[:, None], 1) & (answer != UNSURE)
        far = np.take_along_axis(sims, index, 1).min(1)
        return np.maximum(answer, 0), np.where(agree, far, NO_SCORE).astype(np.float32)

    def arrays(self, threshold: float | None = None) -> dict[str, np.ndarray]:
        """A copy of the memory as the router takes it, at ``threshold`` (default: its own)."""
        threshold = self.threshold if threshold is None else threshold
        return {
            "keys": self.keys.copy(),
            "values": self.values.copy(),
            "valid": self.valid.copy(),
            "threshold": np.full(1, threshold, np.float32),
        }

    @property
    def nbytes(self) -> int:
        """Bytes of its arrays."""
        return self.keys.nbytes + self.values.nbytes + self.valid.nbytes + 4


def empty_arrays(capacity: int, key_size: int) -> dict[str, np.ndarray]:
    """An empty memory's arrays (it never hits)."""
    return RecencyMemory(capacity, key_size).arrays()


@dataclasses.dataclass(frozen=True)
class Calibration:
    """A memory threshold and the evidence for it: would-be hits' weighted agreement, its
    Wilson lower bound on the effective sample size, and the share of weight they hold."""

    threshold: float
    agreement: float
    bound: float
    evidence: float
    hit_rate: float
    reason: str

    @property
    def accepted(self) -> bool:
        """Whether the threshold may serve."""
        return bool(np.isfinite(self.threshold))


def calibrate_weighted(
    scores: np.ndarray,
    agree: np.ndarray,
    weights: np.ndarray,
    target: float,
    confidence: float,
    min_evidence: float,
) -> Calibration:
    """The lowest threshold whose would-be hits agree at ``target`` on the Wilson lower bound
    (at ``confidence``) of their weighted agreement with the effective sample size
    (sum w)^2 / sum w^2, among cuts with at least ``min_evidence`` of it; +inf if none."""
    scores = np.asarray(scores, np.float64)
    agree = np.asarray(agree, bool)
    weights = np.asarray(weights, np.float64)
    usable = scores > NO_SCORE
    if not usable.any():
        return Calibration(float("inf"), 1.0, 0.0, 0.0, 0.0, "no would-be hits yet")
    order = np.argsort(-scores[usable], kind="stable")
    s, a, w = scores[usable][order], agree[usable][order], weights[usable][order]
    total_w, total_w2 = np.cumsum(w), np.cumsum(w * w)
    agreement = np.cumsum(w * a) / total_w
    evidence = total_w * total_w / total_w2
    bound = wilson_lower_bound(agreement * evidence, evidence, confidence)
    last_of_tie = np.r_[s[1:] != s[:-1], True]
    ok = np.flatnonzero((bound >= target) & (evidence >= min_evidence) & last_of_tie)
    everyone = float(weights.sum())
    if not ok.size:
        best = int(np.argmax(np.where(last_of_tie, evidence, -1)))
        return Calibration(
            float("inf"),
            float(agreement[best]),
            float(bound[best]),
            float(evidence[best]),
            0.0,
            f"no cut reaches {target} on the bound with {min_evidence:g} "
            f"would-be hits (all {evidence[best]:.0f}: agreement "
            f"{agreement[best]:.4f}, bound {bound[best]:.4f})",
        )
    i = int(ok[-1])
    return Calibration(
        float(s[i]),
        float(agreement[i]),
        float(bound[i]),
        float(evidence[i]),
        float(total_w[i] / everyone),
        "calibrated",
    )


class OutcomeWindow:
    """The last ``capacity`` labelled outcomes of one memory: score, whether its answer was
    the base answer, and the inverse probability that the request was labelled."""

    def __init__(self, capacity: int):
        self.scores = np.zeros(capacity, np.float32)
        self.agree = np.zeros(capacity, bool)
        self.weights = np.zeros(capacity, np.float32)
        self.count = 0

    def add(self, scores: np.ndarray, agree: np.ndarray, weights: np.ndarray) -> None:
        """Appends outcomes, overwriting the oldest."""
        capacity, added = len(self.scores), len(scores)
        scores, agree, weights = (np.asarray(v)[-capacity:] for v in (scores, agree, weights))
        slots = (self.count + added - len(scores) + np.arange(len(scores))) % capacity
        self.scores[slots], self.agree[slots], self.weights[slots] = scores, agree, weights
        self.count += added

    def at(self, threshold: float) -> tuple[float, float]:
        """(weighted agreements, effective sample size) of the would-be hits at
        ``threshold``: what a Wilson bound of their agreement takes."""
        n = min(self.count, len(self.scores))
        hits = self.scores[:n] >= threshold
        w, a = self.weights[:n][hits].astype(np.float64), self.agree[:n][hits]
        if not w.size:
            return 0.0, 0.0
        evidence = float(w.sum() ** 2 / (w * w).sum())
        return float((w * a).sum() / w.sum()) * evidence, evidence

    def calibrate(self, target: float, confidence: float, min_evidence: float) -> Calibration:
        """:func:`calibrate_weighted` over the held outcomes."""
        n = min(self.count, len(self.scores))
        return calibrate_weighted(
            self.scores[:n], self.agree[:n], self.weights[:n], target, confidence, min_evidence
        )
