"""Builds planning instances from a cache bank, recorded activations and a latency profile.

Each exit policy turns a cache's output into a score where a hit is ``score >= threshold``:
``gati`` the selector's agreement probability, ``confidence`` and ``apparate`` the internal
classifier's max softmax, ``entropy`` the negated entropy (so its threshold is
``-score_threshold``; :func:`policy_threshold` converts). Under ``gati`` a cache scores with
its own selector, whatever its kind (caches/selector.py).

Lookups that compute the same thing up to parameter values (one predictor architecture on one
activation shape, at any position, any seed; under ``gati`` with a learned selector, or with a
fixed one, which computes what a threshold policy's lookup does) cost one median of their timings
(:func:`same_program`), not each its own: a lookup's timing is the difference of two
whole-network timings, noisier than the lookup, and a planner choosing among separately timed
copies of one computation picks the copy that timed lowest.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gati_jax.caches.bank import CacheBank, Candidate, predictor_key
from gati_jax.caches.recording import Recording
from gati_jax.caches.training import HeadTraining, predictor_logits, selector_scores
from gati_jax.planner.costs import Profile, lookup_kind, reads_selector
from gati_jax.planner.instance import Instance, Option, threshold_grid
from gati_jax.runtime.knn import KnnHead, knn_key, nearest, store_bytes, store_from_activations
from gati_jax.runtime.policies import policy_builder

PLANNABLE_POLICIES = ("gati", "confidence", "entropy", "apparate")
# A kNN score that no radius turns into a hit (its neighbours disagree).
_NEVER_SCORE = -1e30


def exit_scores(
    policy: str,
    candidate: Candidate,
    bank: CacheBank,
    features: np.ndarray,
    logits_cache: dict | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, answers) of one cache on recorded activations under ``policy``.

    ``logits_cache`` (any dict) keeps the predictor's logits per (predictor, features), so
    policies scoring the same caches on the same requests, and the selector kinds of one
    predictor (caches/selector.py), run each predictor once. Under ``gati`` a cache scores
    with its selector, whatever its kind: a softmax or entropy selector's score is a
    monotone function of what ``confidence`` or ``entropy`` score for the same cache.
    """
    if policy not in PLANNABLE_POLICIES:
        raise ValueError(
            f"policy '{policy}' has no tunable threshold; plannable: {PLANNABLE_POLICIES}"
        )
    stacked = jax.tree.map(lambda a: jnp.asarray(a)[None], candidate.params)
    cache = {} if logits_cache is None else logits_cache
    # Keyed by the predictor (the selector kinds of one predictor share its parameters) and
    # the array's identity; the entry holds the array, so the identity stays unique.
    key = (predictor_key(candidate), id(features))
    if key not in cache:
        cache[key] = (
            features,
            predictor_logits(
                candidate.spec, bank.num_classes, stacked["predictor"], np.asarray(features)
            ),
        )
    logits = cache[key][1]
    answers = logits[0].argmax(-1)
    if policy == "gati":
        hp = HeadTraining(selector_hidden=bank.selector_hidden)
        scores = selector_scores(stacked["selector"], logits, hp, candidate.spec.selector)
        return scores[0].astype(np.float64), answers
    log_probs = np.asarray(jax.nn.log_softmax(jnp.asarray(logits[0], jnp.float32)), np.float64)
    if policy in ("confidence", "apparate"):
        return np.exp(log_probs.max(-1)), answers
    return np.sum(np.exp(log_probs) * log_probs, -1), answers  # minus the entropy


def lookup_program(candidate: Candidate, kind: str) -> str:
    """What ``candidate``'s lookup of ``kind`` (see :func:`lookup_kind`) computes, up to
    parameter values: its predictor architecture on its activation shape and, under
    ``gati`` with a learned selector, the selector. Position, seed and learning rate are not
    part of it; nor is a fixed selector kind, which runs bare (caches/selector.py): a
    threshold on it is a threshold on max softmax or entropy, so such a ``gati`` lookup is the
    threshold policies' lookup of the same predictor, one program, timed once for both."""
    spec = candidate.spec
    if reads_selector(kind) and spec.selector == "learned":
        name = spec.name
    else:
        kind, name = lookup_kind("confidence"), spec.predictor.name
    shape = "x".join(str(int(d)) for d in candidate.input_shape)
    return f"{kind}/{name}/f{candidate.pool_factor}/{shape}"


def candidate_programs(candidates: Sequence[Candidate], policies: Sequence[str]) -> dict[str, str]:
    """Profile key -> :func:`lookup_program` of each candidate's lookup under each policy's
    lookup kind (the keys of costs.candidate_lookups)."""
    kinds = sorted({lookup_kind(p) for p in policies})
    return {f"{kind}/{c.key}": lookup_program(c, kind) for kind in kinds for c in candidates}


def same_program(programs: Mapping[str, str]) -> dict[str, list[str]]:
    """For each key of ``programs`` (key -> :func:`lookup_program`), the keys (itself
    included) of the same program."""
    groups: dict[str, list[str]] = {}
    for key, program in programs.items():
        groups.setdefault(program, []).append(key)
    return {key: groups[program] for key, program in programs.items()}


def _pooled(profile: Profile, cost: Callable[[str], float], keys: Sequence[str]) -> float:
    """The median of ``cost`` over the profile entries ``keys`` of one program: a planner
    choosing among separately timed copies of one program would pick the copy whose timing
    came out lowest (the winner's curse, once per copy); their median is one estimate."""
    timed = [k for k in keys if k in profile.lookup_s]
    return float(np.median([cost(k) for k in timed])) if timed else cost(keys[0])


def _program_siblings(
    profile: Profile, kind: str, programs: Mapping[str, str]
) -> dict[str, list[str]]:
    """For each candidate key of ``programs`` (key -> :func:`lookup_program`; "": its own),
    the profile keys of lookups of its program: the instance's first, then every other the
    profile knows of (a profile times a program at a few positions, costs.lookups_to_time,
    which need not be among the candidates an instance is built on)."""
    keyed = {f"{kind}/{k}": p or f"{kind}/{k}" for k, p in programs.items()}
    known = {k: p for k, p in profile.programs.items() if k not in keyed}
    groups = same_program({**keyed, **known})
    return {k: groups[f"{kind}/{k}"] for k in programs}


def policy_threshold(policy: str, score_threshold: float) -> float:
    """The threshold in the policy's own units (entropy hits at or below its threshold, kNN
    within its radius); the conversion is its own inverse."""
    return -score_threshold if policy in ("entropy", "knn") else score_threshold


def plan_candidates(
    bank: CacheBank, which: str = "frontier", positions: Sequence[int] | None = None
) -> list[Candidate]:
    """The candidates a plan may deploy: each position's frontier, or all of them."""
    if which not in ("frontier", "all"):
        raise ValueError(f"planner.candidates must be 'frontier' or 'all', got {which!r}")
    positions = tuple(positions) if positions else tuple(bank.info["positions"])
    chosen = []
    for p in positions:
        chosen.extend(bank.frontier(p) if which == "frontier" else bank.at(p))
    return chosen


def _instance(
    positions: tuple[int, ...],
    options: list,
    profile: Profile,
    base_correct: np.ndarray,
    kind: str,
    eps: float,
    budget_bytes: float,
    confidence: float,
    max_miss_overhead: float,
) -> Instance:
    """The instance of ``options`` (``base_correct``: whether the base network answers each
    tuning request right), charged as ``profile`` charges lookups of ``kind``: what every
    policy's instance shares."""
    return Instance(
        positions,
        tuple(options),
        np.asarray(profile.prefix_s, np.float64),
        base_correct,
        float(eps),
        float(budget_bytes),
        float(confidence),
        profile.charge(kind),
        profile.per_cache(kind),
        float(max_miss_overhead),
    )


def build_instance(
    policy: str,
    bank: CacheBank,
    candidates: Sequence[Candidate],
    recording: Recording,
    profile: Profile,
    *,
    eps: float,
    budget_bytes: float,
    grid: int | dict[str, np.ndarray],
    confidence: float = 0.0,
    logits_cache: dict | None = None,
    max_miss_overhead: float = float("inf"),
) -> Instance:
    """The instance for ``policy`` over ``candidates`` on ``recording``'s requests.

    ``grid`` is a number of levels (quantiles of each option's scores here), or the grids of
    another instance by candidate key, so a test-split instance shares the tuned thresholds.
    ``logits_cache``: see :func:`exit_scores`; ``max_miss_overhead``: see :class:`Instance`.
    """
    base = recording.base_predictions
    positions = tuple(sorted({c.position for c in candidates}))
    kind = lookup_kind(policy)
    programs = {c.key: lookup_program(c, kind) for c in candidates}
    siblings = _program_siblings(profile, kind, programs)
    options = []
    for p in positions:
        opts = []
        for c in (c for c in candidates if c.position == p):
            scores, answers = exit_scores(policy, c, bank, recording.features[p], logits_cache)
            levels = grid[c.key] if isinstance(grid, dict) else threshold_grid(scores, grid)
            same = siblings[c.key]
            opts.append(
                Option(
                    c.key,
                    scores,
                    answers != base,
                    answers == recording.labels,
                    _pooled(profile, profile.marginal, same),
                    int(c.metrics["param_bytes"]),
                    np.asarray(levels, np.float64),
                    _pooled(profile, profile.marginal_exit, same),
                    programs[c.key],
                )
            )
        options.append(tuple(opts))
    return _instance(
        positions,
        options,
        profile,
        base == recording.labels,
        lookup_kind(policy),
        eps,
        budget_bytes,
        confidence,
        max_miss_overhead,
    )


def reprice(instance: Instance, profile: Profile, kind: str) -> Instance:
    """``instance`` with its costs (prefixes, lookups, exits, the router's charges) read again
    from ``profile`` for lookups of ``kind``; scores, grids and memory stay, so re-planning
    after a profile changed does not score every request again."""
    siblings = _program_siblings(
        profile, kind, {o.key: o.program for opts in instance.options for o in opts}
    )

    def option(o: Option) -> Option:
        same = siblings[o.key]
        return dataclasses.replace(
            o,
            lookup_s=_pooled(profile, profile.marginal, same),
            exit_s=None if o.exit_s is None else _pooled(profile, profile.marginal_exit, same),
        )

    return dataclasses.replace(
        instance,
        options=tuple(tuple(option(o) for o in opts) for opts in instance.options),
        prefix_s=np.asarray(profile.prefix_s, np.float64),
        router_s=profile.charge(kind),
        deploy_s=profile.per_cache(kind),
    )


def knn_store_key(position: int, capacity: int, grid: int, neighbours: int) -> str:
    """The profile and plan key of a kNN store at a position."""
    return f"p{position}/knn-c{capacity}-g{grid}-n{neighbours}"


def knn_stores(
    store_data: Recording, positions: Sequence[int], capacity: int, grid: int
) -> dict[int, dict[str, np.ndarray]]:
    """One store per position, filled in order with recorded activations and base answers."""
    return {
        p: store_from_activations(
            store_data.features[p], store_data.base_predictions, capacity, grid
        )
        for p in positions
    }


def build_knn_instance(
    stores: dict[int, dict[str, np.ndarray]],
    recording: Recording,
    profile: Profile,
    head: KnnHead,
    *,
    eps: float,
    budget_bytes: float,
    grid: int | dict[str, np.ndarray],
    confidence: float = 0.0,
    max_miss_overhead: float = float("inf"),
) -> Instance:
    """The instance of the kNN policy: one store per position, radius thresholds.

    Score: minus the distance to the farthest of the nearest neighbours when they agree, a
    large negative number when they do not (no radius makes them hit), so a hit is
    ``score >= -radius`` as for every other policy.
    """
    base = recording.base_predictions
    positions = tuple(sorted(stores))
    capacity = len(next(iter(stores.values()))["values"]) if stores else 0
    options = []
    for p in positions:
        store = jax.device_put(stores[p])
        fn = jax.jit(lambda s, x: nearest(s, knn_key(x, head.grid), head.neighbours))
        parts = [
            fn(store, jnp.asarray(recording.features[p][i : i + 1000]))
            for i in range(0, len(base), 1000)
        ]
        far = np.concatenate([np.asarray(a[0]) for a in parts]).astype(np.float64)
        answers = np.concatenate([np.asarray(a[1]) for a in parts])
        agree = np.concatenate([np.asarray(a[2]) for a in parts])
        scores = np.where(agree, -np.sqrt(far), _NEVER_SCORE)
        key = knn_store_key(p, capacity, head.grid, head.neighbours)
        if isinstance(grid, dict):
            levels = grid[key]
        else:
            finite = scores[agree]
            levels = threshold_grid(finite if finite.size else np.zeros(1), grid)
        options.append(
            (
                Option(
                    key,
                    scores,
                    answers != base,
                    answers == recording.labels,
                    profile.marginal(f"knn/{key}"),
                    store_bytes(stores[p]),
                    np.asarray(levels, np.float64),
                ),
            )
        )
    return _instance(
        positions,
        options,
        profile,
        base == recording.labels,
        "knn",
        eps,
        budget_bytes,
        confidence,
        max_miss_overhead,
    )


def knn_lookups(
    stores: dict[int, dict[str, np.ndarray]], head: KnnHead
) -> dict[str, tuple[int, Any, Any, str]]:
    """What to measure for kNN stores: profile key -> (position, decide, store, policy)."""
    decide = policy_builder("knn")(head)
    return {
        f"knn/{knn_store_key(p, len(s['values']), head.grid, head.neighbours)}": (
            p,
            decide,
            s,
            "knn",
        )
        for p, s in stores.items()
    }
