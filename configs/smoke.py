"""The main job in about a minute: the shipped synthetic-data MLP (used by the tests)."""

import importlib.util
from pathlib import Path


def get_config():
    """Returns the smoke config: configs/benchmark_smoke.py's settings."""
    spec = importlib.util.spec_from_file_location(
        "benchmark_smoke", Path(__file__).with_name("benchmark_smoke.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()
