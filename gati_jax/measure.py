"""Latency and cost measurement of compiled functions on the current backend."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from gati_jax.compilation import seconds_compiling


class StepClock:
    """Wall seconds of a job's consecutive steps, and the part of them spent compiling, for
    its JSON and log: ``lap(name)`` books the time since the last lap (or since the clock
    started) to ``name``."""

    def __init__(self) -> None:
        self._seconds: dict[str, float] = {}
        self._compiling: dict[str, float] = {}
        self._last = time.time()
        self._last_compiling = seconds_compiling()

    def lap(self, name: str) -> None:
        """Books the time since the last lap to step ``name`` (added to what it had)."""
        now, compiling = time.time(), seconds_compiling()
        self._seconds[name] = self._seconds.get(name, 0.0) + now - self._last
        self._compiling[name] = self._compiling.get(name, 0.0) + compiling - self._last_compiling
        self._last, self._last_compiling = now, compiling

    def run(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``, its time alone booked to step ``name`` (what ran since the last lap
        goes to no step)."""
        self._last, self._last_compiling = time.time(), seconds_compiling()
        out = fn(*args)
        self.lap(name)
        return out

    @property
    def seconds(self) -> dict[str, float]:
        """Seconds of each step so far, to a tenth."""
        return {name: round(s, 1) for name, s in self._seconds.items()}

    @property
    def compiling(self) -> dict[str, float]:
        """Seconds of each step spent tracing, lowering and compiling programs, to a tenth."""
        return {name: round(s, 1) for name, s in self._compiling.items()}


def measure_latency(
    fn: Callable[..., Any], *args: Any, repeats: int = 50, warmup: int = 5
) -> float:
    """Median wall time in seconds of ``fn(*args)`` (already jitted), after warm-up."""
    return measure_interleaved({"fn": lambda: fn(*args)}, repeats, warmup)["fn"]


def measure_interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int = 50, warmup: int = 5, block: int = 1
) -> dict[str, float]:
    """Median seconds of each zero-argument function, timed in alternating rounds.

    Alternating puts every function under the same machine noise, so their ratios hold even
    when absolute times drift between rounds. With ``block`` > 1 each round runs a function
    that many times in a row (``repeats`` counts rounds): programs with large baked-in
    weights then run with warm caches, as a server running one program does, instead of
    evicting each other's weights on every call.
    """
    for fn in fns.values():
        for _ in range(warmup):
            jax.block_until_ready(fn())
    return {name: float(np.median(t)) for name, t in interleaved_times(fns, repeats, block).items()}


def interleaved_times(
    fns: dict[str, Callable[[], Any]], repeats: int, block: int = 1
) -> dict[str, list[float]]:
    """Every call's seconds, in the order of :func:`measure_interleaved` (``repeats`` rounds,
    each calling every function ``block`` times in a row, in ``fns``' order), no warm-up."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            for _ in range(block):
                start = time.perf_counter()
                jax.block_until_ready(fn())
                times[name].append(time.perf_counter() - start)
    return times


def compiled_flops(fn: Callable[..., Any], *args: Any) -> float:
    """FLOPs of one call as counted by XLA's cost analysis (NaN where the backend has none)."""
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    if isinstance(cost, (list, tuple)):  # older JAX versions return one dict per device
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", float("nan")))


_LIBRARY_FUSION = re.compile(r'calls=%([\w.\-]+).*"kind":"__(?:ynn|xnn|onednn)_fusion"')
_CALLED = re.compile(r"(?:calls|to_apply)=%([\w.\-]+)")


def convolution_kernels(hlo_text: str, skip_scope: str | None = "Predictor") -> dict[str, int]:
    """How a compiled CPU program (``compiled.as_text()``) runs its convolutions: in how many
    library fusions (YNNPACK, XNNPACK, oneDNN), how many convolutions inside them, how many
    in all. Convolutions whose op name lies in module ``skip_scope`` (the caches'
    predictors) are not counted, so programs with and without conv caches compare on the
    base network's.

    XLA's CPU backend chooses per program, and not alike for the same convolutions in two
    programs: on a ResNet-18 of width 64 at batch 1 the plain network became one YNNPACK
    fusion of all 20 convolutions and a router with lookups 20 fusions of one, 1.3x faster;
    their ratio then measured XLA's choice, not the lookups. Benchmarks report these counts
    beside the ratios they compare.
    """
    computations: dict[str, list[str]] = {}
    name = None
    for line in hlo_text.splitlines():
        head = re.match(r"^(?:ENTRY )?%([\w.\-]+) ", line)
        if head and line.rstrip().endswith("{"):
            name = head.group(1)
            computations[name] = []
        elif line.startswith("}"):
            name = None
        elif name is not None:
            computations[name].append(line)
    if " convolution(" in hlo_text and not computations:
        raise ValueError("convolution_kernels: no computation found in the HLO text")
    skip = None if skip_scope is None else f"/{skip_scope}/"

    def counted(line: str) -> bool:
        return " convolution(" in line and (skip is None or skip not in line)

    count = {c: sum(map(counted, lines)) for c, lines in computations.items()}
    inside = []
    for fusion in (
        m.group(1)
        for lines in computations.values()
        for line in lines
        if (m := _LIBRARY_FUSION.search(line))
    ):
        # The fusion's computation and whatever it calls in turn.
        seen, todo = set(), [fusion]
        while todo:
            c = todo.pop()
            if c in seen or c not in computations:
                continue
            seen.add(c)
            todo.extend(m.group(1) for line in computations[c] for m in _CALLED.finditer(line))
        inside.append(sum(count[c] for c in seen))
    return {
        "library_fusions": sum(n > 0 for n in inside),
        "library": sum(inside),
        "total": sum(count.values()),
    }


def describe_kernels(kernels: dict[str, dict[str, int]] | None) -> list[str]:
    """Lines saying how each compared program ran its convolutions (name -> the counts of
    :func:`convolution_kernels`), and a warning when the programs differ; none without
    counts or without convolutions."""
    if not kernels or not any(k["total"] for k in kernels.values()):
        return []
    lines = [
        "base-network convolutions in library (YNNPACK, XNNPACK, oneDNN) fusions, as "
        "fusions/convolutions/all: "
        + ", ".join(
            f"{name} {k['library_fusions']}/{k['library']}/{k['total']}"
            for name, k in kernels.items()
        )
    ]
    if len({tuple(sorted(k.items())) for k in kernels.values()}) > 1:
        lines.append(
            "WARNING: XLA compiled the convolutions of these programs differently; "
            "their ratios measure that choice too (see profiling.convolution_kernels)"
        )
    return lines


def tree_bytes(tree: Any) -> int:
    """Bytes held by the arrays of a pytree."""
    return int(sum(np.asarray(leaf).nbytes for leaf in jax.tree.leaves(tree)))


def stage_latencies(
    network: Any, variables: Any, batch_size: int = 1, repeats: int = 50
) -> list[float]:
    """Median latency in seconds of every stage of a staged network, each compiled on its own."""
    x = jax.numpy.zeros((batch_size, *network.input_shape), jax.numpy.float32)
    latencies = []
    for index in range(network.num_stages):
        # Baked in as constants, as the router serves them (see gati_jax/runtime/router.py).
        stage = jax.jit(lambda a, i=index: network.apply_stage(variables, i, a))
        latencies.append(measure_latency(stage, x, repeats=repeats))
        x = stage(x)
    return latencies
