"""Plans which caches to deploy, where and at which thresholds, under an accuracy bound and a
memory budget, for every exit policy and search method.

``python scripts/plan_caches.py --config configs/default.py --workdir DIR [--bank BANK]``
reads the exploration's bank (default DIR/cache_bank), measures or reuses the latency profile
(DIR/profile.json), and writes DIR/plan.json, DIR/plan_tradeoff.png and the loadable plan
DIR/plan (orbax caches + plan.json).
"""

from absl import flags
from ml_collections import config_flags

from gati_jax import cli
from gati_jax.jobs.planning import run_planning

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/default.py", "Experiment config.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)
_BANK = flags.DEFINE_string("bank", None, "Cache bank directory (default: WORKDIR/cache_bank).")


def main(argv: list[str]) -> None:
    del argv
    run_planning(_CONFIG.value, _WORKDIR.value, _BANK.value)


if __name__ == "__main__":
    cli.run(main)
