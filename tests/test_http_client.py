"""The load generator's HTTP client against a hand-written server on loopback: what it sends,
what it reads (length-delimited and chunked answers), connection reuse, and every way an
answer can fail to come."""

from __future__ import annotations

import asyncio
import socket

import pytest

from gati_jax.serve.http_client import ConnectionLost, HttpClient


async def _serve(answers, seen, close_after=None):
    """A server whose k-th request gets ``answers[k % len(answers)]`` (bytes or a coroutine
    function of the writer), and which closes a connection after ``close_after`` requests on
    it; records (connection, request head, body)."""
    connections = []

    async def handle(reader, writer):
        number = len(connections)
        connections.append(writer)
        served = 0
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break  # the client closed the connection
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            body = await reader.readexactly(length)
            seen.append((number, head.decode(), body))
            answer = answers[(len(seen) - 1) % len(answers)]
            served += 1
            if callable(answer):
                await answer(writer)
            else:
                writer.write(answer)
                await writer.drain()
            if close_after is not None and served >= close_after:
                writer.close()
                break

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", connections


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
CHUNKED = b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"


def test_requests_share_one_kept_alive_connection_and_bodies_arrive_whole():
    async def run():
        seen = []
        server, url, connections = await _serve([OK, CHUNKED], seen)
        async with server, HttpClient(url + "/base") as http:
            first = await http.post("/v1/predict", b"\x00\x01", "application/x-npy")
            second = await http.post("/v1/predict", b"xyz", "application/json")
            third = await http.get("/healthz")
        return seen, len(connections), (first, second, third)

    seen, connections, answers = asyncio.run(run())
    assert answers == ((200, b"hello"), (503, b"abcde"), (200, b"hello"))
    assert connections == 1 and [s[0] for s in seen] == [0, 0, 0]
    assert seen[0][1].startswith("POST /base/v1/predict HTTP/1.1\r\n")
    assert "Content-Type: application/x-npy" in seen[0][1] and seen[0][2] == b"\x00\x01"
    assert seen[2][1].startswith("GET /base/healthz HTTP/1.1\r\n") and seen[2][2] == b""


def test_a_connection_the_server_closed_while_idle_is_replaced_and_the_request_sent_again():
    async def run():
        seen = []
        server, url, connections = await _serve([OK], seen, close_after=1)
        async with server, HttpClient(url) as http:
            first = await http.post("/p", b"a", "text/plain")
            await asyncio.sleep(0.05)  # the server has closed it by now
            second = await http.post("/p", b"b", "text/plain")
        return seen, len(connections), first, second

    seen, connections, first, second = asyncio.run(run())
    assert first == second == (200, b"hello")
    assert connections == 2 and [(s[0], s[2]) for s in seen] == [(0, b"a"), (1, b"b")]


def test_answers_that_never_come_whole_raise_and_leave_the_client_usable():
    async def truncated(writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort")
        await writer.drain()
        writer.close()

    async def garbage(writer):
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()

    async def silent(writer):
        await asyncio.sleep(10)

    async def run():
        results = []
        for answer in (truncated, garbage, silent):
            server, url, _ = await _serve([answer, OK], [])
            async with server, HttpClient(url) as http:
                try:
                    async with asyncio.timeout(0.3):
                        await http.post("/p", b"x", "text/plain")
                    results.append("answered")
                except ConnectionLost as error:
                    results.append(f"lost: {error}")
                except TimeoutError:
                    results.append("timeout")
                # The failed connection is never reused: the next request gets a new one.
                results.append(await http.post("/p", b"y", "text/plain"))
        return results

    results = asyncio.run(run())
    assert results[0].startswith("lost: the server closed") and results[1] == (200, b"hello")
    assert results[2].startswith("lost: the answer is not HTTP") and results[3] == (200, b"hello")
    assert results[4] == "timeout" and results[5] == (200, b"hello")


def test_a_closed_port_is_an_os_error_and_bad_urls_are_refused():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens once the socket closes

    async def run():
        async with HttpClient(f"http://127.0.0.1:{port}") as http:
            await http.get("/healthz")

    with pytest.raises(OSError):
        asyncio.run(run())
    with pytest.raises(ValueError, match="http://host"):
        HttpClient("https://example.org")
    with pytest.raises(ValueError, match="max_connections"):
        HttpClient("http://127.0.0.1:1", max_connections=0)


def test_concurrent_requests_beyond_the_connection_limit_wait_for_a_connection():
    async def slow(writer):
        await asyncio.sleep(0.05)
        writer.write(OK)
        await writer.drain()

    async def run():
        seen = []
        server, url, connections = await _serve([slow], seen)
        async with server, HttpClient(url, max_connections=2) as http:
            answers = await asyncio.gather(*(http.post("/p", b"z", "t/p") for _ in range(6)))
        return answers, len(connections)

    answers, connections = asyncio.run(run())
    assert answers == [(200, b"hello")] * 6 and connections == 2
