"""Several benchmark runs side by side: ``python scripts/summarize_runs.py RUN [RUN ...]``.

Prints, per workload and policy, the median, smallest and largest of a figure over the runs
(``--metric``, default ``speedup_vs_none``) and each run's value; gati-online against static
gati over the runs that served it; and the config keys the runs did not share. Writes
``OUT/runs_summary.json`` and ``OUT/runs_summary.png`` (one dot per run, the median marked).
"""

import json
from pathlib import Path

from absl import app, flags, logging

from gati_jax.plotting import plot_run_spread
from gati_jax.run_summary import (compact_online, config_differences, load_run,
                                  online_spread, spread, without_config)
from gati_jax.tables import format_table

_METRIC = flags.DEFINE_string("metric", "speedup_vs_none", "Column of benchmark.json.")
_OUT = flags.DEFINE_string("out", "runs/summary", "Where to write the JSON and the plot.")
_P99_TARGET = flags.DEFINE_float("p99_target", 1.2, "gati-online's p99 over static gati's "
                                 "that counts as within target.")


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise app.UsageError("give one or more run directories (workdirs of train_caches.py "
                             "or benchmark.py)")
    logging.set_verbosity(logging.WARNING)
    runs = [load_run(d) for d in argv[1:]]
    rows, online = spread(runs, _METRIC.value), online_spread(runs, _P99_TARGET.value)
    differences = config_differences(runs)
    print(f"{_METRIC.value} over {len(runs)} runs:")
    print(format_table(rows))
    if online:
        print("\ngati-online against static gati (median [min, max]; p99_ok, interval_ok: "
              "runs whose p99 ratio, and its whole 90% interval, stayed within "
              f"{_P99_TARGET.value:g}x):")
        print(format_table(compact_online(online)))
    print("\nconfig keys the runs did not share: "
          + (", ".join(differences) if differences else "none"))
    unknown = without_config(runs)
    if unknown:
        print(f"runs without config.json, not compared: {', '.join(unknown)}")
    out = Path(_OUT.value)
    out.mkdir(parents=True, exist_ok=True)
    (out / "runs_summary.json").write_text(json.dumps(
        {"runs": [r.name for r in runs], "metric": _METRIC.value, "spread": rows,
         "online": online, "config_differences": differences,
         "without_config": unknown}, indent=1) + "\n")
    plot_run_spread(rows, [r.name for r in runs], _METRIC.value, out / "runs_summary.png")
    print(f"wrote {out / 'runs_summary.json'} and {out / 'runs_summary.png'}")


if __name__ == "__main__":
    app.run(main)
