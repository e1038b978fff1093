"""Packs a pytree of cache parameters into one flat array per dtype, and back.

Each array argument of a compiled call costs a dispatch of its own (measured here: 32 cache
parameter leaves added 0.1 ms to a 1.2 ms batch-1 request); packed, a deployment's caches
cost one or two. Unpacking is slicing and reshaping inside the compiled program: free.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Packing:
    """The layout of one pytree structure: where each leaf sits in its dtype's flat array."""

    treedef: Any
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]                       # per leaf
    groups: tuple[str, ...]                       # the flat arrays' dtypes, in order
    offsets: tuple[tuple[int, int], ...]          # per leaf: (group index, start)

    @classmethod
    def of(cls, tree: Any) -> "Packing":
        """The packing of ``tree``'s structure, shapes and dtypes."""
        leaves, treedef = jax.tree.flatten(tree)
        shapes = tuple(tuple(np.shape(x)) for x in leaves)
        dtypes = tuple(str(np.asarray(x).dtype) if not hasattr(x, "dtype") else str(x.dtype)
                       for x in leaves)
        groups = tuple(dict.fromkeys(dtypes))
        sizes = {g: 0 for g in groups}
        offsets = []
        for shape, dtype in zip(shapes, dtypes):
            offsets.append((groups.index(dtype), sizes[dtype]))
            sizes[dtype] += int(np.prod(shape, dtype=np.int64))
        return cls(treedef, shapes, dtypes, groups, tuple(offsets))

    def pack(self, tree: Any) -> tuple[jax.Array, ...]:
        """One flat device array per dtype (built on the host, transferred once)."""
        leaves = jax.tree.leaves(tree)
        if len(leaves) != len(self.shapes):
            raise ValueError(f"expected {len(self.shapes)} parameter arrays, got {len(leaves)}")
        parts: list[list[np.ndarray]] = [[] for _ in self.groups]
        for leaf, shape, dtype, (group, _) in zip(leaves, self.shapes, self.dtypes,
                                                   self.offsets):
            leaf = np.asarray(leaf)
            if leaf.shape != shape or str(leaf.dtype) != dtype:
                raise ValueError(f"parameter of shape {leaf.shape} {leaf.dtype} where "
                                 f"{shape} {dtype} was deployed")
            parts[group].append(leaf.reshape(-1))
        return tuple(jax.device_put(np.concatenate(p) if p else np.zeros(0, g))
                     for p, g in zip(parts, self.groups))

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
            leaves.append(jnp.reshape(flats[group][start:start + size], shape))
        return leaves
