"""Serving loop: hand-computed timelines on a fake clock, invariants, summaries, validation."""

from __future__ import annotations

import time

import numpy as np
import pytest
from conftest import assert_config_rejects

from gati_jax.config import base_config, validate_config
from gati_jax.serving import (
    FakeClock,
    MonotonicClock,
    ServingResult,
    VirtualClock,
    make_clock,
    serve,
    summarize,
    windowed,
)

LAST = 3  # last stage index of the fake network
POSITIONS = (0, 1)  # deployed cache positions
EXIT_BY_CLASS = np.array([0, 1, LAST, LAST])  # where a request of each class exits


def make_images(n: int, seed: int = 0) -> np.ndarray:
    """Tiny uint8 images whose class is their first pixel mod 4."""
    return np.random.default_rng(seed).integers(0, 256, (n, 2, 2, 1), dtype=np.uint8)


def image_class(images: np.ndarray) -> np.ndarray:
    return images[:, 0, 0, 0].astype(np.int64) % 4


def fake_route(calls: list | None = None):
    """A numpy route_group: exits by class, answers the class (wrong on full runs of class 3)."""

    def route(images: np.ndarray, index: np.ndarray):
        if calls is not None:
            calls.append(index.copy())
        cls = image_class(images)
        exit_stage = EXIT_BY_CLASS[cls]
        answer = np.where(cls == 3, 0, cls)
        return answer, exit_stage, exit_stage < LAST

    return route


def linear_cost(a: float, b: float):
    return lambda n: a + b * n


def check_invariants(result: ServingResult, calls: list, n: int, max_group: int) -> None:
    served = np.concatenate(calls)
    np.testing.assert_array_equal(served, np.arange(n))  # each once, in stream order
    assert all(1 <= len(c) <= max_group for c in calls)
    assert result.groups == len(calls)
    np.testing.assert_array_equal(
        result.group_size, np.repeat([len(c) for c in calls], [len(c) for c in calls])
    )
    assert np.all(result.queueing >= 0)
    assert np.all(np.diff(result.arrival) >= 0)
    assert np.all(np.diff(result.start) >= 0)
    np.testing.assert_allclose(result.latency, result.queueing + result.compute, atol=1e-12)
    # Groups run one after another on one device.
    starts = result.start[np.unique(result.group, return_index=True)[1]]
    finishes = result.finish[np.unique(result.group, return_index=True)[1]]
    assert np.all(starts[1:] >= finishes[:-1] - 1e-12)


def test_hand_computed_open_timeline():
    # r0 at 0 waits for r1 (at 1 ms, filling the group of 2) -> runs 1..6 ms. r2 arrives at
    # 10 ms alone, waits its full 2 ms -> runs 12..17 ms.
    images = make_images(3)
    calls: list = []
    result = serve(
        fake_route(calls),
        images,
        arrivals=np.array([0.0, 0.001, 0.010]),
        max_group=2,
        max_wait_s=0.002,
        clock=FakeClock(lambda n: 0.005),
        progress=False,
    )
    assert [c.tolist() for c in calls] == [[0, 1], [2]]
    assert result.start == pytest.approx([0.001, 0.001, 0.012])
    assert result.finish == pytest.approx([0.006, 0.006, 0.017])
    assert result.latency == pytest.approx([0.006, 0.005, 0.007])
    assert result.queueing == pytest.approx([0.001, 0.0, 0.002])
    assert result.compute == pytest.approx([0.005] * 3)
    assert result.group_size.tolist() == [2, 2, 1]
    assert result.duration == pytest.approx(0.017)
    assert result.groups == 2
    cls = image_class(images)
    np.testing.assert_array_equal(result.exit_stage, EXIT_BY_CLASS[cls])
    np.testing.assert_array_equal(result.hit, EXIT_BY_CLASS[cls] < LAST)


def test_arrivals_during_compute_queue_and_join_up_to_max_group():
    # Cost 9 ms + 1 ms per request. r0 runs alone 0..10 ms (max_wait 0); r1..r4 arrive
    # meanwhile; at 10 ms r1..r3 form a full group (max_group 3), 10..22 ms; r4 then runs
    # alone at once, 22..32 ms.
    arrivals = np.array([0.0, 0.001, 0.002, 0.003, 0.008])
    calls: list = []
    result = serve(
        fake_route(calls),
        make_images(5),
        arrivals=arrivals,
        max_group=3,
        max_wait_s=0.0,
        clock=FakeClock(linear_cost(0.009, 0.001)),
        progress=False,
    )
    assert [c.tolist() for c in calls] == [[0], [1, 2, 3], [4]]
    assert result.start == pytest.approx([0.0, 0.010, 0.010, 0.010, 0.022])
    assert result.finish == pytest.approx([0.010, 0.022, 0.022, 0.022, 0.032])


def test_random_open_stream_invariants():
    rng = np.random.default_rng(1)
    n, max_group = 300, 5
    arrivals = np.cumsum(rng.exponential(1 / 800, n))
    calls: list = []
    result = serve(
        fake_route(calls),
        make_images(n),
        arrivals=arrivals,
        max_group=max_group,
        max_wait_s=0.003,
        clock=FakeClock(linear_cost(0.001, 0.0002)),
        progress=False,
    )
    check_invariants(result, calls, n, max_group)
    np.testing.assert_allclose(result.arrival, arrivals)
    assert result.group_size.max() == max_group
    # A group is dispatched once the server is free and its oldest request has waited max_wait,
    # or earlier when it is full.
    first = np.unique(result.group, return_index=True)[1]
    free = np.concatenate([[0.0], result.finish[first[:-1]]])
    deadline = np.maximum(result.arrival[first] + 0.003, free)
    assert np.all(result.start[first] <= deadline + 1e-12)
    full = result.group_size[first] == max_group
    assert np.all(result.start[first][~full] == pytest.approx(deadline[~full]))


def test_zero_wait_with_sparse_arrivals_runs_every_request_alone():
    n = 20
    arrivals = 0.010 * np.arange(n)  # 10 ms apart, compute 3 ms: the server is always idle
    calls: list = []
    result = serve(
        fake_route(calls),
        make_images(n),
        arrivals=arrivals,
        max_group=8,
        max_wait_s=0.0,
        clock=FakeClock(lambda k: 0.003),
        progress=False,
    )
    check_invariants(result, calls, n, 8)
    assert result.group_size.tolist() == [1] * n
    assert result.latency == pytest.approx(result.compute)
    assert result.queueing == pytest.approx(np.zeros(n), abs=1e-12)


@pytest.mark.parametrize(
    "concurrency,max_group,max_wait_s",
    [(1, 8, 0.0), (4, 8, 0.0), (4, 8, 0.002), (6, 4, 0.0), (3, 2, 0.001)],
)
def test_closed_loop_in_flight_and_throughput(concurrency, max_group, max_wait_s):
    n, cost = 240, 0.004  # group cost constant in its size
    calls: list = []
    result = serve(
        fake_route(calls),
        make_images(n),
        mode="closed",
        concurrency=concurrency,
        max_group=max_group,
        max_wait_s=max_wait_s,
        clock=FakeClock(lambda k: cost),
        progress=False,
    )
    check_invariants(result, calls, n, max_group)
    # In flight at time t: sent at or before t, answered after t.
    for t in result.arrival:
        in_flight = np.sum((result.arrival <= t) & (result.finish > t))
        assert in_flight <= concurrency
    assert result.arrival[: min(concurrency, n)] == pytest.approx(0.0)
    # Every client's next request is sent the moment its previous one is answered.
    sent_at = np.sort(result.finish)[: n - concurrency]
    np.testing.assert_allclose(result.arrival[concurrency:], sent_at)
    # All in-flight requests are queued whenever the server is free (nothing else can arrive),
    # so each group holds min(c, max_group) requests: when the queue is full it runs at once,
    # otherwise it waits max_wait for arrivals that cannot come.
    size = min(concurrency, max_group)
    assert result.group_size.tolist() == [size] * n
    wait = max_wait_s if concurrency < max_group else 0.0
    assert result.duration == pytest.approx(n / size * (cost + wait))
    throughput = summarize(result, np.zeros(n), np.zeros(n), POSITIONS, LAST)["throughput_rps"]
    assert throughput == pytest.approx(size / (cost + wait))


def test_closed_loop_with_fewer_requests_than_clients():
    result = serve(
        fake_route(),
        make_images(3),
        mode="closed",
        concurrency=10,
        max_group=2,
        max_wait_s=0.0,
        clock=FakeClock(lambda k: 0.001),
        progress=False,
    )
    assert result.arrival == pytest.approx([0.0, 0.0, 0.0])
    assert result.finish == pytest.approx([0.001, 0.001, 0.002])


def constructed_result(rng: np.random.Generator, n: int) -> ServingResult:
    arrival = np.sort(rng.uniform(0, 1, n))
    queueing = rng.exponential(0.002, n)
    compute = rng.uniform(0.001, 0.003, n)
    start = arrival + queueing
    exit_stage = rng.choice([0, 1, LAST], n, p=[0.3, 0.2, 0.5])
    return ServingResult(
        answer=rng.integers(0, 5, n),
        exit_stage=exit_stage,
        hit=exit_stage < LAST,
        arrival=arrival,
        start=start,
        finish=start + compute,
        latency=queueing + compute,
        queueing=queueing,
        compute=compute,
        group=np.arange(n) // 4,
        group_size=np.full(n, 4),
        duration=float((start + compute).max() - arrival[0]),
        groups=n // 4,
    )


def test_summarize_matches_numpy():
    rng = np.random.default_rng(2)
    n = 400
    result = constructed_result(rng, n)
    labels, base = rng.integers(0, 5, n), rng.integers(0, 5, n)
    s = summarize(result, labels, base, POSITIONS, LAST)
    latency_ms = 1e3 * result.latency
    assert s["requests"] == n
    assert s["mean_latency_ms"] == pytest.approx(latency_ms.mean())
    for q in (50, 95, 99):
        assert s[f"p{q}_latency_ms"] == pytest.approx(np.percentile(latency_ms, q))
    assert s["mean_queueing_ms"] == pytest.approx(1e3 * result.queueing.mean())
    assert s["mean_compute_ms"] == pytest.approx(1e3 * result.compute.mean())
    assert s["throughput_rps"] == pytest.approx(n / result.duration)
    assert s["accuracy"] == pytest.approx(np.mean(result.answer == labels))
    assert s["agreement"] == pytest.approx(np.mean(result.answer == base))
    assert s["hit_rate"] == pytest.approx(np.mean(result.exit_stage < LAST))
    assert set(s["hit_rate_per_position"]) == {"0", "1"}
    assert s["hit_rate_per_position"]["0"] == pytest.approx(np.mean(result.exit_stage == 0))
    assert sum(s["hit_rate_per_position"].values()) == pytest.approx(s["hit_rate"])
    assert s["exit_histogram"] == {
        str(k): int(np.sum(result.exit_stage == k)) for k in (0, 1, LAST)
    }
    assert s["mean_group_size"] == pytest.approx(4.0)


def test_summarize_rejects_mismatched_inputs():
    rng = np.random.default_rng(3)
    result = constructed_result(rng, 40)
    with pytest.raises(ValueError, match="labels must have shape"):
        summarize(result, np.zeros(39), np.zeros(40), POSITIONS, LAST)
    with pytest.raises(ValueError, match="neither deployed positions"):
        summarize(result, np.zeros(40), np.zeros(40), (0,), LAST)


def test_windowed_matches_slices():
    rng = np.random.default_rng(4)
    n, window = 103, 25
    result = constructed_result(rng, n)
    labels, base = rng.integers(0, 5, n), rng.integers(0, 5, n)
    rows = windowed(result, labels, base, window)
    assert [r["start"] for r in rows] == [0, 25, 50, 75, 100]
    assert [r["requests"] for r in rows] == [25, 25, 25, 25, 3]
    last = slice(100, 103)
    assert rows[-1]["hit_rate"] == pytest.approx(np.mean(result.hit[last]))
    assert rows[-1]["agreement"] == pytest.approx(np.mean(result.answer[last] == base[last]))
    assert rows[-1]["accuracy"] == pytest.approx(np.mean(result.answer[last] == labels[last]))
    assert rows[1]["mean_latency_ms"] == pytest.approx(1e3 * result.latency[25:50].mean())
    with pytest.raises(ValueError, match="window"):
        windowed(result, labels, base, 0)


def test_virtual_clock_replays_a_slow_stream_without_sleeping():
    n = 50
    arrivals = np.arange(n, dtype=np.float64)  # 1 request per second: 49 s of stream
    tic = time.perf_counter()
    result = serve(
        fake_route(),
        make_images(n),
        arrivals=arrivals,
        max_group=4,
        max_wait_s=0.0,
        clock=VirtualClock(),
        progress=False,
    )
    assert time.perf_counter() - tic < 1.0
    assert result.group_size.tolist() == [1] * n
    assert result.duration >= 49.0
    assert np.all(result.queueing < 1e-9)
    assert np.all(result.latency < 0.05)  # real numpy compute of one tiny request


def test_monotonic_clock_waits_for_arrivals():
    arrivals = np.array([0.0, 0.005, 0.010])
    tic = time.perf_counter()
    result = serve(
        fake_route(),
        make_images(3),
        arrivals=arrivals,
        max_group=4,
        max_wait_s=0.0,
        clock=MonotonicClock(),
        progress=False,
    )
    assert time.perf_counter() - tic >= 0.010
    assert np.all(result.start >= arrivals)
    np.testing.assert_allclose(result.latency, result.queueing + result.compute, atol=1e-12)


def test_clocks():
    clock = FakeClock(linear_cost(0.5, 0.25))
    assert clock.run(lambda: "x", 2) == ("x", 1.0)
    assert clock.now() == 1.0
    clock.wait_until(0.5)  # never backwards
    assert clock.now() == 1.0
    clock.wait_until(3.0)
    assert clock.now() == 3.0
    assert isinstance(make_clock("virtual"), VirtualClock)
    assert isinstance(make_clock("real"), MonotonicClock)
    with pytest.raises(ValueError, match="virtual"):
        make_clock("wall")


def test_bad_inputs_raise():
    images = make_images(4)
    route, ok = fake_route(), np.zeros(4)
    cases = [
        (dict(images=images[:0], arrivals=ok[:0]), "empty"),
        (dict(arrivals=None), "needs arrivals"),
        (dict(arrivals=ok[:3]), r"arrivals must have shape \(4,\)"),
        (dict(arrivals=np.array([0, 2, 1, 3.0])), "nondecreasing"),
        (dict(arrivals=np.array([0, 1, np.nan, 3.0])), "finite"),
        (dict(arrivals=np.array([0, 1, np.inf, np.inf])), "finite"),
        (dict(arrivals=ok, max_group=0), "max_group"),
        (dict(arrivals=ok, max_wait_s=-0.001), "max_wait_s"),
        (dict(arrivals=ok, max_wait_s=float("inf")), "max_wait_s"),
        (dict(mode="closed", concurrency=0), "concurrency"),
        (dict(arrivals=ok, mode="poisson"), r"unknown serving mode 'poisson'.*open.*closed"),
    ]
    for kwargs, message in cases:
        kwargs = {
            "images": images,
            "clock": FakeClock(lambda k: 0.001),
            "progress": False,
            **kwargs,
        }
        with pytest.raises(ValueError, match=message):
            serve(route, **kwargs)


def test_wrong_route_output_raises():
    images = make_images(4)

    def short(imgs, index):
        return np.zeros(len(imgs) - 1), np.zeros(len(imgs)), np.zeros(len(imgs), bool)

    with pytest.raises(
        ValueError,
        match=r"route_group returned answer of shape \(1,\) for a "
        r"group of 2",
    ):
        serve(
            short,
            images,
            arrivals=np.zeros(4),
            max_group=2,
            clock=FakeClock(lambda k: 0.0),
            progress=False,
        )
    with pytest.raises(ValueError, match="must return"):
        serve(
            lambda imgs, index: np.zeros(len(imgs)),
            images,
            arrivals=np.zeros(4),
            clock=FakeClock(lambda k: 0.0),
            progress=False,
        )


def test_route_group_gets_images_and_indices_of_its_group():
    images = make_images(10)
    seen: list = []

    def route(imgs, index):
        seen.append((imgs.copy(), index.copy()))
        return fake_route()(imgs, index)

    serve(
        route,
        images,
        arrivals=np.linspace(0, 0.01, 10),
        max_group=3,
        max_wait_s=0.004,
        clock=FakeClock(lambda k: 0.002),
        progress=False,
    )
    for imgs, index in seen:
        np.testing.assert_array_equal(imgs, images[index])


def test_validate_config_checks_serving():
    for key, value in [
        ("max_group", 0),
        ("concurrency", 0),
        ("max_wait_ms", -1.0),
        ("mode", "poisson"),
        ("clock", "wall"),
    ]:
        assert_config_rejects("serving", key, value)
    # The A/A control copies a policy that serves without learning, or none ('').
    for control in ("gati-online", "knn-recent", "apparate-online", "confidense"):
        assert_config_rejects("benchmark", "control", control)
    for control in ("", "none", "gati", "entropy"):
        config = base_config()
        config.benchmark.control = control
        validate_config(config)


def test_paired_p99_ratio_interval_holds_the_ratio_and_pairs_the_rounds():
    from gati_jax.serving.summary import paired_quantile_ratio_interval

    rng = np.random.default_rng(0)
    static = [rng.lognormal(0.0, 0.5, 4000) for _ in range(2)]
    # The same requests 1.3x slower: every resample gives exactly 1.3.
    low, high = paired_quantile_ratio_interval([1.3 * s for s in static], static)
    assert low == pytest.approx(1.3) and high == pytest.approx(1.3)
    # Independent noise on top: the interval holds the point ratio and is not degenerate.
    noisy = [1.3 * s * rng.lognormal(0.0, 0.2, s.size) for s in static]
    point = np.percentile(np.concatenate(noisy), 99) / np.percentile(np.concatenate(static), 99)
    low, high = paired_quantile_ratio_interval(noisy, static)
    assert low < point < high and high - low > 0.02
    with pytest.raises(ValueError, match="paired rounds"):
        paired_quantile_ratio_interval([static[0][:10]], [static[0][:11]])
    with pytest.raises(ValueError, match="one latency array per round"):
        paired_quantile_ratio_interval(static, static[:1])


def test_paired_mean_ratio_interval_pairs_blocks_of_the_same_requests():
    from gati_jax.serving.summary import paired_quantile_ratio_interval

    rng = np.random.default_rng(1)
    # A burst that slows every policy alike (one block of 100 requests 20x slower) must not
    # widen the paired interval: both sides resample the burst together.
    base = rng.lognormal(0.0, 0.3, 2000)
    base[500:600] *= 20
    ahead = [0.97 * base * rng.lognormal(0.0, 0.02, base.size)]
    low, high = paired_quantile_ratio_interval(ahead, [base], quantile=None)
    point = float(np.mean(ahead[0]) / np.mean(base))
    assert low < point < high < 1.0 and high - low < 0.01
    # Unpaired (the other stream's blocks shuffled), the burst would swing the ratio by far
    # more: the pairing is what makes a 3% difference visible.
    shuffled = [np.roll(ahead[0], 1000)]
    low, high = paired_quantile_ratio_interval(shuffled, [base], quantile=None)
    assert high - low > 0.1


def test_online_p99_ratio_pools_every_round_like_its_interval():
    from gati_jax.jobs.benchmark import ONLINE, online_figures

    rng = np.random.default_rng(3)
    chunks = {"audit": {"count": 3, "p50": 0.5, "p99": 1.0, "max": 1.1}}
    online_stats = {
        "updates": 1,
        "guard_events": [],
        "shift_events": [],
        "window_bytes": [0],
        "update_log": [],
        "chunk_ms_by_kind": chunks,
    }

    def rounds(latencies, online=False):
        return [
            {
                "mean_latency_ms": float(np.mean(l)),
                "latencies_ms": l,
                "agreement": 1.0,
                "windows": [{"agreement": 1.0}],
                "hit_rate": 0.5,
                "p99_latency_ms": float(np.percentile(l, 99)),
                "timeline": {"hit": [online]},
                **({"online": online_stats} if online else {}),
            }
            for l in latencies
        ]

    # Two rounds whose tails differ: the ratio of the rounds' median p99s is not the
    # pooled one, and falls outside the pooled interval.
    static = [rng.lognormal(0.0, 0.3, 2000), rng.lognormal(0.0, 0.3, 2000)]
    slow = [static[0] * 1.1, static[1] * 1.1]
    slow[1][:40] = 50.0  # one round with a heavy tail
    figures = online_figures(
        {"none": rounds(static), "gati": rounds(static), ONLINE: rounds(slow, online=True)},
        "temporal",
    )
    pooled = np.percentile(np.concatenate(slow), 99) / np.percentile(np.concatenate(static), 99)
    assert figures["p99_ratio_vs_static_gati"] == pytest.approx(pooled)
    assert figures["chunk_ms_by_kind"] == chunks  # the learner's chunk timings come along
    assert figures["timeline"] == {"gati": {"hit": [False]}, ONLINE: {"hit": [True]}}
    assert figures["p99_ratio_low90"] <= pooled <= figures["p99_ratio_high90"]
    medians = np.median([np.percentile(l, 99) for l in slow]) / np.median(
        [np.percentile(l, 99) for l in static]
    )
    assert abs(medians - pooled) > 0.5
    assert figures["speedup_vs_static_gati"] == pytest.approx(
        np.median([np.mean(l) for l in static]) / np.median([np.mean(l) for l in slow])
    )


def test_gati_against_each_threshold_policy_says_ahead_level_or_behind():
    from gati_jax.jobs.benchmark import threshold_comparison
    from gati_jax.jobs.report import comparison_lines

    rng = np.random.default_rng(4)
    gati = [rng.lognormal(0.0, 0.4, 3000) for _ in range(2)]

    def rounds(latencies):
        return [{"mean_latency_ms": float(np.mean(l)), "latencies_ms": l} for l in latencies]

    def jitter(l):
        return l * rng.lognormal(0.0, 0.01, l.size)

    results = {
        "none": rounds([2 * l for l in gati]),
        "gati": rounds(gati),
        "confidence": rounds([jitter(l) for l in gati]),  # the same plan, timing noise
        "entropy": rounds([jitter(1.05 * l) for l in gati]),  # 5% slower than gati
        "apparate": rounds([jitter(0.9 * l) for l in gati]),  # 10% faster than gati
    }
    figures = threshold_comparison(results)
    assert list(figures) == ["confidence", "entropy", "apparate"]
    assert figures["confidence"]["verdict"] == "level"
    assert figures["entropy"]["verdict"] == "ahead"
    assert figures["entropy"]["speedup"] == pytest.approx(1.05, abs=0.01)
    assert figures["apparate"]["verdict"] == "behind"
    assert figures["apparate"]["speedup"] == pytest.approx(0.9, abs=0.01)
    for f in figures.values():
        assert f["low90"] <= f["speedup"] <= f["high90"]
    lines = comparison_lines({"uniform": figures, "empty": {}})
    assert "entropy 1.05" in lines[2] and "ahead" in lines[2] and len(lines) == 4
    assert threshold_comparison({"none": results["none"]}) == {}
    assert comparison_lines({}) == []


def test_the_aa_control_serves_a_copy_through_a_router_of_its_own_and_leaves_no_row():
    from conftest import tiny_mlp_model

    from gati_jax.data.workloads import Workload
    from gati_jax.jobs.benchmark import Contender, control_figures, serve_rounds, with_control
    from gati_jax.jobs.report import comparison_lines
    from gati_jax.runtime.deployment import Deployment
    from gati_jax.serving.config import serving_config

    none = Deployment("none", (), (), (), np.zeros(0, np.float32))
    contenders = {"none": Contender("none", none, None, 0)}
    served = with_control(contenders, "none")
    assert list(served) == ["none", "none-copy"]
    assert served["none-copy"].deployment is none and served["none-copy"].name == "none-copy"
    assert with_control(contenders, "") == contenders
    assert with_control(contenders, "entropy") == contenders  # not served: no copy
    # Served, the copy runs through a router of its own.
    model = tiny_mlp_model()
    n = 24
    images = np.random.default_rng(3).integers(0, 256, (n, 6, 6, 1), dtype=np.uint8)
    workload = Workload(
        name="uniform",
        ids=np.arange(n),
        images=images,
        labels=np.zeros(n, np.int32),
        arrivals=np.arange(n) * 0.01,
        segments=np.zeros(n, np.int32),
        corrupted=np.zeros(n, bool),
        source_index=np.full(n, -1),
        corruption=np.full(n, "", dtype="<U16"),
    )
    compiled = {}
    results = serve_rounds(
        model, served, workload, np.zeros(n, np.int32), serving_config(), 1, 8, 2, None, compiled
    )
    assert compiled["none-copy"] is not compiled["none"]
    assert results["none-copy"][0]["agreement"] == results["none"][0]["agreement"]
    assert control_figures(results, "none")["policy"] == "none" and list(results) == ["none"]

    rng = np.random.default_rng(7)
    base = [rng.lognormal(0.0, 0.4, 2000) for _ in range(2)]

    def rounds(latencies):
        return [{"latencies_ms": l} for l in latencies]

    results = {
        "confidence": rounds(base),
        "confidence-copy": rounds([l * rng.lognormal(0.0, 0.01, l.size) for l in base]),
    }
    control = control_figures(results, "confidence")
    assert "confidence-copy" not in results  # popped: no row, window or plot
    assert control["policy"] == "confidence" and control["verdict"] == "level"
    assert control["speedup"] == pytest.approx(1.0, abs=0.01)
    # A copy read 4% slower than its source is reported as the control reads it.
    results["confidence-copy"] = rounds([1.04 * l for l in base])
    slow = control_figures(results, "confidence")
    assert slow["verdict"] == "behind" and slow["speedup"] == pytest.approx(1 / 1.04)
    assert control_figures(results, "confidence") is None
    lines = comparison_lines({}, {"video": slow, "uniform": None})
    assert len(lines) == 4 and "video: A/A control: confidence served twice, 0.962x" in lines[2]
    # Copies told apart: how far a verdict must stand from 1 on that stream is said.
    assert lines[2].endswith("behind); a verdict within 3.8% of 1 is noise on this stream")
    assert "noise on this stream" not in comparison_lines({}, {"uniform": control})[2]


def test_interleaved_turns_rotate_predecessors_with_a_seed():
    """Every loop runs to its end in turns of ``turn`` steps; with a seed each pass takes a
    new order, so no loop always follows the same one, and the same seed repeats it."""
    from gati_jax.serving.loop import serve_interleaved

    def run(seed):
        log = []

        def loop(name, steps):
            for _ in range(steps):
                log.append(name)
                yield 1
            return name  # stands in for the loop's ServingResult

        out = serve_interleaved(
            {n: loop(n, 40) for n in ("none", "gati", "confidence", "entropy")}, 2, seed
        )
        assert out == {n: n for n in ("none", "gati", "confidence", "entropy")}
        turns = log[::2]  # one entry per turn of two steps
        assert all(log[i] == log[i + 1] for i in range(0, len(log), 2))
        assert sorted(set(turns)) == ["confidence", "entropy", "gati", "none"]
        assert all(turns.count(n) == 20 for n in set(turns))
        predecessors = {(a, b) for a, b in zip(turns, turns[1:]) if b == "gati"}
        return turns, predecessors

    fixed, before_gati = run(None)
    assert before_gati == {("none", "gati")}  # round-robin: gati always follows none
    shuffled, before_gati = run(0)
    assert len(before_gati) == 3 and shuffled == run(0)[0] and shuffled != fixed
