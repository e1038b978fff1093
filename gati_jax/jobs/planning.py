"""``plan_caches.py``'s job: profile, build instances, run every method, check, save, report.

Data roles follow the exploration (gati_jax/caches/exploration.py): plans are tuned on the
second half of the validation split (the selectors' calibration half, which no cache trained
on) and reported on the test split.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from gati_jax import data
from gati_jax.caches.bank import CacheBank, Candidate, load_bank, split_key
from gati_jax.caches.recording import Recording, record_activations
from gati_jax.compilation import programs_loaded
from gati_jax.config import ConfigError, validate_config
from gati_jax.evaluation import model_data_config
from gati_jax.experiments.plots import plot_plan_tradeoff
from gati_jax.inference import BaseModel
from gati_jax.measure import StepClock
from gati_jax.planner import apparate, certify, search
from gati_jax.planner.build import (
    build_instance,
    build_knn_instance,
    candidate_programs,
    knn_lookups,
    knn_stores,
    plan_candidates,
    policy_threshold,
    reprice,
)
from gati_jax.planner.cost_check import check_cost_model, remeasured, route_times, router_program
from gati_jax.planner.costs import (
    Profile,
    candidate_lookups,
    confirm_lookups,
    load_or_measure,
    lookup_kind,
    measure_lookups,
    measure_miss_overheads,
    record_lookups,
    record_router_charge,
    save_profile,
)
from gati_jax.planner.feasibility import Feasibility, check_feasibility
from gati_jax.planner.instance import Instance, MissFloors, simulate
from gati_jax.planner.miss_bound import MissRound, hold_miss_bound
from gati_jax.planner.plan import Plan, plan_deployment, plan_from_choices, save_plan
from gati_jax.runtime.deployment import Deployment
from gati_jax.runtime.knn import KnnHead
from gati_jax.tables import format_table
from gati_jax.training.checkpointing import load_base_model

# (policy, method): the instance's policy and the search; apparate is confidence ramps placed
# and tuned as Apparate does (gati_jax/planner/apparate.py; the former all-ramps variant,
# search.greedy on every position, is no longer planned).
METHODS = (
    ("gati", "joint"),
    ("gati", "single"),
    ("gati", "independent"),
    ("gati", "greedy"),
    ("confidence", "joint"),
    ("entropy", "joint"),
    ("apparate", "apparate"),
    ("knn", "joint"),
)


@dataclasses.dataclass(frozen=True)
class PlanningData:
    """Recorded tuning requests (validation, second half) and test requests."""

    tuning: Recording
    test: Recording
    tuning_images: np.ndarray


def record_planning_data(
    model: BaseModel, dataset: data.Dataset, bank: CacheBank, test_examples: int, batch_size: int
) -> PlanningData:
    """Records the tuning and test requests with the pooling the bank's caches expect."""
    half = len(dataset.validation.labels) // 2
    factors = {int(p): int(f) for p, f in bank.info["pool_factors"].items()}
    positions = tuple(int(p) for p in bank.info["positions"])
    tuning_images = dataset.validation.images[half:]
    n_test = min(test_examples, len(dataset.test.labels))
    kwargs = dict(positions=positions, pool_factors=factors, batch_size=batch_size)
    tuning = record_activations(
        model,
        tuning_images,
        dataset.validation.labels[half:],
        desc="recording tuning requests",
        **kwargs,
    )
    test = record_activations(
        model,
        dataset.test.images[:n_test],
        dataset.test.labels[:n_test],
        desc="recording test requests",
        **kwargs,
    )
    return PlanningData(tuning, test, tuning_images)


def _instances(
    policy: str,
    bank: CacheBank,
    candidates,
    planning: PlanningData,
    profile: Profile,
    planner: ml_collections.ConfigDict,
    grid: int,
    logits_cache: dict | None = None,
) -> tuple[Instance, Instance]:
    kw = dict(
        eps=float(planner.eps),
        budget_bytes=float(planner.memory_budget_bytes),
        confidence=float(planner.confidence),
        logits_cache=logits_cache,
        max_miss_overhead=miss_bound_of(planner),
    )
    tuning = build_instance(policy, bank, candidates, planning.tuning, profile, grid=grid, **kw)
    grids = {o.key: o.grid for opts in tuning.options for o in opts}
    test = build_instance(policy, bank, candidates, planning.test, profile, grid=grids, **kw)
    return tuning, test


def build_policy_instances(
    bank: CacheBank,
    candidates,
    planning: PlanningData,
    profile: Profile,
    planner: ml_collections.ConfigDict,
) -> dict[str, tuple[Instance, Instance]]:
    """(tuning, test) instances of every policy in :data:`METHODS`."""
    logits: dict = {}  # the three policies score the same predictors on the same requests
    instances = {
        p: _instances(p, bank, candidates, planning, profile, planner, int(planner.grid), logits)
        for p in ("gati", "confidence", "entropy")
    }
    # apparate's ramps score like confidence: the same instances, not a second computation.
    instances["apparate"] = instances["confidence"]
    return instances


def knn_setup(
    config: ml_collections.ConfigDict, model: BaseModel, bank: CacheBank, dataset: data.Dataset
) -> tuple[dict[int, dict[str, np.ndarray]], KnnHead]:
    """The kNN baseline's stores: train-split activations (never the requests it is tuned or
    tested on) with the base answers, one store per explored position."""
    policy = config.policy
    positions = tuple(int(p) for p in bank.info["positions"])
    factors = {int(p): int(f) for p, f in bank.info["pool_factors"].items()}
    capacity = min(int(policy.knn_capacity), len(dataset.train.labels))
    store_data = record_activations(
        model,
        dataset.train.images[:capacity],
        dataset.train.labels[:capacity],
        positions=positions,
        pool_factors=factors,
        desc="recording kNN stores",
    )
    head = KnnHead(int(policy.knn_grid), int(policy.knn_neighbours))
    return knn_stores(store_data, positions, capacity, head.grid), head


def knn_instances(
    stores: dict[int, dict[str, np.ndarray]],
    head: KnnHead,
    planning: PlanningData,
    profile: Profile,
    planner: ml_collections.ConfigDict,
) -> tuple[Instance, Instance]:
    """(tuning, test) instances of the kNN policy; the test one shares the tuned grids."""
    kw = dict(
        eps=float(planner.eps),
        budget_bytes=float(planner.memory_budget_bytes),
        confidence=float(planner.confidence),
        max_miss_overhead=miss_bound_of(planner),
    )
    tuning = build_knn_instance(
        stores, planning.tuning, profile, head, grid=int(planner.grid), **kw
    )
    grids = {o.key: o.grid for opts in tuning.options for o in opts}
    return tuning, build_knn_instance(stores, planning.test, profile, head, grid=grids, **kw)


def _per_pair(
    instances: dict[str, tuple[Instance, Instance]], fn: Callable[[str, Instance], Instance]
) -> dict[str, tuple[Instance, Instance]]:
    """``fn(policy, instance)`` on every (tuning, test) pair, once per pair: policies that
    share a pair (apparate shares confidence's) share the new one too."""
    fresh: dict[int, tuple[Instance, Instance]] = {}
    for policy, pair in instances.items():
        if id(pair) not in fresh:
            fresh[id(pair)] = (fn(policy, pair[0]), fn(policy, pair[1]))
    return {policy: fresh[id(pair)] for policy, pair in instances.items()}


def miss_bound_of(planner: ml_collections.ConfigDict) -> float:
    """``planner.max_miss_overhead`` as an instance takes it (negative: none, inf)."""
    bound = float(planner.max_miss_overhead)
    return bound if bound >= 0 else float("inf")


def _search(
    method: str, instance: Instance, starts: list, planner: ml_collections.ConfigDict
) -> list:
    if method == "joint":
        return search.joint(instance, starts=starts)
    if method == "apparate":
        return apparate.plan(
            instance, int(planner.apparate_ramps), float(planner.apparate_tail_budget)
        )
    return search.METHODS[method](instance)


def run_methods(
    instances: dict[str, tuple[Instance, Instance]],
    eps: float,
    planner: ml_collections.ConfigDict,
    methods: Sequence[tuple[str, str]] = METHODS,
) -> list[Plan]:
    """Every (policy, method) of ``methods`` at one eps, in that order; ours is seeded with
    the comparators' plans, and gati's also with every threshold policy's plan over the same
    predictors (search.translate). ``planner``: the config section (Apparate's ramp and tail
    budgets)."""
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown (policy, method) pairs {sorted(unknown)}; known: {METHODS}")
    plans: dict[tuple[str, str], Plan] = {}
    choices: dict[tuple[str, str], list] = {}
    fraction = float(planner.certify_fraction)
    at_eps = {
        policy: tuple(dataclasses.replace(i, eps=eps) for i in pair)
        for policy, pair in instances.items()
        if policy in {p for p, _ in methods}
    }
    # The search sees part of the tuning requests and its plan is certified on the rest
    # (planner/certify.py): one split, the same for every policy, each policy's parts made
    # once for all its methods.
    parts: dict[str, tuple[Instance, Instance]] = {}
    if fraction > 0:
        # Every policy's instances hold the same tuning requests (one recording).
        split = certify.split_requests(next(iter(at_eps.values()))[0].num_requests, fraction)
        parts = {
            policy: tuple(certify.subset(tuning, index) for index in split)
            for policy, (tuning, _) in at_eps.items()
        }
    # Comparators first, then ours; gati's joint search last, after every threshold plan.
    order = sorted(methods, key=lambda m: (m[1] == "joint", m[0] == "gati"))
    for policy, method in order:
        tuning, test = at_eps[policy]
        # "independent" stays as searched: it shows what calibrating each cache alone does
        # to the bound.
        held = None
        searched = tuning
        if parts and method != "independent":
            searched, held = parts[policy]
        # apparate's ramps are confidence caches: the two share their instance and starts.
        same = {
            policy,
            *(("confidence", "apparate") if policy in ("confidence", "apparate") else ()),
        }
        starts = [c for (p, m), c in choices.items() if p in same] if method == "joint" else []
        if policy == "gati" and method == "joint":
            for (p, _), found in choices.items():
                if p in search.THRESHOLD_KIND:
                    # The source's bound plays no part: scores and positions do.
                    start = search.translate(
                        instances[p][0], found, tuning, search.THRESHOLD_KIND[p]
                    )
                    if start is not None:
                        starts.append(start)
        found = _search(method, searched, starts, planner)
        certificate = None
        if held is not None:
            certificate = certify.certify(held, found)
            found = certificate.choices
        choices[(policy, method)] = found
        plan = plan_from_choices(tuning, found, policy, method, test)
        if certificate is not None:
            # Feasible means certified: the held-out requests, not the searched ones, judge
            # the bound (the memory budget and the miss bound as before).
            certified = certificate.errors <= certificate.budget and tuning.fits(found)
            plan = dataclasses.replace(
                plan,
                tuning=plan.tuning | {"feasible": bool(certified)},
                settings=plan.settings | {"certificate": certificate.to_json()},
            )
        plans[(policy, method)] = plan
    return [plans[m] for m in methods]


def chosen_lookups(plans: Sequence[Plan]) -> list[str]:
    """Profile keys of the lookups our (joint) plans deploy, every policy's."""
    keys = []
    for plan in plans:
        if plan.method == "joint":
            kind = "knn" if plan.policy == "knn" else lookup_kind(plan.policy)
            keys += [f"{kind}/{candidate}" for candidate in plan.candidates]
    return sorted(set(keys))


def charge_routers(plans: Sequence[Plan], profile: Profile) -> dict[str, list[str]]:
    """Per lookup kind, the lookups of the first of our (joint) plans of that kind that
    deploys two or more, where the profile's charges were measured on other lookups."""
    routers: dict[str, list[str]] = {}
    for plan in plans:
        kind = "knn" if plan.policy == "knn" else lookup_kind(plan.policy)
        keys = sorted(f"{kind}/{candidate}" for candidate in plan.candidates)
        if plan.method == "joint" and len(keys) >= 2 and kind not in routers:
            routers[kind] = keys
    return {
        kind: keys
        for kind, keys in routers.items()
        if keys != sorted(profile.charge_from.get(kind, []))
    }


def plan_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """What plans depend on besides the bank: a saved plan.json is reused only if these match."""
    return {
        "planner": {
            k: v
            for k, v in config.planner.to_dict().items()
            if k not in ("check_requests", "remeasure", "profile")
        },
        "knn": {k: config.policy[k] for k in ("knn_capacity", "knn_grid", "knn_neighbours")},
        "checkpoint": str(config.caches.checkpoint),
    }


def _row(plan: Plan) -> dict[str, Any]:
    t, s = plan.tuning, plan.test
    return {
        "policy": plan.policy,
        "method": "ours" if plan.method == "joint" else plan.method,
        "positions": ",".join(map(str, plan.positions)) or "-",
        "pred_ms": t["mean_latency_ms"],
        "speedup": t["speedup"],
        "agreement": t["agreement"],
        "test_agreement": s["agreement"],
        "test_acc_drop": s["accuracy_drop"],
        "memory_kb": t["memory_bytes"] / 1024,
        "miss_overhead": t["miss_overhead"],
        "feasible": t["feasible"],
    }


def tuning_size(validation_size: int) -> int:
    """Tuning requests the planner gets from a validation split of this size (its second
    half; the first trains the selectors)."""
    return validation_size - validation_size // 2


def certifying_size(planner: ml_collections.ConfigDict, validation_size: int) -> int:
    """Tuning requests that certify a plan: the held-out part when plans are certified
    (``planner.certify_fraction``), else all of them."""
    tuning = tuning_size(validation_size)
    fraction = float(planner.certify_fraction)
    return certify.held_out_size(tuning, fraction) if fraction > 0 else tuning


def check_bound_reachable(planner: ml_collections.ConfigDict, validation_size: int) -> Feasibility:
    """Stops with one clear message when the tuning set cannot certify the bound (unless
    ``planner.allow_infeasible``): planning on it would deploy nothing, silently."""
    feasibility = check_feasibility(
        certifying_size(planner, validation_size), float(planner.eps), float(planner.confidence)
    )
    if not feasibility.feasible:
        if not planner.allow_infeasible:
            raise ConfigError(feasibility.message())
        logging.warning(feasibility.message())
    return feasibility


@dataclasses.dataclass(frozen=True)
class _Inputs:
    """What the planning phases share: the network, its bank, the recorded requests, the
    candidates, the kNN stores and the lookups' profile (updated in place as it is confirmed)."""

    model: BaseModel
    bank: CacheBank
    feasibility: Feasibility
    planning: PlanningData
    candidates: list[Candidate]
    stores: dict[int, dict[str, np.ndarray]]
    head: KnnHead
    lookups: dict[str, tuple[int, Any, Any, str]]
    profile: Profile
    profile_path: str | Path


def _load_inputs(config: ml_collections.ConfigDict, workdir: Path, bank_dir: str | None) -> _Inputs:
    """Loads the network, bank and data, records the requests, profiles the lookups."""
    planner = config.planner
    model = load_base_model(config.caches.checkpoint)
    bank = load_bank(bank_dir or workdir / "cache_bank", model)  # made for this network
    dataset = data.load_dataset(model_data_config(model, config.data.data_dir))
    feasibility = check_bound_reachable(planner, len(dataset.validation.labels))
    planning = record_planning_data(
        model, dataset, bank, int(config.caches.test_examples), int(config.caches.record_batch_size)
    )
    candidates = plan_candidates(bank, planner.candidates)
    stores, head = knn_setup(config, model, bank, dataset)
    profile_path = planner.profile or workdir / "profile.json"
    # One lookup kind each: gati's, and the threshold policies' (lookup_kind).
    kinds = ("gati", "confidence")
    lookups = candidate_lookups(bank, candidates, kinds) | knn_lookups(stores, head)
    profile = load_or_measure(
        profile_path,
        model,
        lookups,
        int(planner.group_size),
        int(planner.latency_repeats),
        bool(planner.remeasure),
        candidate_programs(candidates, kinds),
        int(planner.timings_per_program),
    )
    return _Inputs(
        model, bank, feasibility, planning, candidates, stores, head, lookups, profile, profile_path
    )


def _plan_all(
    inputs: _Inputs,
    planner: ml_collections.ConfigDict,
    instances: dict[str, tuple[Instance, Instance]] | None = None,
) -> tuple[dict[str, tuple[Instance, Instance]], list[Plan]]:
    """Every policy's instances (built, or repriced when only the profile changed) and plans."""
    if instances is None:
        instances = build_policy_instances(
            inputs.bank, inputs.candidates, inputs.planning, inputs.profile, planner
        )
        instances["knn"] = knn_instances(
            inputs.stores, inputs.head, inputs.planning, inputs.profile, planner
        )
    else:  # the profile changed, the requests did not
        instances = _per_pair(
            instances,
            lambda policy, i: reprice(
                i, inputs.profile, "knn" if policy == "knn" else lookup_kind(policy)
            ),
        )
    return instances, run_methods(instances, float(planner.eps), planner)


def _confirm_chosen_costs(
    inputs: _Inputs,
    planner: ml_collections.ConfigDict,
    instances: dict[str, tuple[Instance, Instance]],
    plans: list[Plan],
) -> tuple[dict[str, tuple[Instance, Instance]], list[Plan]]:
    """Measures the chosen lookups and routers again and plans again (``planner.confirm_rounds``
    times at most, fewer once every chosen cost is confirmed)."""
    # The winner's curse: plans favour lookups measured low. Until every lookup our plans
    # chose has a measurement taken after the choice, measure those again, measure the
    # router's charges on the router a plan chose (they depend on which caches share it),
    # and plan again.
    profile, lookups = inputs.profile, inputs.lookups
    group, repeats = int(planner.group_size), int(planner.latency_repeats)
    for _ in range(int(planner.confirm_rounds)):
        todo = {
            key: lookups[key] for key in chosen_lookups(plans) if not profile.confirmed.get(key)
        }
        routers = charge_routers(plans, profile)
        if not todo and not routers:
            break
        if todo:
            confirm_lookups(inputs.model, profile, todo, group, repeats)
        for kind, keys in routers.items():
            record_router_charge(
                profile, inputs.model, kind, {k: lookups[k] for k in keys}, group, repeats
            )
        save_profile(inputs.profile_path, profile)
        instances, plans = _plan_all(inputs, planner, instances)
    return instances, plans


# Timing rounds per profile repeat of a lookup timed alone under the miss bound (a plan's own
# all-miss request gets 5): between planning runs a lookup's alone timing moves more with how
# its compiled program happens to run than with the count of calls (docs/planning.md, "What
# timing costs"), and the plans these timings admit are timed whole, at full length, before
# the bound is said to hold. On a deep network the scout times dozens of lookups alone, so
# each round is a large share of planning.
ALONE_ROUNDS = 1
# Rounds per profile repeat of the comparators' plans, timed whole in one batch: the figure
# that holds each comparator to its bound when it is within it, so it keeps more rounds than
# a lookup alone (ours gets 5 per repeat; a few plans, not dozens of lookups).
COMPARATOR_ROUNDS = 2


def _miss_timers(
    inputs: _Inputs, planner: ml_collections.ConfigDict, policy: str, method: str
) -> tuple[Callable[[Instance, list], float], Callable[[Instance, list], list[float]]]:
    """What a miss bound on ``policy``'s plans times (planner/miss_bound.py): a plan's all-miss
    request (5 rounds per profile repeat) and, in one batch, each ``(i, choice)`` of a list as
    a one-cache router (:data:`ALONE_ROUNDS`)."""
    model, bank = inputs.model, inputs.bank
    group, repeats = int(planner.group_size), int(planner.latency_repeats)

    def deployment_of(instance: Instance, choices: list) -> Deployment:
        return plan_deployment(plan_from_choices(instance, choices, policy, method), bank)

    def measure(instance: Instance, choices: list) -> float:
        return measure_miss_overheads(
            model, [deployment_of(instance, choices)], group, 5 * repeats
        )[0]

    def measure_alone(instance: Instance, items: list) -> list[float]:
        n = len(instance.positions)
        only = [[c if j == i else None for j in range(n)] for i, c in items]
        return measure_miss_overheads(
            model, [deployment_of(instance, o) for o in only], group, ALONE_ROUNDS * repeats
        )

    return measure, measure_alone


def _hold_miss_bound(
    inputs: _Inputs,
    planner: ml_collections.ConfigDict,
    instances: dict[str, tuple[Instance, Instance]],
    plans: list[Plan],
) -> tuple[dict[str, tuple[Instance, Instance]], list[Plan], list[MissRound], bool]:
    """Holds the miss bound by measuring the chosen plan (planner/miss_bound.py); returns the
    instances and plans it ended with, its rounds and whether the bound held."""
    # Without a bound the chosen plan's all-miss overhead is measured once, for the record.

    def plan_with_floors(floors: MissFloors) -> tuple[Instance, list]:
        nonlocal instances, plans
        if floors != instances["gati"][0].miss_floors:
            # Every policy's lookups get the floors measured on ours (those of the same
            # candidate; the rest are untimed): the comparators' plans are held
            # to the same bound (their one-lookup costs were profiled alike).
            instances = _per_pair(
                instances, lambda policy, i: dataclasses.replace(i, miss_floors=floors)
            )
            plans = run_methods(instances, float(planner.eps), planner)
        return instances["gati"][0], _choices_of(plans[0], instances["gati"][0])

    def deploy_nothing() -> tuple[Instance, list]:
        # No measured plan held the bound: ours deploys nothing (the comparators keep theirs).
        tuning, test = instances["gati"]
        plans[0] = plan_from_choices(tuning, tuning.empty(), "gati", "joint", test)
        return tuning, tuning.empty()

    measure_misses, measure_alone = _miss_timers(inputs, planner, "gati", "joint")

    def unbounded() -> tuple[Instance, list, list]:
        # The plan without the bound, and at every position the option with the fewest
        # parameter bytes (the cheap lookups a bound would keep, whose timings also cap the
        # router's charges): about 2 s of timing each.
        tuning = dataclasses.replace(instances["gati"][0], max_miss_overhead=float("inf"))
        smallest = [
            min(range(len(opts)), key=lambda o: opts[o].nbytes) if opts else None
            for opts in tuning.options
        ]
        return (
            tuning,
            search.joint(tuning),
            [
                None if o is None else (o, float(tuning.options[i][o].grid[0]))
                for i, o in enumerate(smallest)
            ],
        )

    bound = miss_bound_of(planner)
    miss_rounds, within = hold_miss_bound(
        plan_with_floors,
        measure_misses,
        measure_alone,
        bound,
        int(planner.miss_rounds) if np.isfinite(bound) else 0,
        deploy_nothing,
        scout=unbounded,
    )
    return instances, plans, miss_rounds, within


def _miss_check(
    planner: ml_collections.ConfigDict, miss_rounds: list[MissRound], within: bool
) -> dict[str, Any]:
    """plan.json's miss check of our plan: the bound and its rounds."""
    bound = miss_bound_of(planner)
    return {
        "bound": bound if np.isfinite(bound) else None,
        "within_bound": within,
        "predicted": miss_rounds[-1].predicted,
        "measured": miss_rounds[-1].measured,
        "rounds": [r.to_json() for r in miss_rounds],
    }


# The comparators served beside ours, each held to its own miss bound by measurement.
HELD_COMPARATORS = (("confidence", "joint"), ("entropy", "joint"), ("apparate", "apparate"))


def comparator_bound(policy: str, tuning: Instance, planner: ml_collections.ConfigDict) -> float:
    """The all-miss overhead a comparator's plan may measure: the miss bound, and for
    apparate also its tail budget beyond the router's fixed charge (planner/apparate.py)."""
    if policy == "apparate":
        return apparate.bounded(tuning, float(planner.apparate_tail_budget)).max_miss_overhead
    return tuning.max_miss_overhead


def _hold_comparators(
    inputs: _Inputs,
    planner: ml_collections.ConfigDict,
    instances: dict[str, tuple[Instance, Instance]],
    plans: list[Plan],
) -> tuple[dict[str, tuple[Instance, Instance]], list[Plan], dict[str, Any]]:
    """Times every comparator's plan on a miss (one batch) and holds each over its bound
    (:func:`comparator_bound`) as ours is held (:func:`_hold_comparator`). Returns the
    instances and plans it ended with and each comparator's record."""
    # A profile that undercharges lookups lets a comparator's plan break its bound where
    # ours, held by measurement, cannot: Apparate's tail budget, held by the cost model
    # alone, was broken twice over on a miss. Apparate measures the ramps it places; so do we.
    plans = list(plans)
    index = {m: k for k, m in enumerate(METHODS)}
    first = measure_miss_overheads(
        inputs.model,
        [plan_deployment(plans[index[m]], inputs.bank) for m in HELD_COMPARATORS],
        int(planner.group_size),
        COMPARATOR_ROUNDS * int(planner.latency_repeats),
    )
    record: dict[str, Any] = {}
    for (policy, method), measured in zip(HELD_COMPARATORS, first):
        instances, plans[index[(policy, method)]], record[policy] = _hold_comparator(
            inputs, planner, instances, plans[index[(policy, method)]], measured
        )
    return instances, plans, record


def _hold_comparator(
    inputs: _Inputs,
    planner: ml_collections.ConfigDict,
    instances: dict[str, tuple[Instance, Instance]],
    plan: Plan,
    measured: float,
) -> tuple[dict[str, tuple[Instance, Instance]], Plan, dict[str, Any]]:
    """One comparator's ``plan``, timed ``measured`` on a miss, held to its bound: while over
    it, its lookups (apparate: every candidate ramp) are timed alone, its floors raised (from
    those ours ended with) and that policy alone planned again; when rounds run out it deploys
    nothing. Returns the instances, its plan and its record."""
    policy, method = plan.policy, plan.method
    tuning0 = instances[policy][0]
    choices0 = _choices_of(plan, tuning0)
    bound = comparator_bound(policy, tuning0, planner)

    measure_plan, measure_alone = _miss_timers(inputs, planner, policy, method)

    def measure(instance: Instance, choices: list) -> float:
        if instance is tuning0 and choices == choices0:
            return measured  # timed in the comparators' batch
        return measure_plan(instance, choices)

    def replan(floors: MissFloors) -> tuple[Instance, list]:
        nonlocal instances, plan
        if floors == tuning0.miss_floors:
            return tuning0, choices0
        # Its own pair from now on (apparate's was confidence's): the floors are its own.
        pair = tuple(dataclasses.replace(i, miss_floors=floors) for i in instances[policy])
        instances = {**instances, policy: pair}
        (plan,) = run_methods(instances, float(planner.eps), planner, [(policy, method)])
        return pair[0], _choices_of(plan, pair[0])

    def nothing() -> tuple[Instance, list]:
        nonlocal plan
        tuning, test = instances[policy]
        plan = plan_from_choices(tuning, tuning.empty(), policy, method, test)
        return tuning, tuning.empty()

    def ramps(instance: Instance) -> list:
        # Every ramp Apparate could place, so that it places among measured ones.
        found = apparate.candidate_ramps(instance)
        return [
            (found[i], float(instance.options[i][found[i]].grid[0])) if i in found else None
            for i in range(len(instance.positions))
        ]

    rounds, within = hold_miss_bound(
        replan,
        measure,
        measure_alone,
        bound,
        int(planner.miss_rounds) if np.isfinite(bound) else 0,
        nothing,
        start=tuning0.miss_floors,
        also_time=ramps if policy == "apparate" else None,
    )
    return (
        instances,
        plan,
        {
            "positions": list(plan.positions),
            "predicted": plan.tuning["miss_overhead"],
            "measured": rounds[-1].measured,
            "bound": bound if np.isfinite(bound) else None,
            "within_bound": within,
            "rounds": [r.to_json() for r in rounds],
        },
    )


def _sibling(bank: CacheBank, key: str, kind: str) -> Candidate | None:
    """The bank's candidate with ``key``'s predictor and the selector kind ``kind``."""
    found = split_key(key)
    if found is None:
        return None
    return next((c for c in bank.candidates if split_key(c.key) == (found[0], kind)), None)


def _measured_choice(
    inputs: _Inputs,
    planner: ml_collections.ConfigDict,
    instances: dict[str, tuple[Instance, Instance]],
    plans: list[Plan],
    comparators: dict[str, Any],
) -> tuple[dict[str, tuple[Instance, Instance]], list[Plan], dict[str, Any]]:
    """Ours against every threshold policy's plan that is feasible, held its miss bound and is
    predicted within ``planner.choice_margin`` of ours, each as a gati plan: its predictors
    under the selector kind of its score (search.translate: the same exits, so the same
    certificate). All route the check requests side by side (cost_check.route_times) and the
    fastest becomes gati's plan (ours on a tie). Returns the instances, plans and record."""
    # The cost model's error (several percent of the plain network) exceeds the gap between
    # such plans: ours, predicted 5% ahead of confidence's, served 2-6% behind it.
    margin = float(planner.choice_margin)
    bank, profile = inputs.bank, inputs.profile
    plans = list(plans)
    record: dict[str, Any] = {"margin": margin, "chosen": "gati", "candidates": {}}
    index = {m: k for k, m in enumerate(METHODS)}
    limit = (1 + margin) * plans[0].tuning["mean_latency_ms"]
    rivals: dict[str, tuple[Plan, list[Candidate]]] = {}
    for policy, method in HELD_COMPARATORS if margin > 0 else ():
        plan = plans[index[(policy, method)]]
        fits = plan.tuning["feasible"] and comparators[policy]["within_bound"]
        if not fits or plan.tuning["mean_latency_ms"] > limit:
            continue
        siblings = [_sibling(bank, key, search.THRESHOLD_KIND[policy]) for key in plan.candidates]
        if all(c is not None for c in siblings):
            rivals[policy] = (plan, siblings)
    if not rivals:
        return instances, plans, record
    tuning, test = instances["gati"]
    # gati's design space holds every threshold plan, but its frontier may lack a predictor's
    # fixed selector kinds: those join an instance of their own, their lookups profiled.
    known = {c.key for c in inputs.candidates}
    extra = list({c.key: c for _, cs in rivals.values() for c in cs if c.key not in known}.values())
    if extra:
        group, repeats = int(planner.group_size), int(planner.latency_repeats)
        new = {
            key: lookup
            for key, lookup in candidate_lookups(bank, extra, ("gati",)).items()
            if key not in profile.lookup_s
        }
        if new:
            record_lookups(profile, measure_lookups(inputs.model, new, group, repeats))
            save_profile(inputs.profile_path, profile)
        pair = _instances(
            "gati",
            bank,
            [*inputs.candidates, *extra],
            inputs.planning,
            profile,
            planner,
            int(planner.grid),
        )
        tuning, test = (dataclasses.replace(i, miss_floors=tuning.miss_floors) for i in pair)
    # Their all-miss requests were timed when they were held: the model's miss bound, which
    # has no floors for the new lookups, is not theirs to meet.
    free = dataclasses.replace(tuning, max_miss_overhead=float("inf"))
    choices = {"gati": _choices_of(plans[0], tuning)}
    for policy, (plan, _) in rivals.items():
        source = instances[policy][0]
        found = search.translate(
            source, _choices_of(plan, source), tuning, search.THRESHOLD_KIND[policy]
        )
        if found is not None and free.fits(found) and found not in choices.values():
            choices[policy] = found
    if len(choices) < 2:
        return instances, plans, record
    n = min(int(planner.check_requests), tuning.num_requests)
    requests = [jnp.asarray(image[None]) for image in inputs.planning.tuning_images[:n]]
    as_gati = {
        name: plan_from_choices(tuning, found, "gati", "joint", test)
        for name, found in choices.items()
    }
    times = route_times(
        {
            name: router_program(inputs.model, plan_deployment(plan, bank))
            for name, plan in as_gati.items()
        },
        requests,
    )
    measured = {name: float(t.mean()) for name, t in times.items()}
    chosen = min(measured, key=lambda name: (measured[name], name != "gati"))
    record["chosen"] = chosen
    record["candidates"] = {
        name: {
            "positions": list(as_gati[name].positions),
            "candidates": list(as_gati[name].candidates),
            # each by its own policy's instance
            "predicted_ms": (plans[0] if name == "gati" else rivals[name][0]).tuning[
                "mean_latency_ms"
            ],
            "measured_ms": 1e3 * measured[name],
        }
        for name in choices
    }
    if chosen != "gati":
        source, plan = rivals[chosen][0], as_gati[chosen]
        instances = {**instances, "gati": (tuning, test)}
        # Its predicted figures are the comparator's: the same exits, and lookups that cost
        # what the comparator's do (XLA's kernel profile reads them alike), where gati's
        # instance prices the fixed kinds the frontier left out by one late timing of each
        # and its floors, keyed by candidate, never timed them on a miss.
        plans[0] = dataclasses.replace(
            plan,
            tuning=dict(source.tuning),
            settings=plan.settings
            | {"certificate": source.settings.get("certificate"), "measured_choice": chosen},
        )
    return instances, plans, record


def _exhaustive_check(inputs: _Inputs, planner: ml_collections.ConfigDict) -> dict[str, Any]:
    """Ours against exhaustive search on a small instance: evenly spaced positions, each
    position's best candidate, a coarse grid."""
    bank = inputs.bank
    positions = bank.info["positions"]
    count = min(int(planner.exhaustive_positions), len(positions))
    subset = sorted({positions[int(round(i))] for i in np.linspace(0, len(positions) - 1, count)})
    small_tuning, _ = _instances(
        "gati",
        bank,
        # Among the candidates the profile timed: the fastest of equal hit rates can be a
        # selector kind of a predictor off the frontier.
        [bank.best(p, among=inputs.candidates) for p in subset],
        inputs.planning,
        inputs.profile,
        planner,
        int(planner.exhaustive_grid),
    )
    exhaustive = search.exhaustive(small_tuning)
    ours_small = search.joint(small_tuning)
    small = {
        "positions": subset,
        "grid": int(planner.exhaustive_grid),
        "exhaustive_ms": 1e3 * float(simulate(small_tuning, exhaustive).mean_cost_s),
        "ours_ms": 1e3 * float(simulate(small_tuning, ours_small).mean_cost_s),
    }
    small["ours/exhaustive"] = small["ours_ms"] / small["exhaustive_ms"]
    return small


def _cost_check(
    inputs: _Inputs,
    planner: ml_collections.ConfigDict,
    chosen: Plan,
    instance: Instance,
    choices: list,
    policy: str,
) -> dict[str, Any]:
    """The chosen plan routed request by request against the cost model's prediction on
    ``instance`` (``policy``'s, where ``choices`` are the chosen plan's exits)."""
    n_check = min(int(planner.check_requests), instance.num_requests)
    fresh = remeasured(
        inputs.model,
        instance,
        choices,
        inputs.bank,
        policy,
        int(planner.group_size),
        int(planner.latency_repeats),
    )
    return check_cost_model(
        inputs.model,
        plan_deployment(chosen, inputs.bank),
        instance,
        choices,
        inputs.planning.tuning_images[:n_check],
        fresh=fresh,
    )


def _sweep(
    instances: dict[str, tuple[Instance, Instance]],
    plans: list[Plan],
    planner: ml_collections.ConfigDict,
) -> list[dict[str, Any]]:
    """Every method's table row at each swept eps (the plans at ``planner.eps`` as made)."""
    sweep = []
    for eps in sorted(set(float(e) for e in planner.sweep_eps) | {float(planner.eps)}):
        for plan in plans if eps == float(planner.eps) else run_methods(instances, eps, planner):
            sweep.append({"eps": eps, **_row(plan)})
    return sweep


def _log_results(
    result: dict[str, Any],
    planner: ml_collections.ConfigDict,
    instances: dict[str, tuple[Instance, Instance]],
    miss_rounds: list[MissRound],
    workdir: Path,
) -> None:
    """Logs the tables and checks that plan.json records."""
    sweep, small, check = result["sweep"], result["exhaustive_check"], result["cost_check"]
    bound, within = miss_bound_of(planner), result["miss_check"]["within_bound"]
    logging.info(
        f"eps={planner.eps}, memory budget {planner.memory_budget_bytes} bytes, tuned on "
        f"{instances['gati'][0].num_requests} validation requests, tested on "
        f"{instances['gati'][1].num_requests} test requests ({result['profile']})"
    )
    logging.info(format_table(result["table"]))
    for eps in sorted({r["eps"] for r in sweep} - {float(planner.eps)}):
        logging.info(f"\neps={eps}:")
        logging.info(
            format_table(
                [{k: v for k, v in r.items() if k != "eps"} for r in sweep if r["eps"] == eps]
            )
        )
    logging.info(
        f"\nours vs exhaustive on positions {small['positions']}, grid {small['grid']}: "
        f"{small['ours_ms']:.4f} ms vs {small['exhaustive_ms']:.4f} ms "
        f"(ratio {small['ours/exhaustive']:.4f})"
    )
    logging.info(
        f"cost model on {check['requests']} validation requests routed one by one: "
        f"predicted {check['predicted_mean_ms']:.3f} ms, measured "
        f"{check['measured_mean_ms']:.3f} ms (plain network: profiled "
        f"{check['plain_profiled_ms']:.3f} ms, measured now {check['plain_measured_ms']:.3f} "
        f"ms); speedup vs plain predicted {check['predicted_speedup']:.2f}x, measured "
        f"{check['measured_speedup']:.2f}x: error in units of the plain network "
        f"{100 * check['normalized_error']:+.1f}% "
        f"({'within' if check['within_10pct'] else 'NOT within'} 10%); same exit as "
        f"predicted for {100 * check['same_exit_fraction']:.1f}% of requests"
    )
    logging.info(
        f"the same model with the plan's costs measured again just before the check: "
        f"predicted {check['remeasured_predicted_mean_ms']:.3f} ms (plain "
        f"{check['remeasured_plain_ms']:.3f} ms), speedup "
        f"{check['remeasured_predicted_speedup']:.2f}x: error "
        f"{100 * check['remeasured_normalized_error']:+.1f}% "
        f"({'within' if check['remeasured_within_10pct'] else 'NOT within'} 10%)"
    )
    for r in miss_rounds:
        floors = ", ".join(f"{p}: {1e6 * f:.0f} us" for p, f in zip(r.positions, r.floors_s))
        alone = ", ".join(
            f"{'/'.join(k.split('/')[:2])} {100 * v:+.1f}%" for k, v in r.alone.items()
        )
        logging.info(
            ("without the bound (not deployed): " if r.scout else "")
            + f"a request missing every lookup of positions {r.positions or '(none)'} "
            f"(floors {floors or 'none'}): predicted {100 * r.predicted:+.1f}%, measured "
            f"{100 * r.measured:+.1f}% over the plain network"
            + (f"; its lookups alone: {alone}" if alone else "")
            + (f"; they cost more together: +{1e6 * r.shared_s:.0f} us each" if r.shared_s else "")
        )
    if np.isfinite(bound):
        logging.info(
            f"miss bound {100 * bound:.1f}%: {'held' if within else 'NOT held'} by the "
            f"deployed plan ({len(miss_rounds)} plan(s) measured)"
        )
    for policy, c in result["miss_check"]["comparators"].items():
        bound = "no bound" if c["bound"] is None else f"bound {100 * c['bound']:.1f}%"
        logging.info(
            f"{policy}: positions {tuple(c['positions']) or '(none)'}, predicted "
            f"{100 * c['predicted']:+.1f}%, measured {100 * c['measured']:+.1f}% on a miss "
            f"({bound}, {'held' if c['within_bound'] else 'NOT held'}; "
            f"{len(c['rounds'])} plan(s) measured)"
        )
    choice = result["measured_choice"]
    if choice["candidates"]:
        logging.info(
            "gati's plan against threshold plans over the same predictors, routed side by "
            "side on the check requests: "
            + ", ".join(
                f"{name} {tuple(c['positions']) or '(none)'} predicted {c['predicted_ms']:.3f} "
                f"ms, measured {c['measured_ms']:.3f} ms"
                for name, c in choice["candidates"].items()
            )
            + f"; deployed as gati: {choice['chosen']}'s"
        )
    logging.info("per predicted exit position, mean cost in units of the plain network:")
    logging.info(format_table(check["by_exit"]))
    logging.info(
        f"wrote {workdir / 'plan.json'}, {workdir / 'plan'} and "
        f"{workdir / 'plan_tradeoff.png'} in {result['seconds']} s ("
        + ", ".join(
            f"{name} {seconds} s (compiling {result['step_compile_seconds'][name]} s)"
            for name, seconds in result["step_seconds"].items()
        )
        + "; {count} programs compiled again were loaded, {compile_seconds_saved:.1f} s of "
        "compiling saved)".format(**result["programs_loaded"])
    )


def run_planning(
    config: ml_collections.ConfigDict, workdir: str, bank_dir: str | None = None
) -> dict[str, Any]:
    """Plans caches for every method, checks the cost model, saves the plan, prints tables."""
    validate_config(config)
    planner = config.planner
    started = time.time()
    workdir_path = Path(workdir).absolute()
    workdir_path.mkdir(parents=True, exist_ok=True)
    clock = StepClock()  # seconds of each step, for plan.json and the log
    step = clock.run

    inputs = step("inputs", _load_inputs, config, workdir_path, bank_dir)
    instances, plans = step("search", _plan_all, inputs, planner)
    instances, plans = step("confirm", _confirm_chosen_costs, inputs, planner, instances, plans)
    instances, plans, miss_rounds, within = step(
        "miss_bound", _hold_miss_bound, inputs, planner, instances, plans
    )
    instances, plans, comparators = step(
        "comparators", _hold_comparators, inputs, planner, instances, plans
    )
    miss_check = _miss_check(planner, miss_rounds, within) | {"comparators": comparators}
    instances, plans, choice = step(
        "measured_choice", _measured_choice, inputs, planner, instances, plans, comparators
    )
    if choice["chosen"] != "gati":
        # The deployed plan is the comparator's, whose all-miss request was timed.
        held = comparators[choice["chosen"]]
        miss_check |= {
            "predicted": plans[0].tuning["miss_overhead"],
            "measured": held["measured"],
            "within_bound": held["within_bound"],
        }
    chosen = plans[0]
    small = step("exhaustive_check", _exhaustive_check, inputs, planner)
    # A threshold plan deployed as gati's is checked against its own policy's prediction:
    # the same exits through the same predictors, and lookups that cost the same (the kernel
    # profile reads gati's fixed selector kinds and confidence's lookups alike), measured
    # with every other lookup of the profile rather than once, late, on their own.
    predictor = choice["chosen"]
    check_instance = instances[predictor][0]
    if predictor == "gati":
        check_choices = _choices_of(chosen, check_instance)
    else:
        source = next(plan for plan in plans if plan.policy == predictor)
        check_choices = _choices_of(source, check_instance)
    check = step(
        "cost_check",
        _cost_check,
        inputs,
        planner,
        chosen,
        check_instance,
        check_choices,
        predictor,
    )
    sweep = step("sweep", _sweep, instances, plans, planner)

    save_plan(workdir_path / "plan", chosen, inputs.bank)
    result = {
        "settings": plan_settings(config),
        "chosen": chosen.to_json(),
        "methods": [p.to_json() for p in plans],
        "table": [_row(p) for p in plans],
        "exhaustive_check": small,
        "cost_check": check,
        "miss_check": miss_check,
        "measured_choice": choice,
        "sweep": sweep,
        "profile": inputs.profile.key,
        # What the tuning set can certify (gati_jax/planner/feasibility.py).
        "feasibility": dataclasses.asdict(inputs.feasibility),
        # apparate-online's candidate ramps and their costs (gati_jax/online/apparate.py)
        "apparate_ramps": apparate.RampSet.from_instance(
            instances["apparate"][0],
            int(planner.apparate_ramps),
            float(planner.apparate_tail_budget),
        ).to_json(),
        "seconds": round(time.time() - started, 1),
        "step_seconds": clock.seconds,
        "step_compile_seconds": clock.compiling,
        # Programs compiled again and loaded instead (gati_jax/compilation.py).
        "programs_loaded": programs_loaded(),
    }
    (workdir_path / "plan.json").write_text(json.dumps(result, indent=1) + "\n")
    plot_plan_tradeoff(sweep, workdir_path / "plan_tradeoff.png")
    _log_results(result, planner, instances, miss_rounds, workdir_path)
    return result


def _choices_of(plan: Plan, instance: Instance) -> list:
    """The instance-level choices a plan made (inverse of plan_from_choices)."""
    choices: list = instance.empty()
    for position, key, threshold in zip(plan.positions, plan.candidates, plan.thresholds):
        i = instance.positions.index(position)
        o = [opt.key for opt in instance.options[i]].index(key)
        choices[i] = (o, policy_threshold(plan.policy, threshold))
    return choices
