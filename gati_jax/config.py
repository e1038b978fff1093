"""The experiment config schema, assembled from the sections each package declares.

Config files (``configs/*.py``) start from :func:`base_config` and change a few fields, the
way Flax examples start from ``configs/default.py``. Each section's fields, defaults and
validation live beside the code it configures (``gati_jax/<package>/config.py``); this module
only puts them together. The base is locked, so a typo in a config file fails at once;
:func:`validate_config` also catches unknown keys in configs built some other way, values out
of range and non-finite numbers, always naming the offending key.
"""

from __future__ import annotations

import ml_collections

from gati_jax.caches.config import caches_config, validate_caches
from gati_jax.config_checks import ConfigError, require_at_least, require_finite
from gati_jax.data.config import (
    augment_config,
    data_config,
    validate_augment,
    validate_data,
    validate_workload,
    workload_config,
)
from gati_jax.models.config import model_config, validate_model
from gati_jax.online.config import online_config, validate_online
from gati_jax.planner.config import planner_config, validate_planner
from gati_jax.runtime.config import policy_config, validate_policy
from gati_jax.serving.config import (
    benchmark_config,
    server_config,
    serving_config,
    validate_benchmark,
    validate_server,
    validate_serving,
)
from gati_jax.training.config import train_config, validate_train

__all__ = ["ConfigError", "base_config", "mesh_config", "validate_config"]


def mesh_config() -> ml_collections.ConfigDict:
    """The ``mesh`` section: the devices used, data-parallel (gati_jax/sharding.py)."""
    c = ml_collections.ConfigDict()
    # Devices to use (0: every local device, or every device of every host), data-parallel;
    # model_parallel of them also split exploration's candidate groups.
    c.devices = 0
    c.model_parallel = 1
    # One process per host: jax.distributed.initialize() before anything else.
    c.multihost = False
    return c


# Section name -> (builder, validator); the order is the order of the schema.
_SECTIONS = {
    "data": (data_config, validate_data),
    "augment": (augment_config, validate_augment),
    "model": (model_config, validate_model),
    "train": (train_config, validate_train),
    "caches": (caches_config, validate_caches),
    "policy": (policy_config, None),  # needs caches.targets: validated below
    "planner": (planner_config, validate_planner),
    "workload": (workload_config, validate_workload),
    "serving": (serving_config, validate_serving),
    "online": (online_config, validate_online),
    "mesh": (
        mesh_config,
        lambda m: (
            require_at_least(m, "mesh", ("devices",), 0),
            require_at_least(m, "mesh", ("model_parallel",), 1),
        ),
    ),
    "benchmark": (benchmark_config, validate_benchmark),
    "server": (server_config, validate_server),
}


def base_config() -> ml_collections.ConfigDict:
    """Returns the full, locked config schema with defaults (Fashion-MNIST, narrow ResNet-18)."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    for name, (builder, _) in _SECTIONS.items():
        config[name] = builder()
    config.lock()
    return config


def _check_keys(
    config: ml_collections.ConfigDict, schema: ml_collections.ConfigDict, prefix: str
) -> None:
    for key in config.keys():
        path = f"{prefix}{key}"
        if key not in schema:
            raise ConfigError(
                f"unknown config key '{path}'; known keys here: {sorted(schema.keys())}"
            )
        if isinstance(schema[key], ml_collections.ConfigDict):
            if not isinstance(config[key], ml_collections.ConfigDict):
                raise ConfigError(f"config key '{path}' must be a section, got {config[key]!r}")
            _check_keys(config[key], schema[key], path + ".")


def validate_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Checks keys against the schema and values against their ranges; returns the config."""
    _check_keys(config, base_config(), "")
    require_finite(config)
    for name, (_, validator) in _SECTIONS.items():
        if validator is not None:
            validator(config[name])
    validate_policy(config.policy, tuple(config.caches.targets))
    return config
