"""A lean HTTP/1.1 client for the load generator: keep-alive connections on asyncio's
transports, answers parsed by httptools (llhttp, the parser uvicorn serves with).

Why not aiohttp's client: on a loopback round trip to a trivial uvicorn handler it spent more
time per request than the whole round trip takes with this one (its request and response
objects, header multidicts and stream readers), and the load test's figure is the *server's*
overhead as a client sees it, which a slow client inflates. This client does only what the
load generator needs: POST or GET a body to one host, read the status and the body (length-
delimited or chunked), keep the connection for the next request unless the server closes it.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import httptools


class ConnectionLost(OSError):
    """The connection closed, or sent something that is not HTTP, before the answer ended."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; at most one request in flight on it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future | None = None
        self.chunks: list[bytes] = []
        self.answered = False  # some of the current answer has arrived
        self.closed = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ConnectionLost(f"the server closed the connection ({exc or 'EOF'})"))

    def data_received(self, data: bytes) -> None:
        self.answered = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(ConnectionLost(f"the answer is not HTTP/1.1: {error}"))
            self.close()

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        body, self.chunks = b"".join(self.chunks), []
        waiter, self.waiter = self.waiter, None
        if not self.parser.should_keep_alive():
            self.close()
        if waiter is not None and not waiter.done():
            waiter.set_result((self.parser.get_status_code(), body))

    def _fail(self, error: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def send(self, message: bytes) -> asyncio.Future:
        """Writes one request; the future gets (status, body)."""
        self.waiter = asyncio.get_running_loop().create_future()
        self.chunks, self.answered = [], False
        self.transport.write(message)
        return self.waiter

    def close(self) -> None:
        """Closes the connection (a request in flight on it fails)."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class HttpClient:
    """Requests to one ``http://host:port``, over at most ``max_connections`` keep-alive
    connections (more concurrent requests wait for one)."""

    def __init__(self, url: str, max_connections: int = 1024) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"expected an http://host[:port] URL, got {url!r}")
        if int(max_connections) < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        self.host, self.port = parts.hostname, parts.port or 80
        self.base = parts.path.rstrip("/")
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()
        self._slots = asyncio.Semaphore(int(max_connections))

    async def _connection(self) -> tuple[_Connection, bool]:
        """An idle connection (reused: True) or a new one."""
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:
                return connection, True
            self._open.discard(connection)
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(_Connection, self.host, self.port)
        self._open.add(connection)
        return connection, False

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        content_type: str = "application/octet-stream",
    ) -> tuple[int, bytes]:
        """Sends one request; returns the status and the body. Raises OSError (ConnectionLost
        among them) when no answer came; cancelling (a timeout) closes its connection."""
        head = (
            f"{method} {self.base}{path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode("latin-1")
        async with self._slots:
            for attempt in range(2):
                connection, reused = await self._connection()
                try:
                    status, data = await connection.send(head + body)
                except ConnectionLost:
                    self._open.discard(connection)
                    # A kept-alive connection the server closed while idle fails before any
                    # answer: the request never reached a handler, so it is sent again once.
                    if reused and not connection.answered and attempt == 0:
                        continue
                    raise
                except BaseException:
                    connection.close()  # its answer may still come: never reuse it
                    self._open.discard(connection)
                    raise
                if connection.closed:
                    self._open.discard(connection)
                else:
                    self._idle.append(connection)
                return status, data
        raise AssertionError("unreachable")

    async def post(self, path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
        """POST ``body`` to ``path``."""
        return await self.request("POST", path, body, content_type)

    async def get(self, path: str) -> tuple[int, bytes]:
        """GET ``path``."""
        return await self.request("GET", path)

    async def close(self) -> None:
        """Closes every connection."""
        for connection in list(self._open):
            connection.close()
        self._open.clear()
        self._idle.clear()
        await asyncio.sleep(0)  # lets the transports finish closing

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
