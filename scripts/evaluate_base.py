"""Evaluates an exported base model: ``python scripts/evaluate_base.py --checkpoint DIR``."""

import json

from absl import flags

from gati_jax import cli
from gati_jax.evaluation import evaluate_checkpoint

_CHECKPOINT = flags.DEFINE_string(
    "checkpoint",
    "checkpoints/fashion_mnist_resnet18",
    "Directory written by train_base.py (model.json + variables).",
)
_SPLIT = flags.DEFINE_enum("split", "test", ["train", "validation", "test"], "Split to evaluate.")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "Where the data set's files are, if not default.")


def main(argv: list[str]) -> None:
    del argv
    result = evaluate_checkpoint(_CHECKPOINT.value, _SPLIT.value, _DATA_DIR.value)
    print(json.dumps(result, indent=2))
    print(
        f"{result['network']} on {result['data_set']} {result['split']}: accuracy "
        f"{result['accuracy']:.4f} over {result['examples']} examples "
        f"(recorded at export: {result['recorded_accuracy']})"
    )


if __name__ == "__main__":
    cli.run(main)
