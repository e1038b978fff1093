"""Explores the cache design space on an exported base model.

``python scripts/explore_caches.py --config configs/default.py --workdir DIR`` records
activations, trains every candidate by vmap and writes DIR/exploration.json, DIR/exploration.png
and the bank (DIR/cache_bank). ``--benchmark`` instead times vmap against a Python loop.
"""

import json

from absl import app, flags
from ml_collections import config_flags

from gati_jax import cli
from gati_jax.experiments.vmap_benchmark import benchmark_vmap_vs_loop
from gati_jax.jobs.exploration import run_exploration

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/default.py", "Experiment config.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (not needed for --benchmark).")
_BENCHMARK = flags.DEFINE_boolean("benchmark", False, "Time vmapped vs looped training.")
_MEMBERS = flags.DEFINE_integer("members", 8, "Same-shape candidates in the benchmark.")


def main(argv: list[str]) -> None:
    del argv
    if _BENCHMARK.value:
        result = benchmark_vmap_vs_loop(_CONFIG.value, members=_MEMBERS.value)
        print(json.dumps(result, indent=2))
        print(
            f"{result['members']} x {result['variant']} at position {result['position']}: "
            f"vmap {result['vmap_s']:.2f} s, loop {result['loop_s']:.2f} s (medians of "
            f"{result['repeats']}), "
            f"vmap is {result['speedup']:.2f}x faster"
        )
        return
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required unless --benchmark is given")
    run_exploration(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    cli.run(main)
