"""The daemon's local API: HTTP/1.1 + JSON on a Unix socket (h11 on trio).

The socket lives in the data dir with mode 0600, so "can use the API" means
"is the node's user": no tokens to leak.  The CLI talks to the daemon only
through it (:mod:`node.api.client`).

Handlers are registered in a route table::

    api.route("GET", "/v1/jobs/{id}", handler, summary="One job")

and receive a :class:`Request`; they return a JSON-able value (status 200),
raise :class:`ApiError` (status + machine-readable reason), or return a
:class:`StreamingResponse` whose items are sent as chunked NDJSON, one object
per line, for ``--follow`` style commands.  The OpenAPI document at
``GET /v1/openapi.json`` is built from the same table, so it cannot drift.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket as stdsocket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11
import trio

log = logging.getLogger("cpn.api")

MAX_BODY = 16 * 1024 * 1024
READ_TIMEOUT = 30.0  #: a client that stalls mid-request is dropped


class ApiError(Exception):
    """An error answer: HTTP ``status`` with ``{"error": reason, "detail": ...}``."""

    def __init__(self, status: int, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.status, self.reason, self.detail = status, reason, detail


@dataclass
class Request:
    """One API request: path parameters, query string and the raw body."""

    method: str
    path: str
    params: dict[str, str]
    query: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON; a malformed body is a 400, not a crash."""
        if not self.body:
            return None
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, "bad_json", str(exc)) from None


@dataclass
class StreamingResponse:
    """A response sent as chunked NDJSON: one JSON object per line, as produced."""

    items: AsyncIterator[Any]


Handler = Callable[[Request], Awaitable[Any]]


@dataclass
class Route:
    method: str
    template: str
    handler: Handler
    summary: str
    streaming: bool
    pattern: re.Pattern[str] = field(init=False)

    def __post_init__(self) -> None:
        regex = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(self.template))
        self.pattern = re.compile(f"^{regex}$")


class Api:
    """Route table + server.  Services call :meth:`route` before or after start."""

    def __init__(self, title: str = "CPN node API", version: str = "0.1.0") -> None:
        self.routes: list[Route] = []
        self.title, self.version = title, version
        self.route("GET", "/v1/openapi.json", self._openapi, summary="This OpenAPI document")

    def route(
        self,
        method: str,
        template: str,
        handler: Handler,
        *,
        summary: str = "",
        streaming: bool = False,
    ) -> None:
        """Register ``handler`` for ``method`` on ``template`` (``{name}`` segments)."""
        method = method.upper()
        for r in self.routes:
            if r.method == method and r.template == template:
                raise ValueError(f"route {method} {template} registered twice")
        self.routes.append(Route(method, template, handler, summary, streaming))

    def openapi(self) -> dict[str, Any]:
        """An OpenAPI 3.1 document describing every registered route."""
        paths: dict[str, Any] = {}
        for r in self.routes:
            params = [
                {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                for n in re.findall(r"\{(\w+)\}", r.template)
            ]
            media = "application/x-ndjson" if r.streaming else "application/json"
            paths.setdefault(r.template, {})[r.method.lower()] = {
                "summary": r.summary or r.handler.__doc__ or "",
                "parameters": params,
                "responses": {
                    "200": {"description": "OK", "content": {media: {}}},
                    "default": {
                        "description": "Error",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                        },
                    },
                },
            }
        return {
            "openapi": "3.1.0",
            "info": {"title": self.title, "version": self.version},
            "paths": paths,
            "components": {
                "schemas": {
                    "Error": {
                        "type": "object",
                        "required": ["error"],
                        "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
                    }
                }
            },
        }

    async def _openapi(self, request: Request) -> Any:
        return self.openapi()

    def _match(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        allowed = False
        for r in self.routes:
            m = r.pattern.match(path)
            if m:
                if r.method == method:
                    return r, m.groupdict()
                allowed = True
        if allowed:
            raise ApiError(405, "method_not_allowed", f"{method} {path}")
        raise ApiError(404, "not_found", f"no route for {path}")

    # ------------------------------------------------------------------ server

    async def serve(self, path: Path, *, task_status=trio.TASK_STATUS_IGNORED) -> None:  # type: ignore[no-untyped-def]
        """Listen on the Unix socket ``path`` (mode 0600) until cancelled."""
        _clear_stale_socket(path)
        sock = trio.socket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket is born 0600: no window where others can connect
        try:
            await sock.bind(str(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        sock.listen(64)
        listener = trio.SocketListener(sock)
        try:
            task_status.started(path)
            await trio.serve_listeners(self._handle_connection, [listener])
        finally:
            with trio.CancelScope(shield=True):
                await listener.aclose()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    async def _handle_connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        try:
            while True:
                with trio.fail_after(READ_TIMEOUT):
                    req = await _next_event(stream, conn)
                if req is None:
                    return
                keep_going = await self._respond(stream, conn, req)
                if not keep_going or conn.our_state is not h11.DONE:
                    return
                try:
                    conn.start_next_cycle()
                except h11.LocalProtocolError:
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            pass
        except h11.RemoteProtocolError as exc:
            log.debug("bad HTTP from API client: %s", exc)
            await _try_send_error(stream, conn, ApiError(400, "bad_http", str(exc)))
        finally:
            await stream.aclose()

    async def _respond(
        self, stream: trio.SocketStream, conn: h11.Connection, req: h11.Request
    ) -> bool:
        body = bytearray()
        while True:
            with trio.fail_after(READ_TIMEOUT):
                ev = await _next_event(stream, conn)
            if isinstance(ev, h11.Data):
                body += ev.data
                if len(body) > MAX_BODY:
                    await _send_json(
                        stream,
                        conn,
                        413,
                        {"error": "too_large", "detail": f"body over {MAX_BODY} bytes"},
                    )
                    return False
            elif isinstance(ev, h11.EndOfMessage) or ev is None:
                break
        target = urlsplit(req.target.decode("ascii", "replace"))
        method = req.method.decode("ascii", "replace")
        try:
            route, params = self._match(method, target.path)
            request = Request(
                method=method,
                path=target.path,
                params=params,
                query={k: v[-1] for k, v in parse_qs(target.query).items()},
                body=bytes(body),
            )
            result = await route.handler(request)
        except ApiError as exc:
            await _send_json(stream, conn, exc.status, {"error": exc.reason, "detail": exc.detail})
            return True
        except Exception as exc:  # noqa: BLE001 - a handler bug answers 500 and the node keeps serving
            log.exception("API %s %s failed", method, target.path)
            detail = f"{type(exc).__name__}: {exc}"[:500]
            await _send_json(stream, conn, 500, {"error": "internal_error", "detail": detail})
            return True
        if isinstance(result, StreamingResponse):
            await _send_stream(stream, conn, result)
            return False
        await _send_json(stream, conn, 200, result)
        return True


async def _next_event(stream: trio.SocketStream, conn: h11.Connection) -> Any:
    while True:
        ev = conn.next_event()
        if ev is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            conn.receive_data(data)
            continue
        if isinstance(ev, h11.ConnectionClosed):
            return None
        return ev


async def _send_json(
    stream: trio.SocketStream, conn: h11.Connection, status: int, obj: Any
) -> None:
    body = (json.dumps(obj) + "\n").encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    data = conn.send(h11.Response(status_code=status, headers=headers))
    data += conn.send(h11.Data(data=body))
    data += conn.send(h11.EndOfMessage())
    await stream.send_all(data)


async def _send_stream(
    stream: trio.SocketStream, conn: h11.Connection, resp: StreamingResponse
) -> None:
    headers = [
        ("Content-Type", "application/x-ndjson"),
        ("Transfer-Encoding", "chunked"),
        ("Connection", "close"),
    ]
    await stream.send_all(conn.send(h11.Response(status_code=200, headers=headers)))
    try:
        async for item in resp.items:
            await stream.send_all(conn.send(h11.Data(data=(json.dumps(item) + "\n").encode())))
    except ApiError as exc:  # an error after the head: report it as the last line
        line = json.dumps({"error": exc.reason, "detail": exc.detail}) + "\n"
        await stream.send_all(conn.send(h11.Data(data=line.encode())))
    except Exception as exc:  # noqa: BLE001 - as in _respond: the last line says what broke
        log.exception("API stream failed")
        line = json.dumps({"error": "internal_error", "detail": f"{type(exc).__name__}: {exc}"[:500]}) + "\n"
        await stream.send_all(conn.send(h11.Data(data=line.encode())))
    await stream.send_all(conn.send(h11.EndOfMessage()))


async def _try_send_error(stream: trio.SocketStream, conn: h11.Connection, exc: ApiError) -> None:
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    try:
        await _send_json(stream, conn, exc.status, {"error": exc.reason, "detail": exc.detail})
    except (h11.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass


class DaemonAlreadyRunning(Exception):
    """Another daemon answers on the API socket of this data dir."""


def _clear_stale_socket(path: Path) -> None:
    """Remove a socket left by a crashed daemon; refuse if a live one answers."""
    if not path.exists() and not path.is_symlink():
        return
    probe = stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)
        return
    except OSError:
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise DaemonAlreadyRunning(f"a daemon is already running on {path}")
