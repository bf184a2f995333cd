"""Synchronous client of the daemon's Unix-socket API, for CLI commands.

Stdlib only (``http.client`` over ``AF_UNIX``) so a CLI command starts fast and
never imports libp2p.  Every failure is a :class:`~node.errors.UserError` with a
message a user can act on ("the daemon is not running ...").
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from node.config import default_data_dir
from node.errors import ApiAnswerError, ExitCode, UserError


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class ApiClient:
    """Talks to the daemon whose data dir is ``data_dir`` (or ``socket_path``)."""

    def __init__(
        self,
        data_dir: Path | str | None = None,
        *,
        socket_path: Path | str | None = None,
        timeout: float = 30.0,
    ) -> None:
        base = Path(data_dir) if data_dir else default_data_dir()
        self.socket_path = Path(socket_path) if socket_path else base / "api.sock"
        self.timeout = timeout

    def _open(self, method: str, path: str, body: Any) -> http.client.HTTPResponse:
        conn = _UnixConnection(str(self.socket_path), self.timeout)
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        try:
            conn.request(method, path, body=payload, headers=headers)
            return conn.getresponse()
        except (FileNotFoundError, ConnectionRefusedError):
            raise UserError(
                f"the daemon is not running (no API at {self.socket_path}); "
                "start it with `cpn node run`, or pass the --data-dir of a running one",
                ExitCode.NO_DAEMON,
            ) from None
        except TimeoutError:
            raise UserError(
                f"the daemon did not answer {method} {path} in {self.timeout:g} s",
                ExitCode.NO_DAEMON,
            ) from None
        except OSError as exc:
            raise UserError(
                f"cannot reach the daemon at {self.socket_path}: {exc}", ExitCode.NO_DAEMON
            ) from None

    @staticmethod
    def _error(resp: http.client.HTTPResponse, data: bytes) -> ApiAnswerError:
        try:
            obj = json.loads(data)
            msg = str(obj.get("detail") or obj.get("error") or data.decode())
            reason = str(obj.get("error", ""))
        except (ValueError, AttributeError):
            msg, reason = data.decode(errors="replace"), ""
        return ApiAnswerError(f"{msg} ({reason}, HTTP {resp.status})" if reason else msg,
                              status=resp.status, reason=reason, detail=msg)

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
        if resp.status >= 400:
            raise self._error(resp, data)
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
        if resp.status >= 400:
            raise self._error(resp, resp.read())
        while True:
            line = resp.readline()
            if not line:
                return
            if line.strip():
                yield json.loads(line)
