"""Several benchmark runs side by side: spreads, online figures, config differences."""

from __future__ import annotations

import json
import math

import pytest

from gati_jax.experiments.plots import plot_run_spread
from gati_jax.experiments.run_summary import (
    compact_online,
    config_differences,
    load_run,
    load_runs,
    online_spread,
    spread,
    spread_table,
    summarize,
    summary_lines,
    without_config,
)


def _run(directory, speedups, p99=None, config=None, details_config=None, interval=True):
    directory.mkdir(parents=True)
    rows = [
        {
            "workload": w,
            "policy": p,
            "agreement": 0.99,
            **({} if s is None else {"speedup_vs_none": s}),
        }
        for (w, p), s in speedups.items()
    ]
    (directory / "benchmark.json").write_text(json.dumps(rows))
    details = {}
    if p99 is not None:
        details["online"] = {
            w: {
                "speedup_vs_static_gati": 0.9,
                "p99_ratio_vs_static_gati": r,
                **({"p99_ratio_low90": r - 0.05, "p99_ratio_high90": r + 0.05} if interval else {}),
            }
            for w, r in p99.items()
        }
    if details_config is not None:
        details["config"] = details_config
    if details:
        (directory / "benchmark_details.json").write_text(json.dumps(details))
    if config is not None:
        (directory / "config.json").write_text(json.dumps(config))
    return directory


def test_spread_online_and_config_differences(tmp_path):
    a = _run(
        tmp_path / "a",
        {("uniform", "none"): 1.0, ("uniform", "gati"): 1.8},
        {"temporal": 1.1},
        config={"planner": {"eps": 0.01}, "seed": 0},
    )
    # b's config saved with its results wins over a stale config.json beside them.
    b = _run(
        tmp_path / "b",
        {("uniform", "none"): 1.0, ("uniform", "gati"): 2.0, ("shift", "gati"): 1.7},
        {"temporal": 1.25},
        config={"planner": {"eps": 0.5}},
        details_config={"planner": {"eps": 0.02}, "seed": 0},
    )
    # c: no config, its gati-online row first and no speedup for none.
    c = _run(
        tmp_path / "c",
        {("uniform", "gati-online"): 1.6, ("uniform", "gati"): 1.9, ("uniform", "none"): None},
        {"temporal": 1.3},
        interval=False,
    )
    runs = load_runs([a, b, c])

    rows = spread(runs)
    # Workloads, then policies, in the order first seen over all runs.
    assert [(r["workload"], r["policy"]) for r in rows] == [
        ("uniform", "none"),
        ("uniform", "gati"),
        ("uniform", "gati-online"),
        ("shift", "gati"),
    ]
    gati = rows[1]
    assert (gati["runs"], gati["median"], gati["min"], gati["max"]) == (3, 1.9, 1.8, 2.0)
    assert gati["values"] == {"a": 1.8, "b": 2.0, "c": 1.9}
    none = rows[0]
    assert none["runs"] == 2 and math.isnan(none["values"]["c"])  # c lacks the figure
    shift = rows[3]
    assert shift["runs"] == 1 and shift["median"] == 1.7 and math.isnan(shift["values"]["a"])
    assert spread_table(rows)[1]["run b"] == 2.0 and "values" not in spread_table(rows)[1]

    [temporal] = online_spread(runs)
    assert temporal["runs"] == 3
    assert temporal["p99_ratio_vs_static_gati_median"] == pytest.approx(1.25)
    assert (temporal["p99_within_target"], temporal["p99_runs"]) == (1, 3)  # 1.1 only
    # c has no interval: counted out, not as over the target.
    assert (temporal["interval_within_target"], temporal["interval_runs"]) == (1, 2)
    assert online_spread(runs, p99_target=1.35)[0]["interval_within_target"] == 2
    assert compact_online([temporal])[0]["p99_ok"] == "1/3"
    assert compact_online([temporal])[0]["p99_ratio"] == "1.250 [1.100, 1.300]"

    assert config_differences(runs) == {"planner.eps": {"a": 0.01, "b": 0.02}}
    assert without_config(runs) == ["c"]
    summary = summarize(runs)
    assert summary_lines(summary) == [
        "config keys the runs did not share: planner.eps",
        "runs without a recorded config, not compared: c",
    ]
    alone = summarize(runs[1:])
    assert summary_lines(alone) == ["config keys: not compared (1 of 2 runs recorded a config)"]

    path = tmp_path / "spread.png"
    plot_run_spread(rows, "speedup_vs_none", path)
    assert path.stat().st_size > 0


def test_runs_with_the_same_name_are_told_apart(tmp_path):
    first = _run(tmp_path / "x" / "run", {("uniform", "gati"): 1.5})
    second = _run(tmp_path / "y" / "run", {("uniform", "gati"): 1.7})
    runs = load_runs([first, second])
    assert [r.name for r in runs] == [str(first), str(second)]
    assert spread(runs)[0]["runs"] == 2
    with pytest.raises(ValueError, match="distinct names"):
        spread([load_run(first), load_run(second)])


def test_bad_runs_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing benchmark.json"):
        load_run(tmp_path / "nothing")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "benchmark.json").write_text("[{")
    with pytest.raises(ValueError, match="corrupt"):
        load_run(bad)
    run = load_run(_run(tmp_path / "ok", {("uniform", "gati"): 1.5}))
    with pytest.raises(ValueError, match="unknown metric 'speedup'"):
        spread([run], "speedup")
    with pytest.raises(ValueError, match="no runs"):
        spread([])
