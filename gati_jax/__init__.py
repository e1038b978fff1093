"""gati_jax: fast deep-network inference with learned caches and compiled early exit.

The public API, importable from the package itself (each name is loaded on first use, so
``import gati_jax`` stays cheap)::

    import gati_jax
    system = gati_jax.load_system("checkpoints/fashion_mnist_resnet18")
    result = system.route(images)      # answers, exit positions, hits
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public name -> the module that defines it.
_EXPORTS = {
    "load_system": "gati_jax.system",
    "ServingSystem": "gati_jax.system",
    "Router": "gati_jax.runtime.router",
    "RouteResult": "gati_jax.runtime.router",
    "Deployment": "gati_jax.runtime.deployment",
    "BaseModel": "gati_jax.inference",
    "load_base_model": "gati_jax.training.checkpointing",
    "base_config": "gati_jax.config",
    "validate_config": "gati_jax.config",
    "ConfigError": "gati_jax.config_checks",
    "StagedNetwork": "gati_jax.models.staged",
    "build_network": "gati_jax.models.registry",
    "register_network": "gati_jax.models.registry",
    "available_networks": "gati_jax.models.registry",
    "register_dataset": "gati_jax.data.registry",
    "available_datasets": "gati_jax.data.registry",
    "load_dataset": "gati_jax.data.load",
    "register_policy": "gati_jax.runtime.policies",
    "available_policies": "gati_jax.runtime.policies",
    "register_workload": "gati_jax.data.workloads",
    "available_workloads": "gati_jax.data.workloads",
    "make_workload": "gati_jax.data.workloads",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'gati_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
