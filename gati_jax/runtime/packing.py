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

Leaves may be split into *parts* (a function of each leaf's key path) that never share a flat
array, and :meth:`Packing.pack` reuses the device arrays of a previous packing whose leaves are
all unchanged: a new value of one part (the online learner's recency memory) then packs and
sends that part's arrays alone, while the compiled program still takes every array.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

OWN_ARRAY_MIN = 4096  # elements; a leaf this large is a flat array of its own


def _dtype(x: Any) -> str:
    """A leaf's dtype name, read without copying a device array to the host."""
    return str(x.dtype) if hasattr(x, "dtype") else str(np.asarray(x).dtype)


@dataclasses.dataclass(frozen=True)
class Packing:
    """The layout of one pytree structure: where each leaf sits in which flat array."""

    treedef: Any
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]  # per leaf
    groups: tuple[str, ...]  # each flat array's dtype, in order
    offsets: tuple[tuple[int, int], ...]  # per leaf: (group index, start)

    @classmethod
    def of(
        cls,
        tree: Any,
        own_array_min: int = OWN_ARRAY_MIN,
        part: Callable[[tuple[Any, ...]], Hashable] | None = None,
    ) -> Packing:
        """The packing of ``tree``'s structure, shapes and dtypes: one shared flat array per
        part and dtype of the leaves under ``own_array_min`` elements, then one per larger leaf
        (``part`` maps a leaf's key path to its part; None: one part)."""
        paths, treedef = jax.tree_util.tree_flatten_with_path(tree)
        leaves = [leaf for _, leaf in paths]
        parts = [None if part is None else part(path) for path, _ in paths]
        shapes = tuple(tuple(np.shape(x)) for x in leaves)
        dtypes = tuple(_dtype(x) for x in leaves)
        sizes = [int(np.prod(shape, dtype=np.int64)) for shape in shapes]
        # Keyed by (part, dtype): leaves of two parts never share an array, so one part's
        # new values leave the other parts' arrays valid (see pack's ``previous``).
        shared = tuple(
            dict.fromkeys((p, d) for p, d, n in zip(parts, dtypes, sizes) if n < own_array_min)
        )
        groups = [d for _, d in shared]
        fill, offsets = [0] * len(shared), []  # fill: per shared array
        for key, dtype, size in zip(parts, dtypes, sizes):
            if size < own_array_min:
                group = shared.index((key, dtype))
                offsets.append((group, fill[group]))
                fill[group] += size
            else:
                offsets.append((len(groups), 0))
                groups.append(dtype)
        return cls(treedef, shapes, dtypes, tuple(groups), tuple(offsets))

    def pack(
        self,
        tree: Any,
        previous: tuple[Any, tuple[jax.Array, ...]] | None = None,
        put: Callable[[list[np.ndarray]], list[jax.Array]] | None = None,
    ) -> tuple[jax.Array, ...]:
        """The flat device arrays, built on the host as fresh copies (on the CPU a device
        array may alias the host array it was made from) and sent in one call of ``put``
        (default ``jax.device_put``) on the list of them. ``previous`` is an earlier tree and
        its arrays under this same packing: an array all of whose leaves are the very same
        ``jax.Array`` objects in both is taken from it, not built and sent again (a jax.Array
        is immutable; a NumPy leaf may have changed in place, so its array is packed anew)."""
        leaves = jax.tree.leaves(tree)
        if len(leaves) != len(self.shapes):
            raise ValueError(f"expected {len(self.shapes)} parameter arrays, got {len(leaves)}")
        old_tree, old_flats = previous if previous is not None else (None, ())
        keep = [previous is not None] * len(self.groups)
        for leaf, old, (group, _) in zip(leaves, jax.tree.leaves(old_tree), self.offsets):
            if leaf is not old or not isinstance(leaf, jax.Array):
                keep[group] = False
        parts: list[list[np.ndarray]] = [[] for _ in self.groups]
        for leaf, shape, dtype, (group, _) in zip(leaves, self.shapes, self.dtypes, self.offsets):
            if keep[group]:
                continue
            leaf = np.asarray(leaf)
            if leaf.shape != shape or str(leaf.dtype) != dtype:
                raise ValueError(
                    f"parameter of shape {leaf.shape} {leaf.dtype} where "
                    f"{shape} {dtype} was deployed"
                )
            parts[group].append(leaf.reshape(-1))
        put = jax.device_put if put is None else put
        sent = iter(
            put(
                [
                    np.concatenate(p) if p else np.zeros(0, g)
                    for p, g, k in zip(parts, self.groups, keep)
                    if not k
                ]
            )
        )
        return tuple(old_flats[i] if k else next(sent) for i, k in enumerate(keep))

    def fits(self, tree: Any, previous: Any) -> bool:
        """Whether ``tree`` has this packing's structure, shapes and dtypes, given that
        ``previous`` has: only leaves that are not the very same objects are checked (a
        new :meth:`of` cost a memory publication 0.14 ms on the CPU, a third of its time)."""
        leaves, treedef = jax.tree.flatten(tree)
        if treedef != self.treedef:
            return False
        return all(
            leaf is old or (np.shape(leaf) == shape and _dtype(leaf) == dtype)
            for leaf, old, shape, dtype in zip(
                leaves, jax.tree.leaves(previous), self.shapes, self.dtypes
            )
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
