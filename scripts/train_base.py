"""Trains a staged base network:
``python scripts/train_base.py --config configs/X.py --workdir DIR``.

Fields are overridable as ``--config.train.epochs=3``. Re-running with the same WORKDIR resumes
from the last checkpoint.
"""

from absl import flags
from ml_collections import config_flags

from gati_jax import cli
from gati_jax.jobs.train_base import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and plots.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    del argv
    train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    cli.run(main)
