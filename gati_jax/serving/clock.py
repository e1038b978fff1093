"""Clocks for the serving loop: real (monotonic), virtual (simulated waits) and fake (tests).

The loop only asks a clock for the time, to wait until a time, and to run a group's compute;
which clock it gets decides whether waiting and computing are real, simulated or scripted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol, TypeVar

T = TypeVar("T")

CLOCKS = ("virtual", "real")

# time.sleep overshoots by up to a scheduler tick; the last stretch is spun for precision.
_SPIN_S = 2e-4


class Clock(Protocol):
    """What the serving loop needs of time: read it, wait for it, and time a computation."""

    def now(self) -> float:
        """Current time in seconds (any origin; the loop measures relative to its start)."""
        ...

    def wait_until(self, t: float) -> None:
        """Returns once ``now() >= t``; at once if that time has passed."""
        ...

    def run(self, fn: Callable[[], T], size: int = 1) -> tuple[T, float]:
        """Runs ``fn`` (serving ``size`` requests); returns its result and compute seconds."""
        ...


class MonotonicClock:
    """Wall time on ``time.perf_counter``: waits really sleep, compute is really measured."""

    def now(self) -> float:
        """Seconds on the monotonic performance counter."""
        return time.perf_counter()

    def wait_until(self, t: float) -> None:
        """Sleeps until ``t``, spinning the last ~0.2 ms so wake-up is not a tick late."""
        remaining = t - time.perf_counter()
        if remaining > _SPIN_S:
            time.sleep(remaining - _SPIN_S)
        while time.perf_counter() < t:
            pass

    def run(self, fn: Callable[[], T], size: int = 1) -> tuple[T, float]:
        """Runs ``fn`` and measures it on the performance counter."""
        start = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - start


class VirtualClock:
    """A discrete-event simulation clock: compute times are real measurements, waits are not.

    ``wait_until`` jumps virtual time forward instead of sleeping, so a long stream at a low
    arrival rate replays in the time its compute takes; ``run`` advances virtual time by the
    compute's measured wall time. The loop's own bookkeeping costs no virtual time.
    """

    def __init__(self, start: float = 0.0):
        self._now = float(start)

    def now(self) -> float:
        """Current virtual time in seconds."""
        return self._now

    def wait_until(self, t: float) -> None:
        """Jumps virtual time to ``t`` (never backwards)."""
        self._now = max(self._now, float(t))

    def run(self, fn: Callable[[], T], size: int = 1) -> tuple[T, float]:
        """Runs ``fn``, measures it for real and advances virtual time by that much."""
        start = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - start
        self._now += seconds
        return out, seconds


class FakeClock(VirtualClock):
    """A scripted clock for tests: a group of ``n`` requests costs exactly ``cost(n)`` seconds
    (waiting is simulated as on the virtual clock)."""

    def __init__(self, cost: Callable[[int], float], start: float = 0.0):
        super().__init__(start)
        self.cost = cost

    def run(self, fn: Callable[[], T], size: int = 1) -> tuple[T, float]:
        """Runs ``fn`` and advances fake time by ``cost(size)``, whatever ``fn`` really took."""
        out = fn()
        seconds = float(self.cost(size))
        if not seconds >= 0:
            raise ValueError(f"FakeClock cost({size}) must be >= 0, got {seconds}")
        self._now += seconds
        return out, seconds


def make_clock(name: str) -> Clock:
    """The clock named by ``config.serving.clock``: "virtual" or "real"."""
    if name == "virtual":
        return VirtualClock()
    if name == "real":
        return MonotonicClock()
    raise ValueError(f"unknown clock {name!r}; expected one of {CLOCKS}")
