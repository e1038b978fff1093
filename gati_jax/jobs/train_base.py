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
from absl import logging
from tqdm.auto import tqdm

from gati_jax import data, sharding
from gati_jax.atomic_dir import check_replaceable
from gati_jax.config import ConfigError, base_config, validate_config
from gati_jax.config_checks import flat_config
from gati_jax.data.splits import validation_count
from gati_jax.inference import BaseModel, evaluate
from gati_jax.metric_writer import MetricWriter
from gati_jax.models import build_network
from gati_jax.training.checkpointing import TrainCheckpointer, save_base_model
from gati_jax.training.optim import epoch_schedule, make_optimizer, make_schedule
from gati_jax.training.plots import plot_training_history
from gati_jax.training.steps import create_train_state, train_step

_TRAINING_SECTIONS = ("seed", "data", "augment", "model", "train")


def training_settings(
    stored: dict[str, Any], num_train: int, steps_per_epoch: int
) -> dict[str, Any]:
    """What shapes the trained parameters, from a config as config.json stores it: the
    training sections, flattened, with the validation keys replaced by the examples they
    carve from ``num_train`` and the epoch keys by the epochs that run.

    A key the stored config lacks (written before the key existed) reads as it ran then: for
    ``train.min_steps`` no minimum, for every other key the default, the value it had."""
    defaults = flat_config(json.loads(base_config().to_json()))
    flat = {
        k: v
        for k, v in {**defaults, **flat_config(stored)}.items()
        if k.split(".")[0] in _TRAINING_SECTIONS
    }
    if "min_steps" not in stored.get("train", {}):
        flat["train.min_steps"] = 0
    # Compared through what they resolve to: the validation examples carved, the epochs run.
    validation = validation_count(
        num_train,
        int(flat.pop("data.validation_size")),
        float(flat.pop("data.validation_fraction")),
        int(flat.pop("data.validation_min")),
        int(flat.pop("data.validation_max")),
    )
    epochs = epoch_schedule(
        int(flat.pop("train.epochs")), int(flat.pop("train.min_steps")), steps_per_epoch
    ).epochs
    return flat | {
        "validation examples (data.validation_*)": validation,
        "epochs run (train.epochs, train.min_steps)": epochs,
    }


def _check_same_config(
    workdir: Path, config: ml_collections.ConfigDict, num_train: int, steps_per_epoch: int
) -> None:
    """Refuses to resume a run under a different config, which would silently mix two runs;
    writes config.json for a new run. Configs compare by :func:`training_settings`, so a run
    started before a key existed resumes when the key keeps what the run did."""
    path = workdir / "config.json"
    current = json.loads(config.to_json())
    if not path.exists():
        path.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
        return
    old = training_settings(json.loads(path.read_text()), num_train, steps_per_epoch)
    new = training_settings(current, num_train, steps_per_epoch)
    changed = [
        f"{k} ({old.get(k)!r} -> {new.get(k)!r})"
        for k in sorted(old.keys() | new.keys())
        if old.get(k) != new.get(k)
    ]
    if changed:
        raise ConfigError(
            f"{workdir} holds a run with a different config (changed: "
            f"{', '.join(changed)}); use another --workdir or restore the "
            "original values"
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


# The last evaluation interval may gain at most this much validation accuracy (and the
# noise of the validation split's size) before the run counts as still rising steeply: a
# one-cycle or cosine schedule ends at a learning rate near zero, where a converged run
# gains well under a point.
RISE_TOLERANCE = 0.02


def still_rising(history: list[dict[str, Any]], num_validation: int) -> str | None:
    """A warning when validation accuracy was still rising steeply at the end of the run:
    its last evaluation gained more than :data:`RISE_TOLERANCE` and two standard errors of
    an accuracy on ``num_validation`` examples over the one before; else None."""
    if len(history) < 2:
        return None
    before, last = history[-2]["val_accuracy"], history[-1]["val_accuracy"]
    noise = 2 * float(np.sqrt(max(last * (1 - last), 1e-12) / max(num_validation, 1)))
    if last - before <= max(RISE_TOLERANCE, noise):
        return None
    return (
        f"validation accuracy was still rising steeply at the end of training: "
        f"{before:.4f} after epoch {history[-2]['epoch']}, {last:.4f} after epoch "
        f"{history[-1]['epoch']} (step {history[-1]['step']}); the network is probably "
        "undertrained: train longer (a larger train.min_steps or train.epochs)"
    )


def epoch_order(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """The example order of one epoch, a pure function of (seed, epoch), so resumes replay it."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains the base network, evaluating each epoch (or, when train.min_steps raised the
    epochs, about train.epochs times); resumes from WORKDIR's last checkpoint. Nothing is
    written to WORKDIR until the config, the data and the export folder have been checked,
    so a run that fails on them leaves nothing that would refuse the corrected command."""
    validate_config(config)
    sharding.initialize(config.mesh)  # several hosts: join before any device is touched
    workdir_path = Path(workdir).absolute()
    tc = config.train
    export_dir = Path(tc.export_dir).absolute() if tc.export_dir else workdir_path / "model"
    check_replaceable(export_dir)  # before the run, not after it: only our own is replaced

    dataset = data.load_dataset(config.data)
    network = build_network(config.model, dataset.image_shape, dataset.num_classes)
    steps_per_epoch = len(dataset.train.images) // int(tc.batch_size)
    if steps_per_epoch == 0:
        raise ConfigError(
            f"train.batch_size={tc.batch_size} exceeds the "
            f"{len(dataset.train.images)} training examples"
        )
    schedule_of_epochs = epoch_schedule(int(tc.epochs), int(tc.min_steps), steps_per_epoch)
    total_steps = schedule_of_epochs.total_steps
    if schedule_of_epochs.epochs > int(tc.epochs):
        logging.info(
            "train.min_steps=%d: %d epochs of %d steps (%d training examples, batch %d) would "
            "run %d steps; running %d epochs (%d steps), evaluated every %d",
            int(tc.min_steps),
            int(tc.epochs),
            steps_per_epoch,
            len(dataset.train.images),
            int(tc.batch_size),
            int(tc.epochs) * steps_per_epoch,
            schedule_of_epochs.epochs,
            total_steps,
            schedule_of_epochs.eval_every,
        )
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
    workdir_path.mkdir(parents=True, exist_ok=True)
    _check_same_config(
        workdir_path,
        config,
        len(dataset.train.images) + len(dataset.validation.images),
        steps_per_epoch,
    )
    state = create_train_state(network, tx, jax.random.key(int(config.seed)))
    if parallel:
        state = sharding.replicate(mesh, state)
    checkpointer = TrainCheckpointer(workdir_path / "checkpoints", int(tc.max_to_keep))
    history: list[dict[str, Any]] = []
    if checkpointer.latest_step() is not None:
        state, history = checkpointer.restore(state)
        print(f"resuming from step {int(state.step)} of {total_steps} in {workdir_path}")
    metrics = MetricWriter(workdir_path, "metrics")  # WORKDIR/metrics.jsonl, tensorboard/
    if history or metrics.jsonl.exists():
        # From the checkpointed history: rows a killed run wrote after its last checkpoint
        # go, so a resumed run never duplicates a line.
        metrics.rewrite(history, step_key="step")

    mean, std = dataset.mean, dataset.std
    data_key = jax.random.key(int(config.seed) + 1)
    step = int(state.step)
    epochs = schedule_of_epochs.epochs
    started = time.time()
    try:
        while step < total_steps:
            epoch, offset = divmod(step, steps_per_epoch)
            evaluates = schedule_of_epochs.evaluates_after(epoch)
            order = epoch_order(int(config.seed), epoch, len(dataset.train.images))
            bar = tqdm(
                range(offset, steps_per_epoch),
                desc=f"epoch {epoch + 1}/{epochs}",
                initial=offset,
                total=steps_per_epoch,
                leave=schedule_of_epochs.eval_every == 1,
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
                # An evaluated epoch's end is saved below, with its history row.
                if step % int(tc.checkpoint_every_steps) == 0 and not (
                    evaluates and batch_index + 1 == steps_per_epoch
                ):
                    checkpointer.save(state, history)
            bar.close()
            if not evaluates:
                continue
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
            started = time.time()
            if not (np.isfinite(history[-1]["train_loss"]) and np.isfinite(val["loss"])):
                # Diverged: fail now, before a checkpoint of the broken state is written.
                _record(metrics, workdir_path, history)
                check_learned(history, dataset.validation.labels, state.variables)
            checkpointer.save(state, history)
            _record(metrics, workdir_path, history)
            print(
                f"epoch {epoch + 1}: train loss {history[-1]['train_loss']:.4f} "
                f"acc {history[-1]['train_accuracy']:.4f} | validation loss {val['loss']:.4f} "
                f"acc {val['accuracy']:.4f}"
            )
    finally:
        checkpointer.close()
        metrics.close()
    check_learned(history, dataset.validation.labels, state.variables)
    warnings = [w for w in [still_rising(history, len(dataset.validation.labels))] if w]
    for warning in warnings:
        logging.warning(warning)

    test = evaluate(
        network, state.variables, mean, std, dataset.test, int(tc.eval_batch_size), desc="test"
    )
    print(f"test accuracy {test['accuracy']:.4f} ({test['examples']} examples)")
    final = {
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "val_accuracy": history[-1]["val_accuracy"] if history else None,
        "epochs": epochs,
        "steps": step,
        "warnings": warnings,
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


def _record(metrics: MetricWriter, workdir: Path, history: list[dict[str, Any]]) -> None:
    """Appends the newest history row to the metrics and redraws the training plot."""
    metrics.write(history[-1]["step"], history[-1])
    plot_training_history(history, workdir / "training.png")
