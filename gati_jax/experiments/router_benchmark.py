"""``bench_router.py``'s measurements: router overhead, router vs Python loop, cost model, groups.

Everything is measured in one process, side by side, as medians after warm-up; ratios are the
figures to trust, absolute times move with the machine.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gati_jax import data
from gati_jax.caches.bank import CacheBank
from gati_jax.experiments.kernel_profile import kernel_profile_ms
from gati_jax.inference import BaseModel
from gati_jax.measure import measure_interleaved, stage_latencies
from gati_jax.planner.costs import (
    LookupCost,
    RouterCharge,
    all_miss_kernels,
    all_miss_programs,
    charges_from,
    marginal_cost,
    measure_lookups,
    measure_prefixes,
    measure_router_charge,
    plain_program,
    prefix_program,
    prefixes_from_trials,
)
from gati_jax.planner.instance import router_charge
from gati_jax.runtime.deployment import Deployment, best_per_position, deploy
from gati_jax.runtime.router import Router
from gati_jax.serving.clock import VirtualClock
from gati_jax.serving.loop import serve_interleaved, serve_steps

NEVER, ALWAYS = 2.0, -1.0  # selector scores lie in [0, 1]


def benchmark_router(
    model: BaseModel,
    bank: CacheBank,
    images: np.ndarray,
    sparse_positions: tuple[int, ...],
    repeats: int = 200,
    group_sizes: tuple[int, ...] = (1, 8, 32),
    planned: Deployment | None = None,
) -> dict[str, Any]:
    """Runs every measurement of the router benchmark and returns them as one dict.

    ``planned`` (a plan's deployment) adds the overhead of exactly the planner's caches.
    """
    network, variables = model.network, model.variables
    mean, std = np.asarray(model.mean), np.asarray(model.std)
    # The baseline gets the router's advantage too: the base variables baked in as constants.
    plain = jax.jit(lambda x: network.apply(variables, data.normalize(x, mean, std)))
    as_args = jax.jit(lambda v, x: network.apply(v, data.normalize(x, mean, std)))

    out: dict[str, Any] = {
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "repeats": repeats,
    }

    one = jnp.asarray(images[:1])
    routers = {}
    for name, positions in (("all_positions", None), ("sparse_positions", sparse_positions)):
        dep = deploy(bank, best_per_position(bank, positions))
        routers[name] = (dep, dep.router(model, max_group=max(group_sizes)))
    if planned is not None and planned.positions:
        routers["planned"] = (planned, planned.router(model, max_group=max(group_sizes)))
    overhead_calls = {
        "plain": lambda: plain(one),
        "as_args": lambda: as_args(variables, one),
        **{
            name: compiled_call(router, dep.params, np.full(len(dep.positions), NEVER), one)
            for name, (dep, router) in routers.items()
        },
    }
    # Warm: each program ten times in a row, as a server running one program runs it.
    # Alternating: every call after another program, whose weights evicted its own from the
    # caches (each program holds its own copy of the base network's weights): a harsher
    # figure, reported beside the warm one.
    timed = measure_interleaved(overhead_calls, repeats=max(4, repeats // 10), block=10)
    alternating = measure_interleaved(overhead_calls, repeats=repeats)
    plain_s = timed["plain"]
    out["plain_network_ms"] = 1e3 * plain_s
    programs = all_miss_programs(model, routers, plain, one)
    kernels = all_miss_kernels(programs)
    if kernels is not None:
        out["convolution_kernels"] = kernels
    # The same programs in parts, each kernel timed by XLA inside the program.
    profile = kernel_profile_ms(programs, rounds=max(4, repeats // 20))
    if profile is not None:
        out["kernel_profile_ms"] = profile
    out["plain_network_variables_as_arguments_ms"] = 1e3 * timed["as_args"]
    out["all_miss_overhead"] = {
        name: {
            "positions": list(dep.positions),
            "router_all_miss_ms": 1e3 * timed[name],
            "overhead": timed[name] / plain_s - 1,
            "overhead_alternating": alternating[name] / alternating["plain"] - 1,
        }
        for name, (dep, _) in routers.items()
    }

    # Router vs the Python loop, and measured vs modelled latency, for exits forced at each k.
    best = best_per_position(bank)
    dep = deploy(bank, best)  # gati at the thresholds calibrated for 99% agreement
    router = dep.router(model, max_group=max(group_sizes))
    reference = dep.reference(model)
    stage_s = stage_latencies(network, variables, 1, repeats)
    lookup_s = [c.metrics["lookup_latency_s"] for c in best]
    # The planner's cost model: compiled prefixes, the router's charges (fixed, per cache), each
    # cache's marginal cost inside a router.
    prefix_s = prefixes_from_trials([measure_prefixes(model, 1, repeats)])
    lookups = {
        str(p): (p, d, c.params, "gati") for p, d, c in zip(dep.positions, dep.decides(), best)
    }
    measured = {
        k: c.scaled(prefix_s[-1]) for k, c in measure_lookups(model, lookups, 1, repeats).items()
    }
    charge = measure_router_charge(
        model,
        lookups,
        {k: c.miss_s for k, c in measured.items()},
        1,
        repeats,
        prefix_s[-1],
        {k: c.exit_s for k, c in measured.items()},
    )
    cache_s, exit_s = _marginals(charge, [measured[str(p)] for p in dep.positions])
    out["router_charge_ms"] = 1e3 * charge.fixed_s
    out["router_per_cache_ms"] = 1e3 * charge.per_cache_s
    scenarios = [("no exit", None)] + [(f"exit at {p}", k) for k, p in enumerate(dep.positions)]
    programs = {}
    for label, k in scenarios:
        thresholds = forced_exit_thresholds(len(dep.positions), k)
        programs[f"router {label}"] = compiled_call(router, dep.params, thresholds, one)
        programs[f"loop {label}"] = lambda thr=thresholds: reference.route(
            dep.params, thr, images[:1]
        )
    plain = plain_program(model)
    x = jnp.zeros((1, *network.input_shape), jnp.float32)
    programs["plain"] = lambda: plain(x)
    # The stages through each exit as the profiles compile them, and each cache's one-cache
    # router missing and exiting, timed in the same rounds: the model with every term
    # measured beside the router (see below).
    for k, c in enumerate(best):
        programs[f"prefix {k}"] = lambda p=prefix_program(model, dep.positions[k]): p(x)
        single = deploy(bank, [c])
        alone = single.router(model, max_group=1)
        for name, thr in (("miss", NEVER), ("exit", ALWAYS)):
            # The same parameters object for both: the router packs a new one on its call.
            programs[f"alone {k} {name}"] = compiled_call(alone, single.params, [thr], one)
    # Every scenario in the same rounds: drift hits them alike (timed one scenario after
    # another, an exit at 6 once measured slower than exits at 7 and 8). The profile model
    # is brought to these rounds' speed through the plain network timed in them (its
    # prefixes and lookups were measured minutes earlier; this machine drifts by 10-40%).
    timed = measure_interleaved(programs, repeats=max(4, repeats // 20), block=10)
    scale = timed["plain"] / prefix_s[-1]
    out["forced_exit_plain_ms"] = 1e3 * timed["plain"]
    # The profile model again, every term timed in these rounds: its charges fitted to two
    # of the rows (no exit, exit at the first position), so those two match (unless a
    # charge or a marginal cost came out below 0 and was clamped) and the other rows test
    # the model, not the machine's drift since profiling.
    now = [
        LookupCost.from_timings(
            timed[f"alone {k} miss"], timed["plain"], timed[f"alone {k} exit"], timed[f"prefix {k}"]
        )
        for k in range(len(best))
    ]
    charge_now = charges_from(
        [c.miss_s for c in now],
        timed["router no exit"] - timed["plain"],
        now[0].exit_s,
        timed["router exit at 0"] - timed["prefix 0"],
    )
    cache_now, exit_now = _marginals(charge_now, now)
    out["same_round_charges_ms"] = [1e3 * charge_now.fixed_s, 1e3 * charge_now.per_cache_s]
    rows = []
    for label, k in scenarios:
        router_s, loop_s = timed[f"router {label}"], timed[f"loop {label}"]
        stop = network.num_stages if k is None else dep.positions[k] + 1
        looked = len(dep.positions) if k is None else k + 1
        model_s = sum(stage_s[:stop]) + sum(lookup_s[:looked])
        profiled_s = scale * (prefix_s[stop - 1] + _router_part(charge, cache_s, exit_s, k))
        # The same model with the stages timed in these rounds: what is left of its error is
        # the model's (charges, marginal lookups), not the machine's drift since profiling.
        prefix_now = timed["plain"] if k is None else timed[f"prefix {k}"]
        same_round_s = prefix_now + scale * _router_part(charge, cache_s, exit_s, k)
        all_now_s = prefix_now + _router_part(charge_now, cache_now, exit_now, k)
        rows.append(
            {
                "scenario": label,
                "router_ms": 1e3 * router_s,
                "loop_ms": 1e3 * loop_s,
                "loop/router": loop_s / router_s,
                "stage_sum_model_ms": 1e3 * model_s,
                "router/stage_sum": router_s / model_s,
                "profile_model_ms": 1e3 * profiled_s,
                "router/profile": router_s / profiled_s,
                "same_round_model_ms": 1e3 * same_round_s,
                "router/same_round": router_s / same_round_s,
                "all_same_round_model_ms": 1e3 * all_now_s,
                "router/all_same_round": router_s / all_now_s,
            }
        )
    out["forced_exits"] = rows
    out["stage_latency_ms"] = [1e3 * s for s in stage_s]

    out["group_sizes"] = _group_rows(model, plain, dep, router, images, group_sizes, repeats)
    if planned is not None and planned.positions:
        out["group_sizes_planned"] = _group_rows(
            model, plain, planned, routers["planned"][1], images, group_sizes, repeats
        )

    # Batch 1 over a stream of distinct test images at the calibrated 99% thresholds.
    out["stream_batch1"], out["serving_path"] = _stream_rows(model, plain, dep, router, images)
    return out


def _marginals(charge: RouterCharge, costs: list[LookupCost]) -> tuple[list[float], list[float]]:
    """Each cache's marginal miss and exit cost beside others (one-cache costs less the
    charges that router paid)."""
    own = charge.fixed_s + charge.per_cache_s
    return (
        [marginal_cost(c.miss_s, own) for c in costs],
        [marginal_cost(c.exit_s, own) for c in costs],
    )


def _router_part(
    charge: RouterCharge, cache_s: list[float], exit_s: list[float], k: int | None
) -> float:
    """What the model says a router adds to the stages a request runs when it exits at the
    ``k``-th deployed cache (None: runs to the end): the charges every request pays, the
    lookups it passes, the exit instead of the last one's miss."""
    m = len(cache_s)
    part = float(router_charge(*charge, m))
    part += sum(cache_s[: m if k is None else k + 1])
    if k is not None:
        part += exit_s[k] - cache_s[k]
    return part


def forced_exit_thresholds(count: int, k: int | None) -> np.ndarray:
    """gati thresholds for ``count`` deployed caches under which every request exits at the
    ``k``-th (None: none exits)."""
    thresholds = np.full(count, NEVER, np.float32)
    if k is not None:
        thresholds[k] = ALWAYS
    return thresholds


def compiled_call(router: Router, params: Any, thresholds: Any, batch: jax.Array):
    """A zero-argument call of the router's compiled program on a prepared batch."""
    rows = jnp.zeros(len(batch), jnp.int32)  # every row a request
    thr = jnp.asarray(thresholds, jnp.float32)
    return lambda: router.compiled(params, thr, batch, rows)


def _fetched(call: Any) -> Any:
    """``call`` with its answer copied back to the host, as ``Router.route`` does it."""

    def fetched():
        out = call()
        out.copy_to_host_async()
        return np.asarray(out)

    return fetched


def _stream_rows(
    model: BaseModel, plain: Any, dep: Deployment, router: Router, images: np.ndarray
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Batch 1 over distinct test images: the compiled programs on device-resident images
    (plain network, router at the deployment's thresholds) and, for the router with no cache
    (policy none) and with these caches, what the serving path adds, step by step: the
    answer copied back to the host (fetched), the image sent from the host too (sent),
    ``route`` (checks, padding, both transfers) and the serving loop around it."""
    none = Router(model, (), (), max_group=1)
    programs = {
        "none": (none, (), ()),
        "gati": (router, dep.params, np.asarray(dep.thresholds, np.float32)),
    }
    routes = {
        name: (lambda h, r=r, params=params, thr=thr: r.route(params, thr, h))
        for name, (r, params, thr) in programs.items()
    }
    totals: dict[str, float] = {}
    exits = []
    for image in images:
        host = image[None]
        batch = jnp.asarray(host)
        calls = {"plain": lambda b=batch: plain(b)}
        for name, (r, params, thr) in programs.items():
            calls[f"{name} compiled"] = compiled_call(r, params, thr, batch)
            calls[f"{name} fetched"] = _fetched(compiled_call(r, params, thr, batch))
            calls[f"{name} sent"] = _fetched(compiled_call(r, params, thr, host))
            calls[f"{name} route"] = lambda h=host, route=routes[name]: route(h)
        for name, seconds in measure_interleaved(calls, repeats=5, warmup=1).items():
            totals[name] = totals.get(name, 0.0) + seconds
        exits.append(int(routes["gati"](host).exit_stage[0]))
    # The serving loop over the same stream, one request at a time with no queueing (arrivals
    # a second apart on a virtual clock): its compute is route() plus the loop's own work.
    arrivals = np.arange(len(images), dtype=np.float64)
    served = serve_interleaved(
        {
            name: serve_steps(
                lambda x, index, r=route: r(x),
                images,
                arrivals=arrivals,
                max_group=1,
                max_wait_s=0.0,
                clock=VirtualClock(),
                progress=False,
            )
            for name, route in routes.items()
        }
    )
    n = len(images)
    stream = {
        "requests": n,
        "plain_mean_ms": 1e3 * totals["plain"] / n,
        "gati99_mean_ms": 1e3 * totals["gati compiled"] / n,
        "speedup": totals["plain"] / totals["gati compiled"],
        "exit_histogram": {str(p): exits.count(p) for p in sorted(set(exits))},
    }
    path = []
    for name in routes:
        compiled_s, route_s = totals[f"{name} compiled"] / n, totals[f"{name} route"] / n
        served_s = float(np.mean(served[name].compute))
        path.append(
            {
                "policy": name,
                "compiled_ms": 1e3 * compiled_s,
                "fetched_ms": 1e3 * totals[f"{name} fetched"] / n,
                "sent_ms": 1e3 * totals[f"{name} sent"] / n,
                "route_ms": 1e3 * route_s,
                "served_ms": 1e3 * served_s,
                "route/compiled": route_s / compiled_s,
                "served/compiled": served_s / compiled_s,
                "served_vs_none": (float(np.mean(served["none"].compute)) / served_s),
            }
        )
    return stream, path


def _group_rows(
    model: BaseModel,
    plain: Any,
    dep: Deployment,
    router: Router,
    images: np.ndarray,
    group_sizes: tuple[int, ...],
    repeats: int,
) -> list[dict[str, Any]]:
    """Per group size: plain network, router (all missing; at the deployment's thresholds)
    and the compacted router, on distinct test images, with throughputs."""
    compacted = dep.router(model, max_group=max(group_sizes), compact=True)
    never = np.full(len(dep.positions), NEVER, np.float32)
    rows = []
    for size in group_sizes:
        # Distinct test images (groups of one request exit alike, so they cannot show
        # what compaction saves), cycled through so no one batch's exits decide the figure.
        count = max(1, min(8, len(images) // size))
        batches = [
            jnp.asarray(np.resize(images[i * size :], (size, *images.shape[1:])))
            for i in range(count)
        ]
        calls = {
            "plain": [lambda b=b: plain(b) for b in batches],
            "miss": [compiled_call(router, dep.params, never, b) for b in batches],
            "gati": [compiled_call(router, dep.params, dep.thresholds, b) for b in batches],
            "compact": [compiled_call(compacted, dep.params, dep.thresholds, b) for b in batches],
        }
        turns = dict.fromkeys(calls, 0)

        def cycled(name):
            def call():
                turns[name] += 1
                return calls[name][turns[name] % count]()

            return call

        timed = measure_interleaved(
            {name: cycled(name) for name in calls}, repeats=max(20, repeats // 4)
        )
        exits = np.concatenate([np.asarray(call())[1] for call in calls["gati"]])
        plain_t, gati_t, compact_t = timed["plain"], timed["gati"], timed["compact"]
        rows.append(
            {
                "group": size,
                "plain_ms": 1e3 * plain_t,
                "router_miss_ms": 1e3 * timed["miss"],
                "router_ms": 1e3 * gati_t,
                "compacted_ms": 1e3 * compact_t,
                "plain_rps": size / plain_t,
                "router_rps": size / gati_t,
                "compacted_rps": size / compact_t,
                "compacted_vs_router": gati_t / compact_t,
                "exit_fraction": float(np.mean(exits < model.network.num_stages - 1)),
            }
        )
    return rows
