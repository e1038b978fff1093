"""Registry of raw data set loaders, chosen by the config's `data.name`."""

from __future__ import annotations

from collections.abc import Callable

import ml_collections

from gati_jax.data.splits import Split
from gati_jax.registry import Registry

# A loader maps the `data` config section to (raw train split, test split, num_classes).
Loader = Callable[[ml_collections.ConfigDict], tuple[Split, Split, int]]

_LOADERS: Registry[Loader] = Registry("data set", "data.name")
register_dataset = _LOADERS.register
available_datasets = _LOADERS.names
get_loader = _LOADERS.get
