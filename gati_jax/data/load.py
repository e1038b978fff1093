"""Builds a training-ready Dataset from the `data` config section."""

from __future__ import annotations

import ml_collections

from gati_jax.data.registry import get_loader
from gati_jax.data.splits import Dataset, carve_validation, channel_stats


def load_dataset(data_config: ml_collections.ConfigDict) -> Dataset:
    """Loads data.name's raw splits, carves validation from train and computes train statistics."""
    raw_train, test, num_classes = get_loader(data_config.name)(data_config)
    train, validation = carve_validation(
        raw_train, int(data_config.validation_size), int(data_config.split_seed)
    )
    for split_name, split in (("train", raw_train), ("test", test)):
        if split.images.shape[1:] != raw_train.images.shape[1:]:
            raise ValueError(
                f"{data_config.name}: {split_name} images are "
                f"{split.images.shape[1:]}, train images "
                f"{raw_train.images.shape[1:]}"
            )
        if split.labels.min() < 0 or split.labels.max() >= num_classes:
            raise ValueError(f"{data_config.name}: {split_name} labels outside [0, {num_classes})")
    # Train only: validation feeds the caches later and must stay unseen by the base network.
    mean, std = channel_stats(train.images)
    image_shape = tuple(int(d) for d in raw_train.images.shape[1:])
    return Dataset(
        name=str(data_config.name),
        num_classes=int(num_classes),
        image_shape=image_shape,
        train=train,
        validation=validation,
        test=test,
        mean=mean,
        std=std,
    )
