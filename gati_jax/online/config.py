"""Config section ``online``: how the planned gati caches keep learning from the stream, and
the guard that defends their agreement; the only place its defaults live."""

from __future__ import annotations

import ml_collections

from gati_jax.config_checks import require, require_at_least


def online_config() -> ml_collections.ConfigDict:
    """The ``online`` section (gati_jax/online)."""
    c = ml_collections.ConfigDict()
    # enabled: the benchmark also serves `gati-online` beside static `gati` on every workload.
    c.enabled = True
    # An update (`steps` optax steps per cache, then calibration) every this many requests.
    c.update_every = 100
    # After an update that swapped no cache in, the next waits twice as long, up to this
    # many times update_every (1: a fixed pace); an accepted update or a guard switch resets.
    c.max_backoff = 8
    # Fraction of hits also run through the full network off the critical path (shadow
    # audit): labels for the windows and unbiased evidence for the accuracy guard.
    c.audit_fraction = 0.1
    # Fraction of request groups served by the tapped program (>= audit_fraction): only
    # these yield activations to learn from; the rest run the untapped program, as fast as
    # the static caches, because tapping costs every tapped request a few percent.
    c.tap_fraction = 0.3
    # True: the groups not learnt from run the tapped program too (their taps dropped), so
    # serving keeps one program hot instead of two that evict each other's weights.
    c.single_program = False
    # Audited requests per background chunk: bigger groups are cheaper per request, but a
    # request arriving meanwhile waits for the whole group. 8 (with audit_segments 1): every
    # chunk leaves the next request a cold machine, and on a uniform stream (1,500 requests,
    # 3 rounds, virtual clock) gati-online served at 0.80x static gati's speed with single
    # audits in 3 segments (369 audit chunks), 0.88-0.92x with groups of 8 in one (94).
    c.audit_group = 8
    # An audit runs the plain network in this many segments of consecutive stages, one per
    # background chunk, so a request arriving meanwhile waits for one segment, not the whole
    # network (gati_jax/runtime/segments.py). 1: whole; more segments bound a request's
    # wait behind an audit but add chunks (see audit_group); 0: one per 10 stages of the
    # base network (runtime/segments.py: STAGES_PER_SEGMENT), so a deep network's audits
    # are cut where a shallow one's are not.
    c.audit_segments = 0
    # Replay window per deployed position: at most this many bytes and this many items.
    c.window_bytes = 1 << 20
    c.window_items = 1024
    # The held-out ring (threshold calibration) is 1/holdout_every of a window; it takes
    # every other request of the audit sample (a uniform sample of the stream).
    c.holdout_every = 4
    # Background work that has waited this many requests runs between groups anyway.
    c.max_lag = 200
    # Served groups are learnt from (windows, memories, audit queue, guard) this many at a
    # time, one background chunk for all: each chunk leaves the next request a cold machine.
    c.observe_every = 8
    c.learning_rate = 3e-3
    # Optimiser steps per cache per update (0: the caches keep their parameters; thresholds,
    # the prior shift and the recency memories still learn). 0 by default: on the shipped
    # ResNet-18 no trained candidate was ever swapped in (0 of 18 on a video stream, 0 of 17
    # on the long temporal one, see docs/online.md), while the fully tapped program and the
    # steps cost every stream time.
    c.steps = 0
    # Optimiser steps per background chunk: a request waits for at most one chunk.
    c.steps_per_chunk = 1
    c.batch_size = 32
    # Hit agreement the calibration keeps on the held-out slice and the guard defends.
    c.target = 0.99
    # 0: calibrate on the held-out point estimate; > 0: on its Wilson lower bound. Held-out
    # slices are small, so on the point estimate thresholds swing and agreement slips.
    c.calibration_confidence = 0.9
    # Labelled items a window needs (training / held out) before its cache updates.
    c.min_train = 32
    c.min_holdout = 16
    # Held-out hits a verdict needs before new parameters, a new threshold or a new prior
    # shift may serve: fewer is luck, not evidence (see OnlineTrainer.judge).
    c.min_evidence = 50
    # The accuracy guard: off when the Wilson upper bound (guard_confidence) of the last
    # guard_window audited would-be hits falls below target (after guard_min_samples), back
    # on after guard_recover_samples fresh outcomes agree at the target.
    c.guard = True
    c.guard_window = 200
    c.guard_confidence = 0.95
    c.guard_min_samples = 30
    c.guard_recover_samples = 50
    # While the guard's alarm is up (a cache on duty looks worse than the target, undecided
    # yet: see gati_jax/online/guard.py) this fraction of requests is audited instead of
    # audit_fraction, so a drifting cache is switched off sooner (0: no alarm audits).
    c.alarm_audit_fraction = 0.5
    # True: an alarmed position also serves no hit until its alarm falls or the guard
    # decides; it trades hit rate in every alarm for a better worst window.
    c.alarm_suspends = False
    # Label-free covariate-shift detection (gati_jax/online/shift.py): a CUSUM of tapped
    # requests whose first cache input lies beyond the shift_quantile of its class in
    # shift_reference validation images, the in-distribution 1 - shift_quantile against
    # shift_rate, alarm at shift_level. While it is up no cache serves a hit until audited
    # outcomes on the new inputs show it agrees (guard_recover_samples at the target), and
    # alarm_audit_fraction of requests is tapped and audited. Needs guard. A higher level
    # raises fewer false alarms on clean streams for a few more requests of delay on shifts.
    c.shift_detect = True
    c.shift_reference = 2000
    c.shift_quantile = 0.95
    c.shift_rate = 0.5
    c.shift_level = 8.0
    # The alarm falls only once, besides the CUSUM being back at zero, the exceedance rate
    # averaged over about shift_fall_window requests is at most shift_fall_rate (in
    # (1 - shift_quantile, shift_rate]): inputs shifted a little (a camera's lighting and
    # noise) keep it up instead of raising and dropping it over and over.
    c.shift_fall_rate = 0.1
    c.shift_fall_window = 100
    # Label-shift correction: each update adds log p_recent(c) - log p_train(c) to the
    # caches' output logits, p_recent from the last prior_window served answers (0: off).
    c.prior_window = 300
    # The shift is multiplied by this (1: the full Bayes correction, which costs agreement).
    c.prior_strength = 0.5
    # apparate-online (gati_jax/online/apparate.py): Apparate re-tuning while it serves, fed
    # by the same audit sample (audit_fraction, audit_group, audit_segments). In audited
    # requests: the sliding window it tunes on (a tuning meets planner.eps on it at
    # calibration_confidence, so it waits for a window that can certify that: 163 requests
    # for eps 0.01 at 0.9), the fewest it tunes on, how often it checks the served agreement
    # (a violation re-tunes; a repeated one closes the failing ramps), re-tunes anyway, and
    # adjusts its ramps.
    c.apparate_window = 300
    c.apparate_min_window = 100
    c.apparate_check = 10
    c.apparate_retune_every = 50
    c.apparate_ramp_every = 100
    # Recency memory (gati_jax/online/recency.py): the first recency_positions deployed
    # positions (0: none) also keep the keys of recently labelled requests (their activation
    # pooled to recency_grid x recency_grid, unit length) with the base answers, at most
    # recency_capacity of them (the oldest overwritten first); a lookup hits when its
    # recency_neighbours nearest keys agree and the farthest of them is similar enough.
    c.recency_positions = 1
    # True: the first memory sits at stage 0 instead (the cheapest exit), the others at the
    # first deployed positions. Off: on the ResNet-56 it hit less, and less accurately, than
    # at the plan's first cache, and its own slot cost every request (docs/online.md).
    c.recency_earliest = False
    c.recency_capacity = 128
    c.recency_grid = 7
    c.recency_neighbours = 8
    # A label whose base answer had a top softmax probability below this is stored as
    # unsure and vetoes hits near it (the base network's answer flickers there).
    c.recency_min_base_prob = 0.8
    # The memory's similarity threshold is the lowest whose would-be hits, over its last
    # recency_outcomes labelled outcomes (weighted by the inverse of the probability that
    # each was labelled), agree at recency_target on the Wilson lower bound at
    # calibration_confidence, with at least min_evidence of them; its own accuracy guard
    # defends the same target.
    c.recency_target = 0.98
    c.recency_outcomes = 1000
    # New memory contents and thresholds are published to serving (packed and sent to the
    # device in a background chunk) at most once per this many requests.
    c.recency_publish_every = 8
    # Fraction of a memory's hits audited (at least audit_fraction): only audits label them,
    # so this bounds how long the memory answers a new scene that looks like the last one
    # as the last one.
    c.recency_audit_fraction = 0.3
    c.seed = 0
    return c


def validate_online(o: ml_collections.ConfigDict) -> None:
    """Checks the ``online`` section."""
    require(int(o.steps) >= 0, "online.steps", o.steps, ">= 0 (0: no optimiser steps)")
    require_at_least(
        o,
        "online",
        (
            "update_every",
            "max_backoff",
            "window_items",
            "max_lag",
            "observe_every",
            "steps_per_chunk",
            "audit_group",
            "batch_size",
            "min_train",
            "min_holdout",
            "guard_window",
            "guard_min_samples",
            "guard_recover_samples",
            "apparate_window",
            "apparate_min_window",
            "apparate_check",
            "apparate_retune_every",
            "apparate_ramp_every",
            "recency_capacity",
            "recency_grid",
            "recency_neighbours",
            "recency_outcomes",
            "recency_publish_every",
        ),
        1,
    )
    require(
        int(o.apparate_min_window) <= int(o.apparate_window),
        "online.apparate_min_window",
        o.apparate_min_window,
        "<= online.apparate_window",
    )
    require_at_least(
        o,
        "online",
        ("seed", "min_evidence", "prior_window", "recency_positions", "audit_segments"),
        0,
    )
    require(
        int(o.recency_neighbours) <= int(o.recency_capacity),
        "online.recency_neighbours",
        o.recency_neighbours,
        "<= online.recency_capacity",
    )
    require(
        0 <= o.recency_min_base_prob <= 1,
        "online.recency_min_base_prob",
        o.recency_min_base_prob,
        "in [0, 1]",
    )
    require(0 < o.recency_target <= 1, "online.recency_target", o.recency_target, "in (0, 1]")
    require(
        0 <= o.recency_audit_fraction <= 1,
        "online.recency_audit_fraction",
        o.recency_audit_fraction,
        "in [0, 1]",
    )
    require(0 <= o.prior_strength <= 1, "online.prior_strength", o.prior_strength, "in [0, 1]")
    require(0 <= o.audit_fraction <= 1, "online.audit_fraction", o.audit_fraction, "in [0, 1]")
    require(
        0 <= o.alarm_audit_fraction <= 1,
        "online.alarm_audit_fraction",
        o.alarm_audit_fraction,
        "in [0, 1]",
    )
    require(
        0 < o.tap_fraction <= 1 and o.tap_fraction >= o.audit_fraction,
        "online.tap_fraction",
        o.tap_fraction,
        "in (0, 1] and >= online.audit_fraction (the audit sample is drawn among tapped requests)",
    )
    require(
        not o.shift_detect or o.guard,
        "online.shift_detect",
        o.shift_detect,
        "False unless online.guard (the guard acts on the alarm)",
    )
    require(
        int(o.shift_reference) >= 20,
        "online.shift_reference",
        o.shift_reference,
        ">= 20 (reference images)",
    )
    require(0 < o.shift_quantile < 1, "online.shift_quantile", o.shift_quantile, "in (0, 1)")
    require(
        1 - o.shift_quantile < o.shift_rate < 1,
        "online.shift_rate",
        o.shift_rate,
        "in (1 - shift_quantile, 1): the exceedance rate to detect",
    )
    require(o.shift_level > 0, "online.shift_level", o.shift_level, "> 0")
    require(
        1 - o.shift_quantile < o.shift_fall_rate <= o.shift_rate,
        "online.shift_fall_rate",
        o.shift_fall_rate,
        "in (1 - shift_quantile, shift_rate]",
    )
    require(int(o.shift_fall_window) >= 1, "online.shift_fall_window", o.shift_fall_window, ">= 1")
    require(int(o.window_bytes) > 0, "online.window_bytes", o.window_bytes, "> 0")
    require(int(o.holdout_every) >= 2, "online.holdout_every", o.holdout_every, ">= 2")
    require(o.learning_rate > 0, "online.learning_rate", o.learning_rate, "> 0")
    require(0 < o.target <= 1, "online.target", o.target, "in (0, 1]")
    require(
        0 <= o.calibration_confidence < 1,
        "online.calibration_confidence",
        o.calibration_confidence,
        "in [0, 1)",
    )
    require(0 <= o.guard_confidence < 1, "online.guard_confidence", o.guard_confidence, "in [0, 1)")
    require(
        int(o.guard_window) >= max(int(o.guard_min_samples), int(o.guard_recover_samples)),
        "online.guard_window",
        o.guard_window,
        ">= guard_min_samples and guard_recover_samples",
    )
