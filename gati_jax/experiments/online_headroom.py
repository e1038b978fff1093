"""What online learning could gain at best on a segment of hot classes, measured offline.

A temporal segment sends mostly a few classes. With ample labels from such a segment, a cache
could serve it better in two ways: a threshold recalibrated on the segment (the same
parameters, a cut that holds the target on these classes), or parameters fine-tuned on the
segment and then calibrated. Both are bounds, not what the online learner does: it sees a 10%
audit sample, not hundreds of labelled requests per segment. Requests of the hot classes are
split three ways: ``train`` (fine-tuning), ``calibrate`` (thresholds) and the rest, where every
figure is measured against the base network's answers: each cache alone, and the deployed
cascade (a request exits at the first position that hits), whose exit fractions, weighted by
the router's measured cost of exiting at each position, give its speedup over the plain network.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from gati_jax import data
from gati_jax.caches.selector import calibrate_threshold, hit_statistics
from gati_jax.experiments.router_benchmark import compiled_call, forced_exit_thresholds
from gati_jax.inference import BaseModel, predict_logits
from gati_jax.input_checks import check_images
from gati_jax.measure import measure_interleaved
from gati_jax.online.updates import cache_functions, cache_input
from gati_jax.planner.costs import plain_program
from gati_jax.runtime.deployment import Deployment

KINDS = ("static", "recalibrated", "tuned")


@dataclasses.dataclass(frozen=True)
class HeadroomSettings:
    """How much labelled data a segment lends, and how the bounds are trained and calibrated."""

    train: int = 300
    calibrate: int = 600
    steps: int = 200
    batch_size: int = 32
    learning_rate: float = 3e-3
    target: float = 0.99
    confidence: float = 0.9  # calibration on the Wilson lower bound, as the deployed caches
    seed: int = 0

    def __post_init__(self):
        for name in ("train", "calibrate", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"headroom {name} must be >= 1, got {getattr(self, name)}")
        if self.steps < 0:
            raise ValueError(f"headroom steps must be >= 0, got {self.steps}")
        if not 0 < self.target < 1 or not 0 <= self.confidence < 1:
            raise ValueError(
                f"headroom target must lie in (0, 1) and confidence in [0, 1), got "
                f"{self.target} and {self.confidence}"
            )


def cache_inputs(
    model: BaseModel, deployment: Deployment, images: np.ndarray, batch_size: int = 500
) -> list[np.ndarray]:
    """Per deployed position, what its cache reads for every image (as the online windows)."""
    images = check_images(images, model.network.input_shape)
    network, variables = model.network, model.variables
    mean, std = np.asarray(model.mean), np.asarray(model.std)
    out = []
    for position, head in zip(deployment.positions, deployment.heads):
        fn = jax.jit(
            lambda x, p=position, h=head: cache_input(
                h, network.apply_range(variables, data.normalize(x, mean, std), 0, p + 1)
            )
        )
        out.append(
            np.concatenate(
                [
                    np.asarray(fn(images[i : i + batch_size]))
                    for i in range(0, len(images), batch_size)
                ]
            )
        )
    return out


def exit_costs(model: BaseModel, deployment: Deployment, repeats: int = 50) -> dict[str, float]:
    """Batch-1 latency of the deployment's router when every request exits at each position,
    and when none does (``"full"``), in units of the plain network timed in the same rounds."""
    router = deployment.router(model, max_group=1)
    one = jnp.zeros((1, *model.network.input_shape), jnp.float32)
    plain = plain_program(model)
    calls = {"plain": lambda: plain(one)}
    m = len(deployment.positions)
    for k, position in enumerate(list(deployment.positions) + [None]):
        calls["full" if position is None else str(position)] = compiled_call(
            router,
            deployment.params,
            forced_exit_thresholds(m, None if position is None else k),
            one,
        )
    timed = measure_interleaved(calls, repeats=repeats, block=10)
    return {name: seconds / timed["plain"] for name, seconds in timed.items() if name != "plain"}


def _cascade(
    decisions: list[tuple[np.ndarray, np.ndarray]], base: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Exit index (len(decisions): none) and served answer per request, positions in order."""
    exit_at = np.full(len(base), len(decisions))
    served = base.copy()
    for k, (answer, hit) in enumerate(decisions):
        now = hit & (exit_at == len(decisions))
        exit_at[now], served[now] = k, answer[now]
    return exit_at, served


def segment_headroom(
    model: BaseModel,
    deployment: Deployment,
    images: np.ndarray,
    labels: np.ndarray,
    hot_sets: Sequence[Sequence[int]],
    settings: HeadroomSettings = HeadroomSettings(),
    costs: dict[str, float] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Per hot-class set, the static, recalibrated and fine-tuned caches: per position
    (``"caches"``: hit rate and hit agreement of each cache alone) and as the deployed cascade
    (``"cascade"``: exit fractions, agreement and, with ``costs`` from :func:`exit_costs`, the
    mean latency in units of the plain network and the speedup over it)."""
    if deployment.policy != "gati" or not deployment.positions:
        raise ValueError(
            f"headroom needs a gati deployment with caches, got policy "
            f"{deployment.policy!r} at {deployment.positions}"
        )
    labels = np.asarray(labels)
    if labels.shape != (len(images),):
        raise ValueError(f"labels have shape {labels.shape}, expected ({len(images)},)")
    classes = model.network.num_classes
    for hot in hot_sets:
        if not hot or any(not 0 <= int(c) < classes for c in hot):
            raise ValueError(
                f"hot classes {tuple(hot)} must be a non-empty set of classes in [0, {classes})"
            )
    base = np.argmax(predict_logits(model, images), -1)
    inputs = cache_inputs(model, deployment, images)
    s = settings
    fns = [cache_functions(head, s.learning_rate) for head in deployment.heads]
    names = [str(p) for p in deployment.positions] + ["full"]  # exit places, in order
    caches, cascade = [], []
    for hot in tqdm(hot_sets, desc="hot-class sets", leave=False):
        rng = np.random.default_rng(s.seed)
        members = rng.permutation(np.flatnonzero(np.isin(labels, list(hot))))
        if len(members) < s.train + s.calibrate + 1:
            raise ValueError(
                f"hot classes {tuple(hot)} have {len(members)} images, fewer than "
                f"train + calibrate + 1 = {s.train + s.calibrate + 1}"
            )
        train = members[: s.train]
        calib = members[s.train : s.train + s.calibrate]
        test = members[s.train + s.calibrate :]
        decisions: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {kind: [] for kind in KINDS}
        for k, position in enumerate(deployment.positions):
            x, static = inputs[k], deployment.params[k]
            # Fine-tuning: one scan of `steps` optax steps on minibatches of the train part.
            batches = rng.integers(0, len(train), (s.steps, s.batch_size))
            stacked = jax.tree.map(lambda v: np.asarray(v)[None], static)
            tuned, _, _ = fns[k]["steps"](
                stacked,
                fns[k]["init"](stacked),
                x[train][batches][None],
                base[train][batches][None],
            )
            row = {"position": position, "hot": ",".join(map(str, hot)), "test_requests": len(test)}
            tuned = jax.tree.map(lambda v: v[0], tuned)
            # The static and recalibrated caches share parameters: their test scores once.
            scored = {
                id(p): tuple(np.asarray(a) for a in fns[k]["score"](p, x[test]))
                for p in (static, tuned)
            }
            for kind, params in (("static", static), ("recalibrated", static), ("tuned", tuned)):
                threshold = float(deployment.thresholds[k])
                if kind != "static":
                    answer, score = (np.asarray(a) for a in fns[k]["score"](params, x[calib]))
                    threshold = calibrate_threshold(
                        score, answer == base[calib], s.target, s.confidence
                    )
                answer, score = scored[id(params)]
                decisions[kind].append((answer, score >= threshold))
                stats = hit_statistics(score, answer == base[test], threshold)
                row[f"{kind}_hit_rate"] = stats["hit_rate"]
                row[f"{kind}_agreement"] = stats["hit_agreement"]
                if kind != "recalibrated":
                    row[f"{kind}_predictor_agreement"] = float((answer == base[test]).mean())
            caches.append(row)
        for kind in KINDS:
            exit_at, served = _cascade(decisions[kind], base[test])
            fractions = {name: float(np.mean(exit_at == k)) for k, name in enumerate(names)}
            row = {
                "hot": ",".join(map(str, hot)),
                "caches": kind,
                **{f"exit_{name}": f for name, f in fractions.items()},
                "agreement": float(np.mean(served == base[test])),
            }
            if costs is not None:
                mean = sum(fractions[name] * costs[name] for name in names)
                row["mean_cost"], row["speedup"] = mean, 1.0 / mean
            cascade.append(row)
    return {"caches": caches, "cascade": cascade}
