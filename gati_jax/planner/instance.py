"""A planning instance: what every deployable cache would do to every tuning request.

The planner never runs a network. For each candidate position it holds the deployable caches
(options) with, per tuning request, the policy's exit score (a hit is ``score >= threshold``),
whether the cache's answer agrees with the base network's and whether it is correct, plus the
latency profile: the cost of running the stages through each position and of each lookup.

A plan chooses, per position, one option and a threshold, or nothing. A request exits at the
first deployed position where it hits; it pays the stages up to its exit, every lookup it
passed, the exit at the lookup it hit (costed apart: an exit and a miss cost differently),
and the router's charge: a fixed part once any cache is deployed and a part per deployed cache,
hit or passed or not (an exit at the first of five deployed positions cost 33% more than in a
router with that cache alone); a request that never hits runs the whole network and gets the
base answer.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence

import numpy as np

from gati_jax.caches.selector import wilson_lower_bound


@dataclasses.dataclass(frozen=True)
class Option:
    """One deployable cache at one position, as the tuning requests see it."""

    key: str  # the candidate's key in the cache bank
    scores: np.ndarray  # (N,) exit score per request; a hit is score >= threshold
    errors: np.ndarray  # (N,) bool: the cache's answer differs from the base answer
    correct: np.ndarray  # (N,) bool: the cache's answer equals the label
    lookup_s: float  # seconds one more lookup adds to a request that passes it
    nbytes: int  # parameter bytes
    grid: np.ndarray  # candidate thresholds, ascending
    exit_s: float | None = None  # ... to a request that exits at it (None: as lookup_s)
    # What its lookup computes up to parameter values (planner/build.py: lookup_program);
    # options of one program are priced alike. Empty: its own.
    program: str = ""

    @property
    def exit_cost(self) -> float:
        """Seconds the lookup adds to a request that exits at it."""
        return self.lookup_s if self.exit_s is None else self.exit_s

    @functools.cached_property
    def order(self) -> np.ndarray:
        """Request indices by descending score (stable), sorted once for every search step."""
        return np.argsort(-self.scores, kind="stable")


# Per position: None (nothing deployed) or (option index, threshold).
Choice = tuple[int, float] | None


def threshold_grid(scores: np.ndarray, levels: int) -> np.ndarray:
    """``levels`` score quantiles, from 'everything hits' to 'only the top score hits'."""
    return np.unique(np.quantile(np.asarray(scores, np.float64), np.linspace(0.0, 1.0, levels)))


def max_errors(num_requests: int, eps: float, confidence: float = 0.0) -> int:
    """The most disagreements a plan may make on ``num_requests`` tuning requests.

    With ``confidence`` > 0 the one-sided Wilson lower bound of the agreement must reach
    1 - eps, which leaves room for the tuning sample being optimistic.
    """
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"eps must lie in [0, 1), got {eps}")
    if num_requests <= 0:
        raise ValueError("a planning instance needs at least one tuning request")
    return _max_errors(int(num_requests), float(eps), float(confidence))


# The search asks for the same budget tens of thousands of times (it cost 20 s of a
# planning run before it was remembered).
@functools.lru_cache(maxsize=256)
def _max_errors(num_requests: int, eps: float, confidence: float) -> int:
    k = np.arange(num_requests + 1)
    agreement = wilson_lower_bound(num_requests - k, np.full_like(k, num_requests), confidence)
    ok = np.flatnonzero(agreement >= 1.0 - eps - 1e-12)
    return int(ok[-1]) if ok.size else -1


@dataclasses.dataclass(frozen=True)
class MissFloors:
    """The least seconds deployed lookups are charged under a miss bound, set by measurement
    (planner/miss_bound.py) where the profile's marginal costs (noisy differences of two
    times of ~1 ms) said lookups were nearly free and the router measured +12% over three."""

    per_lookup: Mapping[str, float] = dataclasses.field(default_factory=dict)  # option key
    # A lookup never timed alone: 0 before any lookup was timed, then inf (only timed lookups
    # may be deployed: priced at the profile's near-zero costs, untimed variants of the same
    # positions drew the search from one to the next until its rounds ran out).
    untimed_s: float = 0.0
    # The most the router's charges for one cache may be: the cheapest one-cache router
    # measured all missing (the profile's charges are differences of differences of ~1 ms
    # times; one read 58 us, 5% of the plain network, where the next read 8).
    charge_cap_s: float = float("inf")

    def __post_init__(self) -> None:
        for key, floor in self.per_lookup.items():
            if not (np.isfinite(floor) and floor >= 0):
                raise ValueError(f"the lookup floor of {key} must be finite and >= 0, got {floor}")
        for name, value in (
            ("floor of untimed lookups", self.untimed_s),
            ("router charge cap", self.charge_cap_s),
        ):
            if not value >= 0:  # inf allowed: no lookup untimed / no cap
                raise ValueError(f"the {name} must be >= 0, got {value}")

    def of(self, key: str) -> float:
        """The floor of the lookup ``key``."""
        return self.per_lookup.get(key, self.untimed_s)


@dataclasses.dataclass(frozen=True)
class Instance:
    """Options per position, stage costs, and the bound and budget a plan must respect."""

    positions: tuple[int, ...]  # increasing candidate positions
    options: tuple[tuple[Option, ...], ...]  # per position
    prefix_s: np.ndarray  # seconds to run stages 0..p, for every stage p
    base_correct: np.ndarray  # (N,) bool: the base answer equals the label
    eps: float
    budget_bytes: float
    confidence: float = 0.0
    # Seconds every request pays once any cache is deployed: lookups cost less together than
    # alone (nine one-cache routers cost 2.5 ms over the plain network in all, one router
    # with the same nine 1.5 ms), so a lookup is charged its marginal cost plus this, once.
    router_s: float = 0.0
    # Seconds every request pays per deployed cache, whether it reaches it or not: a larger
    # router costs more per call even to a request that leaves it early.
    deploy_s: float = 0.0
    # The most a request that misses every lookup may pay over the plain network, as a
    # fraction of it (Apparate's ramp budget: the worst case stays bounded, not only the
    # mean); inf: no bound.
    max_miss_overhead: float = float("inf")
    # The least seconds each lookup is charged under that bound.
    miss_floors: MissFloors = MissFloors()

    def __post_init__(self) -> None:
        if len(self.options) != len(self.positions):
            raise ValueError("one option list per position is needed")
        if list(self.positions) != sorted(set(self.positions)):
            raise ValueError(f"positions must be increasing and distinct: {self.positions}")
        if self.budget_bytes < 0:
            raise ValueError(f"the memory budget must be >= 0 bytes, got {self.budget_bytes}")
        if not self.max_miss_overhead >= 0:
            raise ValueError(f"the miss overhead bound must be >= 0, got {self.max_miss_overhead}")
        for name, charge in (("router charge", self.router_s), ("per-cache charge", self.deploy_s)):
            if not (np.isfinite(charge) and charge >= 0):
                raise ValueError(f"the {name} must be finite and >= 0, got {charge}")
        n = self.num_requests
        for opts in self.options:
            for o in opts:
                if not (o.scores.shape == o.errors.shape == o.correct.shape == (n,)):
                    raise ValueError(f"option {o.key}: per-request arrays must have shape ({n},)")
                if not np.all(np.isfinite(o.scores)):
                    raise ValueError(f"option {o.key}: exit scores contain NaN or Inf")
                for name, cost in (("lookup", o.lookup_s), ("exit", o.exit_cost)):
                    if not (np.isfinite(cost) and cost >= 0):
                        raise ValueError(
                            f"option {o.key}: {name} cost must be finite and >= 0, got {cost}"
                        )
        max_errors(n, self.eps, self.confidence)  # validates eps

    @property
    def num_requests(self) -> int:
        """Tuning requests."""
        return int(self.base_correct.shape[0])

    @property
    def full_s(self) -> float:
        """Seconds for the whole network."""
        return float(self.prefix_s[-1])

    @property
    def error_budget(self) -> int:
        """The most disagreements a feasible plan may make."""
        return max_errors(self.num_requests, self.eps, self.confidence)

    def charge_s(self, deployed) -> np.ndarray:
        """The router's charges per request for ``deployed`` caches (see
        :func:`router_charge`)."""
        return router_charge(self.router_s, self.deploy_s, deployed)

    def empty(self) -> list[Choice]:
        """The plan that deploys nothing."""
        return [None] * len(self.positions)

    def memory(self, choices: Sequence[Choice]) -> int:
        """Parameter bytes of a plan."""
        return sum(self.options[i][c[0]].nbytes for i, c in enumerate(choices) if c is not None)

    def miss_charge_s(self, deployed, cap_s: float | None = None) -> np.ndarray:
        """The router's charges as the miss bound counts them: scaled down, where the profile
        put one cache's above the cap (``cap_s``, default ``miss_floors.charge_cap_s``), to
        that cap."""
        cap = self.miss_floors.charge_cap_s if cap_s is None else cap_s
        one = float(self.charge_s(1))
        scale = min(1.0, cap / one) if one > 0 else 1.0
        return scale * self.charge_s(deployed)

    def miss_lookup_s(self, option: Option) -> float:
        """Seconds one deployed lookup counts for under the miss bound."""
        return max(option.lookup_s, self.miss_floors.of(option.key))

    def miss_lookups_s(self, choices: Sequence[Choice]) -> float:
        """The lookups' part of :meth:`miss_s` (the router's charges left out)."""
        return float(
            sum(
                self.miss_lookup_s(self.options[i][c[0]])
                for i, c in enumerate(choices)
                if c is not None
            )
        )

    def miss_s(self, choices: Sequence[Choice]) -> float:
        """Seconds a request that misses every lookup of a plan pays over the plain network,
        as the miss bound counts them (the floors applied)."""
        deployed = sum(c is not None for c in choices)
        return self.miss_lookups_s(choices) + float(self.miss_charge_s(deployed))

    @property
    def miss_budget_s(self) -> float:
        """The most seconds a plan's all-miss request may pay over the plain network."""
        return self.max_miss_overhead * self.full_s

    def fits(self, choices: Sequence[Choice]) -> bool:
        """Whether a plan respects the memory budget and the miss bound."""
        return self.memory(choices) <= self.budget_bytes and self.miss_s(
            choices
        ) <= self.miss_budget_s * (1 + 1e-12)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What a plan does to the tuning requests."""

    cost_s: np.ndarray  # (N,) seconds per request
    errors: np.ndarray  # (N,) bool: answer differs from the base answer
    correct: np.ndarray  # (N,) bool: answer equals the label
    exit_index: np.ndarray  # (N,) index into positions, len(positions) for a full run

    @property
    def mean_cost_s(self) -> float:
        """Mean seconds per request."""
        return float(self.cost_s.mean())

    @property
    def num_errors(self) -> int:
        """Disagreements with the base network."""
        return int(self.errors.sum())


def router_charge(fixed_s: float, per_cache_s: float, deployed) -> np.ndarray:
    """Seconds every request pays to a router with ``deployed`` caches (an int or an array of
    them): the fixed charge once any cache is deployed, the per-cache one for each."""
    deployed = np.asarray(deployed)
    return np.where(deployed > 0, fixed_s + deployed * per_cache_s, 0.0)


def simulate(instance: Instance, choices: Sequence[Choice], charge: bool = True) -> Outcome:
    """Routes every tuning request through a plan (numpy, vectorised over requests).

    ``charge`` False leaves out the router's charges (for composing partial plans).
    """
    n, p_count = instance.num_requests, len(instance.positions)
    cost = np.zeros(n)
    errors = np.zeros(n, bool)
    correct = instance.base_correct.copy()
    exit_index = np.full(n, p_count)
    remaining = np.ones(n, bool)
    lookups = 0.0  # every request still in flight passed the same lookups
    for i, choice in enumerate(choices):
        if choice is None:
            continue
        option = instance.options[i][choice[0]]
        hit = remaining & (option.scores >= choice[1])
        cost[hit] = instance.prefix_s[instance.positions[i]] + lookups + option.exit_cost
        errors[hit] = option.errors[hit]
        correct[hit] = option.correct[hit]
        exit_index[hit] = i
        remaining &= ~hit
        lookups += option.lookup_s
    cost[remaining] = instance.full_s + lookups
    if charge:
        cost += instance.charge_s(sum(c is not None for c in choices))
    return Outcome(cost, errors, correct, exit_index)


def summarize_outcome(instance: Instance, choices: Sequence[Choice]) -> dict[str, object]:
    """Predicted latency, speedup, agreement, accuracy, memory and exits of a plan."""
    out = simulate(instance, choices)
    n = instance.num_requests
    fractions = np.bincount(out.exit_index, minlength=len(instance.positions) + 1) / n
    return {
        "mean_latency_ms": 1e3 * out.mean_cost_s,
        "speedup": instance.full_s / out.mean_cost_s,
        "agreement": 1.0 - out.num_errors / n,
        "accuracy": float(out.correct.mean()),
        "base_accuracy": float(instance.base_correct.mean()),
        "accuracy_drop": float(instance.base_correct.mean() - out.correct.mean()),
        "memory_bytes": instance.memory(choices),
        # What a request that misses every lookup pays over the plain network, predicted.
        "miss_overhead": instance.miss_s(choices) / instance.full_s,
        "feasible": bool(out.num_errors <= instance.error_budget and instance.fits(choices)),
        "exit_fractions": {str(p): float(f) for p, f in zip(instance.positions, fractions)}
        | {"full": float(fractions[-1])},
    }
