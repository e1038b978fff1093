"""Summaries of a serving run: latency percentiles, throughput, accuracy, agreement, hits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from gati_jax.serving.loop import ServingResult


def summarize(
    result: ServingResult,
    labels: np.ndarray,
    base_answers: np.ndarray,
    positions: Sequence[int],
    last_stage: int,
) -> dict[str, Any]:
    """Latency (ms), throughput, accuracy, agreement with the base network and hit rates."""
    n = len(result)
    labels = _per_request(labels, "labels", n)
    base_answers = _per_request(base_answers, "base_answers", n)
    stages = [*(int(p) for p in positions), int(last_stage)]
    unexpected = sorted(set(np.unique(result.exit_stage).tolist()) - set(stages))
    if unexpected:
        # A request can only leave at a deployed position or after the last stage.
        raise ValueError(
            f"exit stages {unexpected} are neither deployed positions "
            f"{list(positions)} nor the last stage {last_stage}"
        )
    latency_ms = 1e3 * result.latency
    p50, p95, p99 = np.percentile(latency_ms, [50, 95, 99])
    duration = result.duration
    return {
        "requests": n,
        "groups": result.groups,
        "duration_s": duration,
        "mean_latency_ms": float(latency_ms.mean()),
        "p50_latency_ms": float(p50),
        "p95_latency_ms": float(p95),
        "p99_latency_ms": float(p99),
        "mean_queueing_ms": float(1e3 * result.queueing.mean()),
        "mean_compute_ms": float(1e3 * result.compute.mean()),
        "throughput_rps": n / duration if duration > 0 else float("inf"),
        "accuracy": float(np.mean(result.answer == labels)),
        "agreement": float(np.mean(result.answer == base_answers)),
        "hit_rate": float(np.mean(result.hit)),
        # Fraction of all requests (not of those reaching it) that exited at each position.
        "hit_rate_per_position": {
            str(p): float(np.mean(result.exit_stage == p)) for p in positions
        },
        "exit_histogram": {str(s): int(np.sum(result.exit_stage == s)) for s in stages},
        # Mean over groups, i.e. how full the groups ran; a per-request mean would favour big ones.
        "mean_group_size": n / result.groups,
    }


def windowed(
    result: ServingResult, labels: np.ndarray, base_answers: np.ndarray, window: int
) -> list[dict[str, Any]]:
    """Per consecutive window of ``window`` requests (arrival order): hits, quality, latency."""
    if int(window) < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    n, window = len(result), int(window)
    labels = _per_request(labels, "labels", n)
    base_answers = _per_request(base_answers, "base_answers", n)
    rows = []
    for start in range(0, n, window):
        part = slice(start, start + window)
        answer = result.answer[part]
        rows.append(
            {
                "start": start,
                "requests": len(answer),
                "hit_rate": float(np.mean(result.hit[part])),
                "agreement": float(np.mean(answer == base_answers[part])),
                "accuracy": float(np.mean(answer == labels[part])),
                "mean_latency_ms": float(1e3 * np.mean(result.latency[part])),
            }
        )
    return rows


def _per_request(values: np.ndarray, name: str, n: int) -> np.ndarray:
    values = np.asarray(values)
    if values.shape != (n,):
        raise ValueError(
            f"{name} must have shape ({n},), one per served request, got {values.shape}"
        )
    return values


def paired_quantile_ratio_interval(
    latencies: Sequence[np.ndarray],
    reference: Sequence[np.ndarray],
    quantile: float | None = 99.0,
    level: float = 0.9,
    block: int = 100,
    draws: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """A ``level`` interval of quantile(latencies) / quantile(reference) (the means' ratio
    when ``quantile`` is None), by a paired block bootstrap: both lists hold one array per
    round, the same stream served in the same order, so blocks of ``block`` consecutive
    requests are resampled together for both (a burst of arrivals slows both, and a p99 over
    one stream is a few dozen requests)."""
    if len(latencies) != len(reference) or not latencies:
        raise ValueError("need one latency array per round for both, as many rounds each")
    blocks_a, blocks_b = [], []
    for a, b in zip(latencies, reference):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a.shape != b.shape or a.ndim != 1 or a.size == 0:
            raise ValueError(
                f"paired rounds must be equal, non-empty 1-D arrays, got {a.shape} and {b.shape}"
            )
        for start in range(0, a.size, block):
            blocks_a.append(a[start : start + block])
            blocks_b.append(b[start : start + block])
    if quantile is None:
        statistic = np.mean
    else:

        def statistic(values: np.ndarray) -> float:
            return np.percentile(values, quantile)

    rng = np.random.default_rng(seed)
    ratios = np.empty(draws)
    for i in range(draws):
        pick = rng.integers(0, len(blocks_a), len(blocks_a))
        ratios[i] = statistic(np.concatenate([blocks_a[j] for j in pick])) / statistic(
            np.concatenate([blocks_b[j] for j in pick])
        )
    tail = 50 * (1 - level)
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return float(low), float(high)
