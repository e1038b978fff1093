"""Base-network training: ``train_and_evaluate(config, workdir)``, resumable after a kill."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from gati_jax import data, sharding
from gati_jax.atomic_dir import check_replaceable
from gati_jax.config import ConfigError, validate_config
from gati_jax.inference import BaseModel, evaluate
from gati_jax.models import build_network
from gati_jax.training.checkpointing import TrainCheckpointer, save_base_model
from gati_jax.training.optim import make_optimizer, make_schedule
from gati_jax.training.plots import plot_training_history
from gati_jax.training.steps import create_train_state, train_step

_TRAINING_SECTIONS = ("seed", "data", "augment", "model", "train")


def _check_same_config(workdir: Path, config: ml_collections.ConfigDict) -> None:
    """Refuses to resume a run under a different config, which would silently mix two runs."""
    path = workdir / "config.json"
    current = json.loads(config.to_json())
    if not path.exists():
        path.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
        return
    saved = json.loads(path.read_text())

    def flat(tree, prefix=""):
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from flat(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    old, new = dict(flat(saved)), dict(flat(current))
    # Only what shapes the trained parameters matters; caches, planner, serving... do not.
    changed = sorted(
        k
        for k in old.keys() | new.keys()
        if old.get(k) != new.get(k) and k.split(".")[0] in _TRAINING_SECTIONS
    )
    if changed:
        raise ConfigError(
            f"{workdir} holds a run with a different config (changed: {changed}); "
            "use another --workdir or restore the original values"
        )


class TrainingError(RuntimeError):
    """A run ended without a usable network (non-finite loss, chance-level accuracy); nothing
    was exported."""


def chance_accuracy(labels: np.ndarray) -> float:
    """The accuracy of always answering the most common class of ``labels``."""
    return float(np.bincount(np.asarray(labels)).max() / len(labels))


def check_learned(
    history: list[dict[str, Any]], validation_labels: np.ndarray, variables: Any
) -> None:
    """Raises :class:`TrainingError` unless the run ended with finite losses and parameters
    and a validation accuracy above chance by more than three standard errors."""
    if not history:
        raise TrainingError("the run trained no epoch; nothing was exported")
    last = history[-1]
    losses = {k: last[k] for k in ("train_loss", "val_loss")}
    if not all(np.isfinite(v) for v in losses.values()) or not all(
        np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree.leaves(variables)
    ):
        raise TrainingError(
            f"training diverged: epoch {last['epoch']} ended with train loss "
            f"{losses['train_loss']}, validation loss {losses['val_loss']} and non-finite "
            "values in the network; nothing was exported (lower train.learning_rate)"
        )
    chance = chance_accuracy(validation_labels)
    n = len(validation_labels)
    floor = chance + 3 * float(np.sqrt(chance * (1 - chance) / n))
    if last["val_accuracy"] <= floor:
        raise TrainingError(
            f"the network did not learn: validation accuracy {last['val_accuracy']:.4f} after "
            f"epoch {last['epoch']} is at chance level (always answering the most common class "
            f"scores {chance:.4f}; the floor is {floor:.4f} on {n} examples); nothing was "
            "exported (check train.learning_rate, train.epochs and the data)"
        )


def epoch_order(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """The example order of one epoch, a pure function of (seed, epoch), so resumes replay it."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains the base network, evaluating each epoch; resumes from WORKDIR's last checkpoint."""
    validate_config(config)
    sharding.initialize(config.mesh)  # several hosts: join before any device is touched
    workdir_path = Path(workdir).absolute()
    workdir_path.mkdir(parents=True, exist_ok=True)
    _check_same_config(workdir_path, config)
    tc = config.train
    export_dir = Path(tc.export_dir).absolute() if tc.export_dir else workdir_path / "model"
    check_replaceable(export_dir)  # before the run, not after it: only our own is replaced

    dataset = data.load_dataset(config.data)
    network = build_network(config.model, dataset.image_shape, dataset.num_classes)
    steps_per_epoch = len(dataset.train.images) // int(tc.batch_size)
    if steps_per_epoch == 0:
        raise ConfigError(
            f"train.batch_size={tc.batch_size} exceeds the {len(dataset.train.images)}"
            " training examples"
        )
    total_steps = int(tc.epochs) * steps_per_epoch
    tx = make_optimizer(tc, total_steps)
    schedule = make_schedule(tc, total_steps)
    step_fn = jax.jit(
        functools.partial(
            train_step,
            network,
            tx,
            flip=bool(config.augment.flip),
            crop_padding=int(config.augment.crop_padding),
        ),
        donate_argnums=0,
    )

    mesh = sharding.make_mesh(config.mesh)
    # Data parallel over the mesh: the state on every device, each batch split by rows;
    # the jitted step is the single-device one (jit follows the inputs' shardings).
    parallel = sharding.data_size(mesh) > 1
    if parallel and int(tc.batch_size) % sharding.data_size(mesh):
        raise ConfigError(
            f"train.batch_size={tc.batch_size} must be a multiple of the "
            f"{sharding.data_size(mesh)} data-parallel devices"
        )
    state = create_train_state(network, tx, jax.random.key(int(config.seed)))
    if parallel:
        state = sharding.replicate(mesh, state)
    checkpointer = TrainCheckpointer(workdir_path / "checkpoints", int(tc.max_to_keep))
    history: list[dict[str, Any]] = []
    if checkpointer.latest_step() is not None:
        state, history = checkpointer.restore(state)
        print(f"resuming from step {int(state.step)} of {total_steps} in {workdir_path}")

    mean, std = dataset.mean, dataset.std
    data_key = jax.random.key(int(config.seed) + 1)
    step = int(state.step)
    try:
        while step < total_steps:
            epoch, offset = divmod(step, steps_per_epoch)
            order = epoch_order(int(config.seed), epoch, len(dataset.train.images))
            started = time.time()
            bar = tqdm(
                range(offset, steps_per_epoch),
                desc=f"epoch {epoch + 1}/{tc.epochs}",
                initial=offset,
                total=steps_per_epoch,
            )
            for batch_index in bar:
                idx = order[batch_index * tc.batch_size : (batch_index + 1) * tc.batch_size]
                images, labels = dataset.train.images[idx], dataset.train.labels[idx]
                if parallel:
                    images, labels = (
                        sharding.shard_batch(mesh, images),
                        sharding.shard_batch(mesh, labels),
                    )
                state = step_fn(
                    state, images, labels, jax.random.fold_in(data_key, step), mean, std
                )
                step += 1
                if step % 20 == 0:
                    loss_sum, _, count = np.asarray(state.epoch_sums)
                    bar.set_postfix(
                        loss=f"{loss_sum / max(count, 1):.4f}", lr=f"{float(schedule(step)):.4f}"
                    )
                if step % int(tc.checkpoint_every_steps) == 0 and batch_index + 1 < steps_per_epoch:
                    checkpointer.save(state, history)
            bar.close()
            loss_sum, correct, count = np.asarray(state.epoch_sums)
            state = state.replace(epoch_sums=np.zeros((3,), np.float32))
            val = evaluate(
                network,
                state.variables,
                mean,
                std,
                dataset.validation,
                int(tc.eval_batch_size),
                desc="validation",
            )
            history.append(
                {
                    "epoch": epoch + 1,
                    "step": step,
                    "train_loss": float(loss_sum / count),
                    "train_accuracy": float(correct / count),
                    "val_loss": val["loss"],
                    "val_accuracy": val["accuracy"],
                    "learning_rate": float(schedule(step)),
                    "seconds": round(time.time() - started, 2),
                }
            )
            if not (np.isfinite(history[-1]["train_loss"]) and np.isfinite(val["loss"])):
                # Diverged: fail now, before a checkpoint of the broken state is written.
                _write_history(workdir_path, history)
                check_learned(history, dataset.validation.labels, state.variables)
            checkpointer.save(state, history)
            _write_history(workdir_path, history)
            print(
                f"epoch {epoch + 1}: train loss {history[-1]['train_loss']:.4f} "
                f"acc {history[-1]['train_accuracy']:.4f} | validation loss {val['loss']:.4f} "
                f"acc {val['accuracy']:.4f}"
            )
    finally:
        checkpointer.close()
    check_learned(history, dataset.validation.labels, state.variables)

    test = evaluate(
        network, state.variables, mean, std, dataset.test, int(tc.eval_batch_size), desc="test"
    )
    print(f"test accuracy {test['accuracy']:.4f} ({test['examples']} examples)")
    final = {
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "val_accuracy": history[-1]["val_accuracy"] if history else None,
        "epochs": int(tc.epochs),
        "steps": step,
    }
    metadata = {
        "model": config.model.to_dict(),
        "data": {"name": config.data.name},
        "metrics": final,
        "config": json.loads(config.to_json()),
    }
    model = BaseModel(network, jax.device_get(state.variables), mean, std, metadata)
    save_base_model(export_dir, model)
    (workdir_path / "final_metrics.json").write_text(json.dumps(final, indent=2) + "\n")
    print(f"exported the model to {export_dir}")
    return {"state": state, "history": history, "final": final, "model": model}


def _write_history(workdir: Path, history: list[dict[str, Any]]) -> None:
    # Rewritten whole from the checkpointed history, so a resumed run never duplicates a line.
    with open(workdir / "metrics.jsonl", "w") as f:
        for row in history:
            f.write(json.dumps(row) + "\n")
    plot_training_history(history, workdir / "training.png")
