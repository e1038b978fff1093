"""Apparate: its step search (a trajectory worked out by hand), placement under the ramp and
tail budgets, pruning, and online re-tuning on audited requests."""

from __future__ import annotations

import dataclasses
import json
import math

import jax
import numpy as np
import pytest
from conftest import assert_config_rejects, fc_caches, tiny_mlp_model

from gati_jax.online.apparate import (
    ApparateOnline,
    ApparateSettings,
    ApparateTuner,
    RampAudit,
    gated_decide,
    ramp_params,
)
from gati_jax.planner import apparate
from gati_jax.planner.apparate import Round
from gati_jax.planner.instance import (
    Instance,
    MissFloors,
    Option,
    max_errors,
    simulate,
    threshold_grid,
)
from gati_jax.runtime.deployment import Deployment
from gati_jax.runtime.policies import policy_builder
from gati_jax.runtime.router import Router
from gati_jax.serving.clock import FakeClock
from gati_jax.serving.loop import serve

GRID = np.array([0.0, 1.0])


def _option(position, depth, errors, lookup_s=0.0, variant="pool-k1", nbytes=10):
    """A ramp whose exit score is 1 - depth (a hit: depth <= the ramp's opening)."""
    errors = np.asarray(errors, bool)
    return Option(
        f"p{position}/{variant}/s0/lr0.01",
        1.0 - np.asarray(depth, np.float64),
        errors,
        ~errors,
        lookup_s,
        nbytes,
        GRID,
    )


def hand_instance() -> Instance:
    """Two free ramps after stages costing 1, 1 and 2 s (exits cost 1 s at ramp 0, 2 s at
    ramp 1, 4 s through the whole network); ten requests; eps 0.1: one disagreement."""
    d0 = [0.10, 0.10, 0.30, 0.30, 0.60, 0.60, 0.95, 0.95, 0.95, 0.95]
    e0 = [0, 0, 1, 0, 1, 1, 1, 1, 1, 1]
    d1 = [0.05, 0.05, 0.05, 0.20, 0.30, 0.45, 0.95, 0.95, 0.95, 0.95]
    e1 = [0, 0, 0, 0, 1, 0, 1, 1, 1, 1]
    return Instance(
        (0, 1),
        ((_option(0, d0, e0),), (_option(1, d1, e1),)),
        np.array([1.0, 2.0, 4.0]),
        np.ones(10, bool),
        0.1,
        1e9,
    )


def test_step_search_follows_the_trajectory_worked_out_by_hand():
    inst = hand_instance()
    assert inst.error_budget == 1
    found = apparate.run(apparate.search_steps(inst, {0: 0, 1: 0}, 0.125, 0.0625))
    # Openings o0, o1 (a request exits at ramp r when its depth is <= o_r), steps s0, s1.
    # Start: closed, steps 1/8 each; every request runs the network (40 s, no error).
    expected = [
        # Both tries (ramp 0 to 1/8: requests 0, 1 exit; ramp 1 to 1/8: 0, 1, 2 exit) save
        # 6 s at no error: a tie, the earlier ramp is taken. Both steps double (the taken
        # one, and ramp 1's try cost no agreement).
        Round(0, (0.125, 0.0), (0.25, 0.25)),
        # Ramp 0 to 3/8 saves 6 s for request 2's error (1/6 per s); ramp 1 to 1/4 saves
        # 4 s (requests 2, 3) at none: taken; its step doubles, ramp 0's stays.
        Round(1, (0.125, 0.25), (0.25, 0.5)),
        # Ramp 0 to 3/8: 2 s for an error (1/2 per s); ramp 1 to 3/4: 4 s (requests 4, 5)
        # for request 4's error (1/4 per s): taken, its step doubles to 1.
        Round(1, (0.125, 0.75), (0.25, 1.0)),
        # Ramp 0 to 3/8 makes a second error; ramp 1 fully open a fifth: nothing fits,
        # every step halves.
        Round(None, (0.125, 0.75), (0.125, 0.5)),
        # Ramp 0 to 1/4 moves nobody (requests 2, 3 lie at 0.3): an idle try, taken,
        # its step doubles; ramp 1 to 1 still does not fit.
        Round(0, (0.25, 0.75), (0.25, 0.5)),
        Round(None, (0.25, 0.75), (0.125, 0.25)),  # 1/2 and 1: neither fits
        Round(None, (0.25, 0.75), (0.0625, 0.125)),  # 3/8 and 1: neither fits
        # Ramp 0 to 5/16 still takes request 2; ramp 1 to 7/8 moves nobody: taken, doubled.
        Round(1, (0.25, 0.875), (0.0625, 0.25)),
        # Ramp 0 is at the minimum step and keeps it; ramp 1 (to 1) halves, twice.
        Round(None, (0.25, 0.875), (0.0625, 0.125)),
        Round(None, (0.25, 0.875), (0.0625, 0.0625)),
        Round(1, (0.25, 0.9375), (0.0625, 0.125)),  # to 15/16: idle again, taken
        Round(None, (0.25, 0.9375), (0.0625, 0.0625)),  # to 1 does not fit: halved
        Round(None, (0.25, 0.9375), (0.0625, 0.0625)),  # nothing fits, nothing halves: end
    ]
    assert list(found.rounds) == expected
    assert found.openings == (0.25, 0.9375)
    # Requests 0, 1 exit at ramp 0 (1 s), 2-5 at ramp 1 (2 s), 6-9 run through (4 s).
    assert found.mean_cost_s == pytest.approx(2.6) and found.errors == 1
    assert found.choices == [(0, 0.75), (0, 0.0625)]
    np.testing.assert_array_equal(
        simulate(inst, found.choices).exit_index, [0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    )


def test_tuning_keeps_the_cheapest_of_its_starting_steps():
    inst = random_instance(3, positions=3)
    ramps = {0: 0, 1: 0, 2: 0}
    starts = (0.0125, 0.025, 0.05)
    each = [apparate.run(apparate.search_steps(inst, ramps, s, 0.0125)) for s in starts]
    best = apparate.tune(inst, ramps, starts, 0.0125)
    assert best.mean_cost_s == min(f.mean_cost_s for f in each)
    assert best.start == starts[int(np.argmin([f.mean_cost_s for f in each]))]
    for found in (best, *each):
        assert found.errors <= inst.error_budget
        # Steps never fall below the minimum; openings stay in [0, 1].
        assert all(s >= 0.0125 for r in found.rounds for s in r.steps)
        assert all(0 <= o <= 1 for r in found.rounds for o in r.openings)


def random_instance(
    seed: int,
    positions: int = 6,
    requests: int = 300,
    eps: float = 0.02,
    lookup: float = 0.02,
    budget: float = 1e9,
) -> Instance:
    """Ramps whose confidence rises with depth and whose errors fall as it rises; at each
    position a cheap pool-k1 ramp and a dearer, better pool-k2-h64 one."""
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(size=requests)
    options = []
    for i in range(positions):
        opts = []
        for variant, skill, cost, nbytes in (
            ("pool-k2-h64", 1.0, 3 * lookup, 4000),
            ("pool-k1", 0.6, lookup, 400),
        ):
            logit = skill * rng.normal(3 * (i + 1) / (positions + 1), 1) - difficulty
            scores = 1 / (1 + np.exp(-(logit + rng.normal(0, 0.5, requests))))
            errors = rng.random(requests) < 0.6 * (1 - scores)
            opts.append(
                Option(
                    f"p{i}/{variant}/s0/lr0.01",
                    scores,
                    errors,
                    ~errors,
                    cost,
                    nbytes,
                    threshold_grid(scores, 8),
                )
            )
        options.append(tuple(opts))
    prefix = np.cumsum(np.full(positions + 1, 1.0 / (positions + 1)))
    return Instance(
        tuple(range(positions)),
        tuple(options),
        prefix,
        np.ones(requests, bool),
        eps,
        budget,
        router_s=0.01,
        deploy_s=0.005,
    )


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("ramp_budget,tail", [(1, 0.05), (2, 0.2), (3, 0.08)])
def test_placement_keeps_the_ramp_budget_the_tail_bound_and_the_accuracy_bound(
    seed, ramp_budget, tail
):
    inst = random_instance(seed)
    placed = apparate.place(inst, ramp_budget, tail)
    deployed = [i for i, c in enumerate(placed.choices) if c is not None]
    assert 1 <= len(deployed) <= ramp_budget
    assert inst.miss_s(placed.choices) <= (tail * inst.full_s + inst.router_s) * (1 + 1e-12)
    assert simulate(inst, placed.choices).num_errors <= inst.error_budget
    assert inst.memory(placed.choices) <= inst.budget_bytes
    # Apparate's cheap ramp at every deployed position; every deployed ramp pays for itself.
    assert all(
        inst.options[i][placed.choices[i][0]].key.split("/")[1] == "pool-k1" for i in deployed
    )
    assert all(u > 0 for u in placed.utilities.values())
    assert set(placed.utilities) == set(deployed)
    # It gains on the plain network.
    assert simulate(inst, placed.choices).mean_cost_s < inst.full_s
    # The tail budget can only bind harder than the instance's own miss bound.
    tight = dataclasses.replace(inst, max_miss_overhead=0.0)
    assert all(c is None for c in apparate.place(tight, ramp_budget, tail).choices)


def test_a_tail_budget_below_one_ramp_deploys_nothing():
    inst = random_instance(0)
    one = inst.deploy_s + inst.options[0][1].lookup_s  # the router's fixed charge aside
    placed = apparate.place(inst, 3, 0.99 * one / inst.full_s)
    assert all(c is None for c in placed.choices) and placed.added == ()
    assert apparate.plan(inst, 3, 1.01 * one / inst.full_s).count(None) == len(inst.positions) - 1


def test_a_ramp_that_never_opens_is_not_deployed():
    # Ramp 1 is confident and always wrong: the bound keeps it closed, so it only costs.
    rng = np.random.default_rng(0)
    n = 200
    good_depth = rng.uniform(0, 1, n)
    good = _option(0, good_depth, good_depth > 0.5, lookup_s=0.01)
    wrong = _option(1, rng.uniform(0, 0.2, n), np.ones(n, bool), lookup_s=0.01)
    late = _option(2, rng.uniform(0, 1, n), np.zeros(n, bool), lookup_s=0.01)
    inst = Instance(
        (0, 1, 2),
        ((good,), (wrong,), (late,)),
        np.array([1.0, 2.0, 3.0, 8.0]),
        np.ones(n, bool),
        0.01,
        1e9,
        router_s=0.01,
        deploy_s=0.01,
    )
    # Searched with the others, it stays closed...
    found = apparate.tune(inst, {0: 0, 1: 0, 2: 0})
    assert found.openings[1] == 0.0 and found.choices[1] == (0, float("inf"))
    # ...its utility is negative, and pruning removes it (searching the rest again).
    worth = apparate.utilities(inst, found.choices)
    assert worth[1] < 0 < min(worth[0], worth[2])
    kept, again, pruned = apparate.prune(inst, {0: 0, 1: 0, 2: 0}, found)
    assert pruned == [1] and set(kept) == {0, 2}
    assert again.mean_cost_s <= found.mean_cost_s
    # Placement never adds it: every budget, no ramp at position 1.
    for budget in (1, 2, 3):
        placed = apparate.place(inst, budget, 1.0)
        assert placed.choices[1] is None and 1 not in placed.added
        assert sum(c is not None for c in placed.choices) == min(budget, 2)


def test_ramps_are_apparates_cheap_ones_up_to_the_boundary():
    inst = random_instance(0, positions=4)
    assert apparate.ramp_options(inst) == [1, 1, 1, 1]  # pool-k1 wherever it is offered
    assert apparate.ramp_options(inst, cheap=()) == [1, 1, 1, 1]  # and the cheapest anyway
    # Exits after the third position cost more than the plain network: no ramp there.
    costly = dataclasses.replace(inst, prefix_s=np.array([0.2, 0.4, 0.99, 0.995, 1.0]))
    assert apparate.candidate_ramps(costly) == {0: 1, 1: 1}


def test_ramp_set_round_trips_and_builds_window_instances():
    inst = dataclasses.replace(random_instance(0, positions=3), max_miss_overhead=0.3)
    ramps = apparate.RampSet.from_instance(inst, 2, 0.1)
    assert ramps.positions == (0, 1, 2)
    assert ramps.max_miss_overhead == pytest.approx(0.1 + inst.router_s / inst.full_s)
    assert all(k.split("/")[1] == "pool-k1" for k in ramps.keys)
    again = apparate.RampSet.from_json(json.loads(json.dumps(ramps.to_json())))
    assert again == ramps
    scores = np.stack([inst.options[i][1].scores for i in range(3)], 1)
    errors = np.stack([inst.options[i][1].errors for i in range(3)], 1)
    window = ramps.instance(scores, errors, inst.eps, inst.confidence)
    plan = [(0, 0.8), None, (0, 0.6)]
    same = [(1, 0.8), None, (1, 0.6)]
    np.testing.assert_allclose(simulate(window, plan).cost_s, simulate(inst, same).cost_s)
    assert window.miss_s(plan) == pytest.approx(inst.miss_s(same))
    assert window.miss_budget_s == pytest.approx(0.1 * inst.full_s + inst.router_s)
    # Under a miss bound whose floors timed only some lookups, an untimed ramp counts as
    # infinitely costly: it round-trips through JSON and may not be deployed online either.
    key = ramps.keys[1]
    floors = MissFloors({k: 0.0 for k in ramps.keys if k != key}, float("inf"))
    timed = apparate.RampSet.from_instance(dataclasses.replace(inst, miss_floors=floors), 2, 0.1)
    assert math.isinf(timed.miss_lookup_s[1]) and math.isfinite(timed.miss_lookup_s[0])
    assert apparate.RampSet.from_json(json.loads(json.dumps(timed.to_json()))) == timed
    window = timed.instance(scores, errors, inst.eps, inst.confidence)
    assert not window.fits([None, (0, 0.6), None]) and window.fits([(0, 0.8), None, None])


def _tuner_settings(**changes) -> ApparateSettings:
    values = dict(
        audit_fraction=0.1,
        audit_group=1,
        audit_segments=1,
        max_lag=200,
        window=50,
        min_window=20,
        check=10,
        retune_every=50,
        ramp_every=100,
        eps=0.02,
        confidence=0.0,
        seed=0,
    )
    values.update(changes)
    return ApparateSettings(**values)


def _two_ramps() -> apparate.RampSet:
    return apparate.RampSet(
        positions=(0, 1),
        keys=("p0/pool-k1/s0/lr0.01", "p1/pool-k1/s0/lr0.01"),
        lookup_s=(0.01, 0.01),
        exit_s=(0.01, 0.01),
        miss_lookup_s=(0.01, 0.01),
        nbytes=(10, 10),
        prefix_s=(1.0, 2.0, 4.0),
        router_s=0.0,
        deploy_s=0.0,
        charge_cap_s=float("inf"),
        budget_bytes=1e9,
        max_miss_overhead=0.1,
        ramp_budget=2,
    )


def test_online_retuning_restores_agreement_after_a_shift():
    """Two ramps whose answers disagree less the more confident they are, until request 1000:
    from then on ramp 0 is wrong on every request (a class it never saw). Audits (10%) show
    the served agreement fall; the tuner raises ramp 0's threshold on its window, closes it,
    and its ramp check removes it."""
    rng = np.random.default_rng(1)
    settings = _tuner_settings(window=200, min_window=50, confidence=0.9)
    tuner = ApparateTuner(_two_ramps(), [0.5, 0.5], settings)
    assert tuner.tunable_after == 81  # the fewest that certify 98% at 0.9 with no error
    n, shift = 4000, 1000
    served_ok = np.zeros(n, bool)
    for t in range(n):
        scores = rng.uniform(0, 1, 2)
        errors = rng.random(2) < 0.5 * (1 - scores) ** 4
        errors[0] |= t >= shift
        hit = scores >= tuner.thresholds()
        served_by = 0 if hit[0] else 1 if hit[1] else -1
        served_ok[t] = served_by < 0 or not errors[served_by]
        if rng.random() < settings.audit_fraction:
            tuner.record(scores, errors, bool(served_ok[t]), served_by)
            tuner.drain()  # tuning takes no requests' time here
    reasons = [t.reason for t in tuner.tunings]
    assert reasons[0] == "start" and "violation" in reasons and "ramps" in reasons
    floor = 1 - settings.eps
    assert served_ok[:shift].mean() >= floor and served_ok[shift : shift + 200].mean() < floor
    # Within 1000 requests of the shift (about 100 audited), agreement is back.
    bound = 1000
    assert served_ok[shift + bound :].mean() >= floor
    # Ramp 0 closed and then removed; ramp 1 still serves.
    assert tuner.active == (1,) and np.isinf(tuner.thresholds()[0])
    assert np.isfinite(tuner.thresholds()[1])
    # Every tuning met the bound on its window.
    assert all(
        t.window_errors <= max_errors(settings.window, settings.eps, 0.9) for t in tuner.tunings
    )


def test_tuning_waits_for_a_window_that_can_certify_the_bound():
    # eps 0.01 at 0.9 needs 163 audited requests that all agree; a window of 150 never does.
    assert (
        ApparateTuner(
            _two_ramps(),
            [0.5, 0.5],
            _tuner_settings(window=300, min_window=100, eps=0.01, confidence=0.9),
        ).tunable_after
        == 163
    )
    never = ApparateTuner(
        _two_ramps(),
        [0.5, 0.5],
        _tuner_settings(window=150, min_window=100, eps=0.01, confidence=0.9),
    )
    assert never.tunable_after is None
    rng = np.random.default_rng(0)
    for _ in range(400):
        never.record(rng.uniform(0, 1, 2), np.zeros(2, bool), True, 0)
    assert not never.pending() and never.tunings == []
    # The guard still acts: repeated violations close the ramp whose answers disagree.
    for _ in range(20):
        never.record(rng.uniform(0, 1, 2), np.array([True, False]), False, 0)
    assert [t.reason for t in never.tunings] == ["closed"] and np.isinf(never.thresholds()[0])
    assert never.thresholds()[1] == 0.5


def test_tuner_waits_for_its_window_and_runs_a_job_one_round_per_step():
    tuner = ApparateTuner(_two_ramps(), [0.5, np.inf], _tuner_settings())
    rng = np.random.default_rng(0)
    for _ in range(19):
        tuner.record(rng.uniform(0, 1, 2), np.zeros(2, bool), True)
    assert not tuner.pending() and tuner.active == (0,)
    tuner.record(rng.uniform(0, 1, 2), np.zeros(2, bool), True, 0)
    assert tuner.pending()
    steps = 0
    while not tuner.step():
        steps += 1
    assert steps > 1 and not tuner.pending()
    assert tuner.tunings[0].reason == "start" and tuner.active == (0,)
    # Everything agreed: the ramp opened fully (threshold 0), the inactive one stayed off.
    assert tuner.thresholds()[0] == 0.0 and np.isinf(tuner.thresholds()[1])


# ---- the serving adapter on a tiny untrained network --------------------------------------

SHAPE, CLASSES, POSITIONS = (6, 6, 1), 4, (0, 1)


@pytest.fixture(scope="module")
def model():
    return tiny_mlp_model(SHAPE, CLASSES)


def _ramps_on(model) -> tuple[apparate.RampSet, Deployment]:
    heads, params = fc_caches(model.network, POSITIONS, CLASSES)
    ramps = dataclasses.replace(
        _two_ramps(),
        keys=("p0/fc-d1-h8/s0/lr0.01", "p1/fc-d1-h8/s0/lr0.01"),
        prefix_s=tuple(np.linspace(0.2, 1.0, model.network.num_stages)),
    )
    predictors = [p["predictor"] for p in params]
    deployment = Deployment(
        "apparate",
        POSITIONS,
        heads,
        jax.device_put(ramp_params(predictors, [1])),
        np.asarray([np.inf, 0.3], np.float32),
    )
    return ramps, deployment


def test_gated_ramps_skip_inactive_lookups_and_audits_see_every_ramp(model):
    ramps, deployment = _ramps_on(model)
    gated = Router(model, POSITIONS, tuple(gated_decide(h) for h in deployment.heads), 8)
    plain = Router(
        model, POSITIONS, tuple(policy_builder("apparate")(h) for h in deployment.heads), 8
    )
    images = np.random.default_rng(0).integers(0, 256, (8, *SHAPE)).astype(np.uint8)
    both_on = jax.device_put(ramp_params([p["predictor"] for p in deployment.params], [0, 1]))
    low = np.array([0.0, 0.0], np.float32)
    # Active ramps decide as Apparate's; an inactive one never hits, whatever its threshold.
    want = plain.route(both_on, low, images)
    got = gated.route(both_on, low, images)
    np.testing.assert_array_equal(got.answer, want.answer)
    only_1 = gated.route(deployment.params, low, images)
    assert not np.any(only_1.exit_stage == 0) and np.all(only_1.exit_stage == 1)
    traced = gated.trace_count
    gated.route(both_on, np.array([0.5, 0.9], np.float32), images)
    assert gated.trace_count == traced  # new flags and thresholds: no new program
    # The audit: base answers as the plain network, every ramp's answer and score.
    audit = RampAudit(model, POSITIONS, deployment.heads, 2)
    steps, segments = audit.run(both_on, images), 1
    while True:
        try:
            next(steps)
            segments += 1
        except StopIteration as done:
            base, answers, scores = done.value
            break
    assert segments == 2 and answers.shape == scores.shape == (8, 2)
    never = np.full(2, 2.0, np.float32)
    np.testing.assert_array_equal(base, plain.route(both_on, never, images).answer)
    for j in range(2):
        threshold = np.full(2, np.inf, np.float32)
        threshold[j] = np.float32(np.median(scores[:, j]))
        hit = plain.route(both_on, threshold, images).hit
        np.testing.assert_array_equal(hit, scores[:, j] >= threshold[j])


def test_adapter_audits_its_fraction_and_tunes_in_the_background(model):
    ramps, deployment = _ramps_on(model)
    settings = _tuner_settings(audit_fraction=0.5, min_window=10, check=5, window=30)
    adapter = ApparateOnline(model, deployment, ramps, settings, max_group=4)
    adapter.warm_up()
    images = np.random.default_rng(1).integers(0, 256, (200, *SHAPE)).astype(np.uint8)
    traced = adapter.router.trace_count
    serve(
        adapter.route,
        images,
        arrivals=np.arange(200) * 0.01,
        max_group=4,
        max_wait_s=0.0,
        clock=FakeClock(lambda n: 0.001),
        progress=False,
        background=adapter,
    )
    adapter.drain()
    summary = adapter.summary()
    assert 70 <= summary["audited"] <= 130 and summary["tunings"] >= 1
    # An untrained ramp disagrees: the guard may close it before the first tuning.
    reasons = [t["reason"] for t in summary["tuning_log"]]
    assert "start" in reasons and set(reasons) <= {
        "start",
        "closed",
        "violation",
        "periodic",
        "ramps",
    }
    assert all(t["served"] <= 200 for t in summary["tuning_log"])
    assert adapter.router.trace_count == traced  # tuning and ramp changes never recompile
    # A reset goes back to the offline plan.
    adapter.reset()
    np.testing.assert_array_equal(adapter.tuner.thresholds(), [np.inf, np.float32(0.3)])
    assert adapter.tuner.active == (1,)


def test_adapter_serves_the_plans_ramps_alone_and_any_other_set_gated(model):
    """Groups go through a router of the plan's ramps alone (as static Apparate's); after a
    ramp change the gated router of every candidate serves, compiling nothing while serving;
    a set whose router is compiled is served by it; the answers are the same throughout."""
    ramps, deployment = _ramps_on(model)
    adapter = ApparateOnline(
        model, deployment, ramps, _tuner_settings(audit_fraction=0.0), max_group=4
    )
    adapter.warm_up()
    assert list(adapter._fast) == [(1,)] and adapter._fast[(1,)].positions == (1,)
    served_by = []

    def counting(name, router):
        route = router.route
        router.route = lambda *a, **k: served_by.append(name) or route(*a, **k)

    counting("gated", adapter.router)
    counting("ramp 1", adapter._fast[(1,)])
    images = np.random.default_rng(2).integers(0, 256, (4, *SHAPE)).astype(np.uint8)

    def gated_answer():
        out = _as_lists(adapter.router.route(adapter.params, adapter.tuner.thresholds(), images))
        served_by.pop()
        return out

    want = gated_answer()
    assert _as_lists(adapter.route(images)) == want and served_by == ["ramp 1"]
    # A ramp change: the gated router serves the new set; nothing compiles.
    traced = adapter.router.trace_count
    adapter.tuner.active = (0, 1)
    adapter.tuner._thresholds = np.array([0.4, 0.3])
    adapter._swap()
    want = gated_answer()
    served_by.clear()
    assert _as_lists(adapter.route(images)) == want and served_by == ["gated"]
    assert list(adapter._fast) == [(1,)] and adapter.router.trace_count == traced
    # A set with a router of its own (compiled beforehand) is served by it.
    adapter._compile_fast((0, 1))
    counting("ramps 0, 1", adapter._fast[(0, 1)])
    served_by.clear()
    assert _as_lists(adapter.route(images)) == want and served_by == ["ramps 0, 1"]
    # A reset serves the plan's set by its own router again.
    adapter.reset()
    served_by.clear()
    adapter.route(images)
    assert served_by == ["ramp 1"]


def _as_lists(result) -> tuple:
    """A route result as plain lists, to compare with ==."""
    return tuple(np.asarray(a).tolist() for a in result)


def test_apparate_config_is_validated():
    assert_config_rejects("planner", "apparate_ramps", 0)
    assert_config_rejects("planner", "apparate_tail_budget", -0.1)
    assert_config_rejects("online", "apparate_window", 0)
    assert_config_rejects("online", "apparate_min_window", 1000)
    assert_config_rejects("benchmark", "policies", ("none", "apparate-offline"))
