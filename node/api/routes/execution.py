"""``/v1/execution``: the container runtime's self-test, and a run's log lines."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio

from node.api.server import Api, ApiError, Request, StreamingResponse
from node.execute.service import ExecutionService

__all__ = ["register"]


async def _file_lines(path: Path) -> AsyncIterator[bytes]:
    data = await trio.Path(path).read_bytes()
    for line in data.splitlines(keepends=True):
        yield line


def register(api: Api, execution: ExecutionService) -> None:
    async def status(request: Request) -> Any:
        """Whether execution is on, and what its self-test proved."""
        ex = execution.executor
        return {
            "enabled": ex is not None,
            "capability": ex.capability.to_json() if ex and ex.capability else None,
            "advertised": execution.capability.to_wire(),
            "settled_after_restart": [s.message.agreement_id.hex() for s in execution.settled],
        }

    async def logs(request: Request) -> Any:
        """``{"line": text}`` per log line: live for a running job (what
        ``cpn job logs --follow`` reads), from the log file for a finished one."""
        job = request.params["job"]
        ex = execution.executor
        if ex is None or not re.fullmatch(r"[0-9a-f]{32}", job):
            raise ApiError(404, "unknown_job", job[:80])
        stream = ex.logs(job)
        source: AsyncIterator[bytes]
        if stream is not None:
            source = stream.follow()
        else:
            path = ex.runs_dir / job / "log"
            if not path.is_file():
                raise ApiError(404, "unknown_job", job)
            source = _file_lines(path)

        async def items() -> AsyncIterator[dict[str, str]]:
            async for line in source:
                yield {"line": line.decode(errors="replace").rstrip("\n")}

        return StreamingResponse(items())

    api.route("GET", "/v1/execution", status, summary="Container runtime self-test")
    api.route("GET", "/v1/execution/{job}/logs", logs, streaming=True,
              summary="A run's log lines (NDJSON); follows a running job until it ends")
