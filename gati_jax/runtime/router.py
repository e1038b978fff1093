"""The compiled early-exit router: stages and cache lookups in one jit-compiled program.

After each deployed position the policy decides which requests exit; a ``lax.cond`` skips
every remaining stage once all real requests of the group have exited. Cache parameters and
thresholds are arguments, so new values never recompile. Groups are padded to power-of-two
buckets; padding rows start as exited, so they never hold back a skip or change a result.

The frozen base network's variables and input statistics are compile-time constants by
default (``bake_base=True``): as arguments, XLA on the CPU re-lays out every conv kernel on
every call, before any ``lax.cond`` can skip it (measured on the shipped ResNet-18 at batch 1:
a group exiting at position 0 cost 1.07 ms with the variables as arguments, 0.12 ms baked).
A new base network means a new Router; new caches never do.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from gati_jax import data
from gati_jax.inference import BaseModel
from gati_jax.input_checks import check_images
from gati_jax.models import Variables
from gati_jax.runtime.packing import Packing
from gati_jax.runtime.policies import Decide


class RouteResult(NamedTuple):
    """Per request: the answer, the stage it exited after, and whether a cache hit."""

    answer: np.ndarray
    exit_stage: np.ndarray
    hit: np.ndarray


def bucket_sizes(max_group: int) -> tuple[int, ...]:
    """1, 2, 4, ... up to and including ``max_group``."""
    if max_group < 1:
        raise ValueError(f"max_group must be >= 1, got {max_group}")
    sizes, size = [], 1
    while size < max_group:
        sizes.append(size)
        size *= 2
    return (*sizes, max_group)


@dataclasses.dataclass(eq=False)
class Router:
    """Serves request groups through one compiled program per group-size bucket."""

    model: BaseModel
    positions: tuple[int, ...]
    decides: tuple[Decide, ...]
    max_group: int = 32
    bake_base: bool = True
    trace_count: int = 0          # how many times the program was traced (== compilations)

    def __post_init__(self):
        self.network = self.model.network
        if list(self.positions) != sorted(set(self.positions)):
            raise ValueError(f"positions must be increasing and distinct, got {self.positions}")
        last = self.network.num_stages - 1
        if self.positions and not 0 <= self.positions[0] <= self.positions[-1] < last:
            raise ValueError(f"cache positions must lie in [0, {last - 1}], got {self.positions}")
        if len(self.decides) != len(self.positions):
            raise ValueError("one decision rule per deployed position is needed")
        self.buckets = bucket_sizes(self.max_group)
        base = (self.model.variables, np.asarray(self.model.mean), np.asarray(self.model.std))
        # The packing (which leaf sits where in the flat arrays) is static: a new structure
        # of cache parameters compiles anew, new values never do.
        if self.bake_base:
            self._program = jax.jit(lambda packing, *args: self._route(packing, *base, *args),
                                    static_argnums=0)
            self._base_args: tuple = ()
        else:
            self._program = jax.jit(self._route, static_argnums=0)
            self._base_args = base
        self._last_packed: tuple[Any, Packing, tuple[jax.Array, ...]] | None = None

    def pack(self, cache_params: tuple[Any, ...]) -> tuple[Packing, tuple[jax.Array, ...]]:
        """The parameters as one flat array per dtype (see runtime/packing.py); the last
        packed object is remembered, so serving the same parameters packs them once."""
        last = self._last_packed
        if last is not None and last[0] is cache_params:
            return last[1], last[2]
        packing = Packing.of(cache_params)
        flats = packing.pack(cache_params)
        self._last_packed = (cache_params, packing, flats)
        return packing, flats

    def _route(self, packing: Packing, variables: Variables, mean: jax.Array, std: jax.Array,
               flats: tuple[jax.Array, ...], thresholds: jax.Array, images: jax.Array,
               valid: jax.Array, base_answer: jax.Array):
        self.trace_count += 1  # runs only while tracing: counts compilations
        cache_params = packing.unpack(flats)
        network, positions = self.network, self.positions
        starts = (0, *(p + 1 for p in positions))
        ends = (*(p + 1 for p in positions), network.num_stages)
        last = network.num_stages - 1
        n = images.shape[0]
        state0 = (jnp.zeros(n, jnp.int32), jnp.full(n, last, jnp.int32),
                  jnp.zeros(n, bool), ~valid)

        def finish(state):
            answer, exit_stage, hit, _ = state
            return answer, exit_stage, hit

        def run(k, x, state):
            for index in range(starts[k], ends[k]):
                x = network.apply_stage(variables, index, x)
            answer, exit_stage, hit, done = state
            if k == len(positions):
                return jnp.where(hit, answer, jnp.argmax(x, -1).astype(jnp.int32)), exit_stage, hit
            cache_answer, cache_hit = self.decides[k](cache_params[k], thresholds[k], x,
                                                      base_answer)
            new = cache_hit & ~done
            state = (jnp.where(new, cache_answer.astype(jnp.int32), answer),
                     jnp.where(new, positions[k], exit_stage), hit | new, done | new)
            return lax.cond(jnp.all(state[3]), lambda op: finish(op[1]),
                            lambda op: run(k + 1, op[0], op[1]), (x, state))

        answer, exit_stage, hit = run(0, data.normalize(images, mean, std), state0)
        # One output array: one device-to-host transfer per group instead of three.
        return jnp.stack([answer, exit_stage, hit.astype(jnp.int32)])

    def bucket_for(self, n: int) -> int:
        """The smallest bucket that holds ``n`` requests."""
        for size in self.buckets:
            if size >= n:
                return size
        raise ValueError(f"group of {n} exceeds max_group={self.max_group}")

    def compiled(self, cache_params: tuple[Any, ...], thresholds: jax.Array, images: jax.Array,
                 valid: jax.Array, base_answer: jax.Array):
        """The compiled program on prepared (padded) arguments: the benchmark's entry.

        Returns one int32 array (3, group): answers, exit stages and hits (0/1).
        """
        packing, flats = self.pack(cache_params)
        return self._program(packing, *self._base_args, flats, thresholds, images, valid,
                             base_answer)

    def route(self, cache_params: tuple[Any, ...], thresholds: Any, images: np.ndarray,
              base_answer: np.ndarray | None = None) -> RouteResult:
        """Routes one request group of raw images (validated, padded to its bucket)."""
        images = check_images(images, self.network.input_shape)
        n = len(images)
        size = self.bucket_for(n)
        padded = np.zeros((size, *images.shape[1:]), images.dtype)
        padded[:n] = images
        valid = np.arange(size) < n
        base = np.zeros(size, np.int32)
        if base_answer is not None:
            base[:n] = base_answer
        # numpy, not jnp: a jnp conversion here would be one more dispatch per request.
        thresholds = np.asarray(thresholds, np.float32).reshape(len(self.positions))
        out = np.asarray(self.compiled(cache_params, thresholds, padded, valid, base))
        return RouteResult(out[0, :n], out[1, :n], out[2, :n].astype(bool))
