"""Fashion-MNIST from IDX files (a given directory or the Debian package), else from TFDS."""

from __future__ import annotations

import logging
import os

import ml_collections
import numpy as np

from gati_jax.data import tfds_source
from gati_jax.data.errors import DataNotFoundError
from gati_jax.data.idx import read_idx
from gati_jax.data.registry import register_dataset
from gati_jax.data.splits import Split

# Where the Debian package `dataset-fashion-mnist` installs the IDX files.
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"

NUM_CLASSES = 10
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find(directory: str, stem: str) -> str | None:
    """Path of `stem` or `stem.gz` in `directory`, or None."""
    for name in (stem, stem + ".gz"):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None


def _read_idx_split(images_path: str, labels_path: str) -> Split:
    """One split from an images/labels pair of IDX files, checked for Fashion-MNIST's shapes."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise ValueError(
            f"IDX file {images_path} holds {images.shape} {images.dtype}, "
            f"not (N, 28, 28) uint8 Fashion-MNIST images"
        )
    if labels.shape != images.shape[:1] or labels.dtype != np.uint8 or labels.max() >= NUM_CLASSES:
        raise ValueError(
            f"IDX file {labels_path} does not hold {images.shape[0]} uint8 labels "
            f"in [0, {NUM_CLASSES}) for {images_path}"
        )
    return Split(images[..., None], labels.astype(np.int32))


def read_idx_dir(directory: str) -> tuple[Split, Split] | None:
    """(train, test) from the four IDX files in `directory`; None if any is missing."""
    paths = {
        split: tuple(_find(directory, stem) for stem in stems) for split, stems in _FILES.items()
    }
    if any(path is None for pair in paths.values() for path in pair):
        return None
    return _read_idx_split(*paths["train"]), _read_idx_split(*paths["test"])


@register_dataset("fashion_mnist")
def load_fashion_mnist(data_config: ml_collections.ConfigDict) -> tuple[Split, Split, int]:
    """Raw Fashion-MNIST splits: IDX files in data.data_dir, then the Debian dir, then TFDS."""
    data_dir = data_config.data_dir
    tried = []
    # Corrupt files raise rather than fall through: a silent fallback would hide them.
    for directory in ([data_dir] if data_dir else []) + [DEBIAN_DIR]:
        splits = read_idx_dir(directory)
        if splits is not None:
            return (*splits, NUM_CLASSES)
        tried.append(directory)
        logging.info("Fashion-MNIST IDX files not found in %s", directory)
    try:
        train = tfds_source.read_tfds_split("fashion_mnist", "train", data_dir)
        test = tfds_source.read_tfds_split("fashion_mnist", "test", data_dir)
    except Exception as err:  # TFDS raises many unrelated types: missing files, network, parsing.
        stems = ", ".join(stem for pair in _FILES.values() for stem in pair)
        raise DataNotFoundError(
            f"Fashion-MNIST not found. Looked for the IDX files ({stems}, each optionally .gz) "
            f"in {', '.join(tried)}, then tried TFDS, which failed with "
            f"{type(err).__name__}: {err}. Provide the data in one of three ways: "
            f"(1) pass --config.data.data_dir=DIR where DIR contains the four IDX files; "
            f"(2) `apt-get install dataset-fashion-mnist`, which puts them in {DEBIAN_DIR}; "
            f"(3) run with network access so that TFDS can download fashion_mnist "
            f"(into data.data_dir if set)."
        ) from err
    return train, test, NUM_CLASSES
