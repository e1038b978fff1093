"""The server core: requests in, request groups through the router, answers out; no sockets.

Requests (one image or a batch each) join a bounded FIFO queue of images. One asyncio task,
the batcher, closes a group when it holds ``max_group`` images or its oldest image has waited
``max_wait_s``, the rule of the simulator's serving loop (gati_jax/serving/loop.py), and runs
it through the engine's compiled router. A batch larger than a group spans several groups;
its answer comes when its last image is served.

The router runs on the event loop's thread, between the loop's other work: one device, so
groups run one after another anyway, and handing each group to a worker thread and its
answer back cost two thread switches per request (the server's overhead is what a 1-5 ms
network cannot afford). While a group computes, new requests wait in the sockets and join
the next group, as requests arriving during a group do in the simulator. A request that finds
the batcher idle (nothing queued, nothing computing) with ``max_wait_s`` 0 is served at once
in :meth:`ServerCore.submit`: the batcher would serve it alone anyway, and handing it over and
its answer back cost two passes of the event loop. Requests submitted after it, before the
batcher looks again, queue up and are grouped as usual.

Past ``max_queue`` queued images a request is refused at once (:class:`Overloaded`), and a
request still waiting for its first group ``max_queue_wait_s`` after it arrived is refused
then instead of served late, so the queue and the wait stay bounded however hard clients push,
whatever the network's speed: every request is answered or refused within about
``max_queue_wait_s`` plus one group's compute. (A queue bound alone bounds the wait only at a
known throughput: 256 queued images at the ResNet-18's 260 answers/s on this machine's
contended CPU were a 1.6 s wait.)

Background work (an online learner: bookkeeping, audits, update steps) runs one chunk at a
time when no request is in flight (none queued, and every answer delivered: the transport
says so with :meth:`ServerCore.finished`, or :meth:`ServerCore.predict` does), yielding to the
event loop after each, so an arriving request waits for at most the chunk running; work the
learner reports overdue runs one chunk between groups even under load, so it cannot starve
(the simulator's rules). Measured on the ResNet-18 with a 300-request closed loop: with
chunks allowed as soon as the queue emptied, they ran while the answers were still being
written, and gati-online's client p50 read 2.2 ms over its server-side p50. The learner swaps new
parameters in between groups, in one assignment, so every group sees one set.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from collections.abc import Callable

import numpy as np
from absl import logging

from gati_jax.runtime.router import RouteResult
from gati_jax.serving.loop import Background

# How long the server waits with nothing to serve before the learner's partial batch runs.
_IDLE_FLUSH_S = 0.05


class Overloaded(Exception):
    """The queue cannot take the request now: refused at once (HTTP 503)."""


class TooLarge(Exception):
    """The request holds more images than the queue could ever take (HTTP 413)."""


class Closed(Exception):
    """The server is stopping: the request was not served."""


@dataclasses.dataclass(eq=False)
class _Request:
    """One submitted request: its images, where its answers go, how far it is served."""

    images: np.ndarray
    future: asyncio.Future
    arrived: float  # perf_counter seconds
    answer: np.ndarray
    exit_stage: np.ndarray
    hit: np.ndarray
    taken: int = 0  # images put into groups so far
    served: int = 0  # images answered so far


@dataclasses.dataclass
class CoreStats:
    """What the core counted since it started."""

    requests: int = 0  # accepted
    refused: int = 0  # refused as overload on arrival
    shed: int = 0  # refused after waiting max_queue_wait_s
    images: int = 0  # answered
    groups: int = 0
    chunks: int = 0  # background chunks run
    failed_groups: int = 0  # groups whose route raised (their requests failed)
    background_failed: bool = False  # background work raised and was stopped


class ServerCore:
    """Groups submitted requests and routes them; see the module docstring.

    ``route(images) -> RouteResult`` answers one group of at most ``max_group`` images;
    ``on_group(result, seconds)`` (optional) is told of every group served, for metrics.
    Use from one event loop: :meth:`start` there, then :meth:`predict` or :meth:`submit`.
    """

    def __init__(
        self,
        route: Callable[[np.ndarray], RouteResult],
        *,
        max_group: int,
        max_wait_s: float,
        max_queue: int,
        max_queue_wait_s: float = float("inf"),
        background: Background | None = None,
        on_group: Callable[[RouteResult, float], None] | None = None,
    ):
        if int(max_group) < 1 or int(max_queue) < 1:
            raise ValueError(f"max_group and max_queue must be >= 1, got {max_group}, {max_queue}")
        if not max_wait_s >= 0 or not max_queue_wait_s > 0:
            raise ValueError(
                f"max_wait_s must be >= 0 and max_queue_wait_s > 0, got "
                f"{max_wait_s}, {max_queue_wait_s}"
            )
        self.route, self.background, self.on_group = route, background, on_group
        self.max_group, self.max_wait_s = int(max_group), float(max_wait_s)
        self.max_queue, self.max_queue_wait_s = int(max_queue), float(max_queue_wait_s)
        self.stats = CoreStats()
        self.queued = 0  # images waiting (not yet put into a group)
        self.in_flight = 0  # requests submitted and not yet finished
        self._queue: collections.deque[_Request] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._closed = False
        # The batcher waits with nothing queued: the next request may be served at once, in
        # its own handler (see submit).
        self._idle = False

    # ---- lifecycle ----------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """Whether the batcher is serving (started, not stopped)."""
        return self._task is not None and not self._closed

    def start(self) -> None:
        """Starts the batcher on the running event loop."""
        if self._task is not None:
            raise RuntimeError("the server core is running already")
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._batcher(), name="gati-batcher")
        self._task.add_done_callback(self._batcher_ended)

    async def stop(self) -> None:
        """Stops the batcher; requests still queued fail with :class:`Closed`."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while self._queue:
            request = self._queue.popleft()
            if not request.future.done():
                request.future.set_exception(Closed("the server is stopping"))
        self.queued = 0

    # ---- request side -------------------------------------------------------------------
    def submit(self, images: np.ndarray) -> asyncio.Future:
        """Queues a batch of validated images (N, H, W, C); returns the future of its
        RouteResult. Raises :class:`Overloaded` at once when the queue cannot take it,
        :class:`TooLarge` when it never could."""
        if self._closed or self._task is None:
            raise Closed("the server core is not running")
        n = len(images)
        if n > self.max_queue:
            raise TooLarge(
                f"a request of {n} images exceeds the queue's {self.max_queue} "
                "(server.max_queue); send smaller batches"
            )
        if self.queued + n > self.max_queue:
            self.stats.refused += 1
            raise Overloaded(f"{self.queued} images queued, {self.max_queue} at most")
        future = asyncio.get_running_loop().create_future()
        self._queue.append(
            _Request(
                images,
                future,
                time.perf_counter(),
                np.zeros(n, np.int32),
                np.zeros(n, np.int32),
                np.zeros(n, bool),
            )
        )
        self.queued += n
        self.in_flight += 1
        self.stats.requests += 1
        if self._idle and self.max_wait_s == 0 and n <= self.max_group:
            # Nothing queued and nothing computing: the batcher would serve this request alone
            # as soon as it ran, so serve it now, without the two event-loop passes that
            # hand it to the batcher and its answer back. Once: requests submitted before the
            # batcher looks again queue up and are grouped, as under load.
            self._idle = False
            self._serve_group()
            if self.background is not None:
                self._wake.set()  # the batcher decides on background work
            return future
        self._wake.set()
        return future

    def finished(self) -> None:
        """A submitted request's answer (or failure) has been delivered to its client: once
        none is in flight, background work may run."""
        self.in_flight -= 1
        if self.in_flight == 0 and self._wake is not None:
            self._wake.set()

    async def predict(self, images: np.ndarray) -> RouteResult:
        """Serves a batch of validated images: its answers, exit stages and hits."""
        future = self.submit(images)
        try:
            return await future
        finally:
            self.finished()

    # ---- the batcher ----------------------------------------------------------------------
    async def _batcher(self) -> None:
        while True:
            background = self.background
            self._drop_abandoned()
            if not self._queue:
                if background is not None and self.in_flight == 0 and background.pending():
                    self._run_chunk()
                    await asyncio.sleep(0)  # a request that arrived meanwhile goes first
                    continue
                self._wake.clear()
                self._idle = True
                try:
                    if background is None:
                        await self._wake.wait()
                        continue
                    # After _IDLE_FLUSH_S with nothing to serve, a batch of served groups not
                    # yet full is learnt from too: between requests it would delay the next.
                    try:
                        await asyncio.wait_for(self._wake.wait(), _IDLE_FLUSH_S)
                    except TimeoutError:
                        if self.in_flight == 0 and background.pending(idle=True):
                            self._run_chunk()
                finally:
                    self._idle = False
                continue
            if self.queued < self.max_group and self.max_wait_s > 0:
                remaining = self._queue[0].arrived + self.max_wait_s - time.perf_counter()
                if remaining > 0:
                    # Until the group fills (every submit wakes us to look) or the oldest
                    # image has waited max_wait_s.
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), remaining)
                    except TimeoutError:
                        pass
                    continue
            self._serve_group()
            if self.background is not None and self.background.overdue():
                self._run_chunk()
            # Let the requests that arrived during the group in before the next one closes.
            await asyncio.sleep(0)

    def _drop_abandoned(self) -> None:
        """Forgets queued requests whose client gave up (their future was cancelled)."""
        while self._queue and self._queue[0].future.done():
            request = self._queue.popleft()
            self.queued -= len(request.images) - request.taken

    def _take_group(self) -> list[tuple[_Request, int, int]]:
        """Up to max_group images from the front of the queue: (request, start, stop)."""
        parts, size = [], 0
        late = time.perf_counter() - self.max_queue_wait_s
        while self._queue and size < self.max_group:
            request = self._queue[0]
            if request.taken == 0 and request.arrived < late and not request.future.done():
                self.stats.shed += 1
                request.future.set_exception(
                    Overloaded(
                        f"waited {1e3 * (time.perf_counter() - request.arrived):.0f} ms in the "
                        f"queue, over {1e3 * self.max_queue_wait_s:.0f} ms"
                    )
                )
            if request.future.done():  # abandoned, failed or shed: nothing more to serve
                self._queue.popleft()
                self.queued -= len(request.images) - request.taken
                continue
            start = request.taken
            stop = min(len(request.images), start + self.max_group - size)
            parts.append((request, start, stop))
            request.taken = stop
            size += stop - start
            self.queued -= stop - start
            if stop == len(request.images):
                self._queue.popleft()
        return parts

    def _serve_group(self) -> None:
        parts = self._take_group()
        if not parts:
            return
        images = (
            parts[0][0].images
            if len(parts) == 1 and parts[0][1] == 0 and parts[0][2] == len(parts[0][0].images)
            else np.concatenate([r.images[a:b] for r, a, b in parts])
        )
        started = time.perf_counter()
        try:
            result = self.route(images)
            answer, exit_stage, hit = (np.asarray(v) for v in result)
        except Exception as error:  # one bad group must not stop the server
            self.stats.failed_groups += 1
            for request, _, _ in parts:
                if not request.future.done():
                    request.future.set_exception(error)
            return
        seconds = time.perf_counter() - started
        self.stats.groups += 1
        self.stats.images += len(images)
        offset = 0
        for request, start, stop in parts:
            rows = slice(offset, offset + stop - start)
            request.answer[start:stop] = answer[rows]
            request.exit_stage[start:stop] = exit_stage[rows]
            request.hit[start:stop] = hit[rows]
            request.served += stop - start
            offset += stop - start
            if request.served == len(request.images) and not request.future.done():
                request.future.set_result(
                    RouteResult(request.answer, request.exit_stage, request.hit)
                )
        if self.on_group is not None:
            self.on_group(RouteResult(answer, exit_stage, hit), seconds)

    def _run_chunk(self) -> None:
        try:
            self.background.run_chunk()
        except Exception:  # learning stops; serving, at the last good parameters, goes on
            logging.exception("background work failed; the server goes on without it")
            self.stats.background_failed = True
            self.background = None
            return
        self.stats.chunks += 1

    def _batcher_ended(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            logging.error("the batcher stopped: %r", task.exception())
            self._closed = True
            while self._queue:  # nobody would answer them: fail them now, never hang
                request = self._queue.popleft()
                if not request.future.done():
                    request.future.set_exception(Closed("the batcher stopped"))
            self.queued = 0
