"""Data sets as in-memory numpy splits, chosen by name, plus jit-friendly preprocessing."""

# The loader modules register themselves on import; the imports are what make them available.
from gati_jax.data import fashion_mnist, synthetic, tfds_source  # noqa: F401
from gati_jax.data.augment import augment, normalize
from gati_jax.data.errors import DataNotFoundError
from gati_jax.data.load import load_dataset
from gati_jax.data.registry import available_datasets, register_dataset
from gati_jax.data.splits import Dataset, Split, batches

__all__ = [
    "DataNotFoundError",
    "Dataset",
    "Split",
    "augment",
    "available_datasets",
    "batches",
    "load_dataset",
    "normalize",
    "register_dataset",
]
