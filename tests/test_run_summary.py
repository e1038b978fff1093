"""Several benchmark runs side by side: spreads, online figures, config differences."""

from __future__ import annotations

import json
import math

import pytest

from gati_jax.plotting import plot_run_spread
from gati_jax.run_summary import (compact_online, config_differences, load_run,
                                  online_spread, spread, without_config)


def _run(directory, speedups, p99=None, config=None):
    directory.mkdir(parents=True)
    rows = [{"workload": w, "policy": p, "speedup_vs_none": s, "agreement": 0.99}
            for (w, p), s in speedups.items()]
    (directory / "benchmark.json").write_text(json.dumps(rows))
    if p99 is not None:
        online = {w: {"speedup_vs_static_gati": 0.9, "p99_ratio_vs_static_gati": r,
                      "p99_ratio_low90": r - 0.05, "p99_ratio_high90": r + 0.05}
                  for w, r in p99.items()}
        (directory / "benchmark_details.json").write_text(json.dumps({"online": online}))
    if config is not None:
        (directory / "config.json").write_text(json.dumps(config))
    return directory


def test_spread_online_and_config_differences(tmp_path):
    a = _run(tmp_path / "a", {("uniform", "none"): 1.0, ("uniform", "gati"): 1.8},
             {"temporal": 1.1}, {"planner": {"eps": 0.01}, "seed": 0})
    b = _run(tmp_path / "b", {("uniform", "none"): 1.0, ("uniform", "gati"): 2.0,
                              ("shift", "gati"): 1.7}, {"temporal": 1.25},
             {"planner": {"eps": 0.02}, "seed": 0})
    c = _run(tmp_path / "c", {("uniform", "gati"): 1.9})
    runs = [load_run(d) for d in (a, b, c)]

    rows = {(r["workload"], r["policy"]): r for r in spread(runs)}
    gati = rows[("uniform", "gati")]
    assert (gati["runs"], gati["median"], gati["min"], gati["max"]) == (3, 1.9, 1.8, 2.0)
    assert (gati["a"], gati["b"], gati["c"]) == (1.8, 2.0, 1.9)
    shift = rows[("shift", "gati")]
    assert shift["runs"] == 1 and shift["median"] == 1.7 and math.isnan(shift["a"])
    assert list(rows)[:2] == [("uniform", "none"), ("uniform", "gati")]  # order first seen

    [temporal] = online_spread(runs)
    assert temporal["runs"] == 2
    assert temporal["p99_ratio_vs_static_gati_median"] == pytest.approx(1.175)
    assert temporal["p99_within_target"] == 1          # 1.1 <= 1.2 < 1.25
    assert temporal["p99_interval_within_target"] == 1  # 1.15 <= 1.2 < 1.30
    assert compact_online([temporal])[0]["p99_ratio"] == "1.175 [1.100, 1.250]"
    assert online_spread(runs, p99_target=1.3)[0]["p99_interval_within_target"] == 2

    # c recorded no config: named apart, not compared.
    assert config_differences(runs) == {"planner.eps": {"a": 0.01, "b": 0.02}}
    assert without_config(runs) == ["c"]

    path = tmp_path / "spread.png"
    plot_run_spread(spread(runs), [r.name for r in runs], "speedup_vs_none", path)
    assert path.stat().st_size > 0


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
