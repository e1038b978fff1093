"""From explored caches to a servable deployment: positions, decisions, parameters, thresholds."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import numpy as np

from gati_jax.caches.bank import CacheBank, Candidate
from gati_jax.inference import BaseModel
from gati_jax.runtime.policies import CacheHead, Decide, policy_builder
from gati_jax.runtime.reference import ReferenceRouter
from gati_jax.runtime.router import Router


@dataclasses.dataclass(frozen=True)
class Deployment:
    """Which caches serve where under which policy; params and thresholds are plain values."""

    policy: str
    positions: tuple[int, ...]
    heads: tuple[CacheHead, ...]
    params: tuple[Any, ...]
    thresholds: np.ndarray

    def decides(self) -> tuple[Decide, ...]:
        """The policy's decision rule at every deployed position."""
        return tuple(policy_builder(self.policy)(h) for h in self.heads)

    def router(self, model: BaseModel, max_group: int = 32) -> Router:
        """A compiled router for this deployment (params/thresholds are passed per call)."""
        return Router(model, self.positions, self.decides(), max_group)

    def reference(self, model: BaseModel) -> ReferenceRouter:
        """The Python-loop reference router for this deployment."""
        return ReferenceRouter(model, self.positions, self.decides())


def deploy(bank: CacheBank, candidates: Sequence[Candidate], policy: str = "gati",
           thresholds: Sequence[float] | None = None, target: str = "0.99") -> Deployment:
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
    heads = tuple(CacheHead(c.spec, bank.num_classes, c.pool_factor, bank.selector_hidden)
                  for c in chosen)
    # On the device once: host (numpy) parameters would be copied over on every call.
    params = jax.device_put(tuple(c.params for c in chosen))
    return Deployment(policy, positions, heads, params, np.asarray(thresholds, np.float32))
