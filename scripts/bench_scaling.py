"""Serving throughput against device count for a planned system.

``python scripts/bench_scaling.py --config configs/default.py --workdir DIR`` serves DIR/plan
(written by the main job or plan_caches.py) with its request groups split over 1, 2, 4, ...
devices (``benchmark.device_counts``), prints throughput per count and writes
DIR/device_scaling.json. On a CPU, XLA_FLAGS=--xla_force_host_platform_device_count=4 makes
four devices (sharing the same cores: this checks the code path, it cannot speed anything up).
"""

from absl import flags
from ml_collections import config_flags

from gati_jax import cli
from gati_jax.experiments.device_scaling import run_device_scaling

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/default.py", "Experiment config.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Work directory holding plan/.", required=True)


def main(argv: list[str]) -> None:
    del argv
    run_device_scaling(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    cli.run(main)
