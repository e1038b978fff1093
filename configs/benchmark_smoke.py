"""A CI-sized benchmark (a few minutes here): the shipped synthetic-data MLP, a small design
space, short streams, two rounds. Explores first when WORKDIR has no cache bank."""

import importlib.util
from pathlib import Path


def _synthetic_mlp():
    # Config files are loaded by path, not as a package: load the sibling the same way.
    spec = importlib.util.spec_from_file_location(
        "synthetic_mlp", Path(__file__).with_name("synthetic_mlp.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config():
    """Returns the smoke benchmark config."""
    config = _synthetic_mlp().get_config()
    config.caches.checkpoint = "checkpoints/synthetic_mlp"
    config.caches.variants = ("fc-d1", "fc-d1-h32")
    config.caches.seeds = 1
    config.caches.learning_rates = (1e-2,)
    config.caches.predictor_examples = 2000
    config.caches.test_examples = 1000
    config.caches.epochs = 4
    config.caches.selector_epochs = 10
    config.caches.latency_repeats = 10
    config.planner.grid = 16
    config.planner.latency_repeats = 30
    config.planner.check_requests = 100
    # 250 tuning requests certify at best eps 0.0107 at 95% (gati_jax/planner/feasibility.py).
    config.planner.eps = 0.02
    config.planner.sweep_eps = (0.05,)
    config.policy.knn_capacity = 500
    config.workload.length = 300
    config.serving.max_group = 1
    config.serving.max_wait_ms = 0.0
    config.benchmark.rounds = 3
    return config
