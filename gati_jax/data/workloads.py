"""Request streams drawn from a data split, chosen by the config's `workload.name`.

A workload is what the serving loop replays: requests with an id, an input, its label, an
arrival time and the index of the split example it came from (so callers can look up recorded
activations and base answers). Arrivals are a Poisson process at `workload.rate` starting at 0,
unless a trace brings its own. Every workload is a pure function of its config section and the
split (and, for ``trace``, the file it names): same seed, same stream.

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
- ``video``: a camera's stream of scenes (``workload.video.*``). A scene lasts a geometric
  number of frames (mean ``mean_scene``) and shows ``instances[0]..instances[1]`` source
  images of the split in turn (each in view for a geometric ``mean_turn`` frames, then the
  next, round robin). Every frame is its instance rendered anew: a smooth random walk of
  translation, rotation and scale (``translate`` px, ``rotate`` degrees, ``scale`` log-scale,
  correlation time ``motion_time`` frames), slowly drifting brightness and contrast
  (``brightness``, ``contrast``, ``lighting_time``), sensor noise (``noise``) and, in
  episodes of mean ``occlusion_length`` frames covering ``occlusion_fraction`` of the
  stream, a rectangle occluding part of the view. A ``distractor_fraction`` of frames
  show, instead, any split image (any class) under the same camera. Segments are scenes:
  a segment boundary is a scene cut (:func:`scene_cuts`); ``distractor`` marks distractors.
  Nearly every frame is new pixels, yet consecutive frames are near-duplicates: the
  locality of real video, not just of labels.
- ``trace``: replays a stream a user brings (``workload.trace.*``, :func:`load_trace`): an
  ``.npz`` of uint8 ``frames`` (N, H, W, C) in the split's layout with optional ``labels``
  (-1: unknown) and ``arrivals`` (seconds), or indices into the split (``.npy``, ``.txt``
  one per line with an optional arrival time after it, ``.json`` list or
  ``{"indices": [...], "arrivals": [...]}``, or ``.npz`` with ``indices`` and optional
  ``arrivals``). Its arrival times, when it has them, replace the Poisson process
  (``trace.use_arrivals``), shifted so the first request arrives at 0. The stream is the
  whole trace (``workload.length`` does not apply), or its first ``trace.limit`` requests.
  One segment, 0.

Examples of a class are drawn by cycling through a shuffled per-class pool, reshuffled each
time it runs out, so a source example repeats only once its class has been used up. Classes
with no example in the split are never requested: hot sets, Zipf ranks and "any class" draws
range over the classes present in the split.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import zipfile
from collections.abc import Callable
from pathlib import Path

import ml_collections
import numpy as np
import scipy.ndimage
import scipy.signal
from absl import logging

from gati_jax.config_checks import ConfigError
from gati_jax.data.splits import Split
from gati_jax.registry import Registry

# Second entries of each rng's seed sequence: streams of different workloads (and the arrival
# times) stay independent for one seed. `shift` reuses temporal's so its labels equal temporal's.
_UNIFORM_STREAM, _TEMPORAL_STREAM, _DRIFT_STREAM, _SHIFT_STREAM, _VIDEO_STREAM = 1, 2, 3, 4, 5
_ARRIVAL_STREAM = 100


@dataclasses.dataclass(frozen=True)
class Workload:
    """A request stream: per-request arrays, all of length N, in arrival order."""

    name: str
    ids: np.ndarray  # int64 (N,), 0..N-1 for a fresh stream
    images: np.ndarray  # uint8 (N, H, W, C), corrupted where `corrupted`
    labels: np.ndarray  # int32 (N,); -1 where a trace's frame has no label
    arrivals: np.ndarray  # float64 (N,) seconds, nondecreasing, first at 0
    segments: np.ndarray  # int32 (N,) segment index (see the module docstring per workload)
    corrupted: np.ndarray  # bool (N,)
    # int64 (N,) index into the split the request was drawn from (video: the frame's source
    # image); -1 where the image came from a trace's own frames.
    source_index: np.ndarray
    corruption: np.ndarray  # str (N,) the corruption's name, "" where not corrupted
    # bool (N,) video's distractor frames; None (no distractors) becomes all False.
    distractor: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = self.ids.shape[0]
        if self.distractor is None:
            object.__setattr__(self, "distractor", np.zeros(n, bool))
        for field in (
            "ids",
            "images",
            "labels",
            "arrivals",
            "segments",
            "corrupted",
            "source_index",
            "corruption",
            "distractor",
        ):
            if getattr(self, field).shape[:1] != (n,):
                raise ValueError(
                    f"Workload.{field} must have {n} rows, got shape {getattr(self, field).shape}"
                )

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
        fields = {
            f.name: getattr(self, f.name)[index]
            for f in dataclasses.fields(self)
            if f.name != "name"
        }
        return Workload(name=self.name, **fields)


@dataclasses.dataclass(frozen=True)
class Stream:
    """What a workload builder decides: which examples, in which segments, corrupted how."""

    source_index: np.ndarray  # int64 (N,); -1 where not from the split (a trace's frames)
    segments: np.ndarray  # int32 (N,)
    images: np.ndarray | None = None  # uint8 (N, H, W, C); None: the split's images as they are
    corruption: np.ndarray | None = None  # str (N,); None: nothing corrupted
    labels: np.ndarray | None = None  # int32 (N,); None: the split's labels of source_index
    arrivals: np.ndarray | None = None  # float64 (N,) s, first at 0; None: Poisson at the rate
    distractor: np.ndarray | None = None  # bool (N,); None: no distractors


# A builder maps (workload config section, split, length) to the stream's examples. The
# stream has `length` requests, except a trace's, which has the trace's own length.
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
        raise ValueError(
            f"workload {config_section.name!r} needs examples, but the split "
            f"({config_section.split}) is empty"
        )
    if not config_section.rate > 0:
        raise ValueError(f"workload.rate must be > 0, got {config_section.rate}")
    stream = builder(config_section, split, length)
    source_index = np.asarray(stream.source_index, np.int64)
    length = source_index.shape[0]  # a trace's own length
    images = split.images[source_index] if stream.images is None else stream.images
    corruption = (
        np.full(length, "", dtype="<U16")
        if stream.corruption is None
        else np.asarray(stream.corruption)
    )
    arrivals = (
        poisson_arrivals(length, float(config_section.rate), int(config_section.seed))
        if stream.arrivals is None
        else np.asarray(stream.arrivals, np.float64)
    )
    return Workload(
        name=str(config_section.name),
        ids=np.arange(length, dtype=np.int64),
        images=images,
        labels=(
            split.labels[source_index]
            if stream.labels is None
            else np.asarray(stream.labels, np.int32)
        ),
        arrivals=arrivals,
        segments=np.asarray(stream.segments, np.int32),
        corrupted=corruption != "",
        source_index=source_index,
        corruption=corruption,
        distractor=(
            np.zeros(length, bool)
            if stream.distractor is None
            else np.asarray(stream.distractor, bool)
        ),
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


def _draw_examples(
    classes: np.ndarray, pools: dict[int, np.ndarray], rng: np.random.Generator
) -> np.ndarray:
    """Source indices for a class sequence, cycling through reshuffled per-class pools."""
    source = np.empty(classes.shape[0], np.int64)
    for c, pool in pools.items():
        where = np.flatnonzero(classes == c)
        if where.size == 0:
            continue
        cycles = -(-where.size // pool.size)
        source[where] = np.concatenate([rng.permutation(pool) for _ in range(cycles)])[: where.size]
    return source


@register_workload("uniform")
def _uniform(section: ml_collections.ConfigDict, split: Split, length: int) -> Stream:
    rng = _rng(section, _UNIFORM_STREAM)
    n = len(split)
    if length > n:
        # Not an error (a long stream from a small split is legitimate), but the caches then
        # see exact repeats of earlier requests: say so. workload_stats reports the share.
        logging.warning(
            "workload uniform: %d requests from a %s split of %d examples repeat each example "
            "up to %d times (%.0f%% of requests repeat an earlier one)",
            length,
            section.split,
            n,
            -(-length // n),
            100.0 * (length - n) / length,
        )
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


def _temporal_classes(
    section: ml_collections.ConfigDict, present: np.ndarray, length: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
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
    return Stream(
        source_index=_draw_examples(classes, pools, rng), segments=periods.astype(np.int32)
    )


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
    return _to_uint8(
        scipy.ndimage.gaussian_filter(images.astype(np.float32), sigmas, mode="reflect")
    )


def _contrast(images: np.ndarray, severity: float, rng: np.random.Generator) -> np.ndarray:
    values = images.astype(np.float32)
    mean = values.mean(axis=(-3, -2, -1), keepdims=True)
    return _to_uint8(mean + (values - mean) * (1.0 - 0.8 * severity))


CORRUPTIONS: dict[str, Corruption] = {"noise": _noise, "blur": _blur, "contrast": _contrast}


def corrupt(images: np.ndarray, name: str, severity: float, rng: np.random.Generator) -> np.ndarray:
    """`images` (uint8 (..., H, W, C)) corrupted by the corruption `name` at `severity`."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; available: {', '.join(CORRUPTIONS)}")
    if images.dtype != np.uint8 or images.ndim < 3:
        raise ValueError(
            f"corruptions need uint8 (..., H, W, C) images, got {images.shape} {images.dtype}"
        )
    return CORRUPTIONS[name](images, severity, rng)


# --- video: scenes of object instances under a moving camera --------------------------------


def _smooth_walk(
    scene_lengths: np.ndarray, correlation: float, dims: int, rng: np.random.Generator
) -> np.ndarray:
    """(N, dims) smooth random walks, stationary standard normal, restarted at each scene.

    White noise through a double pole at exp(-1 / correlation): a mean-reverting walk whose
    velocity, not only position, is continuous (no frame-to-frame jitter), correlated over
    about `correlation` frames. Each scene is preceded by a burn-in long enough to forget the
    previous one, so scenes start from independent draws of the stationary distribution; the
    whole stream is one filter call.
    """
    pole = float(np.exp(-1.0 / correlation))
    burn = int(np.ceil(8 * correlation))
    length = int(scene_lengths.sum())
    noise = rng.standard_normal((length + burn * scene_lengths.size, dims))
    walk = scipy.signal.lfilter([1.0], [1.0, -2.0 * pole, pole * pole], noise, axis=0)
    # Impulse response (n + 1) pole**n: its squared sum is the stationary variance.
    walk /= np.sqrt((1 + pole * pole) / (1 - pole * pole) ** 3)
    scenes = np.repeat(np.arange(scene_lengths.size), scene_lengths)
    return walk[np.arange(length) + (scenes + 1) * burn]


def _alternating_runs(
    length: int, fraction: float, mean_on: float, rng: np.random.Generator
) -> np.ndarray:
    """Episode index per frame (-1 outside episodes) of an on/off process: episodes of mean
    `mean_on` frames covering about `fraction` of the frames (a two-state Markov chain)."""
    episode = np.full(length, -1, np.int64)
    if fraction <= 0:
        return episode
    mean_off = mean_on * (1 - fraction) / fraction
    runs: list[np.ndarray] = []
    total = 0
    while total < length:
        count = max(8, int(2 * length / (mean_on + mean_off)))
        pairs = np.stack(
            [rng.geometric(min(1.0, 1.0 / mean_off), count), rng.geometric(1.0 / mean_on, count)],
            axis=1,
        )
        runs.append(pairs.ravel())
        total += int(pairs.sum())
    lengths = np.concatenate(runs)
    # Start inside an episode with the stationary probability, as a stream cut from a longer one.
    if rng.random() < fraction:
        lengths = lengths[1:]
        on = np.arange(lengths.size) % 2 == 0
    else:
        on = np.arange(lengths.size) % 2 == 1
    ends = np.cumsum(lengths)
    starts = ends - lengths
    keep = starts < length
    for number, (start, end) in enumerate(zip(starts[keep & on], ends[keep & on])):
        episode[start : min(end, length)] = number
    return episode


def _warp(
    images: np.ndarray, angle: np.ndarray, scale: np.ndarray, shift: np.ndarray
) -> np.ndarray:
    """float32 (n, H, W, C) images rotated by `angle` (radians), scaled by `scale` about the
    centre, then moved by `shift` ((n, 2) pixels, dy and dx); bilinear, edges extended."""
    n, h, w, c = images.shape
    ys, xs = np.meshgrid(
        np.arange(h, dtype=np.float32) - (h - 1) / 2,
        np.arange(w, dtype=np.float32) - (w - 1) / 2,
        indexing="ij",
    )
    cos = (np.cos(angle) / scale).astype(np.float32)[:, None, None]
    sin = (np.sin(angle) / scale).astype(np.float32)[:, None, None]
    yy = ys[None] - shift[:, 0, None, None].astype(np.float32)
    xx = xs[None] - shift[:, 1, None, None].astype(np.float32)
    # Each output pixel samples the source where the inverse transform puts it.
    sy = np.clip(cos * yy - sin * xx + (h - 1) / 2, 0, h - 1)
    sx = np.clip(sin * yy + cos * xx + (w - 1) / 2, 0, w - 1)
    y0, x0 = np.floor(sy).astype(np.int64), np.floor(sx).astype(np.int64)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (sy - y0)[..., None], (sx - x0)[..., None]
    flat = images.reshape(n * h * w, c)
    base = (np.arange(n) * h * w)[:, None, None]

    def at(y: np.ndarray, x: np.ndarray) -> np.ndarray:
        return flat[base + y * w + x]

    top = at(y0, x0) * (1 - fx) + at(y0, x1) * fx
    bottom = at(y1, x0) * (1 - fx) + at(y1, x1) * fx
    return top * (1 - fy) + bottom * fy


# Frames rendered per batch: bounds the float32 temporaries (a few times batch * H * W * C).
_RENDER_BATCH = 1024


def _render_video(
    sources: np.ndarray,
    video: ml_collections.ConfigDict,
    scene_lengths: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """uint8 frames: `sources` (uint8 (N, H, W, C), each frame's source image) seen through
    the camera of `video` (motion, lighting, occlusion, noise), scene by scene."""
    n, h, w, c = sources.shape
    motion = _smooth_walk(scene_lengths, float(video.motion_time), 4, rng)
    lighting = _smooth_walk(scene_lengths, float(video.lighting_time), 2, rng)
    shift = float(video.translate) * motion[:, :2]
    angle = np.deg2rad(float(video.rotate)) * motion[:, 2]
    scale = np.exp(float(video.scale) * motion[:, 3])
    brightness = float(video.brightness) * lighting[:, 0]
    contrast = np.exp(float(video.contrast) * lighting[:, 1])
    episode = _alternating_runs(
        n, float(video.occlusion_fraction), float(video.occlusion_length), rng
    )
    episodes = int(episode.max()) + 1
    # Per occlusion episode: a rectangle of its own size, place and grey level.
    lo, hi = (float(v) for v in video.occlusion_size)
    size = np.maximum(1, np.rint(rng.uniform(lo, hi, (episodes, 2)) * [h, w])).astype(np.int64)
    corner = np.floor(rng.random((episodes, 2)) * ([h, w] - size + 1)).astype(np.int64)
    grey = rng.integers(0, 256, episodes).astype(np.float32)
    rows = np.arange(h)[None, :, None]
    cols = np.arange(w)[None, None, :]
    frames = np.empty_like(sources)
    for start in range(0, n, _RENDER_BATCH):
        part = slice(start, min(start + _RENDER_BATCH, n))
        out = _warp(sources[part].astype(np.float32), angle[part], scale[part], shift[part])
        ep = episode[part]
        occluded = np.flatnonzero(ep >= 0)
        if occluded.size:
            e = ep[occluded]
            (top, left), (tall, wide) = corner[e].T, size[e].T
            inside = (
                (rows >= top[:, None, None])
                & (rows < (top + tall)[:, None, None])
                & (cols >= left[:, None, None])
                & (cols < (left + wide)[:, None, None])
            )
            out[occluded] = np.where(inside[..., None], grey[e][:, None, None, None], out[occluded])
        # Lighting: contrast about the frame's mean, then a brightness offset.
        mean = out.mean(axis=(1, 2, 3), keepdims=True)
        out = (
            mean
            + (out - mean) * contrast[part, None, None, None].astype(np.float32)
            + brightness[part, None, None, None].astype(np.float32)
        )
        out += float(video.noise) * rng.standard_normal(out.shape, dtype=np.float32)
        frames[part] = _to_uint8(out)
    return frames


@register_workload("video")
def _video(section: ml_collections.ConfigDict, split: Split, length: int) -> Stream:
    video = section.video
    rng = _rng(section, _VIDEO_STREAM)
    n = len(split)
    scene_lengths = _segment_lengths(length, float(video.mean_scene), rng)
    scenes = np.repeat(np.arange(scene_lengths.size, dtype=np.int32), scene_lengths)
    scene_starts = np.cumsum(scene_lengths) - scene_lengths
    # Each scene's instances: the next draws from successive permutations of the split, so an
    # image returns as an instance only once every other image has been one.
    lo, hi = (int(v) for v in video.instances)
    counts = rng.integers(lo, hi + 1, scene_lengths.size)
    total = int(counts.sum())
    pool = np.concatenate([rng.permutation(n) for _ in range(-(-total // n))])[:total]
    first = np.cumsum(counts) - counts
    # Turns: the scene's instances take turns in view, round robin, a geometric number of
    # frames each; the turn count restarts at every scene.
    turn_lengths = _segment_lengths(length, float(video.mean_turn), rng)
    turn_start = np.zeros(length, np.int64)
    turn_start[np.cumsum(turn_lengths)[:-1]] = 1
    turn_start[scene_starts] = 1
    turns = np.cumsum(turn_start)
    turn_in_scene = turns - turns[scene_starts][scenes]
    instance = pool[first[scenes] + turn_in_scene % counts[scenes]]
    distractor = rng.random(length) < float(video.distractor_fraction)
    source = np.where(distractor, rng.integers(0, n, length), instance)
    images = _render_video(split.images[source], video, scene_lengths, rng)
    return Stream(source_index=source, segments=scenes, images=images, distractor=distractor)


def scene_cuts(workload: Workload) -> np.ndarray:
    """Request indices where a new segment starts (video: the scene cuts), first excluded."""
    return np.flatnonzero(np.diff(workload.segments) != 0) + 1


# --- trace: a stream the user brings ----------------------------------------------------------


class TraceError(ConfigError):
    """The trace named by workload.trace.path cannot be replayed; the message says why."""


TRACE_SUFFIXES = (".npz", ".npy", ".txt", ".json")
_NPZ_KEYS = ("frames", "labels", "arrivals", "indices")


def _trace_indices(values: np.ndarray, size: int, where: str) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim != 1 or values.size == 0:
        raise TraceError(
            f"{where}: indices must be a non-empty list of ints, got shape {values.shape}"
        )
    if values.dtype.kind not in "iu":
        raise TraceError(f"{where}: indices must be integers, got {values.dtype}")
    bad = np.flatnonzero((values < 0) | (values >= size))
    if bad.size:
        raise TraceError(
            f"{where}: index {int(values[bad[0]])} (request {int(bad[0])}) is out "
            f"of range for the split of {size} examples; {bad.size} such"
        )
    return values.astype(np.int64)


def _trace_arrivals(values: np.ndarray | None, count: int, where: str) -> np.ndarray | None:
    if values is None:
        return None
    values = np.asarray(values)
    if values.shape != (count,) or values.dtype.kind not in "iuf":
        raise TraceError(
            f"{where}: arrivals must be {count} numbers (seconds), one per "
            f"request, got shape {values.shape} {values.dtype}"
        )
    values = values.astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise TraceError(f"{where}: arrivals must be finite")
    decreasing = np.flatnonzero(np.diff(values) < 0)
    if decreasing.size:
        raise TraceError(
            f"{where}: arrivals must be nondecreasing (requests are replayed in "
            f"order); request {int(decreasing[0]) + 1} arrives before its "
            "predecessor"
        )
    return values - values[0]


def _trace_frames(archive: dict[str, np.ndarray], split: Split, where: str) -> Stream:
    frames = archive["frames"]
    layout = split.images.shape[1:]
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[0] == 0:
        raise TraceError(
            f"{where}: frames must be uint8 (N, H, W, C) with N >= 1, got "
            f"{frames.shape} {frames.dtype}"
        )
    if frames.shape[1:] != layout:
        raise TraceError(
            f"{where}: frames are {frames.shape[1:]} (H, W, C) but the split's "
            f"images, the network's input, are {layout}"
        )
    n = frames.shape[0]
    labels = archive.get("labels")
    if labels is None:
        labels = np.full(n, -1, np.int32)
    elif labels.shape != (n,) or labels.dtype.kind not in "iu" or np.any(labels < -1):
        raise TraceError(
            f"{where}: labels must be {n} integers >= -1 (-1: unknown), one per "
            f"frame, got shape {labels.shape} {labels.dtype}"
        )
    return Stream(
        source_index=np.full(n, -1, np.int64),
        segments=np.zeros(n, np.int32),
        images=frames,
        labels=labels.astype(np.int32),
        arrivals=_trace_arrivals(archive.get("arrivals"), n, where),
    )


def _read_txt(path: Path, where: str) -> tuple[np.ndarray, np.ndarray | None]:
    indices, arrivals, width = [], [], None
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = [f for f in re.split(r"[,\s]+", line.split("#", 1)[0].strip()) if f]
        if not fields:
            continue
        if len(fields) > 2 or width not in (None, len(fields)):
            raise TraceError(
                f"{where}, line {number}: expected 'index' or 'index arrival' on "
                f"every line, got {line.strip()!r}"
            )
        width = len(fields)
        try:
            indices.append(int(fields[0]))
            if width == 2:
                arrivals.append(float(fields[1]))
        except ValueError:
            raise TraceError(
                f"{where}, line {number}: {line.strip()!r} is not an integer index"
                f"{' and an arrival time' if width == 2 else ''}"
            ) from None
    return np.array(indices, np.int64), (np.array(arrivals) if width == 2 else None)


def _read_json(path: Path, where: str) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise TraceError(f"{where}: not valid JSON ({error})") from None
    if isinstance(content, dict):
        unknown = set(content) - {"indices", "arrivals"}
        if "indices" not in content or unknown:
            raise TraceError(
                f"{where}: a JSON object needs 'indices' and may have 'arrivals'; "
                f"got keys {sorted(content)}"
            )
        indices, arrivals = content["indices"], content.get("arrivals")
    else:
        indices, arrivals = content, None
    if not isinstance(indices, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in indices
    ):
        raise TraceError(f"{where}: indices must be a JSON list of integers")
    if arrivals is not None and not (
        isinstance(arrivals, list)
        and all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in arrivals)
    ):
        raise TraceError(f"{where}: arrivals must be a JSON list of numbers (seconds)")
    return np.array(indices, np.int64), None if arrivals is None else np.array(arrivals, float)


def load_trace(path: str | os.PathLike, split: Split) -> Stream:
    """The stream recorded in the trace file `path`, whose indices refer to `split` (the
    formats are in the module docstring). Raises FileNotFoundError for a missing file and
    TraceError, naming the file, for anything in it that cannot be replayed."""
    if not str(path):
        raise TraceError(
            "workload.trace.path is empty: name an .npz of frames or a "
            ".npy/.txt/.json list of split indices"
        )
    path = Path(path).expanduser()
    where = f"trace {path}"
    if path.suffix.lower() not in TRACE_SUFFIXES:
        raise TraceError(
            f"{where}: unknown format {path.suffix!r}; one of {', '.join(TRACE_SUFFIXES)}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{where} (workload.trace.path) not found")
    suffix = path.suffix.lower()
    if suffix in (".npz", ".npy"):
        try:
            loaded = np.load(path, allow_pickle=False)
            is_archive = isinstance(loaded, np.lib.npyio.NpzFile)
            if is_archive:
                with loaded:
                    archive = {key: loaded[key] for key in loaded.files}
            else:
                archive = {"indices": loaded}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
            # Pickled objects, a truncated or corrupt file.
            raise TraceError(f"{where}: not a readable {suffix} file ({error})") from None
        if is_archive != (suffix == ".npz"):
            found = "an .npz archive" if is_archive else "one .npy array"
            raise TraceError(f"{where}: the file is {found}, not what its suffix says")
        unknown = set(archive) - set(_NPZ_KEYS)
        if unknown or ("frames" in archive) == ("indices" in archive):
            raise TraceError(
                f"{where}: an .npz needs 'frames' (uint8 (N, H, W, C), optional "
                "'labels' and 'arrivals') or 'indices' (ints into the split, "
                f"optional 'arrivals'); got keys {sorted(archive)}"
            )
        if "frames" in archive:
            return _trace_frames(archive, split, where)
        if "labels" in archive:
            raise TraceError(
                f"{where}: 'labels' come from the split when the trace holds 'indices'; drop them"
            )
        indices, arrivals = archive["indices"], archive.get("arrivals")
    elif suffix == ".txt":
        indices, arrivals = _read_txt(path, where)
    else:
        indices, arrivals = _read_json(path, where)
    indices = _trace_indices(indices, len(split), where)
    return Stream(
        source_index=indices,
        segments=np.zeros(indices.size, np.int32),
        arrivals=_trace_arrivals(arrivals, indices.size, where),
    )


@register_workload("trace")
def _trace(section: ml_collections.ConfigDict, split: Split, length: int) -> Stream:
    # The trace's own length: workload.length is for generated streams (trace.limit cuts).
    trace = section.trace
    stream = load_trace(trace.path, split)
    limit = int(trace.limit) or len(stream.source_index)
    fields = {f.name: getattr(stream, f.name) for f in dataclasses.fields(stream)}
    stream = Stream(**{k: v if v is None else v[:limit] for k, v in fields.items()})
    if not trace.use_arrivals:
        stream = dataclasses.replace(stream, arrivals=None)
    return stream


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
    return labels[: count * window].reshape(count, -1)


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
        "overall_entropy_bits": float(_entropy_bits(np.bincount(labels, minlength=num_classes))),
        "max_entropy_bits": float(np.log2(num_classes)),
    }


def repeated_fraction(images: np.ndarray) -> float:
    """The share of requests whose image is, byte for byte, an earlier request's."""
    seen: set[bytes] = set()
    repeats = 0
    for image in images.reshape(images.shape[0], -1):
        digest = hashlib.blake2b(image.tobytes(), digest_size=16).digest()
        repeats += digest in seen
        seen.add(digest)
    return repeats / max(1, images.shape[0])


def workload_stats(workload: Workload, window: int, num_classes: int) -> dict[str, float]:
    """The locality statistics of a workload's labels plus its size, rate, shift, repeats
    (``repeated_fraction``: exact repeats of earlier images, as a uniform stream longer than
    its split has), distractors and, for a trace, the share of requests with a label
    (locality is over those; NaN when none has one)."""
    span = float(workload.arrivals[-1] - workload.arrivals[0])
    labelled = workload.labels >= 0
    if labelled.any():
        locality = locality_stats(workload.labels[labelled], window, num_classes)
    else:
        locality = dict.fromkeys(
            locality_stats(np.zeros(1, np.int64), window, num_classes), float("nan")
        )
    return {
        "requests": float(len(workload)),
        "segments": float(np.unique(workload.segments).size),
        "duration_s": span,
        "mean_rate": (len(workload) - 1) / span if span > 0 else float("nan"),
        "corrupted_fraction": float(workload.corrupted.mean()),
        "repeated_fraction": repeated_fraction(workload.images),
        "distractor_fraction": float(workload.distractor.mean()),
        "labelled_fraction": float(labelled.mean()),
        **locality,
    }
