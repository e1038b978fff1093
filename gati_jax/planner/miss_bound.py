"""The miss bound, held by measurement: plan, time the chosen plan's request that misses every
lookup, charge each lookup at least its measured share, plan again.

The bound (``planner.max_miss_overhead``, Apparate's ramp budget) caps what a request that
exits nowhere pays over the plain network. The profile's marginal lookup costs cannot carry it
alone: they are differences of two ~1 ms times on a machine whose speed moves by 10-40% within
minutes, and for lookups of ~40 us each they read from 0 to 130 us (four measurements of the
same three lookups here); a plan the profile said cost +5.4% on a miss measured +12-16%.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

from gati_jax.planner.instance import Choice, Instance


@dataclasses.dataclass(frozen=True)
class MissRound:
    """One plan tried under the bound: what the model and the machine said it costs."""

    positions: tuple[int, ...]
    floor_s: float        # the least seconds each lookup was charged when it was planned
    # All-miss overhead, a fraction of the plain network, by the model with this round's
    # floor (from round 1 on, the floor itself comes from the last round's measurement).
    predicted: float
    measured: float       # ... timed beside the plain network

    def to_json(self) -> dict[str, Any]:
        """The round as plain values."""
        return {"positions": list(self.positions), "floor_us": 1e6 * self.floor_s,
                "predicted": self.predicted, "measured": self.measured}


def next_floor(instance: Instance, choices: Sequence[Choice], measured: float) -> float:
    """The least per-lookup charge at which the model's all-miss cost of ``choices`` reaches
    ``measured`` (a fraction of the plain network): the plan that broke the bound then breaks
    it in the model too, and so does every plan of as many lookups or more."""
    count = sum(c is not None for c in choices)
    if count == 0:
        return instance.miss_floor_s
    share = (measured * instance.full_s - float(instance.charge_s(count))) / count
    return max(instance.miss_floor_s, share)


def hold_miss_bound(plan: Callable[[float], tuple[Instance, list[Choice]]],
                    measure: Callable[[Instance, list[Choice]], float], bound: float,
                    rounds: int,
                    fallback: Callable[[], tuple[Instance, list[Choice]]] | None = None,
                    ) -> tuple[list[MissRound], bool]:
    """Plans with a per-lookup floor of 0, then while the plan measures over ``bound`` (at
    most ``rounds`` times) raises the floor to its measured share and plans again.

    ``plan(floor)`` plans (and keeps) the deployment and returns its instance and choices;
    ``measure`` times a plan's all-miss overhead. If the last plan still measures over the
    bound, ``fallback()`` (when given) deploys its plan instead (deploying nothing holds
    any bound), measured as one more round. Returns every round and whether the deployed
    plan measured within the bound. With ``bound`` inf the one plan is measured and kept.
    """
    if not bound >= 0:
        raise ValueError(f"the miss bound must be >= 0, got {bound}")
    history: list[MissRound] = []

    def record(instance: Instance, choices: list[Choice], floor: float) -> bool:
        measured = measure(instance, choices)
        if not math.isfinite(measured):
            raise ValueError(f"the all-miss overhead measured {measured}")
        history.append(MissRound(
            tuple(instance.positions[i] for i, c in enumerate(choices) if c is not None),
            floor, instance.miss_s(choices) / instance.full_s, measured))
        return measured <= bound

    floor = 0.0
    for round_ in range(rounds + 1):
        instance, choices = plan(floor)
        if record(instance, choices, floor):
            return history, True
        if round_ < rounds:
            floor = next_floor(instance, choices, measured=history[-1].measured)
    if fallback is None:
        return history, False
    instance, choices = fallback()
    return history, record(instance, choices, floor)
