"""Router benchmark on an explored bank: ``python scripts/bench_router.py --bank DIR``.

Prints the figures and writes them as JSON (``--out``) and a plot beside it.
"""

import json

from absl import flags

from gati_jax import cli
from gati_jax.experiments.plots import plot_router_benchmark
from gati_jax.experiments.router_report import run_router_benchmark

_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", "checkpoints/fashion_mnist_resnet18", "Exported base model."
)
_BANK = flags.DEFINE_string("bank", "runs/explore/cache_bank", "Cache bank from explore_caches.")
_OUT = flags.DEFINE_string("out", "runs/bench_router.json", "Where to write the JSON.")
_SPARSE = flags.DEFINE_list(
    "sparse_positions", ["3", "5", "7"], "A smaller deployment for the overhead figure."
)
_PLAN = flags.DEFINE_string(
    "plan",
    None,
    "A saved plan (plan_caches.py's WORKDIR/plan): also report the overhead of exactly its caches.",
)
_REPEATS = flags.DEFINE_integer("repeats", 200, "Timed repeats per measurement.")
_STREAM = flags.DEFINE_integer("stream", 300, "Test images in the batch-1 stream.")


def main(argv: list[str]) -> None:
    del argv
    result = run_router_benchmark(
        _CHECKPOINT.value,
        _BANK.value,
        tuple(int(p) for p in _SPARSE.value),
        _REPEATS.value,
        _STREAM.value,
        _PLAN.value,
    )
    with open(_OUT.value, "w") as f:
        json.dump(result, f, indent=1)
    plot = _OUT.value.removesuffix(".json") + ".png"
    plot_router_benchmark(result, plot)
    print(f"wrote {_OUT.value} and {plot}")


if __name__ == "__main__":
    cli.run(main)
