"""The local API: h11 on a real Unix socket, JSON, errors, NDJSON streaming, OpenAPI."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from node.api.client import ApiClient
from node.api.server import Api, ApiError, DaemonAlreadyRunning, Request, StreamingResponse
from node.cli import CliError


def make_api() -> Api:
    api = Api()

    async def get_job(request: Request) -> Any:
        if request.params["id"] == "missing":
            raise ApiError(404, "no_such_job", "job missing is unknown")
        return {"id": request.params["id"], "verbose": request.query.get("verbose")}

    async def echo(request: Request) -> Any:
        return {"got": request.json()}

    async def follow(request: Request) -> Any:
        async def items() -> AsyncIterator[Any]:
            for i in range(3):
                yield {"n": i}

        return StreamingResponse(items())

    api.route("GET", "/v1/jobs/{id}", get_job, summary="One job")
    api.route("POST", "/v1/echo", echo)
    api.route("GET", "/v1/follow", follow, streaming=True)
    return api


@asynccontextmanager
async def serving(tmp_path: Path) -> AsyncIterator[ApiClient]:
    api = make_api()
    path = tmp_path / "api.sock"
    async with trio.open_nursery() as nursery:
        await nursery.start(api.serve, path)
        yield ApiClient(socket_path=path, timeout=5)
        nursery.cancel_scope.cancel()


async def call(fn: Any, *args: Any) -> Any:
    return await trio.to_thread.run_sync(fn, *args)


async def test_json_routes_and_path_params(tmp_path: Path) -> None:
    async with serving(tmp_path) as client:
        assert await call(client.get, "/v1/jobs/abc?verbose=1") == {"id": "abc", "verbose": "1"}
        assert await call(client.post, "/v1/echo", {"a": [1, 2]}) == {"got": {"a": [1, 2]}}


async def test_errors_are_json_with_a_reason(tmp_path: Path) -> None:
    async with serving(tmp_path) as client:
        with pytest.raises(CliError) as err:
            await call(client.get, "/v1/jobs/missing")
        assert err.value.reason == "no_such_job" and err.value.status == 404  # type: ignore[attr-defined]
        with pytest.raises(CliError) as err:
            await call(client.get, "/v1/nothing")
        assert err.value.status == 404  # type: ignore[attr-defined]
        with pytest.raises(CliError) as err:
            await call(client.delete, "/v1/echo")
        assert err.value.status == 405  # type: ignore[attr-defined]


async def test_malformed_body_is_400(tmp_path: Path) -> None:
    async with serving(tmp_path) as client:

        def raw_post() -> bytes:
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(client.socket_path))
            s.sendall(b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n{x]")
            data = s.recv(4096)
            s.close()
            return data

        data = await call(raw_post)
        assert data.startswith(b"HTTP/1.1 400") and b"bad_json" in data


async def test_garbage_http_gets_400_and_server_keeps_serving(tmp_path: Path) -> None:
    async with serving(tmp_path) as client:

        def garbage() -> bytes:
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(client.socket_path))
            s.sendall(b"\x00\x01 not http at all\r\n\r\n")
            data = s.recv(4096)
            s.close()
            return data

        assert (await call(garbage)).startswith(b"HTTP/1.1 400")
        assert (await call(client.get, "/v1/jobs/x"))["id"] == "x"


async def test_streaming_ndjson(tmp_path: Path) -> None:
    async with serving(tmp_path) as client:
        items = await call(lambda: list(client.stream("GET", "/v1/follow")))
        assert items == [{"n": 0}, {"n": 1}, {"n": 2}]


async def test_openapi_lists_every_route(tmp_path: Path) -> None:
    async with serving(tmp_path) as client:
        doc = await call(client.get, "/v1/openapi.json")
    assert doc["openapi"].startswith("3.")
    assert set(doc["paths"]) == {"/v1/openapi.json", "/v1/jobs/{id}", "/v1/echo", "/v1/follow"}
    job = doc["paths"]["/v1/jobs/{id}"]["get"]
    assert job["summary"] == "One job"
    assert job["parameters"][0]["name"] == "id"
    assert (
        "application/x-ndjson" in doc["paths"]["/v1/follow"]["get"]["responses"]["200"]["content"]
    )


async def test_socket_is_private_and_removed_on_exit(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    async with serving(tmp_path):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert not path.exists()


async def test_stale_socket_is_replaced_live_one_refused(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # a crashed daemon's leftover: nobody listens
    async with serving(tmp_path) as client:
        assert (await call(client.get, "/v1/jobs/y"))["id"] == "y"
        with pytest.raises(DaemonAlreadyRunning):
            await Api().serve(path)


def test_client_without_daemon_says_so(tmp_path: Path) -> None:
    with pytest.raises(CliError, match="daemon is not running"):
        ApiClient(tmp_path).get("/v1/id")


def test_duplicate_route_is_a_bug() -> None:
    api = make_api()

    async def h(request: Request) -> Any:
        return None

    with pytest.raises(ValueError, match="twice"):
        api.route("POST", "/v1/echo", h)
