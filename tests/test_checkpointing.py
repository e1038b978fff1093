"""Orbax checkpoints: exact round trips, and clear errors for missing or corrupt ones."""

from __future__ import annotations

import asyncio
import functools
import json

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from conftest import tiny_config

from gati_jax import data
from gati_jax.inference import BaseModel
from gati_jax.integrity import write_manifest
from gati_jax.models import build_network
from gati_jax.training import (
    CheckpointError,
    TrainCheckpointer,
    create_train_state,
    load_base_model,
    save_base_model,
    train_step,
)


def _trained_state(config, steps=3):
    dataset = data.load_dataset(config.data)
    network = build_network(config.model, dataset.image_shape, dataset.num_classes)
    tx = optax.sgd(0.1, momentum=0.9)
    state = create_train_state(network, tx, jax.random.key(0))
    step = jax.jit(functools.partial(train_step, network, tx, flip=False, crop_padding=0))
    for i in range(steps):
        state = step(
            state,
            dataset.train.images[i * 32 : (i + 1) * 32],
            dataset.train.labels[i * 32 : (i + 1) * 32],
            jax.random.key(i),
            dataset.mean,
            dataset.std,
        )
    return network, dataset, state, tx


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_train_checkpoint_round_trip_is_exact(tmp_path):
    network, _, state, tx = _trained_state(tiny_config())
    checkpointer = TrainCheckpointer(tmp_path / "ckpt", max_to_keep=2)
    checkpointer.save(state, [{"epoch": 1, "val_accuracy": 0.5}])
    checkpointer.close()
    template = create_train_state(network, tx, jax.random.key(1))
    restored, history = TrainCheckpointer(tmp_path / "ckpt", 2).restore(template)
    assert history == [{"epoch": 1, "val_accuracy": 0.5}]
    assert int(restored.step) == 3
    _assert_trees_equal(restored.params, state.params)
    _assert_trees_equal(restored.batch_stats, state.batch_stats)
    _assert_trees_equal(restored.opt_state, state.opt_state)


def test_a_checkpoint_keeps_the_history_as_it_was_when_saved(tmp_path, monkeypatch):
    # The loop appends the next epoch's row while the save runs in the background; a resume
    # from this step must not get that row too (it would be written twice). The JSON write
    # is held back here, as a busy machine does, so the test does not depend on timing.
    write = ocp.JsonCheckpointHandler._save_fn

    async def late_write(self, x, directory):
        await asyncio.sleep(0.5)
        await write(self, x, directory)

    monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", late_write)
    network, _, state, tx = _trained_state(tiny_config())
    checkpointer = TrainCheckpointer(tmp_path / "ckpt", max_to_keep=2)
    history = [{"epoch": 1, "val_accuracy": 0.5}]
    checkpointer.save(state, history)
    history[0]["val_accuracy"] = 0.0
    history.append({"epoch": 2, "val_accuracy": 0.75})
    checkpointer.close()
    template = create_train_state(network, tx, jax.random.key(1))
    _, restored = TrainCheckpointer(tmp_path / "ckpt", 2).restore(template)
    assert restored == [{"epoch": 1, "val_accuracy": 0.5}]


def test_restore_without_checkpoint_is_a_clear_error(tmp_path):
    network, _, state, _ = _trained_state(tiny_config(), steps=0)
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        TrainCheckpointer(tmp_path / "empty", 1).restore(state)


def test_base_model_round_trip_and_replacement(tmp_path):
    network, dataset, state, _ = _trained_state(tiny_config())
    model = BaseModel(
        network,
        state.variables,
        dataset.mean,
        dataset.std,
        {"model": tiny_config().model.to_dict(), "note": "first"},
    )
    save_base_model(tmp_path / "model", model)
    loaded = load_base_model(tmp_path / "model")
    _assert_trees_equal(loaded.variables, jax.device_get(state.variables))
    np.testing.assert_array_equal(loaded.mean, dataset.mean)
    assert loaded.network == network and loaded.metadata["note"] == "first"
    # Saving again over the same directory replaces it whole; nothing stale remains.
    save_base_model(
        tmp_path / "model",
        BaseModel(
            network, state.variables, dataset.mean, dataset.std, dict(model.metadata, note="2")
        ),
    )
    assert load_base_model(tmp_path / "model").metadata["note"] == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_missing_and_corrupt_base_models_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no base model at"):
        load_base_model(tmp_path / "nowhere")
    network, dataset, state, _ = _trained_state(tiny_config(), steps=1)
    model = BaseModel(
        network,
        state.variables,
        dataset.mean,
        dataset.std,
        {"model": tiny_config().model.to_dict()},
    )
    save_base_model(tmp_path / "model", model)
    meta = tmp_path / "model" / "model.json"
    good = meta.read_text()
    meta.write_text(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="model.json is truncated or altered"):
        load_base_model(tmp_path / "model")
    # Metadata that names a different network than the stored variables, with a manifest
    # that vouches for it (made consistent): the variables do not restore into it.
    wrong = json.loads(good)
    wrong["model"]["hidden_sizes"] = [7, 3]
    meta.write_text(json.dumps(wrong))
    write_manifest(tmp_path / "model", "base_model", 1)
    with pytest.raises(CheckpointError, match="do not match"):
        load_base_model(tmp_path / "model")
    meta.write_text(good)
    write_manifest(tmp_path / "model", "base_model", 1)
    for path in (tmp_path / "model" / "variables").rglob("*"):
        if path.is_file() and path.stat().st_size > 0:
            path.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="variables/.* is truncated or altered"):
        load_base_model(tmp_path / "model")
