"""``apparate-online``: Apparate adapting while it serves, with the feedback budget of
``gati-online``.

Apparate keeps tuning as it serves: it re-tunes its thresholds on a sliding window of recent
requests at start-up, after an accuracy violation and periodically, and every so often
removes ramps whose utility is not positive and tries a neighbouring position. Here it learns
from exactly what ``gati-online`` learns from: a uniform ``online.audit_fraction`` of the
requests is run again through the full network (with every candidate ramp computed on the
way), as background work in the serving loop's idle time, so a request that arrives during
an audit waits for it, as with ``gati-online``'s audits.

Two parts:

- :class:`ApparateTuner` (host side, numpy): the window of audited requests (every candidate
  ramp's score and whether it agreed with the base answer, and whether the served answer
  did), the triggers, and the tuning and ramp adjustment, which run Apparate's step search
  (gati_jax/planner/apparate.py) on the window one round per background chunk;
- :class:`ApparateOnline`: the serving adapter the benchmark serves beside ``gati-online``
  (``route`` for the serving loop, and its ``background``). It serves with a router of the
  offline plan's ramps alone, as static Apparate does (compiled at warm-up); thresholds are
  arguments, so re-tuning never recompiles. After a ramp change a router holding every
  candidate ramp, each lookup gated by a flag in the ramp's parameters (an inactive ramp's
  lookup is skipped), serves any set at once, without compiling. The gated router cost a
  request that exits nowhere about twice what the active ramps' own router does (a branch and
  an exit check at every candidate position), and no ramp changed on whole streams; compiling
  the new set's router while serving is what a ramp change cannot afford: a thread compiling
  the ResNet-56's three-ramp router took the CPU from every policy served meanwhile.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import time
from collections.abc import Generator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax import lax

from gati_jax import data
from gati_jax.caches.bank import CacheBank
from gati_jax.caches.variants import Predictor
from gati_jax.inference import BaseModel
from gati_jax.input_checks import check_images
from gati_jax.planner.apparate import (
    ONLINE_MIN_STEP,
    ONLINE_STARTS,
    RampSet,
    Search,
    threshold_of,
    tune_steps,
    utilities,
)
from gati_jax.planner.instance import max_errors
from gati_jax.runtime.deployment import Deployment
from gati_jax.runtime.policies import CacheHead, Decide, policy_builder
from gati_jax.runtime.router import Router, RouteResult
from gati_jax.runtime.segments import segment_count

NAME = "apparate-online"


@dataclasses.dataclass(frozen=True)
class ApparateSettings:
    """What online Apparate reads from the config (``online`` and ``planner.eps``); no
    defaults of its own: build it with :meth:`from_config`. Counts are audited requests;
    ``confidence``: the Wilson confidence a window must certify eps at (gati-online's
    calibration confidence)."""

    audit_fraction: float
    audit_group: int
    audit_segments: int
    max_lag: int
    window: int
    min_window: int
    check: int
    retune_every: int
    ramp_every: int
    eps: float
    confidence: float
    seed: int

    def __post_init__(self) -> None:
        if not 0 <= self.audit_fraction <= 1:
            raise ValueError(f"audit_fraction must be in [0, 1], got {self.audit_fraction}")
        if self.audit_segments < 0:
            raise ValueError(
                f"audit_segments must be >= 0 (0: from the stages), got {self.audit_segments}"
            )
        for name in (
            "audit_group",
            "max_lag",
            "window",
            "min_window",
            "check",
            "retune_every",
            "ramp_every",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.min_window > self.window:
            raise ValueError(f"min_window ({self.min_window}) exceeds the window ({self.window})")

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> ApparateSettings:
        """From ``config.online`` (the audit budget is gati-online's) and ``planner.eps``."""
        o = config.online
        return cls(
            float(o.audit_fraction),
            int(o.audit_group),
            int(o.audit_segments),
            int(o.max_lag),
            int(o.apparate_window),
            int(o.apparate_min_window),
            int(o.apparate_check),
            int(o.apparate_retune_every),
            int(o.apparate_ramp_every),
            float(config.planner.eps),
            float(o.calibration_confidence),
            int(o.seed),
        )


@dataclasses.dataclass(frozen=True)
class Tuning:
    """One finished tuning: why, after how many audited requests, the ramps (indices into
    the candidate ramps) and thresholds it left, and its window's predicted mean cost and
    disagreements."""

    reason: str
    audited: int
    active: tuple[int, ...]
    thresholds: tuple[float, ...]
    window_cost_s: float
    window_errors: int


class ApparateTuner:
    """Online Apparate's decisions over the candidate ramps of a :class:`RampSet`.

    ``record`` adds one audited request; a *job* (a tuning or a ramp adjustment) starts when
    one is due and none runs, and ``step`` runs one round of it. A tuning must meet eps on
    its window at the Wilson ``confidence``, so it needs a window large enough to certify
    that with no disagreement (:attr:`tunable_after`, at least ``min_window``: 163 audited
    requests for eps 0.01 at 0.9); until then the offline plan serves, and only the guard
    acts.

    - The guard, every ``check`` audited requests: the served answers of the last ``check``
      are judged; agreeing less than 1 - eps is a violation. The first since the last ramp
      adjustment asks for a tuning ("violation"); a repeated one closes at once every ramp
      whose own served answers there agreed less than that ("closed", Apparate's guard; a
      job in progress is dropped).
    - Once the window can certify: the first tuning ("start"); every ``ramp_every``, a ramp
      adjustment ("ramps"); ``retune_every`` after the last tuning, a tuning ("periodic").
    """

    def __init__(self, ramps: RampSet, thresholds: Sequence[float], settings: ApparateSettings):
        if len(thresholds) != len(ramps.positions):
            raise ValueError(f"{len(thresholds)} thresholds for {len(ramps.positions)} ramps")
        self.ramps, self.settings = ramps, settings
        count, w = len(ramps.positions), settings.window
        self._thresholds = np.asarray(thresholds, np.float64).copy()
        self.active = tuple(int(j) for j in np.flatnonzero(np.isfinite(self._thresholds)))
        self._scores = np.zeros((w, count))
        self._errors = np.zeros((w, count), bool)
        self._served_ok = np.zeros(w, bool)
        self._served_by = np.full(w, -1)  # the ramp that served it (-1: the network)
        self._violations = 0
        self.audited = 0
        self._since_check = self._since_tuning = self._since_ramps = 0
        self._wanted: str | None = None
        self._job: tuple[str, Generator] | None = None
        self._tuned = False
        self.tunings: list[Tuning] = []
        # The fewest audited requests that certify eps with no disagreement (None: more than
        # the window holds, so it never tunes).
        self.tunable_after = next(
            (
                n
                for n in range(max(settings.min_window, 1), w + 1)
                if max_errors(n, settings.eps, settings.confidence) >= 0
            ),
            None,
        )

    # ---- what serving reads ---------------------------------------------------------------
    def thresholds(self) -> np.ndarray:
        """Per candidate ramp, its threshold now (+inf: inactive or closed)."""
        return self._thresholds.copy()

    # ---- evidence -------------------------------------------------------------------------
    def record(
        self, scores: np.ndarray, errors: np.ndarray, served_agrees: bool, served_by: int = -1
    ) -> None:
        """One audited request: every candidate ramp's score and whether its answer differed
        from the base answer, whether the served answer agreed, and which ramp served it
        (its index; -1: the whole network)."""
        s = self.settings
        slot = self.audited % s.window
        self._scores[slot], self._errors[slot] = scores, errors
        self._served_ok[slot], self._served_by[slot] = served_agrees, served_by
        self.audited += 1
        self._since_check += 1
        self._since_tuning += 1
        self._since_ramps += 1
        if self._since_check >= s.check and self.audited >= s.check:
            self._since_check = 0
            self._judge((self.audited - np.arange(1, s.check + 1)) % s.window)
        if self.tunable_after is None or self.audited < self.tunable_after:
            return
        if not self._tuned and self._job is None:
            self._want("start")
        if self._since_ramps >= s.ramp_every:
            self._want("ramps")
        if self._since_tuning >= s.retune_every:
            self._want("periodic")

    _PRIORITY = ("start", "violation", "ramps", "periodic")

    def _want(self, reason: str) -> None:
        """Asks for a job, unless one that comes first is asked for already (or the window
        cannot certify the bound yet)."""
        if self.tunable_after is None or self.audited < self.tunable_after:
            return
        if self._wanted is None or (
            self._PRIORITY.index(reason) < self._PRIORITY.index(self._wanted)
        ):
            self._wanted = reason

    def _judge(self, block: np.ndarray) -> None:
        """Apparate's accuracy check on the served answers of the audited ``block``."""
        ok, served_by = self._served_ok[block], self._served_by[block]
        floor = 1.0 - self.settings.eps
        if ok.mean() >= floor:
            return
        self._violations += 1
        if self._violations < 2:
            self._want("violation")
            return
        failing = [
            j for j in self.active if np.any(served_by == j) and ok[served_by == j].mean() < floor
        ]
        if not failing:
            self._want("violation")
            return
        thresholds = self._thresholds.copy()
        thresholds[failing] = np.inf
        self._job = None  # a tuning on the evidence before this one must not undo it
        self._thresholds = thresholds
        self.tunings.append(
            Tuning(
                "closed",
                self.audited,
                self.active,
                tuple(float(t) for t in thresholds),
                float("nan"),
                0,
            )
        )

    def window(self) -> tuple[np.ndarray, np.ndarray]:
        """The audited requests held: (scores, errors), oldest first."""
        held = min(self.audited, self.settings.window)
        order = (self.audited - held + np.arange(held)) % self.settings.window
        return self._scores[order], self._errors[order]

    # ---- jobs -----------------------------------------------------------------------------
    def pending(self) -> bool:
        """Whether a job runs or is due."""
        return self._job is not None or self._wanted is not None

    def step(self) -> bool:
        """Runs one round of the job in progress (starting the due one first); returns
        whether a job finished (and its thresholds and ramps now serve)."""
        if self._job is None:
            if self._wanted is None:
                return False
            reason, self._wanted = self._wanted, None
            self._since_tuning = 0
            if reason == "ramps":
                self._since_ramps = self._violations = 0
            scores, errors = self.window()
            instance = self.ramps.instance(
                scores, errors, self.settings.eps, self.settings.confidence
            )
            work = (
                self._adjust(instance) if reason == "ramps" else self._retune(instance, self.active)
            )
            self._job = (reason, work)
        reason, work = self._job
        try:
            next(work)
            return False
        except StopIteration as done:
            active, found = done.value
        self._job = None
        self._apply(reason, active, found)
        return True

    def _retune(self, instance, active: Sequence[int]) -> Generator[None, None, tuple]:
        found = yield from self._search(instance, active)
        return tuple(active), found

    def _search(self, instance, active: Sequence[int]) -> Generator[None, None, Search | None]:
        if not active:
            return None
        return (
            yield from tune_steps(
                instance, {j: 0 for j in sorted(active)}, ONLINE_STARTS, ONLINE_MIN_STEP
            )
        )

    def _adjust(self, instance) -> Generator[None, None, tuple]:
        """Apparate's ramp adjustment on the window: thresholds searched again for the ramps
        now; ramps whose utility is not positive are dropped and a deeper neighbour tried
        (the requests got harder), or with every ramp paying off an earlier one is added (or
        put in place of the least useful one when the ramp budget is full); the cheapest of
        these on the window, thresholds searched for each, serves (fewer ramps on a tie)."""
        count, budget = len(self.ramps.positions), self.ramps.ramp_budget
        active = tuple(sorted(self.active))
        current = yield from self._search(instance, active)
        worth = utilities(instance, current.choices) if current is not None else {}
        negative = [j for j in active if worth[j] <= 0]
        kept = tuple(j for j in active if j not in negative)
        proposals: list[tuple[int, ...]] = []
        if negative:
            proposals.append(kept)
            left, right = max(active) + 1, count - 1
            if left <= right and len(kept) < budget:
                proposals.append(tuple(sorted({*kept, (left + right) // 2})))
        else:
            earlier = (min(active) - 1) // 2 if active and min(active) >= 1 else None
            if not active and count:
                earlier = (count - 1) // 2
            if earlier is not None and len(active) < budget:
                proposals.append(tuple(sorted({*active, earlier})))
            elif earlier is not None and active:
                weakest = min(active, key=lambda j: (worth[j], j))
                proposals.append(tuple(sorted({*(set(active) - {weakest}), earlier})))
        best = (active, current)
        for proposal in dict.fromkeys(proposals):
            closed = [None] * count
            for j in proposal:
                closed[j] = (0, float("inf"))
            if proposal == active or not instance.fits(closed):
                continue
            found = yield from self._search(instance, proposal)
            if self._cheaper(instance, (proposal, found), best):
                best = (proposal, found)
        return best

    @staticmethod
    def _cost(instance, found: Search | None) -> float:
        if found is None:  # nothing deployed: every request runs the plain network
            return float(instance.full_s)
        return found.mean_cost_s

    def _cheaper(self, instance, a: tuple, b: tuple) -> bool:
        return (self._cost(instance, a[1]), len(a[0])) < (self._cost(instance, b[1]), len(b[0]))

    def _apply(self, reason: str, active: tuple[int, ...], found: Search | None) -> None:
        thresholds = np.full(len(self.ramps.positions), np.inf)
        if found is not None:
            for j, opening in zip(sorted(active), found.openings):
                thresholds[j] = threshold_of(opening)
        # One assignment each, between groups.
        self._thresholds, self.active = thresholds, tuple(sorted(active))
        self._tuned = True
        self.tunings.append(
            Tuning(
                reason,
                self.audited,
                self.active,
                tuple(float(t) for t in thresholds),
                float(found.mean_cost_s) if found is not None else float(self.ramps.prefix_s[-1]),
                int(found.errors) if found is not None else 0,
            )
        )

    def drain(self) -> None:
        """Runs every due job to its end (tests)."""
        while self.pending():
            self.step()


# ---- the compiled side ----------------------------------------------------------------------


def gated_decide(head: CacheHead) -> Decide:
    """Apparate's ramp decision (max softmax >= threshold) whose lookup runs only while the
    ramp is active (``params["active"] > 0``): an inactive ramp costs a branch, not a lookup.
    """
    decide = policy_builder("apparate")(head)

    def gated(params, threshold, x, base_answer):
        n = x.shape[0]

        def lookup(_):
            answer, hit = decide(params, threshold, x, base_answer)
            return answer.astype(jnp.int32), hit

        def skip(_):
            return jnp.zeros(n, jnp.int32), jnp.zeros(n, bool)

        return lax.cond(params["active"] > 0, lookup, skip, None)

    return gated


def ramp_params(predictors: Sequence[Any], active: Sequence[int]) -> tuple[dict, ...]:
    """Each candidate ramp's parameters with its activity flag (1.0 for the ``active``
    indices)."""
    on = set(active)
    return tuple(
        {"predictor": p, "active": np.asarray(1.0 if j in on else 0.0, np.float32)}
        for j, p in enumerate(predictors)
    )


def ramp_deployment(
    bank: CacheBank, ramps: RampSet, positions: Sequence[int], thresholds: Sequence[float]
) -> Deployment:
    """The deployment online Apparate starts from: every candidate ramp of ``ramps`` at its
    position, those of the offline plan (``positions``, ``thresholds``) active."""
    by_key = {c.key: c for c in bank.candidates}
    missing = [k for k in ramps.keys if k not in by_key]
    if missing:
        raise ValueError(f"the cache bank lacks the candidate ramps {missing}")
    stray = [p for p in positions if p not in ramps.positions]
    if stray:
        raise ValueError(f"planned positions {stray} are not candidate ramps {ramps.positions}")
    chosen = [by_key[k] for k in ramps.keys]
    heads = tuple(
        CacheHead(c.spec, bank.num_classes, c.pool_factor, bank.selector_hidden) for c in chosen
    )
    planned = dict(zip(positions, thresholds))
    active = [j for j, p in enumerate(ramps.positions) if p in planned]
    initial = np.asarray([planned.get(p, np.inf) for p in ramps.positions], np.float32)
    params = jax.device_put(ramp_params([c.params["predictor"] for c in chosen], active))
    return Deployment("apparate", tuple(ramps.positions), heads, params, initial)


@dataclasses.dataclass(eq=False)
class RampAudit:
    """The full network in ``segments`` programs of consecutive stages, computing on the way
    every candidate ramp's answer and score: an audit that can pause between segments, as
    gati-online's (runtime/segments.py)."""

    model: BaseModel
    positions: tuple[int, ...]
    heads: tuple[CacheHead, ...]
    segments: int = 1
    trace_count: int = 0

    def __post_init__(self):
        network = self.model.network
        stages = network.num_stages
        if not 1 <= self.segments <= stages:
            raise ValueError(f"segments must be in [1, {stages}], got {self.segments}")
        edges = np.linspace(0, stages, self.segments + 1).round().astype(int)
        self.bounds = tuple((int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]))
        variables = self.model.variables
        mean, std = np.asarray(self.model.mean), np.asarray(self.model.std)
        predictors = tuple(
            Predictor(h.spec, h.num_classes, h.pool_factor, h.pooling) for h in self.heads
        )
        at = {p: j for j, p in enumerate(self.positions)}
        last = len(self.bounds) - 1

        def segment(k, params, x):
            self.trace_count += 1  # runs only while tracing
            if k == 0:
                x = data.normalize(x, mean, std)
            outs = []
            for index in range(*self.bounds[k]):
                x = network.apply_stage(variables, index, x)
                if index in at:
                    j = at[index]
                    log_probs = jax.nn.log_softmax(
                        predictors[j].apply({"params": params[j]["predictor"]}, x)
                    )
                    outs.append(
                        (
                            jnp.argmax(log_probs, -1).astype(jnp.int32),
                            jnp.exp(jnp.max(log_probs, -1)),
                        )
                    )
            return (jnp.argmax(x, -1).astype(jnp.int32) if k == last else x), tuple(outs)

        self._programs = tuple(
            jax.jit(functools.partial(segment, k)) for k in range(len(self.bounds))
        )

    def run(
        self, params: tuple[Any, ...], images: np.ndarray
    ) -> Generator[None, None, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """A generator running one segment per ``next``; returns the base answers (n,) and
        every candidate ramp's answers and scores (n, ramps)."""
        x = check_images(images, self.model.network.input_shape)
        answers, scores = [], []
        for k, program in enumerate(self._programs):
            x, outs = jax.block_until_ready(program(params, x))
            answers += [np.asarray(a) for a, _ in outs]
            scores += [np.asarray(s) for _, s in outs]
            if k < len(self._programs) - 1:
                yield
        n = len(images)
        stack = lambda parts, dtype: np.stack(parts, 1) if parts else np.zeros((n, 0), dtype)
        return np.asarray(x), stack(answers, np.int32), stack(scores, np.float64)


class ApparateOnline:
    """Serves Apparate's ramps while :class:`ApparateTuner` re-tunes them on audited requests
    (``route`` is the serving loop's ``route_group``; the adapter is also its
    ``background``). ``deployment``: from :func:`ramp_deployment`."""

    def __init__(
        self,
        model: BaseModel,
        deployment: Deployment,
        ramps: RampSet,
        settings: ApparateSettings,
        max_group: int = 8,
    ):
        if tuple(deployment.positions) != tuple(ramps.positions):
            raise ValueError("the deployment must hold every candidate ramp")
        self.model, self.ramps, self.settings = model, ramps, settings
        self.heads = deployment.heads
        self.last_stage = model.network.num_stages - 1
        self.router = self.tapped_router(max_group)
        # Active set (candidate indices) -> a compiled router of those ramps alone: the plan's
        # set, compiled at warm-up; it stays across resets, as the programs do.
        self._fast: dict[tuple[int, ...], Router] = {}
        segments = segment_count(model.network.num_stages, settings.audit_segments)
        self.audit = RampAudit(model, tuple(ramps.positions), self.heads, segments)
        self._predictors = tuple(p["predictor"] for p in deployment.params)
        self._initial = np.asarray(deployment.thresholds, np.float64).copy()
        self.reset()

    def tapped_router(self, max_group: int = 1) -> Router:
        """A new router running the costlier program this adapter serves with, the gated one
        of every candidate ramp (named as OnlineLearner's, for the benchmark's miss overhead:
        the worst a request may pay, as gati-online's tapped program)."""
        return Router(
            self.model, self.ramps.positions, tuple(gated_decide(h) for h in self.heads), max_group
        )

    def reset(self) -> None:
        """Back to the offline plan with an empty window (the compiled programs stay)."""
        self.tuner = ApparateTuner(self.ramps, self._initial, self.settings)
        self._active = self.tuner.active
        self.params = jax.device_put(ramp_params(self._predictors, self._active))
        self.router.prepare(self.params)
        self._fast_params = self._subset(self.params, self._active)
        self.rng = np.random.default_rng([self.settings.seed, 2])
        self._audits: collections.deque = collections.deque()
        self._audit_run: tuple[list, Generator] | None = None
        self._oldest_pending: int | None = None
        self.served = 0
        self.audited = 0
        self._served_at: list[int] = []  # requests served when each audit was recorded
        self.chunk_seconds: list[float] = []
        self.chunk_kinds: list[str] = []

    @property
    def exit_positions(self) -> tuple[int, ...]:
        """Where a request may exit before the last stage: at its candidate ramps."""
        return tuple(int(p) for p in self.ramps.positions)

    def warm_up(self) -> None:
        """Compiles every program serving and auditing run (each group-size bucket, each
        audit size), changing no state."""
        network = self.model.network
        self._compile_buckets(self.router, self.params, self.tuner.thresholds())
        if self._active not in self._fast:
            self._compile_fast(self._active)
        for size in range(1, min(self.settings.audit_group, self.router.max_group) + 1):
            steps = self.audit.run(self.params, np.zeros((size, *network.input_shape), np.uint8))
            for _ in steps:
                pass

    # ---- serving side -----------------------------------------------------------------------
    def route(self, images: np.ndarray, index: np.ndarray | None = None) -> RouteResult:
        """Serves one group; a uniform ``audit_fraction`` of its requests is queued for an
        audit (none without a candidate ramp: there is nothing to tune)."""
        del index
        active, thresholds = self._active, self.tuner.thresholds()
        fast = self._fast.get(active)
        if fast is not None:
            result = fast.route(self._fast_params, thresholds[list(active)], images)
        else:  # a set changed while serving: no program of its own
            result = self.router.route(self.params, thresholds, images)
        fraction = self.settings.audit_fraction if self.ramps.positions else 0.0
        for i in np.flatnonzero(self.rng.random(len(images)) < fraction):
            exit_stage = int(result.exit_stage[i])
            served_by = (
                self.ramps.positions.index(exit_stage) if exit_stage in self.ramps.positions else -1
            )
            self._audits.append((np.asarray(images[i]), int(result.answer[i]), served_by))
            if self._oldest_pending is None:
                self._oldest_pending = self.served
        self.served += len(result.answer)
        return result

    # ---- background side --------------------------------------------------------------------
    def pending(self, idle: bool = False) -> bool:
        """Whether background work is waiting (``idle``: as the learner's; nothing differs)."""
        return bool(self._audits) or self._audit_run is not None or self.tuner.pending()

    def overdue(self) -> bool:
        """Whether pending work has waited more than ``max_lag`` requests."""
        return (
            self.pending()
            and self._oldest_pending is not None
            and self.served - self._oldest_pending > self.settings.max_lag
        )

    def run_chunk(self) -> None:
        """One bounded piece of background work: a segment of an audit, or a round of the
        tuner's job."""
        started = time.perf_counter()
        if self._audit_run is not None or self._audits:
            self._audit_step()
            kind = "audit"
        elif self.tuner.pending():
            if self.tuner.step():
                self._swap()
            kind = "tune"
        else:
            kind = "idle"
        self._oldest_pending = self.served if self.pending() else None
        self.chunk_seconds.append(time.perf_counter() - started)
        self.chunk_kinds.append(kind)

    def _audit_step(self) -> None:
        if self._audit_run is None:
            batch = [
                self._audits.popleft()
                for _ in range(
                    min(len(self._audits), self.settings.audit_group, self.router.max_group)
                )
            ]
            images = np.stack([b[0] for b in batch])
            self._audit_run = (batch, self.audit.run(self.params, images))
        batch, steps = self._audit_run
        try:
            next(steps)
            return
        except StopIteration as done:
            base, answers, scores = done.value
        self._audit_run = None
        for k, (_, served, served_by) in enumerate(batch):
            self.tuner.record(scores[k], answers[k] != base[k], served == base[k], served_by)
            self._served_at.append(self.served)
        self.audited += len(batch)

    def _swap(self) -> None:
        """After a job: new activity flags to the device, in the background (thresholds are
        read per group)."""
        if self.tuner.active != self._active:
            active = self.tuner.active
            params = jax.device_put(ramp_params(self._predictors, active))
            self.router.prepare(params)
            fast_params = self._subset(params, active)
            self.params, self._fast_params, self._active = params, fast_params, active

    @staticmethod
    def _subset(params: tuple[Any, ...], active: tuple[int, ...]) -> tuple[Any, ...]:
        """The active ramps' parameters, in position order (one object per set: the router
        packs a set once)."""
        return tuple(params[j] for j in active)

    def _compile_fast(self, active: tuple[int, ...]) -> None:
        """Builds and compiles (every bucket) the router of ``active``'s ramps alone."""
        decide = policy_builder("apparate")
        router = Router(
            self.model,
            tuple(self.ramps.positions[j] for j in active),
            tuple(decide(self.heads[j]) for j in active),
            self.router.max_group,
        )
        params = self._subset(jax.device_put(ramp_params(self._predictors, active)), active)
        self._compile_buckets(router, params, np.full(len(active), np.inf, np.float32))
        self._fast[active] = router

    def _compile_buckets(self, router: Router, params: tuple[Any, ...], thresholds: Any) -> None:
        """Routes a group of zeros through every bucket of ``router``: all compiled."""
        for size in router.buckets:
            zeros = np.zeros((size, *self.model.network.input_shape), np.uint8)
            router.route(params, thresholds, zeros)

    def drain(self) -> None:
        """Runs all pending background work (tests)."""
        while self.pending():
            self.run_chunk()

    def summary(self) -> dict[str, Any]:
        """Audits, tunings (why, when, which ramps at which thresholds), chunk times."""
        seconds, kinds = np.asarray(self.chunk_seconds), np.asarray(self.chunk_kinds)
        by_kind = {}
        for kind in dict.fromkeys(self.chunk_kinds):
            ms = 1e3 * seconds[kinds == kind]
            by_kind[kind] = {
                "count": int(ms.size),
                "p50": float(np.percentile(ms, 50)),
                "max": float(ms.max()),
            }
        positions = self.ramps.positions
        return {
            "audited": self.audited,
            "tunings": len(self.tuner.tunings),
            "tuning_reasons": dict(collections.Counter(t.reason for t in self.tuner.tunings)),
            "ramp_changes": sum(
                a.active != b.active for a, b in zip(self.tuner.tunings[1:], self.tuner.tunings)
            ),
            "final_positions": [positions[j] for j in self.tuner.active],
            "final_thresholds": [float(self.tuner.thresholds()[j]) for j in self.tuner.active],
            # served: requests served when the audit that completed its evidence came in
            "tuning_log": [
                {
                    "reason": t.reason,
                    "audited": t.audited,
                    "served": self._served_at[t.audited - 1],
                    "positions": [positions[j] for j in t.active],
                    "thresholds": [t.thresholds[j] for j in t.active],
                    "window_cost_ms": 1e3 * t.window_cost_s,
                    "window_errors": t.window_errors,
                }
                for t in self.tuner.tunings
            ],
            "chunk_ms_p50": 1e3 * float(np.median(seconds)) if seconds.size else 0.0,
            "chunk_ms_max": 1e3 * float(seconds.max()) if seconds.size else 0.0,
            "chunk_ms_by_kind": by_kind,
        }
