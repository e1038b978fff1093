"""Evaluates an exported base model on a split of the data set it was trained on."""

from __future__ import annotations

import os
from typing import Any

import ml_collections

from gati_jax import data
from gati_jax.config import base_config
from gati_jax.inference import BaseModel, evaluate
from gati_jax.training.checkpointing import load_base_model


def model_data_config(model: BaseModel, data_dir: str = "") -> ml_collections.ConfigDict:
    """The data config a model was trained with, so its validation carve is reproduced exactly."""
    data_config = base_config().data
    saved = model.metadata.get("config", {}).get("data", {"name": model.metadata["data"]["name"]})
    data_config.update_from_flattened_dict(
        {k: v for k, v in saved.items() if not isinstance(v, dict)}
    )
    for key, value in saved.get("synthetic", {}).items():
        data_config.synthetic[key] = value
    if data_dir:
        data_config.data_dir = data_dir
    return data_config


def evaluate_checkpoint(
    path: str | os.PathLike, split: str = "test", data_dir: str = "", batch_size: int = 500
) -> dict[str, Any]:
    """Loads the model at ``path`` and measures loss/accuracy on ``split`` of its data set."""
    if split not in ("train", "validation", "test"):
        raise ValueError(f"split must be train, validation or test, got {split!r}")
    model = load_base_model(path)
    data_config = model_data_config(model, data_dir)
    dataset = data.load_dataset(data_config)
    result = evaluate(
        model.network,
        model.variables,
        model.mean,
        model.std,
        getattr(dataset, split),
        batch_size,
        desc=split,
    )
    recorded = model.metadata.get("metrics", {}).get(f"{split}_accuracy")
    return dict(
        result,
        split=split,
        data_set=dataset.name,
        network=model.network.name,
        recorded_accuracy=recorded,
    )
