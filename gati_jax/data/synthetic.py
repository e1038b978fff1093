"""Procedural, learnable images with a controlled mix of easy and hard examples.

Each class has a smooth random prototype. An easy example is its prototype plus a little noise
and a small shift; a hard example blends its prototype with another class's and adds more noise,
so early stages of a network can settle the easy ones while the hard ones need the whole network.
"""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from gati_jax.data.registry import register_dataset
from gati_jax.data.splits import Split

# Prototypes are random fields on this coarse grid, upsampled: low frequency, hence learnable.
_GRID = 4
_EASY_NOISE = 0.08
_HARD_NOISE = 0.2
# Weight of the true class in a hard blend; the rest goes to one other class.
_HARD_WEIGHT = (0.55, 0.65)
# Generation in chunks bounds the float32 working memory for large splits.
_CHUNK = 4096


@dataclasses.dataclass(frozen=True)
class SyntheticData:
    """Raw synthetic splits plus which examples are hard and the class prototypes."""

    train: Split
    test: Split
    train_hard: np.ndarray  # (N_train,) bool
    test_hard: np.ndarray  # (N_test,) bool
    prototypes: np.ndarray  # (num_classes, S, S, C) float32 in [0, 1]


def _interpolation_matrix(size: int, grid: int) -> np.ndarray:
    """(size, grid) matrix that linearly upsamples a grid-point signal to `size` pixels."""
    positions = np.linspace(0.0, grid - 1.0, size)
    lower = np.clip(np.floor(positions).astype(int), 0, grid - 2)
    frac = positions - lower
    matrix = np.zeros((size, grid))
    matrix[np.arange(size), lower] = 1.0 - frac
    matrix[np.arange(size), lower + 1] = frac
    return matrix


def _prototypes(rng: np.random.Generator, num_classes: int, size: int, channels: int) -> np.ndarray:
    """Smooth per-class images in [0.1, 0.9], shape (num_classes, size, size, channels)."""
    grid = rng.normal(size=(num_classes, _GRID, _GRID, channels))
    up = _interpolation_matrix(size, _GRID)
    fields = np.einsum("hi,kijc,wj->khwc", up, grid, up)
    lo = fields.min(axis=(1, 2, 3), keepdims=True)
    hi = fields.max(axis=(1, 2, 3), keepdims=True)
    # The margin leaves room for noise before clipping flattens it.
    return (0.1 + 0.8 * (fields - lo) / (hi - lo)).astype(np.float32)


def _shift(images: np.ndarray, rng: np.random.Generator, max_shift: int) -> np.ndarray:
    """Shifts each image by its own random offset, repeating edge pixels (no wrap-around seam)."""
    n, size = images.shape[0], images.shape[1]
    dy, dx = rng.integers(-max_shift, max_shift + 1, size=(2, n))
    rows = np.clip(np.arange(size)[None, :] - dy[:, None], 0, size - 1)
    cols = np.clip(np.arange(size)[None, :] - dx[:, None], 0, size - 1)
    return images[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def _examples(
    rng: np.random.Generator, prototypes: np.ndarray, num_examples: int, hard_fraction: float
) -> tuple[Split, np.ndarray]:
    """A split of `num_examples` examples with balanced classes, and its hard flags."""
    num_classes, size = prototypes.shape[0], prototypes.shape[1]
    labels = rng.permutation(np.arange(num_examples) % num_classes).astype(np.int32)
    hard = np.zeros(num_examples, bool)
    hard[rng.permutation(num_examples)[: round(hard_fraction * num_examples)]] = True
    # A nonzero offset modulo num_classes never picks the true class as the distractor.
    others = (labels + rng.integers(1, num_classes, num_examples)) % num_classes
    weights = np.where(hard, rng.uniform(*_HARD_WEIGHT, num_examples), 1.0).astype(np.float32)
    noise = np.where(hard, _HARD_NOISE, _EASY_NOISE).astype(np.float32)
    max_shift = max(1, size // 16)
    images = np.empty((num_examples, *prototypes.shape[1:]), np.uint8)
    for start in range(0, num_examples, _CHUNK):
        s = slice(start, start + _CHUNK)
        w = weights[s, None, None, None]
        x = w * prototypes[labels[s]] + (1.0 - w) * prototypes[others[s]]
        x = _shift(x, rng, max_shift)
        x = x + noise[s, None, None, None] * rng.standard_normal(x.shape, np.float32)
        images[s] = np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)
    return Split(images, labels), hard


def make_synthetic(cfg: ml_collections.ConfigDict) -> SyntheticData:
    """Synthetic train/test splits for the `data.synthetic` config, deterministic for cfg.seed."""
    if int(cfg.num_classes) < 2:
        raise ValueError(f"data.synthetic.num_classes must be >= 2, got {cfg.num_classes}")
    if int(cfg.image_size) < 2 or int(cfg.channels) < 1:
        raise ValueError(
            f"data.synthetic.image_size must be >= 2 and data.synthetic.channels "
            f">= 1, got {cfg.image_size} and {cfg.channels}"
        )
    if int(cfg.train_size) < 1 or int(cfg.test_size) < 1:
        raise ValueError(
            f"data.synthetic.train_size and test_size must be >= 1, got "
            f"{cfg.train_size} and {cfg.test_size}"
        )
    if not 0.0 <= cfg.hard_fraction <= 1.0:
        raise ValueError(f"data.synthetic.hard_fraction must be in [0, 1], got {cfg.hard_fraction}")
    # Independent streams: the test split does not change when train_size does.
    proto_seed, train_seed, test_seed = np.random.SeedSequence(int(cfg.seed)).spawn(3)
    prototypes = _prototypes(
        np.random.default_rng(proto_seed),
        int(cfg.num_classes),
        int(cfg.image_size),
        int(cfg.channels),
    )
    train, train_hard = _examples(
        np.random.default_rng(train_seed), prototypes, int(cfg.train_size), float(cfg.hard_fraction)
    )
    test, test_hard = _examples(
        np.random.default_rng(test_seed), prototypes, int(cfg.test_size), float(cfg.hard_fraction)
    )
    return SyntheticData(train, test, train_hard, test_hard, prototypes)


@register_dataset("synthetic")
def load_synthetic(data_config: ml_collections.ConfigDict) -> tuple[Split, Split, int]:
    """Raw synthetic splits for `data.synthetic`."""
    data = make_synthetic(data_config.synthetic)
    return data.train, data.test, int(data_config.synthetic.num_classes)
