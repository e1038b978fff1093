"""Config sections of the data: ``data`` (the data set and its splits), ``augment`` (base
training's augmentation) and ``workload`` (request streams), each with its validation."""

from __future__ import annotations

import ml_collections

from gati_jax.config_checks import require


def data_config() -> ml_collections.ConfigDict:
    """The ``data`` section: which data set, where it lives, how validation is carved."""
    c = ml_collections.ConfigDict()
    c.name = "fashion_mnist"
    # Empty means: look in the Debian package's directory, then TFDS.
    c.data_dir = ""
    # Carved from train; the caches are trained on it later, so it never trains the base.
    c.validation_size = 5000
    c.split_seed = 0
    c.synthetic = ml_collections.ConfigDict()
    c.synthetic.num_classes = 10
    c.synthetic.image_size = 16
    c.synthetic.channels = 1
    c.synthetic.train_size = 4000
    c.synthetic.test_size = 1000
    c.synthetic.hard_fraction = 0.3
    c.synthetic.seed = 0
    return c


def validate_data(d: ml_collections.ConfigDict) -> None:
    """Checks the ``data`` section."""
    from gati_jax.data.registry import available_datasets

    require(d.name in available_datasets(), "data.name", d.name,
            f"one of {list(available_datasets())}")
    require(int(d.validation_size) > 0, "data.validation_size", d.validation_size, "> 0")
    require(0.0 <= d.synthetic.hard_fraction <= 1.0, "data.synthetic.hard_fraction",
            d.synthetic.hard_fraction, "in [0, 1]")


def augment_config() -> ml_collections.ConfigDict:
    """The ``augment`` section: random flips and crops while training the base network."""
    c = ml_collections.ConfigDict()
    c.flip = True
    c.crop_padding = 2
    return c


def validate_augment(a: ml_collections.ConfigDict) -> None:
    """Checks the ``augment`` section."""
    require(int(a.crop_padding) >= 0, "augment.crop_padding", a.crop_padding, ">= 0")


def workload_config() -> ml_collections.ConfigDict:
    """The ``workload`` section: the request stream served (gati_jax/data/workloads.py)."""
    c = ml_collections.ConfigDict()
    # uniform | temporal | drift | shift (gati_jax/data/workloads.py).
    c.name = "temporal"
    c.split = "test"
    c.length = 600
    c.seed = 0
    # Open-loop arrivals: a Poisson process at this many requests per second.
    c.rate = 100.0
    # temporal: segments of geometric length with this mean, each with a hot set of
    # hot_classes[0]..hot_classes[1] classes that produce hot_fraction of its requests.
    c.hot_classes = (1, 3)
    c.mean_segment = 100
    c.hot_fraction = 0.9
    # drift: Zipf class popularity whose ranking rotates by one class every drift_period.
    c.zipf_exponent = 1.2
    c.drift_period = 500
    # shift: this fraction of segments is corrupted by one of the corruptions at severity.
    c.corruptions = ("noise", "blur", "contrast")
    c.shift_fraction = 0.3
    c.severity = 0.5
    # Requests per window for locality statistics and per-window reports.
    c.window = 100
    return c


def validate_workload(w: ml_collections.ConfigDict) -> None:
    """Checks the ``workload`` section."""
    from gati_jax.data.workloads import CORRUPTIONS, available_workloads

    require(w.name in available_workloads(), "workload.name", w.name,
            f"one of {list(available_workloads())}")
    require(w.split in ("train", "validation", "test"), "workload.split", w.split,
            "'train', 'validation' or 'test'")
    require(int(w.length) >= 1, "workload.length", w.length, ">= 1")
    # numpy seed sequences take only non-negative integers.
    require(int(w.seed) >= 0, "workload.seed", w.seed, ">= 0")
    require(w.rate > 0, "workload.rate", w.rate, "> 0")
    require(len(w.hot_classes) == 2 and 1 <= int(w.hot_classes[0]) <= int(w.hot_classes[1]),
            "workload.hot_classes", w.hot_classes, "(low, high) with 1 <= low <= high")
    require(w.mean_segment >= 1, "workload.mean_segment", w.mean_segment, ">= 1")
    require(0 < w.hot_fraction <= 1, "workload.hot_fraction", w.hot_fraction, "in (0, 1]")
    require(w.zipf_exponent > 0, "workload.zipf_exponent", w.zipf_exponent, "> 0")
    require(int(w.drift_period) >= 1, "workload.drift_period", w.drift_period, ">= 1")
    require(len(w.corruptions) > 0 and all(c in CORRUPTIONS for c in w.corruptions),
            "workload.corruptions", w.corruptions, f"a non-empty subset of {list(CORRUPTIONS)}")
    require(0 <= w.shift_fraction <= 1, "workload.shift_fraction", w.shift_fraction,
            "in [0, 1]")
    require(0 < w.severity <= 1, "workload.severity", w.severity, "in (0, 1]")
    require(int(w.window) >= 2, "workload.window", w.window, ">= 2")
