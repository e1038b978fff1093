"""Latency profiles: what they measure, what they store, and when they measure again."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import fc_caches

from gati_jax.planner import build, costs
from gati_jax.planner.costs import load_or_measure
from gati_jax.runtime import policy_builder
from gati_jax.training.checkpointing import load_base_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mlp():
    return load_base_model(str(ROOT / "checkpoints/synthetic_mlp"))


def _lookups(model):
    positions = (0, 1)
    heads, params = fc_caches(model.network, positions, model.network.num_classes)
    lookups = {}
    for kind, policy in (("gati", "gati"), ("classifier", "entropy")):
        for p, head, prm in zip(positions, heads, params):
            lookups[f"{kind}/p{p}"] = (p, policy_builder(policy)(head), prm, policy)
    return lookups


def test_profile_measures_stores_and_reuses(mlp, tmp_path, monkeypatch):
    lookups = _lookups(mlp)
    path = tmp_path / "profile.json"
    profile = load_or_measure(path, mlp, lookups, repeats=30)
    assert len(profile.prefix_s) == mlp.network.num_stages
    assert all(np.isfinite(profile.prefix_s)) and min(profile.prefix_s) > 0
    assert set(profile.lookup_s) == set(lookups)
    assert all(v >= 0 for v in profile.lookup_s.values())
    # Both policies here can be forced to exit: every lookup's exit is timed too.
    assert set(profile.exit_s) == set(lookups)
    assert all(v >= 0 for v in profile.exit_s.values())
    stored = json.loads(path.read_text())["profiles"][profile.key]
    assert stored["lookup_s"] == profile.lookup_s and stored["prefix_s"] == profile.prefix_s
    assert stored["exit_s"] == profile.exit_s

    def no_measuring(*args, **kwargs):
        raise AssertionError("a stored profile was measured again")

    monkeypatch.setattr(costs, "measure_cache_cost", no_measuring)
    monkeypatch.setattr(costs, "measure_prefixes", no_measuring)
    again = load_or_measure(path, mlp, lookups)
    assert again.lookup_s == profile.lookup_s and again.prefix_s == profile.prefix_s
    # A lookup the profile lacks is measured, and only that one; the prefixes get a trial.
    trials = len(profile.prefix_trials)
    assert trials == 3  # before, halfway through and after the lookups
    monkeypatch.setattr(
        costs, "measure_prefixes", lambda model, g, r, rotate=0: list(profile.prefix_s)
    )
    measured = []
    monkeypatch.setattr(
        costs,
        "measure_cache_cost",
        lambda *args, **kwargs: (
            measured.append(args[1]) or costs.LookupCost(1e-4, 2e-4, profile.prefix_s[-1])
        ),
    )
    extra = dict(lookups)
    extra["gati/p1-other"] = lookups["gati/p1"]
    grown = load_or_measure(path, mlp, extra)
    assert measured == [1] and grown.lookup_s["gati/p1-other"] == 1e-4
    assert len(grown.prefix_trials) == trials + 1
    assert grown.exit_s["gati/p1-other"] == 2e-4
    # A profile from before exits were timed measures its lookups again.
    del grown.exit_s["gati/p0"]
    costs.save_profile(path, grown)
    measured.clear()
    assert load_or_measure(path, mlp, extra).exit_s["gati/p0"] == 2e-4 and measured == [0]


def test_a_corrupt_profile_is_a_clear_error_and_is_kept(mlp, tmp_path):
    path = tmp_path / "profile.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        load_or_measure(path, mlp, _lookups(mlp))
    assert path.read_text() == "{not json"


def test_confirmations_replace_the_choice_time_measurement_and_are_saved(
    mlp, tmp_path, monkeypatch
):
    lookups = _lookups(mlp)
    path = tmp_path / "profile.json"
    readings = iter([1e-3, 1e-3, 1e-3, 1e-3, 4e-4, 6e-4, 5e-4])
    monkeypatch.setattr(costs, "measure_prefixes", lambda model, g, r, rotate=0: [2e-3] * 3)
    monkeypatch.setattr(
        costs,
        "measure_cache_cost",
        lambda *a, **k: (lambda r: costs.LookupCost(r, 2 * r, 2e-3))(next(readings)),
    )
    profile = load_or_measure(path, mlp, lookups, repeats=30)
    assert profile.lookup_s["gati/p0"] == 1e-3 and profile.confirmed == {}
    chosen = {k: lookups[k] for k in ("gati/p0",)}
    costs.confirm_lookups(mlp, profile, chosen, 1, 30)
    # The first confirmation replaces the measurement the choice was made on...
    assert profile.lookup_s["gati/p0"] == pytest.approx(4e-4) and profile.confirmed == {
        "gati/p0": 1
    }
    costs.confirm_lookups(mlp, profile, chosen, 1, 30)
    costs.confirm_lookups(mlp, profile, chosen, 1, 30)
    # ...and later ones are averaged with it; lookups nobody chose keep their one reading.
    assert profile.lookup_s["gati/p0"] == pytest.approx(5e-4)
    assert profile.exit_s["gati/p0"] == pytest.approx(1e-3)  # exits are averaged alike
    assert profile.confirmed == {"gati/p0": 3} and profile.lookup_s["gati/p1"] == 1e-3
    costs.save_profile(path, profile)
    again = load_or_measure(path, mlp, lookups)
    assert again.confirmed == {"gati/p0": 3}
    assert again.lookup_s["gati/p0"] == pytest.approx(5e-4)


def test_router_charge_is_what_lookups_cost_less_together_and_is_stored(mlp, tmp_path, monkeypatch):
    lookups = _lookups(mlp)
    lookups["gati/p1-other"] = lookups["gati/p1"]
    seen = []

    def timed(fns, *args, **kwargs):
        seen.append(sorted(fns))
        # The joint router: 0.6 ms over plain; exiting at its first lookup, 0.45 ms over the
        # stages through it.
        return {"plain": 1e-3, "router": 1.6e-3, "prefix": 5e-4, "exit": 9.5e-4}

    monkeypatch.setattr(costs, "measure_interleaved", timed)
    one_cache = {"gati/p0": 3e-4, "gati/p1": 5e-4, "gati/p1-other": 9e-4}
    gati = {k: v for k, v in lookups.items() if k.startswith("gati/")}
    # (0.3 + 0.5 - 0.6) ms over the one lookup beyond the first; p1-other is not in the router.
    charge = costs.measure_router_charge(mlp, gati, one_cache, 1, 30)
    assert charge == pytest.approx((2e-4, 0.0)) and seen == [["plain", "router"]]
    # The exit at the first lookup cost 0.45 ms in the joint router, 0.4 ms alone: the other
    # lookup adds 0.05 ms to a request that never reaches it.
    charge = costs.measure_router_charge(mlp, gati, one_cache, 1, 30, exit_s={"gati/p0": 4e-4})
    assert charge == pytest.approx((2e-4, 5e-5))
    assert seen[-1] == ["exit", "plain", "prefix", "router"]
    single = {"gati/p0": lookups["gati/p0"]}
    assert costs.measure_router_charge(mlp, single, one_cache, 1, 30) == (0.0, 0.0)

    monkeypatch.setattr(
        costs, "measure_cache_cost", lambda *a, **k: costs.LookupCost(3e-4, 1e-4, 1e-3)
    )
    monkeypatch.setattr(costs, "measure_prefixes", lambda model, g, r, rotate=0: [1e-3] * 3)
    path = tmp_path / "profile.json"
    profile = load_or_measure(path, mlp, lookups)
    # Both kinds: (0.3 + 0.3 - 0.6) / 1 = 0 ms fixed; the exit at the first lookup 0.45 ms
    # in the joint router, 0.1 ms alone: 0.35 ms per cache.
    assert sorted(profile.router_s) == sorted(profile.deploy_s) == ["classifier", "gati"]
    assert profile.router_s["gati"] == pytest.approx(0.0, abs=1e-12)
    assert profile.deploy_s["gati"] == pytest.approx(3.5e-4)
    assert profile.charge_from["gati"] == ["gati/p0", "gati/p1"]  # p1-other: not in it
    profile.router_s["gati"], profile.deploy_s["gati"] = 1.5e-4, 5e-5
    profile.lookup_s["gati/p0"] = 1e-4
    assert profile.marginal("gati/p1") == pytest.approx(1e-4)  # 0.3 - 0.15 - 0.05
    assert profile.marginal("gati/p0") == 0.0  # never negative
    profile.router_s["classifier"], profile.deploy_s["classifier"] = 0.0, 0.0
    assert profile.marginal("classifier/p0") == pytest.approx(3e-4)
    assert profile.marginal_exit("gati/p1") == 0.0  # 0.1 ms exit, 0.2 ms of charges
    assert profile.marginal_exit("classifier/p1") == pytest.approx(1e-4)
    costs.save_profile(path, profile)
    again = load_or_measure(path, mlp, lookups)
    assert (again.router_s["gati"], again.deploy_s["gati"]) == pytest.approx((1.5e-4, 5e-5))
    # A profile from before the per-cache charge measures its charges anew.
    del again.deploy_s["gati"]
    costs.save_profile(path, again)
    assert load_or_measure(path, mlp, lookups).deploy_s["gati"] == pytest.approx(3.5e-4)


def test_a_program_is_timed_at_a_few_of_its_positions_spread_and_turned():
    profile = costs.Profile("cpu", "cpu", 1, "m", [1e-3] * 10, {})
    lookups, programs = {}, {}
    for v in range(4):  # four programs at positions 0..9, two seeds at each position
        for p in range(10):
            for seed in (0, 1):
                key = f"gati/p{p}/v{v}/s{seed}"
                lookups[key], programs[key] = (p, None, None, "gati"), f"gati/v{v}/shape"
    lookups["knn/p3"] = (3, None, None, "knn")  # no program: timed
    chosen = costs.lookups_to_time(lookups, profile, programs, 3)
    assert "knn/p3" in chosen
    at = {v: sorted(lookups[k][0] for k in chosen if f"/v{v}/" in k) for v in range(4)}
    # Three positions each, one seed per position, spread and turned between programs...
    assert at == {0: [0, 3, 6], 1: [1, 4, 7], 2: [2, 5, 8], 3: [3, 6, 9]}
    assert all(k.endswith("/s0") for k in chosen if k != "knn/p3")
    # ...so every position has a timed lookup for the router's charges.
    assert {p for ps in at.values() for p in ps} == set(range(10))
    # 0 times every lookup; positions timed already count towards a program's share.
    assert costs.lookups_to_time(lookups, profile, programs, 0) == lookups
    for table in (profile.lookup_s, profile.exit_s):
        table.update({"gati/p5/v0/s1": 1e-4, "gati/p9/v0/s0": 1e-4})
    again = costs.lookups_to_time(lookups, profile, programs, 3)
    assert [k for k in again if "/v0/" in k] == ["gati/p0/v0/s0"]


def test_a_profile_times_a_programs_share_and_the_planner_prices_the_rest_alike(
    mlp, tmp_path, monkeypatch
):
    lookups = _lookups(mlp)
    programs = {k: k.split("/")[0] for k in lookups}  # each kind one program at p0 and p1
    measured = []
    monkeypatch.setattr(costs, "measure_prefixes", lambda model, g, r, rotate=0: [1e-3] * 3)
    monkeypatch.setattr(
        costs,
        "measure_cache_cost",
        lambda *a, **k: measured.append(a[1]) or costs.LookupCost(3e-4, 1e-4, 1e-3),
    )
    profile = load_or_measure(tmp_path / "p.json", mlp, lookups, programs=programs, per_program=1)
    assert sorted(profile.lookup_s) == ["classifier/p0", "gati/p1"] and measured == [0, 1]
    # One timed position: no router of two to take the charges from.
    assert profile.charge_from == {"classifier": ["classifier/p0"], "gati": ["gati/p1"]}
    assert profile.router_s == {"classifier": 0.0, "gati": 0.0}
    # An instance built on the untimed lookup alone prices it at its program's timings.
    same = build._program_siblings(profile, "gati", {"p0": "gati"})["p0"]
    assert same == ["gati/p0", "gati/p1"]
    assert build._pooled(profile, profile.marginal, same) == pytest.approx(3e-4)
    # Loaded again, nothing is missing: the untimed lookup is priced, not measured.
    measured.clear()
    again = load_or_measure(tmp_path / "p.json", mlp, lookups, programs=programs, per_program=1)
    assert measured == [] and again.programs == programs


def test_costs_are_kept_at_the_scale_of_the_profiles_plain_network(mlp, monkeypatch):
    cost = costs.LookupCost(1e-4, 2e-4, 2e-3).scaled(3e-3)
    assert cost == pytest.approx((1.5e-4, 3e-4, 3e-3))
    assert costs.LookupCost(1e-4, None, 2e-3).scaled(1e-3).exit_s is None
    # Measured while the machine ran at half speed (plain 4 ms, profile 2 ms): halved.
    profile = costs.Profile("cpu", "cpu", 1, "m", [1e-3, 2e-3], {})
    costs.record_lookups(profile, {"gati/p0": costs.LookupCost(4e-4, 6e-4, 4e-3)})
    assert profile.lookup_s["gati/p0"] == pytest.approx(2e-4)
    assert profile.exit_s["gati/p0"] == pytest.approx(3e-4)
    monkeypatch.setattr(
        costs, "measure_interleaved", lambda *a, **k: {"plain": 4e-3, "router": 4.4e-3}
    )
    lookups = {k: v for k, v in _lookups(mlp).items() if k.startswith("gati/")}
    # Joint 0.4 ms at a 4 ms plain network is 0.2 ms at the profile's 2 ms.
    charge = costs.measure_router_charge(
        mlp, lookups, {"gati/p0": 2e-4, "gati/p1": 2e-4}, 1, 30, plain_s=2e-3
    )
    assert charge.fixed_s == pytest.approx(2e-4)


def test_prefix_costs_are_made_non_decreasing():
    assert costs.monotone([1.0, 3.0, 2.0, 4.0]) == pytest.approx([1.0, 2.5, 2.5, 4.0])
    assert costs.monotone([5.0, 1.0, 0.0]) == pytest.approx([2.0, 2.0, 2.0])
    assert costs.monotone([0.2, 0.6, 0.8, 0.9]) == pytest.approx([0.2, 0.6, 0.8, 0.9])
    assert costs.monotone([]) == []


def test_prefixes_pool_sessions_in_units_of_their_whole_network(mlp, tmp_path, monkeypatch):
    # A slow trial (every program 1.5x) agrees with the first in ratios; an outlier
    # trial's stage 1 is outvoted; the scale stays the first trial's.
    trials = [[1.0, 2.0, 4.0], [1.5, 3.0, 6.0], [1.0, 3.9, 4.0]]
    assert costs.prefixes_from_trials(trials) == pytest.approx([1.0, 2.0, 4.0])
    # Ratios above the whole network are capped: the last prefix keeps the scale.
    assert costs.prefixes_from_trials([[1.0, 4.4, 4.0]]) == pytest.approx([1.0, 4.0, 4.0])
    assert costs.prefixes_from_trials([[1.0, 3.0, 2.5, 4.0]]) == pytest.approx(
        [1.0, 2.75, 2.75, 4.0]
    )
    with pytest.raises(ValueError, match="no prefix trials"):
        costs.prefixes_from_trials([])
    # Trials rotate the programs' order; a profile from before trials is the first.
    rotations = []
    readings = iter([[2.0, 4.0], [3.0, 6.0]])
    monkeypatch.setattr(
        costs,
        "measure_prefixes",
        lambda model, g, r, rotate=0: rotations.append(rotate) or next(readings),
    )
    old = costs.Profile("cpu", "cpu", 1, "m", [1.0, 4.0], {})
    costs.add_prefix_trial(old, mlp, 30)
    costs.add_prefix_trial(old, mlp, 30)
    assert rotations == [1, 2] and len(old.prefix_trials) == 3
    assert old.prefix_s == pytest.approx([2.0, 4.0])  # median ratio 0.5 at scale 4
    # A confirmation round adds a trial.
    monkeypatch.setattr(costs, "measure_prefixes", lambda model, g, r, rotate=0: [1.0, 4.0])
    monkeypatch.setattr(
        costs, "measure_cache_cost", lambda *a, **k: costs.LookupCost(1e-4, 2e-4, 4.0)
    )
    lookups = {k: v for k, v in _lookups(mlp).items() if k == "gati/p0"}
    costs.confirm_lookups(mlp, old, lookups, 1, 30)
    assert len(old.prefix_trials) == 4
    # Rotation reorders the timed programs, never the result.
    order = []
    monkeypatch.undo()
    monkeypatch.setattr(
        costs,
        "measure_prefix_costs",
        lambda model, stops, g, r: order.append(list(stops)) or {p: float(p + 1) for p in stops},
    )
    n = mlp.network.num_stages
    assert costs.measure_prefixes(mlp, 1, 10, rotate=1) == [float(p + 1) for p in range(n)]
    assert order == [list(range(1, n)) + [0]]


@pytest.mark.parametrize("policy", ["gati", "confidence", "entropy", "apparate", "oracle"])
def test_all_miss_inputs_make_every_request_miss_every_lookup(mlp, policy):
    """The inputs the miss bound and the benchmark time a worst case with: the same caches
    at permissive thresholds (or, for the oracle, with the true base answers) do hit."""
    import jax.numpy as jnp

    from gati_jax.runtime.deployment import Deployment

    heads, params = fc_caches(mlp.network, (0, 1), mlp.network.num_classes)
    permissive = {"gati": -1.0, "confidence": 0.0, "apparate": 0.0, "entropy": 1e9, "oracle": 0.0}[
        policy
    ]
    dep = Deployment(policy, (0, 1), heads, params, np.full(2, permissive, np.float32))
    router = dep.router(mlp, max_group=4)
    never, x, rows = costs.all_miss_inputs(mlp, [policy] * 2, 4)
    x = x + jnp.asarray(np.random.default_rng(0).normal(size=x.shape), jnp.float32)
    answer, exit_stage, hit = np.asarray(router.compiled(params, never, x, rows))
    assert not hit.any() and (exit_stage == mlp.network.num_stages - 1).all()
    if policy == "oracle":  # a base answer no prediction can equal, whatever the inputs
        assert (np.asarray(rows) >= mlp.network.num_classes).all()
    # Permissive thresholds (the oracle: some base answer, every class tried) do hit.
    loose = jnp.asarray(dep.thresholds)
    assert any(
        np.asarray(router.compiled(params, loose, x, jnp.full(4, c, jnp.int32)))[2].any()
        for c in range(mlp.network.num_classes)
    )
    assert (
        costs.measure_miss_overhead(mlp, Deployment("none", (), (), (), np.zeros(0)), 1, 3) == 0.0
    )


def test_charges_from_recovers_the_charges_of_a_linear_router():
    """Timings made by the model itself (fixed charge F, per-cache charge P, lookups c_k, exit
    e_0) give back F and P; too few caches or no exit timing give zeros."""
    fixed, per_cache, c, e0 = 2e-5, 7e-6, np.array([3e-5, 1e-5, 4e-5, 2e-5]), 5e-5
    m = len(c)
    charge = costs.charges_from(
        list(fixed + per_cache + c),
        fixed + m * per_cache + c.sum(),
        fixed + per_cache + e0,
        fixed + m * per_cache + e0,
    )
    assert np.allclose(charge, (fixed, per_cache), rtol=0, atol=1e-12)
    assert costs.charges_from([1e-5], 1e-5, 1e-5, 1e-5) == (0.0, 0.0)
    no_exit = costs.charges_from(list(fixed + per_cache + c), fixed + m * per_cache + c.sum())
    assert no_exit.per_cache_s == 0.0 and no_exit.fixed_s > 0


def test_lookups_of_one_program_share_a_compiled_router(mlp, monkeypatch):
    heads, params = fc_caches(mlp.network, (0, 1), mlp.network.num_classes)
    decide = policy_builder("gati")(heads[0])
    # Seeds, learning rates and (for a threshold policy) selector kinds of one predictor:
    # one program at position 0. Under gati a fixed selector kind is a program of its own.
    keys = [
        "classifier/p0/fc-d4-h128/s0/lr0.01",
        "classifier/p0/fc-d4-h128-msp/s0/lr0.01",
        "classifier/p0/fc-d4-h128-ent/s1/lr0.003",
        "gati/p0/fc-d4-h128/s0/lr0.01",
        "gati/p0/fc-d4-h128/s1/lr0.003",
        "gati/p0/fc-d4-h128-msp/s0/lr0.01",
    ]
    lookups = {k: (0, decide, params[0], "gati") for k in keys}
    lookups["gati/p1/fc-d4-h128/s0/lr0.01"] = (
        1,
        policy_builder("gati")(heads[1]),
        params[1],
        "gati",
    )
    lookups["knn/p0/knn-c64-g2-n3"] = (0, decide, params[0], "gati")  # no sharing: its own
    built = []
    real = costs.Router

    def counting(*args, **kwargs):
        built.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(costs, "Router", counting)
    measured = costs.measure_lookups(mlp, lookups, group_size=1, repeats=6)
    assert set(measured) == set(lookups)
    assert built == [(0,), (0,), (0,), (1,), (0,)]
    # A threshold lookup of one member is timed once for every selector kind (it ignores
    # the selector); another member, or a gati selector kind, is timed on its own.
    assert measured[keys[1]] is measured[keys[0]]
    assert measured[keys[2]] is not measured[keys[0]]
    assert measured[keys[5]] is not measured[keys[3]]
    assert costs._program_of(keys[1]) == costs._program_of(keys[2]) == "classifier/p0/fc-d4-h128"
    assert costs._program_of(keys[3]) == costs._program_of(keys[4]) == "gati/p0/fc-d4-h128#learned"
    assert costs._program_of(keys[5]) == "gati/p0/fc-d4-h128#softmax"


def test_miss_overheads_share_the_plain_timings_of_their_chunk(mlp, monkeypatch):
    """Routers timed together: each divided by the plain network of its own run, a chunk of
    routers per run (the plain network timed once per chunk, not once per router), the
    median over three trials, and 0 for a deployment of nothing."""
    from gati_jax.runtime.deployment import Deployment

    heads, params = fc_caches(mlp.network, (0, 1), mlp.network.num_classes)
    deps = [
        Deployment("gati", (0,), heads[:1], params[:1], np.zeros(1, np.float32)),
        Deployment("none", (), (), (), np.zeros(0)),
        Deployment("gati", (1,), heads[1:], params[1:], np.zeros(1, np.float32)),
        Deployment("gati", (0, 1), heads, params, np.zeros(2, np.float32)),
    ]
    runs = []

    def timed(fns, repeats, block):
        # Trial t of a run: the plain network at 1 + t, router k at (1 + t)(1 + (k + 1) / 10);
        # the second trial's routers also read 5x (a burst the median leaves out).
        runs.append(list(fns))
        t = sum(r == runs[-1] for r in runs) - 1
        out = {"plain": 1.0 + t}
        for name in fns:
            if name != "plain":
                out[name] = (1.0 + t) * (1 + (int(name) + 1) / 10) * (5 if t == 1 else 1)
        return out

    monkeypatch.setattr(costs, "measure_interleaved", timed)
    got = costs.measure_miss_overheads(mlp, deps, 1, 30, chunk=2)
    assert got == pytest.approx([0.1, 0.0, 0.3, 0.4])
    # Three deployments to time, two per chunk: two runs of three trials, plain first in each.
    assert runs == [["plain", "0", "2"]] * 3 + [["plain", "3"]] * 3
    with pytest.raises(ValueError, match="chunk"):
        costs.measure_miss_overheads(mlp, deps, 1, 30, chunk=0)
    with pytest.raises(ValueError, match="routers"):
        costs.measure_miss_overheads(mlp, deps, 1, 30, routers=[None])


def test_route_times_interleaves_chunks_and_takes_the_median_over_rounds():
    """Every program streams every request once per round (after five warm-up calls), chunk
    by chunk, the program that goes first rotating; a request's time is its median."""
    from gati_jax.planner.cost_check import route_times

    calls = []

    def program(name):
        def run(x):
            calls.append((name, int(x[0])))
            return x

        return run

    requests = [np.array([i]) for i in range(7)]
    names = ["a", "b", "c"]
    times = route_times({n: program(n) for n in names}, requests, repeats=3, chunk=3)
    assert set(times) == set(names) and all(t.shape == (7,) for t in times.values())
    assert all(np.all(t >= 0) for t in times.values())
    timed = calls[5 * len(names) :]  # after the warm-up
    assert len(timed) == 3 * 7 * len(names)
    # Per round, three chunks (3, 3 and 1 requests); each program runs a chunk in one run.
    firsts = []
    k = 0
    for _ in range(3):  # rounds
        for size in (3, 3, 1):
            firsts.append(timed[k][0])
            block = timed[k : k + size * len(names)]
            assert [r for _, r in block[:size]] == list(range(block[0][1], block[0][1] + size))
            k += size * len(names)
    assert firsts == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    with pytest.raises(ValueError, match="chunk"):
        route_times({"a": program("a")}, requests, chunk=0)
    with pytest.raises(ValueError, match="repeats"):
        route_times({"a": program("a")}, requests, repeats=0)
