"""Host-side checks of request batches, so bad input fails with a message, not a trace."""

from __future__ import annotations

import numpy as np


def check_images(images: np.ndarray, image_shape: tuple[int, int, int]) -> np.ndarray:
    """Validates a batch of raw images (N, H, W, C), uint8 or float in [0, 255]; returns it."""
    if not hasattr(images, "shape") or not hasattr(images, "dtype"):
        raise TypeError(f"images must be an array, got {type(images).__name__}")
    images = np.asarray(images)
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(image_shape):
        raise ValueError(f"images must have shape (batch, {', '.join(map(str, image_shape))}), "
                         f"got {images.shape}")
    if images.shape[0] == 0:
        raise ValueError("empty batch: at least one image is needed")
    if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
        raise TypeError(f"images must be uint8 or floating point, got dtype {images.dtype}")
    if np.issubdtype(images.dtype, np.floating) and not np.all(np.isfinite(images)):
        bad = int(np.count_nonzero(~np.isfinite(images).reshape(len(images), -1).all(axis=1)))
        raise ValueError(f"images contain NaN or Inf values ({bad} of {len(images)} images)")
    return images
