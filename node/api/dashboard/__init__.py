"""The web dashboard and ``/metrics``: what the daemon serves on its 127.0.0.1 TCP ports.

Both are opt-in (``[dashboard] port``, ``[metrics] port``; 0 = off) and bound
to 127.0.0.1 only.  They are served by the same hardened HTTP server as the
local API (:mod:`node.api.server`), each port with its own route table, a
*site*:

* the dashboard's pages: plain HTML, CSS and one small vanilla script per
  page, shipped in ``static/`` as package data (no build step, no CDN: it
  works offline);
* a read-only bridge to the local API: the GET routes in
  :data:`READ_ROUTES` call the same handlers as on the Unix socket, NDJSON
  streams (``/v1/jobs/{id}/events?follow=1``) included;
* ``GET /metrics`` when that port serves metrics;
* :data:`ACTIONS` (cancel a job), each requiring ``Authorization: Bearer
  <token>``, where the token is the content of ``<data_dir>/dashboard.token``
  (mode 0600): only a user who can read the node's data dir -- the user the
  API socket admits -- can act.  With ``[dashboard] private = true`` the
  read routes require it too.

Any local user can connect to a 127.0.0.1 port, so reads are public to the
host's users unless ``private`` is set (docs/dashboard.md).  A request whose
``Host`` is not this port's own name is refused (DNS rebinding), responses
forbid framing and cross-origin embedding, and there are no CORS headers, so
other web sites open in the user's browser can neither read the dashboard
nor send it an authorised request.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import stat
from collections.abc import Callable
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

import trio
from trio_typing import TaskStatus

from node.api.server import Api, ApiError, Handler, RawResponse, Request
from node.metrics import Metrics

__all__ = ["TOKEN_FILE", "READ_ROUTES", "ACTIONS", "PAGES", "load_token", "build_site", "WebService"]

log = logging.getLogger("cpn.dashboard")

TOKEN_FILE = "dashboard.token"

#: local API routes the dashboard port answers too (only reads; absent ones are skipped)
READ_ROUTES = (
    "/v1/health", "/v1/id", "/v1/peers", "/v1/status", "/v1/advert", "/v1/execution",
    "/v1/jobs", "/v1/jobs/{id}", "/v1/jobs/{id}/events",
    "/v1/agreements", "/v1/agreements/{id}",
    "/v1/transfers", "/v1/transfers/{digest}",
    "/v1/dashboard/gpus", "/v1/dashboard/capacity", "/v1/dashboard/adverts",
    "/v1/dashboard/served", "/v1/dashboard/ledger",
)
#: local API routes that act: on the dashboard port only with the token
ACTIONS = (("POST", "/v1/jobs/{id}/cancel"),)

#: page path -> HTML file in static/
PAGES = {
    "/": "index.html", "/gpus": "gpus.html", "/network": "network.html", "/jobs": "jobs.html",
    "/job": "job.html", "/transfers": "transfers.html", "/ledger": "ledger.html",
}
_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".js": "text/javascript; charset=utf-8", ".png": "image/png", ".svg": "image/svg+xml"}

#: sent with every answer of a dashboard or metrics port
SECURITY_HEADERS = (
    ("Content-Security-Policy",
     "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
     "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
)


def load_token(data_dir: Path) -> str:
    """The dashboard token, created (random, mode 0600) if missing.

    A token file that others could read is treated as leaked: it is replaced.
    """
    path = Path(data_dir) / TOKEN_FILE
    try:
        st = path.stat()
    except FileNotFoundError:
        st = None
    if st is not None:
        text = path.read_text().strip()
        if stat.S_IMODE(st.st_mode) & 0o077 == 0 and len(text) >= 32:
            return text
        log.warning("%s was readable by others (or malformed): replacing it", path)
        path.unlink()
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def _static_files() -> dict[str, RawResponse]:
    out = {}
    for entry in (resources.files(__name__) / "static").iterdir():
        suffix = Path(entry.name).suffix
        if entry.is_file() and suffix in _TYPES:
            out[entry.name] = RawResponse(entry.read_bytes(), _TYPES[suffix])
    return out


def _bearer(request: Request) -> str:
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() if auth[:7].lower() == "bearer " else ""


def _guarded(handler: Handler, token: str) -> Handler:
    async def guarded(request: Request) -> Any:
        if not hmac.compare_digest(_bearer(request).encode(), token.encode()):
            raise ApiError(401, "unauthorised", f"send Authorization: Bearer <the token in {TOKEN_FILE}>")
        return await handler(request)

    guarded.__doc__ = handler.__doc__
    return guarded


def build_site(
    api: Api, *, metrics: Metrics | None, pages: bool, token: str = "", private: bool = False
) -> Api:
    """The route table of one TCP port: pages and the API bridge (``pages``), ``/metrics``."""
    site = Api(title="CPN node dashboard")
    site.stats = api.stats  # one set of counters for every HTTP server of the node
    if metrics is not None:
        async def scrape(request: Request) -> Any:
            """Prometheus metrics (text format 0.0.4)."""
            return RawResponse(metrics.render().encode(), Metrics.CONTENT_TYPE)

        site.route("GET", "/metrics", scrape, summary="Prometheus metrics")
    if not pages:
        return site
    files = _static_files()
    for path, name in PAGES.items():
        site.route("GET", path, _file(files, name), summary=f"Dashboard page {name}")

    async def static(request: Request) -> Any:
        """A stylesheet or script of the dashboard."""
        name = request.params["name"]
        if name not in files or name.endswith(".html"):
            raise ApiError(404, "not_found", f"no static file {name[:80]}")
        return files[name]

    async def session(request: Request) -> Any:
        """Whether this request's token may act (and read, when the dashboard is private)."""
        ok = bool(token) and hmac.compare_digest(_bearer(request).encode(), token.encode())
        return {"authorised": ok, "private": private, "token_file": TOKEN_FILE, "actions": bool(token)}

    site.route("GET", "/static/{name}", static, summary="Dashboard scripts and styles")
    site.route("GET", "/v1/dashboard/session", session, summary="Whether the sent token may act")
    routes = {(r.method, r.template): r for r in api.routes}
    for template in READ_ROUTES:
        r = routes.get(("GET", template))
        if r is not None:
            handler = _guarded(r.handler, token) if private else r.handler
            site.route("GET", template, handler, summary=r.summary, streaming=r.streaming)
    for method, template in ACTIONS:
        r = routes.get((method, template))
        if r is not None and token:
            site.route(method, template, _guarded(r.handler, token), summary=r.summary)
    return site


def _file(files: dict[str, RawResponse], name: str) -> Handler:
    async def page(request: Request) -> Any:
        return files[name]

    return page


class WebService:
    """Serves the dashboard and ``/metrics`` on their 127.0.0.1 ports (one port if equal)."""

    def __init__(self, api: Api, metrics: Metrics, *, dashboard_port: int, metrics_port: int,
                 private: bool, data_dir: Path) -> None:
        self.api, self.metrics, self.data_dir = api, metrics, data_dir
        self.dashboard_port, self.metrics_port, self.private = dashboard_port, metrics_port, private
        self.ports: dict[str, int] = {}  #: "dashboard" / "metrics" -> the bound port, once serving
        self._register_metrics()

    def _register_metrics(self) -> None:
        stats = self.api.stats
        for key, help in (("evicted", "HTTP connections dropped to make room for a new one"),
                          ("refused", "HTTP connections refused: every slot busy"),
                          ("timeouts", "HTTP requests that did not arrive in time"),
                          ("bad_requests", "Malformed or oversized HTTP requests"),
                          ("errors", "HTTP handler failures answered with 500")):
            self.metrics.gauge(f"cpn_http_{key}_total", help, _reader(stats, key))

    def _sites(self) -> list[tuple[str, int, Api]]:
        out = []
        if self.dashboard_port:
            token = load_token(self.data_dir)
            both = self.metrics_port == self.dashboard_port
            out.append(("dashboard", self.dashboard_port, build_site(
                self.api, metrics=self.metrics if both else None, pages=True, token=token, private=self.private)))
        if self.metrics_port and self.metrics_port != self.dashboard_port:
            out.append(("metrics", self.metrics_port, build_site(self.api, metrics=self.metrics, pages=False)))
        return out

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        sites = self._sites()
        async with trio.open_nursery() as nursery:
            for name, port, site in sites:
                self.ports[name] = await nursery.start(partial(site.serve_tcp, port, headers=SECURITY_HEADERS))
                if name == "metrics" or self.metrics_port == port:
                    self.ports["metrics"] = self.ports[name]
                log.info("%s on http://127.0.0.1:%d/", name, self.ports[name])
            task_status.started()


def _reader(stats: Any, key: str) -> Callable[[], float]:
    return lambda: float(stats[key])
