"""What every config section's validation shares: the error type and the checks that name keys;
and the flattening that compares two stored configs key by key (kept here, free of jax, so
light tools such as the run summary can use it)."""

from __future__ import annotations

import math
from typing import Any

import ml_collections


class ConfigError(ValueError):
    """A config has an unknown key or an invalid value; the message names the key."""


def require(condition: bool, key: str, value: Any, expectation: str) -> None:
    """Raises a ConfigError naming ``key`` and ``value`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"invalid config value {key}={value!r}: {expectation}")


def require_at_least(
    section: ml_collections.ConfigDict, prefix: str, keys: tuple[str, ...], low: int
) -> None:
    """Each of ``keys`` in ``section`` is an integer >= ``low``."""
    for key in keys:
        require(int(section[key]) >= low, f"{prefix}.{key}", section[key], f">= {low}")


def require_finite(tree: Any, prefix: str = "") -> None:
    """Every number in a config (nested sections and tuples included) is finite.

    A NaN or infinite learning rate, bound or rate trains or plans without error and yields
    nonsense, so no section accepts one.
    """
    if isinstance(tree, (ml_collections.ConfigDict, dict)):
        for key in tree.keys():
            require_finite(tree[key], f"{prefix}{key}" if not prefix else f"{prefix}.{key}")
    elif isinstance(tree, (list, tuple)):
        for index, item in enumerate(tree):
            require_finite(item, f"{prefix}[{index}]")
    elif isinstance(tree, float) and not math.isfinite(tree):
        raise ConfigError(f"invalid config value {prefix}={tree!r}: must be a finite number")


def flat_config(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A config as config.json stores it (nested dicts), as one dict of dotted keys."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
