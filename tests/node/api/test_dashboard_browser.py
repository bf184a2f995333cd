"""The dashboard in a real browser: Debian's headless Chromium against a two-node testnet.

A provider (fake GPUs, real podman) and a submitter run in-process, each with its
dashboard on a 127.0.0.1 port; the submitter runs a real job on the provider to
its co-signed receipt.  Then Chromium loads each page (``--dump-dom`` after the
page's scripts have fetched and rendered, under a virtual-time budget) and the
test reads the DOM: the node's peer ID, the GPUs, the job with its timeline and
log, the transfers, the adverts and the ledger totals on both sides.

``CPN_DASHBOARD_SCREENSHOTS=<dir>`` also saves a PNG of each page there (how
docs/img/dashboard-*.png are made).  Skipped where Chromium is not installed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import trio
from support.podman import shared_env

from node.api.dashboard import load_token
from node.api.routes.jobs import submit_request
from node.config import config_from_dict
from node.daemon import Node, run_node
from node.execute.selftest_image import BUSYBOX, build_busybox_image
from node.jobs.jobfile import load_job

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.podman,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"),
    pytest.mark.skipif(not BUSYBOX.is_file(), reason=f"{BUSYBOX} missing: apt-get install busybox-static"),
]

LOOP = "/ip4/127.0.0.1/tcp/0"
#: flags that work on a closed network, as root, without a display (FIELD-NOTES / python.md)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1280,900"]
#: virtual time for a page's scripts to fetch and render (virtual: it does not wait for real)
BUDGET_MS = 15000
LOAD_TRIES = 3  #: dumps of a page that has not rendered yet (Browser.load)
#: two H100s, one of them busy, as NVML would report them
FAKE_GPUS = json.dumps({"gpus": [
    {"name": "NVIDIA H100 80GB HBM3", "memory_mib": 81559, "cc": "9.0", "free_mib": 40960, "utilisation": 63},
    {"name": "NVIDIA H100 80GB HBM3", "memory_mib": 81559, "cc": "9.0"},
]})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Dom(HTMLParser):
    """The text of a dumped DOM, whole and per element ``id``, and every attribute value."""

    VOID = {"br", "hr", "img", "input", "link", "meta", "wbr", "source", "col", "area", "base"}

    def __init__(self, html: str) -> None:
        super().__init__()
        self.stack: list[str | None] = []
        self.by_id: dict[str, list[str]] = {}
        self.text: list[str] = []
        self.attrs: list[str] = []
        self.body: dict[str, str] = {}
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        self.attrs += [v for v in named.values() if v]
        if tag == "body":
            self.body = {k: v or "" for k, v in named.items()}
        if tag in self.VOID:
            return
        ident = named.get("id")
        if ident:
            self.by_id[ident] = []
        self.stack.append(ident)

    def handle_endtag(self, tag: str) -> None:
        if tag not in self.VOID and self.stack:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        for ident in self.stack:
            if ident is not None:
                self.by_id[ident].append(data)

    def of(self, ident: str) -> str:
        assert ident in self.by_id, f"no element #{ident}"
        return "".join(self.by_id[ident]).strip()

    @property
    def all(self) -> str:
        return " ".join("".join(self.text).split())


@dataclass
class Browser:
    tmp: Path
    shots: Path | None = None
    loads: int = field(default=0)
    #: port -> that node's dashboard token (the dashboard is private by default)
    tokens: dict[int, str] = field(default_factory=dict)

    async def load(self, port: int, path: str, shot: str = "") -> Dom:
        """The DOM of ``http://127.0.0.1:<port><path>`` once its scripts have rendered.

        Chromium holds virtual time still only while a request awaits its
        response, not while a streamed body (the job page's NDJSON events) is
        read: on a loaded machine such a page was dumped before its stream
        ended (seen once in CI).  A page not rendered is loaded again with
        twice the budget, up to LOAD_TRIES times; one that never renders fails."""
        url = f"http://127.0.0.1:{port}{path}"
        if port in self.tokens:  # handed over in the address, as `cpn dashboard` prints it
            url += f"#token={self.tokens[port]}"
        for attempt in range(LOAD_TRIES):
            self.loads += 1
            args = [CHROMIUM or "chromium", *FLAGS, f"--user-data-dir={self.tmp / f'profile{self.loads}'}",
                    f"--virtual-time-budget={BUDGET_MS << attempt}"]
            with trio.fail_after(120):
                done = await trio.run_process([*args, "--dump-dom", url], capture_stdout=True,
                                              capture_stderr=True, check=False)
            html = done.stdout.decode(errors="replace")
            assert done.returncode == 0 and html, done.stderr.decode(errors="replace")[-2000:]
            dom = Dom(html)
            if dom.body.get("data-ready") == "1":
                break
        assert dom.body.get("data-ready") == "1", f"{path} never rendered: {dom.all[:1500]}"
        if self.shots is not None and shot:
            with trio.fail_after(120):
                await trio.run_process([*args, f"--screenshot={self.shots / shot}", url], capture_stdout=True,
                                       capture_stderr=True, check=False)
        assert "Cannot read the daemon" not in dom.all, dom.all[:1500]
        return dom


@pytest.fixture(scope="module")
def podman_env() -> Any:
    return shared_env()  # synchronous: it runs trio itself, once per test process


@asynccontextmanager
async def two_nodes(tmp: Path, env: Any) -> AsyncIterator[tuple[Node, Node]]:
    async with trio.open_nursery() as nursery:
        provider_cfg = config_from_dict({
            "node": {"data_dir": str(tmp / "provider"), "listen": [LOOP]},
            "discovery": {"fake_gpus": FAKE_GPUS},
            "dashboard": {"port": free_port()},
            "execution": {"enabled": True, "podman_root": str(env.settings.root),
                          "podman_runroot": str(env.settings.runroot)},
        })
        provider: Node = await nursery.start(lambda task_status: run_node(provider_cfg, task_status=task_status))
        boot = f"{provider.p2p.listen_addrs[0]}"
        sub_cfg = config_from_dict({
            "node": {"data_dir": str(tmp / "submitter"), "listen": [LOOP], "bootstrap": [boot]},
            "dashboard": {"port": free_port()},
        })
        submitter: Node = await nursery.start(lambda task_status: run_node(sub_cfg, task_status=task_status))
        yield provider, submitter
        nursery.cancel_scope.cancel()


def hello_job(d: Path) -> Path:
    build_busybox_image(d / "image")
    (d / "input.txt").write_text("some input\n")
    job = d / "job.toml"
    job.write_text(
        'name = "hello"\nimage = "image"\ncommand = ["/bin/sh", "-c"]\n'
        'args = ["echo start; cat /data/input.txt; echo hello > /out/greeting.txt; echo done"]\n'
        'outputs = ["/out"]\nmax_price = 100000\n'
        "[resources]\ncpus = 0.5\nmemory_mib = 64\ndisk_mib = 16\n"
        "[timeouts]\ntransfer_s = 60\nqueue_s = 60\nrun_s = 60\n"
        '[[inputs]]\nfile = "input.txt"\npath = "/data/input.txt"\n'
    )
    return job


async def run_job(provider: Node, submitter: Node, job: Path, results: Path) -> Any:
    loaded = load_job(job)
    body = {"job_hex": loaded.spec.encode().hex(),
            "blob_paths": {d: str(p) for d, p in loaded.blob_paths.items()}, "results_dir": str(results),
            "timeout": 5.0, "peers": [f"{provider.p2p.listen_addrs[0]}"]}
    run = await submitter.runner.submit(submit_request(body))
    with trio.fail_after(120):
        await submitter.runner.live[run.id].done.wait()
    assert run.state == "finished", run.detail
    pj = provider.provider_jobs.jobs[run.attempts[-1].agreement_id]
    with trio.fail_after(30):  # the provider recorded the receipt in its ledger too
        while pj.phase.value != "settled":
            changed = pj.changed
            if pj.phase.value == "settled":
                break
            await changed.wait()
    return run


def units(micro: int) -> str:
    return f"{micro / 1e6:.6f}"


async def test_every_page_shows_the_testnet_in_chromium(tmp_path: Path, podman_env: Any) -> None:
    shots_dir = os.environ.get("CPN_DASHBOARD_SCREENSHOTS")
    shots = Path(shots_dir) if shots_dir else None
    if shots is not None:
        shots.mkdir(parents=True, exist_ok=True)
    browser = Browser(tmp_path, shots)
    async with two_nodes(tmp_path, podman_env) as (provider, sub):
        run = await run_job(provider, sub, hello_job(tmp_path / "job"), tmp_path / "results")
        price = run.attempts[-1].price
        p_port, s_port = provider.web.ports["dashboard"], sub.web.ports["dashboard"]
        browser.tokens = {p_port: load_token(provider.data_dir), s_port: load_token(sub.data_dir)}

        home = await browser.load(s_port, "/", "dashboard-overview.png")
        assert home.of("peer-id") == sub.peer_id
        assert "finished 1" in home.of("jobs")

        gpus = await browser.load(p_port, "/gpus", "dashboard-gpus.png")
        assert gpus.all.count("NVIDIA H100 80GB HBM3") == 2
        assert {g.uuid for g in provider.discovery.report.gpus} <= set(gpus.attrs)  # data-uuid per card
        used, total = (81559 - 40960) / 1024, 81559 / 1024
        assert "63 %" in gpus.all and f"{used:.1f} GiB of {total:.1f} GiB used" in gpus.all, gpus.all
        assert "fake" in gpus.of("gpu-note").lower()

        jobs = await browser.load(sub.web.ports["dashboard"], "/jobs", "dashboard-jobs.png")
        assert run.id in jobs.of("submitted") and "finished" in jobs.of("submitted")
        served = await browser.load(p_port, "/jobs")
        assert run.attempts[-1].agreement_id[:14] in served.of("served") and "settled" in served.of("served")

        job = await browser.load(s_port, f"/job?id={run.id[:8]}", "dashboard-job.png")
        assert job.of("job-id") == run.id and "finished" in job.of("job-state")
        timeline = job.of("timeline")
        for phase in ("negotiating", "agreed", "transferring", "running", "collecting", "finished"):
            assert phase in timeline, timeline
        log = job.of("log")
        assert "start" in log and "some input" in log and "done" in log

        network = await browser.load(s_port, "/network", "dashboard-network.png")
        assert provider.peer_id in network.of("peers")
        assert provider.peer_id in network.attrs and "h100, h100" in network.of("adverts")  # its advert, held
        provider_net = await browser.load(p_port, "/network")
        own = provider_net.of("own-advert")
        assert "h100, h100" in own and " min)" in own  # expires in minutes (lifetime 300 s)

        transfers = await browser.load(p_port, "/transfers", "dashboard-transfers.png")
        job_blobs = {b.digest for b in load_job(tmp_path / "job" / "job.toml").spec.blobs()}
        assert job_blobs <= set(transfers.attrs)  # each blob's full digest is in its cell's title

        spent = await browser.load(s_port, "/ledger", "dashboard-ledger.png")
        assert spent.of("total-spent") == units(price) and spent.of("total-earned") == units(0)
        assert provider.peer_id in spent.of("per-peer")
        earned = await browser.load(p_port, "/ledger")
        assert earned.of("total-earned") == units(price) and sub.peer_id in earned.of("per-peer")
