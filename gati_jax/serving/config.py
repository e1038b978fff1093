"""Config sections ``serving`` (how requests are grouped and timed) and ``benchmark`` (which
policies serve which workloads side by side), with their validation."""

from __future__ import annotations

import ml_collections

from gati_jax.config_checks import require, require_at_least


def serving_config() -> ml_collections.ConfigDict:
    """The ``serving`` section (gati_jax/serving)."""
    c = ml_collections.ConfigDict()
    # open: Poisson arrivals at workload.rate; closed: `concurrency` clients, each sending its
    # next request when the previous one is answered.
    c.mode = "open"
    c.concurrency = 1
    # A group closes when it holds max_group requests or its oldest has waited max_wait_ms.
    c.max_group = 8
    c.max_wait_ms = 0.0
    # virtual: compute is measured for real, waiting for arrivals is simulated (no sleeping);
    # real: the serving loop sleeps until arrivals on the monotonic clock.
    c.clock = "virtual"
    # Compaction (gati_jax/runtime/router.py): after each cache position the rows still
    # running are gathered into a smaller bucket, so a half-exited group stops paying for its
    # exited half. Off by default: each group-size program then holds the later stages once
    # per smaller bucket (several times the compile time), for nothing when groups hold one
    # request. Static policies only; gati-online's tapped router does not compact.
    c.compaction = False
    return c


def validate_serving(s: ml_collections.ConfigDict) -> None:
    """Checks the ``serving`` section."""
    from gati_jax.serving.clock import CLOCKS
    from gati_jax.serving.loop import MODES

    require(s.mode in MODES, "serving.mode", s.mode, f"one of {MODES}")
    require_at_least(s, "serving", ("concurrency", "max_group"), 1)
    require(s.max_wait_ms >= 0, "serving.max_wait_ms", s.max_wait_ms, ">= 0")
    require(s.clock in CLOCKS, "serving.clock", s.clock, f"one of {CLOCKS}")


def benchmark_config() -> ml_collections.ConfigDict:
    """The ``benchmark`` section (gati_jax/jobs/benchmark.py, scripts/benchmark.py)."""
    c = ml_collections.ConfigDict()
    # Every policy on every workload, each planned for planner.eps.
    c.workloads = ("uniform", "temporal", "shift")
    c.policies = ("none", "gati", "confidence", "entropy", "apparate", "apparate-online", "knn",
                  "oracle")
    # Rounds per (workload, policy), in rotating policy order; figures are medians over rounds.
    c.rounds = 3
    # With the virtual clock, policies serve interleaved, this many groups per turn.
    c.turn = 25
    # Serving throughput vs device count (gati_jax/experiments/device_scaling.py): these
    # counts, empty = 1, 2, 4, ... up to the visible devices; group = closed-loop clients.
    c.device_counts = ()
    c.scaling_group = 32
    c.scaling_requests = 256
    return c


def validate_benchmark(b: ml_collections.ConfigDict) -> None:
    """Checks the ``benchmark`` section against the registered workloads and policies."""
    from gati_jax.data.workloads import available_workloads
    from gati_jax.runtime.config import served_policy_names

    known = served_policy_names()
    require(len(b.workloads) > 0 and all(w in available_workloads() for w in b.workloads),
            "benchmark.workloads", b.workloads, f"workloads among {available_workloads()}")
    require(len(b.policies) > 0 and all(p in known for p in b.policies) and "none" in b.policies,
            "benchmark.policies", b.policies, f"policies among {known}, including 'none'")
    require_at_least(b, "benchmark", ("rounds", "turn", "scaling_group", "scaling_requests"), 1)
    require(all(int(d) >= 1 for d in b.device_counts), "benchmark.device_counts",
            b.device_counts, "positive device counts")
