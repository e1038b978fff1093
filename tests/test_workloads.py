"""Workloads: deterministic request streams with the locality, drift and shift they promise."""

from __future__ import annotations

import itertools
import json
import logging

import ml_collections
import numpy as np
import pytest
import scipy.ndimage
from conftest import assert_config_rejects

from gati_jax.config import ConfigError, base_config, validate_config
from gati_jax.data import Split
from gati_jax.data.workloads import (
    CORRUPTIONS,
    TraceError,
    Workload,
    _alternating_runs,
    available_workloads,
    corrupt,
    locality_stats,
    make_workload,
    scene_cuts,
    window_entropies,
    workload_stats,
)

NUM_CLASSES = 10


def _split(per_class: int = 30, classes: tuple[int, ...] = tuple(range(NUM_CLASSES))) -> Split:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.asarray(classes, np.int32), per_class)
    images = rng.integers(0, 256, (labels.size, 8, 8, 1), dtype=np.uint8)
    return Split(images, labels)


SPLIT = _split()


def _section(name: str, **fields) -> ml_collections.ConfigDict:
    config = base_config()
    config.workload.name = name
    for key, value in fields.items():
        config.workload[key] = value
    return config.workload


def _equal(a: Workload, b: Workload) -> bool:
    return all(
        np.array_equal(getattr(a, f), getattr(b, f))
        for f in (
            "ids",
            "images",
            "labels",
            "arrivals",
            "segments",
            "corrupted",
            "source_index",
            "corruption",
            "distractor",
        )
    )


def test_registry_lists_the_workloads_and_rejects_unknown_names():
    assert set(available_workloads()) >= {"uniform", "temporal", "drift", "shift", "video", "trace"}
    with pytest.raises(ValueError, match=r"unknown workload 'bursty'.*available: .*temporal"):
        make_workload(_section("bursty"), SPLIT)


@pytest.mark.parametrize("name", ["uniform", "temporal", "drift", "shift"])
def test_same_seed_same_stream_other_seed_other_stream(name):
    a = make_workload(_section(name, length=500, seed=3), SPLIT)
    b = make_workload(_section(name, length=500, seed=3), SPLIT)
    c = make_workload(_section(name, length=500, seed=4), SPLIT)
    assert len(a) == 500 and a.name == name
    assert _equal(a, b)
    assert not np.array_equal(a.source_index, c.source_index)
    assert not np.array_equal(a.arrivals, c.arrivals)


@pytest.mark.parametrize("name", ["uniform", "temporal", "drift", "shift"])
def test_requests_are_split_examples_arriving_as_a_poisson_process(name):
    rate = 250.0
    w = make_workload(_section(name, length=2000, rate=rate, seed=1), SPLIT)
    assert w.ids.dtype == np.int64 and np.array_equal(w.ids, np.arange(2000))
    assert w.labels.dtype == np.int32 and w.images.dtype == np.uint8
    assert w.segments.dtype == np.int32 and w.source_index.dtype == np.int64
    assert w.arrivals[0] == 0.0 and np.all(np.diff(w.arrivals) >= 0)
    assert np.mean(np.diff(w.arrivals)) == pytest.approx(1 / rate, rel=0.1)
    np.testing.assert_array_equal(w.labels, SPLIT.labels[w.source_index])
    clean = ~w.corrupted
    np.testing.assert_array_equal(w.images[clean], SPLIT.images[w.source_index[clean]])
    assert np.all(np.diff(w.segments) >= 0)


def test_examples_of_a_class_repeat_only_once_its_pool_is_used_up():
    w = make_workload(_section("uniform", length=len(SPLIT)), SPLIT)
    assert np.array_equal(np.sort(w.source_index), np.arange(len(SPLIT)))
    w = make_workload(_section("temporal", length=2000), SPLIT)
    for c in range(NUM_CLASSES):
        drawn = w.source_index[w.labels == c]
        # The first 30 draws of a class go through its 30 examples once each.
        assert np.unique(drawn[:30]).size == min(30, drawn.size)


def test_temporal_stream_has_far_more_locality_than_uniform():
    uniform = make_workload(_section("uniform", length=2000), SPLIT)
    temporal = make_workload(_section("temporal", length=2000), SPLIT)
    u = locality_stats(uniform.labels, 100, NUM_CLASSES)
    t = locality_stats(temporal.labels, 100, NUM_CLASSES)
    assert u["p_same_as_previous"] == pytest.approx(0.1, abs=0.03)
    assert u["mean_window_entropy_bits"] > 3.0
    assert t["p_same_as_previous"] > 3 * u["p_same_as_previous"]
    assert t["mean_window_entropy_bits"] < u["mean_window_entropy_bits"] - 1.0
    assert t["mean_classes_per_window"] <= u["mean_classes_per_window"]


def test_temporal_segments_are_dominated_by_a_few_hot_classes():
    hot_fraction, (lo, hi) = 0.9, (1, 3)
    w = make_workload(
        _section(
            "temporal",
            length=3000,
            mean_segment=100,
            hot_classes=(lo, hi),
            hot_fraction=hot_fraction,
        ),
        SPLIT,
    )
    num_segments = int(w.segments[-1]) + 1
    assert 10 <= num_segments <= 60  # mean 100 over 3000 requests: about 30 segments
    top, total = 0, 0
    for s in range(num_segments):
        counts = np.bincount(w.labels[w.segments == s], minlength=NUM_CLASSES)
        top += np.sort(counts)[::-1][:hi].sum()
        total += counts.sum()
    assert top / total >= hot_fraction - 0.03
    assert np.bincount(w.segments).mean() == pytest.approx(100, rel=0.4)


def test_temporal_hot_set_changes_between_segments():
    # One hot class producing every request: each segment is one class, never its predecessor's.
    w = make_workload(
        _section("temporal", length=2000, mean_segment=20, hot_classes=(1, 1), hot_fraction=1.0),
        SPLIT,
    )
    per_segment = [np.unique(w.labels[w.segments == s]) for s in range(w.segments[-1] + 1)]
    assert all(classes.size == 1 for classes in per_segment)
    assert all(a[0] != b[0] for a, b in itertools.pairwise(per_segment))


def test_drift_rotates_the_most_popular_class():
    period = 400
    w = make_workload(_section("drift", length=2000, drift_period=period, zipf_exponent=1.5), SPLIT)
    assert np.array_equal(w.segments, np.arange(2000) // period)
    first = np.bincount(w.labels[:period], minlength=NUM_CLASSES).argmax()
    later = np.bincount(w.labels[2 * period : 3 * period], minlength=NUM_CLASSES).argmax()
    assert first != later
    # Zipf: the top class of a period holds far more than a uniform share.
    assert np.bincount(w.labels[:period]).max() / period > 0.3


def test_shift_corrupts_a_fraction_of_the_temporal_segments():
    fraction = 0.3
    temporal = make_workload(_section("temporal", length=3000, seed=2), SPLIT)
    w = make_workload(_section("shift", length=3000, seed=2, shift_fraction=fraction), SPLIT)
    # The same seed gives the temporal stream itself, corrupted in places.
    np.testing.assert_array_equal(w.source_index, temporal.source_index)
    np.testing.assert_array_equal(w.segments, temporal.segments)
    num_segments = int(w.segments[-1]) + 1
    corrupted_segments = np.unique(w.segments[w.corrupted])
    assert corrupted_segments.size == round(fraction * num_segments)
    for s in range(num_segments):  # a segment is corrupted as a whole or not at all
        assert np.unique(w.corrupted[w.segments == s]).size == 1
    assert set(np.unique(w.corruption[w.corrupted])) <= set(CORRUPTIONS)
    assert np.all(w.corruption[~w.corrupted] == "")
    original = SPLIT.images[w.source_index]
    changed = np.any(w.images != original, axis=(1, 2, 3))
    assert changed[w.corrupted].mean() > 0.95
    np.testing.assert_array_equal(w.images[~w.corrupted], original[~w.corrupted])


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_each_corruption_keeps_shape_and_dtype_and_changes_the_image(name):
    images = SPLIT.images[:20]
    out = corrupt(images, name, 0.5, np.random.default_rng(0))
    assert out.shape == images.shape and out.dtype == np.uint8
    assert np.all(np.any(out != images, axis=(1, 2, 3)))
    single = corrupt(images[0], name, 0.5, np.random.default_rng(0))
    assert single.shape == images[0].shape and single.dtype == np.uint8
    # Higher severity moves the image further.
    mild = corrupt(images, name, 0.2, np.random.default_rng(0)).astype(float)
    strong = corrupt(images, name, 1.0, np.random.default_rng(0)).astype(float)
    assert np.abs(strong - images).mean() > np.abs(mild - images).mean()
    with pytest.raises(ValueError, match="unknown corruption 'fog'"):
        corrupt(images, "fog", 0.5, np.random.default_rng(0))


def test_locality_stats_on_known_streams():
    constant = np.zeros(100, np.int64)
    stats = locality_stats(constant, 10, NUM_CLASSES)
    assert stats["p_same_as_previous"] == 1.0
    assert stats["mean_window_entropy_bits"] == 0.0
    assert stats["mean_classes_per_window"] == 1.0
    cycling = np.tile(np.arange(4), 25)
    stats = locality_stats(cycling, 4, NUM_CLASSES)
    assert stats["p_same_as_previous"] == 0.0
    assert stats["mean_window_entropy_bits"] == pytest.approx(2.0)
    assert stats["overall_entropy_bits"] == pytest.approx(2.0)
    assert stats["mean_classes_per_window"] == 4.0
    # Whole windows only: 10 labels in windows of 4 give two windows.
    assert window_entropies(np.arange(10), 4, NUM_CLASSES).shape == (2,)
    assert window_entropies(np.arange(3), 4, NUM_CLASSES).shape == (1,)


def test_take_and_workload_stats():
    w = make_workload(_section("shift", length=300), SPLIT)
    part = w.take(slice(10, 20))
    assert len(part) == 10 and np.array_equal(part.ids, np.arange(10, 20))
    one = w.take(-1)
    assert len(one) == 1 and one.ids[0] == 299 and one.images.shape == (1, 8, 8, 1)
    with pytest.raises(IndexError):
        w.take(300)
    stats = workload_stats(w, 50, NUM_CLASSES)
    assert stats["requests"] == 300 and 0 < stats["corrupted_fraction"] < 1


def test_missing_classes_are_never_requested_and_bad_inputs_fail_clearly():
    partial = _split(classes=(0, 2, 5))
    for name in ("uniform", "temporal", "drift", "shift"):
        w = make_workload(_section(name, length=400, hot_classes=(1, 3)), partial)
        assert set(np.unique(w.labels)) <= {0, 2, 5}
    empty = Split(np.zeros((0, 8, 8, 1), np.uint8), np.zeros((0,), np.int32))
    with pytest.raises(ValueError, match="empty"):
        make_workload(_section("temporal"), empty)
    with pytest.raises(ValueError, match="workload.length"):
        make_workload(_section("uniform", length=0), SPLIT)


def test_validate_config_rejects_bad_workload_values_naming_the_key():
    validate_config(base_config())
    cases = {
        "name": "bursty",
        "split": "dev",
        "length": 0,
        "seed": -1,
        "rate": 0.0,
        "hot_classes": (3, 1),
        "mean_segment": 0,
        "hot_fraction": 0.0,
        "zipf_exponent": 0.0,
        "drift_period": 0,
        "corruptions": ("fog",),
        "shift_fraction": 1.5,
        "severity": 0.0,
        "window": 1,
    }
    for key, value in cases.items():
        assert_config_rejects("workload", key, value)
    assert_config_rejects("workload", "corruptions", ())


# --- uniform's repeats ---------------------------------------------------------------------


def test_uniform_longer_than_its_split_warns_and_reports_the_repeats(caplog):
    with caplog.at_level(logging.WARNING):
        w = make_workload(_section("uniform", length=len(SPLIT)), SPLIT)
    assert not [r for r in caplog.records if "repeat" in r.getMessage()]
    assert workload_stats(w, 50, NUM_CLASSES)["repeated_fraction"] == 0.0
    with caplog.at_level(logging.WARNING):
        w = make_workload(_section("uniform", length=750), SPLIT)
    warnings = [r for r in caplog.records if "repeat" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert "750 requests" in warnings[0].getMessage()
    assert "300 examples" in warnings[0].getMessage()
    stats = workload_stats(w, 50, NUM_CLASSES)
    assert stats["repeated_fraction"] == pytest.approx((750 - 300) / 750)
    assert stats["distractor_fraction"] == 0.0 and stats["labelled_fraction"] == 1.0


# --- video ---------------------------------------------------------------------------------


def _smooth_split(per_class: int = 30, size: int = 16, channels: int = 1) -> Split:
    """Smooth random images (blurred noise stretched to 0..255), like photos rather than
    noise: a sub-pixel move changes them a little, not completely."""
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(NUM_CLASSES, dtype=np.int32), per_class)
    raw = scipy.ndimage.gaussian_filter(
        rng.random((labels.size, size, size, channels)), (0, 2, 2, 0)
    )
    low, high = raw.min(axis=(1, 2, 3), keepdims=True), raw.max(axis=(1, 2, 3), keepdims=True)
    return Split(np.rint(255 * (raw - low) / (high - low)).astype(np.uint8), labels)


SMOOTH = _smooth_split()


def _video(length: int = 3000, seed: int = 0, split: Split = SMOOTH, **video) -> Workload:
    section = _section("video", length=length, seed=seed)
    for key, value in video.items():
        section.video[key] = value
    return make_workload(section, split)


def test_video_same_seed_same_stream_other_seed_other_stream():
    a, b, c = _video(1000, seed=3), _video(1000, seed=3), _video(1000, seed=4)
    assert len(a) == 1000 and a.name == "video"
    assert _equal(a, b)
    assert not np.array_equal(a.images, c.images)
    assert not np.array_equal(a.source_index, c.source_index)


def test_video_frames_are_new_uint8_images_in_the_split_layout():
    colour = _smooth_split(per_class=5, size=12, channels=3)
    w = _video(600, split=colour)
    assert w.images.dtype == np.uint8 and w.images.shape == (600, 12, 12, 3)
    assert w.labels.dtype == np.int32 and w.source_index.dtype == np.int64
    assert w.distractor.dtype == bool and w.distractor.shape == (600,)
    assert w.arrivals[0] == 0.0 and np.all(np.diff(w.arrivals) >= 0)
    # Rendered anew: no frame is its source image, none repeats an earlier frame exactly.
    assert np.all(np.any(w.images != colour.images[w.source_index], axis=(1, 2, 3)))
    assert workload_stats(w, 100, NUM_CLASSES)["repeated_fraction"] == 0.0


def test_video_scene_lengths_have_the_configured_mean():
    w = _video(20000, mean_scene=100.0)
    lengths = np.bincount(w.segments)
    assert np.all(np.diff(w.segments) >= 0) and np.all(lengths >= 1)
    assert 120 <= lengths.size <= 290  # about 200 scenes
    assert lengths.mean() == pytest.approx(100, rel=0.15)
    cuts = scene_cuts(w)
    np.testing.assert_array_equal(cuts, np.cumsum(lengths)[:-1])


def test_video_consecutive_frames_are_near_duplicates_unlike_frames_across_cuts():
    # Single-instance scenes, no distractors or occlusion: every difference inside a scene is
    # camera motion, lighting and noise.
    w = _video(
        4000, mean_scene=100.0, instances=(1, 1), distractor_fraction=0.0, occlusion_fraction=0.0
    )
    x = w.images.astype(np.float64)
    mse = ((x[1:] - x[:-1]) ** 2).mean(axis=(1, 2, 3))
    cuts = scene_cuts(w)
    across = np.zeros(mse.size, bool)
    across[cuts - 1] = True
    assert cuts.size >= 20
    assert np.median(mse[~across]) < 0.05 * np.median(mse[across])
    assert np.percentile(mse[~across], 99) < np.median(mse[across])
    # The default stream (turns, distractors, occlusion) is near-duplicates most of the time.
    w = _video(4000, mean_scene=100.0)
    x = w.images.astype(np.float64)
    mse = ((x[1:] - x[:-1]) ** 2).mean(axis=(1, 2, 3))
    cuts = scene_cuts(w)
    within = np.ones(mse.size, bool)
    within[cuts - 1] = False
    assert np.median(mse[within]) < 0.05 * np.median(mse[cuts - 1])


def test_video_distractor_fraction_is_near_the_configured_one():
    for fraction in (0.0, 0.1, 0.3):
        w = _video(6000, distractor_fraction=fraction)
        assert w.distractor.mean() == pytest.approx(fraction, abs=0.02)
        assert workload_stats(w, 100, NUM_CLASSES)["distractor_fraction"] == w.distractor.mean()


def test_video_labels_are_the_instance_labels_and_scenes_show_few_instances():
    w = _video(5000, mean_scene=200.0, instances=(1, 1), distractor_fraction=0.2)
    np.testing.assert_array_equal(w.labels, SMOOTH.labels[w.source_index])
    for s in range(int(w.segments[-1]) + 1):
        scene = (w.segments == s) & ~w.distractor
        instance = np.unique(w.source_index[scene])
        assert instance.size == 1  # one instance per scene, whatever the distractors
        assert np.all(w.labels[scene] == SMOOTH.labels[instance[0]])
    # Distractors come from any class: over a stream, most frames differ from their scene's.
    assert (
        np.mean(
            [
                w.labels[i]
                != w.labels[w.segments == w.segments[i]][
                    ~w.distractor[w.segments == w.segments[i]]
                ][0]
                for i in np.flatnonzero(w.distractor)
            ]
        )
        > 0.6
    )
    w = _video(5000, mean_scene=300.0, instances=(2, 3), mean_turn=30.0, distractor_fraction=0.0)
    counts = [
        np.unique(w.source_index[w.segments == s]).size for s in range(int(w.segments[-1]) + 1)
    ]
    assert max(counts) <= 3 and np.mean(counts) > 1.5


def test_occlusion_episodes_cover_the_configured_share():
    rng = np.random.default_rng(0)
    episode = _alternating_runs(50000, 0.1, 20.0, rng)
    occluded = episode >= 0
    assert occluded.mean() == pytest.approx(0.1, abs=0.02)
    episodes = np.unique(episode[occluded])
    assert np.mean(np.bincount(episode[occluded])[episodes]) == pytest.approx(20, rel=0.2)
    assert np.all(_alternating_runs(100, 0.0, 20.0, rng) == -1)


def test_video_builds_a_5000_frame_stream_quickly():
    import time

    split = _smooth_split(per_class=100, size=28)
    start = time.perf_counter()
    w = _video(5000, split=split)
    seconds = time.perf_counter() - start
    assert len(w) == 5000
    assert seconds < 10.0  # about 0.5 s on one slow core


def test_validate_config_rejects_bad_video_values_naming_the_key():
    cases = {
        "mean_scene": 0.5,
        "instances": (2, 1),
        "mean_turn": 0.0,
        "translate": -1.0,
        "rotate": -1.0,
        "scale": -0.1,
        "motion_time": 0.0,
        "brightness": -1.0,
        "contrast": -0.1,
        "lighting_time": 0.0,
        "noise": -1.0,
        "occlusion_fraction": 1.0,
        "occlusion_length": 0.0,
        "occlusion_size": (0.5, 0.2),
        "distractor_fraction": 1.5,
    }
    for key, value in cases.items():
        config = base_config()
        config.workload.video[key] = value
        with pytest.raises(ConfigError, match=rf"workload\.video\.{key}="):
            validate_config(config)


# --- trace ---------------------------------------------------------------------------------


def _trace(path, split: Split = SPLIT, **trace) -> Workload:
    section = _section("trace", length=5)
    section.trace.path = str(path)
    for key, value in trace.items():
        section.trace[key] = value
    return make_workload(section, split)


def test_trace_of_frames_round_trips_with_labels_and_arrivals(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (40, 8, 8, 1), dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES, 40)
    arrivals = 100.0 + np.cumsum(rng.exponential(0.01, 40))
    np.savez(tmp_path / "camera.npz", frames=frames, labels=labels, arrivals=arrivals)
    w = _trace(tmp_path / "camera.npz")
    assert len(w) == 40 and w.name == "trace"  # the trace's length, not workload.length
    np.testing.assert_array_equal(w.images, frames)
    np.testing.assert_array_equal(w.labels, labels)
    assert w.labels.dtype == np.int32
    np.testing.assert_allclose(w.arrivals, arrivals - arrivals[0])  # first at 0
    assert np.all(w.source_index == -1) and np.all(w.segments == 0)
    assert not w.corrupted.any() and not w.distractor.any()
    # Poisson arrivals instead when asked; only the first `limit` requests when asked.
    poisson = _trace(tmp_path / "camera.npz", use_arrivals=False)
    assert not np.allclose(poisson.arrivals, w.arrivals) and poisson.arrivals[0] == 0.0
    part = _trace(tmp_path / "camera.npz", limit=10)
    assert len(part) == 10 and _equal(part, w.take(slice(0, 10)))
    # Without labels: -1, and the stats say nothing is labelled.
    np.savez(tmp_path / "unlabelled.npz", frames=frames)
    w = _trace(tmp_path / "unlabelled.npz")
    assert np.all(w.labels == -1) and w.arrivals[0] == 0.0 and np.all(np.diff(w.arrivals) > 0)
    stats = workload_stats(w, 10, NUM_CLASSES)
    assert stats["labelled_fraction"] == 0.0 and np.isnan(stats["p_same_as_previous"])


def test_trace_of_split_indices_round_trips_in_every_format(tmp_path):
    indices = np.array([5, 5, 17, 299, 0, 42, 42, 42])
    arrivals = np.array([0.0, 0.1, 0.1, 0.25, 0.3, 1.0, 1.5, 2.0]) + 7.0
    np.save(tmp_path / "a.npy", indices)
    (tmp_path / "b.txt").write_text("# index per line\n" + "\n".join(map(str, indices)) + "\n")
    (tmp_path / "c.txt").write_text("\n".join(f"{i}, {t}" for i, t in zip(indices, arrivals)))
    (tmp_path / "d.json").write_text(json.dumps(indices.tolist()))
    (tmp_path / "e.json").write_text(
        json.dumps({"indices": indices.tolist(), "arrivals": arrivals.tolist()})
    )
    np.savez(tmp_path / "f.npz", indices=indices, arrivals=arrivals)
    for name in ("a.npy", "b.txt", "c.txt", "d.json", "e.json", "f.npz"):
        w = _trace(tmp_path / name)
        np.testing.assert_array_equal(w.source_index, indices)
        np.testing.assert_array_equal(w.images, SPLIT.images[indices])
        np.testing.assert_array_equal(w.labels, SPLIT.labels[indices])
        if name in ("c.txt", "e.json", "f.npz"):
            np.testing.assert_allclose(w.arrivals, arrivals - arrivals[0])
        else:
            assert w.arrivals[0] == 0.0 and np.all(np.diff(w.arrivals) >= 0)
        assert workload_stats(w, 4, NUM_CLASSES)["repeated_fraction"] == pytest.approx(3 / 8)


def test_trace_bad_inputs_fail_with_clear_messages(tmp_path):
    good = np.zeros((4, 8, 8, 1), np.uint8)

    def npz(name, **arrays):
        np.savez(tmp_path / name, **arrays)
        return tmp_path / name

    with pytest.raises(FileNotFoundError, match=r"missing\.npz.*not found"):
        _trace(tmp_path / "missing.npz")
    with pytest.raises(TraceError, match="workload.trace.path is empty"):
        _trace("")
    (tmp_path / "frames.csv").write_text("1\n")
    with pytest.raises(TraceError, match=r"unknown format '\.csv'"):
        _trace(tmp_path / "frames.csv")
    cases = {
        npz("float.npz", frames=good.astype(np.float32)): r"frames must be uint8 \(N, H, W, C\)",
        npz("flat.npz", frames=np.zeros((4, 64), np.uint8)): r"frames must be uint8.*\(4, 64\)",
        npz(
            "layout.npz", frames=np.zeros((4, 28, 28, 1), np.uint8)
        ): r"frames are \(28, 28, 1\).*split's images.*\(8, 8, 1\)",
        npz("labels.npz", frames=good, labels=np.zeros(3, int)): r"labels must be 4 integers",
        npz("flabels.npz", frames=good, labels=np.zeros(4)): r"labels must be 4 integers",
        npz("typo.npz", frames=good, times=np.zeros(4)): r"needs 'frames'.*got keys.*times",
        npz("both.npz", frames=good, indices=np.arange(4)): r"needs 'frames'.*or 'indices'",
        npz("neither.npz", x=np.arange(4)): r"needs 'frames'",
        npz(
            "ilabels.npz", indices=np.arange(4), labels=np.arange(4)
        ): r"'labels' come from the split",
        npz(
            "back.npz", frames=good, arrivals=np.array([0.0, 2.0, 1.0, 3.0])
        ): r"arrivals must be nondecreasing.*request 2 arrives before",
        npz("short.npz", frames=good, arrivals=np.zeros(3)): r"arrivals must be 4 numbers",
        npz(
            "nan.npz", frames=good, arrivals=np.array([0.0, np.nan, 1.0, 2.0])
        ): r"arrivals must be finite",
        npz("empty.npz", frames=np.zeros((0, 8, 8, 1), np.uint8)): r"N >= 1",
        npz(
            "range.npz", indices=np.array([0, 300, 1])
        ): r"index 300 \(request 1\) is out of range for the split of 300 examples",
    }
    np.save(tmp_path / "neg.npy", np.array([1, -1]))
    cases[tmp_path / "neg.npy"] = r"index -1 \(request 1\) is out of range"
    np.save(tmp_path / "float.npy", np.array([1.0, 2.0]))
    cases[tmp_path / "float.npy"] = r"indices must be integers, got float64"
    np.save(tmp_path / "matrix.npy", np.zeros((2, 2), int))
    cases[tmp_path / "matrix.npy"] = r"indices must be a non-empty list of ints.*\(2, 2\)"
    np.save(tmp_path / "object.npy", np.array([1, "a"], dtype=object), allow_pickle=True)
    cases[tmp_path / "object.npy"] = r"not a readable \.npy file"
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 not really a zip")
    cases[tmp_path / "corrupt.npz"] = r"not a readable \.npz file"
    np.save(tmp_path / "array.npy", np.arange(3))
    (tmp_path / "array.npy").rename(tmp_path / "renamed.npz")
    cases[tmp_path / "renamed.npz"] = r"one \.npy array, not what its suffix says"
    (tmp_path / "word.txt").write_text("1\ntwo\n")
    cases[tmp_path / "word.txt"] = r"line 2: 'two' is not an integer index"
    (tmp_path / "ragged.txt").write_text("1 0.5\n2\n")
    cases[tmp_path / "ragged.txt"] = r"line 2: expected 'index' or 'index arrival'"
    (tmp_path / "none.txt").write_text("# nothing\n")
    cases[tmp_path / "none.txt"] = r"indices must be a non-empty list"
    (tmp_path / "floats.json").write_text("[1, 2.5]")
    cases[tmp_path / "floats.json"] = r"indices must be a JSON list of integers"
    (tmp_path / "keys.json").write_text('{"indices": [1], "times": [0]}')
    cases[tmp_path / "keys.json"] = r"needs 'indices' and may have 'arrivals'.*times"
    (tmp_path / "broken.json").write_text("[1, 2")
    cases[tmp_path / "broken.json"] = r"not valid JSON"
    for path, message in cases.items():
        with pytest.raises(TraceError, match=message) as error:
            _trace(path)
        assert str(path) in str(error.value)  # every message names the file
        assert isinstance(error.value, ConfigError)  # the CLI's one-line user error


def test_validate_config_rejects_bad_trace_values_naming_the_key():
    config = base_config()
    config.workload.name = "trace"
    with pytest.raises(ConfigError, match=r"workload\.trace\.path=''.*when workload.name"):
        validate_config(config)
    config.workload.trace.path = "stream.npz"
    validate_config(config)
    config.workload.trace.path = "stream.mp4"
    with pytest.raises(ConfigError, match=r"workload\.trace\.path='stream.mp4'"):
        validate_config(config)
    config = base_config()
    config.workload.trace.limit = -1
    with pytest.raises(ConfigError, match=r"workload\.trace\.limit=-1"):
        validate_config(config)


def test_stream_structure_plot_draws_workloads_and_plain_dicts(tmp_path):
    from gati_jax.experiments.plots import plot_stream_structure

    streams = {
        "video": _video(600, mean_scene=100.0),
        "shift": make_workload(_section("shift", length=300), SPLIT),
        "trace": {"labels": [-1, 3, 3, 4], "segments": [0, 0, 1, 1]},
    }
    plot_stream_structure(streams, tmp_path / "streams.png")
    assert (tmp_path / "streams.png").stat().st_size > 10_000
