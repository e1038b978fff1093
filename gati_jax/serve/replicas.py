"""How gati-online's learned parameters reach every replica of a scaled-out server.

One learner (a :class:`LearnerHub`, hosted by one Ray actor in gati_jax/serve/ray_app.py)
owns the online learner. Replicas serve with the static gati program at the parameters and
thresholds they hold, and forward a ``tap_fraction`` sample of their request groups to the hub
(fire and forget: the requests' answers never wait for it). The hub routes what it receives
through its learner's tapped program, learns from it in background chunks, and publishes a
new *version* (parameters, thresholds) whenever serving should change. Each replica's
:class:`Subscriber` fetches the latest version every ``server.sync_every_s`` and swaps it in
with one assignment; every group reads the held version once, so a group is served by one
version's parameters and thresholds together, never a mix.

Plain Python, no Ray: the hub and the subscriber are tested here without it.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from gati_jax.online.learner import OnlineLearner
from gati_jax.runtime.router import RouteResult


@dataclasses.dataclass(frozen=True)
class Published:
    """One version of what serving uses: host (numpy) parameters and the thresholds."""

    version: int
    params: tuple[Any, ...]
    thresholds: np.ndarray


class LearnerHub:
    """The one online learner behind every replica: observes forwarded groups, runs its
    background work, and publishes a new version when parameters or thresholds change."""

    def __init__(self, learner: OnlineLearner, max_chunks: int = 64):
        self.learner = learner
        self.max_chunks = int(max_chunks)
        self._lock = threading.Lock()  # an actor may call from several threads
        self._source: tuple[Any, np.ndarray] | None = None
        self.latest: Published = self._snapshot(0)

    def _snapshot(self, version: int) -> Published:
        params, thresholds = self.learner.params, self.learner.thresholds()
        self._source = (params, thresholds)
        return Published(version, jax.device_get(params), np.asarray(thresholds, np.float32))

    def observe(self, images: np.ndarray) -> int:
        """Learns from one forwarded group: routes it through the learner (tapped as the
        learner decides), runs up to ``max_chunks`` background chunks, publishes if serving
        changed. Returns the latest version."""
        with self._lock:
            self.learner.route(images)
            for _ in range(self.max_chunks):
                if not self.learner.pending():
                    break
                self.learner.run_chunk()
            params, thresholds = self.learner.params, self.learner.thresholds()
            old_params, old_thresholds = self._source
            if params is not old_params or not np.array_equal(thresholds, old_thresholds):
                self.latest = self._snapshot(self.latest.version + 1)
            return self.latest.version

    def fetch(self, since: int) -> Published | None:
        """The latest version when newer than ``since``, else None (nothing to send)."""
        latest = self.latest
        return latest if latest.version > since else None


class Subscriber:
    """A replica's hold on the published parameters: ``route`` serves a group at the held
    version; :meth:`apply` swaps a newer one in, in one assignment."""

    def __init__(
        self,
        route: Callable[[Any, np.ndarray, np.ndarray], RouteResult],
        first: Published,
        prepare: Callable[[Any], None] | None = None,
    ):
        self._route, self._prepare = route, prepare
        self.current = self._device(first)

    def _device(self, published: Published) -> Published:
        params = jax.device_put(published.params)
        if self._prepare is not None:
            self._prepare(params)  # packed and on the device before any group sees them
        return dataclasses.replace(published, params=params)

    def apply(self, published: Published | None) -> bool:
        """Swaps ``published`` in if it is newer than the held version; whether it did."""
        if published is None or published.version <= self.current.version:
            return False
        self.current = self._device(published)  # the one assignment every group sees whole
        return True

    def route(self, images: np.ndarray) -> tuple[RouteResult, int]:
        """Serves one group at the held version; returns the result and that version."""
        held = self.current  # read once: this group's parameters and thresholds
        return self._route(held.params, held.thresholds, images), held.version
