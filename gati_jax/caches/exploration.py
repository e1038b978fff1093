"""Exploration: train every (position, variant) group by vmap and measure every candidate.

Each predictor is judged by every selector kind of ``caches.selectors`` (caches/selector.py):
one candidate per (position, variant, member, selector kind), the kinds sharing the
predictor's parameters and its measured latency.

Data roles (all answers are the base network's, never the labels):
- predictors train on ``caches.predictor_examples`` examples of the base network's train split;
- selectors train on the first half of the validation split, thresholds are calibrated on the
  second half;
- every reported figure (agreement, hit rate at each precision target) is on the test split.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from gati_jax.caches.bank import CacheBank, Candidate, mark_frontier
from gati_jax.caches.lookup import make_lookup
from gati_jax.caches.recording import Recording
from gati_jax.caches.selector import calibrate_threshold, hit_statistics
from gati_jax.caches.training import (
    HeadTraining,
    fixed_selectors,
    predictor_logits,
    selector_scores,
    train_predictors,
    train_selectors,
)
from gati_jax.caches.variants import VariantSpec, parse_variant
from gati_jax.inference import BaseModel
from gati_jax.measure import compiled_flops, measure_latency, stage_latencies, tree_bytes


@dataclasses.dataclass(frozen=True)
class ExplorationData:
    """The four roles of recorded data (see the module docstring)."""

    predictor: Recording
    selector: Recording
    calibration: Recording
    test: Recording


def head_training(caches: ml_collections.ConfigDict) -> HeadTraining:
    """The head-training hyper-parameters of a ``caches`` config section."""
    return HeadTraining(
        epochs=int(caches.epochs),
        batch_size=int(caches.batch_size),
        temperature=float(caches.temperature),
        distill_weight=float(caches.distill_weight),
        selector_epochs=int(caches.selector_epochs),
        selector_learning_rate=float(caches.selector_learning_rate),
        selector_hidden=int(caches.selector_hidden),
        min_steps=int(caches.min_steps),
    )


def check_design_space(specs: list[VariantSpec], shapes: dict[int, tuple[int, ...]]) -> None:
    """Raises a VariantError naming the first variant that cannot run at some position."""
    for position, shape in shapes.items():
        for spec in specs:
            spec.check_fits(shape, f"position {position}")


def _group_metrics(
    scores_cal, agree_cal, scores_test, agree_test, targets, confidence
) -> tuple[dict, dict]:
    thresholds, metrics = {}, {"agreement": float(agree_test.mean())}
    for target in targets:
        threshold = calibrate_threshold(scores_cal, agree_cal, target, confidence)
        stats = hit_statistics(scores_test, agree_test, threshold)
        thresholds[f"{target:g}"] = threshold
        metrics[f"hit_rate@{target:g}"] = stats["hit_rate"]
        metrics[f"hit_agreement@{target:g}"] = stats["hit_agreement"]
    return thresholds, metrics


def frontier_target(candidates: list[Candidate], targets: tuple[float, ...]) -> float:
    """The precision target the frontier of one position's ``candidates`` is drawn at: the
    strictest at which some candidate hits at all. A small calibration split certifies no
    hit at 0.99 (300 requests need 268 agreeing hits for it), and a frontier drawn where
    every hit rate is zero would keep only the fastest predictor."""
    for target in sorted(targets, reverse=True):
        if any(c.metrics[f"hit_rate@{target:g}"] > 0 for c in candidates):
            return target
    return min(targets)


def explore(
    model: BaseModel,
    recorded: ExplorationData,
    caches: ml_collections.ConfigDict,
    seed: int = 0,
    mesh: Any = None,
) -> CacheBank:
    """Trains and measures every candidate of the design space at every recorded position
    (predictor training sharded over ``mesh`` when given and wider than one device)."""
    hp = head_training(caches)
    specs = [parse_variant(v) for v in caches.variants]
    positions = recorded.predictor.positions
    shapes = {p: recorded.predictor.features[p].shape[1:] for p in positions}
    check_design_space(specs, shapes)
    num_classes = model.network.num_classes
    members = [(s, lr) for s in range(int(caches.seeds)) for lr in caches.learning_rates]
    seeds = np.array([seed * 1000 + s for s, _ in members])
    rates = np.array([lr for _, lr in members], np.float32)
    targets = tuple(float(t) for t in caches.targets)
    batch = int(caches.latency_batch_size)
    repeats = int(caches.latency_repeats)

    stage_lat = stage_latencies(model.network, model.variables, batch, repeats)
    raw_shapes = model.network.activation_shapes(batch)
    candidates: list[Candidate] = []
    started = time.time()
    groups = [(p, spec) for p in positions for spec in specs]
    kinds = tuple(str(k) for k in caches.selectors)
    for position, spec in tqdm(groups, desc="exploring (position, variant) groups"):
        pred = recorded.predictor
        params, _ = train_predictors(
            spec,
            num_classes,
            pred.features[position],
            pred.logits,
            seeds,
            rates,
            hp,
            data_seed=seed,
            desc=f"p{position} {spec.name}",
            mesh=mesh,
        )
        # Every selector kind judges the same predictors: one candidate per (member, kind).
        selectors = {
            kind: fixed_selectors(kind, len(members), hp.selector_hidden)
            for kind in kinds
            if kind != "learned"
        }
        if "learned" in kinds:
            sel_logits = predictor_logits(
                spec, num_classes, params, recorded.selector.features[position]
            )
            selectors["learned"] = train_selectors(
                sel_logits, recorded.selector.base_predictions, seed, hp
            )
        logits, agree = {}, {}
        for role in ("calibration", "test"):
            rec: Recording = getattr(recorded, role)
            logits[role] = predictor_logits(spec, num_classes, params, rec.features[position])
            agree[role] = logits[role].argmax(-1) == rec.base_predictions[None]
        factor = pred.pool_factors[position]
        activation = jnp.zeros(raw_shapes[position], jnp.float32)
        remaining = float(sum(stage_lat[position + 1 :]))
        for kind in kinds:
            # Latency and FLOPs depend on the architecture and the selector kind (the fixed
            # kinds run no selector network): one member stands for the others.
            lookup = make_lookup(spec.with_selector(kind), num_classes, factor, hp.selector_hidden)
            member0 = jax.tree.map(
                lambda a: a[0], {"predictor": params, "selector": selectors[kind]}
            )
            latency = measure_latency(jax.jit(lookup), member0, activation, repeats=repeats)
            flops = compiled_flops(lookup, member0, activation)
            scores = {
                role: selector_scores(selectors[kind], logits[role], hp, kind)
                for role in ("calibration", "test")
            }
            for m, (_, lr) in enumerate(members):
                member_params = jax.tree.map(
                    lambda a, m=m: np.asarray(a[m]),
                    {"predictor": params, "selector": selectors[kind]},
                )
                thresholds, metrics = _group_metrics(
                    scores["calibration"][m],
                    agree["calibration"][m],
                    scores["test"][m],
                    agree["test"][m],
                    targets,
                    float(caches.calibration_confidence),
                )
                metrics.update(
                    param_bytes=tree_bytes(member_params),
                    flops=flops,
                    lookup_latency_s=latency,
                    remaining_latency_s=remaining,
                    latency_fraction=latency / remaining if remaining else float("inf"),
                )
                candidates.append(
                    Candidate(
                        position,
                        spec.with_selector(kind).name,
                        int(seeds[m]),
                        float(lr),
                        factor,
                        tuple(shapes[position]),
                        member_params,
                        thresholds,
                        metrics,
                    )
                )
    frontier_targets = {}
    for position in positions:
        here = [c for c in candidates if c.position == position]
        target = frontier_target(here, targets)
        frontier_targets[str(position)] = target
        mark_frontier(here, f"hit_rate@{target:g}")
    info: dict[str, Any] = {
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "stage_latency_s": stage_lat,
        "latency_batch_size": batch,
        "targets": list(targets),
        "calibration_confidence": float(caches.calibration_confidence),
        "positions": list(positions),
        "variants": list(caches.variants),
        "selectors": list(kinds),
        "frontier_targets": frontier_targets,
        "examples": {
            role: int(len(getattr(recorded, role).labels))
            for role in ("predictor", "selector", "calibration", "test")
        },
        "pool_factors": {str(p): int(f) for p, f in recorded.predictor.pool_factors.items()},
        "exploration_seconds": round(time.time() - started, 1),
    }
    return CacheBank(num_classes, hp.selector_hidden, candidates, info)
