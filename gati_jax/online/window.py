"""Replay windows: per deployed position, a bounded ring buffer of recent (activation, base
answer) pairs, with a held-out ring apart for threshold calibration.

Which pairs are held out is the caller's choice: the online learner holds out its uniform
audit sample, because the other labelled requests (those that ran to the end) are the hard
ones, and a threshold calibrated on them alone would be far too strict.

The bound is in bytes (config ``online.window_bytes``), so a position with large activations
keeps fewer of them, and in items (``online.window_items``), which sets how far back the
window remembers; the oldest pairs are overwritten first.
"""

from __future__ import annotations

import numpy as np


class Ring:
    """A fixed-capacity ring of rows (float16 activations and int32 labels)."""

    def __init__(self, capacity: int, item_shape: tuple[int, ...]):
        self.x = np.zeros((capacity, *item_shape), np.float16)
        self.y = np.zeros(capacity, np.int32)
        self.count = 0  # rows ever added; the ring holds the last min(count, capacity)

    @property
    def size(self) -> int:
        """Rows currently held."""
        return min(self.count, len(self.y))

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        """Appends rows, overwriting the oldest when full."""
        capacity = len(self.y)
        if len(y) > capacity:  # only the newest fit
            x, y = x[-capacity:], y[-capacity:]
        slots = (self.count + np.arange(len(y))) % capacity
        self.x[slots], self.y[slots] = x, y
        self.count += len(y)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The held rows (in slot order, which is arrival order up to a rotation)."""
        return self.x[: self.size], self.y[: self.size]

    @property
    def nbytes(self) -> int:
        """Bytes of the ring's storage."""
        return self.x.nbytes + self.y.nbytes


class ReplayWindow:
    """Recent labelled activations at one position: a training ring and a held-out ring."""

    def __init__(
        self,
        item_shape: tuple[int, ...],
        max_bytes: int,
        holdout_every: int = 4,
        max_items: int | None = None,
    ):
        if holdout_every < 2:
            raise ValueError(f"holdout_every must be >= 2, got {holdout_every}")
        item_bytes = 2 * int(np.prod(item_shape, dtype=np.int64)) + 4
        capacity = int(max_bytes) // item_bytes
        if max_items is not None:
            # Fewer items = a more recent window: it follows what is hot now more closely.
            capacity = min(capacity, int(max_items))
        holdout = capacity // holdout_every
        if holdout < 1:
            raise ValueError(
                f"online.window_bytes={max_bytes} holds {capacity} activations "
                f"of shape {tuple(item_shape)}; it needs at least {holdout_every}"
            )
        self.item_shape = tuple(item_shape)
        self.holdout_every = int(holdout_every)
        self.train = Ring(capacity - holdout, self.item_shape)
        self.holdout = Ring(holdout, self.item_shape)
        self.added = 0

    def add(self, x: np.ndarray, y: np.ndarray, holdout: np.ndarray | None = None) -> None:
        """Adds labelled activations; those marked ``holdout`` (by default every
        ``holdout_every``-th one) go to the held-out ring, the rest to the training ring."""
        x, y = np.asarray(x), np.asarray(y, np.int32)
        if x.shape[1:] != self.item_shape or len(x) != len(y):
            raise ValueError(
                f"window of {self.item_shape} activations got x {x.shape}, y {y.shape}"
            )
        if not len(y):
            return
        if holdout is None:
            to_holdout = (self.added + np.arange(len(y))) % self.holdout_every == 0
        else:
            to_holdout = np.asarray(holdout, bool)
        self.holdout.add(x[to_holdout], y[to_holdout])
        self.train.add(x[~to_holdout], y[~to_holdout])
        self.added += len(y)

    @property
    def nbytes(self) -> int:
        """Bytes held by both rings (bounded by the window's byte budget)."""
        return self.train.nbytes + self.holdout.nbytes
