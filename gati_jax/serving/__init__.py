"""Serving: a request stream grouped and run through the router, with per-request latency."""

from gati_jax.serving.clock import (
    CLOCKS,
    Clock,
    FakeClock,
    MonotonicClock,
    VirtualClock,
    make_clock,
)
from gati_jax.serving.loop import MODES, ServingResult, serve, serve_interleaved, serve_steps
from gati_jax.serving.summary import summarize, windowed

__all__ = [
    "CLOCKS",
    "MODES",
    "Clock",
    "FakeClock",
    "MonotonicClock",
    "ServingResult",
    "VirtualClock",
    "make_clock",
    "serve",
    "serve_interleaved",
    "serve_steps",
    "summarize",
    "windowed",
]
