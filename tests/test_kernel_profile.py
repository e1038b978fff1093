"""Kernel profiles: XLA's per-kernel times attributed to stages and lookups by named scope."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_router import _bank, _model

from gati_jax.experiments import kernel_profile
from gati_jax.experiments.kernel_profile import (
    OTHER,
    UNATTRIBUTED,
    added_kernels,
    attribute,
    describe_kernel_profile,
    instruction_parts,
    kernel_breakdown,
    kernel_profile_summaries,
    part_of,
    part_order,
)
from gati_jax.planner.costs import all_miss_programs
from gati_jax.runtime import deploy
from gati_jax.scopes import lookup_scope, stage_scope

_HLO = """HloModule jit_route, entry_computation_layout={(f32[1,8]{1,0})->f32[1,4]{1,0}}

%branch (arg: (f32[1,8], f32[1,4])) -> f32[1,4] {
  %gte = f32[1,8]{1,0} get-tuple-element(%arg), index=0
  %act = f32[1,8]{1,0} tanh(%gte), metadata={op_name="jit(route)/cond/branch_1_fun/stage_2/Dense_0/tanh"}
  ROOT %dot.7 = f32[1,4]{1,0} dot(%act, %w), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

ENTRY %main (x: f32[1,8]) -> f32[1,4] {
  %x = f32[1,8]{1,0} parameter(0)
  %fusion.1 = f32[1,8]{1,0} fusion(%x), kind=kLoop, calls=%f, metadata={op_name="jit(route)/stage_0/Dense_0/dot_general"}
  %pool = f32[1,4]{1,0} fusion(%fusion.1), kind=kLoop, calls=%g, metadata={op_name="jit(route)/lookup_at_0/Predictor/reduce"}
  %dot.3 = f32[1,4]{1,0} dot(%pool, %w2), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  %done = pred[] fusion(%dot.3), kind=kLoop, calls=%h, metadata={op_name="jit(route)/and"}
  %head = f32[1,4]{1,0} dot(%fusion.1, %w3), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  %w3 = f32[8,4]{1,0} fusion(%x), kind=kLoop, calls=%s, metadata={op_name="jit(route)/lookup_at_0/slice"}
  %loop = (s32[], f32[1,8]{1,0}) while(%init), condition=%c, body=%b, metadata={op_name="jit(route)/while"}
  %copy.2 = f32[1,8]{1,0} copy(%x)
  %cond.5 = (f32[1,4]{1,0}, pred[]) conditional(%done, %t, %t), branch_computations={%branch, %branch}, metadata={op_name="jit(route)/cond"}
  ROOT %out = f32[1,4]{1,0} get-tuple-element(%cond.5), index=0
}
"""


def test_part_of_takes_the_innermost_stage_or_lookup_scope():
    assert part_of("jit(f)/stage_3/BasicBlock_0/Conv_0/conv") == "stage 3"
    assert part_of("jit(f)/cond/branch_1_fun/lookup_at_12/Predictor/dot") == "lookup at 12"
    assert part_of("jit(f)/stage_1/lookup_at_4/x") == "lookup at 4"
    assert part_of("jit(f)/Stage_3/my_stage_3x/add") == OTHER  # whole path components only
    assert part_of("") == OTHER
    assert part_of(f"jit(f)/{stage_scope(3)}/x") == "stage 3"
    assert part_of(f"jit(f)/{lookup_scope(4)}/x") == "lookup at 4"
    assert sorted(
        [OTHER, "lookup at 1", UNATTRIBUTED, "stage 10", "stage 1", "stage 0", "kernels"],
        key=part_order,
    ) == ["stage 0", "stage 1", "lookup at 1", "stage 10", OTHER, UNATTRIBUTED, "kernels"]


def test_instruction_parts_reads_opcodes_scopes_and_unnamed_operands():
    module, parts = instruction_parts(_HLO)
    assert module == "jit_route"
    assert parts["fusion.1"] == ("fusion", "stage 0")
    assert parts["pool"] == ("fusion", "lookup at 0")
    # XLA's dots without an op name take their operands' part.
    assert parts["dot.3"] == ("dot", "lookup at 0")
    assert parts["dot.7"] == ("dot", "stage 2")
    assert parts["done"] == ("fusion", OTHER)
    assert parts["cond.5"] == ("conditional", OTHER)
    assert parts["gte"] == ("get-tuple-element", UNATTRIBUTED)  # nothing named upstream
    assert parts["copy.2"] == ("copy", UNATTRIBUTED)  # only a parameter upstream
    # A head's dot reading the stage's output and the head's weights is the lookup's: a
    # stage never reads a lookup's output.
    assert parts["head"] == ("dot", "lookup at 0")
    assert parts["loop"] == ("while", OTHER)


def test_attribute_sums_leaf_kernels_per_part_and_takes_medians():
    _, parts = instruction_parts(_HLO)
    calls = [
        {"fusion.1": 3.0, "pool": 1.0, "dot.3": 1.0, "done": 0.5, "cond.5": 9.0, "loop": 7.0},
        {
            "fusion.1": 5.0,
            "pool": 2.0,
            "dot.3": 2.0,
            "done": 0.5,
            "dot.7": 4.0,
            "cond.5": 9.0,
            "unknown_op": 1.0,
            "loop": 7.0,
        },
        {
            "fusion.1": 4.0,
            "pool": 1.0,
            "dot.3": 1.0,
            "done": 0.5,
            "cond.5": 9.0,
            "unknown_op": 2.0,
            "loop": 7.0,
        },
    ]
    out = attribute(calls, parts)
    assert out["stage 0"] == 4.0
    assert out["lookup at 0"] == 2.0  # pool + dot.3 per call: 2, 4, 2
    assert out["stage 2"] == 0.0  # ran in one call of three
    assert out[OTHER] == 0.5
    assert out[UNATTRIBUTED] == 1.0  # an op the HLO text lacks: 0, 1, 2
    # The conditional's and the loop's times hold their branches' and bodies' kernels:
    # never counted.
    assert out["kernels"] == 7.5  # the parts' medians summed
    with pytest.raises(ValueError, match="no kernel timings"):
        attribute([], parts)


def test_added_kernels_splits_a_router_over_the_plain_network():
    plain = {"stage 0": 4.0, "stage 1": 6.0, OTHER: 1.0, "kernels": 11.0}
    router = {
        "stage 0": 4.5,
        "lookup at 0": 2.0,
        "stage 1": 6.0,
        "lookup at 1": 1.0,
        OTHER: 2.5,
        "kernels": 16.0,
    }
    assert added_kernels(router, plain) == {
        "lookups": 3.0,
        "other": 1.5,
        "stages": 0.5,
        "plain": 11.0,
    }


def test_kernel_breakdown_of_a_compiled_program_names_its_scopes():
    if jax.default_backend() != "cpu":
        pytest.skip("the kernel names and their trace are XLA CPU's")

    def program(x):
        with jax.named_scope(stage_scope(0)):
            for _ in range(4):
                x = jnp.tanh(x @ x)
        with jax.named_scope(lookup_scope(0)):
            score = jnp.sum(x[:4] @ x[:, :4])  # a small product: a kernel of its own
        return jax.lax.cond(score > 1e9, lambda v: v, lambda v: jnp.sin(v), x)

    x = jnp.full((192, 192), 0.01, jnp.float32)
    # Both lambdas: one module name for two programs, told apart by the order of the calls.
    compiled, other = jax.jit(lambda v: program(v)), jax.jit(lambda v: jnp.tanh(v) + 1.0)
    programs = {
        "program": (lambda: compiled(x), compiled.lower(x).compile().as_text()),
        "other": (lambda: other(x), other.lower(x).compile().as_text()),
    }
    modules = {instruction_parts(hlo)[0] for _, hlo in programs.values()}
    assert len(modules) == 1
    both = kernel_breakdown(programs, rounds=3, block=4)
    assert both is not None and set(both) == {"program", "other"}
    out = both["program"]
    assert {"stage 0", "lookup at 0", OTHER, "kernels", "call"} <= set(out)
    # Four 192x192 matrix products against one 4x192x4.
    assert out["stage 0"] > 10 * out["lookup at 0"] > 0
    assert out["kernels"] == pytest.approx(
        sum(v for k, v in out.items() if k not in ("kernels", "call"))
    )
    assert out["call"] >= out["stage 0"]
    # The other program's kernels are its own: no stage, no lookup, far less time.
    assert set(both["other"]) == {OTHER, "kernels", "call"}
    assert both["other"]["kernels"] < out["stage 0"]


def test_router_programs_name_every_stage_and_deployed_lookup(base):
    network, variables = base
    model = _model(network, variables)
    cands, bank = _bank(
        network, (0, 2), (0.5, 0.5), {"hit_rate@0.99": 0.5, "lookup_latency_s": 1e-5}
    )
    dep = deploy(bank, cands)
    programs = all_miss_programs(
        model,
        {"router": (dep, dep.router(model, max_group=1))},
        jax.jit(lambda x: network.apply(variables, x)),
        jnp.zeros((1, *network.input_shape), jnp.float32),
    )
    for name, deployed in (("plain", ()), ("router", (0, 2))):
        call, hlo = programs[name]
        assert np.asarray(call()).shape[-1] >= 1
        found = {part for _, part in instruction_parts(hlo)[1].values()}
        expected = {f"stage {i}" for i in range(network.num_stages)}
        expected |= {f"lookup at {p}" for p in deployed}
        # Stages whose work XLA folded into a neighbour's kernel may name no instruction.
        assert {f"lookup at {p}" for p in deployed} <= found
        # Parameters and constants have no op name and nothing upstream: unattributed, but
        # they are not kernels.
        assert not found - expected - {OTHER, UNATTRIBUTED}
        assert len(found & expected) >= network.num_stages - 1


def test_kernel_breakdown_gives_none_while_another_trace_runs(tmp_path):
    square = jax.jit(lambda v: v * v)
    x = jnp.ones(4)
    jax.profiler.start_trace(str(tmp_path))
    try:
        with pytest.warns(UserWarning, match="no kernel profile: Profile has already"):
            assert (
                kernel_breakdown({"f": (lambda: square(x), square.lower(x).compile().as_text())})
                is None
            )
    finally:
        jax.profiler.stop_trace()


def test_summaries_say_what_a_router_adds():
    profile = {
        "plain": {"stage 0": 0.4, "stage 1": 0.6, OTHER: 0.0, "kernels": 1.0, "call": 1.2},
        "router": {
            "stage 0": 0.42,
            "lookup at 0": 0.05,
            "stage 1": 0.6,
            OTHER: 0.01,
            "kernels": 1.08,
            "call": 1.3,
        },
    }
    assert kernel_profile_summaries(profile, {"router": ([0], 0.07), "absent": ([1], 0.1)}) == [
        "router [0]: its lookups' kernels 50 us (5.0% of the plain network's kernels), its "
        "other kernels +10 us (+1.0%), its stages' kernels +20 us (+2.0%); all-miss overhead "
        "timed without the profiler +7.0%"
    ]
    lines = describe_kernel_profile(profile, {"router": (None, 0.07)})
    assert lines[0].startswith("inside the programs, every lookup missing (XLA's kernel")
    table = lines[1].splitlines()
    assert table[0].split() == ["part", "plain", "router"]
    assert [row.split()[0] for row in table[1:]] == [
        "stage",
        "lookup",
        "stage",
        "other",
        "kernels",
        "call",
    ]
    assert lines[2].startswith("router: its lookups' kernels 50 us")


def test_a_profile_that_cannot_be_matched_is_left_out_with_a_warning(monkeypatch):
    def mismatched(*args, **kwargs):
        raise ValueError("kernel_times: the trace holds 3 program runs for 4 calls")

    monkeypatch.setattr(kernel_profile, "kernel_times", mismatched)
    square = jax.jit(lambda v: v * v)
    x = jnp.ones(4)
    with pytest.warns(UserWarning, match="no kernel profile: kernel_times: the trace"):
        assert (
            kernel_breakdown({"f": (lambda: square(x), square.lower(x).compile().as_text())})
            is None
        )
