"""A trained base network bundled with its input statistics, and batched evaluation of it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from gati_jax import data
from gati_jax.data import Split
from gati_jax.input_checks import PIXEL_RANGE, check_images
from gati_jax.models import StagedNetwork, Variables


def eval_step(
    network: StagedNetwork,
    variables: dict[str, Any],
    images: jax.Array,
    labels: jax.Array,
    mask: jax.Array,
    mean: jax.Array,
    std: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Returns (loss sum, correct count, logits) over the rows of a padded batch where mask is 1."""
    logits = network.apply(variables, data.normalize(images, mean, std))
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (jnp.argmax(logits, -1) == labels) & mask
    return jnp.sum(loss * mask), jnp.sum(correct), logits


_eval_step = jax.jit(eval_step, static_argnums=0)


@dataclasses.dataclass(frozen=True)
class BaseModel:
    """A staged network, its variables, the normalisation statistics it was trained with and
    the range of raw input values it was trained on."""

    network: StagedNetwork
    variables: Variables
    mean: np.ndarray
    std: np.ndarray
    metadata: dict[str, Any]
    input_range: tuple[float, float] = PIXEL_RANGE
    source: str = ""  # the directory it was loaded from ("" when built in memory)


def model_fingerprint(model: BaseModel) -> str:
    """A short hash of what decides the base network's answers: its architecture, input
    shape, classes, normalisation, input range and every byte of its variables (not where it
    was loaded from, nor metadata such as its metrics)."""
    digest = hashlib.sha256(
        json.dumps(
            {
                "network": model.network.name,
                "model": model.metadata.get("model"),
                "input_shape": list(model.network.input_shape),
                "num_classes": int(model.network.num_classes),
                "mean": np.asarray(model.mean, np.float32).tolist(),
                "std": np.asarray(model.std, np.float32).tolist(),
                "input_range": [float(v) for v in model.input_range],
            },
            sort_keys=True,
            default=str,
        ).encode()
    )
    for path, leaf in jax.tree_util.tree_flatten_with_path(model.variables)[0]:
        array = np.asarray(leaf)
        digest.update(f"{jax.tree_util.keystr(path)}:{array.dtype}:{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:12]


def padded_batches(
    images: np.ndarray, labels: np.ndarray, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
    """Yields fixed-size batches (the last one zero-padded) with a validity mask and row count."""
    for start in range(0, len(images), batch_size):
        chunk, chunk_labels = images[start : start + batch_size], labels[start : start + batch_size]
        rows = len(chunk)
        # One shape for every batch means one compilation.
        pad = batch_size - rows
        if pad:
            chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
            chunk_labels = np.concatenate([chunk_labels, np.zeros((pad,), chunk_labels.dtype)])
        yield chunk, chunk_labels, np.arange(batch_size) < rows, rows


def evaluate(
    network: StagedNetwork,
    variables: Variables,
    mean: np.ndarray,
    std: np.ndarray,
    split: Split,
    batch_size: int = 500,
    desc: str = "eval",
) -> dict[str, float]:
    """Mean loss and accuracy of the network over a split (inference mode)."""
    if len(split.images) == 0:
        raise ValueError(f"cannot evaluate on an empty split ({desc})")
    loss_sum, correct = 0.0, 0
    batch_size = min(batch_size, len(split.images))
    total = -(-len(split.images) // batch_size)
    for images, labels, mask, _ in tqdm(
        padded_batches(split.images, split.labels, batch_size), total=total, desc=desc, leave=False
    ):
        loss, hits, _ = _eval_step(network, variables, images, labels, mask, mean, std)
        loss_sum += float(loss)
        correct += int(hits)
    n = len(split.images)
    return {"loss": loss_sum / n, "accuracy": correct / n, "examples": n}


def predict_logits(model: BaseModel, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """Logits of the base network for raw images (uint8, or float in the model's input range,
    [0, 255]), validated first."""
    images = check_images(images, model.network.input_shape, model.input_range)
    batch_size = min(batch_size, len(images))
    labels = np.zeros((len(images),), np.int32)
    out = []
    for chunk, chunk_labels, mask, rows in padded_batches(images, labels, batch_size):
        _, _, logits = _eval_step(
            model.network, model.variables, chunk, chunk_labels, mask, model.mean, model.std
        )
        out.append(np.asarray(logits)[:rows])
    return np.concatenate(out)
