"""The miss bound, held by measurement: plan, time the chosen plan's request that misses every
lookup, and while it breaks the bound charge its lookups at least what they measured and plan
again.

The bound (``planner.max_miss_overhead``, Apparate's ramp budget) caps what a request that
exits nowhere pays over the plain network. The profile's marginal lookup costs cannot carry it
alone: they are differences of two ~1 ms times on a machine whose speed moves by 10-40% within
minutes, and for lookups of ~40 us each they read from 0 to 130 us (four measurements of the
same three lookups here); a plan the profile said cost +5.4% on a miss measured +12-16%.

The floors are per lookup. A plan over the bound has each of its lookups timed alone (a
router with that cache only, never hitting); a lookup is then charged at least what it added
alone, beyond the router's own charges. Only when every lookup of a plan had been timed alone
before it was chosen, and the plan still broke the bound (lookups that cost more together than
apart), does each get at least an equal share of what the plan measured. A uniform floor for
every lookup, as this module once set, ruled out cheap lookups with dear ones: with a 5% bound
on ``runs/main_v28`` a plan of positions 0, 4 and 6 measured +16.1%, and at its 58 us share no
lookup fitted, where the one at position 8 measures +1.4% alone (``bench_lookup.py``).
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
    keys: tuple[str, ...]             # its lookups (option keys), by position
    floors_s: tuple[float, ...]       # the least seconds each was charged when it was planned
    # All-miss overhead, a fraction of the plain network, by the model with those floors.
    predicted: float
    measured: float                   # ... timed beside the plain network
    alone: dict[str, float]           # lookups timed alone after it broke the bound (overheads)

    def to_json(self) -> dict[str, Any]:
        """The round as plain values."""
        return {"positions": list(self.positions), "keys": list(self.keys),
                "floors_us": [1e6 * f for f in self.floors_s], "predicted": self.predicted,
                "measured": self.measured, "alone": dict(self.alone)}


def _deployed(instance: Instance, choices: Sequence[Choice]) -> list[tuple[int, str]]:
    return [(instance.positions[i], instance.options[i][c[0]].key)
            for i, c in enumerate(choices) if c is not None]


def next_floors(instance: Instance, choices: Sequence[Choice], measured: float,
                alone: dict[str, float], timed_before: set[str]) -> dict[str, float]:
    """The per-lookup floors after ``choices`` measured ``measured`` over the plain network.

    Each lookup timed alone (``alone``: key -> overhead) is charged at least what it added
    beyond the router's charges for one cache. If every lookup of the plan had been timed
    alone before the plan was made (``timed_before``), each is also charged at least an equal
    share of the measured overhead: the plan then breaks the bound in the model too, and the
    search cannot choose it again.
    """
    floors = dict(instance.miss_floors_s)
    keys = [key for _, key in _deployed(instance, choices)]
    one = float(instance.charge_s(1))
    for key, overhead in alone.items():
        floors[key] = max(floors.get(key, 0.0), overhead * instance.full_s - one, 0.0)
    if keys and set(keys) <= timed_before:
        share = (measured * instance.full_s - float(instance.charge_s(len(keys)))) / len(keys)
        for key in keys:
            floors[key] = max(floors.get(key, 0.0), share)
    return floors


def hold_miss_bound(plan: Callable[[dict[str, float]], tuple[Instance, list[Choice]]],
                    measure: Callable[[Instance, list[Choice]], float],
                    measure_alone: Callable[[Instance, int, Choice], float], bound: float,
                    rounds: int,
                    fallback: Callable[[], tuple[Instance, list[Choice]]] | None = None,
                    ) -> tuple[list[MissRound], bool]:
    """Plans with no floors, then while the plan measures over ``bound`` (at most ``rounds``
    times) times its lookups alone, raises their floors (:func:`next_floors`) and plans again.

    ``plan(floors)`` plans (and keeps) the deployment and returns its instance and choices;
    ``measure`` times a plan's all-miss overhead, ``measure_alone(instance, i, choice)`` that of
    the one cache ``choice`` at the instance's ``i``-th position. If the last plan still
    measures over the bound, ``fallback()`` (when given) deploys its plan instead (deploying
    nothing holds any bound), measured as one more round. Returns every round and whether the
    deployed plan measured within the bound. With ``bound`` inf the one plan is measured and
    kept.
    """
    if not bound >= 0:
        raise ValueError(f"the miss bound must be >= 0, got {bound}")
    history: list[MissRound] = []
    timed: dict[str, float] = {}  # every lookup timed alone so far

    def checked(value: float) -> float:
        if not math.isfinite(value):
            raise ValueError(f"the all-miss overhead measured {value}")
        return value

    def record(instance: Instance, choices: list[Choice]) -> bool:
        deployed = _deployed(instance, choices)
        history.append(MissRound(
            tuple(p for p, _ in deployed), tuple(k for _, k in deployed),
            tuple(instance.miss_floors_s.get(k, 0.0) for _, k in deployed),
            instance.miss_s(choices) / instance.full_s, checked(measure(instance, choices)),
            {}))
        return history[-1].measured <= bound

    floors: dict[str, float] = {}
    for round_ in range(rounds + 1):
        instance, choices = plan(floors)
        if record(instance, choices):
            return history, True
        if round_ < rounds:
            before = set(timed)
            for i, c in enumerate(choices):
                key = instance.options[i][c[0]].key if c is not None else None
                if key is not None and key not in timed:
                    timed[key] = checked(measure_alone(instance, i, c))
                    history[-1].alone[key] = timed[key]
            floors = next_floors(instance, choices, history[-1].measured,
                                 {k: timed[k] for k in history[-1].alone}, before)
    if fallback is None:
        return history, False
    instance, choices = fallback()
    return history, record(instance, choices)
