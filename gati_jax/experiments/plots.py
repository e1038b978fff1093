"""Plots people would rather look at than tables; every function writes one PNG."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")  # headless machines and CI have no display
import matplotlib.pyplot as plt  # noqa: E402

from gati_jax.experiments.kernel_profile import LOOKUP, OTHER, STAGE, UNATTRIBUTED, part_total  # noqa: E402


def _save(fig: Any, path: str | os.PathLike) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _workload_panels(count: int, height: float) -> tuple[Any, Any]:
    """One axes per workload, side by side."""
    fig, axes = plt.subplots(1, count, figsize=(6 * count, height), squeeze=False)
    return fig, axes[0]


def plot_exploration(bank: Any, path: str | os.PathLike) -> None:
    """Hit rate at the strictest target vs lookup latency, one panel per position, frontier
    marked."""
    target = f"{bank.info['targets'][0]:g}"
    positions = bank.info["positions"]
    cols = min(len(positions), 5)
    rows = -(-len(positions) // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False, sharey=True
    )
    for ax, position in zip(axes.flat, positions):
        cands = bank.at(position)
        lat = [1e3 * c.metrics["lookup_latency_s"] for c in cands]
        hit = [c.metrics[f"hit_rate@{target}"] for c in cands]
        ax.scatter(lat, hit, s=14, alpha=0.6, label="candidate")
        front = bank.frontier(position)
        ax.plot(
            [1e3 * c.metrics["lookup_latency_s"] for c in front],
            [c.metrics[f"hit_rate@{target}"] for c in front],
            "r.-",
            label="frontier",
        )
        ax.set_title(f"position {position}", fontsize=9)
        ax.set_xlabel("lookup latency (ms)", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel(f"hit rate @ {target} agreement", fontsize=8)
    for ax in list(axes.flat)[len(positions) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_router_benchmark(result: dict[str, Any], path: str | os.PathLike) -> None:
    """Left: latency when every request exits at each position (router, Python loop, cost
    models). Middle: throughput per group size, plain network vs router vs compacted router.
    Right (with a kernel profile): each all-miss program's kernel time in parts."""
    rows = result["forced_exits"]
    labels = [r["scenario"].replace("exit at ", "") for r in rows]
    x = range(len(rows))
    profile = result.get("kernel_profile_ms")
    fig, axes = plt.subplots(
        1,
        3 if profile else 2,
        figsize=(17 if profile else 12, 3.8),
        gridspec_kw={"width_ratios": [3, 2, 2] if profile else [3, 2]},
    )
    ax, right = axes[0], axes[1]
    if profile:
        _kernel_parts(axes[2], profile)
    groups = result["group_sizes"]
    for key, label in (
        ("plain_rps", "plain network"),
        ("router_rps", "router"),
        ("compacted_rps", "router, compacted"),
    ):
        right.plot([g["group"] for g in groups], [g[key] for g in groups], "o-", label=label)
    planned = result.get("group_sizes_planned", [])
    for key, label in (
        ("router_rps", "router, planned caches"),
        ("compacted_rps", "compacted, planned caches"),
    ):
        if planned:
            right.plot([g["group"] for g in planned], [g[key] for g in planned], "s--", label=label)
    right.set_xscale("log", base=2)
    right.set_xlabel("group size (gati: every position at 99%, or the plan)")
    right.set_ylabel("requests per second")
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    for key, label in (
        ("router_ms", "compiled router"),
        ("loop_ms", "Python-loop reference"),
        ("stage_sum_model_ms", "sum of separately compiled stages"),
        ("profile_model_ms", "planner's profile (in-router costs)"),
        ("same_round_model_ms", "same, stages timed in these rounds"),
    ):
        ax.plot(x, [r[key] for r in rows], "o-", label=label)
    ax.axhline(result["plain_network_ms"], color="gray", ls="--", label="plain network")
    ax.set_xticks(list(x), labels)
    ax.set_xlabel("position every request exits at")
    ax.set_ylabel("latency per group of 1 (ms)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def _kernel_parts(ax: Any, profile: dict[str, dict[str, float]]) -> None:
    """Stacked bars: each program's kernel time (XLA's profile) as stages, lookups, other."""
    names = list(profile)
    left = np.zeros(len(names))
    for prefix, label in (
        (STAGE, "base-network stages"),
        (LOOKUP, "lookups"),
        (OTHER, "other (outside stages and lookups)"),
        (UNATTRIBUTED, "unattributed"),
    ):
        us = np.array([1e3 * part_total(profile[n], prefix) for n in names])
        if prefix == UNATTRIBUTED and not us.any():
            continue
        ax.barh(names, us, left=left, label=label)
        left += us
    ax.invert_yaxis()
    ax.set_xlabel("kernel time per call, all missing (us, profiled)")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=8, loc="lower right")


def plot_plan_tradeoff(sweep: Sequence[dict[str, Any]], path: str | os.PathLike) -> None:
    """Predicted speedup vs test agreement of every (policy, method) across accuracy bounds."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    methods = sorted({(r["policy"], r["method"]) for r in sweep})
    for policy, method in methods:
        rows = sorted(
            (r for r in sweep if (r["policy"], r["method"]) == (policy, method)),
            key=lambda r: r["eps"],
        )
        ax.plot(
            [r["test_agreement"] for r in rows],
            [r["speedup"] for r in rows],
            marker="o",
            label=f"{policy} / {method}",
        )
    ax.set_xlabel("agreement with the base network (test split)")
    ax.set_ylabel("predicted speedup vs the plain network")
    ax.set_title("plans across accuracy bounds (one point per eps)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_latency_cdf(
    latencies: dict[str, dict[str, Sequence[float]]], path: str | os.PathLike
) -> None:
    """Per workload, the latency CDF of every policy (all rounds pooled)."""
    fig, axes = _workload_panels(len(latencies), 4.2)
    for ax, (workload, per_policy) in zip(axes, latencies.items()):
        for policy, values in per_policy.items():
            x = np.sort(np.asarray(values))
            ax.plot(x, np.arange(1, len(x) + 1) / len(x), label=policy)
        ax.set_xscale("log")
        ax.set_xlabel("request latency (ms, queueing + compute)")
        ax.set_ylabel("fraction of requests")
        ax.set_title(f"workload: {workload}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, path)


def plot_position_hit_rates(
    table: Sequence[dict[str, Any]], plan: dict[str, Any], path: str | os.PathLike
) -> None:
    """Per position: the best cache's hit rate alone, and the share of requests the chosen
    plan lets exit there (on the test split)."""
    positions = [r["position"] for r in table]
    key = next(k for k in table[0] if k.startswith("hit_rate@"))
    fractions = plan.get("test", {}).get("exit_fractions", {})
    fig, ax = plt.subplots(figsize=(7, 4))
    x = np.arange(len(positions))
    ax.bar(x - 0.2, [r[key] for r in table], 0.4, label=f"best cache alone ({key})")
    ax.bar(
        x + 0.2,
        [fractions.get(str(p), 0.0) for p in positions],
        0.4,
        label=f"exits there under the plan ({plan['policy']}, {plan['method']})",
    )
    ax.set_xticks(x, [str(p) for p in positions])
    ax.set_xlabel("position (stage after which the cache sits)")
    ax.set_ylabel("fraction of test requests")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    _save(fig, path)


# Shaded request ranges, in order of first appearance per panel.
_SPAN_COLORS = ("tab:red", "tab:purple", "tab:gray")


def plot_hit_rate_over_time(
    windows: dict[str, dict[str, Sequence[dict[str, Any]]]],
    path: str | os.PathLike,
    metric: str = "hit_rate",
    policies: Sequence[str] | None = None,
    floor: float | None = None,
    spans: dict[str, Sequence[tuple[int, int, str]]] | None = None,
) -> None:
    """Per workload, each policy's ``metric`` (hit_rate, agreement, ...) per window of requests
    over the stream; ``floor`` draws a target line (e.g. the agreement bound), ``spans`` shades
    request ranges per workload, (start, end, label) (e.g. corrupted inputs, shift alarms)."""
    if not windows:
        return
    fig, axes = _workload_panels(len(windows), 4)
    for ax, (workload, per_policy) in zip(axes, windows.items()):
        shades: dict[str, str] = {}
        for start, end, label in (spans or {}).get(workload, ()):
            first = label not in shades  # one legend entry per label
            color = shades.setdefault(label, _SPAN_COLORS[len(shades) % len(_SPAN_COLORS)])
            ax.axvspan(
                start, end, color=color, alpha=0.15, linewidth=0, label=label if first else None
            )
        for policy, rows in per_policy.items():
            if policy == "none" or (policies is not None and policy not in policies):
                continue
            ax.plot([r["start"] for r in rows], [r[metric] for r in rows], label=policy)
        if floor is not None:
            ax.axhline(floor, color="black", linestyle="--", linewidth=1, label="target")
        ax.set_xlabel("request index")
        ax.set_ylabel(f"{metric.replace('_', ' ')} per window")
        ax.set_title(f"workload: {workload}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, path)


def plot_segment_headroom(
    result: dict[str, Sequence[dict[str, Any]]], target: float, path: str | os.PathLike
) -> None:
    """The bounds of gati_jax/experiments/online_headroom.py: per cache and hot-class set, hit
    rate and hit
    agreement of the static, recalibrated and fine-tuned cache; per hot-class set, the speedup
    of each cascade over the plain network."""
    rows, cascade = result["caches"], result["cascade"]
    kinds = list(dict.fromkeys(r["caches"] for r in cascade))  # static, recalibrated, tuned
    names = [f"p{r['position']}\n{{{r['hot']}}}" for r in rows]
    x = np.arange(len(rows))
    fig, (ax_rate, ax_agree, ax_speed) = plt.subplots(
        3, 1, figsize=(max(7, 0.7 * len(rows)), 9), gridspec_kw={"height_ratios": (1, 1, 0.8)}
    )
    for offset, kind in zip((-0.27, 0.0, 0.27), kinds):
        ax_rate.bar(x + offset, [r[f"{kind}_hit_rate"] for r in rows], 0.27, label=kind)
        ax_agree.bar(x + offset, [r[f"{kind}_agreement"] for r in rows], 0.27, label=kind)
    ax_agree.axhline(target, color="k", ls="--", lw=1, label=f"target {target:g}")
    ax_rate.set_ylabel("hit rate (cache alone)")
    ax_agree.set_ylabel("agreement of its hits")
    ax_agree.set_ylim(min(0.85, min(r["static_agreement"] for r in rows) - 0.01), 1.001)
    for ax in (ax_rate, ax_agree):
        ax.set_xticks(x, names, fontsize=7)
        ax.grid(alpha=0.3, axis="y")
    ax_rate.legend(fontsize=8)
    hot_sets = list(dict.fromkeys(r["hot"] for r in cascade))
    xs = np.arange(len(hot_sets))
    key = "speedup" if "speedup" in cascade[0] else "agreement"
    for offset, kind in zip((-0.27, 0.0, 0.27), kinds):
        values = {r["hot"]: r[key] for r in cascade if r["caches"] == kind}
        ax_speed.bar(xs + offset, [values[h] for h in hot_sets], 0.27, label=kind)
    ax_speed.set_xticks(xs, [f"{{{h}}}" for h in hot_sets])
    ax_speed.set_xlabel("hot classes of the segment")
    ax_speed.set_ylabel("cascade speedup over plain" if key == "speedup" else "cascade agreement")
    ax_speed.grid(alpha=0.3, axis="y")
    _save(fig, path)


def plot_run_spread(rows: Sequence[dict[str, Any]], metric: str, path: str | os.PathLike) -> None:
    """One panel per workload: each policy's ``metric`` in every run (dots), median marked
    (the rows of ``run_summary.spread``)."""
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    runs = len(rows[0]["values"]) if rows else 0
    fig, axes = _workload_panels(max(len(workloads), 1), 4)
    for ax, workload in zip(axes, workloads):
        mine = [r for r in rows if r["workload"] == workload]
        for i, row in enumerate(mine):
            values = [v for v in row["values"].values() if np.isfinite(v)]
            ax.scatter([i] * len(values), values, s=14, alpha=0.7, color="tab:blue")
            ax.plot([i - 0.3, i + 0.3], [row["median"]] * 2, color="black")
        ax.set_xticks(range(len(mine)), [r["policy"] for r in mine], rotation=45, ha="right")
        ax.set_title(f"{workload}: {metric} over {runs} runs")
        ax.grid(alpha=0.3)
    _save(fig, path)


def _stream_field(stream: Any, name: str) -> Any:
    """A field of a stream given as a Workload or as a dict of per-request lists."""
    value = stream.get(name) if isinstance(stream, dict) else getattr(stream, name, None)
    return None if value is None else np.asarray(value)


def plot_stream_structure(
    streams: dict[str, Any], path: str | os.PathLike, max_cuts: int = 400
) -> None:
    """Per stream, one panel over request index: each request's label (distractor frames
    apart), segment boundaries (video: scene cuts) as vertical lines, corrupted requests
    shaded. A stream is a Workload (gati_jax/data/workloads.py) or a dict with ``labels`` and
    optionally ``segments``, ``distractor`` and ``corrupted`` (per-request lists). Unlabelled
    requests (label -1, a trace's) are left out; over ``max_cuts`` boundaries are not drawn."""
    if not streams:
        return
    fig, axes = plt.subplots(len(streams), 1, figsize=(12, 2.6 * len(streams)), squeeze=False)
    for ax, (name, stream) in zip(axes[:, 0], streams.items()):
        labels = _stream_field(stream, "labels")
        index = np.arange(labels.size)
        segments = _stream_field(stream, "segments")
        distractor = _stream_field(stream, "distractor")
        corrupted = _stream_field(stream, "corrupted")
        distractor = np.zeros(labels.size, bool) if distractor is None else distractor.astype(bool)
        if corrupted is not None and corrupted.any():
            edges = np.diff(np.concatenate([[0], corrupted.astype(np.int8), [0]]))
            for i, (start, end) in enumerate(
                zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1))
            ):
                ax.axvspan(
                    start,
                    end,
                    color="tab:red",
                    alpha=0.12,
                    linewidth=0,
                    label="corrupted" if i == 0 else None,
                )
        if segments is not None:
            cuts = np.flatnonzero(np.diff(segments) != 0) + 1
            if 0 < cuts.size <= max_cuts:
                ax.vlines(
                    cuts,
                    -0.5,
                    max(int(labels.max()), 0) + 0.5,
                    color="black",
                    linewidth=0.6,
                    alpha=0.5,
                    label=f"segment boundary / scene cut ({cuts.size})",
                )
        keep = (labels >= 0) & ~distractor
        ax.scatter(
            index[keep], labels[keep], s=2, color="tab:blue", rasterized=True, label="request label"
        )
        shown = (labels >= 0) & distractor
        if shown.any():
            ax.scatter(
                index[shown],
                labels[shown],
                s=6,
                marker="x",
                color="tab:gray",
                linewidths=0.6,
                rasterized=True,
                label="distractor",
            )
        ax.set_xlim(0, max(labels.size, 1))
        ax.set_xlabel("request index")
        ax.set_ylabel("label")
        ax.set_title(f"stream: {name}")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7, loc="upper right", markerscale=3)
    _save(fig, path)


def plot_measured_tradeoff(
    rows: Sequence[dict[str, Any]], eps: float, path: str | os.PathLike
) -> None:
    """The headline: measured speedup over the plain network against agreement with it, one
    point per policy and workload; the oracle's speedup is the bound (dashed), the planned
    bound 1 - eps a line, and a plan that did not meet it on the tuning data a hollow point."""
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    policies = list(dict.fromkeys(r["policy"] for r in rows if r["policy"] != "oracle"))
    fig, axes = _workload_panels(len(workloads), 4.2)
    colors = {p: plt.cm.tab10(i % 10) for i, p in enumerate(policies)}
    for ax, workload in zip(axes, workloads):
        mine = [r for r in rows if r["workload"] == workload]
        for row in mine:
            if row["policy"] == "oracle":
                ax.axvline(
                    row["speedup_vs_none"],
                    color="grey",
                    ls="--",
                    lw=1,
                    label=f"oracle {row['speedup_vs_none']:.2f}x (bound)",
                )
                continue
            feasible = bool(row.get("feasible", True))
            color = colors[row["policy"]]
            ax.scatter(
                row["speedup_vs_none"],
                row["agreement"],
                s=55,
                zorder=3,
                facecolors=color if feasible else "none",
                edgecolors=color,
                label=row["policy"] + ("" if feasible else " (infeasible plan)"),
            )
        ax.axhline(1 - eps, color="black", lw=0.8, alpha=0.6, label=f"bound 1 - eps = {1 - eps:g}")
        ax.set_title(workload)
        ax.set_xlabel("measured speedup over the plain network")
        ax.set_ylabel("agreement with the base network")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    _save(fig, path)


def exit_curve(
    fractions: dict[str, float], stage_s: Sequence[float]
) -> tuple[list[float], list[float], float]:
    """Cumulative cost (fraction of the plain network) at each exit, the fraction of requests
    answered by then, and the mean cost in units of the plain network (misses pay all of it;
    lookups are not counted: this is where requests leave, not what the router adds)."""
    cumulative = np.cumsum(np.asarray(stage_s, np.float64))
    total = float(cumulative[-1])
    points = sorted(
        (float(cumulative[int(p)] / total), float(f))
        for p, f in fractions.items()
        if int(p) < len(cumulative) - 1 and f > 0
    )
    xs = [0.0] + [x for x, _ in points] + [1.0]
    ys = [0.0] + [float(y) for y in np.cumsum([f for _, f in points])] + [1.0]
    mean_cost = sum(x * f for x, f in points) + (1.0 - sum(f for _, f in points))
    return xs, ys, mean_cost


def plot_exit_depth(
    exits: dict[str, dict[str, dict[str, float]]], stage_s: Sequence[float], path: str | os.PathLike
) -> None:
    """Where requests exit against how much of the network they ran: per workload and policy,
    the fraction of requests answered (y) once this fraction of the plain network's latency
    has run (x). A deep network's early positions sit near x = 0, which is where exits pay.

    ``exits``: workload -> policy -> {position: fraction of requests exiting there};
    ``stage_s``: each stage's latency, so position p costs sum(stage_s[:p + 1]) / total."""
    fig, axes = _workload_panels(max(len(exits), 1), 4.2)
    for ax, (workload, per_policy) in zip(axes, exits.items()):
        for policy, fractions in per_policy.items():
            xs, ys, mean_cost = exit_curve(fractions, stage_s)
            ax.step(xs, ys, where="post", label=f"{policy} (mean cost {mean_cost:.2f})")
        ax.set_title(workload)
        ax.set_xlabel("cumulative cost: fraction of the plain network's latency run")
        ax.set_ylabel("fraction of requests answered")
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    _save(fig, path)
