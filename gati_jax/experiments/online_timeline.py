"""gati-online over time, per stream: hit rate and exit position in bins of requests, with the
stream's scene cuts and the learner's events (updates accepted or rejected, memory thresholds,
guard switches, input-shift alarms) on the same axis; for the report (jobs/report.py)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")  # headless machines and CI have no display
import matplotlib.pyplot as plt  # noqa: E402

TIMELINE_BIN = 50  # requests per point of a timeline


def exit_timeline(
    exit_stage: np.ndarray,
    hit: np.ndarray,
    answer: np.ndarray,
    base_answer: np.ndarray,
    bin_size: int = TIMELINE_BIN,
) -> dict[str, list]:
    """Per bin of ``bin_size`` consecutive requests: where it starts, its hit rate, mean exit
    stage and agreement with the base network."""
    n = len(exit_stage)
    starts = list(range(0, n, bin_size))
    bins = [slice(s, s + bin_size) for s in starts]
    return {
        "start": starts,
        "bin": bin_size,
        "hit_rate": [float(np.mean(hit[b])) for b in bins],
        "mean_exit_stage": [float(np.mean(exit_stage[b])) for b in bins],
        "agreement": [float(np.mean(answer[b] == base_answer[b])) for b in bins],
    }


def learner_events(online: dict[str, Any]) -> dict[str, list[int]]:
    """The request counts at which the learner swapped caches in ("accepted"), rejected
    trained ones ("rejected"), changed a memory's threshold ("memory"), switched a cache or
    memory off or on ("guard"), and raised the input-shift alarm ("shift")."""
    accepted, rejected = [], []
    for update in online.get("update_log", []):
        for verdict in update["verdicts"]:
            if verdict["reason"] == "waiting for data":
                continue
            (accepted if verdict.get("updated") else rejected).append(update["applied"])
    guard = [
        e["served"]
        for e in [*online.get("guard_events", []), *online.get("memory_guard_events", [])]
        if e.get("kind", "switch") == "switch"
    ]
    return {
        "accepted": accepted,
        "rejected": rejected if any(u["trained"] for u in online.get("update_log", [])) else [],
        "memory": [m["served"] for m in online.get("memory_log", [])],
        "guard": guard,
        "shift": [e["served"] for e in online.get("shift_events", []) if e["on"]],
    }


def plot_online_timeline(
    online: dict[str, dict[str, Any]],
    cuts: dict[str, Sequence[int]],
    path: str | os.PathLike,
    max_cuts: int = 200,
) -> None:
    """One row per stream, two panels: hit rate (static gati and gati-online) and mean exit
    stage over requests, scene cuts as vertical lines; the learner's events as ticks on the
    top panel's upper edge."""
    streams = [w for w, f in online.items() if "timeline" in f]
    if not streams:
        return
    fig, axes = plt.subplots(
        2 * len(streams), 1, figsize=(12, 4.6 * len(streams)), squeeze=False, sharex=False
    )
    marks = {
        "accepted": ("tab:green", "^"),
        "rejected": ("tab:red", "v"),
        "memory": ("tab:purple", "|"),
        "guard": ("black", "x"),
        "shift": ("tab:orange", "d"),
    }
    for row, name in enumerate(streams):
        figures = online[name]
        top, bottom = axes[2 * row, 0], axes[2 * row + 1, 0]
        for policy, timeline in figures["timeline"].items():
            x = np.asarray(timeline["start"]) + timeline["bin"] / 2
            top.plot(x, timeline["hit_rate"], label=policy, linewidth=1)
            bottom.plot(x, timeline["mean_exit_stage"], label=policy, linewidth=1)
        stream_cuts = list(cuts.get(name, ()))
        for ax in (top, bottom):
            if 0 < len(stream_cuts) <= max_cuts:
                ax.vlines(
                    stream_cuts,
                    0,
                    1,
                    transform=ax.get_xaxis_transform(),
                    color="gray",
                    linewidth=0.6,
                    alpha=0.6,
                    label=f"scene cut ({len(stream_cuts)})" if ax is top else None,
                )
            ax.grid(alpha=0.3)
        for kind, served in learner_events(figures).items():
            if served:
                color, marker = marks[kind]
                top.scatter(
                    served,
                    np.full(len(served), 1.04),
                    color=color,
                    marker=marker,
                    s=18,
                    clip_on=False,
                    label=f"{kind} ({len(served)})",
                )
        top.set_ylim(0, 1.08)
        top.set_ylabel("hit rate")
        size = next(iter(figures["timeline"].values()))["bin"]
        top.set_title(f"stream: {name} (bins of {size} requests)")
        top.legend(fontsize=7, loc="lower right", ncol=4)
        bottom.set_ylabel("mean exit stage")
        bottom.set_xlabel("request index")
        bottom.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
