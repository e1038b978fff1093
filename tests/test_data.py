"""Tests of gati_jax.data: IDX reading, loaders, the validation carve, batching, augmentation."""

from __future__ import annotations

import collections
import gzip
import os
import re
import struct

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from gati_jax import data
from gati_jax.config import ConfigError, base_config, validate_config
from gati_jax.data import fashion_mnist, tfds_source
from gati_jax.data.config import data_config as default_data_config
from gati_jax.data.idx import read_idx
from gati_jax.data.splits import carve_indices, validation_count
from gati_jax.data.synthetic import make_synthetic

FASHION_DIR = fashion_mnist.DEBIAN_DIR
needs_fashion = pytest.mark.skipif(
    not os.path.isdir(FASHION_DIR), reason="dataset-fashion-mnist is not installed"
)


def data_config(
    name: str = "synthetic",
    *,
    data_dir: str = "",
    validation_size: int = 100,
    split_seed: int = 0,
    **synthetic,
) -> ml_collections.ConfigDict:
    """A `data` config section (the schema's defaults); `synthetic` overrides the small
    synthetic defaults."""
    config = default_data_config()
    config.update(
        dict(name=name, data_dir=data_dir, validation_size=validation_size, split_seed=split_seed)
    )
    config.synthetic.update(
        dict(
            num_classes=4,
            image_size=8,
            channels=1,
            train_size=600,
            test_size=300,
            hard_fraction=0.3,
            seed=0,
        )
        | synthetic
    )
    return config


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding written by hand from the format description, independent of the reader."""
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}
    header = struct.pack(">BBBB", 0, 0, codes[array.dtype], array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path, array: np.ndarray, compress: bool = False) -> None:
    payload = idx_bytes(array)
    with open(path, "wb") as f:
        f.write(gzip.compress(payload) if compress else payload)


def write_fashion_dir(
    directory, rng: np.random.Generator, n_train: int, n_test: int
) -> dict[str, np.ndarray]:
    """Writes the four Fashion-MNIST IDX files (train images gzipped, the rest raw)."""
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    for stem, array in arrays.items():
        compress = stem.startswith("train-images")
        write_idx(directory / (stem + (".gz" if compress else "")), array, compress)
    return arrays


def example_keys(split: data.Split) -> collections.Counter:
    """Multiset of (image bytes, label): compares splits by content, independent of order."""
    return collections.Counter(
        (image.tobytes(), int(label)) for image, label in zip(split.images, split.labels)
    )


# --- IDX reader -----------------------------------------------------------------------------


@needs_fashion
def test_read_idx_real_files():
    train = read_idx(os.path.join(FASHION_DIR, "train-images-idx3-ubyte.gz"))
    test = read_idx(os.path.join(FASHION_DIR, "t10k-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(FASHION_DIR, "train-labels-idx1-ubyte.gz"))
    test_labels = read_idx(os.path.join(FASHION_DIR, "t10k-labels-idx1-ubyte.gz"))
    assert train.shape == (60000, 28, 28) and train.dtype == np.uint8
    assert test.shape == (10000, 28, 28) and test.dtype == np.uint8
    for lab, n in ((labels, 60000), (test_labels, 10000)):
        assert lab.shape == (n,) and lab.dtype == np.uint8
        assert lab.min() == 0 and lab.max() == 9


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_read_idx_round_trip(tmp_path, compress, dtype):
    # Multi-byte values with negatives check the big-endian decoding, not just the header.
    values = np.arange(30) * 8 if dtype == np.uint8 else (np.arange(30) - 7) * 1000
    array = values.reshape(2, 3, 5).astype(dtype)
    path = tmp_path / ("x.idx.gz" if compress else "x.idx")
    write_idx(path, array, compress)
    out = read_idx(path)
    assert out.dtype == dtype and out.dtype.isnative
    np.testing.assert_array_equal(out, array)


def test_read_idx_truncated_raw(tmp_path):
    payload = idx_bytes(np.zeros((4, 3, 3), np.uint8))
    path = tmp_path / "short.idx"
    path.write_bytes(payload[:-5])
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*truncated"):
        read_idx(path)
    path.write_bytes(payload[:6])  # cut inside the dimension list
    with pytest.raises(ValueError, match=re.escape(str(path))):
        read_idx(path)


def test_read_idx_truncated_gzip(tmp_path):
    path = tmp_path / "short.idx.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((50, 9), np.uint8)))[:-10])
    with pytest.raises(ValueError, match=re.escape(str(path))):
        read_idx(path)


def test_read_idx_bad_magic_and_dtype(tmp_path):
    payload = bytearray(idx_bytes(np.zeros((2, 2), np.uint8)))
    bad_magic = tmp_path / "magic.idx"
    bad_magic.write_bytes(b"\x01" + bytes(payload[1:]))
    with pytest.raises(ValueError, match=re.escape(str(bad_magic)) + ".*magic"):
        read_idx(bad_magic)
    payload[2] = 0x42
    bad_dtype = tmp_path / "dtype.idx"
    bad_dtype.write_bytes(bytes(payload))
    with pytest.raises(ValueError, match=re.escape(str(bad_dtype)) + ".*dtype"):
        read_idx(bad_dtype)


# --- Fashion-MNIST ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fashion() -> data.Dataset:
    if not os.path.isdir(FASHION_DIR):
        pytest.skip("dataset-fashion-mnist is not installed")
    return data.load_dataset(data_config("fashion_mnist", validation_size=5000))


def test_fashion_mnist_dataset(fashion):
    assert fashion.name == "fashion_mnist" and fashion.num_classes == 10
    assert fashion.image_shape == (28, 28, 1)
    for split, n in ((fashion.train, 55000), (fashion.validation, 5000), (fashion.test, 10000)):
        assert split.images.shape == (n, 28, 28, 1) and split.images.dtype == np.uint8
        assert split.labels.shape == (n,) and split.labels.dtype == np.int32
        assert set(np.unique(split.labels)) == set(range(10))


def test_fashion_mnist_stats_from_train_only(fashion):
    assert fashion.mean.shape == (1,) and fashion.std.shape == (1,)
    assert fashion.mean.dtype == np.float32 and fashion.std.dtype == np.float32
    assert np.all(np.isfinite(fashion.mean)) and np.all(fashion.std > 0)
    pixels = fashion.train.images.astype(np.float64) / 255.0
    np.testing.assert_allclose(fashion.mean, pixels.mean(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(fashion.std, pixels.std(axis=(0, 1, 2)), rtol=1e-6)
    validation_mean = fashion.validation.images.mean() / 255.0
    assert abs(float(fashion.mean[0]) - validation_mean) > 1e-6


def test_fashion_mnist_data_dir_takes_precedence(tmp_path):
    arrays = write_fashion_dir(tmp_path, np.random.default_rng(1), n_train=30, n_test=10)
    ds = data.load_dataset(data_config("fashion_mnist", data_dir=str(tmp_path), validation_size=5))
    assert (len(ds.train), len(ds.validation), len(ds.test)) == (25, 5, 10)
    raw_train = data.Split(
        arrays["train-images-idx3-ubyte"][..., None],
        arrays["train-labels-idx1-ubyte"].astype(np.int32),
    )
    assert example_keys(ds.train) + example_keys(ds.validation) == example_keys(raw_train)
    np.testing.assert_array_equal(ds.test.images[..., 0], arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(ds.test.labels, arrays["t10k-labels-idx1-ubyte"])


def test_fashion_mnist_corrupt_data_dir_raises(tmp_path):
    write_fashion_dir(tmp_path, np.random.default_rng(2), n_train=12, n_test=4)
    labels = tmp_path / "t10k-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-1])
    with pytest.raises(ValueError, match=re.escape(str(labels))):
        data.load_dataset(data_config("fashion_mnist", data_dir=str(tmp_path), validation_size=2))


def test_fashion_mnist_missing_everywhere(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", str(tmp_path / "not-installed"))

    def no_network(*args, **kwargs):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(tfds_source.tfds, "data_source", no_network)
    with pytest.raises(data.DataNotFoundError) as info:
        data.load_dataset(data_config("fashion_mnist", data_dir=str(empty)))
    message = str(info.value)
    assert "--config.data.data_dir" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "TFDS" in message and "ConnectionError: no route to host" in message
    assert str(empty) in message


# --- CIFAR through TFDS mock data -------------------------------------------------------------


@pytest.mark.parametrize("name,num_classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_mock_data(name, num_classes):
    with tfds.testing.mock_data(num_examples=12):
        ds = data.load_dataset(data_config(name, validation_size=2))
    assert ds.num_classes == num_classes and ds.image_shape == (32, 32, 3)
    for split, n in ((ds.train, 10), (ds.validation, 2), (ds.test, 12)):
        assert split.images.shape == (n, 32, 32, 3) and split.images.dtype == np.uint8
        assert split.labels.dtype == np.int32
        assert split.labels.min() >= 0 and split.labels.max() < num_classes
    assert ds.mean.shape == (3,) and ds.std.shape == (3,)


def test_cifar_missing_raises_data_not_found(monkeypatch):
    def missing(*args, **kwargs):
        raise FileNotFoundError("no prepared data")

    monkeypatch.setattr(tfds_source.tfds, "data_source", missing)
    with pytest.raises(data.DataNotFoundError, match="data_dir.*network"):
        data.load_dataset(data_config("cifar10"))


# --- Synthetic ----------------------------------------------------------------------------------


def test_synthetic_deterministic_per_seed():
    first, second = make_synthetic(data_config().synthetic), make_synthetic(data_config().synthetic)
    np.testing.assert_array_equal(first.train.images, second.train.images)
    np.testing.assert_array_equal(first.test.labels, second.test.labels)
    np.testing.assert_array_equal(first.train_hard, second.train_hard)
    other = make_synthetic(data_config(seed=1).synthetic)
    assert not np.array_equal(first.train.images, other.train.images)


def test_synthetic_shapes_and_hard_fraction():
    synthetic = make_synthetic(data_config(channels=3, image_size=10, hard_fraction=0.25).synthetic)
    assert synthetic.train.images.shape == (600, 10, 10, 3)
    assert synthetic.test.images.shape == (300, 10, 10, 3)
    assert abs(synthetic.train_hard.mean() - 0.25) < 0.02
    assert abs(synthetic.test_hard.mean() - 0.25) < 0.02
    assert set(np.unique(synthetic.train.labels)) == set(range(4))


def test_synthetic_learnable_and_hard_is_harder():
    synthetic = make_synthetic(
        data_config(
            num_classes=10, image_size=12, train_size=2000, test_size=1000, hard_fraction=0.5
        ).synthetic
    )
    x_train = synthetic.train.images.reshape(2000, -1) / 255.0
    x_test = synthetic.test.images.reshape(1000, -1) / 255.0
    means = np.stack([x_train[synthetic.train.labels == k].mean(0) for k in range(10)])
    predicted = np.argmin(((x_test[:, None] - means[None]) ** 2).sum(-1), axis=1)
    correct = predicted == synthetic.test.labels
    easy_acc, hard_acc = correct[~synthetic.test_hard].mean(), correct[synthetic.test_hard].mean()
    assert correct.mean() > 0.7  # chance is 0.1
    assert easy_acc > 0.95 and easy_acc > hard_acc + 0.05


def test_synthetic_rejects_bad_hard_fraction():
    with pytest.raises(ValueError, match="data.synthetic.hard_fraction"):
        make_synthetic(data_config(hard_fraction=1.5).synthetic)


# --- Validation carve, config errors, batching ---------------------------------------------------


def test_validation_carve_deterministic_and_disjoint():
    train_idx, val_idx = carve_indices(600, 100, split_seed=3)
    again_train, again_val = carve_indices(600, 100, split_seed=3)
    np.testing.assert_array_equal(train_idx, again_train)
    np.testing.assert_array_equal(val_idx, again_val)
    assert len(val_idx) == 100 and np.all(np.diff(train_idx) > 0)
    assert not set(train_idx) & set(val_idx)
    assert sorted(set(train_idx) | set(val_idx)) == list(range(600))
    assert not np.array_equal(val_idx, carve_indices(600, 100, split_seed=4)[1])

    cfg = data_config(split_seed=3)
    ds, raw = data.load_dataset(cfg), make_synthetic(cfg.synthetic).train
    np.testing.assert_array_equal(ds.validation.images, raw.images[val_idx])
    np.testing.assert_array_equal(ds.train.labels, raw.labels[train_idx])
    assert example_keys(ds.train) + example_keys(ds.validation) == example_keys(raw)
    assert not set(example_keys(ds.train)) & set(example_keys(ds.validation))
    pixels = ds.train.images / 255.0
    np.testing.assert_allclose(ds.mean, pixels.mean(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(ds.std, pixels.std(axis=(0, 1, 2)), rtol=1e-6)


def test_unknown_dataset_lists_available():
    with pytest.raises(ValueError, match="imagenet") as info:
        data.load_dataset(data_config("imagenet"))
    for name in ("cifar10", "cifar100", "fashion_mnist", "synthetic"):
        assert name in str(info.value)
    assert set(data.available_datasets()) >= {"cifar10", "cifar100", "fashion_mnist", "synthetic"}


@pytest.mark.parametrize("size", [-1, 600, 700])
def test_bad_validation_size(size):
    with pytest.raises(ConfigError, match="data.validation_size"):
        data.load_dataset(data_config(validation_size=size))


def test_validation_size_scales_with_the_train_split():
    """0 (the default): a tenth of the split, at least 600 (so the planner's 300 tuning
    requests certify the default bound), at most 5,000 and at most half the split."""
    defaults = default_data_config()
    assert defaults.validation_size == 0

    def count(n, size=0):
        return validation_count(
            n, size, defaults.validation_fraction, defaults.validation_min, defaults.validation_max
        )

    assert count(60000) == 5000  # Fashion-MNIST: the 5,000 it always had
    assert count(50000) == 5000  # CIFAR-10/100 too
    assert count(20000) == 2000
    assert count(1300) == 600 and count(1000) == 500 and count(10) == 5
    assert count(60000, 1234) == 1234  # an explicit size is taken as it is
    ds = data.load_dataset(data_config(validation_size=0, train_size=2000))
    assert (len(ds.train), len(ds.validation)) == (1400, 600)


@needs_fashion
def test_the_default_fashion_mnist_split_is_the_one_it_always_was(fashion):
    ds = data.load_dataset(base_config().data)
    np.testing.assert_array_equal(ds.validation.labels, fashion.validation.labels)
    np.testing.assert_array_equal(ds.validation.images, fashion.validation.images)
    assert len(ds.train) == 55000


def test_train_and_test_subsets_are_seeded_random_subsets():
    full = data.load_dataset(data_config(validation_size=0))
    config = data_config(validation_size=0)
    config.train_subset, config.test_subset = 300, 120
    small = data.load_dataset(config)
    assert (len(small.train), len(small.validation), len(small.test)) == (150, 150, 120)
    again = data.load_dataset(config)
    np.testing.assert_array_equal(small.train.images, again.train.images)
    raw = make_synthetic(config.synthetic)
    assert not (
        example_keys(small.train) + example_keys(small.validation) - example_keys(raw.train)
    )
    assert not example_keys(small.test) - example_keys(full.test)
    config.split_seed = 1
    assert not np.array_equal(data.load_dataset(config).test.images, small.test.images)
    config.test_subset = 301
    with pytest.raises(ConfigError, match=r"data\.test_subset=301.*only 300"):
        data.load_dataset(config)


def test_data_config_validation_names_the_key():
    for key, value in (
        ("validation_fraction", 0.0),
        ("validation_min", 0),
        ("train_subset", -1),
        ("test_fraction", 1.0),
        ("image_size", -2),
    ):
        config = base_config()
        config.data[key] = value
        with pytest.raises(ConfigError, match=rf"data\.{key}="):
            validate_config(config)
    config = base_config()
    config.data.validation_min, config.data.validation_max = 600, 500
    with pytest.raises(ConfigError, match=r"data\.validation_min="):
        validate_config(config)
    for name, key in (("tfds", "tfds_name"), ("npz", "data_dir"), ("image_folder", "data_dir")):
        config = base_config()
        config.data.name = name
        with pytest.raises(ConfigError, match=rf"data\.{key}="):
            validate_config(config)


# --- Your own data: an .npz, a folder of images per class, TFDS by name ----------------------


def _images(rng, n, shape=(9, 7), classes=3):
    return (
        rng.integers(0, 256, (n, *shape), dtype=np.uint8),
        (np.arange(n) % classes).astype(np.int64),
    )


def test_an_npz_with_test_arrays_loads_as_it_is(tmp_path):
    rng = np.random.default_rng(0)
    (x, y), (xt, yt) = _images(rng, 700), _images(rng, 50)
    np.savez(tmp_path / "mine.npz", images=x, labels=y, test_images=xt, test_labels=yt)
    ds = data.load_dataset(
        data_config("npz", data_dir=str(tmp_path / "mine.npz"), validation_size=0)
    )
    assert ds.num_classes == 3 and ds.image_shape == (9, 7, 1)
    assert (len(ds.train), len(ds.validation), len(ds.test)) == (350, 350, 50)
    np.testing.assert_array_equal(ds.test.images[..., 0], xt)
    np.testing.assert_array_equal(ds.test.labels, yt)
    raw = data.Split(x[..., None], y.astype(np.int32))
    assert example_keys(ds.train) + example_keys(ds.validation) == example_keys(raw)


def test_a_keras_layout_npz_without_test_arrays_carves_its_test_split(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (1000, 6, 6, 3), dtype=np.uint8)
    y = (np.arange(1000) % 5).astype(np.uint8)
    np.savez(tmp_path / "k.npz", x_train=x, y_train=y, class_names=np.array(list("abcdef")))
    config = data_config("npz", data_dir=str(tmp_path / "k.npz"), validation_size=0)
    ds = data.load_dataset(config)
    assert ds.num_classes == 6 and ds.image_shape == (6, 6, 3)  # six class names
    assert (len(ds.train) + len(ds.validation), len(ds.test)) == (800, 200)
    raw = data.Split(x, y.astype(np.int32))
    assert example_keys(ds.train) + example_keys(ds.validation) + example_keys(
        ds.test
    ) == example_keys(raw)
    np.testing.assert_array_equal(data.load_dataset(config).test.images, ds.test.images)


@pytest.mark.parametrize(
    "arrays,match",
    [
        (dict(pictures=np.zeros((4, 3, 3), np.uint8)), "needs 'images' and 'labels'"),
        (dict(images=np.zeros((4, 3, 3), np.float32), labels=np.zeros(4, int)), "uint8"),
        (dict(images=np.zeros((4, 3, 3), np.uint8), labels=np.zeros(3, int)), "4 images"),
        (dict(images=np.zeros((4, 3, 3), np.uint8), labels=-np.ones(4, int)), "negatives"),
        (
            dict(
                images=np.zeros((4, 3, 3), np.uint8),
                labels=np.zeros(4, int),
                test_images=np.zeros((2, 3, 3), np.uint8),
            ),
            "come together",
        ),
        (
            dict(
                images=np.zeros((4, 3, 3), np.uint8),
                labels=np.arange(4),
                class_names=np.array(["a", "b"]),
            ),
            "label 3 has no class name",
        ),
    ],
)
def test_a_bad_npz_is_refused_in_one_line_naming_the_file(tmp_path, arrays, match):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(data.DataFormatError, match=match) as info:
        data.load_dataset(data_config("npz", data_dir=str(path), validation_size=1))
    assert str(path) in str(info.value) and isinstance(info.value, ConfigError)
    with pytest.raises(data.DataNotFoundError, match="missing.npz"):
        data.load_dataset(data_config("npz", data_dir=str(tmp_path / "missing.npz")))


def _write_folder(root, rng, counts, size=(8, 6), mode="L", suffix=".png"):
    from PIL import Image

    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
            pixels = rng.integers(0, 256, shape, dtype=np.uint8)
            Image.fromarray(pixels, mode).save(root / name / f"{i:03d}{suffix}")
    (root / "README.txt").write_text("not an image")


def test_an_image_folder_with_train_and_test_loads_per_class(tmp_path):
    rng = np.random.default_rng(2)
    _write_folder(tmp_path / "train", rng, {"cat": 12, "dog": 10, "emu": 8})
    _write_folder(tmp_path / "test", rng, {"cat": 3, "emu": 2})
    (tmp_path / "train" / "dog" / ".DS_Store").write_bytes(b"\0")
    ds = data.load_dataset(data_config("image_folder", data_dir=str(tmp_path), validation_size=6))
    assert ds.num_classes == 3 and ds.image_shape == (6, 8, 1)  # 8 wide, 6 high, grey
    assert (len(ds.train), len(ds.validation), len(ds.test)) == (24, 6, 5)
    np.testing.assert_array_equal(ds.test.labels, [0, 0, 0, 2, 2])  # cat 0, dog 1, emu 2
    from PIL import Image

    first = np.asarray(Image.open(tmp_path / "test" / "cat" / "000.png"))
    np.testing.assert_array_equal(ds.test.images[0, ..., 0], first)


def test_an_image_folder_without_test_carves_it_and_resizes_on_request(tmp_path):
    rng = np.random.default_rng(3)
    _write_folder(tmp_path, rng, {"a": 20, "b": 20}, size=(10, 10), mode="RGB", suffix=".jpg")
    _write_folder(tmp_path, rng, {"b": 1}, size=(12, 9), mode="RGB", suffix=".bmp")
    config = data_config("image_folder", data_dir=str(tmp_path), validation_size=5)
    with pytest.raises(data.DataFormatError, match="12x9 pixels.*data.image_size"):
        data.load_dataset(config)
    config.image_size = 8
    ds = data.load_dataset(config)
    assert ds.image_shape == (8, 8, 3) and ds.num_classes == 2
    assert (len(ds.train) + len(ds.validation), len(ds.test)) == (33, 8)  # 41 images, 20%
    with pytest.raises(data.DataNotFoundError, match="nowhere"):
        data.load_dataset(data_config("image_folder", data_dir=str(tmp_path / "nowhere")))
    (tmp_path / "c").mkdir()
    with pytest.raises(data.DataFormatError, match="holds no images"):
        data.load_dataset(config)


def test_any_tfds_image_classification_set_by_name():
    config = data_config("tfds", validation_size=2)
    config.tfds_name = "mnist"
    with tfds.testing.mock_data(num_examples=12):
        ds = data.load_dataset(config)
        assert ds.num_classes == 10 and ds.image_shape == (28, 28, 1)
        assert (len(ds.train), len(ds.validation), len(ds.test)) == (10, 2, 12)
        config.tfds_test_split = ""  # no test split: carved from train
        config.image_size = 14  # and resized
        ds = data.load_dataset(config)
        assert ds.image_shape == (14, 14, 1) and len(ds.test) == 2 and len(ds.train) == 8
        config.tfds_keys = ("picture", "label")
        with pytest.raises(data.DataFormatError, match="not 'picture' and 'label'.*tfds_keys"):
            data.load_dataset(config)


def test_batches_order_permutation_and_remainder():
    split = data.Split(
        np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1), np.arange(10, dtype=np.int32)
    )
    in_order = list(data.batches(split, 4))
    assert [len(labels) for _, labels in in_order] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([lab for _, lab in in_order]), np.arange(10))
    shuffled = list(data.batches(split, 4, rng=np.random.default_rng(0), drop_remainder=True))
    assert [len(labels) for _, labels in shuffled] == [4, 4]
    labels = np.concatenate([lab for _, lab in shuffled])
    assert len(set(labels)) == 8 and not np.array_equal(labels, np.arange(8))
    for images, lab in shuffled:
        np.testing.assert_array_equal(images[:, 0, 0, 0], lab)


# --- normalize / augment ------------------------------------------------------------------------


def random_images(n: int = 32, dtype=np.uint8) -> np.ndarray:
    # Non-square with distinct H, W, C so that a swapped axis cannot go unnoticed.
    return np.random.default_rng(0).integers(1, 256, (n, 7, 5, 3)).astype(dtype)


augment_jit = jax.jit(data.augment, static_argnums=(2, 3))


def test_normalize_matches_numpy():
    images = random_images()
    mean, std = np.array([0.2, 0.5, 0.7], np.float32), np.array([0.3, 0.25, 0.1], np.float32)
    out = jax.jit(data.normalize)(images, mean, std)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, (images / 255.0 - mean) / std, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_augment_identity_and_dtype(dtype):
    images = random_images(dtype=dtype)
    out = augment_jit(jax.random.key(0), images, False, 0)
    assert out.shape == images.shape and out.dtype == dtype
    np.testing.assert_array_equal(out, images)
    out = augment_jit(jax.random.key(0), images, True, 2)
    assert out.shape == images.shape and out.dtype == dtype


def test_augment_flip_per_image():
    images = random_images()
    out = np.asarray(augment_jit(jax.random.key(1), images, True, 0))
    flipped = np.array([np.array_equal(o, np.flip(x, axis=1)) for o, x in zip(out, images)])
    kept = np.array([np.array_equal(o, x) for o, x in zip(out, images)])
    assert np.all(flipped ^ kept)
    assert 0 < flipped.sum() < len(images)
    again = np.asarray(augment_jit(jax.random.key(1), images, True, 0))
    np.testing.assert_array_equal(out, again)


def test_augment_crop_shifts_content():
    pad, images = 2, random_images()
    out = np.asarray(augment_jit(jax.random.key(2), images, False, pad))
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    h, w = images.shape[1:3]
    offsets = []
    for o, p in zip(out, padded):
        matches = [
            (dy, dx)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            if np.array_equal(o, p[dy : dy + h, dx : dx + w])
        ]
        assert len(matches) == 1
        offsets.append(matches[0])
    assert len(set(offsets)) > 5


def test_augment_rngs_differ():
    images = random_images()
    first = augment_jit(jax.random.key(3), images, True, 2)
    second = augment_jit(jax.random.key(4), images, True, 2)
    assert not np.array_equal(first, second)
