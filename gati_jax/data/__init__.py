"""Data sets as in-memory numpy splits, chosen by name, plus jit-friendly preprocessing."""

# The loader modules register themselves on import; the imports are what make them available.
from gati_jax.data import fashion_mnist, image_folder, npz, synthetic, tfds_source  # noqa: F401
from gati_jax.data.augment import augment, normalize
from gati_jax.data.errors import DataFormatError, DataNotFoundError
from gati_jax.data.load import load_dataset, resolved_validation_size
from gati_jax.data.registry import available_datasets, register_dataset
from gati_jax.data.splits import Dataset, Split, batches

__all__ = [
    "DataFormatError",
    "DataNotFoundError",
    "Dataset",
    "Split",
    "augment",
    "available_datasets",
    "batches",
    "load_dataset",
    "normalize",
    "resolved_validation_size",
    "register_dataset",
]
