"""Orbax checkpoints: resumable training state, and the exported inference-only base model."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from gati_jax.atomic_dir import atomic_directory
from gati_jax.inference import BaseModel
from gati_jax.models import build_network
from gati_jax.training.steps import TrainState

_MODEL_JSON = "model.json"
_VARIABLES = "variables"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or does not match the network it should hold."""


def _abstract(tree: Any) -> Any:
    # The template's shardings too: a sharded state restores sharded the same way.
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                                       sharding=getattr(a, "sharding", None)),
                        tree)


class TrainCheckpointer:
    """Periodic, asynchronous training checkpoints (state + metric history) in one directory."""

    def __init__(self, directory: str | os.PathLike, max_to_keep: int):
        self.directory = Path(directory).absolute()
        self._manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep))

    def latest_step(self) -> int | None:
        """Step of the newest complete checkpoint (orbax ignores half-written ones), or None."""
        return self._manager.latest_step()

    def save(self, state: TrainState, history: list[dict[str, Any]]) -> None:
        """Starts saving ``state`` at its step; the write finishes in the background."""
        step = int(state.step)
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), history=ocp.args.JsonSave(history)))

    def restore(self, template: TrainState) -> tuple[TrainState, list[dict[str, Any]]]:
        """Restores the newest checkpoint into the structure of ``template``."""
        step = self.latest_step()
        if step is None:
            raise CheckpointError(f"no checkpoint to resume from in {self.directory}")
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(_abstract(template)),
                history=ocp.args.JsonRestore()))
        except Exception as error:  # orbax raises many types; the user needs the path
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} is corrupt or was written for a "
                f"different network/optimiser ({type(error).__name__}: {error}). Move that "
                "directory away to start afresh; nothing was deleted.") from error
        return restored["state"], list(restored["history"])

    def close(self) -> None:
        """Waits for pending writes and releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()


def save_base_model(directory: str | os.PathLike, model: BaseModel) -> Path:
    """Writes the inference-only model (variables via orbax + model.json) atomically."""
    directory = Path(directory).absolute()
    with atomic_directory(directory) as staging:
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(staging / _VARIABLES, model.variables)
        checkpointer.wait_until_finished()
        metadata = dict(model.metadata, mean=np.asarray(model.mean).tolist(),
                        std=np.asarray(model.std).tolist(),
                        input_shape=list(model.network.input_shape),
                        num_classes=model.network.num_classes)
        (staging / _MODEL_JSON).write_text(json.dumps(metadata, indent=2) + "\n")
    return directory


def load_base_model(directory: str | os.PathLike) -> BaseModel:
    """Loads a model written by :func:`save_base_model` (e.g. ``checkpoints/fashion_mnist_resnet18``)."""
    directory = Path(directory).absolute()
    meta_path = directory / _MODEL_JSON
    if not meta_path.is_file():
        raise CheckpointError(
            f"no base model at {directory} (missing {_MODEL_JSON}); train one with "
            "`python scripts/train_base.py --config configs/<name>.py --workdir DIR`")
    try:
        metadata = json.loads(meta_path.read_text())
        model_config = ml_collections.ConfigDict(metadata["model"])
        network = build_network(model_config, tuple(metadata["input_shape"]),
                                metadata["num_classes"])
        mean = np.asarray(metadata["mean"], np.float32)
        std = np.asarray(metadata["std"], np.float32)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{meta_path} is corrupt: {type(error).__name__}: {error}") from error
    template = jax.eval_shape(network.init, jax.random.key(0))
    try:
        variables = ocp.StandardCheckpointer().restore(directory / _VARIABLES, template)
    except Exception as error:  # orbax raises many types; the user needs the path
        raise CheckpointError(
            f"the variables in {directory / _VARIABLES} are missing, corrupt or do not match "
            f"the network '{network.name}' ({type(error).__name__}: {error})") from error
    return BaseModel(network, variables, mean, std, metadata)
