"""The end-to-end flow as a user drives it: two `cpn node run` daemons in separate
processes, `cpn submit --follow`, `cpn jobs`, `cpn job show|logs|cancel`, `--json`.

Podman runs in the tests' private storage (tests/support/podman.py).  Every wait
is a blocking read of a process's output (its "ready" line, the next line of
`cpn submit --follow`), bounded by a timeout."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from support.daemons import CPN, ROOT, cpn, daemon
from support.podman import shared_env

from node.execute.selftest_image import BUSYBOX, build_busybox_image

pytestmark = [
    pytest.mark.podman,
    pytest.mark.skipif(not BUSYBOX.is_file(), reason=f"{BUSYBOX} missing: apt-get install busybox-static"),
]


def test_submit_follow_jobs_show_logs_cancel(tmp_path: Path) -> None:
    env = shared_env()
    conf = tmp_path / "provider.toml"
    conf.write_text(f'[execution]\nenabled = true\npodman_root = "{env.settings.root}"\n'
                    f'podman_runroot = "{env.settings.runroot}"\n')
    build_busybox_image(tmp_path / "image")
    job = tmp_path / "job.toml"
    job.write_text(
        'name = "hello"\nimage = "image"\ncommand = ["/bin/sh", "-c"]\n'
        'args = ["echo hello from the container; echo hi > /out/greeting.txt; sleep $NAP"]\n'
        'env = { NAP = "0" }\noutputs = ["/out"]\nmax_price = 100000\n'
        "[resources]\ncpus = 0.5\nmemory_mib = 64\ndisk_mib = 16\n"
        "[timeouts]\ntransfer_s = 60\nqueue_s = 60\nrun_s = 60\n"
    )
    sub_dir = tmp_path / "sub"
    results = tmp_path / "results"
    with daemon(tmp_path / "prov", "--config", str(conf)) as prov, \
            daemon(sub_dir, "--bootstrap", prov["addrs"][0]):
        peer = prov["addrs"][0]
        done = cpn("submit", str(job), "--follow", "--data-dir", str(sub_dir), "--peer", peer,
                   "--results", str(results))
        assert done.returncode == 0, done.stdout + done.stderr
        assert "hello from the container" in done.stdout  # the log, live
        assert "(accepted)" in done.stdout
        jobs = json.loads(cpn("jobs", "--json", "--data-dir", str(sub_dir)).stdout)
        (run,) = jobs["jobs"]
        assert run["state"] == "finished" and run["receipt"]["accepted"]
        assert (results / run["id"] / "out" / "greeting.txt").read_text() == "hi\n"
        shown = json.loads(cpn("job", "show", run["id"][:10], "--json", "--data-dir", str(sub_dir)).stdout)
        assert shown["receipt"] == run["receipt"] and shown["result"]["exit_code"] == 0
        logs = cpn("job", "logs", run["id"], "--data-dir", str(sub_dir))
        assert logs.returncode == 0 and "hello from the container" in logs.stdout
        text = cpn("job", "show", run["id"], "--data-dir", str(sub_dir)).stdout
        assert "timeline:" in text and " run " in text and " receipt " in text  # phase by phase

        # A long job, cancelled while it runs: the follower ends with exit status 8 (cancelled).
        job.write_text(job.read_text().replace('NAP = "0"', 'NAP = "60"'))
        follower = subprocess.Popen([CPN, "submit", str(job), "--follow", "--data-dir", str(sub_dir), "--peer",
                                     peer, "--results", str(results)], cwd=ROOT, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
        try:
            assert follower.stdout is not None
            rid = follower.stdout.readline().split()[1]  # "job <id> submitted ..."
            seen = []
            for line in follower.stdout:  # blocks line by line until the container runs
                seen.append(line)
                if "hello from the container" in line:
                    break
            cancelled = json.loads(cpn("job", "cancel", rid, "--json", "--data-dir", str(sub_dir)).stdout)
            assert cancelled["state"] == "cancelled"
            rest = follower.communicate(timeout=60)[0]
            assert follower.returncode == 8, "".join(seen) + rest  # ExitCode.CANCELLED
            assert "cancelled" in rest
        finally:
            if follower.poll() is None:
                follower.kill()
                follower.wait()
        # The provider's operator cancels an agreement it serves (`cpn job cancel` on the
        # provider): the capacity is released and the submitter's job ends, told so.
        follower = subprocess.Popen([CPN, "submit", str(job), "--follow", "--data-dir", str(sub_dir), "--peer",
                                     peer, "--results", str(results), "--retries", "0"], cwd=ROOT,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            assert follower.stdout is not None
            rid = follower.stdout.readline().split()[1]
            for line in follower.stdout:
                if "hello from the container" in line:
                    break
            shown = json.loads(cpn("job", "show", rid, "--json", "--data-dir", str(sub_dir)).stdout)
            aid = shown["attempts"][-1]["agreement_id"]
            by_operator = cpn("job", "cancel", aid[:12], "--data-dir", str(tmp_path / "prov"))
            assert by_operator.returncode == 0, by_operator.stderr
            assert "cancelled on this provider" in by_operator.stdout
            rest = follower.communicate(timeout=60)[0]
            assert follower.returncode in (5, 8), rest  # the job failed (cancelled by the provider)
            assert "cancelled" in rest
        finally:
            if follower.poll() is None:
                follower.kill()
                follower.wait()
        # Plain `cpn submit` (no --follow) returns at the agreement; the daemon still runs
        # the job end to end, and `cpn job logs --follow` waits for it.
        job.write_text(job.read_text().replace('NAP = "60"', 'NAP = "0"'))
        plain = cpn("submit", str(job), "--json", "--data-dir", str(sub_dir), "--peer", peer,
                    "--results", str(results))
        assert plain.returncode == 0, plain.stdout + plain.stderr
        agreed = json.loads(plain.stdout)
        (attempt,) = agreed["attempts"]
        followed = cpn("job", "logs", agreed["id"], "--follow", "--data-dir", str(sub_dir))
        assert "hello from the container" in followed.stdout
        shown = json.loads(cpn("job", "show", agreed["id"], "--json", "--data-dir", str(sub_dir)).stdout)
        assert shown["state"] == "finished" and shown["attempts"][0]["agreement_id"] == attempt["agreement_id"]
        assert (results / agreed["id"] / "out" / "greeting.txt").read_text() == "hi\n"
        missing = cpn("job", "show", "ffffffffff", "--data-dir", str(sub_dir))
        assert missing.returncode == 1 and "no job" in missing.stderr
