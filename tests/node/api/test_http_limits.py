"""The HTTP server's limits, on a real 127.0.0.1 TCP port: whatever one client does, the
server answers the next honest client, and nothing a client does escapes ``serve_tcp``.

Timeouts run on trio's MockClock (``autojump_clock``): a silent client is dropped the
moment its deadline passes in virtual time, with no real waiting.  Clients are trio
sockets in the same run, so the loop is only idle when every client truly waits.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

from node.api.server import Api, Limits, RawResponse, Request, StreamingResponse

BIG = 8 << 20  #: a response far larger than the socket buffers


def make_api() -> Api:
    api = Api()

    async def hello(request: Request) -> Any:
        return {"hello": request.query.get("who", "world")}

    async def boom(request: Request) -> Any:
        raise ValueError("the handler broke")

    async def unencodable(request: Request) -> Any:
        return {"value": object()}  # JSON cannot encode it: a handler bug, answered 500

    async def big(request: Request) -> Any:
        return RawResponse(b"x" * BIG, "application/octet-stream")

    async def endless(request: Request) -> Any:
        async def items() -> AsyncIterator[Any]:
            n = 0
            while True:
                yield {"n": n, "pad": "y" * 4096}
                n += 1
                await trio.lowlevel.checkpoint()

        return StreamingResponse(items())

    async def post(request: Request) -> Any:
        return {"size": len(request.body)}

    api.route("GET", "/hello", hello)
    api.route("GET", "/boom", boom)
    api.route("GET", "/unencodable", unencodable)
    api.route("GET", "/big", big)
    api.route("GET", "/endless", endless, streaming=True)
    api.route("POST", "/post", post)
    return api


@dataclass
class Served:
    api: Api
    port: int

    async def connect(self) -> trio.socket.SocketType:
        s = trio.socket.socket()
        await s.connect(("127.0.0.1", self.port))
        return s

    def head(self, path: str = "/hello", method: str = "GET", extra: str = "") -> bytes:
        return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n{extra}\r\n".encode()

    async def ask(self, path: str = "/hello", method: str = "GET", body: bytes = b"", extra: str = "") -> bytes:
        """One request on a fresh connection (``Connection: close``); the whole answer."""
        s = await self.connect()
        length = f"Content-Length: {len(body)}\r\n" if body or method == "POST" else ""
        await s.send(self.head(path, method, extra + length + "Connection: close\r\n") + body)
        data = await read_all(s)
        s.close()
        return data


async def read_all(s: trio.socket.SocketType) -> bytes:
    chunks = []
    while True:
        try:
            chunk = await s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def reset(s: trio.socket.SocketType) -> None:
    """Close with an RST (SO_LINGER 0), as a crashed client or a hostile one does."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


@asynccontextmanager
async def serving(limits: Limits | None = None) -> AsyncIterator[Served]:
    api = make_api()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(lambda task_status: api.serve_tcp(0, limits=limits, task_status=task_status))
        yield Served(api, port)
        nursery.cancel_scope.cancel()


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


async def test_honest_request_and_keep_alive() -> None:
    async with serving() as srv:
        assert status(await srv.ask("/hello?who=x")) == 200
        s = await srv.connect()
        for who in ("a", "b"):  # two requests on one connection
            await s.send(srv.head(f"/hello?who={who}"))
            data = b""
            while not data.endswith(b"}\n"):
                data += await s.recv(65536)
            assert data.startswith(b"HTTP/1.1 200 OK") and f'"{who}"'.encode() in data
        s.close()


async def test_handler_exceptions_are_500_and_the_server_keeps_serving() -> None:
    async with serving() as srv:
        for path in ("/boom", "/unencodable"):
            answer = await srv.ask(path)
            assert status(answer) == 500 and b"internal_error" in answer, answer[:200]
        assert srv.api.stats["errors"] == 2
        assert status(await srv.ask()) == 200


async def test_reset_mid_request_and_mid_response_costs_one_connection() -> None:
    async with serving() as srv:
        s = await srv.connect()  # half a request head, then RST
        await s.send(b"GET /hel")
        reset(s)
        s = await srv.connect()  # a whole request, RST before the answer is read
        await s.send(srv.head("/big"))
        reset(s)
        s = await srv.connect()  # part of an 8 MiB answer read, then RST
        await s.send(srv.head("/big"))
        assert await s.recv(1024)
        reset(s)
        s = await srv.connect()  # an NDJSON stream read for a while, then RST
        await s.send(srv.head("/endless"))
        got = b""
        while got.count(b"\n") < 50:
            got += await s.recv(65536)
        reset(s)
        assert status(await srv.ask()) == 200
        assert srv.api.stats["errors"] == 0  # resets are expected, not handler bugs


async def test_slowloris_is_dropped_at_the_request_timeout(autojump_clock: trio.testing.MockClock) -> None:
    limits = Limits(request_timeout=5.0)
    async with serving(limits) as srv:
        slow = await srv.connect()
        t0 = trio.current_time()
        for byte in srv.head()[:-4]:  # one byte a second, never the blank line that ends the head
            await slow.send(bytes([byte]))
            await trio.sleep(1.0)
            if trio.current_time() - t0 > 4:
                break
        assert status(await srv.ask()) == 200  # served while the slow client dribbles
        assert await read_all(slow) == b""  # then dropped, without an answer
        assert 5.0 <= trio.current_time() - t0 < 6.0
        assert srv.api.stats["timeouts"] == 1


async def test_silent_and_idle_connections_cannot_lock_out_an_honest_client() -> None:
    async with serving(Limits(max_connections=16)) as srv:
        idle = [await srv.connect() for _ in range(200)]
        for s in idle[:100]:
            await s.send(b"GET /hello HTTP/1.1\r\n")  # half a head: as silent as nothing at all
        for _ in range(3):
            assert status(await srv.ask()) == 200
        await trio.testing.wait_all_tasks_blocked()
        assert srv.api.stats["evicted"] >= 200 - 16
        assert srv.api.stats["open"] <= 16
        for s in idle:
            s.close()


async def test_oversized_header_is_431_and_body_413() -> None:
    async with serving(Limits(max_header_bytes=4096, max_body_bytes=1000)) as srv:
        answer = await srv.ask(extra=f"X-Big: {'a' * 8000}\r\n")
        assert status(answer) == 431, answer[:200]
        answer = await srv.ask("/post", "POST", b"z" * 5000)
        assert status(answer) == 413 and b"too_large" in answer
        assert b'"size": 10' in await srv.ask("/post", "POST", b"z" * 10)
        # a chunked body (no Content-Length) is cut at the limit too
        s = await srv.connect()
        await s.send(srv.head("/post", "POST", "Transfer-Encoding: chunked\r\n") + b"800\r\n" + b"q" * 0x800 + b"\r\n")
        assert status(await read_all(s)) == 413
        s.close()
        assert status(await srv.ask()) == 200


async def test_client_that_stops_reading_is_dropped(autojump_clock: trio.testing.MockClock) -> None:
    async with serving(Limits(send_timeout=3.0)) as srv:
        s = await srv.connect()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await s.send(srv.head("/big"))
        await trio.sleep(10)  # never reads: the server's write blocks, then gives up
        assert status(await srv.ask()) == 200
        received = len(await read_all(s))
        assert received < BIG  # cut off, not delivered
        s.close()


async def test_foreign_host_header_is_refused() -> None:
    """DNS rebinding: a page of evil.example re-pointed to 127.0.0.1 gets nothing."""
    async with serving() as srv:
        s = await srv.connect()
        await s.send(b"GET /hello HTTP/1.1\r\nHost: evil.example:80\r\nConnection: close\r\n\r\n")
        answer = await read_all(s)
        assert status(answer) == 403 and b"bad_host" in answer
        s = await srv.connect()
        await s.send(f"GET /hello HTTP/1.1\r\nHost: localhost:{srv.port}\r\nConnection: close\r\n\r\n".encode())
        assert status(await read_all(s)) == 200


@pytest.mark.parametrize("garbage", [b"\x00\x01\x02 not http\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"\r\n" * 5000])
async def test_garbage_is_400_not_a_crash(garbage: bytes, autojump_clock: trio.testing.MockClock) -> None:
    async with serving() as srv:
        s = await srv.connect()
        await s.send(garbage)
        answer = await read_all(s)
        assert answer == b"" or status(answer) in (400, 403, 431)  # 403: no Host header
        s.close()
        assert status(await srv.ask()) == 200
