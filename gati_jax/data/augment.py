"""Jit-friendly pixel normalisation and batch augmentation on NHWC arrays."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def normalize(
    images: jax.Array | np.ndarray, mean: jax.Array | np.ndarray, std: jax.Array | np.ndarray
) -> jax.Array:
    """Maps pixels in [0, 255] (uint8 or float) to float32 (x / 255 - mean) / std per channel."""
    x = jnp.asarray(images, jnp.float32) / 255.0
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def _random_crop(rng: jax.Array, images: jax.Array, padding: int) -> jax.Array:
    """Zero-pads H and W by `padding` and crops each image back at its own random offset."""
    n, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(rng, (n, 2), 0, 2 * padding + 1)

    def crop(image: jax.Array, offset: jax.Array) -> jax.Array:
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

    return jax.vmap(crop)(padded, offsets)


def augment(rng: jax.Array, images: jax.Array, flip: bool, crop_padding: int) -> jax.Array:
    """Random horizontal flip and padded random crop, drawn independently per image.

    `flip` and `crop_padding` are Python values fixed at trace time (static under jit).
    """
    flip_rng, crop_rng = jax.random.split(rng)
    images = jnp.asarray(images)
    if flip:
        flags = jax.random.bernoulli(flip_rng, 0.5, (images.shape[0],))
        images = jnp.where(flags[:, None, None, None], images[:, :, ::-1, :], images)
    if crop_padding > 0:
        images = _random_crop(crop_rng, images, crop_padding)
    return images
