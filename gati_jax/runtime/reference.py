"""The correctness reference for the router: separately jitted stages, a host check per lookup.

This is how early exit is usually written (and what the GATI paper's prototype does): a Python
loop that returns to the host after every lookup to decide whether to go on. It is also the
comparison in ``scripts/bench_router.py``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gati_jax import data
from gati_jax.input_checks import check_images
from gati_jax.models import StagedNetwork, Variables
from gati_jax.runtime.policies import Decide
from gati_jax.runtime.router import RouteResult


@functools.lru_cache(maxsize=None)
def _stage_fn(network: StagedNetwork, index: int):
    return jax.jit(lambda variables, x: network.apply_stage(variables, index, x))


@functools.lru_cache(maxsize=None)
def _normalize_fn():
    return jax.jit(data.normalize)


def reference_route(network: StagedNetwork, positions: tuple[int, ...],
                    decides: tuple[Decide, ...], variables: Variables,
                    cache_params: tuple[Any, ...], thresholds: Any, images: np.ndarray,
                    mean: np.ndarray, std: np.ndarray,
                    base_answer: np.ndarray | None = None,
                    jitted_decides: tuple[Any, ...] | None = None) -> RouteResult:
    """Routes a group stage by stage from Python; stops as soon as every request has exited."""
    images = check_images(images, network.input_shape)
    n = len(images)
    base = jnp.asarray(np.zeros(n, np.int32) if base_answer is None else base_answer, jnp.int32)
    decide_fns = jitted_decides or tuple(jax.jit(d) for d in decides)
    thresholds = np.asarray(thresholds, np.float32).reshape(len(positions))
    last = network.num_stages - 1
    answer = np.zeros(n, np.int32)
    exit_stage = np.full(n, last, np.int32)
    hit = np.zeros(n, bool)
    x = _normalize_fn()(images, mean, std)
    k = 0
    for index in range(network.num_stages):
        x = _stage_fn(network, index)(variables, x)
        if k < len(positions) and index == positions[k]:
            cache_answer, cache_hit = decide_fns[k](cache_params[k], thresholds[k], x, base)
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
