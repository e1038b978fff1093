"""What online learning could gain at best per hot-class segment, measured offline:
``python scripts/online_headroom.py --plan WORKDIR/plan --out runs/headroom.json``.

Prints the table and writes it as JSON (``--out``) with a plot beside it.
"""

import dataclasses
import json

from absl import flags

from gati_jax import cli, data
from gati_jax.evaluation import model_data_config
from gati_jax.experiments.online_headroom import HeadroomSettings, exit_costs, segment_headroom
from gati_jax.experiments.plots import plot_segment_headroom
from gati_jax.planner.plan import load_plan, plan_deployment
from gati_jax.tables import format_table
from gati_jax.training.checkpointing import load_base_model

_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", "checkpoints/fashion_mnist_resnet18", "Exported base model."
)
_PLAN = flags.DEFINE_string(
    "plan", None, "A saved gati plan (plan_caches.py's WORKDIR/plan).", required=True
)
_HOT = flags.DEFINE_multi_string(
    "hot",
    ["0,6", "2,4,6", "5,7,9", "1,3,8"],
    "A hot-class set, comma-separated; repeat the flag for more.",
)
_STEPS = flags.DEFINE_integer("steps", HeadroomSettings.steps, "Fine-tuning optimiser steps.")
_OUT = flags.DEFINE_string("out", "runs/headroom.json", "Where to write the JSON.")


def main(argv: list[str]) -> None:
    del argv
    model = load_base_model(_CHECKPOINT.value)
    test = data.load_dataset(model_data_config(model)).test
    hot_sets = [tuple(int(c) for c in hot.split(",")) for hot in _HOT.value]
    settings = HeadroomSettings(steps=_STEPS.value)
    deployment = plan_deployment(*load_plan(_PLAN.value))
    costs = exit_costs(model, deployment)
    result = segment_headroom(
        model, deployment, test.images, test.labels, hot_sets, settings, costs
    )
    print("each cache alone, on the test requests of each hot-class set:")
    print(format_table(result["caches"]))
    print(
        "\nthe deployed cascade (exit fractions per position; mean cost from the router's "
        "measured batch-1 latency when exiting there, in units of the plain network: "
        + ", ".join(f"{k} {v:.3f}" for k, v in costs.items())
        + "):"
    )
    print(format_table(result["cascade"]))
    with open(_OUT.value, "w") as f:
        json.dump(
            {"settings": dataclasses.asdict(settings), "exit_costs": costs, **result}, f, indent=1
        )
    plot = _OUT.value.removesuffix(".json") + ".png"
    plot_segment_headroom(result, settings.target, plot)
    print(f"wrote {_OUT.value} and {plot}")


if __name__ == "__main__":
    cli.run(main)
