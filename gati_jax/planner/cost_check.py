"""Validates the cost model: predicted mean latency of a plan vs the router's measured one.

Two predictions are checked: the one the planner made (from the profile measured before
planning) and the same model fed with the plan's costs measured again, by the same method,
just before the check (:func:`remeasured`). The gap between the two is how far the profile's
own measurements move within minutes: the machine's speed drifts, and not uniformly over
programs (a stage prefix moved by 25% against the plain network within minutes here; in one
run the re-measured plan predicted 1.95 ms where the planning profile had said 1.47 ms and
the router measured 1.56 ms).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from gati_jax import data
from gati_jax.caches.bank import CacheBank
from gati_jax.inference import BaseModel
from gati_jax.planner.costs import (
    candidate_lookups,
    marginal_cost,
    measure_lookups,
    measure_prefix_costs,
)
from gati_jax.planner.instance import Choice, Instance, simulate
from gati_jax.runtime.deployment import Deployment


def remeasured(
    model: BaseModel,
    instance: Instance,
    choices: Sequence[Choice],
    bank: CacheBank,
    policy: str,
    group_size: int,
    repeats: int,
) -> Instance:
    """``instance`` with the chosen caches' lookup costs and the stage prefixes the plan's
    requests pay (through each deployed position, and the whole network) measured again
    now, by the profile's own method (gati_jax/planner/costs.py)."""
    by_key = {c.key: c for c in bank.candidates}
    chosen = {instance.options[i][c[0]].key for i, c in enumerate(choices) if c is not None}
    lookups = candidate_lookups(bank, [by_key[k] for k in sorted(chosen)], (policy,))
    stops = sorted(
        {instance.positions[i] for i, c in enumerate(choices) if c is not None}
        | {len(instance.prefix_s) - 1}
    )
    prefix_s = np.array(instance.prefix_s, np.float64)
    for stop, seconds in measure_prefix_costs(model, stops, group_size, repeats).items():
        prefix_s[stop] = seconds
    # At the scale of the plain network just measured, as profiles scale theirs.
    costs = {
        key.split("/", 1)[1]: cost.scaled(prefix_s[-1])
        for key, cost in measure_lookups(model, lookups, group_size, repeats).items()
    }
    # One-lookup costs, made marginal as the profile's are (the router's charges stay).
    charge = instance.router_s + instance.deploy_s
    options = tuple(
        tuple(
            dataclasses.replace(
                o,
                lookup_s=marginal_cost(costs[o.key].miss_s, charge),
                exit_s=o.exit_s
                if costs[o.key].exit_s is None
                else marginal_cost(costs[o.key].exit_s, charge),
            )
            if o.key in costs
            else o
            for o in opts
        )
        for opts in instance.options
    )
    return dataclasses.replace(instance, options=options, prefix_s=prefix_s)


def _plain_on_images(model: BaseModel) -> Callable[[jax.Array], Any]:
    """The plain compiled network on one raw request, as the router takes it."""
    network, variables = model.network, model.variables
    mean, std = np.asarray(model.mean), np.asarray(model.std)
    return jax.jit(lambda x: network.apply(variables, data.normalize(x, mean, std)))


def router_program(model: BaseModel, deployment: Deployment) -> Callable[[jax.Array], Any]:
    """``deployment``'s compiled router on one request: (answer, exit position, ...)."""
    router = deployment.router(model, max_group=1)
    thresholds = jnp.asarray(deployment.thresholds, jnp.float32)
    rows = jnp.zeros(1, jnp.int32)  # one request
    return lambda x: router.compiled(deployment.params, thresholds, x, rows)


def route_times(
    programs: Mapping[str, Callable[[jax.Array], Any]],
    requests: Sequence[jax.Array],
    repeats: int = 3,
    chunk: int = 50,
) -> dict[str, np.ndarray]:
    """Each program's seconds per request (median over ``repeats`` rounds), the requests
    streamed one at a time through every program in interleaved chunks of ``chunk``.

    A run of calls per program keeps its weights warm, as serving does; interleaved chunks
    put a burst of machine noise on every program, where a round of one whole stream after
    the other could put it on one (a main job's check once read +25% where the same plan
    checked on its own read +2.8%). Which program goes first rotates from chunk to chunk."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    n = len(requests)
    times = {name: np.zeros((repeats, n)) for name in programs}
    for fn in programs.values():  # compile and warm up
        for x in requests[:5]:
            jax.block_until_ready(fn(x))
    order = list(programs)
    for r in tqdm(range(repeats), desc="routing check requests", leave=False):
        for c, begin in enumerate(range(0, n, chunk)):
            turn = (r + c) % len(order)
            for name in order[turn:] + order[:turn]:
                fn = programs[name]
                for i in range(begin, min(begin + chunk, n)):
                    start = time.perf_counter()
                    jax.block_until_ready(fn(requests[i]))
                    times[name][r, i] = time.perf_counter() - start
    return {name: np.median(t, axis=0) for name, t in times.items()}


def check_cost_model(
    model: BaseModel,
    deployment: Deployment,
    instance: Instance,
    choices: Sequence[Choice],
    images: np.ndarray,
    repeats: int = 3,
    fresh: Instance | None = None,
    chunk: int = 50,
) -> dict[str, Any]:
    """Routes ``images`` (the instance's first requests) one at a time, as a stream, and
    compares the router's mean latency with the model's prediction for the same requests.

    The router and the plain compiled network are timed side by side (:func:`route_times`):
    the measured speedup is a ratio under the same noise. ``fresh``: the instance with the
    plan's costs measured again (:func:`remeasured`), checked the same way.
    """
    n = len(images)
    if n == 0 or n > instance.num_requests:
        raise ValueError(f"need 1..{instance.num_requests} check requests, got {n}")
    programs = {"router": router_program(model, deployment), "plain": _plain_on_images(model)}
    requests = [jnp.asarray(image[None]) for image in images]
    times = route_times(programs, requests, repeats, chunk)
    routed, plain_s = times["router"], times["plain"]
    exits = [int(programs["router"](x)[1][0]) for x in requests]
    outcome = simulate(instance, choices)
    positions = (*instance.positions, model.network.num_stages - 1)
    predicted_exit = np.asarray(positions)[outcome.exit_index[:n]]
    predicted = float(outcome.cost_s[:n].mean())
    measured = float(np.mean(routed))
    measured_plain = float(np.mean(plain_s))
    # Absolute times drift with the machine's state between profiling and checking (the
    # plain network itself moves by 10-20% here), so the model is judged in units of the
    # plain network measured in this run, side by side with the router.
    normalized = (measured / measured_plain) / (predicted / instance.full_s)
    now = {}
    if fresh is not None:
        predicted_now = float(simulate(fresh, choices).cost_s[:n].mean())
        error_now = (measured / measured_plain) / (predicted_now / fresh.full_s) - 1.0
        now = {
            "remeasured_predicted_mean_ms": 1e3 * predicted_now,
            "remeasured_plain_ms": 1e3 * fresh.full_s,
            "remeasured_predicted_speedup": fresh.full_s / predicted_now,
            "remeasured_normalized_error": error_now,
            "remeasured_within_10pct": bool(abs(error_now) <= 0.10),
        }
    # Where the model misses: per exit position, in units of each side's plain network.
    fresh_cost = None if fresh is None else simulate(fresh, choices).cost_s[:n] / fresh.full_s
    by_exit = []
    for position in sorted(set(predicted_exit.tolist())):
        mask = predicted_exit == position
        row = {
            "position": int(position),
            "fraction": float(mask.mean()),
            "predicted": float(outcome.cost_s[:n][mask].mean() / instance.full_s),
            "measured": float(routed[mask].mean() / measured_plain),
        }
        if fresh_cost is not None:
            row["remeasured"] = float(fresh_cost[mask].mean())
        by_exit.append(row)
    return {
        **now,
        "requests": n,
        "by_exit": by_exit,
        "predicted_mean_ms": 1e3 * predicted,
        "measured_mean_ms": 1e3 * measured,
        "measured/predicted": measured / predicted,
        "plain_measured_ms": 1e3 * measured_plain,
        "plain_profiled_ms": 1e3 * instance.full_s,
        "measured_speedup": measured_plain / measured,
        "predicted_speedup": instance.full_s / predicted,
        "normalized_error": normalized - 1.0,
        "within_10pct": bool(abs(normalized - 1.0) <= 0.10),
        # Recorded activations are float16: a score on a threshold may flip.
        "same_exit_fraction": float(np.mean(predicted_exit == np.asarray(exits))),
    }
