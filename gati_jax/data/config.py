"""Config sections of the data: ``data`` (the data set and its splits), ``augment`` (base
training's augmentation) and ``workload`` (request streams), each with its validation."""

from __future__ import annotations

import ml_collections

from gati_jax.config_checks import require


def data_config() -> ml_collections.ConfigDict:
    """The ``data`` section: which data set, where it lives, how validation is carved."""
    c = ml_collections.ConfigDict()
    # A registered data set (gati_jax/data/registry.py): fashion_mnist, cifar10, cifar100,
    # synthetic, npz (your arrays), image_folder (your images, a folder per class) or tfds
    # (any TFDS image classification data set, named by tfds_name); docs/own_data.md.
    c.name = "fashion_mnist"
    # Where the data lives: a directory of IDX files (fashion_mnist; empty: the Debian
    # package's directory, then TFDS), a TFDS data directory (cifar10, cifar100, tfds), the
    # .npz file (npz) or the folder of class folders (image_folder).
    c.data_dir = ""
    # Validation examples, carved from train; the caches are trained and the plans tuned on
    # them, so they never train the base network. 0: validation_fraction of the train split,
    # at least validation_min and at most validation_max, and never more than half of it.
    # The floor keeps the default bound (planner.eps 0.01 at 95%) certifiable: the planner
    # tunes on half the validation split and needs 268 requests for it.
    c.validation_size = 0
    c.validation_fraction = 0.1
    c.validation_min = 600
    c.validation_max = 5000
    c.split_seed = 0
    # Use only this many examples of the train (test) split, a random subset drawn with
    # split_seed; 0: all of them. The subset is taken before validation is carved.
    c.train_subset = 0
    c.test_subset = 0
    # For a source without a test split (an .npz without test arrays, an image folder
    # without test/, a TFDS set without tfds_test_split): this fraction of its examples,
    # drawn with split_seed, is the test split.
    c.test_fraction = 0.2
    # data.name = "tfds": the TFDS data set, its splits (an empty test split: carved by
    # test_fraction) and the feature keys of its images and labels.
    c.tfds_name = ""
    c.tfds_train_split = "train"
    c.tfds_test_split = "test"
    c.tfds_keys = ("image", "label")
    # data.name = "image_folder": resize every image to image_size x image_size pixels
    # (0: keep the size, which every image must then share).
    c.image_size = 0
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

    require(
        d.name in available_datasets(), "data.name", d.name, f"one of {list(available_datasets())}"
    )
    require(
        int(d.validation_size) >= 0,
        "data.validation_size",
        d.validation_size,
        ">= 0 (0: validation_fraction of the train split)",
    )
    require(
        0 < d.validation_fraction < 1,
        "data.validation_fraction",
        d.validation_fraction,
        "in (0, 1)",
    )
    require(
        1 <= int(d.validation_min) <= int(d.validation_max),
        "data.validation_min",
        d.validation_min,
        f"in [1, data.validation_max={d.validation_max}]",
    )
    for key in ("train_subset", "test_subset", "image_size"):
        require(int(d[key]) >= 0, f"data.{key}", d[key], ">= 0 (0: off)")
    require(0 < d.test_fraction < 1, "data.test_fraction", d.test_fraction, "in (0, 1)")
    require(
        d.name != "tfds" or bool(d.tfds_name),
        "data.tfds_name",
        d.tfds_name,
        "a TFDS data set name (e.g. 'mnist') when data.name is 'tfds'",
    )
    require(bool(d.tfds_train_split), "data.tfds_train_split", d.tfds_train_split, "a split name")
    require(
        len(d.tfds_keys) == 2 and all(d.tfds_keys),
        "data.tfds_keys",
        d.tfds_keys,
        "(image key, label key)",
    )
    require(
        d.name not in ("npz", "image_folder") or bool(d.data_dir),
        "data.data_dir",
        d.data_dir,
        f"the path of the data when data.name is {d.name!r}",
    )
    require(
        0.0 <= d.synthetic.hard_fraction <= 1.0,
        "data.synthetic.hard_fraction",
        d.synthetic.hard_fraction,
        "in [0, 1]",
    )


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
    # uniform | temporal | drift | shift | video | trace (gati_jax/data/workloads.py).
    c.name = "temporal"
    c.split = "test"
    # Requests per stream (a trace has its own length: see trace.limit).
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
    c.video = _video_config()
    c.trace = _trace_config()
    return c


def _video_config() -> ml_collections.ConfigDict:
    """``workload.video``: a camera's stream of scenes of object instances (video workload)."""
    c = ml_collections.ConfigDict()
    # Scenes last a geometric number of frames with this mean; a cut switches to new instances.
    c.mean_scene = 300.0
    # A scene shows instances[0]..instances[1] split images, in turn (round robin), each in
    # view for a geometric number of frames of mean mean_turn before the next.
    c.instances = (1, 3)
    c.mean_turn = 60.0
    # Camera motion, a smooth random walk per scene (stationary standard deviations):
    # translation in pixels, rotation in degrees, scale as log-scale (0.05: about 5%);
    # correlated over about motion_time frames.
    c.translate = 2.0
    c.rotate = 5.0
    c.scale = 0.05
    c.motion_time = 30.0
    # Lighting, drifting more slowly (over about lighting_time frames): a brightness offset
    # (standard deviation, 0..255 pixel units) and contrast about the frame's mean (log-scale).
    c.brightness = 12.0
    c.contrast = 0.1
    c.lighting_time = 200.0
    # Per-frame sensor noise: Gaussian, this standard deviation in 0..255 pixel units.
    c.noise = 4.0
    # Partial occlusion: episodes of mean occlusion_length frames covering about
    # occlusion_fraction of the stream; each a rectangle of one grey level whose sides are
    # occlusion_size[0]..occlusion_size[1] of the image's.
    c.occlusion_fraction = 0.1
    c.occlusion_length = 20.0
    c.occlusion_size = (0.25, 0.5)
    # This fraction of frames shows a random split image (any class) instead: a distractor.
    c.distractor_fraction = 0.05
    return c


def _trace_config() -> ml_collections.ConfigDict:
    """``workload.trace``: a stream the user brings (trace workload)."""
    c = ml_collections.ConfigDict()
    # An .npz of uint8 frames (N, H, W, C) with optional labels and arrivals, or split
    # indices (.npy, .txt, .json, or .npz 'indices') with optional arrivals; formats in
    # gati_jax/data/workloads.py.
    c.path = ""
    # Serve only the trace's first `limit` requests; 0: all of them.
    c.limit = 0
    # Replay the trace's own arrival times (seconds) when it has them; else, or when False,
    # Poisson arrivals at workload.rate.
    c.use_arrivals = True
    return c


def validate_workload(w: ml_collections.ConfigDict) -> None:
    """Checks the ``workload`` section."""
    from gati_jax.data.workloads import CORRUPTIONS, available_workloads

    require(
        w.name in available_workloads(),
        "workload.name",
        w.name,
        f"one of {list(available_workloads())}",
    )
    require(
        w.split in ("train", "validation", "test"),
        "workload.split",
        w.split,
        "'train', 'validation' or 'test'",
    )
    require(int(w.length) >= 1, "workload.length", w.length, ">= 1")
    # numpy seed sequences take only non-negative integers.
    require(int(w.seed) >= 0, "workload.seed", w.seed, ">= 0")
    require(w.rate > 0, "workload.rate", w.rate, "> 0")
    require(
        len(w.hot_classes) == 2 and 1 <= int(w.hot_classes[0]) <= int(w.hot_classes[1]),
        "workload.hot_classes",
        w.hot_classes,
        "(low, high) with 1 <= low <= high",
    )
    require(w.mean_segment >= 1, "workload.mean_segment", w.mean_segment, ">= 1")
    require(0 < w.hot_fraction <= 1, "workload.hot_fraction", w.hot_fraction, "in (0, 1]")
    require(w.zipf_exponent > 0, "workload.zipf_exponent", w.zipf_exponent, "> 0")
    require(int(w.drift_period) >= 1, "workload.drift_period", w.drift_period, ">= 1")
    require(
        len(w.corruptions) > 0 and all(c in CORRUPTIONS for c in w.corruptions),
        "workload.corruptions",
        w.corruptions,
        f"a non-empty subset of {list(CORRUPTIONS)}",
    )
    require(0 <= w.shift_fraction <= 1, "workload.shift_fraction", w.shift_fraction, "in [0, 1]")
    require(0 < w.severity <= 1, "workload.severity", w.severity, "in (0, 1]")
    require(int(w.window) >= 2, "workload.window", w.window, ">= 2")
    _validate_video(w.video)
    _validate_trace(w.trace, w.name)


def _validate_video(v: ml_collections.ConfigDict) -> None:
    for key in ("mean_scene", "mean_turn", "motion_time", "lighting_time", "occlusion_length"):
        require(v[key] >= 1, f"workload.video.{key}", v[key], ">= 1 (frames)")
    require(
        len(v.instances) == 2 and 1 <= int(v.instances[0]) <= int(v.instances[1]),
        "workload.video.instances",
        v.instances,
        "(low, high) with 1 <= low <= high",
    )
    for key in ("translate", "rotate", "scale", "brightness", "contrast", "noise"):
        require(v[key] >= 0, f"workload.video.{key}", v[key], ">= 0")
    require(
        0 <= v.occlusion_fraction < 1,
        "workload.video.occlusion_fraction",
        v.occlusion_fraction,
        "in [0, 1)",
    )
    require(
        len(v.occlusion_size) == 2 and 0 < v.occlusion_size[0] <= v.occlusion_size[1] <= 1,
        "workload.video.occlusion_size",
        v.occlusion_size,
        "(low, high) with 0 < low <= high <= 1",
    )
    require(
        0 <= v.distractor_fraction <= 1,
        "workload.video.distractor_fraction",
        v.distractor_fraction,
        "in [0, 1]",
    )


def _validate_trace(t: ml_collections.ConfigDict, workload_name: str) -> None:
    from gati_jax.data.workloads import TRACE_SUFFIXES

    require(
        workload_name != "trace" or bool(t.path),
        "workload.trace.path",
        t.path,
        "a trace file when workload.name is 'trace'",
    )
    require(
        not t.path or str(t.path).lower().endswith(TRACE_SUFFIXES),
        "workload.trace.path",
        t.path,
        f"a file ending in one of {TRACE_SUFFIXES}",
    )
    require(int(t.limit) >= 0, "workload.trace.limit", t.limit, ">= 0 (0: the whole trace)")
