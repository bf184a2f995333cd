"""The end-to-end flow as a user drives it: two `cpn node run` daemons in separate
processes, `cpn submit --follow`, `cpn jobs`, `cpn job show|logs|cancel`, `--json`.

Podman runs in the tests' private storage (tests/node/cpn_podman.py).  Every wait
is a blocking read of a process's output (its "ready" line, the next line of
`cpn submit --follow`), bounded by a timeout."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from node.testimage import BUSYBOX, build_busybox_image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpn_podman import shared_env  # noqa: E402

sys.path.pop(0)

ROOT = Path(__file__).resolve().parents[2]
CPN = str(Path(sys.executable).parent / "cpn")
LOOP = "/ip4/127.0.0.1/tcp/0"

pytestmark = [
    pytest.mark.podman,
    pytest.mark.skipif(not BUSYBOX.is_file(), reason=f"{BUSYBOX} missing: apt-get install busybox-static"),
]


def cpn(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CPN, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@contextmanager
def daemon(
    data_dir: Path, *extra: str, listen: str | None = LOOP, prefix: tuple[str, ...] = ()
) -> Iterator[dict[str, Any]]:
    """`cpn node run` in the background until the block ends (SIGTERM); yields its "ready" line."""
    data_dir.mkdir(parents=True, exist_ok=True)
    cmd = [*prefix, CPN, "node", "run", "--data-dir", str(data_dir), *(["--listen", listen] if listen else []), *extra]
    with open(data_dir.parent / f"{data_dir.name}.log", "wb") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the "ready" line (or exit)
        assert line, (data_dir.parent / f"{data_dir.name}.log").read_text()[-3000:]
        ready = json.loads(line)
        assert ready["event"] == "ready"
        yield ready
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout:
            proc.stdout.close()


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
        (run,) = jobs["runs"]
        assert run["state"] == "finished" and run["receipt"]["accepted"]
        assert (results / run["id"] / "out" / "greeting.txt").read_text() == "hi\n"
        shown = json.loads(cpn("job", "show", run["id"][:10], "--json", "--data-dir", str(sub_dir)).stdout)
        assert shown["receipt"] == run["receipt"] and shown["result"]["exit_code"] == 0
        logs = cpn("job", "logs", run["id"], "--data-dir", str(sub_dir))
        assert logs.returncode == 0 and "hello from the container" in logs.stdout

        # A long job, cancelled while it runs: the follower ends with exit status 3.
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
            assert follower.returncode == 3, "".join(seen) + rest
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
        assert agreed["agreed"] and agreed["job_id"]
        followed = cpn("job", "logs", agreed["job_id"], "--follow", "--data-dir", str(sub_dir))
        assert "hello from the container" in followed.stdout
        shown = json.loads(cpn("job", "show", agreed["job_id"], "--json", "--data-dir", str(sub_dir)).stdout)
        assert shown["state"] == "finished" and shown["attempts"][0]["agreement_id"] == agreed["agreement_id"]
        assert (results / agreed["job_id"] / "out" / "greeting.txt").read_text() == "hi\n"
        missing = cpn("job", "show", "ffffffffff", "--data-dir", str(sub_dir))
        assert missing.returncode == 1 and "no job" in missing.stderr
