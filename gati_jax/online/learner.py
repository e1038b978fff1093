"""The online learner: serves through a tapped router, learns from what serving yields, audits
a sample of hits, and swaps better caches in while the stream runs.

A random ``tap_fraction`` of request groups is served by the tapped router: the same compiled
call that serves the group also returns every position's cache input, cache answer and
selector score. The other groups go through the untapped router (the static caches' program,
at the learner's current parameters and thresholds) and cost what static serving costs:
tapping a request cost it 5-8% at batch 1, a price only the requests learnt from should pay.
Tapped requests that ran to the end carry the base network's answer: their activations go
into the training windows. A uniform random ``audit_fraction`` of all requests (drawn among
the tapped ones) is the audit sample: its requests that ran to the end are labelled already,
its hits are queued for a shadow run of the plain network (their activations were tapped
when they were served, so the audit needs only the label). Every other sampled request is
held out: thresholds are calibrated on those, and the guard watches the sample's would-be
hits; misses alone are the hard requests and would bias both.

Background work (audits, update steps, calibration) runs in chunks when the serving loop has
nothing to serve (see ``serve_steps(background=...)``), so a request waits for at most the one
chunk running when it arrives; work that waits longer than ``max_lag`` requests is forced in
between groups. New parameters and thresholds replace the old ones in one assignment between
groups; they are arguments of the compiled program, so nothing recompiles.

With ``shift_detect``, the tapped requests' first cache inputs also feed a label-free
covariate-shift detector (``shift.py``, fitted on in-distribution ``reference_images``): while
its alarm is up every position that has not proved itself on the new inputs serves no hit
(``AccuracyGuard.distrust``) and the learner taps and audits ``alarm_audit_fraction`` of the
requests, so those proofs (or the evidence that switches a cache off) come within a few hundred
requests instead of after the first wrong answers.
"""

from __future__ import annotations

import collections
import dataclasses
import time
import typing
from collections.abc import Generator
from typing import Any

import jax
import ml_collections
import numpy as np

from gati_jax.inference import BaseModel
from gati_jax.online.guard import AccuracyGuard
from gati_jax.online.shift import ShiftDetector, ShiftReference
from gati_jax.online.updates import (
    OnlineTrainer,
    UpdateSettings,
    Verdict,
    make_tap,
    make_tapped_decide,
    shift_logits,
)
from gati_jax.online.window import ReplayWindow
from gati_jax.runtime.deployment import Deployment
from gati_jax.runtime.router import Router, RouteResult
from gati_jax.runtime.segments import SegmentedNetwork


@dataclasses.dataclass(frozen=True)
class OnlineSettings:
    """The ``online`` config section as plain values; its defaults live only in the config
    (gati_jax/online/config.py), so build it with :meth:`from_config`."""

    update_every: int
    max_backoff: int
    audit_fraction: float
    tap_fraction: float
    single_program: bool
    alarm_audit_fraction: float
    alarm_suspends: bool
    audit_group: int
    audit_segments: int
    window_bytes: int
    window_items: int
    holdout_every: int
    max_lag: int
    guard: bool
    guard_window: int
    guard_confidence: float
    guard_min_samples: int
    guard_recover_samples: int
    prior_window: int
    prior_strength: float
    shift_detect: bool
    shift_reference: int
    shift_quantile: float
    shift_rate: float
    shift_level: float
    update: UpdateSettings
    seed: int

    @classmethod
    def from_config(cls, section: ml_collections.ConfigDict) -> OnlineSettings:
        """Reads ``config.online`` (each field from the key of its name, cast to its type)."""
        return cls(**_read_fields(cls, section), update=UpdateSettings.from_config(section))


def _read_fields(settings: type, section: ml_collections.ConfigDict) -> dict[str, Any]:
    """The plain (int, float, bool) fields of a settings dataclass from a config section."""
    hints = typing.get_type_hints(settings)
    return {
        f.name: hints[f.name](section[f.name])
        for f in dataclasses.fields(settings)
        if hints[f.name] in (int, float, bool)
    }


@dataclasses.dataclass
class UpdateRecord:
    """One finished update: when it was scheduled and applied, and each position's verdict."""

    scheduled: int
    applied: int
    verdicts: list[Verdict]
    thresholds: list[float]
    trained: bool  # whether optimiser steps ran (the back-off skips them), or only calibration


class OnlineLearner:
    """Serves a ``gati`` deployment while its caches keep learning (``route`` is the
    serving loop's ``route_group``; the learner is also its ``background``)."""

    def __init__(
        self,
        model: BaseModel,
        deployment: Deployment,
        settings: OnlineSettings,
        max_group: int = 8,
        train_prior: np.ndarray | None = None,
        mesh: Any = None,
        reference_images: np.ndarray | None = None,
    ):
        if deployment.policy != "gati":
            raise ValueError(
                f"online learning updates learned caches (policy 'gati'), got {deployment.policy!r}"
            )
        if not deployment.positions:
            raise ValueError("online learning needs at least one deployed cache")
        self.model, self.settings = model, settings
        self.positions = deployment.positions
        self.last_stage = model.network.num_stages - 1
        taps = tuple(make_tap(h) for h in deployment.heads)
        decides = tuple(make_tapped_decide(h) for h in deployment.heads)
        if not 0 < settings.tap_fraction <= 1:
            raise ValueError(f"tap_fraction must be in (0, 1], got {settings.tap_fraction}")
        if settings.audit_fraction > settings.tap_fraction:
            raise ValueError(
                f"the audit sample ({settings.audit_fraction:g} of requests) is "
                f"drawn among the tapped ones ({settings.tap_fraction:g})"
            )
        self.mesh = mesh
        self._taps, self._tapped_decides = taps, decides
        self.router = Router(model, deployment.positions, decides, max_group, taps=taps, mesh=mesh)
        # Groups nobody learns from: the program static serving runs, taking the same
        # parameters and thresholds; with ``single_program`` they too run the tapped program
        # and their taps are dropped (one program's weights stay in the caches instead of
        # two programs' evicting each other).
        self.untapped = (
            None
            if settings.single_program or settings.tap_fraction >= 1
            else Router(model, deployment.positions, deployment.decides(), max_group, mesh=mesh)
        )
        # The audits' labels: the plain network, in segments that background chunks run one
        # at a time (see runtime/segments.py).
        self.audit_network = SegmentedNetwork(model, settings.audit_segments)
        self._initial = (
            tuple(deployment.params),
            np.asarray(deployment.thresholds, np.float32).copy(),
        )
        self.heads = deployment.heads
        classes = model.network.num_classes
        # The label distribution the caches were trained under (uniform unless told).
        prior = np.full(classes, 1 / classes) if train_prior is None else train_prior
        self._log_train_prior = np.log(np.asarray(prior, np.float64))
        self.params = self._initial[0]
        self.shapes = self._input_shapes(taps)
        self.shift_reference = self._fit_shift_reference(reference_images)
        self.reset()

    def tapped_router(self, max_group: int = 1) -> Router:
        """A new router running the tapped program (the costlier of the two this learner
        serves with), for measurements that must not count against its compilations."""
        return Router(self.model, self.positions, self._tapped_decides, max_group, taps=self._taps)

    def _fit_shift_reference(self, images: np.ndarray | None) -> ShiftReference | None:
        """The shift detector's reference: the first cache's inputs and answers to
        ``images`` (in-distribution requests), or None without shift detection."""
        s = self.settings
        if not s.shift_detect:
            return None
        if not s.guard:
            raise ValueError("shift detection acts through the accuracy guard (online.guard)")
        if images is None or len(images) == 0:
            raise ValueError(
                "shift detection needs in-distribution reference images (reference_images=...)"
            )
        # Through the tapped program itself, so the reference holds exactly what serving
        # taps (same program, float32), at the price of running the whole network once over
        # the images at group size (a few seconds for 2,000 on this CPU).
        never = np.full(len(self.positions), np.inf, np.float32)
        inputs, answers = [], []
        for start in range(0, len(images), self.router.max_group):
            _, tapped = self.router.route_tapped(
                self.params, never, images[start : start + self.router.max_group]
            )
            inputs.append(tapped[0][0])
            answers.append(tapped[0][1])
        return ShiftReference.fit(
            np.concatenate(inputs),
            np.concatenate(answers),
            self.model.network.num_classes,
            s.shift_quantile,
        )

    def reset(self) -> None:
        """Back to the deployed caches with empty windows, as before the first request (the
        compiled programs stay)."""
        s = self.settings
        self.params, self.nominal = self._initial[0], self._initial[1].copy()
        self._prepare(self.params)  # a round's first group must not pack them either
        self.base_params = self.params  # what the optimiser trains; serving adds the shifts
        self.shifts: tuple[np.ndarray | None, ...] = (None,) * len(self.positions)
        self._answers: collections.deque = collections.deque(maxlen=max(s.prior_window, 1))
        self.windows = [
            ReplayWindow(shape, s.window_bytes, s.holdout_every, s.window_items)
            for shape in self.shapes
        ]
        self.trainer = OnlineTrainer(self.heads, self.shapes, self.params, s.update, self.mesh)
        self.guard = AccuracyGuard(
            self.positions,
            s.update.target,
            s.guard_window,
            s.guard_confidence,
            s.guard_min_samples,
            s.guard_recover_samples,
            suspend_on_alarm=s.alarm_suspends,
        )
        self.shift = (
            None
            if self.shift_reference is None
            else ShiftDetector(self.shift_reference, s.shift_rate, s.shift_level)
        )
        self.rng = np.random.default_rng(s.seed)
        # Which groups are tapped: drawn on the serving side, from a stream of its own.
        self._tap_rng = np.random.default_rng([s.seed, 1])
        self.tapped_groups = self.alarmed_groups = self.shifted_groups = 0
        self.served = 0  # requests routed
        self.observed = 0  # requests the background has learnt from
        self._sampled = 0
        self._last_scheduled = self._last_trained = 0
        self.backoff = 1  # the update interval's multiplier, see _apply
        self._guard_events_seen = 0
        self._audits: collections.deque = collections.deque()
        self._audit_run: tuple[list, Generator] | None = None  # the audit in progress
        self._update: tuple[int, Generator] | None = None
        self._oldest_pending: int | None = None
        self.updates: list[UpdateRecord] = []
        self.audited = 0
        self.chunks = 0
        self.chunk_seconds: list[float] = []
        self.chunk_kinds: list[str] = []
        self._served_groups: collections.deque = collections.deque()

    def _input_shapes(self, taps) -> list[tuple[int, ...]]:
        shapes = self.model.network.activation_shapes(1)
        return [
            tuple(
                jax.eval_shape(tap, p, jax.ShapeDtypeStruct(shapes[pos], np.float32))[0].shape[1:]
            )
            for tap, p, pos in zip(taps, self.params, self.positions)
        ]

    def warm_up(self) -> None:
        """Compiles every program serving and learning will run (each group-size bucket, the
        update steps, the calibration) on zeros, changing no state: a first compilation in
        the middle of a stream would stall it for seconds."""
        network = self.model.network
        never = np.full(len(self.positions), np.inf, np.float32)
        size_cap = self.router.max_group
        for size in self.router.buckets:
            # Every stage runs (no exit): the first run through a stage is slow (measured:
            # a first audit took 100 ms), so it must not be a served request's.
            zeros = np.zeros((size, *network.input_shape), np.uint8)
            self.router.route_tapped(self.params, never, zeros)
            if self.untapped is not None:
                self.untapped.route(self.params, never, zeros)
        for size in range(1, min(self.settings.audit_group, size_cap) + 1):
            # Audit groups are not padded: every size they come in.
            self.audit_network.answers(np.zeros((size, *network.input_shape), np.uint8))
        self.trainer.warm_up(self.params, self.windows)

    def thresholds(self) -> np.ndarray:
        """The thresholds serving uses now (the guard's off and suspended positions at
        +inf)."""
        if not self.settings.guard:
            return self.nominal.copy()
        return self.guard.thresholds(self.nominal)

    # ---- serving side -------------------------------------------------------------------
    def route(self, images: np.ndarray, index: np.ndarray | None = None) -> RouteResult:
        """Serves one group (the serving loop's ``route_group``), tapped with probability
        ``tap_fraction``; what it yields is learnt from in the background, so the request's
        latency is the router's alone."""
        audit = self.settings.audit_fraction
        shifted = self.shift is not None and self.shift.alarmed()
        if self.settings.guard and (self.guard.alarmed() or shifted):
            # A cache looks worse than promised, or the inputs moved: more evidence, sooner
            # (see guard.py and shift.py).
            audit = max(audit, self.settings.alarm_audit_fraction)
            self.alarmed_groups += 1
            self.shifted_groups += shifted
        tap = max(self.settings.tap_fraction, audit)
        if self._tap_rng.random() < tap:
            result, tapped = self.router.route_tapped(self.params, self.thresholds(), images)
            self.tapped_groups += 1
        elif self.untapped is None:
            result = self.router.route_tapped(self.params, self.thresholds(), images)[0]
            tapped = None
        else:
            result, tapped = self.untapped.route(self.params, self.thresholds(), images), None
        self._served_groups.append((images, result, tapped, audit / tap))
        if self._oldest_pending is None:
            self._oldest_pending = self.served
        self.served += len(result.answer)
        return result

    def _observe(
        self, images: np.ndarray, result: RouteResult, tapped: tuple | None, sample_fraction: float
    ) -> None:
        """Learns from one served group: windows, audit queue, guard, update schedule.
        ``sample_fraction`` of a tapped group is the audit sample (audit_fraction of all
        requests, or alarm_audit_fraction while the guard's alarm is up)."""
        n = len(result.answer)
        if tapped is not None:
            miss = result.exit_stage == self.last_stage
            sample = self.rng.random(n) < sample_fraction
            # Every other sampled request is held out (a uniform sample still), the rest train.
            holdout = sample & ((self._sampled + np.cumsum(sample)) % 2 == 1)
            self._sampled += int(sample.sum())
            if self.shift is not None:
                self._watch_inputs(tapped[0][0], tapped[0][1])
            # Requests that ran to the end are labelled by the base network's answer.
            self._learn(tapped, result.answer, miss, result.exit_stage, holdout, sample)
            for i in np.flatnonzero(result.hit & sample):
                # What serving tapped comes along: the audit only has to find the label.
                row = jax.tree.map(lambda a, i=i: a[i], tapped)
                self._audits.append(
                    (np.asarray(images[i]), int(result.exit_stage[i]), bool(holdout[i]), row)
                )
        self.observed += n
        self._answers.extend(result.answer.tolist())
        if self._guard_events_seen != len(self.guard.events):
            # A switch means the stream moved: train at full pace again.
            self._guard_events_seen, self.backoff = len(self.guard.events), 1
        if (
            self._update is None
            and self.observed - self._last_scheduled >= self.settings.update_every
        ):
            self.schedule_update()

    def _watch_inputs(self, inputs: np.ndarray, answers: np.ndarray) -> None:
        """Feeds the shift detector; the guard distrusts every position when its alarm rises
        and trusts them again when it falls."""
        was, seen = self.shift.alarmed(), self.observed + len(answers)
        self.shift.record(inputs, answers, seen)
        if self.shift.alarmed() and not was:
            self.guard.distrust(seen)
        elif was and not self.shift.alarmed():
            self.guard.trust_all(seen)

    def schedule_update(self) -> None:
        """Queues an update (optimiser steps, prior shift, calibration) as background work;
        the steps run only when the back-off allows."""
        due = self.settings.update_every * self.backoff
        train = self.observed - self._last_trained >= due
        self._last_scheduled = self.observed
        if train:
            self._last_trained = self.observed
        shifts = self._prior_shifts()
        self._update = (
            self.observed,
            shifts,
            train,
            self.trainer.update(
                self.base_params, self.windows, self.rng, shifts, self.nominal, train=train
            ),
        )
        if self._oldest_pending is None:
            self._oldest_pending = self.served

    def _prior_shifts(self) -> tuple[np.ndarray | None, ...]:
        """Per cache, ``prior_strength`` * (log p_recent - log p_train), p_recent over the last
        ``prior_window`` served answers (hits answer as the base network does at the target
        agreement), add-one smoothed. Tempered: the full shift moved exits earlier but lost
        agreement (measured on temporal streams: strength 1.0, agreement 0.979; 0.5, 0.993)."""
        if self.settings.prior_window <= 0:
            return (None,) * len(self.positions)
        classes = len(self._log_train_prior)
        counts = np.bincount(np.asarray(self._answers, np.int64), minlength=classes)
        recent = (counts + 1) / (counts.sum() + classes)
        shift = self.settings.prior_strength * (np.log(recent) - self._log_train_prior)
        shift = shift.astype(np.float32)
        return (shift,) * len(self.positions)

    def _learn(
        self,
        tapped: tuple,
        labels: np.ndarray,
        rows: np.ndarray,
        reached: np.ndarray,
        holdout: np.ndarray,
        sample: np.ndarray,
    ) -> None:
        """Adds labelled ``rows`` to the windows of the positions they reached (``holdout``
        ones held out) and the audit ``sample``'s would-be-hit outcomes to the guard (its
        requests that ran to the end, and its hits once audited: the outcomes of a uniform
        sample of the requests that reached each position)."""
        for k, (position, (x, answer, score)) in enumerate(zip(self.positions, tapped)):
            here = rows & (reached >= position)
            if not here.any():
                continue
            self.windows[k].add(x[here], labels[here], holdout=holdout[here])
            would_hit = here & sample & (score >= self.nominal[k])
            self.guard.record(k, answer[would_hit] == labels[would_hit], self.served)

    # ---- background side ----------------------------------------------------------------
    def pending(self) -> bool:
        """Whether background work is waiting."""
        return (
            bool(self._served_groups)
            or bool(self._audits)
            or self._audit_run is not None
            or self._update is not None
        )

    def overdue(self) -> bool:
        """Whether pending work has waited more than ``max_lag`` requests."""
        return (
            self.pending()
            and self._oldest_pending is not None
            and self.served - self._oldest_pending > self.settings.max_lag
        )

    def run_chunk(self) -> None:
        """Runs one bounded piece of background work: the bookkeeping of the groups served
        since the last chunk, one segment of an audit, or a few update steps."""
        started = time.perf_counter()
        kind = self._run_chunk()
        # Lag counts from the last progress: overdue work gets one forced chunk per max_lag.
        self._oldest_pending = self.served if self.pending() else None
        self.chunk_seconds.append(time.perf_counter() - started)
        self.chunk_kinds.append(kind)

    def _run_chunk(self) -> str:
        self.chunks += 1
        if self._served_groups:
            while self._served_groups:
                self._observe(*self._served_groups.popleft())
            return "observe"
        if self._audit_run is not None or self._audits:
            self._audit_step()
            return "audit"
        if self._update is not None:
            scheduled, shifts, trained, steps = self._update
            try:
                next(steps)
            except StopIteration as done:
                self._apply(scheduled, shifts, trained, *done.value)
                self._update = None
            return "update"
        return "idle"

    def _audit_step(self) -> None:
        """Runs one segment of the audit in progress (first taking the next audit group);
        the last segment's answers label the group."""
        if self._audit_run is None:
            batch = [
                self._audits.popleft()
                for _ in range(
                    min(len(self._audits), self.settings.audit_group, self.router.max_group)
                )
            ]
            # The plain network's answer is the label: no lookups (the tapped program with
            # every threshold at +inf cost an audit 4.5 ms, the plain network 3).
            self._audit_run = (batch, self.audit_network.run(np.stack([b[0] for b in batch])))
        batch, steps = self._audit_run
        try:
            next(steps)
            return
        except StopIteration as done:
            labels = done.value
        self._audit_run = None
        exits = np.array([b[1] for b in batch])
        holdout = np.array([b[2] for b in batch])
        tapped = jax.tree.map(lambda *rows: np.stack(rows), *[b[3] for b in batch])
        self.audited += len(batch)
        # Labelled now: the same bookkeeping as a sampled request that ran to the end, over
        # the positions each request passed when it was served (its cache inputs, answers
        # and scores as served).
        everyone = np.ones(len(batch), bool)
        self._learn(tapped, labels, everyone, exits, holdout, everyone)

    def _apply(
        self,
        scheduled: int,
        shifts: tuple,
        trained: bool,
        params: tuple[Any, ...],
        thresholds: list,
        verdicts: list[Verdict],
    ) -> None:
        nominal = self.nominal.copy()
        new_shifts = list(self.shifts)
        for k, (verdict, threshold) in enumerate(zip(verdicts, thresholds)):
            if verdict.accepted:
                nominal[k] = threshold
                new_shifts[k] = shifts[k]
        serving = tuple(shift_logits(p, shift) for p, shift in zip(params, new_shifts))
        if all(a is b for a, b in zip(serving, self.params)):
            serving = self.params  # nothing swapped in: the routers' packed copy stays valid
        else:
            self._prepare(serving)
        # One assignment each, between groups: the next group sees the whole new set.
        self.base_params, self.shifts = params, tuple(new_shifts)
        self.params, self.nominal = serving, nominal
        # Optimiser steps that swapped no cache in were background work that served nobody,
        # and every step competes with requests for the device: the next steps wait twice
        # as long (up to max_backoff x update_every; the cheap recalibration and prior shift
        # keep their pace), and steps that help bring the pace back.
        if trained:
            helped = any(v.updated for v in verdicts)
            self.backoff = 1 if helped else min(2 * self.backoff, self.settings.max_backoff)
        self.updates.append(
            UpdateRecord(scheduled, self.served, verdicts, [float(t) for t in nominal], trained)
        )

    def _prepare(self, params: tuple[Any, ...]) -> None:
        """Packs and sends ``params`` to the device for both routers now, in the background:
        left to the next group, a new set cost that request about 0.7 ms on the CPU (packed
        and sent on its critical path), once per router: with updates as the only background
        work, gati-online's p99 read 1.34x the static caches' that way, 1.11-1.12x now."""
        for router in (self.router, self.untapped):
            if router is not None:
                router.prepare(params)

    def drain(self) -> None:
        """Runs all pending background work (end of a stream, or tests)."""
        while self.pending():
            self.run_chunk()

    def _chunks_by_kind(self) -> dict[str, dict[str, float]]:
        """Per kind of background chunk (observe, audit, update, idle): how many ran, and
        their median, p99 and longest duration in ms (a request that arrives during a chunk
        waits for it)."""
        out = {}
        seconds, kinds = np.asarray(self.chunk_seconds), np.asarray(self.chunk_kinds)
        for kind in dict.fromkeys(self.chunk_kinds):
            ms = 1e3 * seconds[kinds == kind]
            out[kind] = {
                "count": int(ms.size),
                "p50": float(np.percentile(ms, 50)),
                "p99": float(np.percentile(ms, 99)),
                "max": float(ms.max()),
            }
        return out

    def summary(self) -> dict[str, Any]:
        """Counts of updates (and of those that ran optimiser steps, "trained"), parameter
        swaps ("accepted"; "rejected": trained candidates that failed or did no better),
        audits, tapped and alarmed groups, guard switches, window memory, and every update's
        verdicts and thresholds."""
        verdicts = [
            v
            for u in self.updates
            if u.trained
            for v in u.verdicts
            if v.reason != "waiting for data"
        ]
        return {
            "updates": len(self.updates),
            "trained": sum(u.trained for u in self.updates),
            "accepted": sum(v.updated for v in verdicts),
            "rejected": sum(not v.updated for v in verdicts),
            "audited": self.audited,
            "chunks": self.chunks,
            "tapped_groups": self.tapped_groups,
            "alarmed_groups": self.alarmed_groups,
            "shifted_groups": self.shifted_groups,
            "shift_events": (
                [] if self.shift is None else [dataclasses.asdict(e) for e in self.shift.events]
            ),
            "shift_exceeded": (
                None
                if self.shift is None or not self.shift.seen
                else self.shift.exceeded / self.shift.seen
            ),
            "guard_events": [dataclasses.asdict(e) for e in self.guard.events],
            "window_bytes": [w.nbytes for w in self.windows],
            "trace_count": (
                self.router.trace_count
                + (0 if self.untapped is None else self.untapped.trace_count)
                + self.audit_network.trace_count
            ),
            "chunk_ms_p50": 1e3 * float(np.percentile(self.chunk_seconds, 50))
            if self.chunk_seconds
            else 0.0,
            "chunk_ms_max": 1e3 * max(self.chunk_seconds, default=0.0),
            "chunk_ms_by_kind": self._chunks_by_kind(),
            "final_thresholds": [float(t) for t in self.thresholds()],
            "update_log": [
                {
                    "scheduled": u.scheduled,
                    "applied": u.applied,
                    "trained": u.trained,
                    "thresholds": u.thresholds,
                    "verdicts": [dataclasses.asdict(v) for v in u.verdicts],
                }
                for u in self.updates
            ],
        }
