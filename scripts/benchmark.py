"""Compares every exit policy at its planned setting on the same request streams.

``python scripts/benchmark.py --config configs/benchmark.py --workdir DIR [--bank BANK]``
plans none, gati, confidence, entropy, apparate, knn and oracle for the config's accuracy
bound and memory budget, serves the config's workloads (uniform, temporal, shift) through
each in repeated rounds, plus gati-online (the gati caches learning online) when
``online.enabled`` and knn-recent (the recency memory served alone) when listed, and
writes DIR/benchmark.json, DIR/benchmark_details.json, DIR/latency_cdf.png,
DIR/agreement_vs_speedup.png and, with online learning, DIR/agreement_over_time.png and
DIR/online_hit_rate_over_time.png. Without a bank (BANK, or DIR/cache_bank) it explores
first.
"""

from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from gati_jax import cli
from gati_jax.jobs.benchmark import run_benchmark
from gati_jax.jobs.exploration import run_exploration

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/benchmark.py", "Experiment config.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)
_BANK = flags.DEFINE_string("bank", None, "Cache bank directory (default: WORKDIR/cache_bank).")


def main(argv: list[str]) -> None:
    del argv
    bank = _BANK.value or str(Path(_WORKDIR.value) / "cache_bank")
    if not (Path(bank) / "bank.json").is_file():
        if _BANK.value:
            raise app.UsageError(f"no cache bank at {bank}")
        run_exploration(_CONFIG.value, _WORKDIR.value)
    run_benchmark(_CONFIG.value, _WORKDIR.value, bank)


if __name__ == "__main__":
    cli.run(main)
