"""Registry of raw data set loaders, chosen by the config's `data.name`."""

from __future__ import annotations

from typing import Callable

import ml_collections

from gati_jax.data.splits import Split

# A loader maps the `data` config section to (raw train split, test split, num_classes).
Loader = Callable[[ml_collections.ConfigDict], tuple[Split, Split, int]]

_LOADERS: dict[str, Loader] = {}


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Decorator registering a raw-split loader under `name`."""

    def decorator(loader: Loader) -> Loader:
        if name in _LOADERS:
            raise ValueError(f"data set {name!r} is already registered")
        _LOADERS[name] = loader
        return loader

    return decorator


def available_datasets() -> tuple[str, ...]:
    """Names of all registered data sets, sorted."""
    return tuple(sorted(_LOADERS))


def get_loader(name: str) -> Loader:
    """The loader registered under `name`; a ValueError listing the known names otherwise."""
    if name not in _LOADERS:
        raise ValueError(
            f"unknown data set {name!r} (data.name); available: "
            f"{', '.join(available_datasets())}")
    return _LOADERS[name]
