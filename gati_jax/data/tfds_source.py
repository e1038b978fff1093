"""TFDS-backed loaders (CIFAR-10/100) and the TFDS reader other loaders fall back on."""

from __future__ import annotations

import ml_collections
import numpy as np
import tqdm

try:
    import tensorflow_datasets as tfds
except ImportError:  # A serving-only install reads IDX files and never needs TFDS.
    tfds = None

from gati_jax.data.errors import DataNotFoundError
from gati_jax.data.registry import register_dataset
from gati_jax.data.splits import Split


def read_tfds_split(name: str, split: str, data_dir: str, label_key: str = "label") -> Split:
    """Reads a whole TFDS split into memory through `tfds.data_source` (downloads if allowed)."""
    if tfds is None:
        raise ImportError(
            f"reading {name}[{split}] needs tensorflow-datasets, which is not "
            f"installed: `pip install tensorflow-datasets array_record`"
        )
    source = tfds.data_source(name, split=split, data_dir=data_dir or None)
    n = len(source)
    images, labels = None, np.empty((n,), np.int32)
    # One record at a time: `__getitems__` is broken under tfds.testing.mock_data.
    for i in tqdm.tqdm(range(n), desc=f"{name}[{split}]", leave=False):
        record = source[i]
        image = np.asarray(record["image"], np.uint8)
        if images is None:
            images = np.empty((n, *image.shape), np.uint8)
        images[i] = image
        labels[i] = record[label_key]
    if images is None:
        raise ValueError(f"TFDS split {name}[{split}] is empty")
    return Split(images, labels)


def _load_cifar(
    name: str, num_classes: int, data_config: ml_collections.ConfigDict
) -> tuple[Split, Split, int]:
    try:
        # 'label' is CIFAR-100's fine label (100 classes); 'coarse_label' is the other one.
        train = read_tfds_split(name, "train", data_config.data_dir)
        test = read_tfds_split(name, "test", data_config.data_dir)
    except Exception as err:  # TFDS raises many unrelated types: missing files, network, parsing.
        where = data_config.data_dir or "the default TFDS directory (~/tensorflow_datasets)"
        raise DataNotFoundError(
            f"could not load {name} through TFDS from {where}: {type(err).__name__}: {err}. "
            f"Either pass --config.data.data_dir=DIR where DIR holds TFDS-prepared {name} "
            f"data (e.g. `tfds build {name} --data_dir=DIR` on a machine with network access), "
            f"or run with network access so that TFDS can download it."
        ) from err
    return train, test, num_classes


@register_dataset("cifar10")
def load_cifar10(data_config: ml_collections.ConfigDict) -> tuple[Split, Split, int]:
    """Raw CIFAR-10 train/test splits from TFDS."""
    return _load_cifar("cifar10", 10, data_config)


@register_dataset("cifar100")
def load_cifar100(data_config: ml_collections.ConfigDict) -> tuple[Split, Split, int]:
    """Raw CIFAR-100 train/test splits (fine labels) from TFDS."""
    return _load_cifar("cifar100", 100, data_config)
