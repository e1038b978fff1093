"""The planner: exact per-position tables, the bound and budget, comparators, exhaustive search."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import assert_config_rejects
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gati_jax.planner import search
from gati_jax.planner.build import reprice
from gati_jax.planner.costs import Profile
from gati_jax.planner.instance import (
    Instance,
    MissFloors,
    Option,
    max_errors,
    simulate,
    summarize_outcome,
    threshold_grid,
)
from gati_jax.planner.miss_bound import hold_miss_bound, next_floors


def random_instance(
    seed: int,
    positions: int = 4,
    options: int = 2,
    grid: int = 4,
    requests: int = 200,
    eps: float = 0.02,
    budget: float = 1e9,
    miss: float = float("inf"),
) -> Instance:
    """Caches whose scores rise with depth and whose errors fall as scores rise."""
    rng = np.random.default_rng(seed)
    prefix = np.cumsum(rng.uniform(0.1, 1.0, positions + 2))
    difficulty = rng.normal(size=requests)
    per_position = []
    for i in range(positions):
        opts = []
        for o in range(options):
            logit = rng.normal(3 * (i + 1) / (positions + 1), 1) - difficulty
            scores = 1 / (1 + np.exp(-(logit + rng.normal(0, 0.5, requests))))
            errors = rng.random(requests) < 0.5 * (1 - scores) * rng.uniform(0.1, 1)
            correct = ~errors & (rng.random(requests) < 0.95)
            opts.append(
                Option(
                    f"p{i}/v{o}/s0/lr0.01",
                    scores,
                    errors,
                    correct,
                    float(rng.uniform(0.01, 0.2)),
                    int(rng.integers(1, 100)),
                    threshold_grid(scores, grid),
                    float(rng.uniform(0.01, 0.3)) if rng.random() < 0.5 else None,
                )
            )
        per_position.append(tuple(opts))
    return Instance(
        tuple(range(positions)),
        tuple(per_position),
        prefix,
        rng.random(requests) < 0.9,
        eps,
        budget,
        router_s=float(rng.choice([0.0, rng.uniform(0.0, 0.5)])),
        # Its own stream: the other draws (and hypothesis's examples) stay put.
        deploy_s=float(np.random.default_rng(seed + 1).choice([0.0, 0.0, 0.05])),
        max_miss_overhead=miss,
    )


def _mean_cost(instance, choices):
    return simulate(instance, choices).mean_cost_s


def _feasible(instance, choices):
    return (
        simulate(instance, choices).num_errors <= instance.error_budget
        and instance.memory(choices) <= instance.budget_bytes
        and instance.miss_s(choices) <= instance.miss_budget_s * (1 + 1e-9)
    )


def test_simulate_charges_stages_up_to_the_exit_and_every_lookup_run():
    scores = np.array([0.9, 0.1, 0.1])
    later = np.array([0.0, 0.9, 0.1])
    f = np.zeros(3, bool)
    opt0 = Option(
        "p0/a/s0/lr1", scores, np.array([False, False, False]), ~f, 0.5, 10, np.array([0.5])
    )
    opt1 = Option(
        "p1/a/s0/lr1", later, np.array([False, True, False]), ~f, 0.25, 10, np.array([0.5])
    )
    inst = Instance((0, 1), ((opt0,), (opt1,)), np.array([1.0, 3.0, 6.0]), ~f, 0.5, 100)
    out = simulate(inst, [(0, 0.5), (0, 0.5)])
    # Request 0 exits at 0 (1 + 0.5), 1 at position 1 (3 + 0.75), 2 runs everything (6 + 0.75).
    np.testing.assert_allclose(out.cost_s, [1.5, 3.75, 6.75])
    np.testing.assert_array_equal(out.exit_index, [0, 1, 2])
    assert out.num_errors == 1
    summary = summarize_outcome(inst, [(0, 0.5), (0, 0.5)])
    assert summary["agreement"] == pytest.approx(2 / 3)
    assert summary["exit_fractions"] == {
        "0": pytest.approx(1 / 3),
        "1": pytest.approx(1 / 3),
        "full": pytest.approx(1 / 3),
    }
    assert summary["memory_bytes"] == 20
    # The router's charge: once per request when anything is deployed, never for no caches.
    charged = dataclasses.replace(inst, router_s=0.125)
    np.testing.assert_allclose(
        simulate(charged, [(0, 0.5), (0, 0.5)]).cost_s, [1.625, 3.875, 6.875]
    )
    np.testing.assert_allclose(simulate(charged, [None, (0, 0.5)]).cost_s, [6.375, 3.375, 6.375])
    np.testing.assert_allclose(simulate(charged, [None, None]).cost_s, [6.0, 6.0, 6.0])
    with pytest.raises(ValueError, match="router charge"):
        dataclasses.replace(inst, router_s=-0.1)
    # The per-cache charge: every request pays it for each deployed cache, even one that
    # exits before reaching it (request 0 exits at position 0 and pays for both).
    per_cache = dataclasses.replace(charged, deploy_s=0.0625)
    np.testing.assert_allclose(simulate(per_cache, [(0, 0.5), (0, 0.5)]).cost_s, [1.75, 4.0, 7.0])
    np.testing.assert_allclose(
        simulate(per_cache, [None, (0, 0.5)]).cost_s, [6.4375, 3.4375, 6.4375]
    )
    np.testing.assert_allclose(simulate(per_cache, [None, None]).cost_s, [6.0, 6.0, 6.0])
    with pytest.raises(ValueError, match="per-cache charge"):
        dataclasses.replace(inst, deploy_s=float("inf"))
    # An exit costs apart from a miss: request 0 exits at 0 (1 + 0.125), request 1 passes
    # position 0 (0.5) and exits at 1 (3 + 0.5 + 0.25), request 2 passes both.
    exits = dataclasses.replace(inst, options=((dataclasses.replace(opt0, exit_s=0.125),), (opt1,)))
    np.testing.assert_allclose(simulate(exits, [(0, 0.5), (0, 0.5)]).cost_s, [1.125, 3.75, 6.75])
    bad = dataclasses.replace(opt0, exit_s=float("nan"))
    with pytest.raises(ValueError, match="exit cost"):
        dataclasses.replace(inst, options=((bad,), (opt1,)))


def test_reprice_reads_every_cost_from_the_profile_and_keeps_the_requests():
    inst = random_instance(5)
    rng = np.random.default_rng(1)
    keys = [o.key for opts in inst.options for o in opts]
    profile = Profile(
        "cpu",
        "cpu",
        1,
        "m",
        list(np.cumsum(rng.uniform(0.1, 1.0, 6))),
        {f"gati/{k}": float(rng.uniform(0.2, 0.5)) for k in keys},
        router_s={"gati": 0.1, "knn": 0.0},
        exit_s={f"gati/{k}": float(rng.uniform(0.2, 0.5)) for k in keys[::2]},
    )
    plan = search.joint(inst)  # fills the instance's memos, which must not carry over
    new = reprice(inst, profile, "gati")
    np.testing.assert_allclose(new.prefix_s, profile.prefix_s)
    assert new.router_s == 0.1
    for opts, new_opts in zip(inst.options, new.options):
        for o, n in zip(opts, new_opts):
            key = f"gati/{o.key}"
            assert n.lookup_s == pytest.approx(profile.lookup_s[key] - 0.1)
            if o.exit_s is None:
                assert n.exit_s is None
            else:
                seconds = profile.exit_s.get(key, profile.lookup_s[key])
                assert n.exit_s == pytest.approx(seconds - 0.1)
            assert n.scores is o.scores and n.errors is o.errors and n.nbytes == o.nbytes
            np.testing.assert_array_equal(n.grid, o.grid)
    fresh = dataclasses.replace(
        new, options=tuple(tuple(dataclasses.replace(o) for o in opts) for opts in new.options)
    )
    assert search.joint(new) == search.joint(fresh)
    assert simulate(new, plan).mean_cost_s != pytest.approx(simulate(inst, plan).mean_cost_s)


def test_position_tables_are_exact():
    inst = random_instance(3, positions=4, options=2, grid=6)
    rng = np.random.default_rng(0)
    for _ in range(5):
        plan = [
            None
            if rng.random() < 0.3
            else (int(rng.integers(2)), float(rng.choice(inst.options[i][0].grid)))
            for i in range(4)
        ]
        i = int(rng.integers(4))
        table = search._position_table(inst, plan, i)
        for choice, cost, err in zip(table.choices, table.costs, table.errors):
            trial = list(plan)
            trial[i] = choice
            out = simulate(inst, trial)
            assert cost == pytest.approx(out.cost_s.sum())
            assert err == out.num_errors


@pytest.mark.parametrize("miss", [float("inf"), 0.06])
def test_a_pair_move_finds_the_best_plan_over_its_two_positions(miss):
    """Every alternative at i against every option and threshold at j, scored at once, finds
    the plan a simulation of each pair finds best (charges, memory budget and miss bound in)."""
    inst = dataclasses.replace(
        random_instance(4, positions=5, options=2, grid=5, eps=0.05, budget=200, miss=miss),
        router_s=0.02,
        deploy_s=0.01,
    )
    rng = np.random.default_rng(1)
    every = [
        [None] + [(o, float(t)) for o, opt in enumerate(opts) for t in opt.grid]
        for opts in inst.options
    ]
    for _ in range(8):
        plan = [a[rng.integers(1, len(a))] if rng.random() < 0.5 else None for a in every]
        i, j = (int(k) for k in rng.choice(5, 2, replace=False))
        tried = search._pair_alternatives(inst, i, levels=3)
        found = search._best_pair(inst, plan, i, j, tried)
        keys = []
        for a in tried:
            for b in every[j]:
                trial = list(plan)
                trial[i], trial[j] = a, b
                if inst.fits(trial):
                    keys.append((search._score(inst, trial), a, b))
        if not keys:
            assert found is None
            continue
        best = min(k[0] for k in keys)
        assert found is not None and found[0] == pytest.approx(best)
        trial = list(plan)
        trial[i], trial[j] = found[1], found[2]
        assert inst.fits(trial) and search._score(inst, trial) == pytest.approx(best)


def test_error_budget_and_bad_settings():
    assert max_errors(1000, 0.01) == 10
    assert max_errors(1000, 0.0) == 0
    # The Wilson bound leaves fewer errors than the point estimate.
    assert max_errors(1000, 0.01, confidence=0.95) < 10
    inst = random_instance(0)
    with pytest.raises(ValueError, match="eps"):
        dataclasses.replace(inst, eps=1.0)
    with pytest.raises(ValueError, match="eps"):
        dataclasses.replace(inst, eps=-0.1)
    with pytest.raises(ValueError, match="memory budget"):
        dataclasses.replace(inst, budget_bytes=-1)
    bad = dataclasses.replace(inst.options[0][0], scores=np.full(200, np.nan))
    with pytest.raises(ValueError, match="NaN"):
        dataclasses.replace(inst, options=((bad,), *inst.options[1:]))
    assert_config_rejects("planner", "eps", 1.5)
    assert_config_rejects("planner", "memory_budget_bytes", -5)
    assert_config_rejects("planner", "confirm_rounds", -1)
    assert_config_rejects("planner", "miss_rounds", -1)
    assert_config_rejects("planner", "max_miss_overhead", float("nan"))
    with pytest.raises(ValueError, match="miss overhead"):
        dataclasses.replace(inst, max_miss_overhead=-0.1)
    with pytest.raises(ValueError, match="lookup floor of p0"):
        MissFloors({"p0": float("nan")})
    with pytest.raises(ValueError, match="untimed"):
        MissFloors(untimed_s=-1.0)


def test_impossible_bound_gives_the_empty_plan():
    inst = random_instance(1, eps=0.0)
    # Every cache's most confident request is wrong: any hit set includes an error.
    options = []
    for opts in inst.options:
        fixed = []
        for o in opts:
            errors = o.errors.copy()
            errors[np.argmax(o.scores)] = True
            fixed.append(dataclasses.replace(o, errors=errors))
        options.append(tuple(fixed))
    inst = dataclasses.replace(inst, options=tuple(options))
    plans = search.plan_all(inst)
    assert plans["joint"] == inst.empty()
    assert search.exhaustive(inst) == inst.empty()
    assert summarize_outcome(inst, plans["joint"])["agreement"] == 1.0


def test_a_router_charge_above_every_saving_gives_the_empty_plan():
    inst = random_instance(2, eps=0.05)
    assert search.plan_all(inst)["joint"] != inst.empty()
    costly = dataclasses.replace(inst, router_s=inst.full_s)
    assert search.plan_all(costly)["joint"] == costly.empty()
    assert search.exhaustive(costly) == costly.empty()


@pytest.mark.parametrize("seed", range(4))
def test_plans_respect_bound_and_budget_and_beat_no_caches(seed):
    inst = random_instance(seed, positions=5, budget=120, eps=0.03)
    plans = search.plan_all(inst)
    ours = plans["joint"]
    assert _feasible(inst, ours)
    assert _mean_cost(inst, ours) <= _mean_cost(inst, inst.empty()) + 1e-12
    for name, plan in plans.items():
        assert inst.memory(plan) <= inst.budget_bytes, name
        if _feasible(inst, plan):
            assert _mean_cost(inst, ours) <= _mean_cost(inst, plan) + 1e-12, name
    # The same ramps at the comparators' thresholds never beat ours either.
    ramps = plans["independent"]
    if any(r is not None for r in ramps):
        greedy = search.greedy(inst, ramps)
        if _feasible(inst, greedy):
            assert _mean_cost(inst, ours) <= _mean_cost(inst, greedy) + 1e-12
    # Deterministic: planning again gives the same plan.
    assert search.plan_all(inst)["joint"] == ours


def test_greedy_and_single_respect_the_bound():
    inst = random_instance(7, positions=4, eps=0.02)
    for plan in (search.greedy(inst), search.single(inst)):
        assert simulate(inst, plan).num_errors <= inst.error_budget
    assert sum(c is not None for c in search.single(inst)) <= 1


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Found by hypothesis: only a three-position move left ours' optimum, 4.2% above exhaustive.
@example(seed=130, positions=5, options=2, grid=4, eps=0.0, budget=100.0, miss=float("inf"))
@given(
    seed=st.integers(0, 10_000),
    positions=st.integers(2, 5),
    options=st.integers(1, 2),
    grid=st.integers(2, 4),
    eps=st.sampled_from([0.0, 0.01, 0.05, 0.1]),
    budget=st.sampled_from([1e9, 100.0, 40.0]),
    miss=st.sampled_from([float("inf"), 0.1, 0.05]),
)
def test_ours_is_within_two_percent_of_exhaustive(
    seed, positions, options, grid, eps, budget, miss
):
    inst = random_instance(
        seed, positions, options, grid, requests=150, eps=eps, budget=budget, miss=miss
    )
    plans = search.plan_all(inst)
    best = search.exhaustive(inst)
    assert _feasible(inst, best) and _feasible(inst, plans["joint"])
    assert _mean_cost(inst, plans["joint"]) <= 1.02 * _mean_cost(inst, best) + 1e-12
    for name, plan in plans.items():
        if _feasible(inst, plan):
            assert _mean_cost(inst, plans["joint"]) <= _mean_cost(inst, plan) + 1e-12, name


def test_plan_saves_with_its_caches_and_loads_into_the_router(tmp_path):
    import jax
    import ml_collections
    from test_router import _caches

    from gati_jax.caches.bank import CacheBank, Candidate
    from gati_jax.inference import BaseModel
    from gati_jax.models import build_network
    from gati_jax.planner.plan import load_plan, plan_deployment, plan_from_choices, save_plan

    config = ml_collections.ConfigDict(dict(name="mlp", width=1, hidden_sizes=(24, 16, 12)))
    network = build_network(config, (6, 6, 1), 4)
    model = BaseModel(
        network,
        network.init(jax.random.key(0)),
        np.array([0.5], np.float32),
        np.array([0.25], np.float32),
        {},
    )
    positions = (0, 1)
    _, params = _caches(network, positions)
    shapes = network.activation_shapes()
    bank = CacheBank(
        4,
        8,
        [
            Candidate(
                p,
                "fc-d1-h8",
                0,
                0.01,
                1,
                tuple(shapes[p][1:]),
                jax.tree.map(np.asarray, params[k]),
                {},
                {},
            )
            for k, p in enumerate(positions)
        ],
        {"positions": list(positions)},
    )
    inst = random_instance(0, positions=2, options=1)
    keys = [c.key for c in bank.candidates]
    inst = dataclasses.replace(
        inst,
        options=tuple(
            (dataclasses.replace(opts[0], key=k),) for opts, k in zip(inst.options, keys)
        ),
    )
    choices = [(0, 0.3), (0, 0.6)]
    plan = plan_from_choices(inst, choices, "gati", "joint", test=inst)
    assert plan.positions == (0, 1) and plan.thresholds == (0.3, 0.6)
    save_plan(tmp_path / "plan", plan, bank)
    loaded, loaded_bank = load_plan(tmp_path / "plan")
    assert loaded == plan
    images = np.random.default_rng(0).integers(0, 256, (8, 6, 6, 1), dtype=np.uint8)
    want = plan_deployment(plan, bank)
    got = plan_deployment(loaded, loaded_bank)
    a = want.router(model, 8).route(want.params, want.thresholds, images)
    b = got.router(model, 8).route(got.params, got.thresholds, images)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(FileNotFoundError, match="no plan"):
        load_plan(tmp_path / "missing")
    (tmp_path / "plan" / "plan.json").write_text("{not json")
    with pytest.raises(ValueError, match="plan.json is truncated or altered"):
        load_plan(tmp_path / "plan")


def test_an_empty_plan_saves_and_loads(tmp_path):
    from gati_jax.caches.bank import CacheBank
    from gati_jax.planner.plan import load_plan, plan_deployment, plan_from_choices, save_plan

    inst = random_instance(0, positions=2, options=1)
    plan = plan_from_choices(inst, inst.empty(), "gati", "joint", test=inst)
    save_plan(tmp_path / "plan", plan, CacheBank(4, 8, [], {}))
    loaded, bank = load_plan(tmp_path / "plan")
    assert loaded == plan and bank.candidates == []
    assert plan_deployment(loaded, bank).positions == ()


def test_charges_are_confirmed_on_the_router_our_first_plan_of_each_kind_chose():
    from gati_jax.jobs.planning import charge_routers
    from gati_jax.planner.plan import Plan

    def plan(policy, method, *candidates):
        return Plan(
            policy,
            method,
            tuple(range(len(candidates))),
            candidates,
            candidates,
            (0.5,) * len(candidates),
            {},
        )

    plans = [
        plan("gati", "single", "a"),
        plan("gati", "joint", "b", "a"),
        plan("confidence", "joint", "c"),
        plan("entropy", "joint", "c", "d"),
        plan("apparate", "greedy", "c", "d", "e"),
        plan("knn", "joint", "k"),
    ]
    profile = Profile("cpu", "cpu", 1, "m", [1.0], {})
    # gati: ours; classifier: the first of ours that deploys two (entropy's); kNN: one only.
    assert charge_routers(plans, profile) == {
        "gati": ["gati/a", "gati/b"],
        "classifier": ["classifier/c", "classifier/d"],
    }
    profile.charge_from["gati"] = ["gati/a", "gati/b"]  # measured there already
    assert charge_routers(plans, profile) == {"classifier": ["classifier/c", "classifier/d"]}


@pytest.mark.parametrize("seed", range(3))
def test_every_method_keeps_the_miss_bound_and_the_bound_costs_what_it_must(seed):
    # No fixed router charge: it alone would break the bound and leave nothing to test.
    free = dataclasses.replace(
        random_instance(seed, positions=5, eps=0.05, budget=1e9), router_s=0.0
    )
    bound = 0.06
    inst = dataclasses.replace(free, max_miss_overhead=bound)
    plans = search.plan_all(inst)
    for name, plan in plans.items():
        assert inst.miss_s(plan) <= bound * inst.full_s * (1 + 1e-9), name
    assert _feasible(inst, plans["joint"]) and plans["joint"] != inst.empty()
    # The bound can only make the mean worse, and the unbounded plan breaks it or is kept.
    unbounded = search.plan_all(free)["joint"]
    assert _mean_cost(inst, plans["joint"]) >= _mean_cost(free, unbounded) - 1e-12
    if inst.miss_s(unbounded) <= bound * inst.full_s:
        assert _mean_cost(inst, plans["joint"]) == pytest.approx(_mean_cost(free, unbounded))
    summary = summarize_outcome(inst, plans["joint"])
    assert summary["miss_overhead"] == pytest.approx(inst.miss_s(plans["joint"]) / inst.full_s)
    assert summary["feasible"]
    # A floor above the whole bound leaves no lookup deployable.
    floored = dataclasses.replace(
        inst,
        router_s=0.0,
        deploy_s=0.0,
        miss_floors=MissFloors(untimed_s=1.01 * bound * inst.full_s),
    )
    for name, plan in search.plan_all(floored).items():
        assert plan == floored.empty(), name
    assert search.exhaustive(floored) == floored.empty()


def _free_lookups(inst, bound):
    """``inst`` with a miss bound and the profile saying every lookup and charge is free."""
    return dataclasses.replace(
        inst,
        router_s=0.0,
        deploy_s=0.0,
        max_miss_overhead=bound,
        options=tuple(
            tuple(dataclasses.replace(o, lookup_s=0.0) for o in opts) for opts in inst.options
        ),
    )


def _keys(instance, choices):
    return [instance.options[i][c[0]].key for i, c in enumerate(choices) if c is not None]


def _joint_planner(instance):
    """``plan(floors)`` for hold_miss_bound: our search on ``instance`` with the floors; and
    the list of every plan it made."""
    planned = []

    def plan(floors):
        floored = dataclasses.replace(instance, miss_floors=floors)
        planned.append(search.joint(floored))
        return floored, planned[-1]

    return plan, planned


def test_the_miss_bound_is_held_by_measurement_where_the_model_says_lookups_are_free():
    """The profile says every lookup is free; the machine charges 1% for the router and each
    lookup its own price, 8% at odd positions and 1% at even ones: a 6% bound is held by
    timing the first plan's lookups alone and charging each what it measured (lookups never
    timed are not deployed any more), which keeps the cheap lookups deployable (one floor for
    all, from the plan's share, ruled them out)."""
    free = _free_lookups(random_instance(0, positions=5, eps=0.05), 0.06)
    price = {
        o.key: 0.08 if free.positions[i] % 2 else 0.01
        for i, opts in enumerate(free.options)
        for o in opts
    }
    plan, planned = _joint_planner(free)
    alone = []

    def measure(instance, choices):
        keys = _keys(instance, choices)
        return 0.01 * bool(keys) + sum(price[k] for k in keys)

    batches = []

    def measure_alone(instance, items):
        keys = [instance.options[i][choice[0]].key for i, choice in items]
        alone.extend(keys)
        batches.append(keys)
        return [0.01 + price[k] for k in keys]

    rounds, held = hold_miss_bound(plan, measure, measure_alone, 0.06, rounds=3)
    assert held and rounds[-1].measured <= 0.06
    first, last = _keys(free, planned[0]), _keys(free, planned[-1])
    assert len(first) >= 2 and any(price[k] > 0.05 for k in first)  # the model alone erred
    assert last and all(price[k] == 0.01 for k in last)  # cheap lookups stay deployable
    assert rounds[0].predicted == 0 and rounds[0].floors_s == (0.0,) * len(first)
    # Each lookup of a plan over the bound is timed alone, once, and charged what it added.
    assert sorted(alone) == sorted(set(alone)) and set(first) <= set(alone)
    assert rounds[0].alone == {k: 0.01 + price[k] for k in first}
    # A round's lookups are timed together, beside one plain network: one batch per round.
    assert len(batches) == sum(bool(r.alone) for r in rounds) and batches[0] == first
    for j, r in enumerate(rounds):
        timed_before = {k for earlier in rounds[:j] for k in earlier.alone}
        # Once lookups were timed, only timed ones are deployed, at what they measured.
        assert j == 0 or set(r.keys) <= timed_before
        for key, floor in zip(r.keys, r.floors_s):
            assert floor == pytest.approx(
                (0.01 + price[key]) * free.full_s if key in timed_before else 0.0
            )
    assert [r.positions for r in rounds][-1] == tuple(
        free.positions[i] for i, c in enumerate(planned[-1]) if c is not None
    )
    # No rounds left to re-plan: the first plan stays, reported as over the bound...
    rounds, held = hold_miss_bound(plan, measure, measure_alone, 0.06, rounds=0)
    assert not held and len(rounds) == 1 and rounds[0].measured > 0.06 and not rounds[0].alone
    # ... unless a fallback deploys something that holds it (nothing, in the pipeline).
    rounds, held = hold_miss_bound(
        plan, measure, measure_alone, 0.06, rounds=0, fallback=lambda: (free, free.empty())
    )
    assert held and [r.positions for r in rounds][1:] == [()] and rounds[1].measured == 0
    with pytest.raises(ValueError, match="measured"):
        hold_miss_bound(plan, lambda i, c: float("nan"), measure_alone, 0.06, rounds=1)
    with pytest.raises(ValueError, match="measured"):
        hold_miss_bound(plan, measure, lambda i, items: [float("inf")] * len(items), 0.06, rounds=1)
    assert next_floors(MissFloors(), free, free.empty(), 0.5, {}, set()) == (MissFloors(), None)
    # A lookup that timed below the plain network (noise) caps the router's charges at zero.
    key = free.options[0][0].key
    floors, _ = next_floors(MissFloors(), free, free.empty(), 0.5, {key: -0.002}, set())
    assert floors.charge_cap_s == 0.0 and floors.of(key) == 0.0


def test_lookups_that_cost_more_together_get_a_share_of_what_their_plan_measured():
    """Every lookup measures 2% alone, but n together cost 2% * n^2: once all of a plan's
    lookups were timed alone before it was chosen, what it measured beyond their floors alone
    is split among them, so the search cannot choose it again; a 5% bound ends at one lookup."""
    free = _free_lookups(random_instance(7, positions=5, options=1, eps=0.05), 0.05)
    plan, planned = _joint_planner(free)

    def measure(instance, choices):
        return 0.02 * len(_keys(instance, choices)) ** 2

    rounds, held = hold_miss_bound(
        plan, measure, lambda i, items: [0.02] * len(items), 0.05, rounds=8
    )
    assert held and len(_keys(free, planned[-1])) == 1
    assert len(_keys(free, planned[0])) >= 2
    assert any(r.shared_s for r in rounds)  # the share rule took part
    # The share rule, directly: a plan of lookups timed before gets floors that reproduce
    # its measurement; one with a lookup not timed before only the floors timed alone.
    choices = planned[0]
    keys = _keys(free, choices)
    floors, shared = next_floors(
        MissFloors(), free, choices, 0.3, {k: 0.02 for k in keys}, set(keys)
    )
    assert sum(floors.of(k) for k in keys) == pytest.approx(0.3 * free.full_s)
    assert shared == pytest.approx((0.3 - 0.02 * len(keys)) * free.full_s / len(keys))
    floors, shared = next_floors(MissFloors(), free, choices, 0.3, {keys[0]: 0.02}, set())
    assert shared is None and floors.per_lookup == {keys[0]: pytest.approx(0.02 * free.full_s)}
    assert floors.untimed_s == float("inf")


def test_a_scout_corrects_a_profile_that_overcharges_the_router():
    """The profile charges the router 10% of the plain network for one cache, so under a 6%
    bound the model deploys nothing; the machine charges 1% for the router and 1% a lookup.
    The scout (the plan without the bound, its lookups timed alone) caps the charges at the
    cheapest one-cache router measured, and the plan deploys lookups within the bound."""
    base = _free_lookups(random_instance(5, positions=5, eps=0.05), 0.06)
    dear = dataclasses.replace(base, router_s=0.1 * base.full_s)
    plan, planned = _joint_planner(dear)

    def measure(instance, choices):
        keys = _keys(instance, choices)
        return 0.01 * bool(keys) + 0.01 * len(keys)

    def scout():
        unbounded = dataclasses.replace(dear, max_miss_overhead=float("inf"))
        others = [(0, float(opts[0].grid[0])) for opts in unbounded.options]
        return unbounded, search.joint(unbounded), others

    alone = lambda instance, items: [0.02] * len(items)  # noqa: E731
    rounds, held = hold_miss_bound(plan, measure, alone, 0.06, rounds=2)
    assert held and rounds[-1].positions == () and len(rounds) == 1  # the model alone
    rounds, held = hold_miss_bound(plan, measure, alone, 0.06, rounds=2, scout=scout)
    assert rounds[0].scout and not any(r.scout for r in rounds[1:])
    # Timed alone: the unbounded plan's lookups and each position's first option, once each.
    assert set(rounds[0].alone) == set(rounds[0].keys) | {opts[0].key for opts in dear.options}
    assert held and rounds[-1].positions and rounds[-1].measured <= 0.06
    capped = dataclasses.replace(dear, miss_floors=MissFloors(charge_cap_s=0.02 * dear.full_s))
    assert float(capped.miss_charge_s(1)) == pytest.approx(0.02 * dear.full_s)
    assert float(capped.miss_charge_s(3)) == pytest.approx(0.02 * dear.full_s)  # no per-cache
    assert float(dear.miss_charge_s(1)) == pytest.approx(0.1 * dear.full_s)


def _threshold_and_gati_instances(seed: int) -> tuple[Instance, Instance]:
    """A confidence instance and a gati one over the same predictors: gati has each predictor
    with a learned selector (noisy scores here) and with the softmax kind (a monotone function
    of the confidence score, as caches/selector.py computes it)."""
    confidence = random_instance(seed, positions=4, options=2, grid=8)
    rng = np.random.default_rng(seed + 7)
    per_position = []
    for options in confidence.options:
        gati_options = []
        for o in options:
            position, _, seed_part, rate = o.key.split("/")
            for suffix, scores in (
                ("", np.clip(o.scores + rng.normal(0, 0.3, o.scores.shape), 0, 1)),
                ("-msp", 1 / (1 + np.exp(-8 * (o.scores.astype(np.float32) - 1)))),
            ):
                key = f"{position}/pool-k1{suffix}/{seed_part}/{rate}"
                gati_options.append(
                    dataclasses.replace(o, key=key, scores=scores, grid=threshold_grid(scores, 8))
                )
        per_position.append(tuple(gati_options))
    confidence = dataclasses.replace(
        confidence,
        options=tuple(
            tuple(
                dataclasses.replace(o, key=f"{o.key.split('/')[0]}/pool-k1/s{i}/lr0.01")
                for i, o in enumerate(options)
            )
            for options in confidence.options
        ),
    )
    # Keys of gati's options must name the same predictors: one per (position, seed).
    per_position = [
        tuple(
            dataclasses.replace(o, key=o.key.replace("/s0/", f"/s{j // 2}/"))
            for j, o in enumerate(options)
        )
        for options in per_position
    ]
    return confidence, dataclasses.replace(confidence, options=tuple(per_position))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_gati_never_plans_worse_than_a_threshold_over_the_same_predictors(seed):
    confidence, gati = _threshold_and_gati_instances(seed)
    threshold_plan = search.joint(confidence)
    start = search.translate(confidence, threshold_plan, gati, "softmax")
    assert start is not None
    # The translated plan deploys the softmax kind and lets the same requests exit.
    for i, (src, dst) in enumerate(zip(threshold_plan, start)):
        assert (src is None) == (dst is None)
        if src is not None:
            assert gati.options[i][dst[0]].key.split("/")[1] == "pool-k1-msp"
            hit_src = confidence.options[i][src[0]].scores >= src[1]
            hit_dst = gati.options[i][dst[0]].scores >= dst[1]
            np.testing.assert_array_equal(hit_src, hit_dst)
    assert _mean_cost(gati, start) == pytest.approx(_mean_cost(confidence, threshold_plan))
    ours = search.joint(gati, starts=[start])
    assert _feasible(gati, ours)
    assert _mean_cost(gati, ours) <= _mean_cost(confidence, threshold_plan) * (1 + 1e-9)
    # A plan whose predictors gati lacks translates to nothing.
    assert search.translate(confidence, threshold_plan, gati, "entropy") is None or not any(
        threshold_plan
    )


def test_pair_moves_on_deep_instances_refine_deployed_and_near_positions():
    small = [None, (0, 0.5), None, None]
    assert search._partners(small, 0) == [1, 2, 3]  # a small instance: every other position
    deep = [None] * 20
    deep[15] = (0, 0.5)
    assert search._partners(deep, 3) == [1, 2, 4, 5, 15]
    # On a deep instance ours stays feasible and no worse than every comparator.
    instance = random_instance(5, positions=20, options=2, grid=6, requests=300)
    ours = search.joint(instance)
    assert _feasible(instance, ours)
    for method in ("single", "greedy"):
        comparator = search.METHODS[method](instance)
        assert _mean_cost(instance, ours) <= _mean_cost(instance, comparator) * (1 + 1e-9)
