"""Orbax checkpoints: resumable training state, and the exported inference-only base model.

Both carry manifests (gati_jax/integrity.py): every file's sha256, checked on load.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from gati_jax.atomic_dir import atomic_directory
from gati_jax.inference import BaseModel, model_fingerprint
from gati_jax.input_checks import PIXEL_RANGE
from gati_jax.integrity import (
    MANIFEST,
    IntegrityError,
    read_manifest,
    verify_manifest,
    write_manifest,
)
from gati_jax.models import build_network
from gati_jax.training.steps import TrainState

_MODEL_JSON = "model.json"
_VARIABLES = "variables"
# Artefact kinds and the format versions this code writes (gati_jax/integrity.py).
BASE_MODEL, BASE_MODEL_VERSION = "base_model", 1
TRAIN_CHECKPOINT, TRAIN_CHECKPOINT_VERSION = "training_checkpoint", 1
_ADD_MANIFEST = (
    "add one with `python scripts/add_manifest.py DIR` "
    "(gati_jax.training.checkpointing.add_base_model_manifest), which first checks "
    "that the variables restore into the network and are finite"
)


class CheckpointError(IntegrityError):
    """A checkpoint is missing, corrupt, or does not match the network it should hold."""


def _non_finite(tree: Any) -> list[str]:
    """Paths of the leaves of ``tree`` that hold NaN or Inf."""
    return [
        jax.tree_util.keystr(path)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
        if np.issubdtype(np.asarray(leaf).dtype, np.inexact)
        and not np.all(np.isfinite(np.asarray(leaf)))
    ]


def _abstract(tree: Any) -> Any:
    # The template's shardings too: a sharded state restores sharded the same way.
    return jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=getattr(a, "sharding", None)),
        tree,
    )


class TrainCheckpointer:
    """Periodic, asynchronous training checkpoints (state + metric history) in one directory.

    Each step is sealed with a manifest once orbax has finished writing it. On opening, the
    newest steps whose manifest is missing (interrupted before it was sealed) or fails
    (a file missing, truncated or garbled) are moved aside to DIRECTORY.rejected/, reported,
    and the newest good step is the one resumed from (none: the run starts afresh).
    """

    def __init__(self, directory: str | os.PathLike, max_to_keep: int):
        self.directory = Path(directory).absolute()
        # (step, why, where it was moved) for every step set aside on opening.
        self.rejected: list[tuple[int, str, Path]] = self._set_aside_unverified()
        self._unsealed: list[int] = []
        self._manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep)
        )

    def _steps(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        return sorted(
            (int(p.name) for p in self.directory.iterdir() if p.is_dir() and p.name.isdigit()),
            reverse=True,
        )

    def _set_aside_unverified(self) -> list[tuple[int, str, Path]]:
        rejected = []
        for step in self._steps():
            path = self.directory / str(step)
            try:
                verify_manifest(path, TRAIN_CHECKPOINT, TRAIN_CHECKPOINT_VERSION)
                break  # the newest good step; older ones are not read
            except IntegrityError as error:
                why = str(error)
                if not (path / MANIFEST).exists():
                    why = (
                        "it has no manifest (the run stopped before the step was sealed, "
                        "or it was written before checkpoints carried manifests)"
                    )
                aside = self.directory.with_name(self.directory.name + ".rejected") / str(step)
                n = 1
                while aside.exists():
                    n += 1
                    aside = aside.with_name(f"{step}.{n}")
                aside.parent.mkdir(parents=True, exist_ok=True)
                path.rename(aside)
                rejected.append((step, why, aside))
                logging.warning(
                    "training checkpoint step %d in %s is not used: %s; it was "
                    "moved to %s (nothing deleted)",
                    step,
                    self.directory,
                    why,
                    aside,
                )
        return rejected

    def latest_step(self) -> int | None:
        """Step of the newest complete, verified checkpoint, or None."""
        return self._manager.latest_step()

    def save(self, state: TrainState, history: list[dict[str, Any]]) -> None:
        """Starts saving ``state`` at its step; the write finishes in the background and is
        sealed by the next save or :meth:`close`."""
        self.seal()
        step = int(state.step)
        # A copy: orbax may serialize the history in the background, after the caller has
        # appended the next epoch's row, which a resume from this step would then repeat.
        rows = [dict(row) for row in history]
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), history=ocp.args.JsonSave(rows)
            ),
        )
        self._unsealed.append(step)

    def seal(self) -> None:
        """Waits for pending writes and writes each finished step's manifest."""
        self._manager.wait_until_finished()
        if jax.process_index() == 0:
            for step in self._unsealed:
                path = self.directory / str(step)
                if path.is_dir() and not (path / MANIFEST).exists():
                    write_manifest(path, TRAIN_CHECKPOINT, TRAIN_CHECKPOINT_VERSION, step=step)
        self._unsealed = []

    def restore(self, template: TrainState) -> tuple[TrainState, list[dict[str, Any]]]:
        """Restores the newest verified checkpoint into the structure of ``template``."""
        step = self.latest_step()
        if step is None:
            raise CheckpointError(f"no checkpoint to resume from in {self.directory}")
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(_abstract(template)),
                    history=ocp.args.JsonRestore(),
                ),
            )
        except Exception as error:  # orbax raises many types; the user needs the path
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} is corrupt or was written for a "
                f"different network/optimiser ({type(error).__name__}: {error}). Move that "
                "directory away to start afresh; nothing was deleted."
            ) from error
        return restored["state"], list(restored["history"])

    def close(self) -> None:
        """Waits for pending writes, seals them and releases the manager."""
        self.seal()
        self._manager.close()


def save_base_model(directory: str | os.PathLike, model: BaseModel) -> Path:
    """Writes the inference-only model (variables via orbax + model.json + manifest.json)
    atomically. ``directory`` must be absent, empty or a model this project wrote."""
    directory = Path(directory).absolute()
    if _non_finite(model.variables):
        raise CheckpointError(
            f"refusing to save a base model with NaN or Inf variables "
            f"({', '.join(_non_finite(model.variables)[:3])}) to {directory}"
        )
    with atomic_directory(directory) as staging:
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(staging / _VARIABLES, model.variables)
        checkpointer.wait_until_finished()
        metadata = dict(
            model.metadata,
            mean=np.asarray(model.mean).tolist(),
            std=np.asarray(model.std).tolist(),
            input_shape=list(model.network.input_shape),
            num_classes=model.network.num_classes,
            input_range=[float(v) for v in model.input_range],
        )
        (staging / _MODEL_JSON).write_text(json.dumps(metadata, indent=2) + "\n")
        write_manifest(
            staging,
            BASE_MODEL,
            BASE_MODEL_VERSION,
            model_fingerprint=model_fingerprint(model),
            input_range=[float(v) for v in model.input_range],
        )
    return directory


def base_model_fingerprint(directory: str | os.PathLike) -> str:
    """The fingerprint a saved base model's manifest records (its files are not read)."""
    try:
        manifest = read_manifest(directory, BASE_MODEL, BASE_MODEL_VERSION, _ADD_MANIFEST)
    except IntegrityError as error:
        raise CheckpointError(str(error)) from None
    return str(manifest.get("model_fingerprint", ""))


def load_base_model(directory: str | os.PathLike, verify: bool = True) -> BaseModel:
    """Loads a model written by :func:`save_base_model` (e.g.
    ``checkpoints/fashion_mnist_resnet18``).

    Every file is checked against the model's manifest first (``verify=False`` skips that:
    only :func:`add_base_model_manifest` does); a file that fails is named.
    """
    directory = Path(directory).absolute()
    meta_path = directory / _MODEL_JSON
    if not meta_path.is_file() and not (directory / MANIFEST).is_file():
        raise CheckpointError(
            f"no base model at {directory} (missing {_MODEL_JSON}); train one with "
            "`python scripts/train_base.py --config configs/<name>.py --workdir DIR`"
        )
    manifest: dict[str, Any] = {}
    if verify:
        try:
            manifest = verify_manifest(directory, BASE_MODEL, BASE_MODEL_VERSION, _ADD_MANIFEST)
        except IntegrityError as error:
            raise CheckpointError(str(error)) from None
    try:
        metadata = json.loads(meta_path.read_text())
        model_config = ml_collections.ConfigDict(metadata["model"])
        network = build_network(
            model_config, tuple(metadata["input_shape"]), metadata["num_classes"]
        )
        mean = np.asarray(metadata["mean"], np.float32)
        std = np.asarray(metadata["std"], np.float32)
        # Models saved before the range was recorded in model.json: their manifest's record.
        low, high = metadata.get("input_range") or manifest.get("input_range") or PIXEL_RANGE
        input_range = (float(low), float(high))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{meta_path} is corrupt: {type(error).__name__}: {error}") from error
    template = jax.eval_shape(network.init, jax.random.key(0))
    try:
        variables = ocp.StandardCheckpointer().restore(directory / _VARIABLES, template)
    except Exception as error:  # orbax raises many types; the user needs the path
        raise CheckpointError(
            f"the variables in {directory / _VARIABLES} are missing, corrupt or do not match "
            f"the network '{network.name}' ({type(error).__name__}: {error})"
        ) from error
    bad = _non_finite(variables)
    if bad:
        raise CheckpointError(
            f"the variables in {directory / _VARIABLES} hold NaN or Inf "
            f"values ({', '.join(bad[:3])})"
        )
    model = BaseModel(network, variables, mean, std, metadata, input_range, str(directory))
    if verify and manifest.get("model_fingerprint") != model_fingerprint(model):
        raise CheckpointError(
            f"{directory / MANIFEST} records the fingerprint {manifest.get('model_fingerprint')}"
            f" but the model loaded from {directory} is {model_fingerprint(model)}"
        )
    return model


def add_base_model_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """Writes manifest.json into a base model saved before models carried one; no other file
    is touched. Only for a model you trust: it checks that model.json parses, the variables
    restore into that network and are finite, then records every file's hash as it is now.
    A model that has a manifest already is verified and left alone."""
    directory = Path(directory).absolute()
    if (directory / MANIFEST).exists():
        load_base_model(directory)
        return verify_manifest(directory, BASE_MODEL, BASE_MODEL_VERSION)
    model = load_base_model(directory, verify=False)
    return write_manifest(
        directory,
        BASE_MODEL,
        BASE_MODEL_VERSION,
        model_fingerprint=model_fingerprint(model),
        input_range=[float(v) for v in model.input_range],
    )


def seal_training_checkpoints(directory: str | os.PathLike) -> list[int]:
    """Seals the finished steps of a training-checkpoint folder written before steps carried
    manifests, so a resume uses them instead of setting them aside; returns the steps sealed.
    Only for a run you trust: orbax renames a step into place once it is complete, so a step
    folder with orbax's commit marker holds a whole checkpoint."""
    directory = Path(directory).absolute()
    sealed = []
    for path in sorted(directory.iterdir()) if directory.is_dir() else []:
        if (
            path.is_dir()
            and path.name.isdigit()
            and not (path / MANIFEST).exists()
            and (path / "_CHECKPOINT_METADATA").exists()
        ):
            write_manifest(path, TRAIN_CHECKPOINT, TRAIN_CHECKPOINT_VERSION, step=int(path.name))
            sealed.append(int(path.name))
    if not sealed and not any(p.name.isdigit() for p in directory.glob("*")):
        raise FileNotFoundError(f"{directory} holds no training checkpoint steps")
    return sealed
