"""Request streams drawn from a data split, chosen by the config's `workload.name`.

A workload is what the serving loop replays: requests with an id, an input, its label, an
arrival time and the index of the split example it came from (so callers can look up recorded
activations and base answers). Arrivals are a Poisson process at `workload.rate` starting at 0.
Every workload is a pure function of its config section and the split: same seed, same stream.

- ``uniform``: the split shuffled (successive permutations when the stream is longer than the
  split); no locality at all, P(label_t == label_{t-1}) is about 1 / classes. One segment, 0.
- ``temporal``: video-like locality. The stream is a sequence of segments of geometric length
  (mean ``mean_segment``); each segment has a hot set of ``hot_classes[0]..hot_classes[1]``
  classes, never identical to the previous segment's, and a request comes from a hot class
  (uniformly among them) with probability ``hot_fraction``, else from any class uniformly.
  This is the locality online-learned caches are meant to exploit.
- ``drift``: class popularity is Zipf, p(rank r) proportional to 1 / r**zipf_exponent, and the
  class -> rank mapping rotates by one class every ``drift_period`` requests: a slow change of
  what is popular rather than abrupt scene changes. Segment i is the i-th drift period.
- ``shift``: the ``temporal`` stream of the same seed (identical labels and source examples),
  with a ``shift_fraction`` of its segments corrupted by one of ``corruptions`` (one per
  segment) at ``severity``: covariate shift, to check that early exits do not silently lose
  accuracy when inputs look unlike the data the caches were trained on.

Examples of a class are drawn by cycling through a shuffled per-class pool, reshuffled each
time it runs out, so a source example repeats only once its class has been used up. Classes
with no example in the split are never requested: hot sets, Zipf ranks and "any class" draws
range over the classes present in the split.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import ml_collections
import numpy as np
import scipy.ndimage

from gati_jax.data.splits import Split
from gati_jax.registry import Registry

# Second entries of each rng's seed sequence: streams of different workloads (and the arrival
# times) stay independent for one seed. `shift` reuses temporal's so its labels equal temporal's.
_UNIFORM_STREAM, _TEMPORAL_STREAM, _DRIFT_STREAM, _SHIFT_STREAM = 1, 2, 3, 4
_ARRIVAL_STREAM = 100


@dataclasses.dataclass(frozen=True)
class Workload:
    """A request stream: per-request arrays, all of length N, in arrival order."""

    name: str
    ids: np.ndarray  # int64 (N,), 0..N-1 for a fresh stream
    images: np.ndarray  # uint8 (N, H, W, C), corrupted where `corrupted`
    labels: np.ndarray  # int32 (N,)
    arrivals: np.ndarray  # float64 (N,) seconds, nondecreasing, first at 0
    segments: np.ndarray  # int32 (N,) segment index (see the module docstring per workload)
    corrupted: np.ndarray  # bool (N,)
    source_index: np.ndarray  # int64 (N,) index into the split the request was drawn from
    corruption: np.ndarray  # str (N,) the corruption's name, "" where not corrupted

    def __post_init__(self) -> None:
        n = self.ids.shape[0]
        for field in ("ids", "images", "labels", "arrivals", "segments", "corrupted",
                      "source_index", "corruption"):
            if getattr(self, field).shape[:1] != (n,):
                raise ValueError(f"Workload.{field} must have {n} rows, got shape "
                                 f"{getattr(self, field).shape}")

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def take(self, index: int | slice | np.ndarray) -> Workload:
        """The requests at `index` (an int gives a one-request workload), ids kept."""
        if isinstance(index, (int, np.integer)):
            if not -len(self) <= index < len(self):
                raise IndexError(f"request {index} out of range for a workload of {len(self)}")
            # A one-request slice keeps every array 1-D, so one request is just a short stream.
            start = int(index) % len(self)
            index = slice(start, start + 1)
        fields = {f.name: getattr(self, f.name)[index]
                  for f in dataclasses.fields(self) if f.name != "name"}
        return Workload(name=self.name, **fields)


@dataclasses.dataclass(frozen=True)
class Stream:
    """What a workload builder decides: which examples, in which segments, corrupted how."""

    source_index: np.ndarray  # int64 (N,)
    segments: np.ndarray  # int32 (N,)
    images: np.ndarray | None = None  # uint8 (N, H, W, C); None: the split's images as they are
    corruption: np.ndarray | None = None  # str (N,); None: nothing corrupted


# A builder maps (workload config section, split, length) to the stream's examples.
Builder = Callable[[ml_collections.ConfigDict, Split, int], Stream]

_WORKLOADS: Registry[Builder] = Registry("workload", "workload.name")
register_workload = _WORKLOADS.register
available_workloads = _WORKLOADS.names


def make_workload(config_section: ml_collections.ConfigDict, split: Split) -> Workload:
    """The workload named by `config_section.name`, drawn from `split`."""
    builder = _WORKLOADS.get(config_section.name)
    length = int(config_section.length)
    if length <= 0:
        raise ValueError(f"workload.length must be >= 1, got {config_section.length}")
    if len(split) == 0:
        raise ValueError(f"workload {config_section.name!r} needs examples, but the split "
                         f"({config_section.split}) is empty")
    if not config_section.rate > 0:
        raise ValueError(f"workload.rate must be > 0, got {config_section.rate}")
    stream = builder(config_section, split, length)
    source_index = np.asarray(stream.source_index, np.int64)
    images = split.images[source_index] if stream.images is None else stream.images
    corruption = (np.full(length, "", dtype="<U16") if stream.corruption is None
                  else np.asarray(stream.corruption))
    return Workload(
        name=str(config_section.name),
        ids=np.arange(length, dtype=np.int64),
        images=images,
        labels=split.labels[source_index],
        arrivals=poisson_arrivals(length, float(config_section.rate), int(config_section.seed)),
        segments=np.asarray(stream.segments, np.int32),
        corrupted=corruption != "",
        source_index=source_index,
        corruption=corruption,
    )


def poisson_arrivals(length: int, rate: float, seed: int) -> np.ndarray:
    """Arrival times (s) of a Poisson process at `rate` per second, the first at 0."""
    gaps = np.random.default_rng([seed, _ARRIVAL_STREAM]).exponential(1.0 / rate, length)
    # The first request opens the stream; measuring from it keeps the clock's origin meaningful.
    return np.concatenate([[0.0], np.cumsum(gaps[:-1])])


def _rng(section: ml_collections.ConfigDict, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(section.seed), stream])


def _class_pools(split: Split) -> dict[int, np.ndarray]:
    labels = split.labels
    return {int(c): np.flatnonzero(labels == c) for c in np.unique(labels)}


def _draw_examples(classes: np.ndarray, pools: dict[int, np.ndarray],
                   rng: np.random.Generator) -> np.ndarray:
    """Source indices for a class sequence, cycling through reshuffled per-class pools."""
    source = np.empty(classes.shape[0], np.int64)
    for c, pool in pools.items():
        where = np.flatnonzero(classes == c)
        if where.size == 0:
            continue
        cycles = -(-where.size // pool.size)
        source[where] = np.concatenate([rng.permutation(pool) for _ in range(cycles)])[
            :where.size]
    return source


@register_workload("uniform")
def _uniform(section: ml_collections.ConfigDict, split: Split, length: int) -> Stream:
    rng = _rng(section, _UNIFORM_STREAM)
    n = len(split)
    order = np.concatenate([rng.permutation(n) for _ in range(-(-length // n))])[:length]
    return Stream(source_index=order, segments=np.zeros(length, np.int32))


def _segment_lengths(length: int, mean_segment: float, rng: np.random.Generator) -> np.ndarray:
    """Geometric segment lengths (>= 1, mean `mean_segment`) summing to exactly `length`."""
    lengths: list[np.ndarray] = []
    total = 0
    while total < length:
        # Draw in batches sized to the expected need; a short batch just loops once more.
        draw = rng.geometric(1.0 / mean_segment, size=max(8, int(2 * length / mean_segment)))
        lengths.append(draw)
        total += int(draw.sum())
    lengths_all = np.concatenate(lengths)
    ends = np.cumsum(lengths_all)
    count = int(np.searchsorted(ends, length)) + 1
    lengths_all = lengths_all[:count].copy()
    lengths_all[-1] -= int(ends[count - 1]) - length
    return lengths_all


def _temporal_classes(section: ml_collections.ConfigDict, present: np.ndarray,
                      length: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(class per request, segment per request) of the temporal stream."""
    lo, hi = (int(v) for v in section.hot_classes)
    lengths = _segment_lengths(length, float(section.mean_segment), rng)
    segments = np.repeat(np.arange(lengths.size, dtype=np.int32), lengths)
    hot_sets: list[np.ndarray] = []
    previous: np.ndarray | None = None
    for _ in lengths:
        # Up to 100 redraws: with so few classes that every hot set is the same one, accept it.
        for _ in range(100):
            size = min(int(rng.integers(lo, hi + 1)), present.size)
            hot = np.sort(rng.choice(present, size=size, replace=False))
            if previous is None or not np.array_equal(hot, previous):
                break
        hot_sets.append(hot)
        previous = hot
    is_hot = rng.random(length) < float(section.hot_fraction)
    pick = rng.random(length)
    sizes = np.array([h.size for h in hot_sets])[segments]
    flat = np.concatenate(hot_sets)
    offsets = np.concatenate([[0], np.cumsum([h.size for h in hot_sets])[:-1]])[segments]
    hot_class = flat[offsets + np.minimum((pick * sizes).astype(np.int64), sizes - 1)]
    any_class = present[rng.integers(0, present.size, length)]
    return np.where(is_hot, hot_class, any_class), segments


@register_workload("temporal")
def _temporal(section: ml_collections.ConfigDict, split: Split, length: int) -> Stream:
    rng = _rng(section, _TEMPORAL_STREAM)
    pools = _class_pools(split)
    classes, segments = _temporal_classes(section, np.array(sorted(pools)), length, rng)
    return Stream(source_index=_draw_examples(classes, pools, rng), segments=segments)


@register_workload("drift")
def _drift(section: ml_collections.ConfigDict, split: Split, length: int) -> Stream:
    rng = _rng(section, _DRIFT_STREAM)
    pools = _class_pools(split)
    present = np.array(sorted(pools))
    k = present.size
    popularity = 1.0 / np.arange(1, k + 1) ** float(section.zipf_exponent)
    by_rank = rng.permutation(present)  # by_rank[r]: the class of rank r in the first period
    ranks = rng.choice(k, size=length, p=popularity / popularity.sum())
    periods = np.arange(length) // int(section.drift_period)
    classes = by_rank[(ranks + periods) % k]
    return Stream(source_index=_draw_examples(classes, pools, rng),
                  segments=periods.astype(np.int32))


@register_workload("shift")
def _shift(section: ml_collections.ConfigDict, split: Split, length: int) -> Stream:
    clean = _temporal(section, split, length)
    rng = _rng(section, _SHIFT_STREAM)
    num_segments = int(clean.segments[-1]) + 1
    fraction = float(section.shift_fraction)
    # At least one corrupted segment when any is asked for: a shift stream without a shift
    # would pass an accuracy check vacuously.
    count = min(num_segments, max(int(fraction > 0), round(fraction * num_segments)))
    chosen = np.sort(rng.choice(num_segments, size=count, replace=False))
    names = tuple(section.corruptions)
    per_segment = np.full(num_segments, "", dtype="<U16")
    per_segment[chosen] = [names[i] for i in rng.integers(0, len(names), count)]
    corruption = per_segment[clean.segments]
    images = split.images[clean.source_index]
    for name in names:
        where = np.flatnonzero(corruption == name)
        if where.size:
            images[where] = corrupt(images[where], name, float(section.severity), rng)
    return dataclasses.replace(clean, images=images, corruption=corruption)


# Corruptions map uint8 images (..., H, W, C), a severity in (0, 1] and an rng to uint8 images
# of the same shape.
Corruption = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _noise(images: np.ndarray, severity: float, rng: np.random.Generator) -> np.ndarray:
    sigma = 0.4 * severity * 255.0
    return _to_uint8(images.astype(np.float32) + rng.normal(0.0, sigma, images.shape))


def _blur(images: np.ndarray, severity: float, rng: np.random.Generator) -> np.ndarray:
    # Spatial axes only: batch and channels must not be mixed. sigma 1 px at severity 0.5.
    sigma = 2.0 * severity
    sigmas = (0.0,) * (images.ndim - 3) + (sigma, sigma, 0.0)
    return _to_uint8(scipy.ndimage.gaussian_filter(images.astype(np.float32), sigmas,
                                                   mode="reflect"))


def _contrast(images: np.ndarray, severity: float, rng: np.random.Generator) -> np.ndarray:
    values = images.astype(np.float32)
    mean = values.mean(axis=(-3, -2, -1), keepdims=True)
    return _to_uint8(mean + (values - mean) * (1.0 - 0.8 * severity))


CORRUPTIONS: dict[str, Corruption] = {"noise": _noise, "blur": _blur, "contrast": _contrast}


def corrupt(images: np.ndarray, name: str, severity: float,
            rng: np.random.Generator) -> np.ndarray:
    """`images` (uint8 (..., H, W, C)) corrupted by the corruption `name` at `severity`."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; available: {', '.join(CORRUPTIONS)}")
    if images.dtype != np.uint8 or images.ndim < 3:
        raise ValueError(f"corruptions need uint8 (..., H, W, C) images, got "
                         f"{images.shape} {images.dtype}")
    return CORRUPTIONS[name](images, severity, rng)


def _entropy_bits(counts: np.ndarray) -> np.ndarray:
    """Entropy (bits) of histograms along the last axis."""
    totals = counts.sum(axis=-1, keepdims=True)
    p = counts / np.maximum(totals, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log2(p), 0.0)
    return terms.sum(axis=-1)


def _windows(labels: np.ndarray, window: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.size == 0:
        raise ValueError("locality statistics need at least one label")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    # Whole windows only, so every entropy is over the same number of requests; a stream
    # shorter than one window is one window.
    count = max(1, labels.size // window)
    return labels[:count * window].reshape(count, -1)


def window_entropies(labels: np.ndarray, window: int, num_classes: int) -> np.ndarray:
    """Entropy (bits) of the class histogram of each consecutive, whole window of `labels`."""
    windows = _windows(labels, window)
    counts = np.stack([np.bincount(w, minlength=num_classes) for w in windows])
    return _entropy_bits(counts)


def locality_stats(labels: np.ndarray, window: int, num_classes: int) -> dict[str, float]:
    """Locality of a label stream: repeat probability, per-window and overall class entropy."""
    labels = np.asarray(labels)
    windows = _windows(labels, window)
    same = labels[1:] == labels[:-1]
    # Run boundaries are where the label changes; mean run length = N / number of runs.
    runs = 1 + int(np.count_nonzero(~same))
    return {
        "p_same_as_previous": float(same.mean()) if same.size else float("nan"),
        "mean_run_length": labels.size / runs,
        "mean_window_entropy_bits": float(window_entropies(labels, window, num_classes).mean()),
        "mean_classes_per_window": float(np.mean([np.unique(w).size for w in windows])),
        "overall_entropy_bits": float(_entropy_bits(np.bincount(labels,
                                                                minlength=num_classes))),
        "max_entropy_bits": float(np.log2(num_classes)),
    }


def workload_stats(workload: Workload, window: int, num_classes: int) -> dict[str, float]:
    """The locality statistics of a workload's labels plus its size, rate and shift."""
    span = float(workload.arrivals[-1] - workload.arrivals[0])
    return {
        "requests": float(len(workload)),
        "segments": float(np.unique(workload.segments).size),
        "duration_s": span,
        "mean_rate": (len(workload) - 1) / span if span > 0 else float("nan"),
        "corrupted_fraction": float(workload.corrupted.mean()),
        **locality_stats(workload.labels, window, num_classes),
    }
