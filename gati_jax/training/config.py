"""Config section ``train``: the base network's optimiser, schedule and checkpoints."""

from __future__ import annotations

import ml_collections

from gati_jax.config_checks import require, require_at_least

SCHEDULES = ("cosine", "onecycle")


def train_config() -> ml_collections.ConfigDict:
    """The ``train`` section (gati_jax/training)."""
    c = ml_collections.ConfigDict()
    c.epochs = 8
    # At least this many optimiser steps: where train.epochs would run fewer (a small train
    # split), the epochs are raised until they run this many, and the run is evaluated (and
    # its history written) at about train.epochs evenly spaced epochs; a log line says so.
    # 0: exactly train.epochs. 2,000 leaves Fashion-MNIST (429 steps an epoch) as it is.
    c.min_steps = 2000
    c.batch_size = 128
    c.eval_batch_size = 500
    c.learning_rate = 0.1
    c.momentum = 0.9
    c.nesterov = True
    c.weight_decay = 5e-4
    c.schedule = "onecycle"
    c.warmup_fraction = 0.15
    c.checkpoint_every_steps = 200
    c.max_to_keep = 2
    # Where the inference-only model (variables + metadata) goes; empty means WORKDIR/model.
    c.export_dir = ""
    return c


def validate_train(t: ml_collections.ConfigDict) -> None:
    """Checks the ``train`` section."""
    require_at_least(
        t,
        "train",
        ("epochs", "batch_size", "eval_batch_size", "checkpoint_every_steps", "max_to_keep"),
        1,
    )
    require_at_least(t, "train", ("min_steps",), 0)
    require(t.learning_rate > 0, "train.learning_rate", t.learning_rate, "> 0")
    require(0 <= t.momentum < 1, "train.momentum", t.momentum, "in [0, 1)")
    require(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, ">= 0")
    require(t.schedule in SCHEDULES, "train.schedule", t.schedule, f"one of {SCHEDULES}")
    require(0 < t.warmup_fraction < 1, "train.warmup_fraction", t.warmup_fraction, "in (0, 1)")
