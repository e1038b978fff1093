"""Base-network training: optimiser, steps, checkpoints (the resumable loop is
``gati_jax.jobs.train_base.train_and_evaluate``, which reads the whole config)."""

from gati_jax.training.checkpointing import (
    CheckpointError,
    TrainCheckpointer,
    load_base_model,
    save_base_model,
)
from gati_jax.training.steps import TrainState, create_train_state, train_step

__all__ = [
    "CheckpointError",
    "TrainCheckpointer",
    "TrainState",
    "create_train_state",
    "load_base_model",
    "save_base_model",
    "train_step",
]
