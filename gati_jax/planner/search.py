"""Plan search: ours (joint) and the comparators, all over the same options and threshold grids.

Every method returns a list of choices (see :mod:`gati_jax.planner.instance`) and never a
plan that breaks the memory budget or the miss bound (what a request that misses every lookup
may pay); ``joint`` and ``exhaustive`` also never break the accuracy bound (the empty plan
always meets all three). Methods:

- ``joint`` (ours): coordinate descent over (option, threshold) per position, each step exact
  over every threshold of the grid given the rest of the plan (one sort per option), so an
  early exit's effect on who reaches later positions is always accounted for. It descends on
  ``cost + lambda * errors`` for a sweep of lambdas, then polishes each result and every
  comparator's plan under the hard bound; the cheapest feasible plan wins, polished by
  two-position moves and by closing each deployed position in turn.
- ``single``: the best plan with one deployed position.
- ``independent``: every position deployed, each threshold tuned alone to precision 1 - eps on
  all tuning requests (how the GATI paper sets thresholds).
- ``greedy``: a simplified Apparate-style (SOSP'24) threshold tuning: every ramp deployed
  and closed, then repeatedly open the ramp with the largest latency gain per accuracy loss
  by a step, halving the step when no move fits the bound, until the step is below one grid
  level. Apparate itself (its placement, ramp budget and step search) is
  gati_jax/planner/apparate.py.
- ``exhaustive``: every combination (small instances only).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from gati_jax.caches.bank import split_key
from gati_jax.planner.instance import Choice, Instance, Outcome, simulate


def _remembered(instance: Instance, name: str, limit: int, key: tuple, compute: Callable):
    """``compute()``, remembered per instance in the memo ``name`` (emptied past ``limit``
    entries). Results are shared: read them, never write them."""
    memo = instance.__dict__.get(name)
    if memo is None or len(memo) > limit:
        memo = {}
        object.__setattr__(instance, name, memo)  # frozen: the memo is not state
    if key not in memo:
        memo[key] = compute()
    return memo[key]


def _simulate(instance: Instance, choices: Sequence[Choice], charge: bool = True) -> Outcome:
    """:func:`simulate`, remembered per instance: a search asks for the same partial plans
    again and again (every sweep rebuilds each position's table from the plans before and
    after it), and simulating was half of a planning run's time."""
    # About 45 kB per outcome of 2,500 requests.
    return _remembered(
        instance,
        "_search_memo",
        2048,
        (tuple(choices), charge),
        lambda: simulate(instance, choices, charge),
    )


class Table(NamedTuple):
    """Every alternative at one position: option index (-1: closed) and threshold, total
    seconds, disagreements, bytes, and seconds it adds under the miss bound."""

    option: np.ndarray
    threshold: np.ndarray
    costs: np.ndarray
    errors: np.ndarray
    nbytes: np.ndarray
    looked: np.ndarray
    # Which alternatives keep the plan within the memory budget and the miss bound, the other
    # positions as the table was built for: built with the table, since a descent asks for
    # the same table's fits again and again (recomputing them was a large part of its time).
    fits: np.ndarray

    def choice(self, k: int) -> Choice:
        """Alternative ``k`` as a choice."""
        return None if self.option[k] < 0 else (int(self.option[k]), float(self.threshold[k]))

    @property
    def choices(self) -> list[Choice]:
        """Every alternative as a choice."""
        return [self.choice(k) for k in range(len(self.option))]


def _position_table(instance: Instance, choices: Sequence[Choice], i: int) -> Table:
    """Every alternative at position ``i`` with the rest fixed, scored exactly; remembered
    per instance like :func:`_simulate` (a descent's last sweep, and every polish, rebuild
    tables it built before: 166,000 tables per planning run, 2 ms each, were a third of it).
    """
    # About 2 kB per table.
    return _remembered(
        instance,
        "_table_memo",
        4096,
        (i, tuple(choices[:i]), tuple(choices[i + 1 :])),
        lambda: _build_table(instance, choices, i),
    )


def _build_table(instance: Instance, choices: Sequence[Choice], i: int) -> Table:
    before = list(choices[:i]) + [None] * (len(choices) - i)
    out_before = _simulate(instance, before, charge=False)
    reach = out_before.exit_index == len(choices)
    pre = sum(
        instance.options[j][c[0]].lookup_s for j, c in enumerate(choices[:i]) if c is not None
    )
    # The outcome of a request that passes position i, from i + 1 on (its lookups included).
    after = _simulate(instance, [None] * (i + 1) + list(choices[i + 1 :]), charge=False)
    after_err = after.errors.astype(np.float64)
    n_reach = int(reach.sum())
    base_cost = (
        float(out_before.cost_s[~reach].sum()) + n_reach * pre + float(after.cost_s[reach].sum())
    )
    base_err = float(out_before.errors[~reach].sum()) + float(after_err[reach].sum())
    option_index, thresholds = [np.full(1, -1)], [np.full(1, np.nan)]
    costs, errs, nbytes = [np.array([base_cost])], [np.array([base_err])], [np.zeros(1)]
    looked = [np.zeros(1)]
    hit_cost = instance.prefix_s[instance.positions[i]]
    others = sum(c is not None for j, c in enumerate(choices) if j != i)
    n = instance.num_requests
    for o, option in enumerate(instance.options[i]):
        # Requests that reach i, in the option's descending score order: a threshold's hits
        # are a prefix of this order, so cumulative sums score every threshold at once.
        order = option.order[reach[option.order]]
        # A hit pays its exit instead of the lookup every reaching request is charged.
        exit_cost = hit_cost + option.exit_cost - option.lookup_s
        d_cost = np.concatenate([[0.0], np.cumsum(exit_cost - after.cost_s[order])])
        d_err = np.concatenate([[0.0], np.cumsum(option.errors[order] - after_err[order])])
        hits = np.searchsorted(-option.scores[order], -option.grid, side="right")
        option_index.append(np.full(len(option.grid), o))
        thresholds.append(np.asarray(option.grid, np.float64))
        costs.append(base_cost + n_reach * option.lookup_s + d_cost[hits])
        errs.append(base_err + d_err[hits])
        nbytes.append(np.full(len(option.grid), float(option.nbytes)))
        looked.append(np.full(len(option.grid), instance.miss_lookup_s(option)))
    # The router's charges, per request: the fixed one for every alternative that leaves
    # something deployed, the per-cache one for each cache it leaves deployed.
    option_index = np.concatenate(option_index)
    charges = n * instance.charge_s((option_index >= 0) + others)
    nbytes, looked = np.concatenate(nbytes), np.concatenate(looked)
    rest = [c if j != i else None for j, c in enumerate(choices)]
    return Table(
        option_index,
        np.concatenate(thresholds),
        np.concatenate(costs) + charges,
        np.concatenate(errs),
        nbytes,
        looked,
        _fits(instance, rest, nbytes, looked, option_index >= 0),
    )


def _fits(
    instance: Instance, rest: Sequence[Choice], nbytes: np.ndarray, looked: np.ndarray, added
) -> np.ndarray:
    """Which alternatives keep the plan ``rest`` within the memory budget and the miss bound,
    each adding ``nbytes`` bytes, ``looked`` seconds of lookups under the miss bound and
    ``added`` deployed caches (arrays of any shapes that broadcast)."""
    fits = instance.memory(rest) + nbytes <= instance.budget_bytes
    if np.isfinite(instance.max_miss_overhead):
        count = sum(c is not None for c in rest)
        miss = instance.miss_lookups_s(rest) + looked + instance.miss_charge_s(count + added)
        fits &= miss <= instance.miss_budget_s * (1 + 1e-12)
    return fits


def _pick(
    instance: Instance, costs: np.ndarray, errors: np.ndarray, fits: np.ndarray
) -> tuple[int, tuple]:
    """Under the hard bound, the flat index of the best alternative and its key: the
    cheapest that fits and meets the bound, else the fitting one with the fewest errors
    (then the cheapest); infeasible alternatives rank after every feasible one."""
    costs, errors, fits = costs.ravel(), errors.ravel(), fits.ravel()
    ok = fits & (errors <= instance.error_budget + 1e-9)
    if ok.any():
        k = int(np.argmin(np.where(ok, costs, np.inf)))
        return k, (0, float(costs[k]), float(errors[k]))
    k = int(np.lexsort((costs, np.where(fits, errors, np.inf)))[0])
    return k, (1, float(errors[k]), float(costs[k]))


def _best(instance: Instance, table: Table, lam: float | None) -> tuple[Choice, tuple]:
    """The table's best alternative that fits the memory budget and miss bound, and its key.

    ``lam`` None: the hard bound (see :func:`_pick`); otherwise the Lagrangian
    cost + lam * errors.
    """
    fits = table.fits
    if lam is not None:
        value = np.where(fits, table.costs + lam * table.errors, np.inf)
        k = int(np.argmin(value))
        return table.choice(k), (float(value[k]),)
    k, key = _pick(instance, table.costs, table.errors, fits)
    return table.choice(k), key


def _key(instance: Instance, choices: Sequence[Choice], lam: float | None) -> tuple:
    out = _simulate(instance, choices)
    cost, err = float(out.cost_s.sum()), float(out.num_errors)
    if lam is not None:
        return (cost + lam * err,)
    return (0, cost, err) if err <= instance.error_budget + 1e-9 else (1, err, cost)


def _descend(
    instance: Instance,
    choices: list[Choice],
    lam: float | None,
    max_sweeps: int = 30,
    frozen: Sequence[int] = (),
) -> list[Choice]:
    """Coordinate descent: at each position (but ``frozen`` ones) take the best alternative
    given the others."""
    choices = list(choices)
    order = [i for i in range(len(choices)) if i not in frozen]
    for sweep in range(max_sweeps):
        changed = False
        for i in order if sweep % 2 == 0 else order[::-1]:
            choice, key = _best(instance, _position_table(instance, choices, i), lam)
            if key < _key(instance, choices, lam):
                choices[i] = choice
                changed = True
        if not changed:
            break
    return choices


def _score(instance: Instance, choices: Sequence[Choice]) -> tuple:
    return _key(instance, choices, None)


# Up to this many positions a pair move tries every partner position; beyond, the partners
# are the deployed positions and the near ones. Every partner costs one exact step per
# alternative, so trying all of them grows with the square of the positions: on a 29-stage
# ResNet-56 (28 positions) pair moves took most of a 20-minute planning run.
PAIR_ALL_PARTNERS_UP_TO = 12
PAIR_NEAR = 2


def _partners(choices: Sequence[Choice], i: int) -> list[int]:
    """The positions a pair move at ``i`` refines: all others on a small instance; else the
    deployed ones (whose hits a move at ``i`` changes) and those within PAIR_NEAR of ``i``
    (the substitutes for it)."""
    others = [j for j in range(len(choices)) if j != i]
    if len(choices) <= PAIR_ALL_PARTNERS_UP_TO:
        return others
    return [j for j in others if choices[j] is not None or abs(j - i) <= PAIR_NEAR]


def _pair_alternatives(instance: Instance, i: int, levels: int) -> list[Choice]:
    """What a pair move tries at its first position: closed, or every option at most
    ``levels`` evenly spaced thresholds of its grid (the exact step at the partner refines)."""
    return [None] + [
        (o, float(t))
        for o, opt in enumerate(instance.options[i])
        for t in opt.grid[:: -(-len(opt.grid) // levels)]
    ]


def _best_pair(
    instance: Instance,
    choices: Sequence[Choice],
    i: int,
    j: int,
    alternatives: Sequence[Choice],
) -> tuple[tuple, Choice, Choice] | None:
    """The best plan that differs from ``choices`` at positions ``i`` and ``j`` only: every
    alternative at ``i`` against every option and grid threshold at ``j``, all scored at once;
    its key (as :func:`_key` with no lambda) and the choices at ``i`` and ``j``. None when no
    pair fits the memory budget and the miss bound.

    Building one position table per alternative at ``i`` made pair moves most of a deep
    network's planning time; here one (alternatives x requests) array per option at ``j``
    scores them all: every request's cost and answer with ``j`` closed, per alternative, and
    cumulative sums in the option's score order give every threshold's hits at once.
    """
    base = list(choices)
    base[i] = base[j] = None
    out = _simulate(instance, base, charge=False)
    n = instance.num_requests
    reach_i, reach_j = out.exit_index > i, out.exit_index > j
    rest = sum(c is not None for c in base)

    def lookups_before(k: int) -> float:
        return sum(
            instance.options[m][c[0]].lookup_s for m, c in enumerate(base[:k]) if c is not None
        )

    # Per alternative at i (rows): its hits, and every request's cost and disagreement with
    # j closed (the router's charges apart).
    options_i = instance.options[i]
    picked = np.array([0 if a is None else a[0] for a in alternatives])
    opened = np.array([a is not None for a in alternatives])
    threshold = np.array([np.inf if a is None else a[1] for a in alternatives])

    def per_row(values: list[float]) -> np.ndarray:
        return np.where(opened, np.asarray(values, np.float64)[picked], 0.0)

    lookup = per_row([o.lookup_s for o in options_i])
    nbytes_i = per_row([o.nbytes for o in options_i])
    looked_i = per_row([instance.miss_lookup_s(o) for o in options_i])
    exit_i = instance.prefix_s[instance.positions[i]] + lookups_before(i)
    exit_i = exit_i + per_row([o.exit_cost for o in options_i])
    hit = reach_i & (np.stack([o.scores for o in options_i])[picked] >= threshold[:, None])
    cost = np.where(hit, exit_i[:, None], out.cost_s + reach_i * lookup[:, None])
    errors = np.where(hit, np.stack([o.errors for o in options_i])[picked], out.errors)
    errors = errors.astype(np.float64)
    if j > i:  # i's hits no longer reach j, and its lookup comes before j's exit
        reach = reach_j & ~hit
        before_j = lookups_before(j) + lookup
    else:
        reach = np.broadcast_to(reach_j, hit.shape)
        before_j = np.full(len(alternatives), lookups_before(j))
    total_cost, total_errors = cost.sum(axis=1), errors.sum(axis=1)
    n_reach = reach.sum(axis=1)
    deployed_i = opened.astype(int)
    # Columns: j closed, then every (option, threshold) at j.
    costs = [total_cost + n * instance.charge_s(rest + deployed_i)]
    errs = [total_errors]
    choices_j: list[Choice] = [None]
    nbytes_j, looked_j, deployed_j = [0.0], [0.0], [0]
    exit_j = instance.prefix_s[instance.positions[j]] + before_j
    zeros = np.zeros((len(alternatives), 1))
    for o, option in enumerate(instance.options[j]):
        # A threshold's hits are a prefix of the score order; only requests that reach j
        # with i closed can reach it at all.
        order = option.order
        reachable = reach_j[order]
        columns = order[reachable]
        everyone = np.searchsorted(-option.scores[order], -option.grid, side="right")
        hits = np.concatenate([[0], np.cumsum(reachable)])[everyone]
        in_reach = reach[:, columns]
        # A hit at j pays its exit there instead of its path with j closed.
        saved = (exit_j + option.exit_cost - option.lookup_s)[:, None] - cost[:, columns]
        d_cost = np.cumsum(np.where(in_reach, saved, 0.0), axis=1)
        d_err = np.where(in_reach, option.errors[columns] - errors[:, columns], 0.0)
        d_err = np.cumsum(d_err, axis=1)
        charge = n * instance.charge_s(rest + deployed_i + 1) + n_reach * option.lookup_s
        costs.append(total_cost[:, None] + charge[:, None] + np.hstack([zeros, d_cost])[:, hits])
        errs.append(total_errors[:, None] + np.hstack([zeros, d_err])[:, hits])
        choices_j += [(o, float(t)) for t in option.grid]
        nbytes_j += [float(option.nbytes)] * len(option.grid)
        looked_j += [instance.miss_lookup_s(option)] * len(option.grid)
        deployed_j += [1] * len(option.grid)
    costs = np.column_stack(costs)
    fits = _fits(
        instance,
        base,
        nbytes_i[:, None] + np.asarray(nbytes_j)[None, :],
        looked_i[:, None] + np.asarray(looked_j)[None, :],
        deployed_i[:, None] + np.asarray(deployed_j)[None, :],
    )
    if not fits.any():
        return None
    k, key = _pick(instance, costs, np.column_stack(errs), fits)
    a, b = np.unravel_index(k, costs.shape)
    return key, alternatives[a], choices_j[b]


def _pair_polish(
    instance: Instance, choices: list[Choice], max_passes: int = 2, levels: int = 12
) -> list[Choice]:
    """Moves two positions at once (an alternative at one, the exact best at the other),
    which escapes the points where no single position can improve alone; each pair of
    positions takes its best move, confirmed by simulating the plan."""
    choices = list(choices)
    current = _score(instance, choices)
    for _ in range(max_passes):
        improved = False
        for i in range(len(choices)):
            alternatives = _pair_alternatives(instance, i, levels)
            for j in _partners(choices, i):
                found = _best_pair(instance, choices, i, j, alternatives)
                if found is None or not found[0] < current:
                    continue
                trial = list(choices)
                trial[i], trial[j] = found[1], found[2]
                # The arrays sum in another order than simulate: a tie may read as a gain.
                key = _score(instance, trial)
                if key < current and instance.fits(trial):
                    choices, current, improved = trial, key, True
        if not improved:
            break
    return choices


def joint(
    instance: Instance, starts: Sequence[Sequence[Choice]] = (), lambdas: int = 16
) -> list[Choice]:
    """Ours: Lagrangian coordinate descent over a sweep of lambdas, polished under the bound.

    Further starts: the best one-position plan at every position, and ``starts`` (the
    comparators' plans). Every start is polished by single moves, and the best plan then by
    pair moves; the cheapest feasible plan found wins, so it is never worse than a start.
    """
    # lambda is seconds per disagreement: from 'errors are nearly free' to 'never err'.
    scale = instance.full_s
    candidates = [instance.empty()]
    for lam in np.geomspace(1e-2 * scale, 1e3 * scale, lambdas):
        relaxed = _descend(instance, instance.empty(), float(lam))
        candidates.append(_descend(instance, relaxed, None))
    for i in range(len(instance.positions)):
        start = instance.empty()
        start[i] = _best(instance, _position_table(instance, start, i), None)[0]
        candidates.append(_descend(instance, start, None))
    candidates.extend(_descend(instance, list(s), None) for s in starts if instance.fits(s))
    best = min(candidates, key=lambda c: _score(instance, c))
    return _drop_polish(instance, _pair_polish(instance, best))


def _drop_polish(instance: Instance, choices: list[Choice], max_passes: int = 2) -> list[Choice]:
    """Closes each deployed position in turn, descends over the others with it closed, then
    over all: escapes optima that only a move at three positions leaves (a hypothesis
    instance: ours kept positions 0, 2 and 3 at 4.2% above exhaustive search's 0 and 4)."""
    best, best_key = list(choices), _score(instance, choices)
    for _ in range(max_passes):
        improved = False
        for i in [i for i, c in enumerate(best) if c is not None]:
            trial = list(best)
            trial[i] = None
            trial = _descend(instance, _descend(instance, trial, None, frozen=(i,)), None)
            key = _score(instance, trial)
            if key < best_key:
                best, best_key, improved = trial, key, True
        if not improved:
            break
    return best


def single(instance: Instance) -> list[Choice]:
    """The best plan that deploys one position (exact over options and thresholds)."""
    best, best_key = instance.empty(), _score(instance, instance.empty())
    for i in range(len(instance.positions)):
        choice, key = _best(instance, _position_table(instance, instance.empty(), i), None)
        if key < best_key:
            best, best_key = instance.empty(), key
            best[i] = choice
    return best


def _individual_threshold(option, target: float) -> tuple[float, float]:
    """The lowest grid threshold whose hits on all requests reach ``target`` precision."""
    order = np.argsort(-option.scores, kind="stable")
    agree = np.cumsum(~option.errors[order])
    hits = np.searchsorted(-option.scores[order], -option.grid, side="right")
    n = len(option.scores)
    ok = [(t, h / n) for t, h in zip(option.grid, hits) if h and agree[h - 1] / h >= target]
    return min(ok, key=lambda x: x[0]) if ok else (float("inf"), 0.0)


def independent(instance: Instance) -> list[Choice]:
    """Every position, each threshold tuned alone; drops the least useful caches to fit.

    Per position the option with the highest individual hit rate is kept; a cache's value is
    its hit rate times the stages it saves, and while the plan is over the memory budget the
    cache with the least value per byte goes, then while it breaks the miss bound the one
    with the least value per second of lookup.
    """
    target = 1.0 - instance.eps
    choices: list[Choice] = []
    value = []
    for i, options in enumerate(instance.options):
        picks = [(o, *_individual_threshold(opt, target)) for o, opt in enumerate(options)]
        picks = [p for p in picks if np.isfinite(p[1])]
        if not picks:
            choices.append(None)
            value.append(0.0)
            continue
        o, t, rate = max(picks, key=lambda p: p[2])
        choices.append((o, float(t)))
        value.append(rate * (instance.full_s - instance.prefix_s[instance.positions[i]]))
    while not instance.fits(choices):
        over_memory = instance.memory(choices) > instance.budget_bytes

        def worth(i: int) -> float:
            option = instance.options[i][choices[i][0]]
            spent = option.nbytes if over_memory else instance.miss_lookup_s(option)
            return value[i] / max(spent, 1e-12)

        choices[min((i for i, c in enumerate(choices) if c is not None), key=worth)] = None
    return choices


def greedy(instance: Instance, ramps: Sequence[Choice] | None = None) -> list[Choice]:
    """A simplified Apparate-style greedy threshold search over deployed, initially closed,
    ramps (the faithful one: gati_jax/planner/apparate.py).

    ``ramps`` fixes which option serves at each position (default: ``independent``'s).
    Levels index each option's grid from the strictest threshold (level 1) to the most
    permissive; level 0 is closed (threshold +inf, the lookup still runs, as a deployed ramp).
    """
    ramps = list(ramps) if ramps is not None else independent(instance)
    deployed = [i for i, r in enumerate(ramps) if r is not None]
    grids = {i: instance.options[i][ramps[i][0]].grid[::-1] for i in deployed}
    levels = {i: 0 for i in deployed}
    budget = instance.error_budget

    def plan(lv):
        return [
            (ramps[i][0], float(grids[i][lv[i] - 1]) if lv[i] else float("inf"))
            if i in lv
            else None
            for i in range(len(ramps))
        ]

    current = simulate(instance, plan(levels))
    cost, err = float(current.cost_s.sum()), current.num_errors
    step = max(1, max((len(g) for g in grids.values()), default=1) // 2)
    while step >= 1 and deployed:
        best = None
        for i in deployed:
            trial = dict(levels)
            trial[i] = min(levels[i] + step, len(grids[i]))
            if trial[i] == levels[i]:
                continue
            out = simulate(instance, plan(trial))
            new_cost, new_err = float(out.cost_s.sum()), out.num_errors
            gain, loss = cost - new_cost, new_err - err
            if new_err > budget or gain <= 0:
                continue
            ratio = gain / loss if loss > 0 else float("inf")
            if best is None or (ratio, gain) > best[0]:
                best = ((ratio, gain), trial, new_cost, new_err)
        if best is None:
            step //= 2
            continue
        _, levels, cost, err = best
    return plan(levels)


def exhaustive(instance: Instance, max_nodes: int = 5_000_000) -> list[Choice]:
    """The exact optimum by depth-first search over every combination (small instances)."""
    alternatives = [
        [None] + [(o, float(t)) for o, opt in enumerate(options) for t in opt.grid]
        for options in instance.options
    ]
    nodes = float(np.prod([len(a) for a in alternatives], dtype=np.float64))
    if nodes > max_nodes:
        raise ValueError(
            f"exhaustive search over {nodes:.0f} plans exceeds {max_nodes}; use "
            "fewer positions or a coarser grid"
        )
    budget = instance.error_budget
    n = instance.num_requests
    best = {"cost": float("inf"), "err": float("inf"), "plan": instance.empty()}

    miss_budget = instance.miss_budget_s * (1 + 1e-12)

    def visit(i, remaining, cost, err, lookups, memory, plan, missed=0.0):
        if i == len(alternatives):
            total = cost + remaining.sum() * (instance.full_s + lookups)
            total += n * float(instance.charge_s(sum(c is not None for c in plan)))
            if (total, err) < (best["cost"], best["err"]):
                best.update(cost=total, err=err, plan=list(plan))
            return
        for choice in alternatives[i]:
            if choice is None:
                visit(i + 1, remaining, cost, err, lookups, memory, plan + [None], missed)
                continue
            option = instance.options[i][choice[0]]
            if memory + option.nbytes > instance.budget_bytes:
                continue
            # The router's charges only grow with more caches: a plan over the bound here
            # stays over it.
            now_missed = missed + instance.miss_lookup_s(option)
            if now_missed + instance.miss_charge_s(len(plan) - plan.count(None) + 1) > miss_budget:
                continue
            hit = remaining & (option.scores >= choice[1])
            new_err = err + int(option.errors[hit].sum())
            if new_err > budget:
                continue
            new_cost = cost + hit.sum() * (
                instance.prefix_s[instance.positions[i]] + lookups + option.exit_cost
            )
            visit(
                i + 1,
                remaining & ~hit,
                new_cost,
                new_err,
                lookups + option.lookup_s,
                memory + option.nbytes,
                plan + [choice],
                now_missed,
            )

    visit(0, np.ones(n, bool), 0.0, 0, 0.0, 0, [])
    return best["plan"]


METHODS: dict[str, Callable[[Instance], list[Choice]]] = {
    "single": single,
    "independent": independent,
    "greedy": greedy,
    "exhaustive": exhaustive,
}


# The selector kind whose score is a monotone function of what each threshold policy scores.
THRESHOLD_KIND = {"confidence": "softmax", "apparate": "softmax", "entropy": "entropy"}


def translate(
    source: Instance, choices: Sequence[Choice], target: Instance, kind: str
) -> list[Choice] | None:
    """A threshold policy's plan as a plan of ``target`` (gati's instance) that deploys the same
    predictors with selector kind ``kind``, each threshold set so that the same tuning requests
    hit; None where ``target`` lacks one of them. Seeding gati's search with it puts what the
    threshold policy found inside gati's search, so gati never plans worse than a threshold
    over the same predictors (ties at a threshold may add hits: the search re-checks the bound)."""
    if tuple(source.positions) != tuple(target.positions):
        return None
    by_predictor = [
        {split_key(o.key): index for index, o in enumerate(options)} for options in target.options
    ]
    out: list[Choice] = []
    for i, choice in enumerate(choices):
        if choice is None:
            out.append(None)
            continue
        option = source.options[i][choice[0]]
        found = split_key(option.key)
        index = None if found is None else by_predictor[i].get((found[0], kind))
        if index is None:
            return None
        hits = option.scores >= choice[1]
        scores = target.options[i][index].scores
        threshold = float(scores[hits].min()) if hits.any() else float(np.inf)
        out.append((index, threshold))
    return out


def plan_all(
    instance: Instance,
    methods: Sequence[str] = ("single", "independent", "greedy"),
) -> dict[str, list[Choice]]:
    """Runs the comparators, then ours seeded with their plans; returns every method's plan."""
    plans = {name: METHODS[name](instance) for name in methods}
    plans["joint"] = joint(instance, starts=list(plans.values()))
    return plans
