"""Where a compiled program's time goes: XLA's own per-kernel timings from JAX's profiler,
attributed to the base network's stages and the caches' lookups by their named scopes.

Wall-clock timings of whole programs cannot tell a lookup's arithmetic from the router's
bookkeeping or from what the call costs outside its kernels (dispatch, the runtime's
scheduling between kernels), and programs compiled separately (a stage prefix, a one-cache
router) need not run their shared stages alike. The profiler times every kernel (XLA CPU:
every thunk) inside the one program, so the parts of one call can be read side by side.
The profiler slows the calls (by 5-41% on the shipped network here), so the parts are read
against each other, not against wall times taken without it.
"""

from __future__ import annotations

import collections
import glob
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from gati_jax.measure import interleaved_times
from gati_jax.tables import format_table

# Control-flow kernels: their recorded time contains the kernels of their branches or bodies.
_CONTROL_FLOW = frozenset({"conditional", "while", "call"})
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s.*?\s([a-z][\w\-]*)\(")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
# The scopes of gati_jax.scopes, as whole components of an op name's path.
_SCOPE = re.compile(r"(?:^|/)(stage|lookup_at)_(\d+)(?=/|$)")
_NAME = re.compile(r"%([\w.\-]+)")
_MODULE = re.compile(r"^HloModule ([\w.\-]+)", re.MULTILINE)
STAGE, LOOKUP = "stage ", "lookup at "  # part names: "stage 3", "lookup at 4"
OTHER = "other"
# Kernels the profile cannot place: the trace names an op the HLO text lacks, or XLA made an
# instruction without an op name whose operands have none either.
UNATTRIBUTED = "unattributed"
_TOTALS = ("kernels", "call")


def part_of(op_name: str) -> str:
    """The part an instruction belongs to, from its op name: the innermost stage or lookup
    scope ('stage 3', 'lookup at 4'), else 'other' (input normalisation, exit records and
    early-exit conditions, outputs)."""
    found = _SCOPE.findall(op_name)
    if not found:
        return OTHER
    kind, number = found[-1]
    return f"{STAGE}{number}" if kind == "stage" else f"{LOOKUP}{number}"


def instruction_parts(hlo_text: str) -> tuple[str | None, dict[str, tuple[str, str]]]:
    """An optimized HLO module's name and, per instruction, its opcode and part.

    Instructions XLA made without an op name (the dense layers of the caches' heads became
    metadata-less ``dot``s, 5-29 us each on the shipped network) take the part of their
    nearest operands that have one, a lookup's before a stage's: a lookup reads its stage's
    output, a stage never reads a lookup's.
    """
    module = _MODULE.search(hlo_text)
    opcode, named, operands = {}, {}, {}
    for line in hlo_text.splitlines():
        m = _INSTRUCTION.match(line)
        if not m:
            continue
        name = m.group(1)
        opcode[name] = m.group(2)
        op = _OP_NAME.search(line)
        if op:
            named[name] = part_of(op.group(1))
        operands[name] = _NAME.findall(_arguments(line, m.end() - 1))

    resolved: dict[str, str] = {}

    def resolve(name: str) -> str:
        if name in named:
            return named[name]
        if name not in resolved:
            part, seen, level = UNATTRIBUTED, {name}, [name]
            while level:  # one level of operands at a time: the nearest named ones decide
                level = [o for n in level for o in operands.get(n, ()) if o not in seen]
                seen.update(level)
                found = [named[o] for o in level if o in named]
                if found:
                    part = ([f for f in found if f.startswith(LOOKUP)] or found)[0]
                    break
            resolved[name] = part
        return resolved[name]

    parts = {name: (opcode[name], resolve(name)) for name in opcode}
    return (module.group(1) if module else None), parts


def _arguments(line: str, start: int) -> str:
    """The text between the parenthesis at ``start`` and the one that closes it."""
    depth = 0
    for i in range(start, len(line)):
        depth += {"(": 1, ")": -1}.get(line[i], 0)
        if depth == 0:
            return line[start + 1 : i]
    return line[start + 1 :]


def kernel_times(
    fns: dict[str, Callable[[], Any]],
    modules: set[str | None],
    rounds: int = 10,
    block: int = 5,
    warmup: int = 5,
) -> dict[str, tuple[list[dict[str, float]], float]]:
    """Seconds each kernel took, per call, for each zero-argument call of one compiled
    program in ``fns``, from one profiler trace in which they run in alternating rounds of
    ``block`` calls (as ``profiling.measure_interleaved`` times them: the machine's drift
    then falls on every program alike); and each one's median wall seconds per call under
    the profiler. ``modules``: the programs' HLO module names (None in it: every module).
    Kernels that run several times in a call are summed. Empty where the backend's trace
    names no kernels."""
    for fn in fns.values():
        for _ in range(warmup):
            jax.block_until_ready(fn())
    from jax.profiler import ProfileData  # noqa: PLC0415 (only the profile needs it)

    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            walls = interleaved_times(fns, rounds, block)
        files = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
        profile = ProfileData.from_file(files[0]) if files else None
    runs: dict[Any, dict[str, float]] = collections.defaultdict(
        lambda: collections.defaultdict(float)
    )
    first: dict[Any, int] = {}
    for plane in profile.planes if profile else ():
        for line in plane.lines:
            for event in line.events:
                stats = dict(event.stats)
                if "hlo_op" not in stats:
                    continue
                if None not in modules and stats.get("hlo_module") not in modules:
                    continue
                run = stats.get("run_id")
                runs[run][stats["hlo_op"]] += event.duration_ns * 1e-9
                first[run] = min(first.get(run, event.start_ns), event.start_ns)
    if not runs:
        return {}
    order = [name for _ in range(rounds) for name in fns for _ in range(block)]
    if len(runs) != len(order):
        raise ValueError(
            f"kernel_times: the trace holds {len(runs)} program runs for "
            f"{len(order)} calls; cannot tell which run was which call"
        )
    # The calls ran one after another: their runs started in the same order.
    out: dict[str, tuple[list[dict[str, float]], float]] = {
        name: ([], float(np.median(walls[name]))) for name in fns
    }
    for name, run in zip(order, sorted(runs, key=first.__getitem__)):
        out[name][0].append(dict(runs[run]))
    return out


def attribute(times: list[dict[str, float]], parts: dict[str, tuple[str, str]]) -> dict[str, float]:
    """Median seconds per part over the calls, and 'kernels', the parts' sum: each kernel
    once (a control-flow kernel's time is its branches', counted there)."""
    if not times:
        raise ValueError("attribute: no kernel timings (the profile recorded no call)")
    per_call = []
    for call in times:
        acc: dict[str, float] = collections.defaultdict(float)
        for op, seconds in call.items():
            opcode, part = parts.get(op, ("", UNATTRIBUTED))
            if opcode not in _CONTROL_FLOW:
                acc[part] += seconds
        per_call.append(acc)
    out = {
        name: float(np.median([acc.get(name, 0.0) for acc in per_call]))
        for name in set().union(*per_call)
    }
    out["kernels"] = sum(out.values())
    return out


def kernel_breakdown(
    programs: dict[str, tuple[Callable[[], Any], str]], rounds: int = 10, block: int = 5
) -> dict[str, dict[str, float]] | None:
    """Each program (name -> a zero-argument call and its optimized HLO) in parts, median
    seconds per call, profiled side by side (:func:`kernel_times`): each stage and lookup,
    'other', 'unattributed', 'kernels' (their sum) and 'call' (the call's median wall time
    under the profiler). None off the CPU (the attribution reads XLA CPU's trace), and None
    with a warning where the profiler cannot run or recorded no kernel, or where its runs
    cannot be matched to the calls: a benchmark goes on without its profile."""
    if jax.default_backend() != "cpu":
        return None
    parsed = {name: instruction_parts(hlo) for name, (_, hlo) in programs.items()}
    try:
        times = kernel_times(
            {name: fn for name, (fn, _) in programs.items()},
            {module for module, _ in parsed.values()},
            rounds,
            block,
        )
    except (ImportError, ValueError) as err:
        warnings.warn(f"no kernel profile: {err}", stacklevel=2)
        return None
    except RuntimeError as err:  # one trace at a time: someone is already tracing
        if "profil" not in str(err).lower():
            raise
        warnings.warn(f"no kernel profile: {err}", stacklevel=2)
        return None
    if not times:
        warnings.warn(
            "no kernel profile: the trace names no kernel of these programs", stacklevel=2
        )
        return None
    out = {}
    for name, (calls, call_s) in times.items():
        out[name] = attribute(calls, parsed[name][1])
        out[name]["call"] = call_s
    return out


def kernel_profile_ms(
    programs: dict[str, tuple[Callable[[], Any], str]], rounds: int
) -> dict[str, dict[str, float]] | None:
    """:func:`kernel_breakdown` in blocks of ten calls, in milliseconds, as the benchmarks
    save it (JSON)."""
    parts = kernel_breakdown(programs, rounds, block=10)
    return (
        None
        if parts is None
        else {
            name: {part: 1e3 * seconds for part, seconds in p.items()} for name, p in parts.items()
        }
    )


def part_total(parts: dict[str, float], prefix: str) -> float:
    """The sum of the parts whose names start with ``prefix`` (STAGE, LOOKUP)."""
    return sum(v for k, v in parts.items() if k.startswith(prefix))


def part_order(name: str) -> tuple[int, int]:
    """Sort key: stages and lookups by position (a lookup after its stage), then the rest."""
    m = re.fullmatch(r"(stage|lookup at) (\d+)", name)
    if m:
        return int(m.group(2)), 0 if m.group(1) == "stage" else 1
    return 10**9, {OTHER: 0, UNATTRIBUTED: 1}.get(name, 2)


def added_kernels(program: dict[str, float], plain: dict[str, float]) -> dict[str, float]:
    """What a router's kernels add to the plain network's, from two breakdowns (seconds):
    its lookups, its other kernels (exit records, the early-exit conditions) and its stages
    over the plain network's; 'plain' is the plain network's kernel time."""
    return {
        "lookups": part_total(program, LOOKUP),
        "other": program.get(OTHER, 0.0) - plain.get(OTHER, 0.0),
        "stages": part_total(program, STAGE) - part_total(plain, STAGE),
        "plain": plain["kernels"],
    }


def kernel_profile_rows(profile: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """A profile of several programs (name -> parts in ms) as table rows: one per part, us
    per call in a column per program, then 'kernels' and 'call'."""
    names = sorted(
        {part for parts in profile.values() for part in parts if part not in _TOTALS},
        key=part_order,
    )
    return [
        {"part": part, **{name: 1e3 * parts.get(part, 0.0) for name, parts in profile.items()}}
        for part in names + ["kernels", "call"]
    ]


def kernel_profile_summaries(
    profile: dict[str, dict[str, float]], programs: dict[str, tuple[Sequence[int] | None, float]]
) -> list[str]:
    """Per router of ``programs`` (name -> its deployed positions, or None, and its all-miss
    overhead timed without the profiler), what its kernels add to those of the profile's
    'plain' program."""
    lines = []
    for name, (positions, overhead) in programs.items():
        if name not in profile:
            continue
        added = added_kernels(profile[name], profile["plain"])
        share = {k: 100 * v / added["plain"] for k, v in added.items()}
        where = "" if positions is None else f" {list(positions)}"
        lines.append(
            f"{name}{where}: its lookups' kernels {1e3 * added['lookups']:.0f} us "
            f"({share['lookups']:.1f}% of the plain network's kernels), its other "
            f"kernels {1e3 * added['other']:+.0f} us ({share['other']:+.1f}%), its "
            f"stages' kernels {1e3 * added['stages']:+.0f} us "
            f"({share['stages']:+.1f}%); all-miss overhead timed without the "
            f"profiler {100 * overhead:+.1f}%"
        )
    return lines


KERNEL_PROFILE_NOTE = (
    "XLA's kernel times from jax.profiler, us per call, median; parts by "
    "named scope; 'call': the call's wall time under the profiler, which "
    "slows it, so read the parts against each other, not against times "
    "taken without it"
)


def describe_kernel_profile(
    profile: dict[str, dict[str, float]] | None,
    programs: dict[str, tuple[Sequence[int] | None, float]],
) -> list[str]:
    """Lines for a profile of all-miss programs: its table (:func:`kernel_profile_rows`),
    then :func:`kernel_profile_summaries`; none without a profile."""
    if not profile:
        return []
    return [
        f"inside the programs, every lookup missing ({KERNEL_PROFILE_NOTE}):",
        format_table(kernel_profile_rows(profile)),
        *kernel_profile_summaries(profile, programs),
    ]
