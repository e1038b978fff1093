"""Latency profiles: what each stage prefix and each cache lookup costs on this backend.

Costs are measured the way the router pays them: compiled programs with the base variables
baked in, timed side by side in blocks (see ``measure_interleaved``). ``prefix_s[p]`` is the
median time of a program running stages 0..p; a cache's cost is that of a router deploying
only it, never hitting, minus the plain network. (Separately jitted stages carry a dispatch
each and miss the fusion the router gets: summing per-stage times misjudged the router by
30-100% here.)

Profiles are saved as JSON keyed by backend, device kind, group size and base model, reused
when present, and re-measured on request or for lookups they lack. The file records its
format version and the checksum of its profiles; a file that fails it is refused.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from tqdm.auto import tqdm

from gati_jax import data
from gati_jax.caches.bank import CacheBank, Candidate, split_key
from gati_jax.inference import BaseModel, model_fingerprint
from gati_jax.integrity import IntegrityError, json_sha256
from gati_jax.measure import convolution_kernels, measure_interleaved
from gati_jax.runtime.deployment import Deployment
from gati_jax.runtime.policies import CacheHead, Decide, policy_builder
from gati_jax.runtime.router import Router

# Policies whose lookups cost the same share one measurement.
_LOOKUP_KIND = {
    "gati": "gati",
    "confidence": "classifier",
    "entropy": "classifier",
    "apparate": "classifier",
    "oracle": "classifier",
}


def lookup_kind(policy: str) -> str:
    """The measurement a policy's lookups share ('gati' or 'classifier')."""
    if policy not in _LOOKUP_KIND:
        raise ValueError(f"no lookup profile for policy '{policy}'; known: {sorted(_LOOKUP_KIND)}")
    return _LOOKUP_KIND[policy]


def reads_selector(kind: str) -> bool:
    """Whether a lookup of ``kind`` reads its cache's selector: ``gati``'s do (each selector
    kind its own program, caches/selector.py: the fixed kinds run bare); a threshold policy's
    never do, so its lookups of one predictor are one computation under every selector kind."""
    return kind == "gati"


# Raised whenever the programs a lookup compiles to change (2: the fixed selector kinds run
# bare), so a profile timed on the former programs is measured anew, not reused.
LOOKUP_PROGRAMS = 2


@dataclasses.dataclass
class Profile:
    """Measured costs for one (backend, device kind, group size, base model)."""

    backend: str
    device_kind: str
    group_size: int
    model: str
    prefix_s: list[float]
    lookup_s: dict[str, float]  # "kind/candidate key" -> seconds
    # Confirmation measurements behind a lookup_s entry (see confirm_lookups); absent: none,
    # the entry is the one measurement taken before any plan chose it.
    confirmed: dict[str, int] = dataclasses.field(default_factory=dict)
    # Lookup kind -> the router's fixed charge (see measure_router_charge).
    router_s: dict[str, float] = dataclasses.field(default_factory=dict)
    # "kind/candidate key" -> seconds a request that exits at the lookup pays beyond the
    # stages it ran (see measure_cache_cost); absent where no threshold forces an exit.
    exit_s: dict[str, float] = dataclasses.field(default_factory=dict)
    # Each trial's raw stage-prefix timings; prefix_s is made of them (see
    # add_prefix_trial). Empty in profiles written before trials: prefix_s is one.
    prefix_trials: list[list[float]] = dataclasses.field(default_factory=list)
    # Lookup kind -> what every request pays per deployed lookup (see measure_router_charge).
    deploy_s: dict[str, float] = dataclasses.field(default_factory=dict)
    # Lookup kind -> the lookups of the router the charges were last measured on.
    charge_from: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    # "kind/candidate key" -> what its lookup computes (planner/build.py: lookup_program):
    # a lookup never timed is priced at its program's timings (lookups_to_time).
    programs: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def key(self) -> str:
        """The profile's key in the JSON file."""
        where = f"{self.backend}/{self.device_kind}/g{self.group_size}/{self.model}"
        return f"{where}/lookups-v{LOOKUP_PROGRAMS}"

    def lookup(self, policy: str, candidate: Candidate) -> float:
        """Seconds one more lookup of ``candidate`` adds under ``policy``, in a router."""
        return self.marginal(f"{lookup_kind(policy)}/{candidate.key}")

    def marginal(self, key: str) -> float:
        """Seconds entry ``key`` adds beside other lookups: its one-lookup router's cost
        less the router's charges (the fixed one a deployment pays once, the per-cache one
        every request pays for it)."""
        return marginal_cost(self.lookup_s[key], self._charges(key))

    def _charges(self, key: str) -> float:
        kind = key.split("/", 1)[0]
        return self.charge(kind) + self.per_cache(kind)

    def exit(self, policy: str, candidate: Candidate) -> float:
        """Seconds a request that exits at ``candidate``'s lookup pays beyond its stages."""
        return self.marginal_exit(f"{lookup_kind(policy)}/{candidate.key}")

    def marginal_exit(self, key: str) -> float:
        """:meth:`marginal` for a request that exits at the lookup (its miss cost where the
        exit could not be timed)."""
        seconds = self.exit_s.get(key, self.lookup_s[key])
        return marginal_cost(seconds, self._charges(key))

    def charge(self, kind: str) -> float:
        """The router's fixed charge for lookups of ``kind`` (0 where none was measured)."""
        return self.router_s.get(kind, 0.0)

    def per_cache(self, kind: str) -> float:
        """What every request pays per deployed lookup of ``kind`` (0 where not measured)."""
        return self.deploy_s.get(kind, 0.0)


def marginal_cost(one_cache_s: float, charge_s: float) -> float:
    """A one-cache cost less the router's charge, never negative."""
    return max(one_cache_s - charge_s, 0.0)


def _prefix_fn(model: BaseModel, stop: int):
    network, variables = model.network, model.variables
    mean, std = np.asarray(model.mean), np.asarray(model.std)

    def prefix(x):
        x = data.normalize(x, mean, std)
        for index in range(stop + 1):
            x = network.apply_stage(variables, index, x)
        return x

    return prefix


def prefix_program(model: BaseModel, stop: int):
    """Stages 0..``stop`` compiled as the profiles time them (base variables baked in); one
    program per model and stop, shared by every measurement (compiling them anew for each
    trial and lookup cost seconds per planning run)."""
    programs = model.__dict__.setdefault("_prefix_programs", {})
    if stop not in programs:
        programs[stop] = jax.jit(_prefix_fn(model, stop))
    return programs[stop]


def measure_prefixes(
    model: BaseModel, group_size: int, repeats: int, rotate: int = 0
) -> list[float]:
    """Median seconds of stages 0..p for every stage p, timed side by side in blocks, three
    times a lookup's repeats; ``rotate`` shifts the order the programs take in each round."""
    stages = list(range(model.network.num_stages))
    shift = rotate % len(stages)
    timed = measure_prefix_costs(model, stages[shift:] + stages[:shift], group_size, 3 * repeats)
    return [timed[p] for p in range(len(stages))]


def prefixes_from_trials(trials: Sequence[Sequence[float]]) -> list[float]:
    """Stage prefixes from several trials' timings: per prefix, the median over trials of
    its time in units of the trial's whole network, at the first trial's scale, capped
    at the whole network and made non-decreasing in p.

    A planner exploits a prefix measured low as it does a lookup, and one trial is not
    enough: one profile timed the whole network 0.6 ms above stages 0..7 (0.28-0.39 ms in
    other runs), every early exit looked cheap and the cost model missed by 29%; another had
    stages 0..3 at 0.03 ms over stages 0..2, its plan sent 39% of requests out at position 3
    and the model missed by 29%. A trial's noise moves its prefixes together with its own
    whole network, so ratios are pooled, not seconds. Whatever noise is left that says a
    longer prefix costs less is pooled away (isotonic regression, :func:`monotone`). The
    scale stays the first trial's: lookups recorded earlier are at that scale.
    """
    if not trials:
        raise ValueError("no prefix trials to pool")
    ratios = np.median([np.asarray(t, np.float64) / t[-1] for t in trials], axis=0)
    return monotone(list(float(trials[0][-1]) * np.minimum(ratios, 1.0)))


def add_prefix_trial(profile: Profile, model: BaseModel, repeats: int) -> None:
    """Times the stage prefixes once more (programs in an order rotated per trial) and
    rebuilds ``profile.prefix_s`` from every trial."""
    if not profile.prefix_trials and profile.prefix_s:  # a profile from before trials
        profile.prefix_trials = [list(profile.prefix_s)]
    profile.prefix_trials.append(
        measure_prefixes(model, profile.group_size, repeats, rotate=len(profile.prefix_trials))
    )
    profile.prefix_s = prefixes_from_trials(profile.prefix_trials)


def monotone(values: Sequence[float]) -> list[float]:
    """The non-decreasing sequence closest to ``values`` in squared error (pool adjacent
    violators)."""
    blocks: list[list[float]] = []  # [mean, count]
    for v in values:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m2, n2), (m1, n1) = blocks.pop(), blocks.pop()
            blocks.append([(m1 * n1 + m2 * n2) / (n1 + n2), n1 + n2])
    return [m for m, n in blocks for _ in range(int(n))]


def measure_prefix_costs(
    model: BaseModel, stops: Sequence[int], group_size: int, repeats: int
) -> dict[int, float]:
    """Median seconds of stages 0..p for each p in ``stops``, timed side by side in blocks."""
    x = jnp.zeros((group_size, *model.network.input_shape), jnp.float32)
    fns = {p: prefix_program(model, p) for p in stops}
    timed = measure_interleaved(
        {str(p): (lambda f=f: f(x)) for p, f in fns.items()},
        max(repeats // _BLOCK, 3),
        block=_BLOCK,
    )
    return {p: timed[str(p)] for p in stops}


# Policies' thresholds that never hit (scores lie in [0, 1], entropies are >= 0), and that
# always hit (kNN hits need agreeing neighbours and the oracle the base answer: no threshold
# forces those).
_NEVER = {
    "gati": 2.0,
    "confidence": 2.0,
    "apparate": 2.0,
    "oracle": 0.0,
    "entropy": -1.0,
    "knn": -1.0,
}
_ALWAYS = {"gati": -1.0, "confidence": -1.0, "apparate": -1.0, "entropy": 1e9}
_BLOCK = 10


class LookupCost(NamedTuple):
    """One lookup's measured costs (see :func:`measure_cache_cost`), and the plain network's
    time measured in the same rounds, their scale."""

    miss_s: float
    exit_s: float | None
    plain_s: float

    @classmethod
    def from_timings(
        cls,
        router_s: float,
        plain_s: float,
        exit_router_s: float | None = None,
        prefix_s: float | None = None,
    ) -> LookupCost:
        """A one-cache router's costs from times taken side by side: never hitting over the
        plain network, and (where timed) always hitting over the stages through its
        position. Noise can make either difference slightly negative for the cheapest
        lookups: they count as 0."""
        exit_s = (
            None
            if exit_router_s is None or prefix_s is None
            else max(exit_router_s - prefix_s, 0.0)
        )
        return cls(max(router_s - plain_s, 0.0), exit_s, plain_s)

    def scaled(self, plain_s: float) -> LookupCost:
        """The costs as if measured when the plain network took ``plain_s``.

        The machine's speed drifts by 10-40% within minutes here; a profile measured over
        minutes mixes fast and slow moments, so every cost is brought to the scale of the
        profile's own plain network through the plain network timed beside it (in one
        planning run the prefixes were measured at a 3.5 ms plain network, the lookups at
        about 2.5 ms, and the model missed by 25%).
        """
        k = plain_s / self.plain_s
        return LookupCost(
            self.miss_s * k, None if self.exit_s is None else self.exit_s * k, plain_s
        )


def plain_program(model: BaseModel):
    """The plain network compiled as the profiles time it (base variables baked in)."""
    return prefix_program(model, model.network.num_stages - 1)


def measure_cache_cost(
    model: BaseModel,
    position: int,
    decide: Decide,
    params: Any,
    policy: str,
    group_size: int,
    repeats: int,
    router: Router | None = None,
) -> LookupCost:
    """What a deployed cache adds to a request that runs its lookup and misses, and to one
    that exits there.

    Measured as the router serves it: a router with only this cache, timed side by side in
    blocks with the plain compiled network and the compiled stages through the position.
    Miss: the router never hitting, minus the plain network (the lookup, the exit
    bookkeeping, the ``lax.cond`` and the rest of the network inside it, the dispatch of the
    cache's parameters). Exit: the router always hitting, minus the stages through the
    position; the two differ (an exit at position 1 cost 0.36 ms over its stages where a
    miss there cost 0.22 ms). ``exit_s`` is None for policies no threshold forces to hit.
    ``router``: a router compiled for a cache of the same program at ``position`` (its
    parameters are arguments, so it serves this cache's too without compiling again).
    """
    router = router or Router(model, (position,), (decide,), max_group=group_size)
    params = (jax.device_put(params),)
    never, x, rows = all_miss_inputs(model, (policy,), group_size)
    plain = plain_program(model)
    fns = {"plain": lambda: plain(x), "router": lambda: router.compiled(params, never, x, rows)}
    if policy in _ALWAYS:
        always = jnp.full(1, _ALWAYS[policy], jnp.float32)
        prefix = prefix_program(model, position)
        fns["prefix"] = lambda: prefix(x)
        fns["exit"] = lambda: router.compiled(params, always, x, rows)
    timed = measure_interleaved(fns, max(repeats // _BLOCK, 3), block=_BLOCK)
    return LookupCost.from_timings(
        timed["router"], timed["plain"], timed.get("exit"), timed.get("prefix")
    )


def all_miss_inputs(
    model: BaseModel, policies: Sequence[str], group_size: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(thresholds, images, rows) for ``Router.compiled`` under which no request of a group
    hits a lookup, one per policy in ``policies``: thresholds no score reaches, and for the
    oracle, which has none, a base answer no prediction equals."""
    never = jnp.asarray([_NEVER[p] for p in policies], jnp.float32)
    x = jnp.zeros((group_size, *model.network.input_shape), jnp.float32)
    # Every row a request; the oracle hits where its answer equals the row's base answer.
    answer = model.network.num_classes if "oracle" in policies else 0
    return never, x, jnp.full(group_size, answer, jnp.int32)


def all_miss_programs(
    model: BaseModel, routed: dict[str, tuple[Deployment, Router]], plain: Any, images: jax.Array
) -> dict[str, tuple[Callable[[], Any], str]]:
    """The plain program ``plain`` and each router (name -> (deployment, router)) on
    ``images`` with every lookup missing, as timed: a zero-argument call of each and its
    optimized HLO (programs already called are not compiled again)."""
    programs = {
        "plain": (functools.partial(plain, images), plain.lower(images).compile().as_text())
    }
    for name, (dep, router) in routed.items():
        never, _, rows = all_miss_inputs(model, [dep.policy] * len(dep.positions), len(images))
        programs[name] = (
            functools.partial(router.compiled, dep.params, never, images, rows),
            router.hlo_text(dep.params, never, images, rows),
        )
    return programs


def all_miss_kernels(
    programs: dict[str, tuple[Callable[[], Any], str]],
) -> dict[str, dict[str, int]] | None:
    """How XLA compiled the convolutions of each program of :func:`all_miss_programs` (see
    ``profiling.convolution_kernels``); None off the CPU, whose kernel choice it is."""
    if jax.default_backend() != "cpu":
        return None
    return {name: convolution_kernels(hlo) for name, (_, hlo) in programs.items()}


def measure_miss_overhead(
    model: BaseModel,
    deployment: Deployment,
    group_size: int,
    rounds: int,
    router: Router | None = None,
) -> float:
    """What a request that misses every lookup of ``deployment`` pays over the plain network,
    as a fraction of it (:func:`measure_miss_overheads` for one deployment). ``router``:
    another program serving the deployment (online learning's tapped one); default: the
    deployment's own."""
    return measure_miss_overheads(model, [deployment], group_size, rounds, [router])[0]


# Routers timed in one interleaved run beside one plain network: timing the plain network
# once per run instead of once per router nearly halves what timing many lookups alone costs
# (a deep network's miss bound times dozens), while each router still shares its rounds, and
# so the machine's noise, with the plain network it is divided by.
MISS_CHUNK = 8


def measure_miss_overheads(
    model: BaseModel,
    deployments: Sequence[Deployment],
    group_size: int,
    rounds: int,
    routers: Sequence[Router | None] | None = None,
    chunk: int = MISS_CHUNK,
) -> list[float]:
    """Each deployment's all-miss overhead (a fraction of the plain network): its router with
    no lookup hitting (:func:`all_miss_inputs`), timed in ``rounds`` alternating blocks with
    the plain compiled network, split in three trials, the median of the trials' ratios (0
    for a deployment of nothing). Up to ``chunk`` routers share each run's plain timings.
    ``routers``: per deployment, another program serving it, or None for its own."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    routers = list(routers) if routers is not None else [None] * len(deployments)
    if len(routers) != len(deployments):
        raise ValueError(f"{len(routers)} routers for {len(deployments)} deployments")
    out = [0.0] * len(deployments)
    todo = [k for k, d in enumerate(deployments) if d.positions]
    plain = plain_program(model)
    x = jnp.zeros((group_size, *model.network.input_shape), jnp.float32)
    chunks = range(0, len(todo), chunk)
    for begin in tqdm(
        chunks, desc="timing all-miss requests", leave=False, disable=len(chunks) < 2
    ):
        # Every program times the same all-zero images (all_miss_inputs' own).
        fns: dict[str, Callable[[], Any]] = {"plain": functools.partial(plain, x)}
        for k in todo[begin : begin + chunk]:
            dep = deployments[k]
            router = routers[k] or dep.router(model, max_group=group_size)
            never, _, rows = all_miss_inputs(model, [dep.policy] * len(dep.positions), group_size)
            fns[str(k)] = functools.partial(router.compiled, dep.params, never, x, rows)
        # Three trials, the median of their ratios: a burst of noise that slows one program
        # in one trial (one plan read +19.9% after a larger one had read +17.9%) moves one
        # ratio, not the result.
        ratios: dict[str, list[float]] = {name: [] for name in fns if name != "plain"}
        for _ in range(3):
            timed = measure_interleaved(fns, max(rounds // 3, 3), block=_BLOCK)
            for name in ratios:
                ratios[name].append(timed[name] / timed["plain"])
        for name, values in ratios.items():
            out[int(name)] = float(np.median(values)) - 1.0
    return out


def _program_of(key: str) -> str:
    """What a lookup key's compiled router depends on: its kind, position and predictor
    architecture, and under ``gati`` its selector kind (caches/selector.py: the fixed kinds
    run bare). Seeds and learning rates only change parameters, which the router takes as
    arguments, and the threshold policies ignore the selector."""
    found = split_key(key, at=2)  # {kind}/p{position}/{variant}/s{seed}/lr{rate}
    if found is None:
        return key
    program = "/".join(found[0].split("/")[:3])
    return f"{program}#{found[1]}" if reads_selector(key.split("/", 1)[0]) else program


def measure_lookups(
    model: BaseModel,
    lookups: dict[str, tuple[int, Decide, Any, str]],
    group_size: int,
    repeats: int,
) -> dict[str, LookupCost]:
    """:func:`measure_cache_cost` of every lookup (key -> (position, decide, params,
    policy)), with a progress bar. Lookups of one program share its compiled router: on a
    29-stage network each compile of the whole network cost more than its timing."""
    routers: dict[str, Router] = {}
    out: dict[str, LookupCost] = {}
    timed: dict[str, str] = {}  # what a threshold lookup computes -> the key timed for it
    for key, (position, decide, params, policy) in tqdm(
        lookups.items(), desc="profiling lookups", disable=not lookups
    ):
        same = _same_computation(key)
        if same in timed:
            out[key] = out[timed[same]]
            continue
        program = _program_of(key)
        if program not in routers:
            routers[program] = Router(model, (position,), (decide,), max_group=group_size)
        out[key] = measure_cache_cost(
            model, position, decide, params, policy, group_size, repeats, routers[program]
        )
        timed[same] = key
    return out


def _same_computation(key: str) -> str:
    """Keys whose lookups compute the same thing on the same values: a threshold policy's
    lookups of one predictor member under every selector kind (it never reads the selector,
    so timing each kind again would time one program on one set of values three times)."""
    found = split_key(key, at=2)
    return key if found is None or reads_selector(key.split("/", 1)[0]) else found[0]


def record_lookups(profile: Profile, measured: dict[str, LookupCost]) -> None:
    """Stores measurements in ``profile`` at its scale (replacing earlier ones)."""
    for key, cost in measured.items():
        cost = cost.scaled(profile.prefix_s[-1])
        profile.lookup_s[key] = cost.miss_s
        if cost.exit_s is not None:
            profile.exit_s[key] = cost.exit_s


class RouterCharge(NamedTuple):
    """The router's charges (see :func:`measure_router_charge`)."""

    fixed_s: float  # once per request of a plan that deploys anything
    per_cache_s: float  # per request, per deployed lookup, reached or not


def measure_router_charge(
    model: BaseModel,
    lookups: dict[str, tuple[int, Decide, Any, str]],
    lookup_s: dict[str, float],
    group_size: int,
    repeats: int,
    plain_s: float | None = None,
    exit_s: dict[str, float] | None = None,
) -> RouterCharge:
    """The parts of a one-lookup router's cost that do not belong to its lookup.

    Per-lookup costs (:func:`measure_cache_cost`) are not additive: nine one-cache routers
    cost 2.5 ms over the plain network in all, one router with the same nine caches 1.5 ms,
    and the sum of one-cache costs overcharged every exit after the first position by 8-25%.
    Nor is a larger router free for a request that leaves it early: an exit at the first of
    five deployed positions cost 33% more than the model without a per-cache charge said.
    The model: a one-cache cost is ``fixed + per_cache + own``, a router of m lookups costs
    ``fixed + m * per_cache + sum(own)`` to every request plus the lookups it passes. One
    timed lookup per position (the first key) goes into one router, timed never hitting (then
    ``fixed = (sum(one-cache) - joint) / (m - 1)``) and exiting at its first lookup beside
    the stages through it (then ``per_cache = (exit - one-cache exit) / (m - 1)``; without
    ``exit_s``, the one-cache exit costs, or where no threshold forces the exit: 0). Fewer
    than two positions: zeros. ``plain_s``: the scale of ``lookup_s`` and ``exit_s`` (see
    :meth:`LookupCost.scaled`); None: as measured.
    """
    keys = _router_keys(lookups, lookup_s)
    if len(keys) < 2:
        return RouterCharge(0.0, 0.0)
    positions = tuple(lookups[k][0] for k in keys)
    router = Router(model, positions, tuple(lookups[k][1] for k in keys), max_group=group_size)
    params = tuple(jax.device_put(lookups[k][2]) for k in keys)
    never, x, rows = all_miss_inputs(model, [lookups[k][3] for k in keys], group_size)
    plain = plain_program(model)
    fns = {"plain": lambda: plain(x), "router": lambda: router.compiled(params, never, x, rows)}
    head, policy = keys[0], lookups[keys[0]][3]
    if exit_s is not None and head in exit_s and policy in _ALWAYS:
        leave = never.at[0].set(_ALWAYS[policy])
        prefix = prefix_program(model, positions[0])
        fns["prefix"] = lambda: prefix(x)
        fns["exit"] = lambda: router.compiled(params, leave, x, rows)
    # One measurement stands for every plan: three times a lookup's repeats.
    timed = measure_interleaved(fns, max(3 * repeats // _BLOCK, 3), block=_BLOCK)
    scale = 1.0 if plain_s is None else plain_s / timed["plain"]
    joint_exit = (timed["exit"] - timed["prefix"]) * scale if "exit" in fns else None
    return charges_from(
        [lookup_s[k] for k in keys],
        (timed["router"] - timed["plain"]) * scale,
        exit_s[head] if "exit" in fns else None,
        joint_exit,
    )


def charges_from(
    one_cache_s: Sequence[float],
    joint_s: float,
    first_exit_s: float | None = None,
    joint_first_exit_s: float | None = None,
) -> RouterCharge:
    """The router's charges (see :func:`measure_router_charge`) from timings taken: each
    one-cache router's miss cost and the joint router's (over the plain network), and the
    exit at the first lookup alone and in the joint router (beyond the stages through it;
    None: no per-cache charge)."""
    m = len(one_cache_s)
    if m < 2:
        return RouterCharge(0.0, 0.0)
    fixed = max((sum(one_cache_s) - max(joint_s, 0.0)) / (m - 1), 0.0)
    per_cache = 0.0
    if first_exit_s is not None and joint_first_exit_s is not None:
        per_cache = max((joint_first_exit_s - first_exit_s) / (m - 1), 0.0)
    return RouterCharge(fixed, per_cache)


def _router_keys(
    lookups: dict[str, tuple[int, Decide, Any, str]], timed: Collection[str]
) -> list[str]:
    """One timed lookup per position (the first timed key), by position: a charge router's
    lookups (a position none of whose lookups was timed is left out)."""
    first: dict[int, str] = {}
    for key in sorted(k for k in lookups if k in timed):
        first.setdefault(lookups[key][0], key)
    return [first[p] for p in sorted(first)]


def record_router_charge(
    profile: Profile,
    model: BaseModel,
    kind: str,
    lookups: dict[str, tuple[int, Decide, Any, str]],
    group_size: int,
    repeats: int,
) -> None:
    """Measures the router's charges for ``kind`` on ``lookups`` (all of that kind) and
    stores them in ``profile`` at its scale, with the lookups they were measured on."""
    charge = measure_router_charge(
        model, lookups, profile.lookup_s, group_size, repeats, profile.prefix_s[-1], profile.exit_s
    )
    profile.router_s[kind], profile.deploy_s[kind] = charge
    profile.charge_from[kind] = _router_keys(lookups, profile.lookup_s)


def confirm_lookups(
    model: BaseModel,
    profile: Profile,
    lookups: dict[str, tuple[int, Decide, Any, str]],
    group_size: int,
    repeats: int,
) -> dict[str, LookupCost]:
    """Measures lookups that plans chose once more; each entry (miss and exit) becomes the
    mean of its confirmation measurements (the first, pre-selection one is dropped), and the
    stage prefixes get one more trial. Returns the new lookup measurements.

    A planner picks the caches whose costs look lowest, so the single measurement of a
    chosen cache is biased low (the winner's curse): a kNN store measured at 0.08 ms, where
    its neighbours' stores took 0.46-0.75 ms, was planned at a predicted 1.14x and served at
    0.87x of the plain network. A measurement taken after the choice carries no such bias.
    """
    fresh = measure_lookups(model, lookups, group_size, repeats)
    for key, cost in fresh.items():
        cost = cost.scaled(profile.prefix_s[-1])
        n = profile.confirmed.get(key, 0)
        for table, seconds in ((profile.lookup_s, cost.miss_s), (profile.exit_s, cost.exit_s)):
            if seconds is None:
                continue
            # The mean of the confirmations so far (n, if the entry has them) and this one.
            k = n if key in table else 0
            table[key] = (table.get(key, 0.0) * k + seconds) / (k + 1)
        profile.confirmed[key] = n + 1
    # The prefixes the plans exit after are chosen on their measurements too: one more trial.
    add_prefix_trial(profile, model, repeats)
    return fresh


# A profile file: {"format": PROFILE_FORMAT, "version": ..., "sha256": of the profiles,
# "profiles": {key: profile}}.
PROFILE_FORMAT = "gati_jax.latency_profile"
PROFILE_VERSION = 1


def save_profile(path: str | Path, profile: Profile) -> None:
    """Writes ``profile`` into the JSON file at ``path`` (other profiles there are kept),
    atomically, with the file's format version and the checksum of its profiles."""
    path = Path(path)
    stored: dict[str, Any] = {}
    if path.is_file():
        stored = _read_profiles(path)
    stored[profile.key] = dataclasses.asdict(profile)
    _write_profiles(path, stored)


def _write_profiles(path: Path, profiles: dict[str, Any]) -> None:
    # Through JSON first, so the checksum is of exactly what a reader parses back.
    profiles = json.loads(json.dumps(profiles))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(
        json.dumps(
            {
                "format": PROFILE_FORMAT,
                "version": PROFILE_VERSION,
                "sha256": json_sha256(profiles),
                "profiles": profiles,
            },
            indent=1,
        )
        + "\n"
    )
    tmp.replace(path)


def _read_profiles(path: Path) -> dict[str, Any]:
    """The profiles stored at ``path``, verified against the file's checksum."""
    remedy = "move it away: the profile is then measured anew"
    try:
        stored = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise IntegrityError(
            f"latency profile {path} is corrupt or truncated ({error}); {remedy}"
        ) from error
    if not isinstance(stored, dict) or stored.get("format") != PROFILE_FORMAT:
        raise IntegrityError(
            f"latency profile {path} has no format version or checksum (written before "
            "profiles carried them, or not a profile), so it cannot be checked; if you trust "
            "it, add them with gati_jax.planner.costs.upgrade_profile (python "
            f"scripts/add_manifest.py {path}), else move it away (it is measured anew)"
        )
    if not isinstance(stored.get("version"), int) or stored["version"] > PROFILE_VERSION:
        raise IntegrityError(
            f"latency profile {path}: format version "
            f"{stored.get('version')!r} is newer than this gati_jax reads "
            f"({PROFILE_VERSION})"
        )
    profiles = stored.get("profiles")
    if not isinstance(profiles, dict) or json_sha256(profiles) != stored.get("sha256"):
        raise IntegrityError(
            f"latency profile {path} is corrupt: its profiles do not match "
            f"the checksum it records; {remedy}"
        )
    return profiles


def upgrade_profile(path: str | Path) -> None:
    """Adds the format version and checksum to a profile file written before they existed
    (its contents are kept as they are; a file that has them already is left alone)."""
    path = Path(path)
    try:
        stored = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise IntegrityError(
            f"latency profile {path} is not JSON ({error}); it cannot be upgraded"
        ) from error
    if isinstance(stored, dict) and stored.get("format") == PROFILE_FORMAT:
        _read_profiles(path)  # already upgraded: it must verify
        return
    if not isinstance(stored, dict) or not all(
        isinstance(v, dict) and "prefix_s" in v for v in stored.values()
    ):
        raise IntegrityError(f"{path} does not look like a latency profile")
    _write_profiles(path, stored)


def candidate_lookups(
    bank: CacheBank, candidates: Sequence[Candidate], policies: Sequence[str]
) -> dict[str, tuple[int, Decide, Any, str]]:
    """What to measure for bank candidates: profile key -> (position, decide, params, policy)."""
    kinds = {lookup_kind(p): p for p in policies}
    lookups = {}
    for kind, policy in kinds.items():
        for c in candidates:
            head = CacheHead(c.spec, bank.num_classes, c.pool_factor, bank.selector_hidden)
            lookups[f"{kind}/{c.key}"] = (
                c.position,
                policy_builder(policy)(head),
                c.params,
                policy,
            )
    return lookups


def lookups_to_time(
    lookups: dict[str, tuple[int, Decide, Any, str]],
    profile: Profile,
    programs: Mapping[str, str] | None = None,
    per_program: int = 0,
) -> dict[str, tuple[int, Decide, Any, str]]:
    """The lookups ``profile`` lacks a timing of (miss, and exit where a threshold forces
    one), except that of the lookups of one program (``programs``: key -> what it computes,
    planner/build.py: lookup_program) only ``per_program`` positions are timed in all.

    The planner prices a program's lookups at the median of their timings, not each at its
    own (build.py: a lookup's timing is a difference of two whole-network timings, noisier
    than the lookup); on a deep network one program sits at a dozen positions of one
    activation shape, and timing each compiles a whole-network router. The positions timed
    are spread over the program's and turned from one program of those positions to the
    next, so that the router's charges find a timed lookup at nearly every position.
    ``per_program`` 0, or a key without a program: timed."""

    def timed(key: str) -> bool:
        return key in profile.lookup_s and (lookups[key][3] not in _ALWAYS or key in profile.exit_s)

    out = {
        k: v
        for k, v in lookups.items()
        if not timed(k) and (per_program <= 0 or programs is None or k not in programs)
    }
    if per_program <= 0 or programs is None:
        return out
    at: dict[str, dict[int, list[str]]] = {}  # program -> position -> its keys
    for key in sorted(k for k in lookups if k in programs):
        at.setdefault(programs[key], {}).setdefault(lookups[key][0], []).append(key)
    turns: dict[tuple[int, ...], int] = {}
    for program in sorted(at):
        positions = sorted(at[program])
        turn = turns.get(tuple(positions), 0)
        turns[tuple(positions)] = turn + 1
        rest = [p for p in positions if not any(timed(k) for k in at[program][p])]
        want = min(per_program - (len(positions) - len(rest)), len(rest))
        if want <= 0:
            continue
        stride = len(rest) // want
        for i in range(want):
            key = at[program][rest[(turn + i * stride) % len(rest)]][0]
            out[key] = lookups[key]
    return out


def load_or_measure(
    path: str | Path,
    model: BaseModel,
    lookups: dict[str, tuple[int, Decide, Any, str]],
    group_size: int = 1,
    repeats: int = 100,
    remeasure: bool = False,
    programs: Mapping[str, str] | None = None,
    per_program: int = 0,
) -> Profile:
    """The profile for this backend and model from ``path``, measuring whatever it lacks.

    ``lookups`` maps profile keys to (position, decide, params, policy), e.g. from
    :func:`candidate_lookups`; ``programs`` and ``per_program``: see
    :func:`lookups_to_time`.
    """
    path = Path(path)
    stored = _read_profiles(path) if path.is_file() else {}
    profile = Profile(
        jax.default_backend(),
        jax.devices()[0].device_kind,
        int(group_size),
        model_fingerprint(model),
        [],
        {},
    )
    if profile.key in stored and not remeasure:
        entry = dict(stored[profile.key])
        if "prefix_sessions" in entry:  # the field's earlier name
            entry["prefix_trials"] = entry.pop("prefix_sessions")
        profile = Profile(**entry)
    if not profile.prefix_s:
        add_prefix_trial(profile, model, repeats)
    profile.programs.update(programs or {})
    # Profiles written before exits were timed lack them: those lookups are measured anew.
    missing = lookups_to_time(lookups, profile, programs, per_program)
    if len(missing) < len(lookups):
        logging.info(
            "profiling %d of %d lookups (the rest are timed already, or priced at their "
            "program's timings: planner.timings_per_program=%d)",
            len(missing),
            len(lookups),
            per_program,
        )
    # The prefixes are timed again halfway through the lookups and after them: trials
    # spread over the minutes the lookups take, pooled (see prefixes_from_trials).
    keys = list(missing)
    for part in (keys[: len(keys) // 2], keys[len(keys) // 2 :]):
        if part:
            record_lookups(
                profile, measure_lookups(model, {k: missing[k] for k in part}, group_size, repeats)
            )
            add_prefix_trial(profile, model, repeats)
    # Profiles from before the per-cache charge lack it: their charges are measured anew.
    for kind in sorted({k.split("/", 1)[0] for k in lookups} - set(profile.deploy_s)):
        of_kind = {k: v for k, v in lookups.items() if k.split("/", 1)[0] == kind}
        record_router_charge(profile, model, kind, of_kind, group_size, repeats)
    save_profile(path, profile)
    return profile
