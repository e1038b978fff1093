"""Certifying searched plans on held-out tuning requests (gati_jax/planner/certify.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from test_planner import random_instance

from gati_jax.planner import certify, search
from gati_jax.planner.instance import Instance, Option, simulate, threshold_grid


def _one_cache(scores: np.ndarray, errors: np.ndarray, eps: float, grid: np.ndarray) -> Instance:
    n = len(scores)
    option = Option("p0/v/s0/lr0.01", scores, errors, ~errors, 0.01, 1, grid)
    return Instance(
        (0,), ((option,),), np.array([0.1, 1.0]), np.ones(n, bool), eps, 1e9, confidence=0.95
    )


def _draw(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    # A cache errs more on low scores: hits above t disagree with mass 0.1 (1 - t)^3 / 3, so
    # the true agreement is >= 0.99 exactly for thresholds >= 1 - 0.3^(1/3) (about 0.331).
    scores = rng.random(n)
    errors = rng.random(n) < 0.1 * (1 - scores) ** 2
    return scores, errors


_SAFE_THRESHOLD = 1 - 0.3 ** (1 / 3)


def test_the_split_is_seeded_disjoint_and_whole():
    searched, held = certify.split_requests(1000, 0.3)
    assert len(held) == 300 and len(searched) == 700
    assert np.array_equal(np.union1d(searched, held), np.arange(1000))
    again = certify.split_requests(1000, 0.3)
    assert np.array_equal(again[1], held)
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="held-out fraction"):
            certify.split_requests(1000, bad)
    with pytest.raises(ValueError, match="both parts"):
        certify.split_requests(1, 0.5)


def test_a_subset_keeps_options_and_thresholds_and_takes_the_requests():
    inst = random_instance(3, requests=120)
    index = np.arange(0, 120, 3)
    part = certify.subset(inst, index)
    assert part.num_requests == 40
    choices = search.joint(inst)
    whole, sub = simulate(inst, choices), simulate(part, choices)
    np.testing.assert_array_equal(sub.errors, whole.errors[index])
    np.testing.assert_allclose(sub.cost_s, whole.cost_s[index])


def test_shifting_moves_every_threshold_along_its_grid():
    grid = np.linspace(0.0, 1.0, 11)
    inst = _one_cache(np.linspace(0, 1, 50), np.zeros(50, bool), 0.01, grid)
    assert certify.shifted(inst, [(0, 0.5)], 0) == [(0, 0.5)]
    assert certify.shifted(inst, [(0, 0.5)], 2) == [(0, pytest.approx(0.7))]
    assert certify.shifted(inst, [(0, 0.5)], 6) == [None]  # past the top: closed
    assert certify.shifted(inst, [(0, 0.5)], -9) == [(0, 0.0)]  # below the bottom: all hit
    assert certify.shifted(inst, [None], 3) == [None]


def test_a_plan_too_loose_on_held_out_requests_is_made_stricter_and_a_strict_one_looser():
    rng = np.random.default_rng(0)
    scores, errors = _draw(rng, 2000)
    grid = threshold_grid(scores, 48)
    held = _one_cache(scores, errors, 0.01, grid)
    for start in (0.0, 0.9):  # everything hits (true agreement 0.967) / only the top decile
        cert = certify.certify(held, [(0, start)])
        assert cert.errors <= cert.budget == held.error_budget
        kept = cert.choices[0]
        assert kept is not None
        # The next looser member breaks the bound: the kept one is the loosest certified.
        looser = certify.shifted(held, [(0, start)], cert.shift - 1)
        assert simulate(held, looser).num_errors > cert.budget
        assert (cert.shift > 0) == (start == 0.0)
    # Both starts define the same family on one grid: the same plan is kept.
    a = certify.certify(held, [(0, 0.0)]).choices
    b = certify.certify(held, [(0, 0.9)]).choices
    assert a == b


def test_an_empty_plan_or_an_impossible_bound_certifies_the_empty_plan():
    rng = np.random.default_rng(1)
    scores, errors = _draw(rng, 50)
    held = _one_cache(scores, errors, 0.001, threshold_grid(scores, 8))  # 50 cannot certify
    assert held.error_budget < 0
    assert certify.certify(held, [(0, 0.5)]).choices == [None]
    assert certify.certify(held, [None]).choices == [None]


def test_certified_plans_keep_the_bound_on_new_requests_at_the_stated_confidence():
    # The guarantee itself: whatever plan the search proposes (here the loosest possible), the
    # certified threshold's true agreement is below 1 - eps in at most about 5% of draws of
    # the held-out requests. The same check on the searched requests alone fails far more.
    rng = np.random.default_rng(2)
    grid = np.linspace(0.0, 1.0, 101)
    trials, unsafe, unsafe_searched = 300, 0, 0
    for _ in range(trials):
        scores, errors = _draw(rng, 600)
        held = _one_cache(scores, errors, 0.01, grid)
        kept = certify.certify(held, [(0, 0.0)]).choices[0]
        unsafe += kept is not None and kept[1] < _SAFE_THRESHOLD - 1e-9
        # A search on the same requests without the Wilson margin (point estimate).
        best = search.single(dataclasses.replace(held, confidence=0.0))[0]
        unsafe_searched += best is not None and best[1] < _SAFE_THRESHOLD - 1e-9
    assert unsafe / trials <= 0.08
    assert unsafe_searched / trials >= 0.3
