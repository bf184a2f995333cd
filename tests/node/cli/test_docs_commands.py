"""The docs match the CLI: every `cpn ...` line of a shell code block in docs/*.md runs
against a small testnet and exits 0, or is skipped here with its reason.

The testnet (real `cpn node run` processes on 127.0.0.1): node0 a provider with
fake GPUs that runs containers (podman, private storage) and node1 the submitter
every command is run against (``--data-dir`` is added; global options go
anywhere).  Before the docs' commands run, node1 has run the hello job once, so
``JOB_ID`` and the ledger exist whatever order the documents come in.  Files the
docs name (``examples/hello/job.toml``, ``rootfs.tar``, ``myapp``) are made in a
scratch directory the commands run in.  Without podman the commands that need a
job to run are skipped, saying so.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.daemons import CPN, ROOT, Testnet, run_testnet

from node.execute.selftest_image import BUSYBOX, build_busybox_image, busybox_rootfs

DOCS = ROOT / "docs"
SHELL_BLOCK = re.compile(r"^\s*```(sh|bash|shell|console)\s*$")
COMMAND = re.compile(r"^(\.venv/bin/)?cpn(\s|$)")

#: Commands that cannot run on a local testnet, and why (matched on the words after `cpn`).
NEVER = {
    ("node", "run"): "starts a daemon on system paths (/etc/cpn, /var/lib/cpn); the testnet runs its own daemons",
}
#: Commands that need a job to have run (podman on this machine).
NEEDS_A_JOB = (("submit",), ("job",), ("ledger",))
#: Examples sized for a real provider: (words, cores, memory MiB, disk MiB) they need of node0.
SIZED = ((("find", "--cpus", "4", "--mem", "16GiB", "--disk", "100GiB"), 4, 16 * 1024, 100 * 1024),)


@dataclass(frozen=True)
class DocCommand:
    doc: str
    line: int
    text: str

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.text, comments=True)


def doc_commands() -> Iterator[DocCommand]:
    for md in sorted(DOCS.glob("*.md")):
        fence: str | None = None
        for n, line in enumerate(md.read_text().splitlines(), 1):
            if line.lstrip().startswith("```"):
                fence = None if fence is not None else ("sh" if SHELL_BLOCK.match(line) else "other")
                continue
            if fence == "sh" and COMMAND.match(line.strip()):
                yield DocCommand(md.name, n, line.strip())


COMMANDS = list(doc_commands())


def test_the_docs_show_commands() -> None:
    """The extraction itself works: the guides' commands are found."""
    words = {tuple(c.argv[1:3]) for c in COMMANDS}
    for expected in (("submit", "examples/hello/job.toml"), ("status",), ("ledger", "verify"), ("job", "show")):
        assert any(w[: len(expected)] == expected for w in words), expected


@dataclass
class Site:
    net: Testnet
    work: Path
    job_id: str | None  #: the hello job node1 ran (None without podman)
    podman: str | None  #: why podman is unusable, or None


def _podman_problem() -> str | None:
    """As the ``podman`` marker of tests/conftest.py decides, plus the busybox the image needs."""
    if not BUSYBOX.is_file():
        return f"{BUSYBOX} missing (apt-get install busybox-static)"
    if shutil.which("podman") is None or (shutil.which("runc") is None and shutil.which("crun") is None):
        return "podman or its OCI runtime is not installed (tools/install installs them)"
    if os.geteuid() != 0:
        return "podman tests run as root"
    return None


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    work = tmp_path_factory.mktemp("docs")
    problem = _podman_problem()
    # The files the docs name, relative to where the commands run.
    (work / "examples" / "hello").mkdir(parents=True)
    shutil.copy(ROOT / "examples" / "hello" / "job.toml", work / "examples" / "hello" / "job.toml")
    (work / "myapp" / "app").mkdir(parents=True)
    (work / "myapp" / "app" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    provider: tuple[str, ...] = ("--fake-gpus", "h100:2,rtx4090:1,a100-40g:1")
    if problem is None:
        from support.podman import shared_env

        build_busybox_image(work / "examples" / ".images" / "busybox")
        busybox_rootfs(work / "rootfs")
        with tarfile.open(work / "rootfs.tar", "w") as tar:
            tar.add(work / "rootfs", arcname=".")
        env = shared_env()
        conf = work / "provider.toml"
        conf.write_text(f'[execution]\nenabled = true\npodman_root = "{env.settings.root}"\n'
                        f'podman_runroot = "{env.settings.runroot}"\n')
        provider += ("--config", str(conf))
    with run_testnet(work / "net", provider, ()) as net:
        job_id = None
        if problem is None:
            first = subprocess.run([CPN, "submit", "examples/hello/job.toml", "--follow", "--json",
                                    "--data-dir", str(net.dirs[1])], cwd=work, capture_output=True, text=True,
                                   timeout=300)
            assert first.returncode == 0, first.stdout + first.stderr
            job_id = json.loads(first.stdout)["id"]
        yield Site(net, work, job_id, problem)


def _skip_reason(cmd: DocCommand, site: Site) -> str | None:
    words = tuple(cmd.argv[1:])
    for prefix, reason in NEVER.items():
        if words[: len(prefix)] == prefix:
            return reason
    if site.podman is not None and any(words[: len(p)] == p for p in NEEDS_A_JOB):
        return f"needs a job run in a container: {site.podman}"
    if site.podman is not None and words[:2] == ("image", "pack"):
        return f"packs a busybox rootfs: {site.podman}"
    for sized, cores, memory, disk in SIZED:
        if words == sized:
            total = json.loads(site.net.cpn(0, "status", "--json").stdout)["capacity"]["total"]
            if total["cpu_millis"] < cores * 1000 or total["memory_mib"] < memory or total["disk_mib"] < disk:
                return (f"an example for a bigger provider ({cores} cores, {memory} MiB memory, {disk} MiB disk) "
                        f"than this machine's node0 ({total['cpu_millis'] // 1000} cores, {total['memory_mib']} "
                        f"MiB, {total['disk_mib']} MiB)")
    return None


@pytest.mark.parametrize("cmd", COMMANDS, ids=[f"{c.doc}:{c.line}" for c in COMMANDS])
def test_doc_command_runs(cmd: DocCommand, site: Site) -> None:
    reason = _skip_reason(cmd, site)
    if reason is not None:
        pytest.skip(reason)
    argv = [site.job_id if a == "JOB_ID" and site.job_id else a for a in cmd.argv[1:]]
    leftover = [a for a in argv if re.fullmatch(r"[A-Z_]{3,}|<[^>]*>", a)]
    assert not leftover, f"{cmd.doc}:{cmd.line}: a placeholder this test does not fill: {leftover}"
    done = subprocess.run([CPN, *argv, "--data-dir", str(site.net.dirs[1])], cwd=site.work, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, f"{cmd.doc}:{cmd.line}: `{cmd.text}` exited {done.returncode}:\n" \
        f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
    assert "Traceback" not in done.stderr
