"""Config section ``planner``: the accuracy bound, memory budget, search and latency profile."""

from __future__ import annotations

import ml_collections

from gati_jax.config_checks import require, require_at_least


def planner_config() -> ml_collections.ConfigDict:
    """The ``planner`` section (gati_jax/planner, gati_jax/jobs/planning.py)."""
    c = ml_collections.ConfigDict()
    # Plans keep agreement with the base network >= 1 - eps on the tuning data.
    c.eps = 0.01
    # Total bytes of all deployed cache parameters.
    c.memory_budget_bytes = 2 * 1024**2
    # The most a request that exits nowhere may pay over the plain network, as a fraction of
    # it (Apparate's ramp budget; < 0: no bound, plans minimise the mean alone). Held by
    # measurement: the chosen plan's all-miss request is timed (at group_size), and while it
    # breaks the bound its lookups are timed alone, each is charged at least what it
    # measured, and the planner plans again, at most miss_rounds times; if none held it, the
    # plan deploys nothing (gati_jax/planner/miss_bound.py).
    c.max_miss_overhead = -1.0
    c.miss_rounds = 3
    # Apparate (gati_jax/planner/apparate.py): the most ramps it deploys, and its tail
    # budget, the most its ramps may add to a request that exits nowhere, as a fraction of
    # the plain network, beside the router's fixed charge (max_miss_overhead, when set,
    # holds as well).
    c.apparate_ramps = 3
    c.apparate_tail_budget = 0.05
    # Which explored candidates the planner may deploy: "frontier" (Pareto) or "all".
    c.candidates = "frontier"
    # Threshold levels per candidate (score quantiles on the tuning data).
    c.grid = 48
    # Agreement must hold for the one-sided Wilson lower bound at this confidence (0: the
    # point estimate on the tuning data, which over-fits it and misses the bound on test data).
    c.confidence = 0.95
    # The fraction of tuning requests the search never sees: its plan is certified on them,
    # its thresholds moved together to the loosest setting that holds the bound there with
    # every stricter one holding it too (gati_jax/planner/certify.py). A search over many
    # positions and thresholds is optimistic about its own tuning requests. 0: no hold-out,
    # plans keep the bound on the searched requests only.
    c.certify_fraction = 0.5
    # The exhaustive comparator runs on this many evenly spaced positions with a coarse grid.
    c.exhaustive_positions = 6
    c.exhaustive_grid = 4
    # Further bounds planned for the latency/agreement trade-off plot and table.
    c.sweep_eps = (0.02,)
    # False: a bound the tuning set cannot certify (too few validation requests for eps at
    # this confidence) stops planning with a message saying what to change; True: plan
    # anyway, every plan then reported infeasible (gati_jax/planner/feasibility.py).
    c.allow_infeasible = False
    # Latency profiles: requests per group, where the JSON lives (empty: WORKDIR/profile.json)
    # and whether to measure again even when a profile for this backend exists.
    c.group_size = 1
    c.profile = ""
    c.remeasure = False
    c.latency_repeats = 20
    # Positions timed per lookup program (one predictor architecture on one activation shape:
    # the planner prices its lookups at the median of their timings, planner/build.py); the
    # rest are priced at those timings, and a lookup a plan chooses is timed at its own
    # position in the confirmation rounds (confirm_rounds). On a deep network a program sits
    # at a dozen positions and each timing compiles a whole-network router. 0: every lookup.
    c.timings_per_program = 3
    # Rounds of "measure the lookups our plans chose once more, and the router's charges on
    # the router they chose, plan again" (0: off): a plan favours lookups whose one
    # measurement came out low (the winner's curse), and the charges depend on which caches
    # share a router.
    c.confirm_rounds = 2
    # Validation requests routed one by one to check predicted against measured latency.
    c.check_requests = 1000
    # gati deploys a threshold policy's plan (its predictors with the max-softmax or entropy
    # selector kind: the same exits) instead of its own when that plan, predicted within this
    # fraction of ours, routes the check requests faster side by side: the cost model's error
    # (several percent) exceeds the gaps between such plans. 0: ours as the model ranks it.
    c.choice_margin = 0.15
    return c


def validate_planner(p: ml_collections.ConfigDict) -> None:
    """Checks the ``planner`` section."""
    require(0 <= p.eps < 1, "planner.eps", p.eps, "in [0, 1)")
    require(
        p.memory_budget_bytes >= 0, "planner.memory_budget_bytes", p.memory_budget_bytes, ">= 0"
    )
    require(
        p.candidates in ("frontier", "all"),
        "planner.candidates",
        p.candidates,
        "'frontier' or 'all'",
    )
    require(0 <= p.confidence < 1, "planner.confidence", p.confidence, "in [0, 1)")
    require(
        0 <= p.certify_fraction < 1, "planner.certify_fraction", p.certify_fraction, "in [0, 1)"
    )
    require(
        all(0 <= e < 1 for e in p.sweep_eps), "planner.sweep_eps", p.sweep_eps, "bounds in [0, 1)"
    )
    require_at_least(
        p,
        "planner",
        (
            "grid",
            "exhaustive_positions",
            "exhaustive_grid",
            "group_size",
            "latency_repeats",
            "check_requests",
        ),
        1,
    )
    require_at_least(p, "planner", ("confirm_rounds", "miss_rounds", "timings_per_program"), 0)
    require_at_least(p, "planner", ("apparate_ramps",), 1)
    require(p.choice_margin >= 0, "planner.choice_margin", p.choice_margin, ">= 0")
    require(
        p.apparate_tail_budget >= 0, "planner.apparate_tail_budget", p.apparate_tail_budget, ">= 0"
    )
    require(
        isinstance(p.max_miss_overhead, (int, float)),
        "planner.max_miss_overhead",
        p.max_miss_overhead,
        "a fraction (negative: no bound)",
    )
