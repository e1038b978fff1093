"""Lookup cost by pooling form: ``python scripts/bench_lookup.py --bank DIR [--plan DIR]``.

Prints a lookup's cost inside a compiled program and the all-miss overhead of routers, with
the predictors pooling by slices (as served) and by pooling matrices (the former form), side
by side in one process; writes them as JSON (``--out``).
"""

import json

from absl import flags

from gati_jax import cli
from gati_jax.caches.bank import load_bank
from gati_jax.experiments.lookup_benchmark import benchmark_lookups, print_lookup_benchmark
from gati_jax.planner.plan import load_plan, plan_deployment
from gati_jax.training.checkpointing import load_base_model

_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", "checkpoints/fashion_mnist_resnet18", "Exported base model."
)
_BANK = flags.DEFINE_string("bank", "runs/explore/cache_bank", "Cache bank from explore_caches.")
_PLAN = flags.DEFINE_string(
    "plan", None, "A saved plan (plan_caches.py's WORKDIR/plan): its caches too."
)
_TRIALS = flags.DEFINE_integer("trials", 3, "Measurement trials of the routers.")
_OUT = flags.DEFINE_string("out", "runs/bench_lookup.json", "Where to write the JSON.")


def main(argv: list[str]) -> None:
    del argv
    plan = plan_deployment(*load_plan(_PLAN.value)) if _PLAN.value else None
    result = benchmark_lookups(
        load_base_model(_CHECKPOINT.value), load_bank(_BANK.value), plan, _TRIALS.value
    )
    print_lookup_benchmark(result)
    with open(_OUT.value, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    cli.run(main)
