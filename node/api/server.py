"""The daemon's HTTP server: the local API on a Unix socket, and 127.0.0.1 TCP ports.

The API socket lives in the data dir with mode 0600, so "can use the API"
means "is the node's user": no tokens to leak.  The CLI talks to the daemon
only through it (:mod:`node.api.client`).  The same server (h11 on trio, one
implementation) also answers on a TCP port bound to 127.0.0.1 for
``/metrics`` and the dashboard (:mod:`node.api.dashboard`), with its own
route table: any local user can reach that port.

Every server entry point survives whatever a client does (:class:`Limits`):
a request head and body must arrive within a timeout (slowloris), the head
and body are size-limited (431, 413), a client that stops reading is dropped
after a send timeout, the number of connections is capped (the longest-idle
one makes room for a new one), a reset mid-request or mid-response ends that
connection only, and any handler exception is a JSON 500.

Handlers are registered in a route table::

    api.route("GET", "/v1/jobs/{id}", handler, summary="One job")

and receive a :class:`Request`; they return a JSON-able value (status 200),
raise :class:`ApiError` (status + machine-readable reason), or return a
:class:`StreamingResponse` whose items are sent as chunked NDJSON, one object
per line, for ``--follow`` style commands.  The OpenAPI document at
``GET /v1/openapi.json`` is built from the same table, so it cannot drift.
A handler may also return a :class:`RawResponse` (an HTML page, the metrics
text).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import socket as stdsocket
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11
import trio
from trio_typing import TaskStatus

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
    #: request headers, names in lower case (the last of repeated ones)
    headers: dict[str, str] = field(default_factory=dict)

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


@dataclass(frozen=True)
class RawResponse:
    """A response that is not JSON: a page, a script, the metrics text."""

    body: bytes
    content_type: str
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()


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
        #: what the servers of this route table saw: connections (accepted), open (now),
        #: evicted, refused, timeouts, bad_requests, errors (handler bugs); exported as metrics
        self.stats: Counter[str] = Counter()
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

    # ------------------------------------------------------------------ serving

    async def serve(
        self, path: Path, *, limits: Limits | None = None, task_status: TaskStatus[Path] = trio.TASK_STATUS_IGNORED
    ) -> None:
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
            await _Server(self, limits or UNIX_LIMITS, hosts=None, headers=()).serve(listener)
        finally:
            with trio.CancelScope(shield=True):
                await listener.aclose()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    async def serve_tcp(
        self,
        port: int,
        *,
        host: str = "127.0.0.1",
        limits: Limits | None = None,
        headers: Sequence[tuple[str, str]] = (),
        task_status: TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` (TCP; port 0 picks one) until cancelled.

        ``task_status.started`` gets the bound port.  Requests whose ``Host``
        header names another host are refused (403 ``bad_host``): a web page
        from elsewhere whose name an attacker re-pointed to 127.0.0.1 (DNS
        rebinding) cannot read what this server answers.  ``headers`` are sent
        with every response.
        """
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = listeners[0].socket.getsockname()[1]
        names = {"localhost", f"[{host}]" if ":" in host else host}
        hosts = frozenset(f"{n}:{bound}" for n in names)
        server = _Server(self, limits or TCP_LIMITS, hosts=hosts, headers=tuple(headers))
        try:
            task_status.started(bound)
            async with trio.open_nursery() as nursery:
                for listener in listeners:
                    nursery.start_soon(server.serve, listener)
        finally:
            with trio.CancelScope(shield=True):
                for listener in listeners:
                    await listener.aclose()

    async def dispatch(
        self, method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> Any:
        """Answer one request: the handler's value, or :class:`ApiError` for a bad one."""
        url = urlsplit(target)
        route, params = self._match(method, url.path)
        request = Request(
            method=method,
            path=url.path,
            params=params,
            query={k: v[-1] for k, v in parse_qs(url.query).items()},
            body=body,
            headers=headers or {},
        )
        return await route.handler(request)


# ---------------------------------------------------------------------- the HTTP server


@dataclass(frozen=True)
class Limits:
    """What one client may hold of a server (every HTTP entry point has them).

    Over ``max_connections``, a new connection takes the place of the one idle
    the longest (waiting for a request), else of the oldest NDJSON stream;
    connections whose request is being answered are never dropped, and the
    newest is only refused when all of them are.  So silent connections, however
    many, cannot lock out a client that asks and reads promptly.  There is no
    per-source cap: every client of a 127.0.0.1 or Unix socket comes from the
    same address, so eviction is what protects the honest one.
    """

    max_connections: int = 64
    max_header_bytes: int = 16 * 1024  #: request line + headers (431 beyond)
    max_body_bytes: int = MAX_BODY  #: 413 beyond
    request_timeout: float = READ_TIMEOUT  #: for the request head to arrive, then again for the body
    idle_timeout: float = 15.0  #: keep-alive: the next request must start within this
    send_timeout: float = 10.0  #: for one write to a client that does not read


#: the local API socket (mode 0600): large bodies (job submissions), patient clients
UNIX_LIMITS = Limits(max_connections=128, max_header_bytes=64 * 1024, idle_timeout=READ_TIMEOUT)
#: the 127.0.0.1 TCP port (dashboard, /metrics): any local user can connect
TCP_LIMITS = Limits(max_connections=64, max_body_bytes=64 * 1024, request_timeout=10.0)

_ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_IDLE, _BUSY, _STREAMING = "idle", "busy", "streaming"


class _Conn:
    """One client connection, as the server sees it (for the connection cap)."""

    __slots__ = ("scope", "since", "state", "evicted")

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.since = trio.current_time()
        self.state = _IDLE
        self.evicted = False

    def mark(self, state: str) -> None:
        self.state, self.since = state, trio.current_time()


class _Server:
    """Serves one listener: the connection cap, timeouts, size limits, and the
    guarantee that nothing a client sends or does escapes :meth:`serve`."""

    def __init__(self, api: Api, limits: Limits, *, hosts: frozenset[str] | None,
                 headers: tuple[tuple[str, str], ...]) -> None:
        self.api, self.limits, self.hosts, self.headers = api, limits, hosts, headers
        self.stats = api.stats
        self.conns: set[_Conn] = set()

    async def serve(self, listener: trio.SocketListener) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                        raise
                    log.warning("HTTP accept: %s; pausing accepts for 0.1 s", exc)
                    await trio.sleep(0.1)  # out of file descriptors: let connections finish
                    continue
                self.stats["connections"] += 1
                if sum(not c.evicted for c in self.conns) >= self.limits.max_connections and not self._evict():
                    self.stats["refused"] += 1
                    await trio.aclose_forcefully(stream)
                    continue
                conn = _Conn()
                self.conns.add(conn)
                nursery.start_soon(self._connection, stream, conn)

    def _evict(self) -> bool:
        """Drop the connection idle the longest, else the oldest stream; False if none."""
        for state in (_IDLE, _STREAMING):
            candidates = [c for c in self.conns if c.state == state and not c.evicted]
            if candidates:
                victim = min(candidates, key=lambda c: c.since)
                victim.evicted = True
                victim.scope.cancel()
                self.stats["evicted"] += 1
                return True
        return False

    async def _connection(self, stream: trio.SocketStream, conn: _Conn) -> None:
        self.stats["open"] += 1
        try:
            with conn.scope:
                await self._converse(stream, conn)
        except Exception:  # noqa: BLE001 - a bug here must cost one connection, never the node
            self.stats["errors"] += 1
            log.exception("HTTP connection failed")
        finally:
            self.conns.discard(conn)
            self.stats["open"] -= 1
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _converse(self, stream: trio.SocketStream, conn: _Conn) -> None:
        limits = self.limits
        h = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
        first = True
        try:
            while True:
                conn.mark(_IDLE)
                with trio.fail_after(limits.request_timeout if first else limits.idle_timeout):
                    req = await _next_event(stream, h)
                if req is None:
                    return
                conn.mark(_BUSY)
                size = len(req.target) + sum(len(k) + len(v) + 4 for k, v in req.headers)
                if size > limits.max_header_bytes:  # h11 bounds only a head still arriving
                    raise h11.RemoteProtocolError("request head too large", error_status_hint=431)
                if not await self._exchange(stream, h, req, conn) or h.our_state is not h11.DONE:
                    return
                try:
                    h.start_next_cycle()
                except h11.LocalProtocolError:  # the client had not finished its request
                    return
                first = False
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except trio.TooSlowError:
            if h.their_state is not h11.IDLE or h.trailing_data[0]:  # not a plain idle keep-alive
                self.stats["timeouts"] += 1
        except h11.RemoteProtocolError as exc:
            self.stats["bad_requests"] += 1
            log.debug("bad HTTP from a client: %s", exc)
            status = exc.error_status_hint if 400 <= exc.error_status_hint < 500 else 400
            await self._try_send_error(stream, h, ApiError(status, "bad_http", str(exc)))

    async def _read_body(self, stream: trio.SocketStream, h: h11.Connection, req: h11.Request) -> bytes | None:
        """The request body, or None when it is over the limit (413 sent)."""
        limit = self.limits.max_body_bytes
        length = dict(req.headers).get(b"content-length")
        too_big = ApiError(413, "too_large", f"body over {limit} bytes")
        if length is not None and length.isdigit() and int(length) > limit:
            await self._send_error(stream, h, too_big)
            return None
        body = bytearray()
        with trio.fail_after(self.limits.request_timeout):
            while True:
                ev = await _next_event(stream, h)
                if isinstance(ev, h11.Data):
                    body += ev.data
                    if len(body) > limit:
                        await self._send_error(stream, h, too_big)
                        return None
                elif isinstance(ev, h11.EndOfMessage) or ev is None:
                    return bytes(body)

    async def _exchange(self, stream: trio.SocketStream, h: h11.Connection, req: h11.Request, conn: _Conn) -> bool:
        """Read the body, answer the request; False when the connection must close."""
        body = await self._read_body(stream, h, req)
        if body is None:
            return False
        method = req.method.decode("ascii", "replace")
        target = req.target.decode("ascii", "replace")
        headers = {k.decode("ascii", "replace"): v.decode("latin-1") for k, v in req.headers}
        try:
            if self.hosts is not None and headers.get("host", "") not in self.hosts:
                raise ApiError(403, "bad_host", f"this server answers only to {', '.join(sorted(self.hosts))}")
            result = await self.api.dispatch(method, target, body, headers)
            if not isinstance(result, StreamingResponse | RawResponse):
                result = RawResponse(_json_bytes(result), "application/json")
        except ApiError as exc:
            await self._send_error(stream, h, exc)
            return True
        except Exception as exc:  # noqa: BLE001 - a handler bug answers 500 and the node keeps serving
            self.stats["errors"] += 1
            log.exception("HTTP %s %s failed", method, urlsplit(target).path)
            detail = f"{type(exc).__name__}: {exc}"[:500]
            await self._send_error(stream, h, ApiError(500, "internal_error", detail))
            return True
        if isinstance(result, StreamingResponse):
            conn.mark(_STREAMING)
            await self._send_stream(stream, h, result)
            return False
        await self._send(stream, h, result)
        return True

    async def _send_all(self, stream: trio.SocketStream, data: bytes) -> None:
        with trio.fail_after(self.limits.send_timeout):
            await stream.send_all(data)

    async def _send(self, stream: trio.SocketStream, h: h11.Connection, resp: RawResponse) -> None:
        headers = [("Content-Type", resp.content_type), ("Content-Length", str(len(resp.body))),
                   ("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"),
                   *self.headers, *resp.headers]
        data = h.send(h11.Response(status_code=resp.status, headers=headers, reason=_reason(resp.status)))
        data += h.send(h11.Data(data=resp.body))
        data += h.send(h11.EndOfMessage())
        await self._send_all(stream, data)

    async def _send_error(self, stream: trio.SocketStream, h: h11.Connection, exc: ApiError) -> None:
        body = _json_bytes({"error": exc.reason, "detail": exc.detail})
        await self._send(stream, h, RawResponse(body, "application/json", status=exc.status))

    async def _try_send_error(self, stream: trio.SocketStream, h: h11.Connection, exc: ApiError) -> None:
        if h.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        with contextlib.suppress(h11.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError,
                                 trio.TooSlowError):
            await self._send_error(stream, h, exc)

    async def _send_stream(self, stream: trio.SocketStream, h: h11.Connection, resp: StreamingResponse) -> None:
        headers = [("Content-Type", "application/x-ndjson"), ("Transfer-Encoding", "chunked"),
                   ("Connection", "close"), ("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"),
                   *self.headers]
        await self._send_all(stream, h.send(h11.Response(status_code=200, headers=headers, reason=b"OK")))
        try:
            async for item in resp.items:
                await self._send_all(stream, h.send(h11.Data(data=_json_bytes(item))))
        except ApiError as exc:  # an error after the head: report it as the last line
            line = _json_bytes({"error": exc.reason, "detail": exc.detail})
            await self._send_all(stream, h.send(h11.Data(data=line)))
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            raise  # the client went away or stopped reading: nothing more to say
        except Exception as exc:  # noqa: BLE001 - as in _exchange: the last line says what broke
            self.stats["errors"] += 1
            log.exception("HTTP stream failed")
            line = _json_bytes({"error": "internal_error", "detail": f"{type(exc).__name__}: {exc}"[:500]})
            await self._send_all(stream, h.send(h11.Data(data=line)))
        await self._send_all(stream, h.send(h11.EndOfMessage()))


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, allow_nan=False) + "\n").encode()


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
