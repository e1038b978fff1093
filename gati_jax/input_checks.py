"""Host-side checks of request batches, so bad input fails with a message, not a trace."""

from __future__ import annotations

import numpy as np

# The values a base network reads: raw pixels, uint8 or float, which gati_jax.data.normalize
# maps to (x / 255 - mean) / std. Every data set here is stored as uint8 images, so this is
# the range every base network was trained on (recorded with each saved base network).
PIXEL_RANGE = (0.0, 255.0)


def check_images(
    images: np.ndarray,
    image_shape: tuple[int, int, int],
    value_range: tuple[float, float] | None = None,
    clip: bool = False,
) -> np.ndarray:
    """Validates a batch of raw images (N, H, W, C), uint8 or float; returns it.

    Floating-point images are returned as float32 (the precision the network computes in),
    checked after the cast, so float64 values that overflow float32 are caught as Inf. With
    ``value_range`` (low, high), values outside it are an error, or are clipped into it when
    ``clip`` is set.
    """
    if not hasattr(images, "shape") or not hasattr(images, "dtype"):
        raise TypeError(f"images must be an array, got {type(images).__name__}")
    images = np.asarray(images)
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(image_shape):
        raise ValueError(
            f"images must have shape (batch, {', '.join(map(str, image_shape))}), "
            f"got {images.shape}"
        )
    if images.shape[0] == 0:
        raise ValueError("empty batch: at least one image is needed")
    if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
        raise TypeError(f"images must be uint8 or floating point, got dtype {images.dtype}")
    if np.issubdtype(images.dtype, np.floating):
        given = images.dtype
        with np.errstate(over="ignore"):
            images = images.astype(np.float32, copy=False)
        if not np.all(np.isfinite(images)):
            bad = int(np.count_nonzero(~np.isfinite(images).reshape(len(images), -1).all(axis=1)))
            why = (
                f" after the cast from {given} to float32 (values beyond float32's range "
                "become Inf)"
                if given.itemsize > 4
                else ""
            )
            raise ValueError(
                f"images contain NaN or Inf values ({bad} of {len(images)} images){why}"
            )
    if value_range is not None:
        images = _check_range(images, value_range, clip)
    return images


def _check_range(images: np.ndarray, value_range: tuple[float, float], clip: bool) -> np.ndarray:
    low, high = float(value_range[0]), float(value_range[1])
    if images.dtype == np.uint8 and low <= 0 and high >= 255:
        return images  # every uint8 value lies in the range
    smallest, largest = float(images.min()), float(images.max())
    if low <= smallest and largest <= high:
        return images
    if clip:
        return np.clip(images, low, high).astype(images.dtype, copy=False)
    flat = images.reshape(len(images), -1)
    bad = int(np.count_nonzero(((flat < low) | (flat > high)).any(axis=1)))
    raise ValueError(
        f"images hold values outside [{low:g}, {high:g}], the range the base network was "
        f"trained on (raw pixel values): min {smallest:g}, max {largest:g} ({bad} of "
        f"{len(images)} images); send raw pixels, or clip them (clip_inputs=True)"
    )
