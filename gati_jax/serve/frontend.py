"""The HTTP front end over the server core: a bare ASGI application served by uvicorn (the
httptools parser, asyncio's event loop).

- ``POST /v1/predict``: one image or a batch, as raw ``.npy`` bytes (``np.save``; an array of
  shape (H, W, C) is one image, (N, H, W, C) a batch) or JSON (``{"image": [[[...]]]}``,
  ``{"images": [...]}`` or the bare nested list; integers are read as uint8 pixels). Answers
  ``{"classes": [...], "exit_positions": [...], "hits": [...], "server_ms": ...}``, one entry
  per image (lists for one image too); ``exit_positions`` holds the stage each image exited
  after (the last stage when no cache hit); ``server_ms`` runs from the request's arrival to
  its answer (body read, queueing, the group's compute).
- ``GET /healthz``: ``{"status": "ok", ...}`` while serving.
- ``GET /metrics``: Prometheus text format (gati_jax/serve/metrics.py).

Errors answer JSON ``{"error": "..."}`` naming the problem and never stop the server: a
malformed or wrong-shape payload 400, an unknown path 404, a wrong method 405, a body over
``server.max_body_bytes`` or a batch over ``server.max_queue`` 413, overload 503 with
``Retry-After`` (the queue full on arrival, or ``server.max_queue_wait_ms`` waited without a
group), a failed group 500.

Why not a framework: a network of 1-5 ms cannot afford a front end's fraction of a
millisecond, and side by side (``scripts/load_test.py``, docs/serving.md) this application
on uvicorn answered sooner than the same handler on aiohttp.

After each request the event loop keeps polling for ``server.idle_poll_ms`` before it
sleeps: on virtual CPUs a process woken from sleep by the next request's bytes starts it
later than one that never slept. The price is up to that long of one busy core per request
when requests are sparse; 0 turns it off.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import ml_collections
import numpy as np
import uvicorn

from gati_jax.input_checks import check_images
from gati_jax.serve.core import Closed, Overloaded, ServerCore, TooLarge
from gati_jax.serve.engine import Engine
from gati_jax.serve.metrics import CONTENT_TYPE, ServerMetrics

NPY_MAGIC = b"\x93NUMPY"
JSON = b"application/json"
Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


class PayloadError(ValueError):
    """A request body that is not one image or a batch of this network's inputs (HTTP 400)."""


def decode_images(
    body: bytes,
    content_type: str,
    input_shape: tuple[int, ...],
    input_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """The images in a request body, validated, as a batch (N, H, W, C); raises
    :class:`PayloadError` naming what is wrong."""
    shape = tuple(input_shape)
    if not body:
        raise PayloadError("empty body: send one image or a batch as .npy bytes or JSON")
    if body.startswith(NPY_MAGIC):
        array = _npy_array(body)
    elif "json" in content_type or body[:1] in (b"{", b"["):
        array = _json_array(body)
    else:
        raise PayloadError(
            f"unrecognised body (content type {content_type or 'none'!r}): "
            "send .npy bytes (np.save) or JSON"
        )
    if array.shape == shape:
        array = array[None]
    elif array.ndim != len(shape) + 1 or tuple(array.shape[1:]) != shape:
        raise PayloadError(
            f"images must have shape {shape} (one image) or (batch, "
            f"{', '.join(map(str, shape))}), got {array.shape}"
        )
    if np.issubdtype(array.dtype, np.integer) and array.dtype != np.uint8:
        if array.size and (array.min() < 0 or array.max() > 255):
            raise PayloadError(
                f"integer pixels must lie in [0, 255], got [{array.min()}, {array.max()}]"
            )
        array = array.astype(np.uint8)
    try:
        return check_images(array, shape, input_range)
    except (TypeError, ValueError) as error:
        raise PayloadError(str(error)) from None


# .npy headers seen (bytes -> dtype, shape, Fortran order, data offset): a client sends the
# same header every time, and parsing it (np.load) was half of a request's decoding (50 us).
_NPY_HEADERS: dict[bytes, tuple[np.dtype, tuple[int, ...], bool, int]] = {}


def _npy_array(body: bytes) -> np.ndarray:
    """The array in .npy bytes (read-only, no copy); PayloadError if they are not one."""
    version = body[6:7]
    size_bytes = 2 if version == b"\x01" else 4
    start = 8 + size_bytes
    if len(body) < start:
        raise PayloadError("malformed .npy payload: truncated header")
    end = start + int.from_bytes(body[8:start], "little")
    header = body[:end]
    parsed = _NPY_HEADERS.get(header)
    if parsed is None:
        try:
            stream = io.BytesIO(header)
            major, _ = np.lib.format.read_magic(stream)
            read = (
                np.lib.format.read_array_header_1_0
                if major == 1
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read(stream)
        except Exception as error:  # numpy raises several types for a broken header
            raise PayloadError(f"malformed .npy payload: {error}") from None
        if dtype.hasobject:
            raise PayloadError("malformed .npy payload: object arrays are not images")
        parsed = (dtype, tuple(shape), bool(fortran), end)
        if len(_NPY_HEADERS) < 256:
            _NPY_HEADERS[header] = parsed
    dtype, shape, fortran, offset = parsed
    count = int(np.prod(shape))
    if len(body) - offset != count * dtype.itemsize:
        raise PayloadError(
            f"malformed .npy payload: {len(body) - offset} data bytes for an "
            f"array of shape {shape} and dtype {dtype}"
        )
    array = np.frombuffer(body, dtype, count=count, offset=offset)
    return array.reshape(shape, order="F" if fortran else "C")


def _json_array(body: bytes) -> np.ndarray:
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PayloadError(f"malformed JSON: {error}") from None
    if isinstance(payload, dict):
        keys = [k for k in ("image", "images") if k in payload]
        if len(keys) != 1:
            raise PayloadError(
                "a JSON object must hold exactly one of 'image' (one image) "
                f"or 'images' (a batch), got keys {sorted(payload)[:5]}"
            )
        payload = payload[keys[0]]
        if keys[0] == "images" and not isinstance(payload, list):
            raise PayloadError("'images' must be a list of images")
    try:
        array = np.asarray(payload)
    except ValueError as error:  # ragged nesting
        raise PayloadError(f"the JSON images are not a regular array: {error}") from None
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise PayloadError(f"the JSON images must hold numbers, got {array.dtype}")
    return array


class _TooLargeBody(Exception):
    """The request body is over ``server.max_body_bytes``."""


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = JSON,
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class FrontEnd:
    """The ASGI application serving an engine (see the module docstring): ``core`` (its
    :class:`ServerCore`, with ``stats``) and ``metrics`` (:class:`ServerMetrics`) are what it
    serves and counts."""

    def __init__(
        self,
        engine: Engine,
        serving: ml_collections.ConfigDict,
        server: ml_collections.ConfigDict,
    ):
        self.engine = engine
        self.metrics = ServerMetrics(engine, lambda: self.core.queued)
        self.core = ServerCore(
            engine.route,
            max_group=int(serving.max_group),
            max_wait_s=float(serving.max_wait_ms) / 1e3,
            max_queue=int(server.max_queue),
            max_queue_wait_s=float(server.max_queue_wait_ms) / 1e3,
            background=engine.learner,
            on_group=self.metrics.group,
        )
        self._max_body = int(server.max_body_bytes)
        self._retry = ((b"retry-after", str(int(server.retry_after_s)).encode()),)
        self._poll_s = float(server.idle_poll_ms) / 1e3
        self._last = 0.0  # perf_counter of the last request's arrival or answer
        self._arrived: asyncio.Event | None = None
        self._poller: asyncio.Task | None = None

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        self._last = time.perf_counter()
        if self._arrived is not None:
            self._arrived.set()
        path, method = scope["path"], scope["method"]
        routes = {"/v1/predict": "POST", "/healthz": "GET", "/metrics": "GET"}
        if path not in routes:
            message = f"no such path {path!r}: {sorted(routes)}"
            await _respond(send, 404, json.dumps({"error": message}).encode())
        elif method != routes[path]:
            message = f"{path} takes {routes[path]}, not {method}"
            await _respond(send, 405, json.dumps({"error": message}).encode())
        elif path == "/v1/predict":
            await self._predict(scope, receive, send)
        elif path == "/healthz":
            await self._healthz(send)
        else:
            await _respond(send, 200, self.metrics.render(), CONTENT_TYPE.encode())
        self._last = time.perf_counter()

    # ---- lifecycle ----------------------------------------------------------------------
    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.core.start()
                if self._poll_s > 0:
                    self._arrived = asyncio.Event()
                    self._poller = asyncio.get_running_loop().create_task(self._poll())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._poller is not None:
                    self._poller.cancel()
                await self.core.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _poll(self) -> None:
        """Keeps the loop polling (never sleeping in the selector) until ``idle_poll_ms``
        after the last request, then sleeps until the next arrives."""
        while True:
            if time.perf_counter() - self._last < self._poll_s:
                await asyncio.sleep(0)
            else:
                self._arrived.clear()
                await self._arrived.wait()

    # ---- endpoints ----------------------------------------------------------------------
    async def _error(
        self,
        send: Send,
        status: int,
        outcome: str,
        message: str,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        self.metrics.request(outcome)
        await _respond(send, status, json.dumps({"error": message}).encode(), JSON, headers)

    async def _body(self, length: bytes, receive: Receive) -> bytes:
        if length.isdigit() and int(length) > self._max_body:
            raise _TooLargeBody
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._max_body:
                raise _TooLargeBody
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)

    async def _predict(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        core = self.core
        headers = dict(scope["headers"])
        try:
            body = await self._body(headers.get(b"content-length", b""), receive)
        except _TooLargeBody:
            await self._error(
                send,
                413,
                "too_large",
                f"the body exceeds {self._max_body} bytes "
                "(server.max_body_bytes); send smaller batches",
            )
            return
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        try:
            images = decode_images(
                body, content_type, self.engine.input_shape, self.engine.input_range
            )
        except PayloadError as bad:
            await self._error(send, 400, "bad_request", str(bad))
            return
        try:
            future = core.submit(images)
        except TooLarge as big:
            await self._error(send, 413, "too_large", str(big))
            return
        except Overloaded as busy:
            await self._error(
                send, 503, "overloaded", f"overloaded: {busy}; retry later", self._retry
            )
            return
        except Closed as closed:
            await self._error(send, 503, "error", str(closed), self._retry)
            return
        try:
            try:
                result = await future
            except Overloaded as late:  # waited too long in the queue
                await self._error(
                    send, 503, "overloaded", f"overloaded: {late}; retry later", self._retry
                )
                return
            except Exception as failed:  # a group that failed, or the server stopping
                await self._error(send, 500, "error", f"{type(failed).__name__}: {failed}")
                return
            seconds = time.perf_counter() - started
            self.metrics.request("ok", seconds)
            # Written out before the core may turn to background work (see core.py).
            await _respond(
                send,
                200,
                json.dumps(
                    {
                        "classes": result.answer.tolist(),
                        "exit_positions": result.exit_stage.tolist(),
                        "hits": result.hit.tolist(),
                        "server_ms": 1e3 * seconds,
                    }
                ).encode(),
            )
        finally:
            core.finished()

    async def _healthz(self, send: Send) -> None:
        ok = self.core.running
        engine = self.engine
        body = {
            "status": "ok" if ok else "stopping",
            "policy": engine.policy,
            "queued": self.core.queued,
            "positions": list(engine.positions),
            "input_shape": list(engine.input_shape),
        }
        await _respond(send, 200 if ok else 503, json.dumps(body).encode())


def make_app(
    engine: Engine, serving: ml_collections.ConfigDict, server: ml_collections.ConfigDict
) -> FrontEnd:
    """The ASGI application serving ``engine``, grouping by the ``serving`` section and
    bounded by the ``server`` section (see the module docstring). Call ``engine.warm_up()``
    first: the app does not compile."""
    return FrontEnd(engine, serving, server)


def _uvicorn_config(app: FrontEnd, server: ml_collections.ConfigDict) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=server.host,
        port=int(server.port),
        backlog=int(server.backlog),
        http="httptools",
        # asyncio's loop, not uvloop: under uvloop, far past saturation, new requests waited
        # seconds before reaching the core, which refuses what waits past
        # server.max_queue_wait_ms; on asyncio's loop they reach it, and are refused in time.
        loop="asyncio",
        lifespan="on",
        log_level="warning",
        access_log=False,
        # Served directly, not behind a proxy; and headers nobody reads cost time.
        proxy_headers=False,
        server_header=False,
        date_header=False,
    )


def run_server(
    engine: Engine, serving: ml_collections.ConfigDict, server: ml_collections.ConfigDict
) -> None:
    """Warms the engine up and serves on ``server.host``:``server.port`` until interrupted."""
    engine.warm_up()
    uvicorn.Server(_uvicorn_config(make_app(engine, serving, server), server)).run()


class ServerThread:
    """A server on its own event loop in a daemon thread (tests, notebooks): ``url`` once
    started; :meth:`stop` (or leaving the ``with`` block) shuts it down."""

    def __init__(
        self,
        engine: Engine,
        serving: ml_collections.ConfigDict,
        server: ml_collections.ConfigDict,
        warm_up: bool = True,
    ):
        if warm_up:
            engine.warm_up()
        self.app = make_app(engine, serving, server)
        self._server = uvicorn.Server(_uvicorn_config(self.app, server))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failed: BaseException | None = None
        self.url = ""
        self._thread = threading.Thread(target=self._run, name="gati-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self._server.started and self._thread.is_alive():
            if time.monotonic() > deadline:
                raise TimeoutError("the server did not start within 60 s")
            time.sleep(0.01)
        if not self._server.started:
            raise self._failed or RuntimeError("the server stopped while starting")
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://{server.host}:{port}"

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._server.serve())
        except BaseException as error:  # the caller re-raises it
            self._failed = error
        finally:
            self._loop.close()

    def call(self, fn: Any) -> Any:
        """Runs ``fn()`` on the server's loop thread and returns its result (to read the
        core's or the learner's state between groups)."""

        async def run():
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result()

    def stop(self) -> None:
        """Shuts the server down and ends its thread."""
        if self._thread.is_alive():
            self._server.should_exit = True
            self._thread.join(30)

    def __enter__(self) -> ServerThread:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
