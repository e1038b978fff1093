"""The side-by-side benchmark on the shipped Fashion-MNIST ResNet-18: every policy planned for
eps = 0.01, on uniform, temporal and shift streams of test requests, open-loop arrivals served
as they queue (the defaults); plus the eps sweep of the agreement-vs-speedup plot."""

from gati_jax.config import base_config


def get_config():
    """Returns the benchmark config."""
    config = base_config()
    config.planner.sweep_eps = (0.005, 0.02, 0.05)
    config.workload.length = 1000
    config.benchmark.rounds = 5
    return config
