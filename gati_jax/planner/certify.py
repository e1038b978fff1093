"""Certifying a searched plan on tuning requests the search never saw.

A search that picks positions, caches and thresholds among many keeps, of the plans that hold
the bound on its tuning requests, the one whose errors happened to miss them: the bound it
reports is optimistic however strict its confidence (docs/planning.md measures how much).

So the tuning requests are split once, by a seeded draw: the search sees one part, and its
plan is certified on the other, the held-out part. The plan defines a family of plans fixed
before the held-out requests are looked at: every deployed threshold moved the same number
``k`` of steps along its grid of candidate thresholds (positive: stricter; a threshold moved
past the top of its grid closes that cache). The family is walked from the strictest member
(every cache closed) towards looser ones, and the last member before the first that breaks
the bound on the held-out requests is kept. This is fixed-sequence testing: however the
search chose, the chance of keeping a plan whose agreement on new requests is below 1 - eps
is at most 1 - confidence (the one-sided Wilson bound of each test), with no correction for
the number of steps walked.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from gati_jax.planner.instance import Choice, Instance, simulate


def held_out_size(num_requests: int, fraction: float) -> int:
    """How many of ``num_requests`` tuning requests ``fraction`` holds out of the search."""
    return int(round(fraction * num_requests))


def split_requests(
    num_requests: int, fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(searched, held-out) tuning request indices, ascending: ``fraction`` of them held out
    by a seeded draw (the same split for every policy, so their plans are certified alike)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the held-out fraction must lie in (0, 1), got {fraction}")
    held = held_out_size(num_requests, fraction)
    if not 0 < held < num_requests:
        raise ValueError(
            f"{num_requests} tuning requests cannot be split with {fraction:g} held out: "
            "both parts need at least one request"
        )
    order = np.random.default_rng([seed, 29]).permutation(num_requests)
    return np.sort(order[held:]), np.sort(order[:held])


def subset(instance: Instance, index: np.ndarray) -> Instance:
    """The instance restricted to the tuning requests at ``index`` (same options, grids and
    costs: a plan's thresholds mean the same on both)."""
    options = tuple(
        tuple(
            dataclasses.replace(
                o, scores=o.scores[index], errors=o.errors[index], correct=o.correct[index]
            )
            for o in opts
        )
        for opts in instance.options
    )
    return dataclasses.replace(instance, options=options, base_correct=instance.base_correct[index])


def _grid_index(grid: np.ndarray, threshold: float) -> int:
    """Where ``threshold`` sits on its grid: the first level at or above it."""
    return int(np.searchsorted(grid, threshold, side="left"))


def shifted(instance: Instance, choices: Sequence[Choice], k: int) -> list[Choice]:
    """Every deployed threshold of ``choices`` moved ``k`` grid levels (positive: stricter; past
    the grid's top the cache closes; below its bottom, every request hits)."""
    if k == 0:
        return list(choices)
    out: list[Choice] = []
    for i, choice in enumerate(choices):
        if choice is None:
            out.append(None)
            continue
        grid = instance.options[i][choice[0]].grid
        index = _grid_index(grid, choice[1]) + k
        if index >= len(grid):
            out.append(None)
        else:
            out.append((choice[0], float(grid[max(index, 0)])))
    return out


@dataclasses.dataclass(frozen=True)
class Certificate:
    """A searched plan certified on held-out requests: the kept plan and how it was found."""

    choices: list[Choice]
    shift: int  # grid levels the kept plan's thresholds moved (positive: stricter)
    held_out: int  # held-out requests
    errors: int  # the kept plan's disagreements on them
    budget: int  # the most the bound allows on them

    def to_json(self) -> dict:
        """The certificate's figures for plan.json (the plan itself is stored apart)."""
        return {
            "shift": self.shift,
            "held_out": self.held_out,
            "errors": self.errors,
            "budget": self.budget,
        }


def certify(held: Instance, choices: Sequence[Choice]) -> Certificate:
    """The loosest member of ``choices``' shift family that holds the bound on ``held``, every
    stricter member holding it too (see the module docstring)."""
    budget = held.error_budget
    deployed = [(i, c) for i, c in enumerate(choices) if c is not None]
    if not deployed or budget < 0:
        return Certificate(held.empty(), 0, held.num_requests, 0, budget)
    # The strictest member closes every cache; the loosest lets every request hit everywhere.
    strictest = max(
        len(held.options[i][c[0]].grid) - _grid_index(held.options[i][c[0]].grid, c[1])
        for i, c in deployed
    )
    loosest = -max(_grid_index(held.options[i][c[0]].grid, c[1]) for i, c in deployed)
    kept, kept_k, kept_errors = held.empty(), strictest, 0
    for k in range(strictest, loosest - 1, -1):
        member = shifted(held, choices, k)
        errors = simulate(held, member).num_errors
        if errors > budget:
            break
        kept, kept_k, kept_errors = member, k, errors
    return Certificate(kept, kept_k, held.num_requests, kept_errors, budget)
