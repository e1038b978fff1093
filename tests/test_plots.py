"""The report's headline plots: the curves they draw, and that each writes its PNG."""

from __future__ import annotations

import pytest

from gati_jax.experiments.plots import exit_curve, plot_exit_depth, plot_measured_tradeoff


def test_exit_curve_places_exits_at_their_cumulative_cost():
    # Four stages of 1, 1, 2, 4 (total 8): position 0 is 1/8 of the network, position 2 half.
    xs, ys, mean_cost = exit_curve({"0": 0.5, "2": 0.25}, [1.0, 1.0, 2.0, 4.0])
    assert xs == pytest.approx([0.0, 0.125, 0.5, 1.0])
    assert ys == pytest.approx([0.0, 0.5, 0.75, 1.0])
    assert mean_cost == pytest.approx(0.5 * 0.125 + 0.25 * 0.5 + 0.25 * 1.0)
    # No exits: everyone runs the whole network.
    assert exit_curve({}, [1.0, 3.0])[2] == pytest.approx(1.0)


def test_headline_plots_write_their_files(tmp_path):
    rows = [
        {"workload": w, "policy": p, "speedup_vs_none": s, "agreement": a, "feasible": f}
        for w in ("uniform", "video")
        for p, s, a, f in (
            ("none", 1.0, 1.0, True),
            ("gati", 2.1, 0.992, True),
            ("confidence", 1.9, 0.985, False),
            ("oracle", 4.0, 1.0, True),
        )
    ]
    plot_measured_tradeoff(rows, 0.01, tmp_path / "tradeoff.png")
    plot_exit_depth(
        {"uniform": {"none": {}, "gati": {"0": 0.6, "5": 0.2}}}, [1.0] * 10, tmp_path / "depth.png"
    )
    for name in ("tradeoff.png", "depth.png"):
        assert (tmp_path / name).stat().st_size > 10_000
