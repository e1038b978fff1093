"""One recency-memory publication's cost: ``python scripts/publish_cost.py [--workdir DIR]``.

Prints the median time of one publication of the online learner's memory as served (the
memory's arrays alone packed and sent) and with every parameter packed and sent again (as
before), timed alternately in one process (gati_jax/experiments/publish_cost.py).
"""

from absl import flags

from gati_jax import cli
from gati_jax.experiments.publish_cost import main as publish_cost

_WORKDIR = flags.DEFINE_string(
    "workdir", "checkpoints/fashion_mnist_resnet18", "A planned system (load_system's WORKDIR)."
)
_REPEATS = flags.DEFINE_integer("repeats", 200, "Timed publications of each kind.")


def main(argv: list[str]) -> None:
    del argv
    publish_cost(_WORKDIR.value, _REPEATS.value)


if __name__ == "__main__":
    cli.run(main)
