"""The serving loop: requests arrive, are grouped, and each group runs through the router.

One single-threaded event loop, because the compute is one device: groups run one after
another. A group closes when it holds ``max_group`` requests or its oldest request has waited
``max_wait_s``; requests that arrive while a group runs queue up for the next one. Requests
are served first come, first served, so every group is a contiguous run of the stream.

Optional ``background`` work (online learning: audits, update steps) runs in chunks while the
loop is idle, i.e. no request is queued; a request that arrives during a chunk waits for it to
end, and that wait is part of its latency. Work the background reports ``overdue`` runs one
chunk between groups even when requests are queued, so it cannot starve.

The loop knows nothing of the router: it calls ``route_group(images, index)`` and reads the
answer, exit stage and hit of each request from what comes back (a ``RouteResult`` or any
``(answer, exit_stage, hit)`` triple).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Generator
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from gati_jax.serving.clock import Clock, MonotonicClock

MODES = ("open", "closed")

RouteGroup = Callable[[np.ndarray, np.ndarray], Any]


class Background(Protocol):
    """Work the serving loop runs when it has time (e.g. an OnlineLearner)."""

    def pending(self, idle: bool = False) -> bool:
        """Whether there is work to run (``idle``: also work worth running only when nothing
        has arrived for a while)."""
        ...

    def overdue(self) -> bool:
        """Whether the work has waited so long it must run even with requests queued."""
        ...

    def run_chunk(self) -> None:
        """Runs one short piece of the work."""
        ...


@dataclasses.dataclass(frozen=True)
class ServingResult:
    """Per request, in stream (= arrival) order; times in seconds from the loop's start."""

    answer: np.ndarray  # int, the served answer
    exit_stage: np.ndarray  # int, the stage the request exited after
    hit: np.ndarray  # bool, whether a cache hit
    arrival: np.ndarray  # when the request arrived (closed loop: when its client sent it)
    start: np.ndarray  # when its group was dispatched
    finish: np.ndarray  # when its group's compute ended
    latency: np.ndarray  # finish - arrival = queueing + compute
    queueing: np.ndarray  # start - arrival
    compute: np.ndarray  # finish - start
    group: np.ndarray  # int, index of the group that served it
    group_size: np.ndarray  # int, size of that group
    duration: float  # first arrival to last finish
    groups: int  # number of groups run

    def __len__(self) -> int:
        return len(self.answer)


def serve(
    route_group: RouteGroup,
    images: np.ndarray,
    *,
    arrivals: np.ndarray | None = None,
    mode: str = "open",
    max_group: int = 8,
    max_wait_s: float = 0.002,
    concurrency: int = 1,
    clock: Clock | None = None,
    progress: bool = True,
    background: Background | None = None,
) -> ServingResult:
    """Serves a stream of requests in groups; returns per-request answers and timings (see
    :func:`serve_steps` for the grouping rules)."""
    return _finish(
        serve_steps(
            route_group,
            images,
            arrivals=arrivals,
            mode=mode,
            max_group=max_group,
            max_wait_s=max_wait_s,
            concurrency=concurrency,
            clock=clock,
            progress=progress,
            background=background,
        )
    )


def _finish(steps: Generator[int, None, ServingResult]) -> ServingResult:
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


def serve_interleaved(
    loops: dict[str, Generator[int, None, ServingResult]],
    turn: int = 25,
    seed: int | None = None,
) -> dict[str, ServingResult]:
    """Advances several serving loops in turns of ``turn`` groups each, round-robin, until all
    end; returns each one's result.

    For comparing policies under the same machine noise: a burst of noise lands on every
    loop's requests alike instead of on one policy's whole stream. Each loop needs its own
    virtual or fake clock (a real clock would count the other loops' turns as waiting).
    With a ``seed`` the loops take their turns in a new random order every pass, so no loop
    always follows the same other one (whatever a turn leaves behind, in caches or in work
    still running, falls on every successor alike).
    """
    if turn < 1:
        raise ValueError(f"turn must be >= 1 group, got {turn}")
    rng = None if seed is None else np.random.default_rng(seed)
    results: dict[str, ServingResult] = {}
    active = dict(loops)
    while active:
        names = list(active)
        if rng is not None:
            names = [names[i] for i in rng.permutation(len(names))]
        for name in names:
            try:
                for _ in range(turn):
                    next(active[name])
            except StopIteration as stop:
                results[name] = stop.value
                del active[name]
    return {name: results[name] for name in loops}


def serve_steps(
    route_group: RouteGroup,
    images: np.ndarray,
    *,
    arrivals: np.ndarray | None = None,
    mode: str = "open",
    max_group: int = 8,
    max_wait_s: float = 0.002,
    concurrency: int = 1,
    clock: Clock | None = None,
    progress: bool = True,
    background: Background | None = None,
) -> Generator[int, None, ServingResult]:
    """The serving loop as a generator: yields after each group (the groups served so far)
    and returns the ServingResult; :func:`serve` runs it to the end.

    open: request ``i`` arrives ``arrivals[i]`` seconds after the start. closed:
    ``concurrency`` clients each send the next request of the stream the moment their previous
    one is answered (the first ones at 0); ``arrivals`` is ignored. A closed-loop group smaller
    than ``max_group`` still waits ``max_wait_s``, as a server that cannot know no request is
    coming would. ``clock`` defaults to the real monotonic clock. ``background`` work runs
    as the module docstring says; its chunks are timed on the clock like groups (size 0).
    """
    n = len(images)
    arrival = _check_inputs(n, arrivals, mode, max_group, max_wait_s, concurrency)
    clock = MonotonicClock() if clock is None else clock
    max_group, max_wait_s = int(max_group), float(max_wait_s)
    # Requests arrive in stream order in both modes; `known` counts those whose arrival time is
    # decided (all of them in open mode, the ones sent so far in closed mode).
    known = n if mode == "open" else min(int(concurrency), n)
    answer = np.zeros(n, np.int64)
    exit_stage = np.zeros(n, np.int64)
    hit = np.zeros(n, bool)
    start = np.zeros(n)
    finish = np.zeros(n)
    group = np.zeros(n, np.int64)
    group_size = np.zeros(n, np.int64)
    origin = clock.now()
    now = 0.0
    served = admitted = groups = 0  # the queue holds requests served..admitted-1

    def advance(t: float) -> float:
        # Kept monotone and at least t: a clock's float round-off must not un-admit a request
        # that arrived exactly when the loop woke up for it.
        return max(clock.now() - origin, t)

    with tqdm(total=n, desc="serving", unit="req", disable=not progress) as bar:
        while served < n:
            while admitted < known and arrival[admitted] <= now:
                admitted += 1
            if admitted == served:
                # Idle with nothing queued: only possible in open mode, before the next arrival.
                if background is not None and background.pending():
                    _, seconds = clock.run(background.run_chunk, 0)
                    now = advance(now + seconds)
                    continue
                clock.wait_until(origin + arrival[admitted])
                now = advance(arrival[admitted])
                continue
            if admitted - served < max_group:
                close = arrival[served] + max_wait_s
                filler = served + max_group - 1  # the request that would fill the group
                if filler < known:
                    close = min(close, arrival[filler])
                if close > now:
                    clock.wait_until(origin + close)
                    now = advance(close)
                    while admitted < known and arrival[admitted] <= now:
                        admitted += 1
            size = min(max_group, admitted - served)
            index = np.arange(served, served + size)
            now = advance(now)
            result, seconds = clock.run(functools.partial(_run, route_group, images, index), size)
            _store(result, size, index, answer, exit_stage, hit)
            start[index], finish[index] = now, now + seconds
            group[index], group_size[index] = groups, size
            now = advance(now + seconds)
            served += size
            groups += 1
            if mode == "closed":
                # Each answered client sends its next request the moment its answer arrives.
                sent = min(size, n - known)
                arrival[known : known + sent] = finish[index[0]]
                known += sent
            if background is not None and background.overdue():
                _, seconds = clock.run(background.run_chunk, 0)
                now = advance(now + seconds)
            bar.update(size)
            yield groups
    return ServingResult(
        answer=answer,
        exit_stage=exit_stage,
        hit=hit,
        arrival=arrival,
        start=start,
        finish=finish,
        latency=finish - arrival,
        queueing=start - arrival,
        compute=finish - start,
        group=group,
        group_size=group_size,
        duration=float(finish[-1] - arrival[0]),
        groups=groups,
    )


def _check_inputs(
    n: int,
    arrivals: np.ndarray | None,
    mode: str,
    max_group: int,
    max_wait_s: float,
    concurrency: int,
) -> np.ndarray:
    """Validates the loop's arguments; returns the arrival array the loop fills in."""
    if mode not in MODES:
        raise ValueError(f"unknown serving mode {mode!r}; expected one of {MODES}")
    if n == 0:
        raise ValueError("cannot serve an empty request stream")
    if not int(max_group) >= 1:
        raise ValueError(f"max_group must be >= 1, got {max_group}")
    if not (max_wait_s >= 0 and math.isfinite(max_wait_s)):
        raise ValueError(f"max_wait_s must be finite and >= 0, got {max_wait_s}")
    if not int(concurrency) >= 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if mode == "closed":
        return np.zeros(n)
    if arrivals is None:
        raise ValueError("open-loop serving needs arrivals (seconds from the start)")
    arrival = np.array(arrivals, np.float64)
    if arrival.shape != (n,):
        raise ValueError(f"arrivals must have shape ({n},), one per image, got {arrival.shape}")
    if not np.all(np.isfinite(arrival)):
        raise ValueError("arrivals must be finite")
    if np.any(np.diff(arrival) < 0):
        raise ValueError("arrivals must be nondecreasing (requests are served in stream order)")
    if arrival[0] < 0:
        raise ValueError(f"arrivals must be >= 0 (seconds from the start), got {arrival[0]}")
    return arrival


def _run(
    route_group: RouteGroup, images: np.ndarray, index: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # Gathering the group's images is part of serving it, so it is timed with the compute;
    # np.asarray blocks on device arrays, so the clock times the compute, not its dispatch.
    result = route_group(images[index], index)
    try:
        answer, exit_stage, hit = result
    except (TypeError, ValueError):
        raise ValueError(
            "route_group must return (answer, exit_stage, hit), e.g. a "
            f"RouteResult; got {type(result).__name__}"
        ) from None
    return np.asarray(answer), np.asarray(exit_stage), np.asarray(hit)


def _store(
    result: tuple[np.ndarray, np.ndarray, np.ndarray],
    size: int,
    index: np.ndarray,
    answer: np.ndarray,
    exit_stage: np.ndarray,
    hit: np.ndarray,
) -> None:
    for name, value, out in zip(("answer", "exit_stage", "hit"), result, (answer, exit_stage, hit)):
        if value.shape != (size,):
            raise ValueError(
                f"route_group returned {name} of shape {value.shape} for a group "
                f"of {size} requests (requests {index[0]}..{index[-1]}); "
                f"expected ({size},)"
            )
        out[index] = value
