"""The online learner's serving programs: which positions its router stops at and what each
decides and taps there.

A *slot* is one position of the learner's router. It may hold a deployed learned cache, a
recency memory (online/recency.py) and the *confidence tap* (the base network's top softmax
probability, at the last position a cache may sit, so a request that runs to the end reports
how sure the base network was: memory labels it was unsure of veto hits). A slot's
parameters are a dict with ``"cache"`` and/or ``"memory"``; like a cache's parameters they
are arguments of the compiled router, so a new memory never recompiles.

Each slot decides as its parts do: the cache hits when its selector score reaches the
position's threshold, the memory when its score reaches the memory's own threshold; when both
hit and disagree, neither serves (one of them is wrong). Taps come in two weights:
- *light*: per cache its answer and score, per memory the request's raw key, answer and
  score, and the confidence: what the guard, the audits, the memory and its calibration need
  (a few numbers a request, and the key);
- *full*: light plus each cache's input, for the replay windows that train the caches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gati_jax.inference import BaseModel
from gati_jax.online.recency import RecencyHead, pooled_key, served_lookup
from gati_jax.online.updates import make_tap
from gati_jax.runtime.policies import CacheHead
from gati_jax.runtime.router import Router, RouteResult


@dataclasses.dataclass(frozen=True)
class Slot:
    """One position of the learner's router and what it holds: the index of its deployed
    cache and of its memory (None: none there) and whether it taps the confidence."""

    position: int
    cache: int | None
    memory: int | None
    confidence: bool


def make_slots(
    positions: tuple[int, ...],
    memory_positions: tuple[int, ...],
    last_position: int,
    confidence: bool,
) -> tuple[Slot, ...]:
    """Slots for deployed caches at ``positions``, memory ``j`` at ``memory_positions[j]``
    (with a cache there or alone: a memory served without learned caches is the traditional
    recency cache, ``knn-recent``), and (``confidence``) the confidence tap at
    ``last_position``."""
    where = sorted(
        set(positions) | set(memory_positions) | ({last_position} if confidence else set())
    )
    return tuple(
        Slot(
            p,
            positions.index(p) if p in positions else None,
            memory_positions.index(p) if p in memory_positions else None,
            confidence and p == last_position,
        )
        for p in where
    )


def slot_params(
    slots: tuple[Slot, ...], caches: tuple[Any, ...], memories: tuple[dict[str, Any], ...]
) -> tuple[dict[str, Any], ...]:
    """The router's parameters: per slot its cache's parameters and its memory's arrays."""
    out = []
    for slot in slots:
        params = {}
        if slot.cache is not None:
            params["cache"] = caches[slot.cache]
        if slot.memory is not None:
            params["memory"] = memories[slot.memory]
        out.append(params)
    return tuple(out)


def slot_part(path: tuple[Any, ...]) -> str:
    """A slot parameter's part, ``"cache"`` or ``"memory"`` (its key under the slot): the
    router packs each part into flat arrays of its own (``Router.pack_part``), so publishing
    a memory packs and sends the memory's arrays alone and reuses the caches' device arrays
    (a publication on the shipped ResNet-18's plan, 2-core CPU: 1.0-1.1 ms with every array
    packed and sent, 0.41-0.47 ms with the memory's alone; experiments/publish_cost.py)."""
    return path[1].key


def _confidence(model: BaseModel) -> Callable[[jax.Array], jax.Array]:
    """The base network's top softmax probability from the last position's activation."""
    network, last = model.network, model.network.num_stages - 1

    def prob(x):
        logits = network.apply_stage(model.variables, last, x)
        return jnp.max(jax.nn.softmax(logits.astype(jnp.float32), -1), -1)

    return prob


def make_programs(
    model: BaseModel,
    slots: tuple[Slot, ...],
    heads: tuple[CacheHead, ...],
    memory_head: RecencyHead | None,
    full: bool,
    key_slot: int | None = None,
) -> tuple[tuple[Callable, ...], tuple[Callable, ...]]:
    """(decides, taps), one per slot; ``full`` taps also return each cache's input.
    ``key_slot``: a slot whose taps also return the memory's key of its activation without a
    memory there (the input-shift detector reads the first cache's position, and a light tap
    carries no cache input)."""
    confidence = _confidence(model)
    decides, taps = [], []
    for index, slot in enumerate(slots):
        keyed = slot.memory is not None or index == key_slot
        cache_tap = None if slot.cache is None else make_tap(heads[slot.cache])
        # What the slot's tap computed, for the decision the router makes right after it on
        # the same activation (same trace): XLA did not merge the two memory lookups, and
        # the tapped program cost a request 11% more than the untapped one (batch 1, shipped
        # ResNet-18, a memory at position 0).
        memo: dict[int, dict[str, jax.Array]] = {}

        def parts(params, x, slot=slot, cache_tap=cache_tap, keyed=keyed):
            out = {}
            if cache_tap is not None:
                out["x"], out["answer"], out["score"] = cache_tap(params["cache"], x)
            if keyed:
                out["key"] = pooled_key(x, memory_head.grid)
            if slot.memory is not None:
                out["m_answer"], out["m_score"] = served_lookup(
                    params["memory"], out["key"], memory_head.neighbours
                )
            return out

        def decide(params, threshold, x, base_answer, slot=slot, parts=parts, memo=memo):
            del base_answer
            out = memo.pop(id(x), None)
            if out is None:
                out = parts(params, x)
            answer = jnp.zeros(x.shape[0], jnp.int32)
            hit = jnp.zeros(x.shape[0], bool)
            if "answer" in out:
                answer, hit = out["answer"], out["score"] >= threshold
            if slot.memory is not None:
                m_answer = out["m_answer"]
                m_hit = out["m_score"] >= params["memory"]["threshold"][0]
                conflict = m_hit & hit & (m_answer != answer)
                answer = jnp.where(m_hit, m_answer, answer)
                hit = (m_hit | hit) & ~conflict
            return answer, hit

        def tap(params, x, slot=slot, parts=parts, memo=memo):
            out = parts(params, x)
            memo[id(x)] = out
            out = dict(out)
            if not full:
                out.pop("x", None)
            if slot.confidence:
                out["prob"] = confidence(x)
            return out

        decides.append(decide)
        taps.append(tap)
    return tuple(decides), tuple(taps)


def route_deferred(
    router: Router, params: tuple[Any, ...], thresholds: np.ndarray, images: np.ndarray
) -> tuple[RouteResult, np.ndarray]:
    """Serves a group through a tapped router: its answers now, and what the taps returned
    as the one raw array the router's program produced, for :func:`unpack_taps` to take
    apart in the background. ``Router.route_tapped`` unpacks on the request's critical path,
    about 0.1 ms of Python per group on the CPU (measured at batch 1, shipped ResNet-18: the
    light program served 13-15% slower through it than through this)."""
    flat = router._call(params, thresholds, images, None)  # pylint: disable=protected-access
    n = len(images)
    out = flat[:n, :3].astype(np.int32)
    return RouteResult(out[:, 0], out[:, 1], out[:, 2].astype(bool)), flat[:n]


def unpack_taps(router: Router, flat: np.ndarray) -> tuple[dict[str, np.ndarray], ...]:
    """The per-slot tap outputs in the raw array :func:`route_deferred` returned (as
    ``Router.route_tapped`` unpacks them)."""
    treedef, layout = router._tap_layout  # pylint: disable=protected-access
    leaves, start, n = [], 3, len(flat)
    for shape, size, dtype in layout:
        # Copies: the router's output is read-only, and the learner fills in some values.
        leaves.append(flat[:, start : start + size].reshape(n, *shape).astype(dtype))
        start += size
    return jax.tree.unflatten(treedef, leaves)
