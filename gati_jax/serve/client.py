"""An async load generator: replays images against a server's ``/v1/predict`` and records what
every request saw, measured by the client.

Open loop: request ``i`` is sent at ``arrivals[i]`` seconds from the start whatever the server
does (a Poisson process at a rate: :func:`poisson_schedule`), the way independent users
arrive; closed loop: ``concurrency`` clients each send their next request the moment their
last one is answered. Both are bounded: at most ``len(images)`` requests, none sent after
``duration_s``, each given up after ``timeout_s`` (recorded as lost, status 0). One image per
request, as ``.npy`` bytes (encoded before the clock starts) or JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from gati_jax.serve.http_client import HttpClient

MODES = ("open", "closed")
PAYLOADS = ("npy", "json")


@dataclasses.dataclass(frozen=True)
class LoadResult:
    """Per request, in stream order; requests never sent (time or count ran out) are absent.
    Times in seconds from the run's start."""

    index: np.ndarray  # int, the image's index in the stream
    sent: np.ndarray  # when it was sent
    latency: np.ndarray  # answer (or refusal) time - sent; NaN when lost
    status: np.ndarray  # int, the HTTP status; 0: lost (timeout, connection error)
    answer: np.ndarray  # int, the served class; -1 unless status 200
    exit_stage: np.ndarray  # int, -1 unless status 200
    hit: np.ndarray  # bool
    server_ms: np.ndarray  # the server's own latency figure; NaN unless status 200
    lag: np.ndarray  # open loop: sent - scheduled, how far the client fell behind
    duration: float  # first send to last answer

    def __len__(self) -> int:
        return len(self.index)


def poisson_schedule(count: int, rate: float, seed: int = 0) -> np.ndarray:
    """Send times (s) of ``count`` requests arriving as a Poisson process at ``rate`` per
    second, the first at 0."""
    if not rate > 0:
        raise ValueError(f"rate must be > 0 requests per second, got {rate}")
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, count)
    gaps[0] = 0.0
    return np.cumsum(gaps)


def encode(image: np.ndarray, payload: str = "npy") -> tuple[bytes, str]:
    """One image as a request body and its content type."""
    if payload == "npy":
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(image), allow_pickle=False)
        return buffer.getvalue(), "application/x-npy"
    if payload == "json":
        return json.dumps({"image": np.asarray(image).tolist()}).encode(), "application/json"
    raise ValueError(f"unknown payload {payload!r}; expected one of {PAYLOADS}")


@contextlib.asynccontextmanager
async def _polling(busy: bool) -> AsyncIterator[None]:
    """With ``busy``, keeps the event loop polling (never sleeping in the selector) inside the
    block, however it ends."""

    async def spin() -> None:
        while True:
            await asyncio.sleep(0)

    spinner = asyncio.get_running_loop().create_task(spin()) if busy else None
    try:
        yield
    finally:
        if spinner is not None:
            spinner.cancel()


async def run_load(
    url: str,
    images: np.ndarray,
    *,
    mode: str = "closed",
    arrivals: np.ndarray | None = None,
    concurrency: int = 1,
    duration_s: float | None = None,
    timeout_s: float = 10.0,
    payload: str = "npy",
    max_connections: int = 1024,
    busy_poll: bool = False,
) -> LoadResult:
    """Sends ``images`` (one per request) to ``url`` (the server's base URL) open or closed
    loop (see the module docstring); returns what every sent request saw.

    ``busy_poll``: the client's event loop polls instead of sleeping while it waits, so an
    answer does not first have to wake the client's process (slow on virtual CPUs): what is
    left is the server's latency and the network's, at the price of one busy core."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    n = len(images)
    if n == 0:
        raise ValueError("no images to send")
    if mode == "open":
        if arrivals is None or len(arrivals) != n:
            raise ValueError("open loop needs one arrival time per image (arrivals=...)")
    elif int(concurrency) < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    bodies = [encode(image, payload) for image in images]
    sent = np.full(n, np.nan)
    done = np.full(n, np.nan)
    status = np.zeros(n, np.int64)
    answer = np.full(n, -1, np.int64)
    exit_stage = np.full(n, -1, np.int64)
    hit = np.zeros(n, bool)
    server_ms = np.full(n, np.nan)
    limit = float("inf") if duration_s is None else float(duration_s)
    async with _polling(busy_poll), HttpClient(url, max_connections) as http:
        origin = time.perf_counter()

        async def one(i: int) -> None:
            body, content_type = bodies[i]
            start = time.perf_counter()
            sent[i] = start - origin
            try:
                async with asyncio.timeout(timeout_s):
                    code, text = await http.post("/v1/predict", body, content_type)
                done[i] = time.perf_counter() - origin
            except (TimeoutError, OSError):
                status[i] = 0  # lost: no answer and no refusal in time
                return
            status[i] = code
            if code == 200:
                reply = json.loads(text)
                answer[i] = reply["classes"][0]
                exit_stage[i] = reply["exit_positions"][0]
                hit[i] = reply["hits"][0]
                server_ms[i] = reply["server_ms"]

        if mode == "open":
            tasks = []
            for i in range(n):
                if arrivals[i] > limit:
                    break
                delay = origin + arrivals[i] - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(i)))
            await asyncio.gather(*tasks)
        else:
            cursor = iter(range(n))

            async def client() -> None:
                for i in cursor:
                    if time.perf_counter() - origin > limit:
                        return
                    await one(i)

            await asyncio.gather(*(client() for _ in range(int(concurrency))))
    index = np.flatnonzero(np.isfinite(sent))
    finished = done[index]
    end = np.nanmax(finished) if np.isfinite(finished).any() else 0.0
    return LoadResult(
        index=index,
        sent=sent[index],
        latency=finished - sent[index],
        status=status[index],
        answer=answer[index],
        exit_stage=exit_stage[index],
        hit=hit[index],
        server_ms=server_ms[index],
        lag=(sent[index] - arrivals[index] if mode == "open" else np.zeros(len(index))),
        duration=float(end - (sent[index].min() if len(index) else 0.0)),
    )


def summarize_load(
    result: LoadResult, base_answers: np.ndarray | None = None, labels: np.ndarray | None = None
) -> dict[str, Any]:
    """Client-side latency (ms) of the answered requests: p50, p99, mean; throughput (answers
    per second); errors by status; and, given the stream's ``base_answers`` (the plain
    network's) and ``labels``, agreement and accuracy of the answers."""
    ok = result.status == 200
    ms = 1e3 * result.latency[ok]
    errors: dict[str, int] = {}
    for code in np.unique(result.status[~ok]):
        errors["lost" if code == 0 else str(int(code))] = int(np.sum(result.status == code))
    refused = result.status == 503
    summary = {
        "requests": len(result),
        "answered": int(ok.sum()),
        "errors": errors,
        "p50_ms": float(np.percentile(ms, 50)) if ms.size else float("nan"),
        "p99_ms": float(np.percentile(ms, 99)) if ms.size else float("nan"),
        "mean_ms": float(ms.mean()) if ms.size else float("nan"),
        "server_p50_ms": (
            float(np.percentile(result.server_ms[ok], 50)) if ms.size else float("nan")
        ),
        "throughput_rps": float(ok.sum() / result.duration) if result.duration > 0 else 0.0,
        "hit_rate": float(result.hit[ok].mean()) if ms.size else float("nan"),
        # Answered or refused: the slowest of either, the bound the overload test checks.
        "max_answer_or_refusal_ms": (
            float(1e3 * np.nanmax(result.latency[ok | refused]))
            if (ok | refused).any()
            else float("nan")
        ),
        "duration_s": result.duration,
        # Open loop: the client's own delay in sending (large: the client, not the server,
        # was the bottleneck, and its latencies are inflated too).
        "client_max_lag_ms": float(1e3 * result.lag.max()) if len(result) else 0.0,
    }
    if base_answers is not None and ms.size:
        summary["agreement"] = float(
            np.mean(result.answer[ok] == np.asarray(base_answers)[result.index[ok]])
        )
    if labels is not None and ms.size:
        summary["accuracy"] = float(
            np.mean(result.answer[ok] == np.asarray(labels)[result.index[ok]])
        )
    return summary
