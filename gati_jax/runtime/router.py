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

A router built with ``compact=True`` also gathers, after each deployed position, the rows
still running into the smallest bucket that holds them (a ``lax.switch`` over the buckets),
runs the next segment on those rows only and scatters the results back: a group half of whose
requests exited stops paying for that half (measured on the shipped ResNet-18 with the planned
caches: 1.6x the plain router's throughput at groups of 8 and 32).

A router built with ``taps`` (one function per deployed position, ``tap(params, activation)``)
also returns what each tap computed at its position for every request of the group, zeros
where the group skipped the position: online learning reads the activations it trains on
from here instead of running the network twice.

A router built with a ``mesh`` (gati_jax/sharding.py) splits every group's rows over the
mesh's data axis: the same program, partitioned by jit, with the same answers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from gati_jax import data, sharding
from gati_jax.inference import BaseModel
from gati_jax.input_checks import check_images
from gati_jax.models import Variables
from gati_jax.runtime.packing import Packing
from gati_jax.runtime.policies import Decide
from gati_jax.scopes import lookup_scope


def _record_exits(
    position: int,
    cache_answer: jax.Array,
    cache_hit: jax.Array,
    answer: jax.Array,
    exit_stage: jax.Array,
    hit: jax.Array,
    done: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Requests that hit at ``position`` and had not exited take the cache's answer there."""
    new = cache_hit & ~done
    return (
        jnp.where(new, cache_answer.astype(jnp.int32), answer),
        jnp.where(new, position, exit_stage),
        hit | new,
        done | new,
    )


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


@dataclasses.dataclass(frozen=True)
class _PackedItems:
    """Cache parameters unpacked where they are indexed: in the branch of the lookup that uses
    them, so a group that exits early never slices the later caches' parameters."""

    packing: Packing
    flats: tuple[jax.Array, ...]

    def __getitem__(self, k: int) -> Any:
        return self.packing.unpack_item(self.flats, k)


class _Packed(NamedTuple):
    """The parameters a router packed last: the pytree, its packing, its flat device arrays
    and the program for that packing."""

    params: Any
    packing: Packing
    flats: tuple[jax.Array, ...]
    program: Callable


@dataclasses.dataclass(eq=False)
class Router:
    """Serves request groups through one compiled program per group-size bucket."""

    model: BaseModel
    positions: tuple[int, ...]
    decides: tuple[Decide, ...]
    max_group: int = 32
    bake_base: bool = True
    taps: tuple[Callable[[Any, jax.Array], Any], ...] | None = None
    mesh: Any = None  # a jax.sharding Mesh: groups split over its data axis
    compact: bool = False  # gather the rows still running into smaller buckets
    # Float images outside the base network's input range (model.input_range, raw pixels)
    # are an error; True clips them into it instead.
    clip_inputs: bool = False
    # A leaf's part, from its key path (see runtime/packing.py): parts never share a flat
    # array, so new values of one part pack and send that part's arrays only.
    pack_part: Callable[[tuple[Any, ...]], Any] | None = None
    trace_count: int = 0  # how many times the program was traced (== compilations)

    def __post_init__(self):
        self.network = self.model.network
        if list(self.positions) != sorted(set(self.positions)):
            raise ValueError(f"positions must be increasing and distinct, got {self.positions}")
        last = self.network.num_stages - 1
        if self.positions and not 0 <= self.positions[0] <= self.positions[-1] < last:
            raise ValueError(f"cache positions must lie in [0, {last - 1}], got {self.positions}")
        if len(self.decides) != len(self.positions):
            raise ValueError("one decision rule per deployed position is needed")
        if self.taps is not None and len(self.taps) != len(self.positions):
            raise ValueError("one tap per deployed position is needed")
        if self.compact and (self.taps is not None or self.mesh is not None):
            # Taps report every row at every position, and gathering rows of a group split
            # over devices would move them between devices: neither fits compaction.
            raise ValueError("compaction works without taps and without a mesh")
        self.buckets = bucket_sizes(self.max_group)
        if self.mesh is not None:
            # Every bucket splits evenly over the data-parallel devices.
            width = sharding.data_size(self.mesh)
            self.buckets = tuple(sorted({-(-b // width) * width for b in self.buckets}))
        self._base = (self.model.variables, np.asarray(self.model.mean), np.asarray(self.model.std))
        self._base_args: tuple = () if self.bake_base else self._base
        # One compiled program per packing (which leaf sits where in the flat arrays): a new
        # structure of cache parameters compiles anew, new values never do.
        self._programs: dict[Packing, Callable] = {}
        self._last_packed: _Packed | None = None
        self._last_thresholds: tuple[np.ndarray, jax.Array] | None = None

    def _program_for(self, packing: Packing) -> Callable:
        """The jitted route for one packing, the packing closed over rather than a static
        argument: jit would hash and compare a static argument on every call (measured:
        ~5 us a request, a quarter of what the router's dispatch costs over the plain
        network's)."""
        program = self._programs.get(packing)
        if program is None:
            if self.bake_base:
                base = self._base
                program = jax.jit(lambda *args: self._route(packing, *base, *args))
            else:
                program = jax.jit(lambda *args: self._route(packing, *args))
            self._programs[packing] = program
        return program

    def prepare(self, cache_params: tuple[Any, ...]) -> None:
        """Packs ``cache_params`` and sends them to the device now, so the next group served
        with them (the same object) does not pay for it: new parameters cost the first group
        served with them about 0.7 ms on the CPU (the planned caches at batch 1), which online
        learning pays here, in the background, instead. Flat arrays whose leaves are the
        last set's own jax Arrays are reused, not sent again (see :meth:`_packed`)."""
        flats, _ = self._packed(cache_params)
        jax.block_until_ready(flats)

    def _packed(self, cache_params: tuple[Any, ...]) -> tuple[tuple[jax.Array, ...], Callable]:
        """The parameters as a few flat arrays (see runtime/packing.py) and the program for
        their packing; the last parameters are remembered, so serving the same ones packs
        them once, and a new set of the same layout packs and sends only the arrays whose
        leaves changed (the rest are the last set's device arrays, still arguments of the
        same program: nothing recompiles)."""
        last = self._last_packed
        if last is not None and last.params is cache_params:
            return last.flats, last.program
        previous = None
        if last is not None and last.packing.fits(cache_params, last.params):
            packing, previous = last.packing, (last.params, last.flats)
        else:
            packing = Packing.of(cache_params, part=self.pack_part)
        put = None if self.mesh is None else (lambda a: sharding.replicate(self.mesh, a))
        flats = packing.pack(cache_params, previous, put)
        program = self._program_for(packing)
        # One assignment: a group served next sees the whole new set or the whole old one.
        self._last_packed = _Packed(cache_params, packing, flats, program)
        return flats, program

    def _route(
        self,
        packing: Packing,
        variables: Variables,
        mean: jax.Array,
        std: jax.Array,
        flats: tuple[jax.Array, ...],
        thresholds: jax.Array,
        images: jax.Array,
        rows: jax.Array,
    ):
        self.trace_count += 1  # runs only while tracing: counts compilations
        valid, base_answer = rows >= 0, jnp.maximum(rows, 0)
        cache_params = _PackedItems(packing, flats)
        network, positions = self.network, self.positions
        starts, ends = self._segment_bounds()
        last = network.num_stages - 1
        n = images.shape[0]
        taps = self.taps or ()
        x0 = data.normalize(images, mean, std)
        # Zeros shaped like every tap's output: what a skipped position reports.
        tapped0 = tuple(
            jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shape)
            for shape in self._tap_shapes(packing, variables, x0, cache_params)
        )
        state0 = (
            jnp.zeros(n, jnp.int32),
            jnp.full(n, last, jnp.int32),
            jnp.zeros(n, bool),
            ~valid,
            tapped0,
        )

        def finish(state):
            answer, exit_stage, hit, _, tapped = state
            return answer, exit_stage, hit, tapped

        def run(k, x, state):
            for index in range(starts[k], ends[k]):
                x = network.apply_stage(variables, index, x)
            answer, exit_stage, hit, done, tapped = state
            if k == len(positions):
                final = jnp.where(hit, answer, jnp.argmax(x, -1).astype(jnp.int32))
                return final, exit_stage, hit, tapped
            # Named so that a kernel profile can tell the lookup from the stages around it.
            with jax.named_scope(lookup_scope(positions[k])):
                if taps:
                    tapped = (*tapped[:k], taps[k](cache_params[k], x), *tapped[k + 1 :])
                cache_answer, cache_hit = self.decides[k](
                    cache_params[k], thresholds[k], x, base_answer
                )
            state = (
                *_record_exits(
                    positions[k], cache_answer, cache_hit, answer, exit_stage, hit, done
                ),
                tapped,
            )
            return lax.cond(
                jnp.all(state[3]),
                lambda op: finish(op[1]),
                lambda op: run(k + 1, op[0], op[1]),
                (x, state),
            )

        if self.compact and n > 1 and positions:
            answer, exit_stage, hit = self._run_compacted(
                variables, cache_params, thresholds, x0, valid, base_answer
            )
            return jnp.stack([answer, exit_stage, hit.astype(jnp.int32)])
        answer, exit_stage, hit, tapped = run(0, x0, state0)
        # One output array: one device-to-host transfer per group instead of three.
        out = jnp.stack([answer, exit_stage, hit.astype(jnp.int32)])
        if not taps:
            return out
        # Taps too travel in the one array (as float32, exact for these values): one
        # transfer instead of one per tapped leaf (measured: ~0.07 ms each on the CPU).
        leaves, treedef = jax.tree.flatten(tapped)
        self._tap_layout = (
            treedef,
            tuple((l.shape[1:], int(np.prod(l.shape[1:])), l.dtype) for l in leaves),
        )
        columns = [out.T.astype(jnp.float32)]
        columns += [l.reshape(n, -1).astype(jnp.float32) for l in leaves]
        return jnp.concatenate(columns, axis=1)

    def _segment_bounds(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """First and one-past-last stage of each segment: up to and including each deployed
        position, then the rest of the network."""
        starts = (0, *(p + 1 for p in self.positions))
        ends = (*(p + 1 for p in self.positions), self.network.num_stages)
        return starts, ends

    def _run_compacted(
        self,
        variables: Variables,
        cache_params: tuple[Any, ...],
        thresholds: jax.Array,
        x: jax.Array,
        valid: jax.Array,
        base_answer: jax.Array,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The group's route with compaction: after each deployed position the rows still
        running are gathered into the smallest bucket that holds them, the next segment (its
        stages and the next lookup) runs on that bucket only, and its results scatter back.

        One ``lax.switch`` per segment picks the bucket (branch 0: nobody is left, the
        segment is skipped as the plain router's ``lax.cond`` would), so the program holds
        each later segment once per bucket size up to the group's. Rows gathered only to
        fill a bucket (exited or padding) run but never change a result.
        """
        network, positions = self.network, self.positions
        n, last = x.shape[0], network.num_stages - 1
        sizes = tuple(b for b in self.buckets if b <= n)
        starts, ends = self._segment_bounds()
        state = (jnp.zeros(n, jnp.int32), jnp.full(n, last, jnp.int32), jnp.zeros(n, bool), ~valid)

        def segment(k, rows, x, state):
            """Segment k on the gathered ``rows`` (None: every row, in place)."""
            take = (lambda a: a) if rows is None else (lambda a: a[rows])
            x = take(x)
            answer, exit_stage, hit, done = (take(a) for a in state)
            for index in range(starts[k], ends[k]):
                x = network.apply_stage(variables, index, x)
            if k == len(positions):
                answer = jnp.where(done, answer, jnp.argmax(x, -1).astype(jnp.int32))
            else:
                with jax.named_scope(lookup_scope(positions[k])):
                    cache_answer, cache_hit = self.decides[k](
                        cache_params[k], thresholds[k], x, take(base_answer)
                    )
                answer, exit_stage, hit, done = _record_exits(
                    positions[k], cache_answer, cache_hit, answer, exit_stage, hit, done
                )
            if rows is None:
                return x, (answer, exit_stage, hit, done)
            full = jnp.zeros((n, *x.shape[1:]), x.dtype).at[rows].set(x)
            return full, tuple(
                a.at[rows].set(b) for a, b in zip(state, (answer, exit_stage, hit, done))
            )

        x, state = segment(0, None, x, state)  # nobody has exited before the first lookup
        for k in range(1, len(positions) + 1):
            # Rows still running first, in group order: a bucket of b takes the first b.
            order = jnp.argsort(state[3], stable=True)
            remaining = jnp.sum(~state[3])
            out = x
            for index in range(starts[k], ends[k]):
                out = jax.eval_shape(
                    lambda v, a, i=index: network.apply_stage(v, i, a), variables, out
                )
            branches = [lambda op, out=out: (jnp.zeros(out.shape, out.dtype), op[1])]
            branches += [
                lambda op, k=k, b=b: segment(k, None if b == n else order[:b], *op) for b in sizes
            ]
            index = jnp.where(remaining == 0, 0, 1 + jnp.sum(jnp.asarray(sizes) < remaining))
            x, state = lax.switch(index, branches, (x, state))
        return state[0], state[1], state[2]

    def _tap_shapes(
        self, packing: Packing, variables: Variables, x0: jax.Array, cache_params: tuple[Any, ...]
    ) -> tuple[Any, ...]:
        """Abstract output of every tap, from the activation shapes at the positions."""
        if not self.taps:
            return ()
        x, shapes, k = x0, [], 0
        for index in range(self.network.num_stages):
            if k == len(self.positions):
                break
            x = jax.eval_shape(
                lambda v, a, i=index: self.network.apply_stage(v, i, a), variables, x
            )
            if index == self.positions[k]:
                shapes.append(jax.eval_shape(self.taps[k], cache_params[k], x))
                k += 1
        return tuple(shapes)

    def bucket_for(self, n: int) -> int:
        """The smallest bucket that holds ``n`` requests."""
        for size in self.buckets:
            if size >= n:
                return size
        raise ValueError(f"group of {n} exceeds max_group={self.max_group}")

    def compiled(
        self,
        cache_params: tuple[Any, ...],
        thresholds: jax.Array,
        images: jax.Array,
        rows: jax.Array,
    ):
        """The compiled program on prepared (padded) arguments: the benchmark's entry.

        ``rows`` (int32, one per row of ``images``) is -1 for a padding row and otherwise the
        base network's answer (read by the oracle only; any class, e.g. 0, for the others):
        one small array to send instead of a validity mask and the answers (see :meth:`_call`).
        Returns one int32 array (3, group): answers, exit stages and hits (0/1); with taps,
        one float32 array (group, 3 + tapped values) that :meth:`route_tapped` unpacks.
        """
        flats, program = self._packed(cache_params)
        return program(*self._base_args, flats, thresholds, images, rows)

    def hlo_text(
        self,
        cache_params: tuple[Any, ...],
        thresholds: jax.Array,
        images: jax.Array,
        rows: jax.Array,
    ) -> str:
        """The optimized HLO of the program :meth:`compiled` runs on these arguments (to see
        which kernels XLA chose, ``profiling.convolution_kernels``)."""
        flats, program = self._packed(cache_params)
        lowered = program.lower(*self._base_args, flats, thresholds, images, rows)
        return lowered.compile().as_text()

    def route(
        self,
        cache_params: tuple[Any, ...],
        thresholds: Any,
        images: np.ndarray,
        base_answer: np.ndarray | None = None,
    ) -> RouteResult:
        """Routes one request group of raw images (validated, padded to its bucket): uint8,
        or float within the base network's input range (after the cast to float32)."""
        if self.taps:
            return self.route_tapped(cache_params, thresholds, images, base_answer)[0]
        out = self._call(cache_params, thresholds, images, base_answer)
        n = len(images)
        return RouteResult(out[0, :n], out[1, :n], out[2, :n].astype(bool))

    def route_tapped(
        self,
        cache_params: tuple[Any, ...],
        thresholds: Any,
        images: np.ndarray,
        base_answer: np.ndarray | None = None,
    ) -> tuple[RouteResult, tuple]:
        """Like :meth:`route`, plus every tap's output per position (host arrays, padding
        rows dropped; zeros for requests that exited before the position)."""
        if not self.taps:
            raise ValueError("this router was built without taps")
        flat = self._call(cache_params, thresholds, images, base_answer)
        n = len(images)
        flat = flat[:n]
        out = flat[:, :3].astype(np.int32)
        treedef, layout = self._tap_layout
        leaves, start = [], 3
        for shape, size, dtype in layout:
            leaves.append(
                flat[:, start : start + size].reshape(n, *shape).astype(dtype, copy=False)
            )
            start += size
        return (
            RouteResult(out[:, 0], out[:, 1], out[:, 2].astype(bool)),
            jax.tree.unflatten(treedef, leaves),
        )

    def _call(
        self,
        cache_params: tuple[Any, ...],
        thresholds: Any,
        images: np.ndarray,
        base_answer: np.ndarray | None,
    ) -> Any:
        images = check_images(
            images, self.network.input_shape, self.model.input_range, self.clip_inputs
        )
        n = len(images)
        size = self.bucket_for(n)
        padded = np.zeros((size, *images.shape[1:]), images.dtype)
        padded[:n] = images
        rows = np.full(size, -1, np.int32)
        rows[:n] = 0 if base_answer is None else base_answer
        thresholds = self._device_thresholds(thresholds)
        if self.mesh is not None:
            # Rows over the data axis; the compiled program is the same, jit partitions it.
            padded, rows = (sharding.shard_batch(self.mesh, a) for a in (padded, rows))
        # Two host arrays go to the device per group (images, rows), the thresholds only when
        # they change, and the answer's copy back is queued behind the program at once rather
        # than after the host sees it finish. On an H200 at batch 1 (route() 1.9-2.3x the
        # compiled program): each further argument sent from the host cost 0.03-0.04 ms, the
        # early copy saved 0.07 ms; the image's transfer (~0.2 ms) and the answer's (~0.15 ms)
        # are what is left, the GPU runtime's latency per transfer.
        out = self.compiled(cache_params, thresholds, padded, rows)
        out.copy_to_host_async()
        return np.asarray(out)

    def _device_thresholds(self, thresholds: Any) -> jax.Array:
        """The thresholds as a device array, sent again only when their values change."""
        host = np.asarray(thresholds, np.float32).reshape(len(self.positions))
        last = self._last_thresholds
        if last is not None and np.array_equal(last[0], host):
            return last[1]
        device = jax.device_put(host) if self.mesh is None else sharding.replicate(self.mesh, host)
        self._last_thresholds = (host.copy(), device)
        return device
