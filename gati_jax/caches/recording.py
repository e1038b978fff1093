"""Records what the cache heads need: activations at every position, and the base answers.

Activations are stored in float16 and, where the full maps would exceed the memory limit,
average-pooled by a per-position factor (the largest maps first). A cache head trained on a
pooled map applies the same pooling to the raw activation when it serves.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from gati_jax import data, sharding
from gati_jax.caches.pooling import pool_map
from gati_jax.config_checks import ConfigError
from gati_jax.inference import BaseModel, padded_batches
from gati_jax.input_checks import check_images
from gati_jax.models import StagedNetwork, Variables


@dataclasses.dataclass(frozen=True)
class Recording:
    """Per-position stored activations plus the base network's logits, answers and labels."""

    positions: tuple[int, ...]
    features: dict[int, np.ndarray]  # position -> (N, h, w, c) or (N, f), float16
    pool_factors: dict[int, int]  # position -> spatial pooling applied before storage
    logits: np.ndarray  # (N, classes) float32
    labels: np.ndarray  # (N,) int32 ground truth

    @property
    def base_predictions(self) -> np.ndarray:
        """The base network's answers, the targets every cache learns to reproduce."""
        return np.argmax(self.logits, axis=-1).astype(np.int32)

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored activations."""
        return sum(f.nbytes for f in self.features.values())

    def take(self, index: np.ndarray | slice) -> Recording:
        """The recording restricted to the examples at ``index`` (a slice gives views, no
        copy: a deep network's recording can hold several GB)."""
        return dataclasses.replace(
            self,
            features={p: f[index] for p, f in self.features.items()},
            logits=self.logits[index],
            labels=self.labels[index],
        )


def choose_pool_factors(
    shapes: dict[int, tuple[int, ...]], num_examples: int, max_bytes: int
) -> dict[int, int]:
    """Smallest pooling (largest maps pooled first) that fits the float16 store in max_bytes."""
    factors = {p: 1 for p in shapes}

    def size(p):
        return int(np.prod(shapes[p])) // (factors[p] ** 2 if len(shapes[p]) == 3 else 1)

    while sum(size(p) for p in shapes) * 2 * num_examples > max_bytes:
        poolable = [
            p
            for p in shapes
            if len(shapes[p]) == 3
            and shapes[p][0] % (factors[p] * 2) == 0
            and shapes[p][1] % (factors[p] * 2) == 0
        ]
        if not poolable:
            need = sum(size(p) for p in shapes) * 2 * num_examples
            raise ConfigError(
                f"invalid config value caches.record_max_bytes={max_bytes}: recording "
                f"{num_examples} examples at {len(shapes)} positions needs at least {need} "
                "bytes even pooled; raise it (the recording is held in memory), name fewer "
                "caches.positions, or record fewer examples (caches.predictor_examples, "
                "caches.test_examples)"
            )
        largest = max(poolable, key=size)
        factors[largest] *= 2
    return factors


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _record_batch(
    network: StagedNetwork,
    positions: tuple[int, ...],
    factors: tuple[int, ...],
    variables: Variables,
    images: jax.Array,
    mean: jax.Array,
    std: jax.Array,
):
    x = data.normalize(images, mean, std)
    stored = []
    for index in range(network.num_stages):
        x = network.apply_stage(variables, index, x)
        if index in positions:
            stored.append(pool_map(x, factors[positions.index(index)]).astype(jnp.float16))
    return stored, x


def record_activations(
    model: BaseModel,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    positions: tuple[int, ...] | None = None,
    max_bytes: int = 2 << 30,
    batch_size: int = 250,
    desc: str = "recording",
    pool_factors: dict[int, int] | None = None,
    mesh=None,
) -> Recording:
    """Runs the base network over ``images`` and stores every requested position's activation.

    ``pool_factors`` fixes the pooling per position (to serve caches trained on an earlier
    recording); by default the least pooling that fits ``max_bytes`` is chosen. With a
    ``mesh`` each batch's rows are split over its data axis (same program, same values).
    """
    network = model.network
    images = check_images(images, network.input_shape)
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    last = network.num_stages - 1
    positions = tuple(range(last)) if positions is None else tuple(sorted(positions))
    if not positions or positions[0] < 0 or positions[-1] >= last:
        raise ValueError(f"cache positions must lie in [0, {last - 1}], got {positions}")
    shapes = {p: s[1:] for p, s in enumerate(network.activation_shapes()) if p in positions}
    if pool_factors is None:
        factors = choose_pool_factors(shapes, len(images), max_bytes)
    else:
        factors = {p: int(pool_factors[p]) for p in positions}
    stored_shapes = {
        p: (shapes[p][0] // factors[p], shapes[p][1] // factors[p], shapes[p][2])
        if len(shapes[p]) == 3
        else shapes[p]
        for p in positions
    }
    features = {p: np.empty((len(images), *stored_shapes[p]), np.float16) for p in positions}
    logits = np.empty((len(images), network.num_classes), np.float32)
    batch_size = min(batch_size, len(images))
    if mesh is not None:  # every batch (the last one padded) splits over the data axis
        width = sharding.data_size(mesh)
        batch_size = -(-batch_size // width) * width
    start = 0
    for chunk, _, _, rows in tqdm(
        padded_batches(images, np.asarray(labels), batch_size),
        total=-(-len(images) // batch_size),
        desc=desc,
        leave=False,
    ):
        if mesh is not None:
            chunk = sharding.shard_batch(mesh, chunk)
        stored, out = _record_batch(
            network,
            positions,
            tuple(factors[p] for p in positions),
            model.variables,
            chunk,
            model.mean,
            model.std,
        )
        for p, s in zip(positions, stored):
            features[p][start : start + rows] = np.asarray(s)[:rows]
        logits[start : start + rows] = np.asarray(out)[:rows]
        start += rows
    return Recording(positions, features, factors, logits, np.asarray(labels, np.int32))
