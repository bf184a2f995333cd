"""A malicious provider agrees, then answers every watch with an endless log and
reports the job RUNNING forever.  The submitter keeps a bounded number of lines in
memory and a bounded spool on disk, still shows every spooled line to
``cpn job logs``, and ends the run at transfer_s + queue_s + run_s + grace after
the agreement.  (issue 12, broken item 5)"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from support.adversary import flood_logs
from support.net import addr_of, container_proven, network

from node.api.routes.jobs import submit_request
from node.execute.oci_pack import pack_image
from node.jobs.jobfile import load_job

pytestmark = pytest.mark.adversarial


def tiny_job(d: Path) -> Path:
    """A job with a one-file image (never run: the provider only pretends)."""
    root = d / "rootfs"
    root.mkdir(parents=True)
    (root / "hello").write_text("hello\n")
    pack_image([root], d / "image", cmd=["/hello"])
    job = d / "job.toml"
    job.write_text('name = "flooded"\nimage = "image"\ncommand = ["/hello"]\nmax_price = 100000\n'
                   "[resources]\ncpus = 0.1\nmemory_mib = 16\ndisk_mib = 16\n"
                   "[timeouts]\ntransfer_s = 1\nqueue_s = 1\nrun_s = 1\n")
    return job


async def test_endless_log_is_bounded_and_the_run_ends(tmp_path: Path) -> None:
    job = tiny_job(tmp_path / "job")
    memory_lines, max_mib = 100, 1
    async with network(tmp_path) as net:
        bad = await net.start("bad", prepare=container_proven)
        sub = await net.start("sub", jobs={"log_memory_lines": memory_lines, "max_log_mib": max_mib,
                                           "run_grace_s": 1})
        sent = flood_logs(bad.p2p, bad.key)
        loaded = load_job(job)
        run = await sub.runner.submit(submit_request({
            "job_hex": loaded.spec.encode().hex(), "results_dir": str(tmp_path / "results"),
            "blob_paths": {d: str(p) for d, p in loaded.blob_paths.items()},
            "peers": [addr_of(bad)], "retries": 0}))
        live = sub.runner.live[run.id]
        with trio.fail_after(60):  # 3 s of phases + 1 s of grace after the agreement
            await live.done.wait()
        assert run.state == "failed" and "no result within" in run.detail, run.detail
        assert sent[0] > 10 * memory_lines  # the provider did flood
        assert len(live.lines) == memory_lines  # memory: bounded
        spool = live.log.path
        assert spool is not None and spool.stat().st_size <= (max_mib << 20) + 200  # disk: bounded
        assert live.log.count > memory_lines and live.log.dropped > 0
        # every spooled line is still shown (cpn job logs reads the file past the memory)
        lines = [ev["line"] async for ev in sub.runner.events(run, False, "log")]
        assert len(lines) == live.log.count
        assert lines[0] == "x" * 400 and "later lines are not kept" in lines[-1]
        # and the provider was told to stop
        assert any(ev["event"] == "attempt_failed" for ev in live.events)
