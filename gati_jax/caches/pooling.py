"""Average pooling of NHWC maps as the caches read them: cheap inside a compiled program.

Two poolings feed every cache: the recording's ``pool_map`` (non-overlapping blocks of
``factor``, so the stored activations fit in memory) and the predictor's adaptive pooling to
a ``grid`` (PyTorch's bins, which overlap where the size is not a multiple of the grid).

Both are written as slices and sums rather than reshapes into blocks or products with pooling
matrices, because a served lookup pays for every operation XLA emits at batch 1 on the CPU:
on the shipped ResNet-18's position-0 map (28x28x16, factor 2, grid 4), measured as a chain
of 20 lookups inside one program, the block reshape and the two matrix products cost 25 us a
lookup, these slices 10 us; the whole lookup went from 30 to 15 us (the two forms side by side,
``bench_lookup.py`` measures every position). ``pooled_grid`` goes from the raw
map to the grid in one step: a bin of the ``factor``-pooled map is a bin of the raw one,
``factor`` times larger, since every block averages the same number of raw values.
``pooled_grid_by_matrices`` is the form the caches used before: the tests' reference and the
lookup benchmark's comparison (``scripts/bench_lookup.py``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def adaptive_bins(size: int, grid: int) -> tuple[tuple[int, int], ...]:
    """PyTorch's adaptive-average-pool bins of ``size`` into ``grid``: [start, stop) each."""
    return tuple(((i * size) // grid, -(-((i + 1) * size) // grid)) for i in range(grid))


def adaptive_pool_matrix(size: int, grid: int) -> np.ndarray:
    """(grid, size) averaging weights with PyTorch's adaptive-average-pool bins."""
    matrix = np.zeros((grid, size), np.float32)
    for i, (start, stop) in enumerate(adaptive_bins(size, grid)):
        matrix[i, start:stop] = 1.0 / (stop - start)
    return matrix


def _pool_axis(x: jax.Array, axis: int, bins: tuple[tuple[int, int], ...]) -> jax.Array:
    """Averages ``x`` over each [start, stop) bin of one axis, the bins stacked in its place."""
    size, width = x.shape[axis], bins[0][1] - bins[0][0]
    if len(bins) == 1 and bins[0] == (0, size):
        return jnp.mean(x, axis=axis, keepdims=True)
    if width * len(bins) == size and all(
        b == (i * width, (i + 1) * width) for i, b in enumerate(bins)
    ):
        # Equal blocks side by side: the sum of ``width`` strided slices, one elementwise loop.
        total = sum(lax.slice_in_dim(x, t, size, stride=width, axis=axis) for t in range(width))
        return total / width
    return jnp.stack(
        [jnp.mean(lax.slice_in_dim(x, start, stop, axis=axis), axis=axis) for start, stop in bins],
        axis=axis,
    )


def _pool(
    x: jax.Array, rows: tuple[tuple[int, int], ...], cols: tuple[tuple[int, int], ...]
) -> jax.Array:
    if len(rows) == len(cols) == 1 and rows[0] == (0, x.shape[1]) and cols[0] == (0, x.shape[2]):
        return jnp.mean(x, axis=(1, 2), keepdims=True)  # one reduction, not two
    return _pool_axis(_pool_axis(x, 1, rows), 2, cols)


def _blocks(size: int, factor: int) -> tuple[tuple[int, int], ...]:
    return tuple((i * factor, (i + 1) * factor) for i in range(size // factor))


def pool_map(x: jax.Array, factor: int) -> jax.Array:
    """Average-pools an NHWC map by ``factor`` (identity for 1 or for vector activations)."""
    if factor == 1 or x.ndim != 4:
        return x
    _, h, w, _ = x.shape
    if h % factor or w % factor:
        raise ValueError(
            f"a {h}x{w} map cannot be pooled by {factor}: the recording chooses "
            f"factors that divide both sides"
        )
    return _pool(x, _blocks(h, factor), _blocks(w, factor))


def adaptive_avg_pool(x: jax.Array, grid: int) -> jax.Array:
    """Averages an NHWC map down to (N, grid, grid, C) for any H, W >= grid."""
    if x.shape[1] == x.shape[2] == grid:
        return x  # the identity, not a pooling by bins of one
    return _pool(x, adaptive_bins(x.shape[1], grid), adaptive_bins(x.shape[2], grid))


def pooled_grid(x: jax.Array, factor: int, grid: int) -> jax.Array:
    """``adaptive_avg_pool(pool_map(x, factor), grid)`` in one step, from the raw map."""
    if factor == 1:
        return adaptive_avg_pool(x, grid)
    _, h, w, _ = x.shape
    if h % factor or w % factor or h // factor == w // factor == grid:
        return pool_map(x, factor)  # the error for a factor that does not divide, or the grid

    def raw(size: int) -> tuple[tuple[int, int], ...]:
        return tuple((factor * a, factor * b) for a, b in adaptive_bins(size // factor, grid))

    return _pool(x, raw(h), raw(w))


def pool_map_by_blocks(x: jax.Array, factor: int) -> jax.Array:
    """What ``pool_map`` computes, as a reshape into blocks and a mean over them."""
    if factor == 1 or x.ndim != 4:
        return x
    n, h, w, c = x.shape
    return x.reshape(n, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


def pooled_grid_by_matrices(x: jax.Array, factor: int, grid: int) -> jax.Array:
    """What ``pooled_grid`` computes, as a block reshape and two pooling-matrix products."""
    x = pool_map_by_blocks(x, factor)
    if x.shape[1] == x.shape[2] == grid:
        return x
    return jnp.einsum(
        "ih,jw,nhwc->nijc",
        adaptive_pool_matrix(x.shape[1], grid),
        adaptive_pool_matrix(x.shape[2], grid),
        x,
    )


# name -> (pool_map, pooled_grid) in that form
POOLINGS = {
    "slices": (pool_map, pooled_grid),
    "matrices": (pool_map_by_blocks, pooled_grid_by_matrices),
}
