"""The HTTP front end (aiohttp) over the server core.

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
malformed or wrong-shape payload 400, a body over ``server.max_body_bytes`` or a batch over
``server.max_queue`` 413, overload 503 with ``Retry-After`` (the queue full on arrival, or
``server.max_queue_wait_ms`` waited without a group), a failed group 500.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from typing import Any

import ml_collections
import numpy as np
from aiohttp import web

from gati_jax.input_checks import check_images
from gati_jax.serve.core import Closed, Overloaded, ServerCore, TooLarge
from gati_jax.serve.engine import Engine
from gati_jax.serve.metrics import CONTENT_TYPE, ServerMetrics

NPY_MAGIC = b"\x93NUMPY"
# What an application built by make_app holds (app[CORE].stats, app[METRICS].registry).
CORE = web.AppKey("core", ServerCore)
METRICS = web.AppKey("metrics", ServerMetrics)


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


def make_app(
    engine: Engine, serving: ml_collections.ConfigDict, server: ml_collections.ConfigDict
) -> web.Application:
    """The aiohttp application serving ``engine``, grouping by the ``serving`` section and
    bounded by the ``server`` section (see the module docstring). Call ``engine.warm_up()``
    first: the app does not compile."""
    app = web.Application(client_max_size=int(server.max_body_bytes))
    metrics = ServerMetrics(engine, lambda: core.queued)
    core = ServerCore(
        engine.route,
        max_group=int(serving.max_group),
        max_wait_s=float(serving.max_wait_ms) / 1e3,
        max_queue=int(server.max_queue),
        max_queue_wait_s=float(server.max_queue_wait_ms) / 1e3,
        background=engine.learner,
        on_group=metrics.group,
    )
    app[CORE], app[METRICS] = core, metrics
    retry_after = str(int(server.retry_after_s))
    shape, value_range = engine.input_shape, engine.input_range

    def error(status: int, outcome: str, message: str, **headers: str) -> web.Response:
        metrics.request(outcome)
        return web.Response(
            status=status,
            text=json.dumps({"error": message}),
            content_type="application/json",
            headers=headers or None,
        )

    async def predict(request: web.Request) -> web.Response:
        started = time.perf_counter()
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return error(
                413,
                "too_large",
                f"the body exceeds {server.max_body_bytes} bytes "
                "(server.max_body_bytes); send smaller batches",
            )
        try:
            images = decode_images(body, request.content_type, shape, value_range)
        except PayloadError as bad:
            return error(400, "bad_request", str(bad))
        try:
            future = core.submit(images)
        except TooLarge as big:
            return error(413, "too_large", str(big))
        except Overloaded as busy:
            return error(
                503,
                "overloaded",
                f"overloaded: {busy}; retry later",
                **{"Retry-After": retry_after},
            )
        except Closed as closed:
            return error(503, "error", str(closed), **{"Retry-After": retry_after})
        try:
            try:
                result = await future
            except Overloaded as late:  # waited too long in the queue
                return error(
                    503,
                    "overloaded",
                    f"overloaded: {late}; retry later",
                    **{"Retry-After": retry_after},
                )
            except Exception as failed:  # a group that failed, or the server stopping
                return error(500, "error", f"{type(failed).__name__}: {failed}")
            seconds = time.perf_counter() - started
            metrics.request("ok", seconds)
            response = web.Response(
                text=json.dumps(
                    {
                        "classes": result.answer.tolist(),
                        "exit_positions": result.exit_stage.tolist(),
                        "hits": result.hit.tolist(),
                        "server_ms": 1e3 * seconds,
                    }
                ),
                content_type="application/json",
            )
            # Written out before the core may turn to background work (see core.py).
            await response.prepare(request)
            await response.write_eof()
            return response
        finally:
            core.finished()

    async def healthz(request: web.Request) -> web.Response:
        del request
        ok = core.running
        return web.json_response(
            {
                "status": "ok" if ok else "stopping",
                "policy": engine.policy,
                "queued": core.queued,
                "positions": list(engine.positions),
                "input_shape": list(engine.input_shape),
            },
            status=200 if ok else 503,
        )

    async def metrics_page(request: web.Request) -> web.Response:
        del request
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def on_startup(app: web.Application) -> None:
        del app
        core.start()

    async def on_cleanup(app: web.Application) -> None:
        del app
        await core.stop()

    app.router.add_post("/v1/predict", predict)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_page)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


def run_server(
    engine: Engine, serving: ml_collections.ConfigDict, server: ml_collections.ConfigDict
) -> None:
    """Warms the engine up and serves on ``server.host``:``server.port`` until interrupted."""
    engine.warm_up()
    web.run_app(
        make_app(engine, serving, server),
        host=server.host,
        port=int(server.port),
        backlog=int(server.backlog),
        access_log=None,
        print=None,
    )


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
        self._host, self._port = server.host, int(server.port)
        self._backlog = int(server.backlog)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""
        self._thread = threading.Thread(target=self._run, name="gati-server", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failed is not None:
            raise self._failed

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._start())
        except BaseException as error:  # the caller re-raises it
            self._failed = error
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, backlog=self._backlog)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://{self._host}:{port}"

    def call(self, fn: Any) -> Any:
        """Runs ``fn()`` on the server's loop thread and returns its result (to read the
        core's or the learner's state between groups)."""

        async def run():
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result()

    def stop(self) -> None:
        """Shuts the server down and ends its thread."""
        if self._runner is not None and self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
            self._runner = None

    def __enter__(self) -> ServerThread:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
