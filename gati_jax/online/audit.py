"""The audits' network: the plain base network in segments (as runtime/segments.py runs it),
returning with each answer how sure the base network was of it (its top softmax
probability), which the recency memory stores with the label (online/recency.py)."""

from __future__ import annotations

from collections.abc import Generator

import jax
import jax.numpy as jnp
import numpy as np

from gati_jax import data
from gati_jax.inference import BaseModel
from gati_jax.input_checks import check_images
from gati_jax.runtime.segments import SegmentedNetwork


class AuditNetwork(SegmentedNetwork):
    """A :class:`SegmentedNetwork` whose last segment returns (answers, top probabilities)."""

    def __init__(self, model: BaseModel, segments: int = 1):
        super().__init__(model, segments)
        last = len(self.bounds) - 1
        network = model.network

        def head(x):
            # The last segment's stages again, up to the logits (the parent's returns argmax).
            start = self.bounds[last][0]
            if last == 0:
                x = data.normalize(x, np.asarray(model.mean), np.asarray(model.std))
            for index in range(start, network.num_stages):
                x = network.apply_stage(model.variables, index, x)
            probs = jax.nn.softmax(x.astype(jnp.float32), -1)
            return jnp.stack([jnp.argmax(x, -1).astype(jnp.float32), jnp.max(probs, -1)], 0)

        self._programs = (*self._programs[:last], jax.jit(self._counted(head)))

    def _counted(self, fn):
        def traced(x):
            self.trace_count += 1  # runs only while tracing
            return fn(x)

        return traced

    def run(self, images: np.ndarray) -> Generator[None, None, tuple[np.ndarray, np.ndarray]]:
        """A generator: one segment per ``next``; returns (answers, top probabilities)."""
        x = check_images(images, self.model.network.input_shape)
        for k, program in enumerate(self._programs):
            x = jax.block_until_ready(program(x))
            if k < len(self._programs) - 1:
                yield
        out = np.asarray(x)
        return out[0].astype(np.int32), out[1]

    def answers(self, images: np.ndarray) -> np.ndarray:
        """The base network's answers, every segment at once."""
        return self.answers_and_probs(images)[0]

    def answers_and_probs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(answers, top probabilities), every segment at once."""
        steps = self.run(images)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value
