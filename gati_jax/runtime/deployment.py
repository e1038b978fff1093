"""From explored caches to a servable deployment: positions, decisions, parameters, thresholds."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from gati_jax.caches.bank import CacheBank, Candidate
from gati_jax.caches.recording import Recording
from gati_jax.inference import BaseModel
from gati_jax.runtime.knn import KnnHead, store_from_activations
from gati_jax.runtime.policies import CacheHead, Decide, policy_builder
from gati_jax.runtime.reference import ReferenceRouter
from gati_jax.runtime.router import Router


@dataclasses.dataclass(frozen=True)
class Deployment:
    """Which caches serve where under which policy; params and thresholds are plain values."""

    policy: str
    positions: tuple[int, ...]
    heads: tuple[Any, ...]  # CacheHead, or KnnHead for the knn policy
    params: tuple[Any, ...]
    thresholds: np.ndarray

    def decides(self) -> tuple[Decide, ...]:
        """The policy's decision rule at every deployed position."""
        return tuple(policy_builder(self.policy)(h) for h in self.heads)

    def router(self, model: BaseModel, max_group: int = 32, compact: bool = False) -> Router:
        """A compiled router for this deployment (params/thresholds are passed per call)."""
        return Router(model, self.positions, self.decides(), max_group, compact=compact)

    def reference(self, model: BaseModel) -> ReferenceRouter:
        """The Python-loop reference router for this deployment."""
        return ReferenceRouter(model, self.positions, self.decides())


def best_per_position(
    bank: CacheBank, positions: Sequence[int] | None = None, target: str = "0.99"
) -> list[Candidate]:
    """The candidate with the highest hit rate at ``target`` (then the fastest) per position."""
    positions = tuple(positions) if positions else tuple(bank.info["positions"])
    return [bank.best(p, target) for p in positions]


def deployment_from_config(
    policy: ml_collections.ConfigDict, bank: CacheBank, recording: Recording | None = None
) -> Deployment:
    """The deployment a ``policy`` config section describes; knn fills its stores from
    ``recording`` (activations with the base network's answers)."""
    if policy.name == "none":
        return Deployment("none", (), (), (), np.zeros(0, np.float32))
    target = f"{policy.target:g}"
    chosen = best_per_position(bank, tuple(int(p) for p in policy.positions), target)
    thresholds = tuple(float(t) for t in policy.thresholds) or None
    if policy.name != "knn":
        return deploy(bank, chosen, policy.name, thresholds, target)
    if recording is None:
        raise ValueError("policy 'knn' needs recorded activations to fill its stores")
    if thresholds is None or len(thresholds) != len(chosen):
        raise ValueError(f"policy 'knn' needs one radius per position, got {thresholds}")
    positions = tuple(c.position for c in chosen)
    heads = tuple(KnnHead(int(policy.knn_grid), int(policy.knn_neighbours)) for _ in positions)
    stores = tuple(
        store_from_activations(
            recording.features[p],
            recording.base_predictions,
            int(policy.knn_capacity),
            int(policy.knn_grid),
        )
        for p in positions
    )
    return Deployment(
        "knn", positions, heads, jax.device_put(stores), np.asarray(thresholds, np.float32)
    )


def deploy(
    bank: CacheBank,
    candidates: Sequence[Candidate],
    policy: str = "gati",
    thresholds: Sequence[float] | None = None,
    target: str = "0.99",
) -> Deployment:
    """Deploys one candidate per position (sorted by position) under ``policy``.

    Without explicit thresholds, ``gati`` uses each candidate's calibrated threshold for the
    precision ``target``; other policies need thresholds from their own tuning.
    """
    chosen = sorted(candidates, key=lambda c: c.position)
    positions = tuple(c.position for c in chosen)
    if len(set(positions)) != len(positions):
        raise ValueError(f"one cache per position, got positions {positions}")
    policy_builder(policy)  # fails early, naming the known policies
    if thresholds is None:
        if policy not in ("gati", "oracle"):
            raise ValueError(f"policy '{policy}' needs explicit thresholds")
        thresholds = [c.thresholds[target] if policy == "gati" else 0.0 for c in chosen]
    if len(thresholds) != len(chosen):
        raise ValueError(f"{len(thresholds)} thresholds for {len(chosen)} caches")
    heads = tuple(
        CacheHead(c.spec, bank.num_classes, c.pool_factor, bank.selector_hidden) for c in chosen
    )
    # On the device once: host (numpy) parameters would be copied over on every call.
    params = jax.device_put(tuple(c.params for c in chosen))
    return Deployment(policy, positions, heads, params, np.asarray(thresholds, np.float32))
