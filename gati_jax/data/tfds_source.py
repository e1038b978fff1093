"""TFDS-backed loaders: CIFAR-10/100, any TFDS image classification data set by name
(``data.name = "tfds"``, ``data.tfds_name``), and the TFDS reader other loaders fall back on."""

from __future__ import annotations

import ml_collections
import numpy as np
import tqdm

try:
    import tensorflow_datasets as tfds
except ImportError:  # A serving-only install reads IDX files and never needs TFDS.
    tfds = None

from gati_jax.data.errors import DataFormatError, DataNotFoundError
from gati_jax.data.registry import register_dataset
from gati_jax.data.splits import Split, carve_test


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image  # Pillow comes with matplotlib; only resizing needs it

    grey = image.shape[-1] == 1
    resized = Image.fromarray(image[..., 0] if grey else image).resize(
        (size, size), Image.Resampling.BILINEAR
    )
    out = np.asarray(resized, np.uint8)
    return out[..., None] if grey else out


def read_tfds_split(
    name: str,
    split: str,
    data_dir: str,
    label_key: str = "label",
    image_key: str = "image",
    image_size: int = 0,
) -> Split:
    """Reads a whole TFDS split into memory through `tfds.data_source` (downloads if allowed);
    images resized to ``image_size`` squared when > 0 (else they must share a size)."""
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
        if image_key not in record or label_key not in record:
            raise DataFormatError(
                f"TFDS {name}[{split}] records have the features "
                f"{sorted(record)}, not '{image_key}' and '{label_key}': set "
                "data.tfds_keys to (image key, label key)"
            )
        image = np.asarray(record[image_key])
        if image.ndim == 2:
            image = image[..., None]
        if image.dtype != np.uint8 or image.ndim != 3:
            raise DataFormatError(
                f"TFDS {name}[{split}] '{image_key}' is {image.dtype} "
                f"{image.shape}, not a uint8 (H, W, C) image"
            )
        if image_size > 0 and image.shape[:2] != (image_size, image_size):
            image = _resize(image, image_size)
        if images is None:
            images = np.empty((n, *image.shape), np.uint8)
        elif image.shape != images.shape[1:]:
            raise DataFormatError(
                f"TFDS {name}[{split}] images differ in size ({image.shape} "
                f"and {images.shape[1:]}): set data.image_size to resize "
                "them to one square size"
            )
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


def _tfds_num_classes(name: str, data_dir: str, label_key: str, labels: list[np.ndarray]) -> int:
    """The label feature's class count from the data set's TFDS metadata; the largest label
    plus one when the metadata does not say."""
    try:
        feature = tfds.builder(name, data_dir=data_dir or None).info.features[label_key]
        return int(feature.num_classes)
    except Exception:  # no metadata, not a ClassLabel: the labels tell
        return int(max(int(lab.max()) for lab in labels)) + 1


@register_dataset("tfds")
def load_tfds(data_config: ml_collections.ConfigDict) -> tuple[Split, Split, int]:
    """Raw splits of the TFDS image classification data set data.tfds_name."""
    name = str(data_config.tfds_name)
    image_key, label_key = (str(k) for k in data_config.tfds_keys)
    size = int(data_config.image_size)
    try:
        train = read_tfds_split(
            name,
            str(data_config.tfds_train_split),
            data_config.data_dir,
            label_key,
            image_key,
            size,
        )
        test = (
            read_tfds_split(
                name,
                str(data_config.tfds_test_split),
                data_config.data_dir,
                label_key,
                image_key,
                size,
            )
            if data_config.tfds_test_split
            else None
        )
    except DataFormatError:
        raise
    except Exception as err:  # TFDS raises many unrelated types: missing files, network, parsing.
        where = data_config.data_dir or "the default TFDS directory (~/tensorflow_datasets)"
        raise DataNotFoundError(
            f"could not load the TFDS data set {name!r} (data.tfds_name) from {where}: "
            f"{type(err).__name__}: {err}. Check the name and the splits "
            f"(data.tfds_train_split={data_config.tfds_train_split!r}, "
            f"data.tfds_test_split={data_config.tfds_test_split!r}; an empty test split "
            "carves one from train), and either pass --config.data.data_dir=DIR where DIR "
            f"holds TFDS-prepared data (`tfds build {name} --data_dir=DIR` on a machine with "
            "network access) or run with network access so that TFDS can download it."
        ) from err
    if test is None:
        train, test = carve_test(
            train, float(data_config.test_fraction), int(data_config.split_seed)
        )
    return (
        train,
        test,
        _tfds_num_classes(name, data_config.data_dir, label_key, [train.labels, test.labels]),
    )
