"""The router benchmark on a tiny network: every figure present, consistent and finite."""

from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_router import _bank, _images, _model

from gati_jax.experiments.kernel_profile import describe_kernel_profile
from gati_jax.experiments.plots import plot_router_benchmark
from gati_jax.experiments.router_benchmark import _marginals, _router_part, benchmark_router
from gati_jax.measure import StepClock, convolution_kernels, describe_kernels
from gati_jax.planner.costs import LookupCost, charges_from
from gati_jax.runtime import deploy


def _numbers(tree):
    if isinstance(tree, dict):
        for value in tree.values():
            yield from _numbers(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _numbers(value)
    elif isinstance(tree, float):
        yield tree


def test_router_benchmark_reports_every_figure(base, tmp_path):
    network, variables = base
    model = _model(network, variables)
    cands, bank = _bank(
        network, (0, 1, 2), (0.5,) * 3, {"hit_rate@0.99": 0.5, "lookup_latency_s": 1e-5}
    )
    images = _images(6, seed=4)
    result = benchmark_router(
        model,
        bank,
        images,
        sparse_positions=(1,),
        repeats=4,
        group_sizes=(1, 4),
        planned=deploy(bank, cands[1:]),
    )

    assert {name: row["positions"] for name, row in result["all_miss_overhead"].items()} == {
        "all_positions": [0, 1, 2],
        "sparse_positions": [1],
        "planned": [1, 2],
    }
    assert [r["scenario"] for r in result["forced_exits"]] == [
        "no exit",
        "exit at 0",
        "exit at 1",
        "exit at 2",
    ]
    assert [r["group"] for r in result["group_sizes"]] == [1, 4]
    assert [r["group"] for r in result["group_sizes_planned"]] == [1, 4]
    # The stream's exits are the router's at the deployed thresholds, request by request.
    dep = deploy(bank, cands)
    want = dep.reference(model).route(dep.params, dep.thresholds, images).exit_stage
    stream = result["stream_batch1"]
    assert stream["requests"] == 6
    assert stream["exit_histogram"] == {str(s): int(np.sum(want == s)) for s in sorted(set(want))}
    path = {row["policy"]: row for row in result["serving_path"]}
    assert set(path) == {"none", "gati"} and path["none"]["served_vs_none"] == 1.0
    for row in path.values():
        assert math.isclose(row["route/compiled"], row["route_ms"] / row["compiled_ms"])
    for row in result["forced_exits"]:
        assert math.isclose(row["router/same_round"], row["router_ms"] / row["same_round_model_ms"])
        assert math.isclose(
            row["router/all_same_round"], row["router_ms"] / row["all_same_round_model_ms"]
        )
        # The same model, its stage prefixes (or every term) timed now instead of scaled from
        # the profile.
        assert min(row["same_round_model_ms"], row["profile_model_ms"]) > 0
    assert all(math.isfinite(x) for x in _numbers(result))
    # An MLP: no convolution in any program, and every compared program is reported (on
    # the CPU, whose kernel choice it is).
    if jax.default_backend() == "cpu":
        assert result["convolution_kernels"] == {
            name: {"library_fusions": 0, "library": 0, "total": 0}
            for name in ("plain", "all_positions", "sparse_positions", "planned")
        }
    assert all(
        r[k] > 0
        for r in result["serving_path"]
        for k in ("compiled_ms", "fetched_ms", "sent_ms", "route_ms", "served_ms")
    )
    # The same programs in parts: every stage, each router's own lookups and nothing else.
    if jax.default_backend() == "cpu":
        profile = result["kernel_profile_ms"]
        assert set(profile) == {"plain", "all_positions", "sparse_positions", "planned"}
        for name, positions in (
            ("plain", []),
            *((n, r["positions"]) for n, r in result["all_miss_overhead"].items()),
        ):
            lookups = {k for k in profile[name] if k.startswith("lookup at ")}
            assert lookups == {f"lookup at {p}" for p in positions}
            assert all(profile[name][f"lookup at {p}"] > 0 for p in positions)
            assert profile[name]["kernels"] > 0 and profile[name]["call"] > 0
        routers = {
            n: (r["positions"], r["overhead"]) for n, r in result["all_miss_overhead"].items()
        }
        lines = describe_kernel_profile(profile, routers)
        assert lines[-1].startswith("planned [1, 2]: its lookups' kernels ")
        assert len(lines) == 2 + 3
    assert describe_kernel_profile(None, {}) == []
    # The plot: three panels with the profile, two without.
    for name, figures in (
        ("with.png", result),
        ("without.png", {k: v for k, v in result.items() if k != "kernel_profile_ms"}),
    ):
        plot_router_benchmark(figures, tmp_path / name)
        assert (tmp_path / name).stat().st_size > 0


_HLO = """HloModule jit_f

%fused_computation (param_0: f32[1,8,8,4], param_1: f32[3,3,4,4]) -> f32[1,8,8,4] {
  %param_0 = f32[1,8,8,4]{3,2,1,0} parameter(0)
  %a = f32[1,8,8,4]{3,2,1,0} convolution(%param_0, %param_1), window={size=3x3}
  ROOT %b = f32[1,8,8,4]{3,2,1,0} convolution(%a, %param_1), window={size=3x3}
}

ENTRY %main.1 (x: f32[1,8,8,4]) -> f32[1,8,8,4] {
  %x = f32[1,8,8,4]{3,2,1,0} parameter(0)
  %k = f32[3,3,4,4]{3,2,1,0} constant({...})
  %ynn_fusion = f32[1,8,8,4]{3,2,1,0} fusion(%x, %k), kind=kCustom, calls=%fused_computation, \
backend_config={"fusion_config":{"kind":"__ynn_fusion"}}
  ROOT %c = f32[1,8,8,4]{3,2,1,0} convolution(%ynn_fusion, %k), window={size=3x3}
}
"""


def test_convolution_kernels_counts_library_fusions_and_all_convolutions():
    """A hand-made module and an excerpt of a real router's (a YNNPACK fusion inside a
    conditional branch, an XLA convolution beside it, a cache predictor's convolution)."""
    assert convolution_kernels(_HLO) == {"library_fusions": 1, "library": 2, "total": 3}
    real = (Path(__file__).parent / "data" / "router_branch.hlo").read_text()
    assert convolution_kernels(real) == {"library_fusions": 1, "library": 1, "total": 2}
    assert convolution_kernels(real, skip_scope=None)["total"] == 3
    with pytest.raises(ValueError, match="no computation"):
        convolution_kernels("%x = f32[1] convolution(%a, %b)")

    def two_convs(x, k):
        def conv(a):
            return jax.lax.conv_general_dilated(
                a, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )

        return conv(jax.nn.relu(conv(x)))

    if jax.default_backend() == "cpu":  # other backends rewrite convolutions as custom calls
        x, k = jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 4, 4))
        counts = convolution_kernels(jax.jit(two_convs).lower(x, k).compile().as_text())
        assert counts["total"] == 2
        assert convolution_kernels(jax.jit(jnp.tanh).lower(x).compile().as_text())["total"] == 0


def test_step_clock_books_each_lap_to_its_step(monkeypatch):
    now = iter([10.0, 12.5, 13.0, 20.25, 30.0, 31.5])
    compiled = iter([1.0, 2.0, 2.0, 4.0, 6.0, 6.5])  # the process's compile seconds so far
    monkeypatch.setattr("gati_jax.measure.time.time", lambda: next(now))
    monkeypatch.setattr("gati_jax.measure.seconds_compiling", lambda: next(compiled))
    clock = StepClock()  # starts at 10.0
    clock.lap("setup")  # 2.5 s
    clock.lap("serve")  # 0.5 s
    clock.lap("setup")  # a step booked again adds up: 2.5 + 7.25
    assert clock.seconds == {"setup": 9.8, "serve": 0.5}
    assert clock.compiling == {"setup": 3.0, "serve": 0.0}
    # run: the call's own time alone (20.25 -> 30.0 goes to no step).
    assert clock.run("plan", lambda x: x + 1, 1) == 2
    assert clock.seconds == {"setup": 9.8, "serve": 0.5, "plan": 1.5}
    assert clock.compiling == {"setup": 3.0, "serve": 0.0, "plan": 0.5}


def test_describe_kernels_warns_only_when_programs_differ():
    same = {"library_fusions": 15, "library": 15, "total": 20}
    lines = describe_kernels({"plain": same, "gati": dict(same)})
    assert len(lines) == 1 and lines[0].endswith("plain 15/15/20, gati 15/15/20")
    one_graph = {"library_fusions": 1, "library": 20, "total": 20}
    assert describe_kernels({"plain": one_graph, "gati": same})[1].startswith("WARNING")
    assert describe_kernels({"plain": {"library_fusions": 0, "library": 0, "total": 0}}) == []
    assert describe_kernels(None) == []


def test_same_round_model_reproduces_a_linear_router():
    """Forced-exit times made by the additive model itself (fixed charge F, per-cache charge
    P, one-cache miss and exit costs) fitted back as ``router/all_same_round`` fits them: the
    model gives back every row, not only the two it is fitted to."""
    fixed, per_cache = 2e-5, 6e-6
    lookups, exits = np.array([4e-5, 3e-5, 5e-5]), np.array([6e-5, 7e-5, 5e-5])
    prefix, plain, m = np.array([1e-4, 3e-4, 5e-4]), 9e-4, 3

    def router(k):  # a request exiting at the k-th cache (None: at the end)
        passed = lookups.sum() if k is None else lookups[:k].sum() + exits[k]
        return (plain if k is None else prefix[k]) + fixed + m * per_cache + passed

    alone = [
        LookupCost(fixed + per_cache + c, fixed + per_cache + e, plain)
        for c, e in zip(lookups, exits)
    ]
    charge = charges_from(
        [c.miss_s for c in alone], router(None) - plain, alone[0].exit_s, router(0) - prefix[0]
    )
    assert np.allclose(charge, (fixed, per_cache), rtol=0, atol=1e-12)
    cache_s, exit_s = _marginals(charge, alone)
    for k in (None, 0, 1, 2):
        model = (plain if k is None else prefix[k]) + _router_part(charge, cache_s, exit_s, k)
        assert model == pytest.approx(router(k), rel=1e-9)
