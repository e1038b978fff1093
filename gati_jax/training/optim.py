"""The base network's optimiser: SGD with momentum, decoupled-from-BN weight decay, a schedule."""

from __future__ import annotations

import dataclasses

import jax
import ml_collections
import optax


def make_schedule(train_config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """One-cycle or warm-up + cosine learning-rate schedule over ``total_steps``."""
    peak = float(train_config.learning_rate)
    if train_config.schedule == "onecycle":
        return optax.cosine_onecycle_schedule(
            transition_steps=total_steps,
            peak_value=peak,
            pct_start=float(train_config.warmup_fraction),
            div_factor=25.0,
            final_div_factor=1e3,
        )
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak,
        warmup_steps=max(1, int(train_config.warmup_fraction * total_steps)),
        decay_steps=total_steps,
    )


def _decay_mask(params):
    # Batch-norm scales and biases are 1-D; decaying them only hurts.
    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(
    train_config: ml_collections.ConfigDict, total_steps: int
) -> optax.GradientTransformation:
    """SGD (Nesterov) momentum with weight decay on kernels only, following the schedule."""
    return optax.chain(
        optax.add_decayed_weights(float(train_config.weight_decay), mask=_decay_mask),
        optax.sgd(
            make_schedule(train_config, total_steps),
            momentum=float(train_config.momentum),
            nesterov=bool(train_config.nesterov),
        ),
    )


@dataclasses.dataclass(frozen=True)
class EpochSchedule:
    """How many epochs a run trains and when it is evaluated (:func:`epoch_schedule`)."""

    steps_per_epoch: int
    epochs: int  # train.epochs, raised to reach train.min_steps
    eval_every: int  # epochs between evaluations (1 unless the epochs were raised)

    @property
    def total_steps(self) -> int:
        """Optimiser steps of the whole run."""
        return self.epochs * self.steps_per_epoch

    def evaluates_after(self, epoch: int) -> bool:
        """Whether the run evaluates (and writes a history row) after 0-based ``epoch``."""
        return (epoch + 1) % self.eval_every == 0 or epoch + 1 == self.epochs


def epoch_schedule(epochs: int, min_steps: int, steps_per_epoch: int) -> EpochSchedule:
    """``epochs`` of ``steps_per_epoch`` steps, raised until at least ``min_steps`` run, with
    evaluations spaced so that a raised run is evaluated about ``epochs`` times."""
    if steps_per_epoch < 1:
        raise ValueError(f"an epoch needs at least one step, got {steps_per_epoch}")
    raised = max(int(epochs), -(-int(min_steps) // steps_per_epoch))
    return EpochSchedule(steps_per_epoch, raised, max(1, round(raised / int(epochs))))
