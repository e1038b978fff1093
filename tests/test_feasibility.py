"""The accuracy bound's reach on a tuning set, against the planner's own error budget."""

from __future__ import annotations

import math

import pytest

from gati_jax.planner.feasibility import (
    best_certifiable_eps,
    check_feasibility,
    min_tuning_requests,
)
from gati_jax.planner.instance import max_errors


@pytest.mark.parametrize(
    "eps,confidence", [(0.01, 0.95), (0.02, 0.95), (0.05, 0.9), (0.001, 0.99), (0.1, 0.5)]
)
def test_min_tuning_requests_is_where_the_planners_budget_turns_non_negative(eps, confidence):
    need = min_tuning_requests(eps, confidence)
    # The planner's own budget: -1 means not even an error-free plan meets the bound.
    assert max_errors(need, eps, confidence) >= 0
    assert max_errors(need - 1, eps, confidence) == -1 if need > 1 else True


def test_the_figures_a_user_is_told():
    # eps 0.01 at 95%: about 270 agreeing requests; 250 certify only about 1.07%.
    assert min_tuning_requests(0.01, 0.95) == 268
    assert best_certifiable_eps(250, 0.95) == pytest.approx(0.0107, abs=1e-4)
    assert best_certifiable_eps(0, 0.95) == 1.0
    # The point estimate certifies any eps from one request.
    assert min_tuning_requests(0.01, 0.0) == 1
    assert math.isinf(min_tuning_requests(0.0, 0.95))


def test_infeasible_message_names_the_minimum_and_the_remedies():
    result = check_feasibility(250, 0.01, 0.95)
    assert not result.feasible
    text = result.message()
    assert "at least 268 agreeing tuning requests" in text and "and 250 certify plans" in text
    for remedy in (
        "data.validation_size",
        "planner.eps",
        "planner.confidence",
        "planner.certify_fraction",
        "planner.allow_infeasible",
    ):
        assert remedy in text
    assert check_feasibility(5000, 0.01, 0.95).feasible


def test_an_unreachable_bound_stops_the_main_job_before_any_work(tmp_path):
    import importlib.util
    from pathlib import Path

    from gati_jax.config import ConfigError
    from gati_jax.jobs.main_job import run_main_job

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("smoke", root / "configs/smoke.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.caches.checkpoint = str(root / "checkpoints/synthetic_mlp")
    config.planner.eps = 0.01  # 250 tuning requests certify at best 0.0107 at 95%
    with pytest.raises(ConfigError, match="needs at least 268 agreeing tuning requests"):
        run_main_job(config, str(tmp_path / "run"))
    # Nothing that would lock the work directory to this config was written.
    assert not (tmp_path / "run" / "config.json").exists()
    config.planner.allow_infeasible = True
    from gati_jax.jobs.planning import check_bound_reachable

    assert not check_bound_reachable(config.planner, 500).feasible
