"""The plain base network as a few separately compiled segments: a run that can pause.

Online learning labels audited hits by running the plain network in the serving loop's idle
time, one background chunk at a time; a request that arrives during a chunk waits for it to
end. Run as one program, an audit is the longest chunk there is (a whole network, 1.5 ms
here against 0.7 ms for an update chunk), and the requests that land in it make the tail:
the background is busy 2-3% of the time, so they are the slowest 1-3%. Split into segments
of consecutive stages, one per chunk, a request waits for at most one segment, at the price
of a dispatch per segment.

Each segment bakes in its stages' variables, as the router does (as arguments, XLA on the
CPU re-lays out every conv kernel on every call), so the segments together hold one copy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator

import jax
import jax.numpy as jnp
import numpy as np

from gati_jax import data
from gati_jax.inference import BaseModel
from gati_jax.input_checks import check_images

# Stages per audit segment when the config leaves the count to the network (0): a 10-stage
# ResNet-18 audits in one piece, a 29-stage ResNet-56 in three. A deep network's whole audit
# is the longest background chunk, and the requests that arrive during one make online
# learning's tail (measured: docs/online.md, "audits cut by depth").
STAGES_PER_SEGMENT = 10


def segment_count(num_stages: int, setting: int) -> int:
    """Segments for a network of ``num_stages`` stages: ``setting`` when >= 1 (at most one
    per stage), else one per STAGES_PER_SEGMENT stages, rounded, at least one."""
    if setting < 0:
        raise ValueError(f"the segment setting must be >= 0 (0: from the stages), got {setting}")
    if setting == 0:
        return max(1, round(num_stages / STAGES_PER_SEGMENT))
    return min(int(setting), int(num_stages))


@dataclasses.dataclass(eq=False)
class SegmentedNetwork:
    """The base network in ``segments`` programs of consecutive stages (as equal in number as
    the stages allow); :meth:`run` yields between them."""

    model: BaseModel
    segments: int = 1
    trace_count: int = 0  # compilations of all segments together

    def __post_init__(self):
        network = self.model.network
        stages = network.num_stages
        if not 1 <= self.segments <= stages:
            raise ValueError(
                f"segments must be in [1, {stages}] (the network's stages), got {self.segments}"
            )
        edges = np.linspace(0, stages, self.segments + 1).round().astype(int)
        self.bounds = tuple((int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]))
        variables = self.model.variables
        mean, std = np.asarray(self.model.mean), np.asarray(self.model.std)
        last = len(self.bounds) - 1

        def segment(k: int, x: jax.Array) -> jax.Array:
            self.trace_count += 1  # runs only while tracing
            if k == 0:
                x = data.normalize(x, mean, std)
            for index in range(*self.bounds[k]):
                x = network.apply_stage(variables, index, x)
            return jnp.argmax(x, -1).astype(jnp.int32) if k == last else x

        self._programs = tuple(
            jax.jit(lambda x, k=k: segment(k, x)) for k in range(len(self.bounds))
        )

    def run(self, images: np.ndarray) -> Generator[None, None, np.ndarray]:
        """A generator: runs one segment per ``next`` (each finished before it yields) and
        returns the base network's answers to ``images``."""
        x = check_images(images, self.model.network.input_shape)
        for k, program in enumerate(self._programs):
            x = jax.block_until_ready(program(x))  # the segment's work ends in its chunk
            if k < len(self._programs) - 1:
                yield
        return np.asarray(x)

    def answers(self, images: np.ndarray) -> np.ndarray:
        """The base network's answers, every segment at once."""
        steps = self.run(images)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value
