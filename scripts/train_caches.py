"""The main job: base network (if asked for), exploration, plan, benchmark, report.

``python scripts/train_caches.py --config configs/default.py --workdir DIR`` uses the shipped
Fashion-MNIST ResNet-18 (``caches.checkpoint``). A base network is trained only when asked:
``--train_base`` trains one into ``caches.checkpoint`` (replacing only a base network gati_jax
wrote), ``--config.caches.train_base=True`` trains one there when it holds none. Finished
phases are skipped when run again; ``--redo`` names phases to run again, each with every
phase after it (base, explore, plan, benchmark, report). A DIR finished under another config
is refused, naming the changed keys and the ``--redo`` that applies them. Writes
DIR/report.md, DIR/report.json and the plots.
"""

from absl import flags
from ml_collections import config_flags

from gati_jax import cli
from gati_jax.jobs.main_job import run_main_job

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/default.py", "Experiment config.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)
_REDO = flags.DEFINE_list(
    "redo", [], "Phases to run again even if finished (each with every phase after it)."
)
_TRAIN_BASE = flags.DEFINE_boolean(
    "train_base", False, "Train the base network into caches.checkpoint first (once per workdir)."
)


def main(argv: list[str]) -> None:
    del argv
    run_main_job(_CONFIG.value, _WORKDIR.value, _REDO.value, _TRAIN_BASE.value)


if __name__ == "__main__":
    cli.run(main)
