"""Online cache updates: optax steps on replay windows, vmapped over same-shape caches, and
threshold calibration on the held-out slices.

Caches whose predictor reads the same input shape with the same architecture are one group:
their parameters and optimiser states are stacked and one jitted, vmapped ``lax.scan`` runs
``steps`` optimiser steps for all of them. The loss is the predictor's cross-entropy to the
base network's answers plus, for a learned selector, its binary cross-entropy to whether the
predictor agrees (on stopped gradients: the selector judges the predictor, it does not steer
it). A fixed selector (max softmax, entropy) stays what it is: its threshold is recalibrated
on the fine-tuned predictor, and the router computes it bare (caches/selector.py).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from gati_jax import sharding
from gati_jax.caches.pooling import pool_map, pooled_grid
from gati_jax.caches.selector import (
    Selector,
    calibrate_threshold,
    make_scorer,
    selector_features,
    wilson_lower_bound,
)
from gati_jax.caches.variants import Predictor
from gati_jax.runtime.policies import CacheHead


def cache_input(head: CacheHead, x: jax.Array) -> jax.Array:
    """The part of a raw activation the predictor reads: pooled by the recording's factor and,
    for pool and fc heads, by the parameter-free pooling the predictor would apply anyway
    (pooling an already ``grid``-sized map to ``grid`` is the identity), so windows stay small."""
    if x.ndim == 4 and head.spec.kind != "conv":
        return pooled_grid(x, head.pool_factor, head.spec.grid)
    return pool_map(x, head.pool_factor)


def make_tap(head: CacheHead) -> Callable[[Any, jax.Array], tuple[jax.Array, ...]]:
    """The router tap for online learning: (cache input, cache answer, score).

    The input leaves the program as float32: converting it to the windows' float16 inside the
    program cost the served request about 6% of its latency on the CPU (measured at batch 1
    on the planned deployment); the window rounds it on the host, in the background."""
    predictor = Predictor(head.spec, head.num_classes)
    scorer = make_scorer(head.spec.selector, head.selector_hidden)

    def tap(params, x):
        inputs = cache_input(head, x)
        logits = predictor.apply({"params": params["predictor"]}, inputs)
        score = scorer(params["selector"], logits)
        return inputs.astype(jnp.float32), jnp.argmax(logits, -1).astype(jnp.int32), score

    return tap


def make_tapped_decide(head: CacheHead) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """The ``gati`` decision computed exactly as :func:`make_tap` computes its answer and
    score: the same operations on the same inputs, which XLA merges, so tapping a position
    does not run its cache twice."""
    tap = make_tap(head)

    def decide(params, threshold, x, base_answer):
        del base_answer
        _, answer, score = tap(params, x)
        return answer, score >= threshold

    return decide


@functools.cache
def cache_functions(head: CacheHead, learning_rate: float) -> dict[str, Callable]:
    """The compiled functions the online trainer runs for caches of ``head``'s type (cached
    per type): ``init`` and ``steps`` (vmapped over a leading cache axis), ``score`` and
    ``loss`` (one cache)."""
    predictor, selector = Predictor(head.spec, head.num_classes), Selector(head.selector_hidden)
    scorer = make_scorer(head.spec.selector, head.selector_hidden)
    tx = optax.adam(learning_rate)

    def loss_fn(params, x, y):
        logits = predictor.apply({"params": params["predictor"]}, x.astype(jnp.float32))
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        if head.spec.selector != "learned":
            # No gradient reaches the fixed selector's parameters: Adam leaves them as they are.
            return ce
        fixed = jax.lax.stop_gradient(logits)
        agree = (jnp.argmax(fixed, -1) == y).astype(jnp.float32)
        judged = selector.apply({"params": params["selector"]}, selector_features(fixed))
        return ce + optax.sigmoid_binary_cross_entropy(judged, agree).mean()

    def steps(params, opt_state, xs, ys):
        def body(carry, batch):
            p, o = carry
            loss, grads = jax.value_and_grad(loss_fn)(p, *batch)
            updates, o = tx.update(grads, o, p)
            return (optax.apply_updates(p, updates), o), loss

        (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), (xs, ys))
        return params, opt_state, losses

    def score(params, x):
        logits = predictor.apply({"params": params["predictor"]}, x.astype(jnp.float32))
        return jnp.argmax(logits, -1), scorer(params["selector"], logits)

    return {
        "init": jax.jit(jax.vmap(tx.init)),
        "steps": jax.jit(jax.vmap(steps)),
        "score": jax.jit(score),
        "loss": jax.jit(loss_fn),
    }


MIN_CALIBRATION_HITS = 10


@dataclasses.dataclass(frozen=True)
class UpdateSettings:
    """Hyper-parameters of one online update; defaults live only in the ``online`` config
    section (gati_jax/online/config.py), so build it with :meth:`from_config`."""

    learning_rate: float
    steps: int
    steps_per_chunk: int
    batch_size: int
    target: float
    # The Wilson confidence of threshold calibration (config key calibration_confidence).
    confidence: float
    min_train: int
    min_holdout: int
    # Held-out hits a verdict needs before anything that serves may change (0: no minimum).
    min_evidence: int

    @classmethod
    def from_config(cls, section: ml_collections.ConfigDict) -> UpdateSettings:
        """Reads the update's fields from ``config.online``."""
        return cls(
            learning_rate=float(section.learning_rate),
            steps=int(section.steps),
            steps_per_chunk=int(section.steps_per_chunk),
            batch_size=int(section.batch_size),
            target=float(section.target),
            confidence=float(section.calibration_confidence),
            min_train=int(section.min_train),
            min_holdout=int(section.min_holdout),
            min_evidence=int(section.min_evidence),
        )


@dataclasses.dataclass
class Verdict:
    """What an update did at one deployed position. ``accepted``: serving takes the verdict's
    threshold (and prior shift); ``updated``: and the new parameters (False when the current
    cache, recalibrated, did at least as well on the held-out slice)."""

    accepted: bool
    reason: str
    threshold: float
    holdout_hit_rate: float
    holdout_agreement: float
    holdout: int
    updated: bool = False


class OnlineTrainer:
    """Optimiser state and the update procedure for every deployed cache."""

    def __init__(
        self,
        heads: tuple[CacheHead, ...],
        input_shapes: tuple[tuple[int, ...], ...],
        params: tuple[Any, ...],
        settings: UpdateSettings,
        mesh: Any = None,
    ):
        # With a mesh, each step's batch rows split over its data axis (same program).
        self.heads, self.settings, self.mesh = tuple(heads), settings, mesh
        # Same head type and input shape: one stacked group, one vmapped program.
        groups: dict[tuple, list[int]] = {}
        for k, (head, shape) in enumerate(zip(heads, input_shapes)):
            groups.setdefault((head, tuple(shape)), []).append(k)
        self.groups = list(groups.values())
        self.opt_states: list[Any] = []
        for members in self.groups:
            fns = cache_functions(heads[members[0]], settings.learning_rate)
            self.opt_states.append(fns["init"](_stack([params[k] for k in members])))

    def update(
        self,
        params: tuple[Any, ...],
        windows,
        rng: np.random.Generator,
        shifts: tuple[np.ndarray | None, ...] | None = None,
        thresholds_now: np.ndarray | None = None,
        train: bool = True,
    ):
        """A generator: yields after every compiled chunk of steps, returns (new params, new
        thresholds, verdicts) with rejected positions keeping their old parameters.

        ``windows`` are ReplayWindows, one per deployed position; a position whose window is
        too small is left as it is (verdict reason "waiting for data"). ``shifts`` are the
        label-prior corrections serving will add to each cache's output logits (see
        :func:`shift_logits`): candidates are judged as they will serve. ``thresholds_now``
        are the serving thresholds, the fallback when calibration cannot reach the target.
        ``train`` False skips the optimiser steps: the current caches are only recalibrated.
        """
        shifts = shifts or (None,) * len(params)
        if thresholds_now is None:
            thresholds_now = np.full(len(params), np.inf)
        s = self.settings
        ready = [w.train.size >= s.min_train and w.holdout.size >= s.min_holdout for w in windows]
        new_params, opt_states = list(params), list(self.opt_states)
        for g, members in enumerate(self.groups):
            if not train or s.steps == 0 or not all(ready[k] for k in members):
                continue  # a group trains together or not at all
            fns = cache_functions(self.heads[members[0]], s.learning_rate)
            stacked, opt = _stack([params[k] for k in members]), self.opt_states[g]
            # Batches drawn up front (host side): each member from its own window.
            draws = [
                rng.integers(0, windows[k].train.size, (s.steps, s.batch_size)) for k in members
            ]
            for start in range(0, s.steps, s.steps_per_chunk):
                part = slice(start, min(start + s.steps_per_chunk, s.steps))
                xs = np.stack([windows[k].train.x[d[part]] for k, d in zip(members, draws)])
                ys = np.stack([windows[k].train.y[d[part]] for k, d in zip(members, draws)])
                if self.mesh is not None:  # (members, steps, batch, ...): rows are axis 2
                    xs = sharding.shard_batch(self.mesh, xs, axis=2)
                    ys = sharding.shard_batch(self.mesh, ys, axis=2)
                stacked, opt, _ = fns["steps"](stacked, opt, xs, ys)
                jax.block_until_ready(stacked)  # the chunk's work ends inside the chunk
                yield
            opt_states[g] = opt
            # Split on the host: indexing device arrays would compile a slice per shape.
            stacked = jax.device_get(stacked)
            for i, k in enumerate(members):
                new_params[k] = jax.tree.map(lambda a, i=i: a[i], stacked)
            yield
        thresholds, verdicts = [], []
        for k, window in enumerate(windows):
            if not ready[k]:
                if shifts[k] is not None and window.holdout.size >= s.min_holdout:
                    # The prior shift needs no training data, but it changes what serves, so
                    # it is judged on the held-out slice like any other change. (Served
                    # unjudged, on the guard's watch alone, it cost agreement: 0.978 against
                    # the static caches' 0.988 on a shift stream, 0.94 in its last window;
                    # 600 requests bring the guard too few audits to react.)
                    verdict = self.judge(
                        k, shift_logits(params[k], shifts[k]), window, float(thresholds_now[k])
                    )
                    verdict.reason = f"prior shift only: {verdict.reason}"
                    yield
                    verdicts.append(verdict)
                    thresholds.append(verdict.threshold)
                    continue
                verdicts.append(
                    Verdict(False, "waiting for data", float("nan"), 0.0, 1.0, window.holdout.size)
                )
                thresholds.append(None)
                continue
            verdict = self.judge(
                k, shift_logits(new_params[k], shifts[k]), window, float(thresholds_now[k])
            )
            yield  # one calibration per chunk
            if verdict.accepted and new_params[k] is not params[k]:
                # Only an improvement replaces the serving cache: the current one,
                # recalibrated on the same slice, is the bar.
                current = self.judge(
                    k, shift_logits(params[k], shifts[k]), window, float(thresholds_now[k])
                )
                yield
                # Ties keep the current cache: no evidence, no change.
                if current.accepted and current.holdout_hit_rate >= verdict.holdout_hit_rate:
                    verdict = dataclasses.replace(
                        current,
                        reason="kept the current cache: the trained one hit no more "
                        "on the held-out slice",
                    )
                    new_params[k] = params[k]
                else:
                    verdict.updated = True
            verdicts.append(verdict)
            thresholds.append(verdict.threshold)
            if not verdict.accepted:
                new_params[k] = params[k]
        # Optimiser states advance only for groups whose members were all accepted: a
        # rejected step's moments must not carry into the next update.
        for g, members in enumerate(self.groups):
            if all(verdicts[k].accepted for k in members):
                self.opt_states[g] = opt_states[g]
        return tuple(new_params), thresholds, verdicts

    def warm_up(self, params: tuple[Any, ...], windows) -> None:
        """Compiles the update programs (every chunk length, the scoring) on zeros."""
        s = self.settings
        lengths = {
            min(s.steps_per_chunk, s.steps - start)
            for start in range(0, s.steps, s.steps_per_chunk)
        }
        for g, members in enumerate(self.groups):
            fns = cache_functions(self.heads[members[0]], s.learning_rate)
            stacked = _stack([params[k] for k in members])
            for length in lengths:
                x = np.zeros(
                    (len(members), length, s.batch_size, *windows[members[0]].item_shape),
                    np.float16,
                )
                y = np.zeros((len(members), length, s.batch_size), np.int32)
                jax.block_until_ready(fns["steps"](stacked, self.opt_states[g], x, y))
            for k in members:
                jax.block_until_ready(fns["score"](params[k], windows[k].holdout.x))

    def judge(self, k: int, params: Any, window, threshold_now: float = float("inf")) -> Verdict:
        """Calibrates position ``k``'s threshold on its held-out slice and accepts or rejects.

        The threshold is the lowest whose held-out hits reach the target (on the Wilson bound
        when ``confidence`` > 0). Held-out slices are small, so that often fails; then the
        serving threshold ``threshold_now`` is kept, and the candidate is accepted only if its
        held-out hits at that threshold still agree at the target (on the Wilson bound too).
        """
        s = self.settings
        y = window.holdout.arrays()[1]
        if not all(np.isfinite(np.asarray(a)).all() for a in jax.tree.leaves(params)):
            return Verdict(False, "non-finite parameters", float("nan"), 0.0, 0.0, len(y))
        # Scored over the whole ring (a fixed shape, one compilation), filled rows kept.
        fns = cache_functions(self.heads[k], s.learning_rate)
        answer, score = fns["score"](params, window.holdout.x)
        answer = np.asarray(answer)[: len(y)]
        score = np.asarray(score, np.float64)[: len(y)]
        if not np.all(np.isfinite(score)):
            return Verdict(False, "non-finite scores", float("nan"), 0.0, 0.0, len(y))
        agree = answer == y
        threshold = calibrate_threshold(score, agree, s.target, s.confidence)
        reason = "accepted (threshold calibrated)"
        # A cut resting on a handful of hits is luck, not calibration (point estimates).
        if not np.isfinite(threshold) or np.sum(score >= threshold) < MIN_CALIBRATION_HITS:
            threshold, reason = float(threshold_now), "accepted (serving threshold kept)"
        hits = score >= threshold
        rate = float(hits.mean())
        agreement = float(agree[hits].mean()) if hits.any() else 1.0
        # A perfect score on a dozen held-out hits is what a cache agreeing 85% of the time
        # often shows, and every update draws another candidate against the same slice: on a
        # 4,000-request stream, caches swapped in on 12-17 held-out hits at 100% then agreed
        # 0.83-0.90 on the next slices, and the worst window fell to 0.976 (static: 0.986).
        if int(hits.sum()) < s.min_evidence:
            return Verdict(
                False,
                f"{int(hits.sum())} held-out hits, fewer than the {s.min_evidence} a change needs",
                threshold,
                rate,
                agreement,
                len(y),
            )
        if agreement < s.target:
            return Verdict(
                False,
                f"held-out agreement {agreement:.3f} of its {int(hits.sum())} "
                f"hits is below the target {s.target}",
                threshold,
                rate,
                agreement,
                len(y),
            )
        # The standard the deployed thresholds were calibrated to, for the kept threshold
        # too: on a 4,000-request stream a cache swapped in on 65 of 65 held-out hits
        # agreeing (a 90% lower bound of 0.975) then agreed 0.972 over the next 500 requests.
        # (No hits, nothing to bound: ``min_evidence`` decides whether that may serve.)
        bound = (
            float(wilson_lower_bound(int(agree[hits].sum()), int(hits.sum()), s.confidence))
            if s.confidence > 0 and hits.any()
            else agreement
        )
        if bound < s.target:
            return Verdict(
                False,
                f"held-out agreement {agreement:.3f} of its {int(hits.sum())} "
                f"hits: its lower bound at confidence {s.confidence:g}, {bound:.3f}, "
                f"is below the target {s.target}",
                threshold,
                rate,
                agreement,
                len(y),
            )
        return Verdict(True, reason, threshold, rate, agreement, len(y))

    def score(self, k: int, params: Any, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cache ``k``'s answers and selector scores on cache inputs ``x``."""
        fns = cache_functions(self.heads[k], self.settings.learning_rate)
        answer, score = fns["score"](params, x)
        return np.asarray(answer), np.asarray(score)

    def window_loss(self, k: int, params: Any, window) -> float:
        """The training loss of position ``k``'s cache on its whole training ring."""
        x, y = window.train.arrays()
        fns = cache_functions(self.heads[k], self.settings.learning_rate)
        return float(fns["loss"](params, x, y))


def shift_logits(params: Any, shift: np.ndarray | None) -> Any:
    """The cache with ``shift`` added to its predictor's output logits (the last Dense bias):
    a label-prior correction, log p_recent(c) - log p_train(c), that turns the predictor's
    posterior under the training prior into one under the recent prior (label shift)."""
    if shift is None:
        return params
    last = max(
        (name for name in params["predictor"] if name.startswith("Dense_")),
        key=lambda name: int(name.split("_")[1]),
    )
    target = ("predictor", last, "bias")
    shift = np.asarray(shift, np.float32)

    def add(path, leaf):
        keys = tuple(getattr(p, "key", None) for p in path)
        return np.asarray(leaf) + shift if keys == target else leaf

    # tree_map keeps the containers: the router's packing (and program) stay the same.
    return jax.tree_util.tree_map_with_path(add, params)


def _stack(trees: list[Any]) -> Any:
    # On the host: jnp.stack per leaf would be one dispatch (and first compile) per leaf.
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)
