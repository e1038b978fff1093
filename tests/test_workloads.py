"""Workloads: deterministic request streams with the locality, drift and shift they promise."""

from __future__ import annotations

import itertools

import ml_collections
import numpy as np
import pytest
from conftest import assert_config_rejects

from gati_jax.config import base_config, validate_config
from gati_jax.data import Split
from gati_jax.data.workloads import (
    CORRUPTIONS,
    Workload,
    available_workloads,
    corrupt,
    locality_stats,
    make_workload,
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
    return all(np.array_equal(getattr(a, f), getattr(b, f))
               for f in ("ids", "images", "labels", "arrivals", "segments", "corrupted",
                         "source_index", "corruption"))


def test_registry_lists_the_four_workloads_and_rejects_unknown_names():
    assert set(available_workloads()) >= {"uniform", "temporal", "drift", "shift"}
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
    w = make_workload(_section("temporal", length=3000, mean_segment=100,
                               hot_classes=(lo, hi), hot_fraction=hot_fraction), SPLIT)
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
    w = make_workload(_section("temporal", length=2000, mean_segment=20, hot_classes=(1, 1),
                               hot_fraction=1.0), SPLIT)
    per_segment = [np.unique(w.labels[w.segments == s]) for s in range(w.segments[-1] + 1)]
    assert all(classes.size == 1 for classes in per_segment)
    assert all(a[0] != b[0] for a, b in itertools.pairwise(per_segment))


def test_drift_rotates_the_most_popular_class():
    period = 400
    w = make_workload(_section("drift", length=2000, drift_period=period, zipf_exponent=1.5),
                      SPLIT)
    assert np.array_equal(w.segments, np.arange(2000) // period)
    first = np.bincount(w.labels[:period], minlength=NUM_CLASSES).argmax()
    later = np.bincount(w.labels[2 * period:3 * period], minlength=NUM_CLASSES).argmax()
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
    cases = {"name": "bursty", "split": "dev", "length": 0, "seed": -1, "rate": 0.0,
             "hot_classes": (3, 1), "mean_segment": 0, "hot_fraction": 0.0,
             "zipf_exponent": 0.0, "drift_period": 0, "corruptions": ("fog",),
             "shift_fraction": 1.5, "severity": 0.0, "window": 1}
    for key, value in cases.items():
        assert_config_rejects("workload", key, value)
    assert_config_rejects("workload", "corruptions", ())
