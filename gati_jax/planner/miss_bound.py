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
alone, beyond the router's own charges, and a lookup never timed alone is not deployed any
more (kNN's and the comparators' lookups included). Only when every lookup of a plan had been
timed alone before it was chosen, and the plan still broke the bound (lookups that cost more
together than apart), does each get an equal part of what the plan measured beyond their
floors alone, so the search cannot choose it again. A uniform floor for
every lookup would rule out cheap lookups along with dear ones (a dear plan's equal share can
exceed what a cheap lookup costs alone, so nothing fits).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

from gati_jax.planner.instance import Choice, Instance, MissFloors


@dataclasses.dataclass(frozen=True)
class MissRound:
    """One plan tried under the bound: what the model and the machine said it costs."""

    positions: tuple[int, ...]
    keys: tuple[str, ...]  # its lookups (option keys), by position
    floors_s: tuple[float, ...]  # the least seconds each was charged when it was planned
    # All-miss overhead, a fraction of the plain network, by the model with those floors.
    predicted: float
    measured: float  # ... timed beside the plain network
    # After it broke the bound: its lookups timed alone this round (key -> overhead), and
    # the seconds each of its lookups got over its floor alone when the share rule applied.
    alone: dict[str, float] = dataclasses.field(default_factory=dict)
    shared_s: float | None = None
    scout: bool = False  # the plan without the bound, timed but never deployed

    def to_json(self) -> dict[str, Any]:
        """The round as plain values."""
        return {
            "positions": list(self.positions),
            "keys": list(self.keys),
            "floors_us": [1e6 * f for f in self.floors_s],
            "predicted": self.predicted,
            "measured": self.measured,
            "alone": dict(self.alone),
            "shared_us": None if self.shared_s is None else 1e6 * self.shared_s,
            "scout": self.scout,
        }


def _deployed(instance: Instance, choices: Sequence[Choice]) -> list[tuple[int, int, str]]:
    """(index, position, option key) of every deployed lookup."""
    return [
        (i, instance.positions[i], instance.options[i][c[0]].key)
        for i, c in enumerate(choices)
        if c is not None
    ]


def next_floors(
    floors: MissFloors,
    instance: Instance,
    choices: Sequence[Choice],
    measured: float,
    timed: dict[str, float],
    timed_before: set[str],
) -> tuple[MissFloors, float | None]:
    """The floors after ``choices`` measured ``measured`` over the plain network, with the
    lookups in ``timed`` (key -> overhead alone) timed alone so far.

    The router's charges for one cache are capped at the cheapest one-cache overhead timed
    (it holds them and a lookup); a lookup timed alone is charged at least what it added
    beyond the (capped) charges; one never timed may no longer be deployed. If every
    lookup of the plan had been timed before it was made (``timed_before``), the part of the
    measurement their floors alone do not explain is split equally among them (returned per
    lookup, else None): the plan then breaks the bound in the model too. Floors never fall.
    """
    # A one-cache router can time below the plain network (two noisy times of ~1 ms); no
    # charge is below zero.
    cap = max(0.0, min([floors.charge_cap_s, *(o * instance.full_s for o in timed.values())]))
    one = float(instance.miss_charge_s(1, cap))
    alone = {key: max(overhead * instance.full_s - one, 0.0) for key, overhead in timed.items()}
    per = dict(floors.per_lookup)
    for key, floor in alone.items():
        per[key] = max(per.get(key, 0.0), floor)
    keys = [key for _, _, key in _deployed(instance, choices)]
    shared = None
    if keys and set(keys) <= timed_before:
        excess = (
            measured * instance.full_s
            - float(instance.miss_charge_s(len(keys), cap))
            - sum(alone[k] for k in keys)
        )
        shared = max(excess, 0.0) / len(keys)
        for key in keys:
            per[key] = max(per[key], alone[key] + shared)
    untimed = float("inf") if alone else floors.untimed_s
    return MissFloors(per, untimed, cap), shared


def hold_miss_bound(
    plan: Callable[[MissFloors], tuple[Instance, list[Choice]]],
    measure: Callable[[Instance, list[Choice]], float],
    measure_alone: Callable[[Instance, list[tuple[int, Choice]]], list[float]],
    bound: float,
    rounds: int,
    fallback: Callable[[], tuple[Instance, list[Choice]]] | None = None,
    scout: Callable[[], tuple[Instance, list[Choice], list[Choice]]] | None = None,
    start: MissFloors | None = None,
    also_time: Callable[[Instance], list[Choice]] | None = None,
) -> tuple[list[MissRound], bool]:
    """Plans with no floors, then while the plan measures over ``bound`` (at most ``rounds``
    times) times its lookups alone, raises the floors (:func:`next_floors`) and plans again.

    ``scout()`` (with a finite bound) returns an instance, a plan made without the bound and
    more lookups (a choice per position, None for none): the plan is measured and its lookups
    and the others timed alone before the first plan, so the floors and the charge cap start
    from the lookups the bound would rule out and from cheap ones (the cap corrects a profile
    that overcharges the router, which floors, only ever raising costs, cannot); recorded as
    a round, not deployed.
    With ``rounds`` 0 (no planning again) there is no scout either.

    ``plan(floors)`` plans (and keeps) the deployment and returns its instance and choices;
    ``measure`` times a plan's all-miss overhead, ``measure_alone(instance, items)`` that of each
    one cache ``choice`` at the instance's ``i``-th position for every ``(i, choice)`` of
    ``items`` (timed together: each beside the same plain network). If the last plan still
    measures over the bound, ``fallback()`` (when given) deploys its plan instead (deploying
    nothing holds any bound), measured as one more round. Returns every round and whether the
    deployed plan measured within the bound. With ``bound`` inf the one plan is measured and
    kept.

    ``start`` (default none) are the floors the first plan was made with (floors measured
    for another policy's plan); ``also_time(instance)`` (a choice per position, None for
    none) names more lookups timed alone with the lookups of every plan over the bound, so
    that the next plan may choose among them (Apparate measures every candidate ramp).
    """
    if not bound >= 0:
        raise ValueError(f"the miss bound must be >= 0, got {bound}")
    history: list[MissRound] = []
    timed: dict[str, float] = {}  # every lookup timed alone so far: key -> overhead

    def checked(value: float) -> float:
        if not math.isfinite(value):
            raise ValueError(f"the all-miss overhead measured {value}")
        return value

    def time_alone(instance: Instance, *plans: Sequence[Choice]) -> dict[str, float]:
        """Times alone, in one batch, each lookup of ``plans`` not timed before; returns the
        new ones."""
        items: dict[str, tuple[int, Choice]] = {}
        for choices in plans:
            for i, _, key in _deployed(instance, choices):
                if key not in timed:
                    items.setdefault(key, (i, choices[i]))
        if not items:
            return {}
        values = measure_alone(instance, list(items.values()))
        if len(values) != len(items):
            raise ValueError(f"{len(values)} lookups timed alone for {len(items)} asked")
        new = {key: checked(float(v)) for key, v in zip(items, values)}
        timed.update(new)
        return new

    def planned(instance: Instance, choices: list[Choice], floors: MissFloors) -> MissRound:
        deployed = _deployed(instance, choices)
        return MissRound(
            tuple(p for _, p, _ in deployed),
            tuple(k for _, _, k in deployed),
            tuple(floors.of(k) for _, _, k in deployed),
            instance.miss_s(choices) / instance.full_s,
            checked(measure(instance, choices)),
        )

    floors = MissFloors() if start is None else start
    if scout is not None and math.isfinite(bound) and rounds > 0:
        instance, choices, others = scout()
        tried = planned(instance, choices, floors)
        alone = time_alone(instance, choices, others)
        floors, _ = next_floors(floors, instance, choices, tried.measured, timed, set())
        history.append(dataclasses.replace(tried, alone=alone, scout=True))
    for round_ in range(rounds + 1):
        instance, choices = plan(floors)
        tried = planned(instance, choices, floors)
        if tried.measured <= bound or round_ == rounds:
            history.append(tried)
            if tried.measured <= bound:
                return history, True
            break
        before = set(timed)
        alone = time_alone(instance, choices, *([also_time(instance)] if also_time else []))
        floors, shared = next_floors(floors, instance, choices, tried.measured, timed, before)
        history.append(dataclasses.replace(tried, alone=alone, shared_s=shared))
    if fallback is None:
        return history, False
    instance, choices = fallback()
    tried = planned(instance, choices, floors)
    history.append(tried)
    return history, tried.measured <= bound
