"""Offline bounds of online learning: the cascade as the router runs it, costs that add up."""

from __future__ import annotations

import numpy as np
import pytest
from test_router import CLASSES, _bank, _base_answers, _images, _model

from gati_jax.experiments.online_headroom import HeadroomSettings, exit_costs, segment_headroom
from gati_jax.runtime import deploy

SETTINGS = HeadroomSettings(
    train=10, calibrate=20, steps=5, batch_size=4, target=0.9, confidence=0.0
)


def _deployment(network, policy="gati"):
    # Thresholds inside the untrained selectors' narrow score ranges: exits at both positions.
    cands, bank = _bank(network, (0, 2), (0.4445, 0.4545))
    thresholds = None if policy == "gati" else (0.5, 0.5)
    return deploy(bank, cands, policy, thresholds)


def test_static_cascade_exits_where_the_router_does_and_costs_add_up(base):
    network, variables = base
    model, dep = _model(network, variables), _deployment(network)
    images = _images(160, seed=5)
    labels = np.arange(160) % CLASSES
    costs = {"0": 0.2, "2": 0.6, "full": 1.1}
    result = segment_headroom(model, dep, images, labels, [(0, 1), (2,)], SETTINGS, costs)
    assert [(r["hot"], r["position"]) for r in result["caches"]] == [
        ("0,1", 0),
        ("0,1", 2),
        ("2", 0),
        ("2", 2),
    ]
    for hot in ((0, 1), (2,)):
        members = np.random.default_rng(SETTINGS.seed).permutation(
            np.flatnonzero(np.isin(labels, hot))
        )
        test = members[SETTINGS.train + SETTINGS.calibrate :]
        want = dep.reference(model).route(dep.params, dep.thresholds, images[test])
        row = next(
            r
            for r in result["cascade"]
            if r["hot"] == ",".join(map(str, hot)) and r["caches"] == "static"
        )
        assert min(row["exit_0"], row["exit_2"], row["exit_full"]) > 0
        assert row["exit_0"] == pytest.approx(np.mean(want.exit_stage == 0))
        assert row["exit_2"] == pytest.approx(np.mean(want.exit_stage == 2))
        assert row["exit_full"] == pytest.approx(np.mean(~want.hit))
        answers = _base_answers(network, variables, images[test])
        assert row["agreement"] == pytest.approx(np.mean(want.answer == answers))
    for row in result["cascade"]:
        fractions = [row["exit_0"], row["exit_2"], row["exit_full"]]
        assert sum(fractions) == pytest.approx(1.0)
        assert row["mean_cost"] == pytest.approx(np.dot(fractions, [0.2, 0.6, 1.1]))
        assert row["speedup"] == pytest.approx(1.0 / row["mean_cost"])


def test_exit_costs_rank_early_exits_cheaper_than_the_full_run(base):
    network, variables = base
    costs = exit_costs(_model(network, variables), _deployment(network), repeats=5)
    assert set(costs) == {"0", "2", "full"}
    assert all(np.isfinite(c) and c > 0 for c in costs.values())


def test_headroom_rejects_what_it_cannot_bound(base):
    network, variables = base
    model = _model(network, variables)
    images, labels = _images(40), np.arange(40) % CLASSES
    with pytest.raises(ValueError, match="gati deployment"):
        segment_headroom(
            model, _deployment(network, "confidence"), images, labels, [(0,)], SETTINGS
        )
    with pytest.raises(ValueError, match="labels have shape"):
        segment_headroom(model, _deployment(network), images, labels[:5], [(0,)], SETTINGS)
    with pytest.raises(ValueError, match="fewer than train"):
        segment_headroom(model, _deployment(network), images, labels, [(0,)], SETTINGS)
    with pytest.raises(ValueError, match=r"hot classes \(0, 7\)"):
        segment_headroom(model, _deployment(network), images, labels, [(0, 7)], SETTINGS)
    with pytest.raises(ValueError, match="steps must be >= 0"):
        HeadroomSettings(steps=-1)
    with pytest.raises(ValueError, match="target"):
        HeadroomSettings(target=1.0)
