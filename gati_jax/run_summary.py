"""Several runs of the policy benchmark (or the main job) side by side: how far each figure
moves from run to run on this machine, and which settings the runs did not share.

One run's speedups and p99 ratios move by several percent between runs here (the plain
network's time drifts by 10-40% within minutes); a figure is worth quoting with its spread.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

_ONLINE = ("speedup_vs_static_gati", "p99_ratio_vs_static_gati", "p99_ratio_low90",
           "p99_ratio_high90", "agreement", "static_agreement", "min_window_agreement",
           "static_min_window_agreement")


@dataclasses.dataclass(frozen=True)
class Run:
    """One benchmark run: its rows, its online-learning figures and its config."""

    name: str
    rows: list[dict[str, Any]]
    online: dict[str, dict[str, Any]]
    config: dict[str, Any]


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is corrupt: {error}") from error


def load_run(directory: str | Path) -> Run:
    """Reads a benchmark run's directory (``benchmark.json``; ``benchmark_details.json`` and
    ``config.json`` where present)."""
    directory = Path(directory)
    rows_path = directory / "benchmark.json"
    if not rows_path.is_file():
        raise FileNotFoundError(f"no benchmark at {directory} (missing benchmark.json): give "
                                "the workdir of scripts/train_caches.py or scripts/benchmark.py")
    rows = _json(rows_path)
    details = directory / "benchmark_details.json"
    online = _json(details).get("online", {}) if details.is_file() else {}
    config = directory / "config.json"
    return Run(directory.name, rows, online, _json(config) if config.is_file() else {})


def _stats(values: Sequence[float]) -> dict[str, float]:
    finite = [v for v in values if v is not None and np.isfinite(v)]
    if not finite:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan")}
    return {"median": float(np.median(finite)), "min": min(finite), "max": max(finite)}


def spread(runs: Sequence[Run], metric: str = "speedup_vs_none") -> list[dict[str, Any]]:
    """Per workload and policy (in the order first seen): in how many runs it appears, the
    median, smallest and largest ``metric`` over them, and each run's value."""
    if not runs:
        raise ValueError("no runs to summarize")
    known = {k for run in runs for row in run.rows for k, v in row.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if metric not in known:
        raise ValueError(f"unknown metric '{metric}'; the runs' rows have {sorted(known)}")
    keys: list[tuple[str, str]] = []
    values: dict[tuple[str, str], dict[str, float]] = {}
    for run in runs:
        for row in run.rows:
            key = (row["workload"], row["policy"])
            if key not in values:
                keys.append(key)
                values[key] = {}
            values[key][run.name] = row.get(metric)
    return [{"workload": w, "policy": p, "runs": len(values[(w, p)]),
             **_stats(list(values[(w, p)].values())),
             **{run.name: values[(w, p)].get(run.name, float("nan")) for run in runs}}
            for w, p in keys]


def online_spread(runs: Sequence[Run], p99_target: float = 1.2) -> list[dict[str, Any]]:
    """Per workload, gati-online against static gati over the runs that served it: median,
    smallest and largest of each figure, and in how many runs the p99 ratio, and its whole
    90% interval, stayed within ``p99_target``."""
    workloads: list[str] = []
    for run in runs:
        workloads += [w for w in run.online if w not in workloads]
    out = []
    for w in workloads:
        served = [run.online[w] for run in runs if w in run.online]
        row: dict[str, Any] = {"workload": w, "runs": len(served)}
        for key in _ONLINE:
            s = _stats([f.get(key) for f in served])
            row.update({f"{key}_median": s["median"], f"{key}_min": s["min"],
                        f"{key}_max": s["max"]})
        row["p99_within_target"] = sum(f["p99_ratio_vs_static_gati"] <= p99_target
                                       for f in served)
        row["p99_interval_within_target"] = sum(
            f.get("p99_ratio_high90", float("inf")) <= p99_target for f in served)
        out.append(row)
    return out


def compact_online(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """:func:`online_spread`'s rows for printing: each figure as 'median [min, max]'."""
    def cell(row: dict[str, Any], key: str) -> str:
        return (f"{row[key + '_median']:.3f} [{row[key + '_min']:.3f}, "
                f"{row[key + '_max']:.3f}]")
    return [{"workload": r["workload"], "runs": r["runs"],
             "vs_static": cell(r, "speedup_vs_static_gati"),
             "p99_ratio": cell(r, "p99_ratio_vs_static_gati"),
             "p99_high90": cell(r, "p99_ratio_high90"),
             "min_window": cell(r, "min_window_agreement"),
             "static_min_window": cell(r, "static_min_window_agreement"),
             "p99_ok": r["p99_within_target"], "interval_ok": r["p99_interval_within_target"]}
            for r in rows]


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def config_differences(runs: Sequence[Run]) -> dict[str, dict[str, Any]]:
    """Config keys whose values differ between the runs that have a config (key -> run ->
    value; a run without the key shows None). Runs without one: :func:`without_config`."""
    flat = {run.name: _flat(run.config) for run in runs if run.config}
    keys = sorted({k for f in flat.values() for k in f})
    return {k: {name: f.get(k) for name, f in flat.items()} for k in keys
            if len({json.dumps(f.get(k), sort_keys=True) for f in flat.values()}) > 1}


def without_config(runs: Sequence[Run]) -> list[str]:
    """The runs that recorded no config (written before benchmark runs saved theirs)."""
    return [run.name for run in runs if not run.config]
