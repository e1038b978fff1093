"""What a gati lookup costs inside a compiled program, by pooling form (``bench_lookup.py``).

Two views, both side by side in one process, medians after warm-up:
- a lookup on its own: a chain of lookups in one program, each reading the activation the
  one before it left, against the same chain without them (a lookup timed as its own
  program is mostly dispatch and its output buffer: ~20 us of a ~30 us lookup);
- a lookup as served: routers whose lookups all miss, against the plain network.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from gati_jax.caches.bank import CacheBank
from gati_jax.inference import BaseModel
from gati_jax.measure import measure_interleaved
from gati_jax.planner.costs import all_miss_inputs, plain_program
from gati_jax.runtime.deployment import Deployment, best_per_position, deploy
from gati_jax.runtime.router import Router
from gati_jax.tables import format_table

POOLING_FORMS = ("slices", "matrices")


def with_pooling(dep: Deployment, pooling: str) -> Deployment:
    """The same caches with their predictors pooling in another form (caches/pooling.py)."""
    heads = tuple(dataclasses.replace(h, pooling=pooling) for h in dep.heads)
    return dataclasses.replace(dep, heads=heads)


def _chain(decide: Any, never: jax.Array, links: int):
    """``links`` lookups in a row (thresholds ``never``: all miss), each on the activation
    the previous one left: ``eps`` is 0 at run time, but XLA cannot know it, so no lookup is
    dropped or run beside another."""

    def run(params, x, eps):
        for _ in range(links):
            answer, hit = decide(params, never, x, jnp.zeros(x.shape[0], jnp.int32))
            step = eps * (hit.astype(jnp.float32) + answer.astype(jnp.float32))
            x = x + step.reshape(-1, *([1] * (x.ndim - 1)))
        return x.reshape(-1)[:1]

    return jax.jit(run)


def chained_lookup_seconds(
    model: BaseModel, deployments: dict[str, Deployment], links: int = 20, repeats: int = 100
) -> dict[str, list[float]]:
    """Per deployment and position: seconds one lookup adds inside a program (chains of
    ``links``, every chain of every deployment timed in the same rounds)."""
    shapes = model.network.activation_shapes(1)
    rng = np.random.default_rng(0)
    calls, eps = {}, jnp.zeros((), jnp.float32)
    decides = {name: dep.decides() for name, dep in deployments.items()}
    for position in sorted({p for dep in deployments.values() for p in dep.positions}):
        x = jnp.asarray(rng.normal(size=shapes[position]), jnp.float32)
        empty = _chain(lambda p, t, a, b: (b, b > 0), jnp.float32(0), links)
        calls[("none", position)] = lambda f=empty, x=x: f((), x, eps)
        for name, dep in deployments.items():
            if position in dep.positions:
                k = dep.positions.index(position)
                never = all_miss_inputs(model, (dep.policy,), 1)[0][0]
                chain = _chain(decides[name][k], never, links)
                calls[(name, position)] = lambda f=chain, p=dep.params[k], x=x: f(p, x, eps)
    timed = measure_interleaved(calls, repeats=repeats)
    return {
        name: [(timed[(name, p)] - timed[("none", p)]) / links for p in dep.positions]
        for name, dep in deployments.items()
    }


def all_miss_overheads(
    model: BaseModel,
    routed: dict[str, tuple[Deployment, Router]],
    repeats: int = 60,
    block: int = 10,
) -> dict[str, float]:
    """Per router: its latency with every lookup missing over the plain network's, minus 1."""
    plain = plain_program(model)
    x = jnp.zeros((1, *model.network.input_shape), jnp.float32)  # as all_miss_inputs's
    calls = {"plain": lambda: plain(x)}
    for name, (dep, router) in routed.items():
        never, images, rows = all_miss_inputs(model, [dep.policy] * len(dep.positions), 1)
        calls[name] = lambda r=router, p=dep.params, t=never, i=images, rows=rows: r.compiled(
            p, t, i, rows
        )
    timed = measure_interleaved(calls, repeats=repeats, block=block)
    return {name: timed[name] / timed["plain"] - 1 for name in routed}


def benchmark_lookups(
    model: BaseModel,
    bank: CacheBank,
    plan: Deployment | None = None,
    trials: int = 3,
    links: int = 20,
    repeats: int = 100,
    router_repeats: int = 60,
) -> dict[str, Any]:
    """For the best cache at every position, in each pooling form: a lookup on its own and
    as served (routers of every cache, of each alone and of a gati ``plan``'s caches, all
    missing); the routers' overheads in ``trials`` trials (this machine drifts)."""
    chosen = best_per_position(bank)
    best = deploy(bank, chosen)
    sets = {"all_positions": best, **{f"[{c.position}]": deploy(bank, [c]) for c in chosen}}
    if plan is not None and plan.positions and plan.policy == "gati":
        sets["planned"] = plan
    chained = chained_lookup_seconds(
        model, {form: with_pooling(best, form) for form in POOLING_FORMS}, links, repeats
    )
    out: dict[str, Any] = {
        "backend": jax.default_backend(),
        "positions": list(best.positions),
        "variants": [h.spec.name for h in best.heads],
        "chained_lookup_us": {form: [1e6 * s for s in chained[form]] for form in POOLING_FORMS},
    }
    routed = {}
    for name, dep in sets.items():
        for form in POOLING_FORMS:
            shaped = with_pooling(dep, form)
            routed[f"{name} {form}"] = (shaped, shaped.router(model, max_group=1))
    rounds = [all_miss_overheads(model, routed, router_repeats) for _ in range(trials)]
    out["all_miss_overhead"] = {
        name: {
            "positions": list(dep.positions),
            **{form: [r[f"{name} {form}"] for r in rounds] for form in POOLING_FORMS},
        }
        for name, dep in sets.items()
    }
    return out


def print_lookup_benchmark(result: dict[str, Any]) -> None:
    """Prints :func:`benchmark_lookups`'s two tables."""
    chained = result["chained_lookup_us"]
    logging.info(
        f"backend {result['backend']}, batch 1; one lookup inside a program (chains of "
        f"lookups, us):"
    )
    logging.info(
        format_table(
            [
                {
                    "position": p,
                    "variant": v,
                    **{form: chained[form][i] for form in POOLING_FORMS},
                    # A difference of two medians: at or below 0 it says nothing.
                    "matrices/slices": (
                        chained["matrices"][i] / chained["slices"][i]
                        if chained["slices"][i] > 0
                        else float("nan")
                    ),
                }
                for i, (p, v) in enumerate(zip(result["positions"], result["variants"]))
            ]
        )
    )
    logging.info(
        "\nrouters with every lookup missing, over the plain network (one column per "
        "trial, the median last):"
    )
    rows = []
    for name, row in result["all_miss_overhead"].items():
        for form in POOLING_FORMS:
            values = row[form]
            rows.append(
                {
                    "deployment": name,
                    "pooling": form,
                    **{f"s{i + 1}": f"{100 * v:+.1f}%" for i, v in enumerate(values)},
                    "median": f"{100 * float(np.median(values)):+.1f}%",
                }
            )
    logging.info(format_table(rows))
