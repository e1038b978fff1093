"""The router benchmark on a tiny network: every figure present, consistent and finite."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from test_router import _bank, _images, _model

from gati_jax.profiling import convolution_kernels, describe_kernels
from gati_jax.runtime import deploy
from gati_jax.runtime.benchmark import benchmark_router


def _numbers(tree):
    if isinstance(tree, dict):
        for value in tree.values():
            yield from _numbers(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _numbers(value)
    elif isinstance(tree, float):
        yield tree


def test_router_benchmark_reports_every_figure(base):
    network, variables = base
    model = _model(network, variables)
    cands, bank = _bank(network, (0, 1, 2), (0.5,) * 3,
                        {"hit_rate@0.99": 0.5, "lookup_latency_s": 1e-5})
    images = _images(6, seed=4)
    result = benchmark_router(model, bank, images, sparse_positions=(1,), repeats=4,
                              group_sizes=(1, 4), planned=deploy(bank, cands[1:]))

    assert {name: row["positions"] for name, row in result["all_miss_overhead"].items()} == {
        "all_positions": [0, 1, 2], "sparse_positions": [1], "planned": [1, 2]}
    assert [r["scenario"] for r in result["forced_exits"]] == [
        "no exit", "exit at 0", "exit at 1", "exit at 2"]
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
        assert math.isclose(row["router/same_round"],
                            row["router_ms"] / row["same_round_model_ms"])
        assert math.isclose(row["router/all_same_round"],
                            row["router_ms"] / row["all_same_round_model_ms"])
        # The same model, its stage prefixes (or every term) timed now instead of scaled from
        # the profile.
        assert min(row["same_round_model_ms"], row["profile_model_ms"],
                   row["all_same_round_model_ms"]) > 0
    assert len(result["same_round_charges_ms"]) == 2
    assert min(result["same_round_charges_ms"]) >= 0
    assert all(math.isfinite(x) for x in _numbers(result))
    # An MLP: no convolution in any program, and every compared program is reported.
    assert result["convolution_kernels"] == {
        name: {"library_fusions": 0, "library": 0, "total": 0}
        for name in ("plain", "all_positions", "sparse_positions", "planned")}
    assert all(r[k] > 0 for r in result["serving_path"]
               for k in ("compiled_ms", "fetched_ms", "sent_ms", "route_ms", "served_ms"))


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
    assert convolution_kernels(_HLO) == {"library_fusions": 1, "library": 2, "total": 3}

    def two_convs(x, k):
        def conv(a):
            return jax.lax.conv_general_dilated(a, k, (1, 1), "SAME",
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return conv(jax.nn.relu(conv(x)))
    x, k = jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 4, 4))
    counts = convolution_kernels(jax.jit(two_convs).lower(x, k).compile().as_text())
    assert counts["total"] == 2
    assert counts["library_fusions"] <= counts["library"] <= 2
    assert convolution_kernels(jax.jit(jnp.tanh).lower(x).compile().as_text())["total"] == 0


def test_describe_kernels_warns_only_when_programs_differ():
    same = {"library_fusions": 15, "library": 15, "total": 20}
    lines = describe_kernels({"plain": same, "gati": dict(same)})
    assert lines == ["convolutions in library (YNNPACK) fusions, as fusions/convolutions/all: "
                     "plain 15/15/20, gati 15/15/20"]
    one_graph = {"library_fusions": 1, "library": 20, "total": 20}
    assert describe_kernels({"plain": one_graph, "gati": same})[1].startswith("WARNING")
    assert describe_kernels({"plain": {"library_fusions": 0, "library": 0, "total": 0}}) == []
    assert describe_kernels(None) == []
