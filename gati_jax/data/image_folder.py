"""Your own images: a data set from a folder with one subfolder per class
(``data.name = "image_folder"``).

``data.data_dir`` holds either ``train/`` and ``test/``, each with one folder per class, or
the class folders themselves (then ``data.test_fraction`` of the images become the test
split). Class k is the k-th class folder name in sorted order. Images are read with Pillow
(PNG, JPEG, BMP, GIF, TIFF, WebP); all grayscale gives one channel, anything else three
(RGB, alpha dropped). They must share a size unless ``data.image_size`` resizes them to a
square. See docs/own_data.md.
"""

from __future__ import annotations

from pathlib import Path

import ml_collections
import numpy as np

from gati_jax.data.errors import DataFormatError, DataNotFoundError
from gati_jax.data.registry import register_dataset
from gati_jax.data.splits import Split, carve_test

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# Pillow modes read as one channel; every other mode is converted to RGB.
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def _class_folders(root: Path) -> list[Path]:
    return sorted(
        (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.name,
    )


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in SUFFIXES and not p.name.startswith(".")
    )


def list_images(
    root: Path, classes: list[str] | None = None
) -> tuple[list[Path], np.ndarray, list[str]]:
    """(files, labels, class names) of a folder of class folders; ``classes`` fixes the names
    (a test folder reads the train folder's), else they are the sorted folder names."""
    folders = _class_folders(root)
    names = [f.name for f in folders] if classes is None else classes
    if not folders:
        raise DataFormatError(
            f"{root} holds no class folders: put each class's images in a "
            "folder named after it (docs/own_data.md)"
        )
    unknown = sorted({f.name for f in folders} - set(names))
    if unknown:
        raise DataFormatError(
            f"{root}: class folders {unknown} are not among the train split's classes {names}"
        )
    files, labels = [], []
    for folder in folders:
        found = _image_files(folder)
        if not found:
            raise DataFormatError(
                f"{folder} holds no images (files ending in {', '.join(SUFFIXES)})"
            )
        files += found
        labels += [names.index(folder.name)] * len(found)
    return files, np.asarray(labels, np.int32), names


def _open(path: Path):
    from PIL import Image  # Pillow comes with matplotlib; only this loader needs it

    try:
        return Image.open(path)
    except OSError as error:
        raise DataFormatError(f"{path}: not a readable image ({error})") from None


def read_images(
    files: list[Path], image_size: int, grey: bool | None = None
) -> tuple[np.ndarray, bool]:
    """uint8 (N, H, W, C) images and whether they are grey (one channel); ``grey`` None:
    grey if every image is. Resized to ``image_size`` squared when > 0, else they must all
    share a size."""
    from PIL import Image

    if grey is None:  # opening reads the header only
        modes = []
        for path in files:
            with _open(path) as image:
                modes.append(image.mode)
        grey = all(mode in _GREY_MODES for mode in modes)
    mode = "L" if grey else "RGB"
    size = None if image_size <= 0 else (image_size, image_size)
    arrays = []
    for path in files:
        with _open(path) as image:
            try:
                image.load()
            except OSError as error:
                raise DataFormatError(f"{path}: not a readable image ({error})") from None
            if image.mode in ("I", "I;16", "F"):  # 16-bit or float grey: scale to 0 .. 255
                values = np.asarray(image, np.float64)
                peak = values.max() if values.max() > 0 else 1.0
                image = Image.fromarray(np.round(values * 255.0 / peak).astype(np.uint8))
            image = image.convert(mode)
        if size is None:
            size = image.size
        if image.size != size:
            if image_size <= 0:
                raise DataFormatError(
                    f"{path} is {image.size[0]}x{image.size[1]} pixels but {files[0]} is "
                    f"{size[0]}x{size[1]}: set data.image_size to resize every image to one "
                    "square size"
                )
            image = image.resize(size, Image.Resampling.BILINEAR)
        arrays.append(np.asarray(image, np.uint8))
    images = np.stack(arrays)
    return (images[..., None] if grey else images), grey


@register_dataset("image_folder")
def load_image_folder(data_config: ml_collections.ConfigDict) -> tuple[Split, Split, int]:
    """Raw splits of the folder at data.data_dir (train/ and test/, or the class folders)."""
    root = Path(data_config.data_dir).expanduser()
    if not root.is_dir():
        raise DataNotFoundError(
            f"image folder {root} (data.data_dir) not found: name a folder "
            "with one subfolder of images per class (docs/own_data.md)"
        )
    size = int(data_config.image_size)
    if (root / "train").is_dir() and (root / "test").is_dir():
        files, labels, names = list_images(root / "train")
        test_files, test_labels, _ = list_images(root / "test", names)
        images, grey = read_images(files, size)
        test_images, _ = read_images(test_files, size, grey)
        if test_images.shape[1:] != images.shape[1:]:
            raise DataFormatError(
                f"{root / 'test'}: images are {test_images.shape[1:3]} "
                f"pixels, train images {images.shape[1:3]}: set "
                "data.image_size to resize both to one square size"
            )
        return Split(images, labels), Split(test_images, test_labels), len(names)
    files, labels, names = list_images(root)
    images, _ = read_images(files, size)
    train, test = carve_test(
        Split(images, labels), float(data_config.test_fraction), int(data_config.split_seed)
    )
    return train, test, len(names)
