"""The side-by-side benchmark on the shipped Fashion-MNIST ResNet-18: every policy, planned for
eps = 0.01, on uniform and temporal streams of 2000 test requests, batch-1 open-loop serving."""

from gati_jax.config import base_config


def get_config():
    """Returns the benchmark config."""
    config = base_config()
    config.workload.length = 2000
    config.workload.rate = 200.0
    config.serving.max_group = 1
    config.serving.max_wait_ms = 0.0
    config.benchmark.rounds = 3
    return config
