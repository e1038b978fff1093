"""Config sections ``serving`` (how requests are grouped and timed), ``benchmark`` (which
policies serve which workloads side by side) and ``server`` (the network front end,
gati_jax/serve: where it listens, how much it accepts, what it refuses), with their
validation. Requests are grouped by ``serving.max_group`` and ``serving.max_wait_ms`` in the
simulator and in the server alike."""

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
    # Every policy on every workload, each planned for planner.eps (knn-recent, the recency
    # memory served alone, is calibrated online at online.recency_target like gati-online's
    # memory; it needs online.recency_positions > 0).
    c.workloads = ("uniform", "temporal", "shift")
    c.policies = (
        "none",
        "gati",
        "confidence",
        "entropy",
        "apparate",
        "apparate-online",
        "knn",
        "knn-recent",
        "oracle",
    )
    # An A/A control: this policy is also served as a second copy through a router of its own
    # ('<policy>-copy', kept out of the tables); the copy's speedup over it, with the paired
    # interval the comparisons use, shows how far two identical programs read apart in this
    # serving ('' for none; a policy not in ``policies`` is not served, so neither is its
    # copy). A policy that does not learn while it serves.
    c.control = "confidence"
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
    from gati_jax.runtime.config import SERVED_VARIANTS, served_policy_names

    known = served_policy_names()
    require(
        len(b.workloads) > 0 and all(w in available_workloads() for w in b.workloads),
        "benchmark.workloads",
        b.workloads,
        f"workloads among {available_workloads()}",
    )
    require(
        len(b.policies) > 0 and all(p in known for p in b.policies) and "none" in b.policies,
        "benchmark.policies",
        b.policies,
        f"policies among {known}, including 'none'",
    )
    require(
        # The variants learn while they serve (so does gati-online, never listed here): a
        # copy would not share their state.
        b.control == "" or (b.control in known and b.control not in SERVED_VARIANTS),
        "benchmark.control",
        b.control,
        f"'' or a policy among {known} that does not learn while it serves "
        f"(not {', '.join(SERVED_VARIANTS)})",
    )
    require_at_least(b, "benchmark", ("rounds", "turn", "scaling_group", "scaling_requests"), 1)
    require(
        all(int(d) >= 1 for d in b.device_counts),
        "benchmark.device_counts",
        b.device_counts,
        "positive device counts",
    )


# What a server can serve from a plan: the plain network, the plan's own policy, or the
# plan's gati caches learning online (the plan's policy must then be gati).
SERVED_POLICIES = ("none", "plan", "gati-online")


def server_config() -> ml_collections.ConfigDict:
    """The ``server`` section (gati_jax/serve, scripts/serve.py, scripts/load_test.py)."""
    c = ml_collections.ConfigDict()
    # "none" (the plain network), "plan" or the plan's policy name (e.g. "gati": the plan as
    # planned), or "gati-online" (the plan's gati caches, learning from the stream).
    c.policy = "plan"
    # Loopback by default: a server reachable from elsewhere is a choice (0.0.0.0).
    c.host = "127.0.0.1"
    c.port = 8000
    # Connections the kernel holds until the server accepts them (capped by the kernel's
    # net.core.somaxconn). While a group computes nothing is accepted; past the backlog a new
    # connection's SYN is dropped and the client retries after a second: with 128 (asyncio's
    # default), 325 connections of a 2x-overload run were dropped and waited 1-1.5 s.
    c.backlog = 2048
    # Images waiting to be grouped, at most; a request that would pass it is refused at once
    # (503 with Retry-After), so a burst never grows the queue or the latency without limit.
    # A request holding more images than this can never be served: 413.
    c.max_queue = 256
    # A request still waiting for its group this long after it arrived is refused then (503)
    # rather than served late: every request is answered or refused within about this plus
    # one group's compute, however slow the network or the machine.
    c.max_queue_wait_ms = 250.0
    # Largest request body accepted (413 beyond): 1 MiB holds a batch of ~1,300 28x28 images.
    c.max_body_bytes = 1 << 20
    # What a 503 asks the client to wait before retrying (Retry-After, whole seconds).
    c.retry_after_s = 1
    # After each request the event loop polls this long before it sleeps, so the next
    # request's bytes do not have to wake the process (gati_jax/serve/frontend.py); 0: off.
    c.idle_poll_ms = 1.0
    # Ray Serve (gati_jax/serve/ray_app.py, the `serve` extra): replicas of the deployment,
    # and how often a gati-online replica fetches the learner's latest parameters.
    c.num_replicas = 1
    c.sync_every_s = 1.0
    return c


def validate_server(s: ml_collections.ConfigDict) -> None:
    """Checks the ``server`` section (the policy against a plan is checked when serving)."""
    require(
        isinstance(s.policy, str) and s.policy != "",
        "server.policy",
        s.policy,
        f"one of {SERVED_POLICIES} or the plan's policy name",
    )
    require(
        isinstance(s.host, str) and s.host != "", "server.host", s.host, "a host name or address"
    )
    require(0 <= int(s.port) <= 65535, "server.port", s.port, "in [0, 65535] (0: any free port)")
    require_at_least(s, "server", ("max_queue", "num_replicas", "backlog"), 1)
    require(int(s.max_body_bytes) >= 1024, "server.max_body_bytes", s.max_body_bytes, ">= 1024")
    require(
        int(s.retry_after_s) >= 1, "server.retry_after_s", s.retry_after_s, ">= 1 (whole seconds)"
    )
    require(s.sync_every_s > 0, "server.sync_every_s", s.sync_every_s, "> 0")
    require(s.max_queue_wait_ms > 0, "server.max_queue_wait_ms", s.max_queue_wait_ms, "> 0")
    require(s.idle_poll_ms >= 0, "server.idle_poll_ms", s.idle_poll_ms, ">= 0 (0: off)")
