"""A small testnet the CLI tests share: three real `cpn node run` daemons on 127.0.0.1.

* node0: fake GPUs (an H100, an RTX 4090, an A100 40 GB), started as
  ``cpn --data-dir D node run`` (the global option before the command);
* node1: CPU only;
* node2: the submitter the commands are run against.

No node runs containers, so every job offered here is refused
(``no_container_runtime``): the tests that need a job to run use podman
providers of their own (tests/node/cli/test_follow.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.daemons import Testnet, run_testnet

from node.execute.oci_pack import pack_image

FAKE_GPUS = "h100:1,rtx4090:1,a100-40g:1"


@pytest.fixture(scope="session")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testnet]:
    base = tmp_path_factory.mktemp("cli-testnet")
    with run_testnet(base, ("--fake-gpus", FAKE_GPUS), (), (), global_first=True) as n:
        yield n


def _tiny_job(base: Path, extra: str = "", *, outputs: bool = True) -> Path:
    """A job file with a one-file image (packed for real, never run here)."""
    src = base / "src"
    src.mkdir(parents=True, exist_ok=True)
    (src / "hello.txt").write_text("hi\n")
    if not (base / "img").exists():
        pack_image([src], base / "img", cmd=["/bin/true"])
    job = base / "job.toml"
    job.write_text(
        'name = "tiny"\nimage = "img"\n' + ('outputs = ["/out"]\n' if outputs else "")
        + "max_price = 100000\n[resources]\nmemory_mib = 64\n" + extra
    )
    return job


@pytest.fixture
def tiny_job(tmp_path: Path) -> Callable[..., Path]:
    """``tiny_job(extra="", outputs=True)``: a job file in this test's tmp dir."""
    return lambda extra="", outputs=True: _tiny_job(tmp_path / "job", extra, outputs=outputs)
