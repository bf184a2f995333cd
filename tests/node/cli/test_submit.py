"""node/cli/submit.py: exit statuses a script can trust before any job runs, job files
refused when their outputs would have no room, blob hashes remembered between submits.

The shared testnet has no node that runs containers: every provider refuses."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from support.daemons import Testnet, cpn

from node.cli.submit import print_outcome
from node.errors import ExitCode
from node.jobs.hashcache import CACHE_FILE


def test_outputs_without_room_are_refused_at_submit(tiny_job: Callable[..., Path], tmp_path: Path) -> None:
    """disk_mib = 0 with outputs used to give 0 bytes of outputs and exit 0; now exit 2 before
    any daemon is asked (none runs at this data dir)."""
    job = tiny_job("disk_mib = 0\n")
    done = cpn("submit", str(job), "--data-dir", str(tmp_path / "none"))
    assert done.returncode == ExitCode.BAD_INPUT
    assert "resources.disk_mib: is 0, but the job declares outputs" in done.stderr
    assert done.stderr.count("\n") == 1


def test_no_provider_is_3(net: Testnet, tiny_job: Callable[..., Path]) -> None:
    job = tiny_job('[resources.gpu]\nmodels = ["a100-80g"]\n')  # nobody has one
    for follow in ((), ("--follow",)):
        done = net.cpn(2, "submit", str(job), "--timeout", "1", *follow)
        assert done.returncode == ExitCode.NO_PROVIDER, done.stdout + done.stderr
        assert "no provider found" in done.stdout


def test_refused_is_4_and_says_why(net: Testnet, tiny_job: Callable[..., Path]) -> None:
    job = tiny_job()
    for follow in ((), ("--follow",)):
        done = net.cpn(2, "submit", str(job), "--peer", net.addr(0), "--peer", net.addr(1), *follow)
        assert done.returncode == ExitCode.REFUSED, done.stdout + done.stderr
        assert done.stdout.count("no_container_runtime") >= 2


def _stale(cache: Path, under: Path) -> int:
    """Make every cached digest of a file under ``under`` wrong, as if the file had changed
    behind the cache's back; returns how many there were."""
    doc = json.loads(cache.read_text())
    hits = [v for k, v in doc["files"].items() if k.startswith(str(under.resolve()))]
    for entry in hits:
        entry[6] = "sha256:" + "0" * 64
    cache.write_text(json.dumps(doc))
    return len(hits)


def test_blob_hashes_are_remembered_and_a_stale_one_recovers(net: Testnet, tiny_job: Callable[..., Path]) -> None:
    job = tiny_job('[[inputs]]\nfile = "in.txt"\npath = "/data/in.txt"\n')
    (job.parent / "in.txt").write_text("some input\n")
    assert net.cpn(2, "submit", str(job), "--peer", net.addr(0)).returncode == ExitCode.REFUSED
    cache = net.dirs[2] / CACHE_FILE
    assert (cache.stat().st_mode & 0o777) == 0o600
    # an input (no descriptor to check it against): the daemon refuses it as not matching
    # (blob_mismatch), and `cpn submit` hashes again and goes on
    assert _stale(cache, job.parent / "in.txt") == 1
    again = net.cpn(2, "submit", str(job), "--peer", net.addr(0))
    assert again.returncode == ExitCode.REFUSED, again.stdout + again.stderr
    assert "0" * 64 not in cache.read_text()
    # the image's manifest, config and layer: their OCI descriptors catch it in the job file reader
    assert _stale(cache, job.parent / "img") == 3
    again = net.cpn(2, "submit", str(job), "--peer", net.addr(0))
    assert again.returncode == ExitCode.REFUSED, again.stdout + again.stderr
    assert "0" * 64 not in cache.read_text()


def test_quotes_and_refusals_in_one_unit(capsys: pytest.CaptureFixture[str]) -> None:
    run = {
        "id": "ab" * 16, "detail": "", "results_dir": "/r",
        "attempts": [{"agreement_id": "cd" * 16, "provider": "P1", "price": 5032}],
        "quotes": [
            {"provider": "P1", "status": "quoted", "price": 5032},
            {"provider": "P2", "status": "quoted", "price": 7000},
            {"provider": "P3", "status": "refused", "reason": "price_too_low", "queue_depth": None,
             "detail": "price 5032 above max_price 1"},
        ],
    }
    print_outcome(run)
    out = capsys.readouterr().out
    assert "price 0.005032 units/job (5032 micro-units)" in out
    assert "P2: quoted 0.007000 units/job (7000 micro-units); not chosen" in out
    assert "prices are in micro-units: raise max_price" in out


_LOADED = """
import json, sys
from node.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": int(code), "modules": sorted(sys.modules)}))
"""


def test_submit_loads_only_what_it_uses(tiny_job: Callable[..., Path], tmp_path: Path) -> None:
    """What kept `cpn submit` slow to start (bench/cli_startup.py): the blob store with
    protocol.transfer and cryptography, http.client, the config module. None of it is needed
    to read a job file and talk to the daemon."""
    import subprocess
    import sys

    from support.daemons import ROOT

    (tmp_path / "d").mkdir()
    done = subprocess.run([sys.executable, "-c", _LOADED, "submit", str(tiny_job()), "--data-dir",
                           str(tmp_path / "d")], capture_output=True, text=True, cwd=ROOT, timeout=60, check=True)
    got = json.loads(done.stdout)
    assert got["code"] == ExitCode.NO_DAEMON
    loaded = set(got["modules"])
    for heavy in ("node.transfer", "node.transfer.blobstore", "protocol.transfer", "cryptography", "trio",
                  "libp2p", "http.client", "email.parser", "ssl", "node.config"):
        assert heavy not in loaded, heavy
