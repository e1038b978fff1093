"""The correctness reference for the router: separately jitted stages, a host check per lookup.

This is how early exit is usually written (and what the GATI paper's prototype does): a Python
loop that returns to the host after every lookup to decide whether to go on. It is also the
comparison in ``scripts/bench_router.py``; like the router, it bakes the frozen base
network's variables into its per-stage programs, so the two differ only in control flow.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gati_jax import data
from gati_jax.inference import BaseModel
from gati_jax.input_checks import check_images
from gati_jax.runtime.policies import Decide
from gati_jax.runtime.router import RouteResult


class ReferenceRouter:
    """Routes a group stage by stage from Python; stops as soon as every request has exited."""

    def __init__(self, model: BaseModel, positions: tuple[int, ...], decides: tuple[Decide, ...]):
        self.model, self.positions = model, tuple(positions)
        network, variables = model.network, model.variables
        mean, std = np.asarray(model.mean), np.asarray(model.std)
        self._normalize = jax.jit(lambda images: data.normalize(images, mean, std))
        self._stages = [
            jax.jit(lambda x, i=i: network.apply_stage(variables, i, x))
            for i in range(network.num_stages)
        ]
        self._decides = tuple(jax.jit(d) for d in decides)

    def route(
        self,
        cache_params: tuple[Any, ...],
        thresholds: Any,
        images: np.ndarray,
        base_answer: np.ndarray | None = None,
    ) -> RouteResult:
        """Routes one request group of raw images."""
        network, positions = self.model.network, self.positions
        images = check_images(images, network.input_shape)
        n = len(images)
        base = jnp.asarray(np.zeros(n, np.int32) if base_answer is None else base_answer, jnp.int32)
        thresholds = np.asarray(thresholds, np.float32).reshape(len(positions))
        answer = np.zeros(n, np.int32)
        exit_stage = np.full(n, network.num_stages - 1, np.int32)
        hit = np.zeros(n, bool)
        x = self._normalize(images)
        k = 0
        for index, stage in enumerate(self._stages):
            x = stage(x)
            if k < len(positions) and index == positions[k]:
                cache_answer, cache_hit = self._decides[k](cache_params[k], thresholds[k], x, base)
                new = np.asarray(cache_hit) & ~hit
                answer[new] = np.asarray(cache_answer)[new]
                exit_stage[new] = index
                hit |= new
                k += 1
                if hit.all():  # the host round trip the compiled router avoids
                    return RouteResult(answer, exit_stage, hit)
        final = np.asarray(jnp.argmax(x, -1))
        answer[~hit] = final[~hit]
        return RouteResult(answer, exit_stage, hit)
