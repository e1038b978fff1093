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

With ``recency_positions`` > 0 the first deployed positions also carry a recency memory
(``recency.py``): keys of the requests labelled a moment ago with the base answers, one matrix
product per lookup, admitted to serve once labelled outcomes certify a threshold (and then
watched by a guard of its own). Every group then runs a *light* tapped program (programs.py)
instead of the untapped one: it returns each request's memory key, memory and cache answers
and scores, and the base network's confidence for requests that ran to the end, a few numbers
a request, so every request that ran to the end labels the memory and the audit sample is
drawn among all requests. The full tap (the caches' inputs, for their replay windows) serves
``tap_fraction`` of the groups only while the caches train (``steps`` > 0).

:meth:`OnlineLearner.memories_only` builds a learner of memories alone (no learned cache):
the traditional recency cache, served by the benchmark as ``knn-recent``.
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
from gati_jax.online.audit import AuditNetwork
from gati_jax.online.guard import AccuracyGuard, wilson_upper_bound
from gati_jax.online.programs import (
    Slot,
    make_programs,
    make_slots,
    route_deferred,
    slot_params,
    slot_part,
    unpack_taps,
)
from gati_jax.online.recency import (
    Calibration,
    OutcomeWindow,
    RecencyHead,
    RecencyMemory,
    pooled_key,
)
from gati_jax.online.shift import ShiftDetector, ShiftReference
from gati_jax.online.updates import OnlineTrainer, UpdateSettings, Verdict, shift_logits
from gati_jax.online.window import ReplayWindow
from gati_jax.runtime.deployment import Deployment
from gati_jax.runtime.router import Router, RouteResult
from gati_jax.runtime.segments import segment_count


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
    observe_every: int
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
    shift_fall_rate: float
    shift_fall_window: int
    recency_positions: int
    recency_earliest: bool
    recency_capacity: int
    recency_grid: int
    recency_neighbours: int
    recency_min_base_prob: float
    recency_target: float
    recency_outcomes: int
    recency_publish_every: int
    recency_audit_fraction: float
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


def recency_memory_positions(
    deployed: tuple[int, ...], memories: int, earliest: bool
) -> tuple[int, ...]:
    """Where gati-online keeps its ``memories`` recency memories: at the first deployed
    positions, or (``earliest``) the first at stage 0 and the rest at the first deployed
    positions after it.

    At stage 0 a hit skips nearly the whole network where a plan's first cache may sit a
    quarter of it in; but its keys there tell scenes apart less well, and the slot of its own
    costs every request (docs/online.md: off by default)."""
    if not earliest:
        return tuple(deployed[:memories])
    return tuple(sorted({0, *deployed}))[:memories]


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
        memory_positions: tuple[int, ...] | None = None,
    ):
        if deployment.policy != "gati":
            raise ValueError(
                f"online learning updates learned caches (policy 'gati'), got {deployment.policy!r}"
            )
        self.model, self.settings = model, settings
        self.positions = deployment.positions
        self.last_stage = model.network.num_stages - 1
        # The memories sit where recency_memory_positions puts them unless told
        # (memories_only: the recency cache alone, at positions no plan chose).
        if memory_positions is None:
            memory_positions = recency_memory_positions(
                self.positions, int(settings.recency_positions), settings.recency_earliest
            )
        self.memory_positions = tuple(int(p) for p in memory_positions)
        if not self.positions and not self.memory_positions:
            raise ValueError("online learning needs at least one deployed cache or memory")
        if any(not 0 <= p < self.last_stage for p in self.memory_positions) or len(
            set(self.memory_positions)
        ) != len(self.memory_positions):
            raise ValueError(
                f"memory positions must be distinct stage boundaries before the last stage "
                f"(0 to {self.last_stage - 1}), got {self.memory_positions}"
            )
        if self.memory_positions and not self.positions and settings.shift_detect:
            raise ValueError(
                "shift detection reads the first learned cache's answers and acts through the "
                "caches' guard: a learner of memories alone needs online.shift_detect False"
            )
        if not 0 < settings.tap_fraction <= 1:
            raise ValueError(f"tap_fraction must be in (0, 1], got {settings.tap_fraction}")
        if settings.audit_fraction > settings.tap_fraction:
            raise ValueError(
                f"the audit sample ({settings.audit_fraction:g} of requests) is "
                f"drawn among the tapped ones ({settings.tap_fraction:g})"
            )
        self.mesh = mesh
        self.heads = deployment.heads
        self.recency = bool(self.memory_positions)
        self.memory_head = (
            RecencyHead(int(settings.recency_grid), int(settings.recency_neighbours))
            if self.recency
            else None
        )
        # The router's slots: the deployed caches, the memories, and the base network's
        # confidence at the last position a cache may sit.
        self.slots: tuple[Slot, ...] = make_slots(
            self.positions, self.memory_positions, self.last_stage - 1, self.recency
        )
        self.slot_positions = tuple(slot.position for slot in self.slots)
        self._cache_slot = {
            slot.cache: i for i, slot in enumerate(self.slots) if slot.cache is not None
        }
        # Each slot's cache index into the thresholds, one past them (+inf) where none sits.
        self._slot_cache = np.array(
            [len(self.positions) if slot.cache is None else slot.cache for slot in self.slots]
        )
        self._memory_slot = [i for i, slot in enumerate(self.slots) if slot.memory is not None]
        self._confidence_slot = next(
            (i for i, slot in enumerate(self.slots) if slot.confidence), None
        )
        # Full taps (the caches' inputs) only feed the replay windows: without optimiser
        # steps (or caches) nobody reads them, and with a memory every group is lightly
        # tapped anyway.
        self.trains = settings.update.steps > 0 and bool(self.positions)
        # The shift detector reads the first cache's position: its key, with a memory
        # anywhere (every group is lightly tapped then), else its cache input.
        key_slot = (
            self._cache_slot[0]
            if self.recency and self.positions and settings.shift_detect
            else None
        )
        decides, taps = make_programs(
            model, self.slots, self.heads, self.memory_head, True, key_slot
        )
        self._taps, self._tapped_decides = taps, decides
        # Caches and memories in flat arrays of their own: a memory publication sends the
        # memory alone (programs.slot_part).
        routed = dict(mesh=mesh, pack_part=slot_part)
        self.router = Router(model, self.slot_positions, decides, max_group, taps=taps, **routed)
        # With a memory, the groups not fully tapped run the light program; without one, the
        # program static serving runs (its taps would teach nobody), taking the same
        # parameters and thresholds; with ``single_program`` they too run the tapped program
        # and their taps are dropped (one program's weights stay in the caches instead of
        # two programs' evicting each other).
        self.light = None
        self.untapped = None
        if self.recency:
            light_decides, light_taps = make_programs(
                model, self.slots, self.heads, self.memory_head, False, key_slot
            )
            self.light = Router(
                model, self.slot_positions, light_decides, max_group, taps=light_taps, **routed
            )
        elif not (settings.single_program or settings.tap_fraction >= 1):
            self.untapped = Router(model, self.slot_positions, decides, max_group, **routed)
        # The audits' labels: the plain network, in segments that background chunks run one
        # at a time (see runtime/segments.py), with the base network's confidence.
        self.audit_network = AuditNetwork(
            model, segment_count(model.network.num_stages, settings.audit_segments)
        )
        self._initial = (
            # As jax Arrays: a router reuses the device arrays of immutable leaves only
            # (see _set_serving); the deployed ones stay the same objects.
            jax.device_put(tuple(deployment.params)),
            np.asarray(deployment.thresholds, np.float32).copy(),
        )
        classes = model.network.num_classes
        # The label distribution the caches were trained under (uniform unless told).
        prior = np.full(classes, 1 / classes) if train_prior is None else train_prior
        self._log_train_prior = np.log(np.asarray(prior, np.float64))
        self.params = self._initial[0]
        self.shapes = self._input_shapes()
        self.key_sizes = self._key_sizes()
        self._memory_arrays = self._empty_memories()
        self.serving_params = slot_params(self.slots, self.params, self._memory_arrays)
        self.shift_reference = self._fit_shift_reference(reference_images)
        self.reset()

    @property
    def exit_positions(self) -> tuple[int, ...]:
        """Where a request may exit before the last stage: at a deployed cache or a memory."""
        return tuple(sorted({*self.positions, *self.memory_positions}))

    @classmethod
    def memories_only(
        cls,
        model: BaseModel,
        positions: tuple[int, ...],
        settings: OnlineSettings,
        max_group: int = 8,
        mesh: Any = None,
    ) -> OnlineLearner:
        """The traditional recency cache (``knn-recent``): recency memories at ``positions``
        and no learned cache, labelled, calibrated, audited and guarded as gati-online's
        memories are (same settings), without the input-shift detector (it reads a learned
        cache's answers and acts through the caches' guard, which a traditional cache has
        none of)."""
        empty = Deployment("gati", (), (), (), np.zeros(0, np.float32))
        settings = dataclasses.replace(settings, shift_detect=False)
        return cls(model, empty, settings, max_group, mesh=mesh, memory_positions=positions)

    def _program_routers(self) -> tuple[Router, ...]:
        """The routers serving groups: the fully tapped one (unless a memory's light one
        serves every group, the caches not training), the light or the untapped one."""
        full = None if self.recency and not self.trains else self.router
        return tuple(r for r in (full, self.light, self.untapped) if r is not None)

    def tapped_router(self, max_group: int = 1) -> SlotRouter:
        """A new router running the costliest program this learner serves with (the full
        tap while its caches train, else the light one), for measurements that must not
        count against its compilations; it takes the deployment's parameters and thresholds
        (its memories empty at a threshold no similarity reaches, so they never hit, though
        every lookup runs: the price of a miss while a memory serves)."""
        full = self.trains or not self.recency
        decides, taps = make_programs(self.model, self.slots, self.heads, self.memory_head, full)
        router = Router(
            self.model, self.slot_positions, decides, max_group, taps=taps, pack_part=slot_part
        )
        return SlotRouter(router, self)

    def _empty_memories(self, threshold: float | None = None) -> tuple[dict[str, np.ndarray], ...]:
        """Empty memories' arrays (at ``threshold``; default +inf: no lookup runs)."""
        return tuple(
            RecencyMemory(int(self.settings.recency_capacity), size).arrays(threshold)
            for size in self.key_sizes
        )

    def _fit_shift_reference(self, images: np.ndarray | None) -> ShiftReference | None:
        """The shift detector's reference: the first position's shift inputs (its cache input,
        or with a memory its key) and cache answers to ``images`` (in-distribution requests),
        or None without shift detection."""
        s = self.settings
        if not s.shift_detect:
            return None
        if not s.guard:
            raise ValueError("shift detection acts through the accuracy guard (online.guard)")
        if images is None or len(images) == 0:
            raise ValueError(
                "shift detection needs in-distribution reference images (reference_images=...)"
            )
        # Through the program serving taps with, so the reference holds exactly what serving
        # taps (same program, float32), at the price of running the whole network once over
        # the images at group size (a few seconds for 2,000 on this CPU).
        router = self.light or self.router
        never = np.full(len(self.slots), np.inf, np.float32)
        inputs, answers = [], []
        for start in range(0, len(images), router.max_group):
            _, tapped = router.route_tapped(
                self.serving_params, never, images[start : start + router.max_group]
            )
            x, a = self._shift_inputs(tapped)
            inputs.append(x)
            answers.append(a)
        return ShiftReference.fit(
            np.concatenate(inputs),
            np.concatenate(answers),
            self.model.network.num_classes,
            s.shift_quantile,
        )

    def _shift_inputs(self, tapped: tuple) -> tuple[np.ndarray, np.ndarray]:
        """What the shift detector reads from a tapped group: at the first deployed
        position, the memory's key of its activation (with a memory anywhere: every group
        carries it) or the cache's input, and the cache's answer."""
        first = tapped[self._cache_slot[0]]
        return (first["key"] if "key" in first else first["x"]), first["answer"]

    def reset(self) -> None:
        """Back to the deployed caches with empty windows and memories, as before the first
        request (the compiled programs stay)."""
        s = self.settings
        self.params, self.nominal = self._initial[0], self._initial[1].copy()
        self.memories = [
            RecencyMemory(int(s.recency_capacity), size, int(s.recency_neighbours))
            for size in self.key_sizes
        ]
        self.outcomes = [OutcomeWindow(int(s.recency_outcomes)) for _ in self.key_sizes]
        self.memory_guard = AccuracyGuard(
            self.memory_positions,
            s.recency_target,
            s.guard_window,
            s.guard_confidence,
            s.guard_min_samples,
            s.guard_recover_samples,
        )
        self.calibrations: list[Calibration | None] = [None] * len(self.key_sizes)
        self._memory_arrays = self._empty_memories()
        self._memory_dirty = False
        self._last_published = 0
        self.memory_log: list[dict[str, Any]] = []
        self._set_serving(self.params)  # a round's first group must not pack them either
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
            else ShiftDetector(
                self.shift_reference,
                s.shift_rate,
                s.shift_level,
                s.shift_fall_rate,
                s.shift_fall_window,
            )
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
        self._route_state: tuple | None = None

    def _input_shapes(self) -> list[tuple[int, ...]]:
        shapes = self.model.network.activation_shapes(1)
        out = []
        for k, pos in enumerate(self.positions):
            tap = self._taps[self._cache_slot[k]]
            params = slot_params(self.slots, self.params, self._empty_key_memories())
            got = jax.eval_shape(
                tap, params[self._cache_slot[k]], jax.ShapeDtypeStruct(shapes[pos], np.float32)
            )
            out.append(tuple(got["x"].shape[1:]))
        return out

    def _empty_key_memories(self) -> tuple[dict[str, np.ndarray], ...]:
        # Placeholders shaped for each memory's key (only shapes are read).
        return tuple(RecencyMemory(1, size).arrays() for size in self._key_sizes())

    def _key_sizes(self) -> list[int]:
        """Each memory's key length (its position's activation pooled to the grid)."""
        if not self.recency:
            return []
        shapes = self.model.network.activation_shapes(1)
        return [
            int(
                jax.eval_shape(
                    lambda x: pooled_key(x, self.memory_head.grid),
                    jax.ShapeDtypeStruct(shapes[self.slots[i].position], np.float32),
                ).shape[1]
            )
            for i in self._memory_slot
        ]

    def warm_up(self) -> None:
        """Compiles every program serving and learning will run (each group-size bucket, the
        update steps, the calibration) on zeros, changing no state: a first compilation in
        the middle of a stream would stall it for seconds."""
        network = self.model.network
        never = np.full(len(self.slots), np.inf, np.float32)
        size_cap = self.router.max_group
        for size in self.router.buckets:
            # Every stage runs (no exit): the first run through a stage is slow (measured:
            # a first audit took 100 ms), so it must not be a served request's.
            zeros = np.zeros((size, *network.input_shape), np.uint8)
            for router in self._program_routers():
                if router.taps:
                    router.route_tapped(self.serving_params, never, zeros)
                else:
                    router.route(self.serving_params, never, zeros)
        for size in range(1, min(self.settings.audit_group, size_cap) + 1):
            # Audit groups are not padded: every size they come in.
            self.audit_network.answers(np.zeros((size, *network.input_shape), np.uint8))
        self.trainer.warm_up(self.params, self.windows)

    def thresholds(self) -> np.ndarray:
        """The thresholds the deployed caches serve with now (the guard's off and suspended
        positions at +inf)."""
        if not self.settings.guard:
            return self.nominal.copy()
        return self.guard.thresholds(self.nominal)

    def slot_thresholds(self) -> np.ndarray:
        """Per router slot: its cache's serving threshold, +inf where no cache sits."""
        return np.append(self.thresholds(), np.float32(np.inf))[self._slot_cache]

    def memory_thresholds(self) -> list[float]:
        """The threshold each memory serves at now (+inf: not admitted, or switched off)."""
        return [
            m.threshold if self.memory_guard.on[j] else float("inf")
            for j, m in enumerate(self.memories)
        ]

    # ---- serving side -------------------------------------------------------------------
    def route(self, images: np.ndarray, index: np.ndarray | None = None) -> RouteResult:
        """Serves one group (the serving loop's ``route_group``), tapped with probability
        ``tap_fraction`` (with a memory, every group is at least lightly tapped); what it
        yields is learnt from in the background, so the request's latency is the router's
        alone."""
        if self._route_state is None:
            self._route_state = self._serving_state()
        audit, alarmed, shifted, thresholds = self._route_state
        if alarmed:
            self.alarmed_groups += 1
            self.shifted_groups += shifted
        tap = max(self.settings.tap_fraction, audit)
        drawn = self._tap_rng.random() < tap
        full = drawn and (self.trains or not self.recency)
        # Tapped groups keep the program's raw output; the background unpacks it.
        if full:
            result, raw = route_deferred(self.router, self.serving_params, thresholds, images)
            tapped = (self.router, raw)
            self.tapped_groups += 1
        elif self.light is not None:
            result, raw = route_deferred(self.light, self.serving_params, thresholds, images)
            tapped = (self.light, raw)
        elif self.untapped is None:
            result = self.router.route_tapped(self.serving_params, thresholds, images)[0]
            tapped = None
        else:
            result = self.untapped.route(self.serving_params, thresholds, images)
            tapped = None
        # The audit sample: audit_fraction of all requests, drawn among the tapped groups.
        sample_fraction = audit if self.recency else audit / tap
        self._served_groups.append(
            (images, result, tapped, sample_fraction, drawn, self._memory_thresholds_served())
        )
        if self._oldest_pending is None:
            self._oldest_pending = self.served
        self.served += len(result.answer)
        return result

    def _serving_state(self) -> tuple[float, bool, bool, np.ndarray]:
        """What serving a group reads: the audit fraction, whether an alarm is up (and the
        shift alarm), the slots' thresholds. Kept between groups and computed again after
        background work (the only thing that changes it): about 20 us less on each group's
        critical path."""
        audit = self.settings.audit_fraction
        shifted = self.shift is not None and self.shift.alarmed()
        alarmed = self.guard.alarmed() or (self.recency and self.memory_guard.alarmed())
        alarmed = bool(self.settings.guard and (alarmed or shifted))
        if alarmed:
            # A cache looks worse than promised, or the inputs moved: more evidence, sooner
            # (see guard.py and shift.py).
            audit = max(audit, self.settings.alarm_audit_fraction)
        return audit, alarmed, bool(shifted), self.slot_thresholds()

    def _observe(
        self,
        images: np.ndarray,
        result: RouteResult,
        tapped: tuple | None,
        sample_fraction: float,
        drawn: bool,
        served_at: tuple[float, ...],
    ) -> None:
        """Learns from one served group: windows, memories, audit queue, guard, update
        schedule. ``sample_fraction`` of a tapped group is the audit sample (audit_fraction
        of all requests, or alarm_audit_fraction while an alarm is up); ``drawn``: whether
        the group was drawn for tapping (the shift detector reads those, as many as it
        was calibrated on, also when a memory taps every group lightly); ``served_at``: the
        thresholds the memories served the group at (+inf: not serving)."""
        n = len(result.answer)
        miss = result.exit_stage == self.last_stage
        draw = self.rng.random(n) if tapped is not None else None
        most = sample_fraction
        if np.isfinite(served_at).any():
            most = max(most, self.settings.recency_audit_fraction)
        # Only a group with something to learn is unpacked (most groups on a stream without
        # locality hit a cache, unsampled): a request that ran to the end, one that may be
        # audited, or one the shift detector reads.
        if tapped is not None and (drawn or miss.any() or (result.hit & (draw < most)).any()):
            tapped = unpack_taps(*tapped)
            sample = draw < sample_fraction
            # Every other sampled request is held out (a uniform sample still), the rest train.
            holdout = sample & ((self._sampled + np.cumsum(sample)) % 2 == 1)
            self._sampled += int(sample.sum())
            if self.shift is not None and drawn:
                self._watch_inputs(*self._shift_inputs(tapped))
            # A memory's hits are audited more often (recency_audit_fraction): nothing else
            # labels them, and until a label of the new scene reaches the memory, a scene
            # that looks like the last one is answered as the last one, every frame.
            chance = np.where(
                self._memory_hits(tapped, result, served_at),
                max(sample_fraction, self.settings.recency_audit_fraction),
                sample_fraction,
            )
            audit = result.hit & (draw < chance)
            self._score_memories(tapped, served_at, miss | audit)
            probs = (
                tapped[self._confidence_slot]["prob"]
                if self._confidence_slot is not None
                else np.ones(n, np.float32)
            )
            # Requests that ran to the end are labelled by the base network's answer; each
            # labelled outcome weighs 1 / the probability it was labelled.
            self._learn(
                tapped,
                result.answer,
                miss,
                result.exit_stage,
                holdout,
                sample,
                probs,
                np.ones(n, np.float32),
                miss & (sample | audit),
            )
            for i in np.flatnonzero(audit):
                # What serving tapped comes along: the audit only has to find the label.
                row = jax.tree.map(lambda a, i=i: a[i], tapped)
                self._audits.append(
                    (
                        np.asarray(images[i]),
                        int(result.exit_stage[i]),
                        bool(holdout[i]),
                        row,
                        1.0 / chance[i],
                        bool(sample[i]),
                    )
                )
        self.observed += n
        self._answers.extend(result.answer.tolist())
        if self._guard_events_seen != len(self.guard.events):
            # A switch means the stream moved: train at full pace again.
            self._guard_events_seen, self.backoff = len(self.guard.events), 1
        if (
            self.positions  # memories alone: no cache to train, shift or recalibrate
            and self._update is None
            and self.observed - self._last_scheduled >= self.settings.update_every
        ):
            self.schedule_update()

    def _memory_hits(
        self, tapped: tuple, result: RouteResult, served_at: tuple[float, ...]
    ) -> np.ndarray:
        """Which requests of a group a memory answered."""
        hits = np.zeros(len(result.answer), bool)
        for j, i in enumerate(self._memory_slot):
            tap = tapped[i]
            hits |= (
                (result.exit_stage == self.slots[i].position)
                & result.hit
                & (tap["m_score"] >= served_at[j])
                & (tap["m_answer"] == result.answer)
            )
        return hits

    def _score_memories(
        self, tapped: tuple, served_at: tuple[float, ...], labelled: np.ndarray
    ) -> None:
        """Fills in, for each memory that did not serve the group (the compiled program
        skipped its lookup), the answers and scores of its lookup on the host now, before
        the group's own labels go in, for the ``labelled`` requests (those that ran to the end
        and those to be audited): every labelled request is an outcome to calibrate on,
        whether the memory served or not."""
        if not labelled.any():
            return
        for j, i in enumerate(self._memory_slot):
            if not np.isfinite(served_at[j]):
                answer, score = self.memories[j].lookup(tapped[i]["key"][labelled])
                tapped[i]["m_answer"][labelled], tapped[i]["m_score"][labelled] = answer, score

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
        train = self.trains and self.observed - self._last_trained >= due
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
        probs: np.ndarray,
        weights: np.ndarray,
        watched: np.ndarray,
    ) -> None:
        """Adds labelled ``rows`` to the windows of the positions they reached (``holdout``
        ones held out; full taps only) and the audit ``sample``'s would-be-hit outcomes to the
        guard (its requests that ran to the end, and its hits once audited: the outcomes of a
        uniform sample of the requests that reached each position). With memories: the rows'
        keys and labels go into each memory they reached (unsure where the base network's top
        probability ``probs`` is below ``recency_min_base_prob``), their outcomes, weighted
        by ``weights`` (1 / the probability each was labelled), into its calibration window,
        and the would-be hits at its serving threshold among the ``watched`` rows (sampled or
        audited) into its guard."""
        for k, position in enumerate(self.positions):
            here = rows & (reached >= position)
            if not here.any():
                continue
            tap = tapped[self._cache_slot[k]]
            if "x" in tap:
                self.windows[k].add(tap["x"][here], labels[here], holdout=holdout[here])
            would_hit = here & sample & (tap["score"] >= self.nominal[k])
            self.guard.record(k, tap["answer"][would_hit] == labels[would_hit], self.served)
        for j, i in enumerate(self._memory_slot):
            here = rows & (reached >= self.slots[i].position)
            if not here.any():
                continue
            tap = tapped[i]
            sure = probs[here] >= self.settings.recency_min_base_prob
            agree = tap["m_answer"][here] == labels[here]
            self.outcomes[j].add(tap["m_score"][here], agree, weights[here])
            self.memories[j].add(tap["key"][here], labels[here], sure)
            would_hit = watched[here] & (tap["m_score"][here] >= self.memories[j].threshold)
            self.memory_guard.record(j, agree[would_hit], self.served)
            self._memory_dirty = True

    # ---- background side ----------------------------------------------------------------
    def pending(self, idle: bool = False) -> bool:
        """Whether background work is waiting: served groups are learnt from
        ``observe_every`` at a time (every background chunk leaves the next request to run
        on a cold machine: on the virtual clock, learning from every group as it was served
        cost gati-online's requests 25% more compute than static serving's on a stream
        where it changed no decision, none without the background work). ``idle``: nothing
        waits to be served, so a batch not yet full is learnt from too (idle time is free)."""
        return (
            len(self._served_groups) >= (1 if idle else self.settings.observe_every)
            or bool(self._audits)
            or self._audit_run is not None
            or self._update is not None
            or self._publish_due()
        )

    def _has_work(self) -> bool:
        """Whether anything at all waits, a batch of served groups not yet full too."""
        return bool(self._served_groups) or self.pending()

    def _publish_due(self) -> bool:
        """Whether the memories learnt something since they were last published and
        ``recency_publish_every`` requests have passed."""
        return (
            self._memory_dirty
            and self.served - self._last_published >= self.settings.recency_publish_every
        )

    def overdue(self) -> bool:
        """Whether pending work has waited more than ``max_lag`` requests."""
        return (
            self._has_work()
            and self._oldest_pending is not None
            and self.served - self._oldest_pending > self.settings.max_lag
        )

    def run_chunk(self) -> None:
        """Runs one bounded piece of background work: the bookkeeping of the groups served
        since the last chunk, one segment of an audit, publishing the memories, or a few
        update steps."""
        started = time.perf_counter()
        kind = self._run_chunk()
        self._route_state = None  # the work may have changed what serving reads
        # Lag counts from the last progress: overdue work gets one forced chunk per max_lag.
        self._oldest_pending = self.served if self._has_work() else None
        self.chunk_seconds.append(time.perf_counter() - started)
        self.chunk_kinds.append(kind)

    def _run_chunk(self) -> str:
        self.chunks += 1
        if self._served_groups:
            while self._served_groups:
                self._observe(*self._served_groups.popleft())
            if self._publish_due() and not any(self._serving_memories):
                # Calibration alone, cheap: in this chunk rather than a chunk of its own.
                self._publish_memories()
            return "observe"
        if self._publish_due():
            self._publish_memories()
            return "memory"
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

    def _publish_memories(self) -> None:
        """Recalibrates each memory's threshold on its outcome window and, where a memory
        serves (or starts or stops serving), swaps the new memories into serving (one
        assignment; only the memories' arrays are packed and sent to the device here, the
        caches' device arrays are reused, see :meth:`_set_serving`). A memory that serves
        and whose calibration finds no certified threshold keeps its own unless its outcomes
        there show it below the target on the Wilson upper bound (the guard's standard): audits
        label only a sample of its hits, so while it serves certifying it anew often fails
        for want of evidence, not for want of agreement."""
        s = self.settings
        was = self._serving_memories
        for j, memory in enumerate(self.memories):
            calibration = self.outcomes[j].calibrate(
                s.recency_target, s.update.confidence, s.update.min_evidence
            )
            threshold = calibration.threshold
            if not calibration.accepted and np.isfinite(memory.threshold):
                held = self.outcomes[j].at(memory.threshold)
                if (
                    held[1] < 1
                    or wilson_upper_bound(held[0], held[1], s.guard_confidence) >= s.recency_target
                ):
                    threshold = memory.threshold
            if threshold != memory.threshold:
                self.memory_log.append(
                    {
                        "served": self.served,
                        "position": self.memory_positions[j],
                        **dataclasses.asdict(calibration),
                        "kept": threshold != calibration.threshold,
                    }
                )
            memory.threshold = threshold
            self.calibrations[j] = calibration
        self._memory_dirty = False
        self._last_published = self.served
        thresholds = self.memory_thresholds()
        if any(was) or np.isfinite(thresholds).any():
            self._memory_arrays = tuple(m.arrays(t) for m, t in zip(self.memories, thresholds))
            self._set_serving(self.params)

    @property
    def _serving_memories(self) -> tuple[bool, ...]:
        """Which memories serve hits now (as published to the routers)."""
        return tuple(bool(np.isfinite(t)) for t in self._memory_thresholds_served())

    def _memory_thresholds_served(self) -> tuple[float, ...]:
        """The thresholds the routers' memories serve at now (as published)."""
        return tuple(float(a["threshold"][0]) for a in self._memory_arrays)

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
            labels, probs = done.value
        self._audit_run = None
        exits = np.array([b[1] for b in batch])
        holdout = np.array([b[2] for b in batch])
        tapped = _stack_rows([b[3] for b in batch])
        weights = np.array([b[4] for b in batch], np.float32)
        sampled = np.array([b[5] for b in batch])
        self.audited += len(batch)
        # Labelled now: the same bookkeeping as a sampled request that ran to the end, over
        # the positions each request passed when it was served (its cache inputs, answers
        # and scores as served).
        everyone = np.ones(len(batch), bool)
        self._learn(tapped, labels, everyone, exits, holdout, sampled, probs, weights, everyone)

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
            # As jax Arrays (immutable; those already on the device stay the same objects):
            # a router reuses only those, so the memory publications after this one send the
            # memories alone, not a shifted NumPy bias's whole flat array each time.
            serving = jax.device_put(serving)
            self._set_serving(serving)
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

    def _set_serving(self, params: tuple[Any, ...]) -> None:
        """The routers' parameters: the caches' ``params`` with the published memories,
        packed and sent to the device now, in the background: left to the next group, a new
        set cost that request about 0.7 ms on the CPU (packed and sent on its critical path),
        once per router: with updates as the only background work, gati-online's p99 read
        1.34x the static caches' that way, 1.11-1.12x now. Caches and memories sit in flat
        arrays of their own (``programs.slot_part``) and a router sends only the arrays whose
        leaves changed, so a memory publication (``params`` the same objects) sends the
        memories alone and the compiled program still takes every array (no recompile)."""
        self.serving_params = slot_params(self.slots, params, self._memory_arrays)
        for router in self._program_routers():
            router.prepare(self.serving_params)

    def nbytes(self) -> int:
        """Bytes the learner holds beside the caches: the replay windows while the caches
        train (otherwise nothing fills them), the recency memories and their outcome
        windows."""
        windows = sum(w.nbytes for w in self.windows) if self.trains else 0
        outcomes = sum(o.scores.nbytes + o.agree.nbytes + o.weights.nbytes for o in self.outcomes)
        return windows + sum(m.nbytes for m in self.memories) + outcomes

    def drain(self) -> None:
        """Runs all pending background work (end of a stream, or tests)."""
        while self._has_work():
            self.run_chunk()

    def _chunks_by_kind(self) -> dict[str, dict[str, float]]:
        """Per kind of background chunk (observe, memory, audit, update, idle): how many ran,
        their median, p99 and longest duration and their total in ms (a request that arrives
        during a chunk waits for it)."""
        out = {}
        seconds, kinds = np.asarray(self.chunk_seconds), np.asarray(self.chunk_kinds)
        for kind in dict.fromkeys(self.chunk_kinds):
            ms = 1e3 * seconds[kinds == kind]
            out[kind] = {
                "count": int(ms.size),
                "p50": float(np.percentile(ms, 50)),
                "p99": float(np.percentile(ms, 99)),
                "max": float(ms.max()),
                "total": float(ms.sum()),
            }
        return out

    def summary(self) -> dict[str, Any]:
        """Counts of updates (and of those that ran optimiser steps, "trained"), parameter
        swaps ("accepted"; "rejected": trained candidates that failed or did no better),
        audits, tapped and alarmed groups, guard switches, window and memory bytes, the
        memories' calibrations, and every update's verdicts and thresholds."""
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
            "memory_bytes": [m.nbytes for m in self.memories],
            "memory_positions": [self.slots[i].position for i in self._memory_slot],
            "memory_log": self.memory_log,
            "memory_guard_events": [dataclasses.asdict(e) for e in self.memory_guard.events],
            "trace_count": (
                sum(
                    r.trace_count for r in (self.router, self.light, self.untapped) if r is not None
                )
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


def _stack_rows(rows: list[tuple[dict[str, np.ndarray], ...]]) -> tuple[dict[str, np.ndarray], ...]:
    """Tapped rows stacked per slot, keeping what every row has (rows of fully and lightly
    tapped groups differ in the caches' inputs)."""
    return tuple(
        {
            key: np.stack([row[i][key] for row in rows])
            for key in set.intersection(*(set(row[i]) for row in rows))
        }
        for i in range(len(rows[0]))
    )


class SlotRouter:
    """A learner's router that takes a deployment's parameters and thresholds, as static
    serving's does (for the benchmark's timings of a request missing every lookup): the
    parameters go into the learner's slots with empty memories (they never hit, though every
    lookup runs), the thresholds to the slots' caches (a learner of memories alone has none:
    its deployment's parameters and thresholds are not read). Everything else is the
    router's."""

    def __init__(self, router: Router, learner: OnlineLearner):
        self._router, self._learner = router, learner
        self._last: tuple[Any, tuple] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._router, name)

    def _args(self, params: tuple[Any, ...], thresholds: Any) -> tuple[tuple, np.ndarray]:
        if self._last is None or self._last[0] is not params:
            learner = self._learner
            # Above every cosine similarity: each memory's lookup runs and never hits (at
            # +inf the compiled program would skip it and a miss would look cheaper than a
            # miss while the memory serves).
            never = learner._empty_memories(threshold=2.0)
            self._last = (params, slot_params(learner.slots, params, never))
        caches = np.asarray(thresholds, np.float32).reshape(-1)
        slots = np.array(
            [
                caches[slot.cache] if slot.cache is not None else np.inf
                for slot in self._learner.slots
            ],
            np.float32,
        )
        return self._last[1], slots

    def compiled(self, params: tuple[Any, ...], thresholds: Any, images: Any, rows: Any) -> Any:
        """The router's compiled program on a deployment's parameters and thresholds."""
        params, thresholds = self._args(params, thresholds)
        return self._router.compiled(params, thresholds, images, rows)

    def hlo_text(self, params: tuple[Any, ...], thresholds: Any, images: Any, rows: Any) -> str:
        """The optimized HLO of :meth:`compiled`."""
        params, thresholds = self._args(params, thresholds)
        return self._router.hlo_text(params, thresholds, images, rows)
