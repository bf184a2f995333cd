"""Synchronous client of the daemon's Unix-socket API, for CLI commands.

Stdlib ``socket`` and ``json`` only, so a CLI command starts fast and never
imports libp2p.  It speaks just the HTTP/1.1 the daemon's API sends
(:mod:`node.api.server`, h11): one request per connection, a JSON answer with
``Content-Length``, or an NDJSON stream with ``Transfer-Encoding: chunked``.
``http.client`` would do the same at ~20 ms more per command (it loads the
``email`` parser and ``ssl``), a fifth of a command's start-up.

Every failure is a :class:`~node.errors.UserError` with a message a user can
act on ("the daemon is not running ..."); a stream that breaks half-way
raises :class:`OSError` or :class:`BadResponse` (a ``ValueError``).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from node.errors import ApiAnswerError, ExitCode, UserError

__all__ = ["ApiClient", "BadResponse"]

_MAX_HEAD = 64 * 1024  #: status line and headers
_MAX_LINE = 8 * 1024


class BadResponse(ValueError):
    """The daemon's answer is not the HTTP it sends (a broken or foreign peer)."""


def _line(f: BinaryIO, limit: int = _MAX_LINE) -> bytes:
    line = f.readline(limit + 1)
    if not line.endswith(b"\n"):
        raise BadResponse("answer cut short" if len(line) <= limit else "answer line too long")
    return line.rstrip(b"\r\n")


class _Response:
    """Status, headers and a body reader of one HTTP/1.1 answer."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._f: BinaryIO = sock.makefile("rb")
        status = _line(self._f).split(b" ", 2)
        if len(status) < 2 or not status[0].startswith(b"HTTP/1.") or not status[1].isdigit():
            raise BadResponse(f"not an HTTP answer: {b' '.join(status)[:80]!r}")
        self.status = int(status[1])
        self.headers: dict[str, str] = {}
        size = 0
        while line := _line(self._f):
            size += len(line)
            if size > _MAX_HEAD:
                raise BadResponse("answer headers too long")
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep:
                raise BadResponse(f"bad header line {line[:80]!r}")
            self.headers[name.strip().lower()] = value.strip()
        self.chunked = self.headers.get("transfer-encoding", "").lower() == "chunked"

    def close(self) -> None:
        self._f.close()
        self._sock.close()

    def _chunks(self) -> Iterator[bytes]:
        while True:
            size_text = _line(self._f).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise BadResponse(f"bad chunk size {size_text[:20]!r}") from None
            if size == 0:
                while _line(self._f):  # trailers, then the blank line
                    pass
                return
            data = self._f.read(size)
            if len(data) != size or self._f.read(2) != b"\r\n":
                raise BadResponse("answer cut short inside a chunk")
            yield data

    def read(self) -> bytes:
        """The whole body."""
        if self.chunked:
            return b"".join(self._chunks())
        length = self.headers.get("content-length")
        if length is None:
            return self._f.read()
        if not length.isdigit():
            raise BadResponse(f"bad Content-Length {length[:20]!r}")
        data = self._f.read(int(length))
        if len(data) != int(length):
            raise BadResponse("answer cut short")
        return data

    def lines(self) -> Iterator[bytes]:
        """The body line by line, as it arrives."""
        if not self.chunked:
            yield from self.read().splitlines(keepends=True)
            return
        pending = b""
        for chunk in self._chunks():
            pending += chunk
            *done, pending = pending.split(b"\n")
            for line in done:
                yield line + b"\n"
        if pending:
            yield pending


class ApiClient:
    """Talks to the daemon whose data dir is ``data_dir`` (or ``socket_path``)."""

    def __init__(
        self,
        data_dir: Path | str | None = None,
        *,
        socket_path: Path | str | None = None,
        timeout: float = 30.0,
    ) -> None:
        if socket_path:
            self.socket_path = Path(socket_path)
        else:
            if data_dir:
                base = Path(data_dir)
            else:
                from node.config import default_data_dir  # only without --data-dir: it costs ~8 ms

                base = default_data_dir()
            self.socket_path = base / "api.sock"
        self.timeout = timeout

    def _open(self, method: str, path: str, body: Any) -> _Response:
        payload = b"" if body is None else json.dumps(body).encode()
        head = f"{method} {path} HTTP/1.1\r\nHost: cpn\r\nConnection: close\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.socket_path))
            sock.sendall(head.encode() + b"\r\n" + payload)
            return _Response(sock)
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            raise UserError(
                f"the daemon is not running (no API at {self.socket_path}); "
                "start it with `cpn node run`, or pass the --data-dir of a running one",
                ExitCode.NO_DAEMON,
            ) from None
        except TimeoutError:
            sock.close()
            raise UserError(
                f"the daemon did not answer {method} {path} in {self.timeout:g} s",
                ExitCode.NO_DAEMON,
            ) from None
        except (OSError, BadResponse) as exc:
            sock.close()
            raise UserError(
                f"cannot reach the daemon at {self.socket_path}: {exc}", ExitCode.NO_DAEMON
            ) from None

    @staticmethod
    def _error(status: int, data: bytes) -> ApiAnswerError:
        try:
            obj = json.loads(data)
            msg = str(obj.get("detail") or obj.get("error") or data.decode())
            reason = str(obj.get("error", ""))
        except (ValueError, AttributeError):
            msg, reason = data.decode(errors="replace"), ""
        return ApiAnswerError(f"{msg} ({reason}, HTTP {status})" if reason else msg,
                              status=status, reason=reason, detail=msg)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """Send one request; return the decoded JSON answer or raise ``UserError``."""
        resp = self._open(method, path, body)
        try:
            data = resp.read()
        except TimeoutError:
            raise UserError(
                f"the daemon did not answer {method} {path} in {self.timeout:g} s",
                ExitCode.NO_DAEMON,
            ) from None
        except (OSError, BadResponse) as exc:
            raise UserError(f"the daemon's answer to {method} {path} broke off: {exc}",
                            ExitCode.NO_DAEMON) from None
        finally:
            resp.close()
        if resp.status >= 400:
            raise self._error(resp.status, data)
        return json.loads(data) if data else None

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def stream(self, method: str, path: str, body: Any = None) -> Iterator[Any]:
        """Yield each NDJSON object of a streaming answer as it arrives."""
        resp = self._open(method, path, body)
        try:
            if resp.status >= 400:
                raise self._error(resp.status, resp.read())
            for line in resp.lines():
                if line.strip():
                    yield json.loads(line)
        finally:
            resp.close()
