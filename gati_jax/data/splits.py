"""In-memory splits, the deterministic validation carve, pixel statistics and batching."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from gati_jax.config_checks import ConfigError

# The stream of data.split_seed that draws the test split of a source without one.
TEST_CARVE = 3


@dataclasses.dataclass(frozen=True)
class Split:
    """Images (N, H, W, C) uint8 and labels (N,) int32 of one split, held in memory."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        # Loaders are the only producers; catching their mistakes here keeps them out of training.
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(
                f"Split images must be (N, H, W, C) uint8, got "
                f"{self.images.shape} {self.images.dtype}"
            )
        if self.labels.shape != self.images.shape[:1] or self.labels.dtype != np.int32:
            raise ValueError(
                f"Split labels must be ({self.images.shape[0]},) int32, got "
                f"{self.labels.shape} {self.labels.dtype}"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, indices: np.ndarray) -> Split:
        """The sub-split at `indices`, in that order."""
        return Split(self.images[indices], self.labels[indices])


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A data set ready for training: carved splits plus the train pixel statistics."""

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    train: Split
    validation: Split
    test: Split
    mean: np.ndarray
    std: np.ndarray


def validation_count(
    num_train: int, validation_size: int, fraction: float, floor: int, ceiling: int
) -> int:
    """Validation examples to carve from a train split of ``num_train``: ``validation_size``
    when set (> 0), else ``fraction`` of the split clipped to [``floor``, ``ceiling``] and to
    half the split, so the base network keeps at least as many examples as the caches get."""
    if validation_size > 0:
        return int(validation_size)
    count = min(max(round(num_train * fraction), floor), ceiling)
    return max(1, min(count, num_train // 2))


def subset_indices(num_examples: int, size: int, seed: int, stream: int) -> np.ndarray:
    """``size`` distinct indices into ``num_examples``, in increasing order, drawn with
    ``seed`` (``stream`` tells the draws of one seed apart)."""
    return np.sort(np.random.default_rng([seed, stream]).permutation(num_examples)[:size])


def carve_test(split: Split, test_fraction: float, split_seed: int) -> tuple[Split, Split]:
    """(train, test) of a source without a test split: ``test_fraction`` of ``split``, drawn
    with ``split_seed``, is the test split; both keep the source's order."""
    n = len(split)
    size = round(n * float(test_fraction))
    if not 0 < size < n:
        raise ConfigError(
            f"a test split of data.test_fraction={test_fraction} of {n} examples "
            "leaves one of train or test empty: give more examples or another "
            "fraction"
        )
    test = subset_indices(n, size, split_seed, TEST_CARVE)
    train = np.setdiff1d(np.arange(n), test)
    return split.take(train), split.take(test)


def carve_indices(
    num_examples: int, validation_size: int, split_seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices into the original train split; train stays in original order."""
    if not 0 < validation_size < num_examples:
        raise ValueError(
            f"data.validation_size must be in (0, {num_examples}) for a train split "
            f"of {num_examples} examples, got {validation_size}"
        )
    permutation = np.random.default_rng(split_seed).permutation(num_examples)
    # Sorting keeps train in file order, so a train example's index means the same in both.
    return np.sort(permutation[validation_size:]), permutation[:validation_size]


def carve_validation(split: Split, validation_size: int, split_seed: int) -> tuple[Split, Split]:
    """Splits `split` into (train, validation) by `carve_indices`."""
    train_indices, validation_indices = carve_indices(len(split), validation_size, split_seed)
    return split.take(train_indices), split.take(validation_indices)


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of uint8 images scaled to [0, 1], as float32 (C,) arrays."""
    values = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for c in range(images.shape[-1]):
        # A 256-bin histogram gives exact moments without a float copy of the whole split.
        counts = np.bincount(images[..., c].ravel(), minlength=256).astype(np.float64)
        total = counts.sum()
        mean = counts @ values / total
        var = counts @ (values - mean) ** 2 / total
        means.append(mean)
        stds.append(np.sqrt(var))
    return np.asarray(means, np.float32), np.asarray(stds, np.float32)


def batches(
    split: Split,
    batch_size: int,
    *,
    rng: np.random.Generator | None = None,
    drop_remainder: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields (images, labels) batches, in order if `rng` is None, else in a permutation from it."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(split)
    order = None if rng is None else rng.permutation(n)
    stop = n - n % batch_size if drop_remainder else n
    for start in range(0, stop, batch_size):
        end = min(start + batch_size, n)
        # Slices are views; only a shuffled order pays for a gather.
        index = slice(start, end) if order is None else order[start:end]
        yield split.images[index], split.labels[index]
