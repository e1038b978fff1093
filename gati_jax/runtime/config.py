"""Config section ``policy``: the exit policy one router serves, and its validation."""

from __future__ import annotations

import ml_collections

from gati_jax.config_checks import require, require_at_least


def policy_config() -> ml_collections.ConfigDict:
    """The ``policy`` section (gati_jax/runtime/policies.py, gati_jax/runtime/deployment.py)."""
    c = ml_collections.ConfigDict()
    # "none" or a registered policy (gati_jax/runtime/policies.py, gati_jax/runtime/knn.py).
    c.name = "gati"
    # Deployed positions; empty means every explored position (best candidate at each).
    c.positions = ()
    # gati: the precision target whose calibrated thresholds are used (one of caches.targets).
    c.target = 0.99
    # One per deployed position; confidence, entropy and knn (a radius) need them.
    c.thresholds = ()
    c.max_group = 32
    c.knn_capacity = 2000
    c.knn_grid = 2
    c.knn_neighbours = 3
    return c


def policy_names() -> tuple[str, ...]:
    """Every name ``policy.name`` may take: "none" (the plain network) and the registry's."""
    from gati_jax.runtime.policies import available_policies

    return ("none", *available_policies())


# What the benchmark serves besides the registered policies (benchmark.policies): Apparate
# re-tuning while it serves (gati_jax/online/apparate.py) and the traditional recency cache,
# gati-online's recency memory served alone (knn-recent, gati_jax/jobs/benchmark.py).
# gati-online serves beside gati whenever online.enabled.
SERVED_VARIANTS = ("apparate-online", "knn-recent")


def served_policy_names() -> tuple[str, ...]:
    """Every name ``benchmark.policies`` may take: :func:`policy_names` and the variants."""
    return (*policy_names(), *SERVED_VARIANTS)


def validate_policy(p: ml_collections.ConfigDict, targets: tuple[float, ...]) -> None:
    """Checks the ``policy`` section against the calibrated ``caches.targets``."""
    names = policy_names()
    require(p.name in names, "policy.name", p.name, f"one of {list(names)}")
    require(
        any(abs(p.target - t) < 1e-12 for t in targets),
        "policy.target",
        p.target,
        f"one of caches.targets {tuple(targets)} (only those are calibrated)",
    )
    require(
        not p.thresholds or not p.positions or len(p.thresholds) == len(p.positions),
        "policy.thresholds",
        p.thresholds,
        "one per entry of policy.positions",
    )
    require(
        p.name not in ("confidence", "entropy", "knn") or len(p.thresholds) > 0,
        "policy.thresholds",
        p.thresholds,
        f"policy '{p.name}' needs thresholds",
    )
    require_at_least(p, "policy", ("max_group", "knn_capacity", "knn_grid", "knn_neighbours"), 1)
