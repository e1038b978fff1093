"""The experiment config schema: every field a config file may set, and its validation.

Config files (``configs/*.py``) start from :func:`base_config` and change a few fields, the
way Flax examples start from ``configs/default.py``. The base is locked, so a typo in a
config file fails at once; :func:`validate_config` also catches unknown keys in configs built
some other way, and values out of range, always naming the offending key.
"""

from __future__ import annotations

import math
from typing import Any

import ml_collections

_SCHEDULES = ("cosine", "onecycle")


class ConfigError(ValueError):
    """A config has an unknown key or an invalid value; the message names the key."""


def base_config() -> ml_collections.ConfigDict:
    """Returns the full, locked config schema with defaults (Fashion-MNIST, narrow ResNet-18)."""
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.data = ml_collections.ConfigDict()
    config.data.name = "fashion_mnist"
    # Empty means: look in the Debian package's directory, then TFDS.
    config.data.data_dir = ""
    # Carved from train; the caches are trained on it later, so it never trains the base.
    config.data.validation_size = 5000
    config.data.split_seed = 0
    config.data.synthetic = ml_collections.ConfigDict()
    config.data.synthetic.num_classes = 10
    config.data.synthetic.image_size = 16
    config.data.synthetic.channels = 1
    config.data.synthetic.train_size = 4000
    config.data.synthetic.test_size = 1000
    config.data.synthetic.hard_fraction = 0.3
    config.data.synthetic.seed = 0

    config.augment = ml_collections.ConfigDict()
    config.augment.flip = True
    config.augment.crop_padding = 2

    config.model = ml_collections.ConfigDict()
    config.model.name = "resnet18"
    # Channels of the first stage; later stages double it (64 is the standard ResNet).
    config.model.width = 16
    # Only for the MLP family.
    config.model.hidden_sizes = (128, 64)

    config.train = ml_collections.ConfigDict()
    config.train.epochs = 8
    config.train.batch_size = 128
    config.train.eval_batch_size = 500
    config.train.learning_rate = 0.1
    config.train.momentum = 0.9
    config.train.nesterov = True
    config.train.weight_decay = 5e-4
    config.train.schedule = "onecycle"
    config.train.warmup_fraction = 0.15
    config.train.checkpoint_every_steps = 200
    config.train.max_to_keep = 2
    # Where the inference-only model (variables + metadata) goes; empty means WORKDIR/model.
    config.train.export_dir = ""

    config.caches = ml_collections.ConfigDict()
    # The exported base model the caches attach to.
    config.caches.checkpoint = "checkpoints/fashion_mnist_resnet18"
    # Candidate positions; empty means every position before the head.
    config.caches.positions = ()
    # The predictor design space (gati_jax/caches/variants.py explains the strings).
    # (conv1-c16-s1-k2-h64, a full-resolution conv head, was on a frontier only at the last
    # position and is left out so that the main job fits in 15 minutes here.)
    config.caches.variants = ("pool-k1", "pool-k2-h64", "pool-k4-h64", "conv3-c16-s2-k2",
                              "fc-d4-h128")
    # Members of each (position, variant) group, trained together by vmap: seeds x rates.
    config.caches.seeds = 1
    # (3e-3 as well doubles the candidates; it won 12 of 45 groups in a run here and cost the
    # main job about two minutes, so the default keeps 1e-2 alone.)
    config.caches.learning_rates = (1e-2,)
    # Predictors train on base answers for this many train-split examples; the validation
    # split trains (first half) and calibrates (second half) the selectors; test reports.
    config.caches.predictor_examples = 10000
    config.caches.test_examples = 10000
    config.caches.epochs = 4
    config.caches.batch_size = 128
    config.caches.temperature = 2.0
    config.caches.distill_weight = 0.7
    config.caches.selector_epochs = 30
    config.caches.selector_learning_rate = 1e-2
    config.caches.selector_hidden = 16
    config.caches.targets = (0.99, 0.98, 0.95)
    # Thresholds must meet each target for the one-sided Wilson lower bound at this confidence
    # on the calibration half (0: the point estimate, which over-fits the calibration sample).
    config.caches.calibration_confidence = 0.95
    config.caches.record_max_bytes = 2 * 1024**3
    config.caches.record_batch_size = 250
    config.caches.latency_batch_size = 1
    config.caches.latency_repeats = 10

    config.policy = ml_collections.ConfigDict()
    # none | gati | confidence | entropy | knn | oracle (gati_jax/runtime/policies.py).
    config.policy.name = "gati"
    # Deployed positions; empty means every explored position (best candidate at each).
    config.policy.positions = ()
    # gati: the precision target whose calibrated thresholds are used (one of caches.targets).
    config.policy.target = 0.99
    # One per deployed position; confidence, entropy and knn (a radius) need them.
    config.policy.thresholds = ()
    config.policy.max_group = 32
    config.policy.knn_capacity = 2000
    config.policy.knn_grid = 2
    config.policy.knn_neighbours = 3

    config.planner = ml_collections.ConfigDict()
    # Plans keep agreement with the base network >= 1 - eps on the tuning data.
    config.planner.eps = 0.01
    # Total bytes of all deployed cache parameters.
    config.planner.memory_budget_bytes = 2 * 1024**2
    # The most a request that exits nowhere may pay over the plain network, as a fraction of
    # it (Apparate's ramp budget; < 0: no bound, plans minimise the mean alone). Held by
    # measurement: the chosen plan's all-miss request is timed (at planner.group_size), and
    # while it breaks the bound its lookups are timed alone, each is charged at least what it
    # measured, and the planner plans again, at most miss_rounds times; if none held it, our
    # plan deploys nothing (gati_jax/planner/miss_bound.py).
    config.planner.max_miss_overhead = -1.0
    config.planner.miss_rounds = 3
    # Which explored candidates the planner may deploy: "frontier" (Pareto) or "all".
    config.planner.candidates = "frontier"
    # Threshold levels per candidate (score quantiles on the tuning data).
    config.planner.grid = 48
    # Agreement must hold for the one-sided Wilson lower bound at this confidence (0: the
    # point estimate on the tuning data, which over-fits it: plans tuned that way missed the
    # bound on the test split by up to 0.35 points).
    config.planner.confidence = 0.95
    # The exhaustive comparator runs on this many evenly spaced positions with a coarse grid.
    config.planner.exhaustive_positions = 6
    config.planner.exhaustive_grid = 4
    # Further bounds planned for the latency/agreement trade-off plot and table.
    config.planner.sweep_eps = (0.02,)
    # Latency profiles: requests per group, where the JSON lives (empty: WORKDIR/profile.json)
    # and whether to measure again even when a profile for this backend exists.
    config.planner.group_size = 1
    config.planner.profile = ""
    config.planner.remeasure = False
    config.planner.latency_repeats = 20
    # Rounds of "measure the lookups our plans chose once more, and the router's charges on
    # the router they chose, plan again" (0: off): a plan favours lookups whose one
    # measurement came out low (the winner's curse), and the charges depend on which caches
    # share a router. A round costs a measurement per newly chosen lookup (2 s), a charge
    # router per changed plan (5 s), a prefix session and a re-plan (10-20 s); the second
    # round measures the charges on the router the first round's re-plan chose.
    config.planner.confirm_rounds = 2
    # Validation requests routed one by one to check predicted against measured latency.
    config.planner.check_requests = 1000

    config.workload = ml_collections.ConfigDict()
    # uniform | temporal | drift | shift (gati_jax/data/workloads.py).
    config.workload.name = "temporal"
    config.workload.split = "test"
    config.workload.length = 600
    config.workload.seed = 0
    # Open-loop arrivals: a Poisson process at this many requests per second.
    config.workload.rate = 100.0
    # temporal: segments of geometric length with this mean, each with a hot set of
    # hot_classes[0]..hot_classes[1] classes that produce hot_fraction of its requests.
    config.workload.hot_classes = (1, 3)
    config.workload.mean_segment = 100
    config.workload.hot_fraction = 0.9
    # drift: Zipf class popularity whose ranking rotates by one class every drift_period.
    config.workload.zipf_exponent = 1.2
    config.workload.drift_period = 500
    # shift: this fraction of segments is corrupted by one of the corruptions at severity.
    config.workload.corruptions = ("noise", "blur", "contrast")
    config.workload.shift_fraction = 0.3
    config.workload.severity = 0.5
    # Requests per window for locality statistics and per-window reports.
    config.workload.window = 100

    config.serving = ml_collections.ConfigDict()
    # open: Poisson arrivals at workload.rate; closed: `concurrency` clients, each sending its
    # next request when the previous one is answered.
    config.serving.mode = "open"
    config.serving.concurrency = 1
    # A group closes when it holds max_group requests or its oldest has waited max_wait_ms.
    config.serving.max_group = 8
    config.serving.max_wait_ms = 0.0
    # virtual: compute is measured for real, waiting for arrivals is simulated (no sleeping);
    # real: the serving loop sleeps until arrivals on the monotonic clock.
    config.serving.clock = "virtual"
    # Compaction (gati_jax/runtime/router.py): after each cache position the rows still
    # running are gathered into a smaller bucket, so a half-exited group stops paying for its
    # exited half (measured: 1.6x the router's throughput at groups of 8 and 32). Off by
    # default: each group-size program then holds the later stages once per smaller bucket
    # (about 3-4x the compile time), for nothing when groups hold one request, as they mostly
    # do at workload.rate. Static policies only; gati-online's tapped router does not compact.
    config.serving.compaction = False

    config.online = ml_collections.ConfigDict()
    # Online learning (gati_jax/online): the planned gati caches keep training on the stream.
    # enabled: the benchmark also serves `gati-online` beside static `gati` on every workload.
    config.online.enabled = True
    # An update (`steps` optax steps per cache, then calibration) every this many requests.
    config.online.update_every = 100
    # After an update that swapped no cache in, the next waits twice as long, up to this
    # many times update_every (1: a fixed pace); an accepted update or a guard switch resets.
    config.online.max_backoff = 8
    # Fraction of hits also run through the full network off the critical path (shadow
    # audit): labels for the windows and unbiased evidence for the accuracy guard.
    config.online.audit_fraction = 0.1
    # Fraction of request groups served by the tapped program (>= audit_fraction): only
    # these yield activations to learn from; the rest run the untapped program, as fast as
    # the static caches (tapping cost a request 5-8% at batch 1; measured on the long
    # stream: gati-online's compute 1.19-1.20x the static caches' at 1.0, 1.11-1.15x at 0.3).
    config.online.tap_fraction = 0.3
    # True: the groups not learnt from run the tapped program too (their taps dropped), so
    # serving keeps one program hot instead of switching between two that evict each other's
    # weights; False: they run the static caches' untapped program. Measured on the long
    # temporal stream (two runs each, alternating, before updates stopped costing the next
    # requests a packing of the parameters): gati-online's mean latency 1.15-1.17x the
    # static caches' with one program, 1.19-1.20x with two, its p99 unchanged (2.68-2.74 ms
    # both ways); each tapped request costs ~5% more warm, and with one program every request
    # pays it. Too small a gain to change the default.
    config.online.single_program = False
    # Audited requests per background chunk: bigger groups are cheaper per request, but a
    # request arriving meanwhile waits for the whole group (full network, batch 1: ~3 ms).
    config.online.audit_group = 1
    # An audit runs the plain network in this many segments of consecutive stages, one per
    # background chunk, so a request arriving meanwhile waits for one segment, not the whole
    # network (gati_jax/runtime/segments.py).
    config.online.audit_segments = 3
    # Replay window per deployed position: at most this many bytes and this many items.
    config.online.window_bytes = 1 << 20
    config.online.window_items = 1024
    # The held-out ring (threshold calibration) is 1/holdout_every of a window; it takes
    # every other request of the audit sample (a uniform sample of the stream).
    config.online.holdout_every = 4
    # Background work that has waited this many requests runs between groups anyway.
    config.online.max_lag = 200
    config.online.learning_rate = 3e-3
    config.online.steps = 20
    # Optimiser steps per background chunk: a request waits for at most one chunk.
    # (One step of a conv head on a batch of 64 took 11 ms here; of 32, about half.)
    config.online.steps_per_chunk = 1
    config.online.batch_size = 32
    # Hit agreement the calibration keeps on the held-out slice and the guard defends.
    config.online.target = 0.99
    # 0: calibrate on the held-out point estimate; > 0: on its Wilson lower bound. Held-out
    # slices are small; on the point estimate thresholds swing and agreement slips (measured).
    config.online.calibration_confidence = 0.9
    # Labelled items a window needs (training / held out) before its cache updates.
    config.online.min_train = 32
    config.online.min_holdout = 16
    # Held-out hits a verdict needs before new parameters, a new threshold or a new prior
    # shift may serve: fewer is luck, not evidence (see OnlineTrainer.judge).
    config.online.min_evidence = 50
    # The accuracy guard: off when the Wilson upper bound (guard_confidence) of the last
    # guard_window audited would-be hits falls below target (after guard_min_samples), back
    # on after guard_recover_samples fresh outcomes agree at the target.
    config.online.guard = True
    config.online.guard_window = 200
    config.online.guard_confidence = 0.95
    config.online.guard_min_samples = 30
    config.online.guard_recover_samples = 50
    # While the guard's alarm is up (a cache on duty looks worse than the target, undecided
    # yet: see gati_jax/online/guard.py) this fraction of requests is audited instead of
    # audit_fraction, so a drifting cache is switched off sooner (0: no alarm audits).
    config.online.alarm_audit_fraction = 0.5
    # True: an alarmed position also serves no hit until its alarm falls or the guard
    # decides. Off: on the long shift stream it lifted the worst window (0.916 -> 0.972) but
    # kept fewer windows at >= 0.99 (5 of 8 against 7 of 8; one run each, README).
    config.online.alarm_suspends = False
    # Label-free covariate-shift detection (gati_jax/online/shift.py): a CUSUM of tapped
    # requests whose first cache input lies beyond the shift_quantile of its class in
    # shift_reference validation images, the in-distribution 1 - shift_quantile against
    # shift_rate, alarm at shift_level. While it is up no cache serves a hit until audited
    # outcomes on the new inputs show it agrees (guard_recover_samples at the target), and
    # alarm_audit_fraction of requests is tapped and audited. Needs guard. Level 8, not 6:
    # replayed on clean test requests, 6 raised 2.2 false alarms per 4,000 tapped requests
    # (one cost the main job's uniform stream 3.5 points of hit rate), 8 raised 0.26, for an
    # alarm 1 tapped request later on contrast, 8 on noise (shift.py).
    config.online.shift_detect = True
    config.online.shift_reference = 2000
    config.online.shift_quantile = 0.95
    config.online.shift_rate = 0.5
    config.online.shift_level = 8.0
    # Label-shift correction: each update adds log p_recent(c) - log p_train(c) to the
    # caches' output logits, p_recent from the last prior_window served answers (0: off).
    config.online.prior_window = 300
    # The shift is multiplied by this (1: the full Bayes correction; it cost agreement).
    config.online.prior_strength = 0.5
    config.online.seed = 0

    config.mesh = ml_collections.ConfigDict()
    # Devices to use (0: every local device, or every device of every host), data-parallel;
    # model_parallel of them also split exploration's candidate groups (gati_jax/sharding.py).
    config.mesh.devices = 0
    config.mesh.model_parallel = 1
    # One process per host: jax.distributed.initialize() before anything else.
    config.mesh.multihost = False

    config.benchmark = ml_collections.ConfigDict()
    # scripts/benchmark.py: every policy on every workload, each planned for planner.eps.
    config.benchmark.workloads = ("uniform", "temporal", "shift")
    config.benchmark.policies = ("none", "gati", "confidence", "entropy", "apparate", "knn",
                                 "oracle")
    # Rounds per (workload, policy), in rotating policy order; figures are medians over rounds.
    config.benchmark.rounds = 3
    # With the virtual clock, policies serve interleaved, this many groups per turn.
    config.benchmark.turn = 25
    # Serving throughput vs device count (gati_jax/experiments/device_scaling.py): these counts, empty
    # = 1, 2, 4, ... up to the visible devices; group = closed-loop clients per count.
    config.benchmark.device_counts = ()
    config.benchmark.scaling_group = 32
    config.benchmark.scaling_requests = 256

    config.lock()
    return config


def _check_keys(config: ml_collections.ConfigDict, schema: ml_collections.ConfigDict,
                prefix: str) -> None:
    for key in config.keys():
        path = f"{prefix}{key}"
        if key not in schema:
            raise ConfigError(
                f"unknown config key '{path}'; known keys here: {sorted(schema.keys())}")
        if isinstance(schema[key], ml_collections.ConfigDict):
            if not isinstance(config[key], ml_collections.ConfigDict):
                raise ConfigError(f"config key '{path}' must be a section, got {config[key]!r}")
            _check_keys(config[key], schema[key], path + ".")


def _require(condition: bool, key: str, value: Any, expectation: str) -> None:
    if not condition:
        raise ConfigError(f"invalid config value {key}={value!r}: {expectation}")


def validate_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Checks keys against the schema and values against their ranges; returns the config."""
    # Imported here because the registries import this module's ConfigError.
    from gati_jax import data, models

    _check_keys(config, base_config(), "")
    d, m, t, a = config.data, config.model, config.train, config.augment
    _require(d.name in data.available_datasets(), "data.name", d.name,
             f"one of {list(data.available_datasets())}")
    _require(m.name in models.available_networks(), "model.name", m.name,
             f"one of {list(models.available_networks())}")
    _require(int(d.validation_size) > 0, "data.validation_size", d.validation_size, "> 0")
    _require(0.0 <= d.synthetic.hard_fraction <= 1.0, "data.synthetic.hard_fraction",
             d.synthetic.hard_fraction, "in [0, 1]")
    _require(int(m.width) > 0, "model.width", m.width, "> 0")
    _require(all(int(h) > 0 for h in m.hidden_sizes), "model.hidden_sizes", m.hidden_sizes,
             "positive sizes")
    _require(int(a.crop_padding) >= 0, "augment.crop_padding", a.crop_padding, ">= 0")
    _require(int(t.epochs) >= 1, "train.epochs", t.epochs, ">= 1")
    _require(int(t.batch_size) >= 1, "train.batch_size", t.batch_size, ">= 1")
    _require(int(t.eval_batch_size) >= 1, "train.eval_batch_size", t.eval_batch_size, ">= 1")
    _require(t.learning_rate > 0, "train.learning_rate", t.learning_rate, "> 0")
    _require(0 <= t.momentum < 1, "train.momentum", t.momentum, "in [0, 1)")
    _require(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, ">= 0")
    _require(t.schedule in _SCHEDULES, "train.schedule", t.schedule, f"one of {_SCHEDULES}")
    _require(0 < t.warmup_fraction < 1, "train.warmup_fraction", t.warmup_fraction, "in (0, 1)")
    _require(int(t.checkpoint_every_steps) >= 1, "train.checkpoint_every_steps",
             t.checkpoint_every_steps, ">= 1")
    _require(int(t.max_to_keep) >= 1, "train.max_to_keep", t.max_to_keep, ">= 1")
    _validate_caches(config.caches)
    _validate_policy(config.policy, config.caches)
    _validate_planner(config.planner)
    _validate_benchmark(config.benchmark)
    _validate_workload(config.workload)
    _validate_serving(config.serving)
    _validate_online(config.online)
    _require(int(config.mesh.devices) >= 0, "mesh.devices", config.mesh.devices,
             ">= 0 (0: all devices)")
    _require(int(config.mesh.model_parallel) >= 1, "mesh.model_parallel",
             config.mesh.model_parallel, ">= 1")
    return config


def _validate_caches(c: ml_collections.ConfigDict) -> None:
    from gati_jax.caches.variants import VariantError, parse_variant

    _require(len(c.variants) > 0, "caches.variants", c.variants, "at least one variant")
    for text in c.variants:
        try:
            parse_variant(text)
        except VariantError as error:
            raise ConfigError(f"invalid config value caches.variants: {error}") from None
    _require(all(int(p) >= 0 for p in c.positions), "caches.positions", c.positions, ">= 0")
    _require(int(c.seeds) >= 1, "caches.seeds", c.seeds, ">= 1")
    _require(len(c.learning_rates) > 0 and all(lr > 0 for lr in c.learning_rates),
             "caches.learning_rates", c.learning_rates, "positive rates")
    for key in ("predictor_examples", "test_examples", "epochs", "batch_size", "selector_epochs",
                "selector_hidden", "record_batch_size", "latency_batch_size", "latency_repeats"):
        _require(int(c[key]) >= 1, f"caches.{key}", c[key], ">= 1")
    _require(c.temperature > 0, "caches.temperature", c.temperature, "> 0")
    _require(0 <= c.distill_weight <= 1, "caches.distill_weight", c.distill_weight, "in [0, 1]")
    _require(all(0 < t < 1 for t in c.targets) and len(c.targets) > 0, "caches.targets",
             c.targets, "precision targets in (0, 1)")
    _require(0 <= c.calibration_confidence < 1, "caches.calibration_confidence",
             c.calibration_confidence, "in [0, 1)")
    _require(int(c.record_max_bytes) > 0, "caches.record_max_bytes", c.record_max_bytes, "> 0")


def _validate_policy(p: ml_collections.ConfigDict, caches: ml_collections.ConfigDict) -> None:
    from gati_jax.runtime import available_policies

    names = ("none", *available_policies())
    _require(p.name in names, "policy.name", p.name, f"one of {list(names)}")
    _require(any(abs(p.target - t) < 1e-12 for t in caches.targets), "policy.target", p.target,
             f"one of caches.targets {tuple(caches.targets)} (only those are calibrated)")
    _require(not p.thresholds or not p.positions or len(p.thresholds) == len(p.positions),
             "policy.thresholds", p.thresholds, "one per entry of policy.positions")
    _require(p.name not in ("confidence", "entropy", "knn") or len(p.thresholds) > 0,
             "policy.thresholds", p.thresholds, f"policy '{p.name}' needs thresholds")
    for key in ("max_group", "knn_capacity", "knn_grid", "knn_neighbours"):
        _require(int(p[key]) >= 1, f"policy.{key}", p[key], ">= 1")


def _validate_planner(p: ml_collections.ConfigDict) -> None:
    _require(0 <= p.eps < 1, "planner.eps", p.eps, "in [0, 1)")
    _require(p.memory_budget_bytes >= 0, "planner.memory_budget_bytes", p.memory_budget_bytes,
             ">= 0")
    _require(p.candidates in ("frontier", "all"), "planner.candidates", p.candidates,
             "'frontier' or 'all'")
    _require(0 <= p.confidence < 1, "planner.confidence", p.confidence, "in [0, 1)")
    _require(all(0 <= e < 1 for e in p.sweep_eps), "planner.sweep_eps", p.sweep_eps,
             "bounds in [0, 1)")
    for key in ("grid", "exhaustive_positions", "exhaustive_grid", "group_size",
                "latency_repeats", "check_requests"):
        _require(int(p[key]) >= 1, f"planner.{key}", p[key], ">= 1")
    _require(int(p.confirm_rounds) >= 0, "planner.confirm_rounds", p.confirm_rounds, ">= 0")
    _require(int(p.miss_rounds) >= 0, "planner.miss_rounds", p.miss_rounds, ">= 0")
    _require(isinstance(p.max_miss_overhead, (int, float))
             and math.isfinite(p.max_miss_overhead), "planner.max_miss_overhead",
             p.max_miss_overhead, "a finite fraction (negative: no bound)")


def _validate_workload(w: ml_collections.ConfigDict) -> None:
    from gati_jax.data.workloads import CORRUPTIONS, available_workloads

    _require(w.name in available_workloads(), "workload.name", w.name,
             f"one of {list(available_workloads())}")
    _require(w.split in ("train", "validation", "test"), "workload.split", w.split,
             "'train', 'validation' or 'test'")
    _require(int(w.length) >= 1, "workload.length", w.length, ">= 1")
    # numpy seed sequences take only non-negative integers.
    _require(int(w.seed) >= 0, "workload.seed", w.seed, ">= 0")
    _require(w.rate > 0, "workload.rate", w.rate, "> 0")
    _require(len(w.hot_classes) == 2 and 1 <= int(w.hot_classes[0]) <= int(w.hot_classes[1]),
             "workload.hot_classes", w.hot_classes, "(low, high) with 1 <= low <= high")
    _require(w.mean_segment >= 1, "workload.mean_segment", w.mean_segment, ">= 1")
    _require(0 < w.hot_fraction <= 1, "workload.hot_fraction", w.hot_fraction, "in (0, 1]")
    _require(w.zipf_exponent > 0, "workload.zipf_exponent", w.zipf_exponent, "> 0")
    _require(int(w.drift_period) >= 1, "workload.drift_period", w.drift_period, ">= 1")
    _require(len(w.corruptions) > 0 and all(c in CORRUPTIONS for c in w.corruptions),
             "workload.corruptions", w.corruptions, f"a non-empty subset of {list(CORRUPTIONS)}")
    _require(0 <= w.shift_fraction <= 1, "workload.shift_fraction", w.shift_fraction,
             "in [0, 1]")
    _require(0 < w.severity <= 1, "workload.severity", w.severity, "in (0, 1]")
    _require(int(w.window) >= 2, "workload.window", w.window, ">= 2")


def _validate_serving(s: ml_collections.ConfigDict) -> None:
    from gati_jax.serving import CLOCKS, MODES

    _require(s.mode in MODES, "serving.mode", s.mode, f"one of {MODES}")
    _require(int(s.concurrency) >= 1, "serving.concurrency", s.concurrency, ">= 1")
    _require(int(s.max_group) >= 1, "serving.max_group", s.max_group, ">= 1")
    _require(0 <= s.max_wait_ms < float("inf"), "serving.max_wait_ms", s.max_wait_ms,
             "finite and >= 0")
    _require(s.clock in CLOCKS, "serving.clock", s.clock, f"one of {CLOCKS}")


def _validate_online(o: ml_collections.ConfigDict) -> None:
    _require(int(o.steps) >= 0, "online.steps", o.steps, ">= 0 (0: no optimiser steps)")
    for key in ("update_every", "max_backoff", "window_items", "max_lag", "steps_per_chunk",
                "audit_group", "audit_segments", "batch_size", "min_train", "min_holdout",
                "guard_window", "guard_min_samples", "guard_recover_samples"):
        _require(int(o[key]) >= 1, f"online.{key}", o[key], ">= 1")
    _require(int(o.seed) >= 0, "online.seed", o.seed, ">= 0")
    _require(int(o.min_evidence) >= 0, "online.min_evidence", o.min_evidence, ">= 0")
    _require(int(o.prior_window) >= 0, "online.prior_window", o.prior_window, ">= 0")
    _require(0 <= o.prior_strength <= 1, "online.prior_strength", o.prior_strength,
             "in [0, 1]")
    _require(0 <= o.audit_fraction <= 1, "online.audit_fraction", o.audit_fraction, "in [0, 1]")
    _require(0 <= o.alarm_audit_fraction <= 1, "online.alarm_audit_fraction",
             o.alarm_audit_fraction, "in [0, 1]")
    _require(0 < o.tap_fraction <= 1 and o.tap_fraction >= o.audit_fraction,
             "online.tap_fraction", o.tap_fraction,
             "in (0, 1] and >= online.audit_fraction (the audit sample is drawn among tapped "
             "requests)")
    _require(not o.shift_detect or o.guard, "online.shift_detect", o.shift_detect,
             "False unless online.guard (the guard acts on the alarm)")
    _require(int(o.shift_reference) >= 20, "online.shift_reference", o.shift_reference,
             ">= 20 (reference images)")
    _require(0 < o.shift_quantile < 1, "online.shift_quantile", o.shift_quantile, "in (0, 1)")
    _require(1 - o.shift_quantile < o.shift_rate < 1, "online.shift_rate", o.shift_rate,
             "in (1 - shift_quantile, 1): the exceedance rate to detect")
    _require(o.shift_level > 0, "online.shift_level", o.shift_level, "> 0")
    _require(int(o.window_bytes) > 0, "online.window_bytes", o.window_bytes, "> 0")
    _require(int(o.holdout_every) >= 2, "online.holdout_every", o.holdout_every, ">= 2")
    _require(o.learning_rate > 0, "online.learning_rate", o.learning_rate, "> 0")
    _require(0 < o.target <= 1, "online.target", o.target, "in (0, 1]")
    _require(0 <= o.calibration_confidence < 1, "online.calibration_confidence",
             o.calibration_confidence, "in [0, 1)")
    _require(0 <= o.guard_confidence < 1, "online.guard_confidence", o.guard_confidence,
             "in [0, 1)")
    _require(int(o.guard_window) >= max(int(o.guard_min_samples),
                                        int(o.guard_recover_samples)),
             "online.guard_window", o.guard_window,
             ">= guard_min_samples and guard_recover_samples")


def _validate_benchmark(b: ml_collections.ConfigDict) -> None:
    from gati_jax.data.workloads import available_workloads

    known = ("none", "gati", "confidence", "entropy", "apparate", "knn", "oracle")
    _require(len(b.workloads) > 0 and all(w in available_workloads() for w in b.workloads),
             "benchmark.workloads", b.workloads, f"workloads among {available_workloads()}")
    _require(len(b.policies) > 0 and all(p in known for p in b.policies) and "none" in b.policies,
             "benchmark.policies", b.policies, f"policies among {known}, including 'none'")
    _require(int(b.rounds) >= 1, "benchmark.rounds", b.rounds, ">= 1")
    _require(int(b.turn) >= 1, "benchmark.turn", b.turn, ">= 1")
    _require(all(int(d) >= 1 for d in b.device_counts), "benchmark.device_counts",
             b.device_counts, "positive device counts")
    _require(int(b.scaling_group) >= 1, "benchmark.scaling_group", b.scaling_group, ">= 1")
    _require(int(b.scaling_requests) >= 1, "benchmark.scaling_requests", b.scaling_requests,
             ">= 1")
