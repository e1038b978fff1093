"""Apparate (Dai et al., SOSP'24) as a planner: a few cheap ramps placed by utility per second
of tail cost, and their thresholds found by Apparate's step search. Pure functions over an
:class:`~gati_jax.planner.instance.Instance`, under its accuracy bound (eps at the Wilson
confidence it carries), memory budget and cost model, as every other policy.

Words. A *ramp* is an internal classifier at a position; its exit score is the max softmax of
the cache's predictor (``apparate`` scores like ``confidence``). Apparate moves thresholds in
units of that score: a ramp's *opening* o in [0, 1] lets a request exit where its score is at
least ``1 - o`` (o = 0: closed, nobody exits; o = 1: everybody who reaches it exits). The
*tail* of a plan is what a request that exits nowhere pays over the plain network (its lookups
and the router's charges, the instance's ``miss_s``); Apparate keeps what its ramps add to it
(their lookups and per-ramp charges) within a budget, a few percent of the plain network. The
router's fixed charge, paid once by any plan that deploys a cache, is not a ramp's cost
(Apparate's platform releases exits without routing): it is not counted against the budget,
which would otherwise refuse every ramp where it alone exceeds a few percent.

The step search, for a fixed set of ramps:

- every ramp starts closed, every ramp with the same small step;
- a round tries, at every ramp not yet fully open, to open it by its own step, the others as
  they are; a try is feasible when the plan still meets the accuracy bound;
- of the feasible tries that save time, the one that adds the fewest disagreements per second
  saved is taken (ties: the larger saving, then the earlier ramp). When none saves time, a
  feasible try that moves no request (the ramp's new range holds no score) is taken instead,
  which carries the ramp over an empty stretch of scores;
- the taken ramp's step doubles, and so does the step of every other feasible try that moved
  no request or added no disagreement: those ramps may stride further next round;
- a round with nothing to take halves every step above the minimum step (of ramps not fully
  open); when no step can halve, the search ends.

Offline, the search runs from each of several starting steps (Apparate: 1.25%, 2.5% and 5% of
the score's range, down to 1.25%) and the cheapest plan is kept; online, from one small step
(1%, down to 0.1%), on the requests of a sliding window.

Placement:

- one ramp per position: Apparate's cheap ramp (an average pool and one linear layer, our
  ``pool-k1``; ``fc-d1``, one linear layer, on vector activations) where the position offers
  it, else the option whose lookup costs least;
- no ramp after the *boundary*, the last position (counting from the first) where a request
  that exits pays less than the plain network;
- ramps are added one at a time while fewer than the ramp budget: every candidate position is
  tried together with the ramps chosen so far, all thresholds searched again, and scored by
  its *utility* (mean seconds the plan saves with the ramp over the same plan without it) per
  second it adds to the tail; the best positive score is added, if the plan keeps the memory
  budget and the tail budget;
- then ramps whose utility is not positive (a closed ramp only costs) are pruned, the worst
  first, every threshold searched again after each.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Generator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from gati_jax.planner.instance import Choice, Instance, MissFloors, Option, Outcome, simulate

# Apparate's published search constants (fractions of the score's range).
OFFLINE_STARTS = (0.0125, 0.025, 0.05)
OFFLINE_MIN_STEP = 0.0125
ONLINE_STARTS = (0.01,)
ONLINE_MIN_STEP = 0.001
# Apparate's ramp architecture in our design space (gati_jax/caches/variants.py).
CHEAP_RAMPS = ("pool-k1", "fc-d1")
# Where the max softmax lives.
SCORE_RANGE = (0.0, 1.0)


def threshold_of(opening: float, score_range: tuple[float, float] = SCORE_RANGE) -> float:
    """The score threshold of a ramp opened by ``opening`` (+inf when closed)."""
    if opening <= 0.0:
        return float("inf")
    low, high = score_range
    return float(high - min(opening, 1.0) * (high - low))


class Round(NamedTuple):
    """One round of the step search: the ramp whose try was taken (its index among the
    searched ramps; None: nothing fitted and the steps were halved, or the search ended), and
    the openings and steps after the round."""

    taken: int | None
    openings: tuple[float, ...]
    steps: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class Search:
    """What a step search found: the plan, its openings (by ramp, in position order), mean
    cost and disagreements on the instance's requests, the starting step and every round."""

    choices: list[Choice]
    openings: tuple[float, ...]
    mean_cost_s: float
    errors: int
    start: float
    rounds: tuple[Round, ...]


class _Try(NamedTuple):
    ramp: int
    openings: list[float]
    outcome: Outcome
    saved_s: float  # total seconds saved over the current plan
    added: int  # disagreements added
    idle: bool  # no request exits elsewhere


def _plan(
    instance: Instance,
    ramps: Mapping[int, int],
    openings: Sequence[float],
    score_range: tuple[float, float],
) -> list[Choice]:
    choices = instance.empty()
    for opening, i in zip(openings, sorted(ramps)):
        choices[i] = (ramps[i], threshold_of(opening, score_range))
    return choices


def search_steps(
    instance: Instance,
    ramps: Mapping[int, int],
    start: float,
    min_step: float,
    score_range: tuple[float, float] = SCORE_RANGE,
) -> Generator[None, None, Search]:
    """The step search over ``ramps`` (position index -> option index) from the starting step
    ``start``, as a generator that yields after every round (online tuning runs one round per
    background chunk) and returns the :class:`Search`. See the module docstring."""
    if not (start > 0 and min_step > 0):
        raise ValueError(f"steps must be > 0, got start {start} and minimum {min_step}")
    count = len(ramps)
    openings, steps = [0.0] * count, [float(start)] * count
    budget = instance.error_budget
    current = simulate(instance, _plan(instance, ramps, openings, score_range))
    rounds: list[Round] = []
    while count:
        tries = []
        for r in range(count):
            if openings[r] >= 1.0:
                continue
            trial = list(openings)
            trial[r] = min(1.0, openings[r] + steps[r])
            out = simulate(instance, _plan(instance, ramps, trial, score_range))
            if out.num_errors > budget:
                continue
            idle = bool(np.array_equal(out.exit_index, current.exit_index))
            tries.append(
                _Try(
                    r,
                    trial,
                    out,
                    float(current.cost_s.sum() - out.cost_s.sum()),
                    out.num_errors - current.num_errors,
                    idle,
                )
            )
        saving = [t for t in tries if t.saved_s > 0 and not t.idle]
        if saving:
            taken = min(saving, key=lambda t: (t.added / t.saved_s, -t.saved_s, t.ramp))
        else:
            taken = next((t for t in tries if t.idle), None)
        if taken is None:
            halved = False
            for r in range(count):
                if openings[r] < 1.0 and steps[r] > min_step:
                    steps[r] /= 2
                    halved = True
            rounds.append(Round(None, tuple(openings), tuple(steps)))
            if not halved:
                break
            yield
            continue
        openings, current = taken.openings, taken.outcome
        for t in tries:
            if t is taken or t.idle or t.added <= 0:
                steps[t.ramp] *= 2
        rounds.append(Round(taken.ramp, tuple(openings), tuple(steps)))
        yield
    return Search(
        _plan(instance, ramps, openings, score_range),
        tuple(openings),
        current.mean_cost_s,
        current.num_errors,
        float(start),
        tuple(rounds),
    )


def tune_steps(
    instance: Instance,
    ramps: Mapping[int, int],
    starts: Sequence[float] = OFFLINE_STARTS,
    min_step: float = OFFLINE_MIN_STEP,
    score_range: tuple[float, float] = SCORE_RANGE,
) -> Generator[None, None, Search]:
    """The step search from every step in ``starts``; returns the cheapest result (the
    earlier start on a tie). A generator like :func:`search_steps`."""
    best = None
    for start in starts:
        found = yield from search_steps(instance, ramps, start, min_step, score_range)
        if best is None or found.mean_cost_s < best.mean_cost_s:
            best = found
    if best is None:
        raise ValueError("the step search needs at least one starting step")
    return best


def run(steps: Generator[None, None, Any]) -> Any:
    """Runs a generator of this module to its end; returns its result."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def tune(
    instance: Instance,
    ramps: Mapping[int, int],
    starts: Sequence[float] = OFFLINE_STARTS,
    min_step: float = OFFLINE_MIN_STEP,
    score_range: tuple[float, float] = SCORE_RANGE,
) -> Search:
    """:func:`tune_steps` run to its end."""
    return run(tune_steps(instance, ramps, starts, min_step, score_range))


def utilities(instance: Instance, choices: Sequence[Choice]) -> dict[int, float]:
    """Per deployed position index: the mean seconds the plan saves with that ramp over the
    same plan without it (negative: the ramp costs more than it saves)."""
    with_all = simulate(instance, choices).mean_cost_s
    out = {}
    for i, choice in enumerate(choices):
        if choice is not None:
            without = list(choices)
            without[i] = None
            out[i] = simulate(instance, without).mean_cost_s - with_all
    return out


def ramp_options(instance: Instance, cheap: Sequence[str] = CHEAP_RAMPS) -> list[int | None]:
    """Per position, the option that serves as its ramp: the first of the ``cheap``
    variants it offers, else the option whose lookup costs least on a miss (then the fewest
    bytes); None where a position has no option."""
    picks: list[int | None] = []
    for options in instance.options:
        if not options:
            picks.append(None)
            continue
        variants = [o.key.split("/")[1] if "/" in o.key else o.key for o in options]
        preferred = [o for o, v in enumerate(variants) if v in cheap]
        pool = preferred or range(len(options))
        picks.append(
            min(
                pool,
                key=lambda o: (
                    cheap.index(variants[o]) if preferred else 0,
                    instance.miss_lookup_s(options[o]),
                    options[o].nbytes,
                    o,
                ),
            )
        )
    return picks


def candidate_ramps(instance: Instance, cheap: Sequence[str] = CHEAP_RAMPS) -> dict[int, int]:
    """The ramps a plan may deploy (position index -> option index): one per position (see
    :func:`ramp_options`), from the first position up to the boundary, the last one before
    the first where a request exiting at the ramp alone pays as much as the plain network."""
    out = {}
    for i, o in enumerate(ramp_options(instance, cheap)):
        if o is None:
            continue
        option = instance.options[i][o]
        exiting = (
            instance.prefix_s[instance.positions[i]]
            + option.exit_cost
            + float(instance.charge_s(1))
        )
        if exiting >= instance.full_s:
            break
        out[i] = o
    return out


def fixed_charge(instance: Instance) -> float:
    """The router's fixed charge as the miss bound counts it (capped as it caps them), as a
    fraction of the plain network: what a plan's tail holds besides its ramps."""
    one = float(instance.charge_s(1))
    if one <= 0:
        return 0.0
    return float(instance.miss_charge_s(1)) * instance.router_s / one / instance.full_s


def bounded(instance: Instance, tail_budget: float) -> Instance:
    """``instance`` whose miss bound is also the router's fixed charge plus ``tail_budget``
    (fractions of the plain network; the stricter of the two holds): the budget bounds what
    the ramps add (see the module docstring)."""
    if not tail_budget >= 0:
        raise ValueError(f"the tail budget must be >= 0, got {tail_budget}")
    return dataclasses.replace(
        instance,
        max_miss_overhead=min(
            instance.max_miss_overhead, float(tail_budget) + fixed_charge(instance)
        ),
    )


@dataclasses.dataclass(frozen=True)
class Placement:
    """Apparate's plan: its choices and search, the positions added in order and the pruned
    ones (position indices), and each deployed ramp's utility (mean seconds)."""

    choices: list[Choice]
    search: Search | None
    added: tuple[int, ...]
    pruned: tuple[int, ...]
    utilities: dict[int, float]


def prune(
    instance: Instance,
    ramps: dict[int, int],
    found: Search,
    starts: Sequence[float] = OFFLINE_STARTS,
    min_step: float = OFFLINE_MIN_STEP,
    score_range: tuple[float, float] = SCORE_RANGE,
) -> tuple[dict[int, int], Search | None, list[int]]:
    """Removes ramps whose utility is not positive, the worst first, searching the
    thresholds of the rest again after each; returns the ramps kept, their search (None
    when none is left) and the pruned position indices in order."""
    ramps, pruned = dict(ramps), []
    while ramps:
        worth = utilities(instance, found.choices)
        worst = min(worth, key=lambda i: (worth[i], i))
        if worth[worst] > 0:
            break
        del ramps[worst]
        pruned.append(worst)
        if ramps:
            found = tune(instance, ramps, starts, min_step, score_range)
    return ramps, (found if ramps else None), pruned


def place(
    instance: Instance,
    ramp_budget: int,
    tail_budget: float,
    starts: Sequence[float] = OFFLINE_STARTS,
    min_step: float = OFFLINE_MIN_STEP,
    cheap: Sequence[str] = CHEAP_RAMPS,
    score_range: tuple[float, float] = SCORE_RANGE,
) -> Placement:
    """Apparate's placement and thresholds on ``instance`` with at most ``ramp_budget``
    ramps and a tail within ``tail_budget`` (see the module docstring). The plan meets the
    instance's accuracy bound and memory budget, and its miss bound and the tail budget."""
    if ramp_budget < 0:
        raise ValueError(f"the ramp budget must be >= 0, got {ramp_budget}")
    inst = bounded(instance, tail_budget)
    candidates = candidate_ramps(inst, cheap)
    chosen: dict[int, int] = {}
    found: Search | None = None
    added = []
    while len(chosen) < ramp_budget:
        tail = inst.miss_s(_plan(inst, chosen, [0.0] * len(chosen), score_range))
        best = None
        for i, o in candidates.items():
            if i in chosen:
                continue
            trial = {**chosen, i: o}
            closed = _plan(inst, trial, [0.0] * len(trial), score_range)
            if not inst.fits(closed):
                continue
            tried = tune(inst, trial, starts, min_step, score_range)
            worth = utilities(inst, tried.choices)[i]
            price = inst.miss_s(closed) - tail
            score = worth / price if price > 0 else (math.inf if worth > 0 else 0.0)
            if score > 0 and (best is None or score > best[0]):
                best = (score, i, trial, tried)
        if best is None:
            break
        _, i, chosen, found = best
        added.append(i)
    pruned: list[int] = []
    if found is not None:
        chosen, found, pruned = prune(inst, chosen, found, starts, min_step, score_range)
    choices = found.choices if found is not None else inst.empty()
    return Placement(
        choices,
        found,
        tuple(added),
        tuple(pruned),
        utilities(inst, choices) if found is not None else {},
    )


def plan(instance: Instance, ramp_budget: int, tail_budget: float) -> list[Choice]:
    """The choices of :func:`place` (the planning job's ``apparate`` method)."""
    return place(instance, ramp_budget, tail_budget).choices


@dataclasses.dataclass(frozen=True)
class RampSet:
    """The candidate ramps and what they cost, as plain values: what online Apparate needs to
    tune on the requests it audits (:meth:`instance`), saved with the plans."""

    positions: tuple[int, ...]  # candidate positions, before the boundary
    keys: tuple[str, ...]  # the cache serving as the ramp at each
    lookup_s: tuple[float, ...]
    exit_s: tuple[float, ...]
    miss_lookup_s: tuple[float, ...]  # what each lookup counts for under the tail bound
    nbytes: tuple[int, ...]
    prefix_s: tuple[float, ...]
    router_s: float
    deploy_s: float
    charge_cap_s: float  # inf: no cap (see MissFloors)
    budget_bytes: float
    max_miss_overhead: float  # the tail budget and the instance's miss bound, the least
    ramp_budget: int

    @classmethod
    def from_instance(
        cls,
        instance: Instance,
        ramp_budget: int,
        tail_budget: float,
        cheap: Sequence[str] = CHEAP_RAMPS,
    ) -> RampSet:
        """The candidate ramps of ``instance`` (:func:`candidate_ramps`) and their costs."""
        inst = bounded(instance, tail_budget)
        ramps = candidate_ramps(inst, cheap)
        options = [inst.options[i][o] for i, o in ramps.items()]
        return cls(
            tuple(inst.positions[i] for i in ramps),
            tuple(o.key for o in options),
            tuple(float(o.lookup_s) for o in options),
            tuple(float(o.exit_cost) for o in options),
            tuple(float(inst.miss_lookup_s(o)) for o in options),
            tuple(int(o.nbytes) for o in options),
            tuple(float(s) for s in inst.prefix_s),
            float(inst.router_s),
            float(inst.deploy_s),
            float(inst.miss_floors.charge_cap_s),
            float(inst.budget_bytes),
            float(inst.max_miss_overhead),
            int(ramp_budget),
        )

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values (no infinities: None)."""
        row = dataclasses.asdict(self)
        for name in ("charge_cap_s", "max_miss_overhead", "budget_bytes"):
            if not math.isfinite(row[name]):
                row[name] = None
        # A ramp never timed alone under a miss bound counts as infinitely costly.
        row["miss_lookup_s"] = [s if math.isfinite(s) else None for s in self.miss_lookup_s]
        return row

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> RampSet:
        """Inverse of :meth:`to_json`."""
        values = dict(row)
        for name in ("charge_cap_s", "max_miss_overhead", "budget_bytes"):
            if values[name] is None:
                values[name] = float("inf")
        values["miss_lookup_s"] = [
            float("inf") if s is None else s for s in values["miss_lookup_s"]
        ]
        for f in dataclasses.fields(cls):
            if isinstance(values[f.name], list):
                values[f.name] = tuple(values[f.name])
        return cls(**values)

    def instance(
        self, scores: np.ndarray, errors: np.ndarray, eps: float, confidence: float = 0.0
    ) -> Instance:
        """A planning instance over these ramps on requests with ``scores`` and ``errors``
        (disagreement with the base answer), both (requests, ramps): one option per
        candidate position, the costs as planned."""
        scores = np.asarray(scores, np.float64)
        errors = np.asarray(errors, bool)
        if scores.shape != errors.shape or scores.ndim != 2 or scores.shape[1] != len(self.keys):
            raise ValueError(
                f"scores {scores.shape} and errors {errors.shape} must both be "
                f"(requests, {len(self.keys)})"
            )
        grid = np.asarray(SCORE_RANGE, np.float64)
        options = tuple(
            (
                Option(
                    key,
                    scores[:, j],
                    errors[:, j],
                    ~errors[:, j],
                    self.lookup_s[j],
                    self.nbytes[j],
                    grid,
                    self.exit_s[j],
                ),
            )
            for j, key in enumerate(self.keys)
        )
        # Ramps never timed alone under a miss bound (their floor is inf) keep the floor of
        # untimed lookups, inf: they may not be deployed, as in the offline plan.
        timed = {k: s for k, s in zip(self.keys, self.miss_lookup_s) if math.isfinite(s)}
        untimed = 0.0 if len(timed) == len(self.keys) else float("inf")
        floors = MissFloors(timed, untimed, self.charge_cap_s)
        return Instance(
            self.positions,
            options,
            np.asarray(self.prefix_s, np.float64),
            np.ones(scores.shape[0], bool),
            float(eps),
            self.budget_bytes,
            float(confidence),
            self.router_s,
            self.deploy_s,
            self.max_miss_overhead,
            floors,
        )
