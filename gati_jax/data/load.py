"""Builds a training-ready Dataset from the `data` config section."""

from __future__ import annotations

import ml_collections
from absl import logging

from gati_jax.config_checks import ConfigError
from gati_jax.data.registry import get_loader
from gati_jax.data.splits import (
    Dataset,
    Split,
    carve_validation,
    channel_stats,
    subset_indices,
    validation_count,
)

# Streams of data.split_seed (the validation carve uses the seed alone, as it always did;
# splits.TEST_CARVE draws the test split of a source without one).
_TRAIN_SUBSET, _TEST_SUBSET = 1, 2


def _subset(split: Split, size: int, seed: int, stream: int, key: str) -> Split:
    if size <= 0 or size == len(split):
        return split
    if size > len(split):
        raise ConfigError(
            f"invalid config value data.{key}={size}: the split has only "
            f"{len(split)} examples (0: all of them)"
        )
    return split.take(subset_indices(len(split), size, seed, stream))


def resolved_validation_size(data_config: ml_collections.ConfigDict, num_train: int) -> int:
    """The validation examples ``data_config`` carves from a train split of ``num_train``."""
    if int(data_config.validation_size) < 0:
        raise ConfigError(
            f"invalid config value data.validation_size="
            f"{data_config.validation_size}: >= 0 (0: validation_fraction of "
            "the train split)"
        )
    return validation_count(
        num_train,
        int(data_config.validation_size),
        float(data_config.validation_fraction),
        int(data_config.validation_min),
        int(data_config.validation_max),
    )


def load_dataset(data_config: ml_collections.ConfigDict) -> Dataset:
    """Loads data.name's raw splits, takes the subsets asked for, carves validation from
    train and computes train statistics."""
    raw_train, test, num_classes = get_loader(data_config.name)(data_config)
    seed = int(data_config.split_seed)
    raw_train = _subset(
        raw_train, int(data_config.train_subset), seed, _TRAIN_SUBSET, "train_subset"
    )
    test = _subset(test, int(data_config.test_subset), seed, _TEST_SUBSET, "test_subset")
    size = resolved_validation_size(data_config, len(raw_train))
    if not 0 < size < len(raw_train):
        raise ConfigError(
            f"invalid config value data.validation_size={data_config.validation_size}: "
            f"{size} validation examples cannot be carved from a train split of "
            f"{len(raw_train)} (set it below {len(raw_train)}, or 0 for "
            "data.validation_fraction of the split)"
        )
    if int(data_config.validation_size) == 0:
        logging.info(
            "validation: %d of the %d train examples (data.validation_fraction=%g, "
            "clipped to [%d, %d] and to half the split)",
            size,
            len(raw_train),
            float(data_config.validation_fraction),
            int(data_config.validation_min),
            int(data_config.validation_max),
        )
    train, validation = carve_validation(raw_train, size, seed)
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
