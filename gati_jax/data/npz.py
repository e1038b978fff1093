"""Your own arrays: a data set from one ``.npz`` file (``data.name = "npz"``).

The file (``data.data_dir``) holds uint8 images, (N, H, W) or (N, H, W, C), and integer
labels 0 .. K-1 under one of two sets of names:

- ``images``, ``labels`` and, optionally, ``test_images``, ``test_labels``;
- ``x_train``, ``y_train`` and, optionally, ``x_test``, ``y_test`` (Keras' layout, e.g.
  ``mnist.npz``).

Without test arrays, ``data.test_fraction`` of the examples become the test split. An
optional ``class_names`` array (strings) fixes the number of classes K; otherwise K is the
largest label plus one. See docs/own_data.md.
"""

from __future__ import annotations

import os
import zipfile

import ml_collections
import numpy as np

from gati_jax.data.errors import DataFormatError, DataNotFoundError
from gati_jax.data.registry import register_dataset
from gati_jax.data.splits import Split, carve_test

# (train images, train labels, test images, test labels) under each naming.
LAYOUTS = (
    ("images", "labels", "test_images", "test_labels"),
    ("x_train", "y_train", "x_test", "y_test"),
)


def as_split(images: np.ndarray, labels: np.ndarray, where: str) -> Split:
    """A Split from uint8 images ((N, H, W) gains a channel axis) and integer labels >= 0,
    checked, with errors that name ``where``."""
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[0] == 0:
        raise DataFormatError(
            f"{where}: images must be (N, H, W) or (N, H, W, C) with N >= 1, "
            f"got shape {images.shape}"
        )
    if images.dtype != np.uint8:
        raise DataFormatError(
            f"{where}: images must be uint8 pixels in [0, 255], got "
            f"{images.dtype} (for floats in [0, 1]: "
            "np.round(x * 255).astype(np.uint8))"
        )
    if labels.shape != images.shape[:1]:
        raise DataFormatError(
            f"{where}: {images.shape[0]} images but labels of shape "
            f"{labels.shape}; one integer label per image"
        )
    if labels.dtype.kind not in "iu" or (labels.size and labels.min() < 0):
        raise DataFormatError(
            f"{where}: labels must be integers 0 .. K-1, got {labels.dtype}"
            f"{' with negatives' if labels.dtype.kind in 'iu' else ''}"
        )
    return Split(np.ascontiguousarray(images), labels.astype(np.int32))


def num_classes_of(splits: list[Split], class_names: np.ndarray | None, where: str) -> int:
    """K: the number of class names when given, else the largest label plus one."""
    top = max(int(s.labels.max()) for s in splits)
    if class_names is None:
        return top + 1
    if top >= len(class_names):
        raise DataFormatError(
            f"{where}: label {top} has no class name ({len(class_names)} class_names)"
        )
    return len(class_names)


def read_npz(path: str | os.PathLike) -> tuple[Split, Split | None, int]:
    """(train, test or None, num_classes) from an .npz file in one of :data:`LAYOUTS`."""
    where = f"data file {path}"
    if not os.path.isfile(path):
        raise DataNotFoundError(
            f"{where} (data.data_dir) not found: name an .npz file of "
            "images and labels (docs/own_data.md)"
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, AttributeError) as error:
        raise DataFormatError(f"{where}: not a readable .npz archive ({error})") from None
    for layout in LAYOUTS:
        if layout[0] in arrays and layout[1] in arrays:
            images_key, labels_key, test_images_key, test_labels_key = layout
            break
    else:
        names = " or ".join(f"'{a}' and '{b}'" for a, b, _, _ in LAYOUTS)
        raise DataFormatError(f"{where}: needs {names}; found {sorted(arrays)}")
    train = as_split(arrays[images_key], arrays[labels_key], f"{where} [{images_key}]")
    test = None
    if (test_images_key in arrays) != (test_labels_key in arrays):
        raise DataFormatError(
            f"{where}: '{test_images_key}' and '{test_labels_key}' come "
            "together (or neither: data.test_fraction of the examples "
            "become the test split)"
        )
    if test_images_key in arrays:
        test = as_split(
            arrays[test_images_key], arrays[test_labels_key], f"{where} [{test_images_key}]"
        )
        if test.images.shape[1:] != train.images.shape[1:]:
            raise DataFormatError(
                f"{where}: test images are {test.images.shape[1:]}, train "
                f"images {train.images.shape[1:]}"
            )
    names = arrays.get("class_names")
    splits = [train] + ([test] if test is not None else [])
    return train, test, num_classes_of(splits, names, where)


@register_dataset("npz")
def load_npz(data_config: ml_collections.ConfigDict) -> tuple[Split, Split, int]:
    """Raw splits of the .npz file at data.data_dir (test carved when it has none)."""
    train, test, num_classes = read_npz(data_config.data_dir)
    if test is None:
        train, test = carve_test(
            train, float(data_config.test_fraction), int(data_config.split_seed)
        )
    return train, test, num_classes
