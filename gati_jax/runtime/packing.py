"""Packs a pytree of cache parameters into a few flat arrays, and back.

Each array argument of a compiled call costs a dispatch of its own (measured here: 32 cache
parameter leaves added 0.1 ms to a 1.2 ms batch-1 request), so the small leaves share one flat
array per dtype. A slice of an argument is a copy inside the compiled program, though (XLA's
CPU buffers cannot alias part of an argument): the copies of a predictor's first dense kernel
(128, 256 and 512 KB on the shipped ResNet-18's three-cache plan) took 5, 19 and 29 us a
request, about as long as a whole lookup. So leaves of at least ``OWN_ARRAY_MIN`` elements
travel as arrays of their own and are used unsliced: the router's overhead over the plain
network fell from +15-19% to +11-15% (side by side, two processes of three rounds, each
program run ten times in a row as a server runs one program).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

OWN_ARRAY_MIN = 4096  # elements; a leaf this large is a flat array of its own


@dataclasses.dataclass(frozen=True)
class Packing:
    """The layout of one pytree structure: where each leaf sits in which flat array."""

    treedef: Any
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]  # per leaf
    groups: tuple[str, ...]  # each flat array's dtype, in order
    offsets: tuple[tuple[int, int], ...]  # per leaf: (group index, start)

    @classmethod
    def of(cls, tree: Any, own_array_min: int = OWN_ARRAY_MIN) -> Packing:
        """The packing of ``tree``'s structure, shapes and dtypes: one shared flat array per
        dtype of the leaves under ``own_array_min`` elements, then one per larger leaf."""
        leaves, treedef = jax.tree.flatten(tree)
        shapes = tuple(tuple(np.shape(x)) for x in leaves)
        dtypes = tuple(
            str(np.asarray(x).dtype) if not hasattr(x, "dtype") else str(x.dtype) for x in leaves
        )
        sizes = [int(np.prod(shape, dtype=np.int64)) for shape in shapes]
        shared = tuple(dict.fromkeys(d for d, n in zip(dtypes, sizes) if n < own_array_min))
        groups, fill, offsets = list(shared), [0] * len(shared), []  # fill: per shared array
        for dtype, size in zip(dtypes, sizes):
            if size < own_array_min:
                group = shared.index(dtype)
                offsets.append((group, fill[group]))
                fill[group] += size
            else:
                offsets.append((len(groups), 0))
                groups.append(dtype)
        return cls(treedef, shapes, dtypes, tuple(groups), tuple(offsets))

    def pack(self, tree: Any) -> tuple[jax.Array, ...]:
        """The flat device arrays (built on the host, transferred once)."""
        leaves = jax.tree.leaves(tree)
        if len(leaves) != len(self.shapes):
            raise ValueError(f"expected {len(self.shapes)} parameter arrays, got {len(leaves)}")
        parts: list[list[np.ndarray]] = [[] for _ in self.groups]
        for leaf, shape, dtype, (group, _) in zip(leaves, self.shapes, self.dtypes, self.offsets):
            leaf = np.asarray(leaf)
            if leaf.shape != shape or str(leaf.dtype) != dtype:
                raise ValueError(
                    f"parameter of shape {leaf.shape} {leaf.dtype} where "
                    f"{shape} {dtype} was deployed"
                )
            parts[group].append(leaf.reshape(-1))
        return tuple(
            jax.device_put(np.concatenate(p) if p else np.zeros(0, g))
            for p, g in zip(parts, self.groups)
        )

    def unpack(self, flats: tuple[jax.Array, ...]) -> Any:
        """The pytree back, inside or outside a compiled program."""
        return jax.tree.unflatten(self.treedef, self._leaves(flats, 0, len(self.shapes)))

    def unpack_item(self, flats: tuple[jax.Array, ...], k: int) -> Any:
        """Item ``k`` of a packed sequence (one cache's parameters), slicing only its leaves.

        Inside a compiled program the slices are copies; taken where the item is used (in
        the branch that runs its lookup) they run only for requests that reach it: unpacking
        every cache up front cost an exit at the first of nine positions 0.17 ms of 0.77.
        """
        children = self.treedef.children()
        start = sum(child.num_leaves for child in children[:k])
        leaves = self._leaves(flats, start, start + children[k].num_leaves)
        return jax.tree.unflatten(children[k], leaves)

    def _leaves(self, flats: tuple[jax.Array, ...], first: int, stop: int) -> list[jax.Array]:
        leaves = []
        for shape, (group, start) in zip(self.shapes[first:stop], self.offsets[first:stop]):
            size = int(np.prod(shape, dtype=np.int64))
            # A leaf alone in its array is the whole array: jnp drops the slice.
            leaves.append(jnp.reshape(flats[group][start : start + size], shape))
        return leaves
