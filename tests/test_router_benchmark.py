"""The router benchmark on a tiny network: every figure present, consistent and finite."""

from __future__ import annotations

import math

import numpy as np
from test_router import _bank, _images, _model

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
        # The same model, its stage prefixes timed now instead of scaled from the profile.
        assert row["same_round_model_ms"] > 0 and row["profile_model_ms"] > 0
    assert all(math.isfinite(x) for x in _numbers(result))
    assert all(r[k] > 0 for r in result["serving_path"]
               for k in ("compiled_ms", "fetched_ms", "sent_ms", "route_ms", "served_ms"))
