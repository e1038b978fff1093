"""Several benchmark runs side by side: ``python scripts/summarize_runs.py RUN [RUN ...]``.

Prints, per workload and policy, the median, smallest and largest of a figure over the runs
(``--metric``, default ``speedup_vs_none``) and each run's value; gati-online against static
gati over the runs that served it; and the config keys the runs did not share. Writes
``OUT/runs_summary.json`` and ``OUT/runs_summary.png`` (one dot per run, the median marked).
"""

import json
from pathlib import Path

from absl import app, flags

from gati_jax import cli
from gati_jax.experiments.plots import plot_run_spread
from gati_jax.experiments.run_summary import load_runs, summarize, summary_lines, summary_tables
from gati_jax.tables import format_table

_METRIC = flags.DEFINE_string("metric", "speedup_vs_none", "Column of benchmark.json.")
_OUT = flags.DEFINE_string("out", "runs/summary", "Where to write the JSON and the plot.")
_P99_TARGET = flags.DEFINE_float(
    "p99_target", 1.2, "gati-online's p99 over static gati's that counts as within target."
)


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise app.UsageError(
            "give one or more run directories (workdirs of train_caches.py or benchmark.py)"
        )
    summary = summarize(load_runs(argv[1:]), _METRIC.value, _P99_TARGET.value)
    for title, rows in summary_tables(summary):
        print(f"{title}\n{format_table(rows)}\n")
    print("\n".join(summary_lines(summary)))
    out = Path(_OUT.value)
    out.mkdir(parents=True, exist_ok=True)
    (out / "runs_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot_run_spread(summary["spread"], summary["metric"], out / "runs_summary.png")
    print(f"wrote {out / 'runs_summary.json'} and {out / 'runs_summary.png'}")


if __name__ == "__main__":
    cli.run(main)
