"""A base network as an ordered list of stages, each a functional Flax module.

Position i is the output of stage i; every position before the last is a candidate cache
position, and the last stage (the classifier head) produces the logits. Variables are an
explicit pytree ``{"params": (p_0, ..., p_n), "batch_stats": (s_0, ..., s_n)}`` with one
entry per stage (an empty dict for stages without batch norm), so any stage, any range of
stages and the whole network run from the same parameters.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gati_jax.scopes import stage_scope

Variables = dict[str, tuple[Any, ...]]


@dataclasses.dataclass(frozen=True)
class StagedNetwork:
    """An ordered tuple of Flax stage modules with the input shape and class count they serve."""

    name: str
    stages: tuple[nn.Module, ...]
    input_shape: tuple[int, int, int]
    num_classes: int

    @property
    def num_stages(self) -> int:
        """Number of stages; the last one is the classifier head."""
        return len(self.stages)

    def init(self, rng: jax.Array) -> Variables:
        """Initialises every stage in order, feeding each the previous stage's output shape."""
        # One compiled program: eager initialisation dispatches (and compiles) op by op.
        return jax.jit(self._init)(rng)

    def _init(self, rng: jax.Array) -> Variables:
        x = jnp.zeros((1, *self.input_shape), jnp.float32)
        params, stats = [], []
        for stage, key in zip(self.stages, jax.random.split(rng, self.num_stages)):
            variables = stage.init(key, x, train=False)
            params.append(variables["params"])
            stats.append(variables.get("batch_stats", {}))
            x = stage.apply(variables, x, train=False)
        return {"params": tuple(params), "batch_stats": tuple(stats)}

    def check_input(self, x: jax.Array) -> None:
        """Raises a clear error for a batch of the wrong rank, shape or dtype (trace-time check)."""
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(self.input_shape):
            raise ValueError(
                f"{self.name} expects inputs of shape "
                f"(batch, {', '.join(map(str, self.input_shape))})"
                f", got {tuple(x.shape)}"
            )
        if x.shape[0] == 0:
            raise ValueError(f"{self.name} got an empty batch")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(
                f"{self.name} expects normalised floating-point inputs, got dtype {x.dtype}; "
                "turn raw uint8 images into inputs with gati_jax.data.normalize"
            )

    def apply_stage(
        self, variables: Variables, index: int, x: jax.Array, *, train: bool = False
    ) -> Any:
        """Runs stage ``index``; with ``train=True`` returns ``(output, new_batch_stats)``."""
        stage_vars = {
            "params": variables["params"][index],
            "batch_stats": variables["batch_stats"][index],
        }
        # Named so that a kernel profile (gati_jax.experiments.kernel_profile) can attribute
        # its time.
        with jax.named_scope(stage_scope(index)):
            if train:
                y, updates = self.stages[index].apply(
                    stage_vars, x, train=True, mutable=["batch_stats"]
                )
                return y, updates.get("batch_stats", {})
            return self.stages[index].apply(stage_vars, x, train=False)

    def apply_range(self, variables: Variables, x: jax.Array, start: int, stop: int) -> jax.Array:
        """Runs stages ``start`` .. ``stop - 1`` at inference (running batch-norm statistics)."""
        if not 0 <= start <= stop <= self.num_stages:
            raise ValueError(f"stage range [{start}, {stop}) is outside [0, {self.num_stages}]")
        if start == 0:
            self.check_input(x)
        for index in range(start, stop):
            x = self.apply_stage(variables, index, x)
        return x

    def apply(self, variables: Variables, x: jax.Array) -> jax.Array:
        """Runs the whole network at inference and returns the logits."""
        return self.apply_range(variables, x, 0, self.num_stages)

    def apply_train(self, variables: Variables, x: jax.Array) -> tuple[jax.Array, tuple[Any, ...]]:
        """Runs the whole network in training mode; returns logits and updated batch stats."""
        self.check_input(x)
        new_stats = []
        for index in range(self.num_stages):
            x, stats = self.apply_stage(variables, index, x, train=True)
            new_stats.append(stats)
        return x, tuple(new_stats)

    def activation_shapes(self, batch_size: int = 1) -> tuple[tuple[int, ...], ...]:
        """Shape of the output at every position, computed abstractly without running anything."""
        abstract_vars = jax.eval_shape(self._init, jax.random.key(0))
        x = jax.ShapeDtypeStruct((batch_size, *self.input_shape), jnp.float32)
        shapes = []
        for index in range(self.num_stages):
            x = jax.eval_shape(lambda v, a, i=index: self.apply_stage(v, i, a), abstract_vars, x)
            shapes.append(tuple(x.shape))
        return tuple(shapes)
