"""The base network's optimiser: SGD with momentum, decoupled-from-BN weight decay, a schedule."""

from __future__ import annotations

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
