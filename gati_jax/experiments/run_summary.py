"""Several runs of the policy benchmark (or the main job) side by side: how far each figure
moves from run to run on this machine, and which settings the runs did not share.

One run's speedups and p99 ratios move by several percent between runs here (the plain
network's time drifts by 10-40% within minutes); a figure is worth quoting with its spread.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gati_jax.config_checks import flat_config

_ONLINE = (
    "speedup_vs_static_gati",
    "p99_ratio_vs_static_gati",
    "p99_ratio_high90",
    "agreement",
    "static_agreement",
    "min_window_agreement",
    "static_min_window_agreement",
)


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


def load_run(directory: str | Path, name: str | None = None) -> Run:
    """Reads a benchmark run's directory: ``benchmark.json``, and where present
    ``benchmark_details.json`` (online figures; the config the benchmark ran under, saved
    with its results) or else ``config.json``. ``name``: default the directory's name."""
    directory = Path(directory)
    rows_path = directory / "benchmark.json"
    if not rows_path.is_file():
        raise FileNotFoundError(
            f"no benchmark at {directory} (missing benchmark.json): give "
            "the workdir of scripts/train_caches.py or scripts/benchmark.py"
        )
    rows = _json(rows_path)
    details_path = directory / "benchmark_details.json"
    details = _json(details_path) if details_path.is_file() else {}
    config = details.get("config")
    if config is None and (directory / "config.json").is_file():
        # Runs from before the config was saved with the results.
        config = _json(directory / "config.json")
    return Run(name or directory.resolve().name, rows, details.get("online", {}), config or {})


def load_runs(directories: Sequence[str | Path]) -> list[Run]:
    """:func:`load_run` of each directory, named by the directory unless two share a name,
    then by the path as given."""
    names = [Path(d).resolve().name for d in directories]
    return [load_run(d, n if names.count(n) == 1 else str(d)) for d, n in zip(directories, names)]


def _number(value: Any) -> float:
    """A figure as a float; NaN where a run lacks it (older runs lack some columns)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return float("nan")
    return float(value)


def _stats(values: Sequence[float]) -> dict[str, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan")}
    return {"median": float(np.median(finite)), "min": min(finite), "max": max(finite)}


def _check_names(runs: Sequence[Run]) -> None:
    names = [run.name for run in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"runs need distinct names, got {names}")


def spread(runs: Sequence[Run], metric: str = "speedup_vs_none") -> list[dict[str, Any]]:
    """Per workload and policy (workloads, then policies, in the order first seen): in how
    many runs it has a value, the median, smallest and largest ``metric`` over them, and
    each run's value (``values``: run -> value, NaN where missing)."""
    if not runs:
        raise ValueError("no runs to summarize")
    _check_names(runs)
    known = {
        k for run in runs for row in run.rows for k, v in row.items() if math.isfinite(_number(v))
    }
    if metric not in known:
        raise ValueError(f"unknown metric '{metric}'; the runs' rows have {sorted(known)}")
    workloads: list[str] = []
    policies: list[str] = []
    values: dict[tuple[str, str], dict[str, float]] = {}
    for run in runs:
        for row in run.rows:
            w, p = row["workload"], row["policy"]
            workloads += [w] if w not in workloads else []
            policies += [p] if p not in policies else []
            values.setdefault((w, p), {})[run.name] = _number(row.get(metric))
    out = []
    for w, p in sorted(values, key=lambda k: (workloads.index(k[0]), policies.index(k[1]))):
        mine = {run.name: values[(w, p)].get(run.name, float("nan")) for run in runs}
        out.append(
            {
                "workload": w,
                "policy": p,
                "runs": sum(math.isfinite(v) for v in mine.values()),
                **_stats(list(mine.values())),
                "values": mine,
            }
        )
    return out


def spread_table(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """:func:`spread`'s rows for printing: each run's value in a column of its own."""
    return [
        {k: v for k, v in row.items() if k != "values"}
        | {f"run {name}": value for name, value in row["values"].items()}
        for row in rows
    ]


def online_spread(runs: Sequence[Run], p99_target: float = 1.2) -> list[dict[str, Any]]:
    """Per workload, gati-online against static gati over the runs that served it: median,
    smallest and largest of each figure, and in how many runs the p99 ratio (of those that
    have one), and the top of its 90% interval (of those that have one), stayed within
    ``p99_target``."""
    workloads: list[str] = []
    for run in runs:
        workloads += [w for w in run.online if w not in workloads]
    out = []
    for w in workloads:
        served = [run.online[w] for run in runs if w in run.online]
        row: dict[str, Any] = {"workload": w, "runs": len(served)}
        for key in _ONLINE:
            s = _stats([_number(f.get(key)) for f in served])
            row.update({f"{key}_{stat}": value for stat, value in s.items()})
        for key, name in (("p99_ratio_vs_static_gati", "p99"), ("p99_ratio_high90", "interval")):
            have = [_number(f.get(key)) for f in served]
            have = [v for v in have if math.isfinite(v)]
            row[f"{name}_within_target"] = sum(v <= p99_target for v in have)
            row[f"{name}_runs"] = len(have)
        out.append(row)
    return out


def compact_online(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """:func:`online_spread`'s rows for printing: each figure as 'median [min, max]', the
    counts as 'within / of'."""

    def cell(row: dict[str, Any], key: str) -> str:
        return f"{row[key + '_median']:.3f} [{row[key + '_min']:.3f}, {row[key + '_max']:.3f}]"

    return [
        {
            "workload": r["workload"],
            "runs": r["runs"],
            "vs_static": cell(r, "speedup_vs_static_gati"),
            "p99_ratio": cell(r, "p99_ratio_vs_static_gati"),
            "p99_high90": cell(r, "p99_ratio_high90"),
            "min_window": cell(r, "min_window_agreement"),
            "static_min_window": cell(r, "static_min_window_agreement"),
            "p99_ok": f"{r['p99_within_target']}/{r['p99_runs']}",
            "interval_ok": f"{r['interval_within_target']}/{r['interval_runs']}",
        }
        for r in rows
    ]


def config_differences(runs: Sequence[Run]) -> dict[str, dict[str, Any]]:
    """Config keys whose values differ between the runs that have a config (key -> run ->
    value; a run without the key shows None). Runs without one: :func:`without_config`."""
    flat = {run.name: flat_config(run.config) for run in runs if run.config}
    keys = sorted({k for f in flat.values() for k in f})
    return {
        k: {name: f.get(k) for name, f in flat.items()}
        for k in keys
        if len({json.dumps(f.get(k), sort_keys=True) for f in flat.values()}) > 1
    }


def without_config(runs: Sequence[Run]) -> list[str]:
    """The runs that recorded no config (written before benchmark runs saved theirs)."""
    return [run.name for run in runs if not run.config]


def summarize(
    runs: Sequence[Run], metric: str = "speedup_vs_none", p99_target: float = 1.2
) -> dict[str, Any]:
    """Everything ``summarize_runs.py`` reports, as JSON-ready values."""
    return {
        "runs": [run.name for run in runs],
        "metric": metric,
        "p99_target": p99_target,
        "spread": spread(runs, metric),
        "online": online_spread(runs, p99_target),
        "config_differences": config_differences(runs),
        "without_config": without_config(runs),
    }


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """:func:`summarize`'s result as the text ``summarize_runs.py`` prints (tables as lists
    of rows are formatted by the caller: see :func:`summary_tables`)."""
    compared = len(summary["runs"]) - len(summary["without_config"])
    if compared < 2:
        lines = [
            f"config keys: not compared ({compared} of {len(summary['runs'])} runs "
            "recorded a config)"
        ]
    else:
        differences = summary["config_differences"]
        lines = [
            "config keys the runs did not share: "
            + (", ".join(differences) if differences else "none")
        ]
        if summary["without_config"]:
            lines.append(
                "runs without a recorded config, not compared: "
                + ", ".join(summary["without_config"])
            )
    return lines


def summary_tables(summary: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """:func:`summarize`'s tables, each with its title, for printing."""
    tables = [
        (f"{summary['metric']} over {len(summary['runs'])} runs:", spread_table(summary["spread"]))
    ]
    if summary["online"]:
        tables.append(
            (
                "gati-online against static gati (median [min, max]; p99_ok, "
                "interval_ok: runs whose p99 ratio, and the top of its 90% interval, "
                f"stayed within {summary['p99_target']:g}x, of the runs that have "
                "one):",
                compact_online(summary["online"]),
            )
        )
    return tables
