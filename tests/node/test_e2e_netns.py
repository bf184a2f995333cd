"""A job across a real (virtual) link: the submitter daemon in its own network
namespace, the provider in the root namespace, joined by a veth pair; with
``tc netem`` (25 ms each way = 50 ms RTT, 1 % loss each way) where the kernel has it.

The provider stays in the root namespace because ``ip netns exec`` remounts
/sys, which hides the cgroup hierarchy podman needs.  Needs root and iproute2
(marker ``netns``); the netem variant is skipped with the reason when the
kernel lacks ``sch_netem``."""

from __future__ import annotations

import functools
import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from support.daemons import CPN, daemon
from support.podman import shared_env

from node.execute.selftest_image import BUSYBOX, build_busybox_image

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.netns,
    pytest.mark.podman,
    pytest.mark.skipif(not BUSYBOX.is_file(), reason=f"{BUSYBOX} missing: apt-get install busybox-static"),
]


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


@functools.cache
def netem_missing() -> str | None:
    """None if ``tc qdisc ... netem`` works here, else why not."""
    name = f"cpnq{os.getpid() % 100000}"
    if ip("link", "add", name, "type", "veth", "peer", "name", name + "p", check=False).returncode != 0:
        return "cannot create a veth pair to probe netem"
    try:
        tc = subprocess.run(["tc", "qdisc", "add", "dev", name, "root", "netem", "delay", "1ms"],
                            capture_output=True, text=True)
        return None if tc.returncode == 0 else f"tc netem unavailable: {tc.stderr.strip()}"
    finally:
        ip("link", "delete", name, check=False)


@contextmanager
def link(netem: bool) -> Iterator[tuple[str, str, str]]:
    """(namespace, root-side address, namespace-side address), removed afterwards."""
    n = os.getpid() % 100000
    ns, host_if, ns_if = f"cpnt{n}", f"cpnh{n}", f"cpnn{n}"
    ip("netns", "add", ns)
    try:
        ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        ip("link", "set", ns_if, "netns", ns)
        ip("addr", "add", "10.213.0.1/24", "dev", host_if)
        ip("link", "set", host_if, "up")
        ip("-n", ns, "addr", "add", "10.213.0.2/24", "dev", ns_if)
        ip("-n", ns, "link", "set", ns_if, "up")
        ip("-n", ns, "link", "set", "lo", "up")
        if netem:
            for where, dev in (([], host_if), (["-n", ns], ns_if)):
                subprocess.run(["tc", *where, "qdisc", "add", "dev", dev, "root", "netem", "delay", "25ms",
                                "loss", "1%"], check=True, capture_output=True)
        yield ns, "10.213.0.1", "10.213.0.2"
    finally:
        ip("link", "delete", host_if, check=False)
        ip("netns", "delete", ns, check=False)


@pytest.mark.parametrize("netem", [False, True], ids=["veth", "veth+netem-50ms-1pct"])
def test_job_across_a_veth_link(tmp_path: Path, netem: bool) -> None:
    if netem and netem_missing():
        pytest.skip(str(netem_missing()))
    env = shared_env()
    build_busybox_image(tmp_path / "image")
    job = tmp_path / "job.toml"
    job.write_text(
        'name = "hello"\nimage = "image"\ncommand = ["/bin/sh", "-c"]\n'
        'args = ["echo across the link; echo hi > /out/greeting.txt"]\noutputs = ["/out"]\nmax_price = 100000\n'
        "[resources]\ncpus = 0.5\nmemory_mib = 64\ndisk_mib = 16\n"
        "[timeouts]\ntransfer_s = 120\nqueue_s = 60\nrun_s = 60\n"
    )
    with link(netem) as (ns, host_addr, ns_addr):
        prov_conf = tmp_path / "prov.toml"
        prov_conf.write_text(
            f'[node]\nlisten = ["/ip4/{host_addr}/tcp/0"]\n[transfer]\ndata_host = "{host_addr}"\n'
            f'[execution]\nenabled = true\npodman_root = "{env.settings.root}"\n'
            f'podman_runroot = "{env.settings.runroot}"\n')
        sub_conf = tmp_path / "sub.toml"
        sub_conf.write_text(f'[node]\nlisten = ["/ip4/{ns_addr}/tcp/0"]\n[transfer]\ndata_host = "{ns_addr}"\n')
        with daemon(tmp_path / "prov", "--config", str(prov_conf), listen=None) as prov, \
                daemon(tmp_path / "sub", "--config", str(sub_conf), listen=None,
                       prefix=("ip", "netns", "exec", ns)):
            done = subprocess.run(
                [CPN, "submit", str(job), "--follow", "--json", "--data-dir", str(tmp_path / "sub"),
                 "--peer", prov["addrs"][0], "--results", str(tmp_path / "results")],
                cwd=ROOT, capture_output=True, text=True, timeout=180,
            )
            assert done.returncode == 0, done.stdout + done.stderr
            run = json.loads(done.stdout)
            assert run["state"] == "finished" and run["receipt"]["accepted"]
            assert (tmp_path / "results" / run["id"] / "out" / "greeting.txt").read_text() == "hi\n"
