"""Jobs across real NATs with real daemons (issue 13; markers ``netns``, ``podman``).

Runs ``bench/reach.py`` for four cells of its matrix, with small blobs: a
public submitter and a provider behind an EIM NAT (the private provider is
found through its relay circuits, runs the job, and its data goes direct:
the provider fetches the input from the public submitter's data port, the
submitter fetches the output over a libp2p data stream on the connection
the private provider dialled); both behind EIM NATs (hole punched, the data
on the punched connection); an EIM submitter and a symmetric provider (the
libp2p connection stays relayed; the data of both directions goes on TCP
connections punched by the ``punch`` path); and submitter and provider both
behind symmetric NATs (no direct path: the data is relayed, and the job
still completes).  The bench builds the NAT testbed (``tools/testnet up --nat``,
execution on with the host's podman storage, as ``tools/testnet`` does) and
tears it down; its JSON is checked here.  Relay failures mid-transfer are
tested at the transfer level (tests/node/transfer/test_datapath_netns.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from node.execute.selftest_image import BUSYBOX

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import netlab  # noqa: E402

pytestmark = [
    pytest.mark.netns,
    pytest.mark.podman,
    pytest.mark.skipif(shutil.which("nft") is None,
                       reason="netns: nft is not installed (tools/install installs nftables)"),
    pytest.mark.skipif(not BUSYBOX.is_file(), reason=f"{BUSYBOX} missing: apt-get install busybox-static"),
]


def test_private_provider_eim_pair_eim_symmetric_and_symmetric_pair_complete_jobs(tmp_path: Path) -> None:
    why = netlab.preflight(nat=True)
    if why:
        pytest.skip(f"netns: {why}")
    done = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "python"), str(ROOT / "bench" / "reach.py"), "--json",
         "--cells", "pub:eim,eim:eim,eim:sym,sym:sym", "--size-mib", "2", "--logs", str(tmp_path / "logs")],
        cwd=ROOT, capture_output=True, text=True, timeout=480,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(done.stdout)
    rows = {(r["submitter"], r["provider"]): r for r in result["rows"]}
    private = rows[("pub", "eim")]
    assert private["find_status"] == "ok" and private["completed"], private
    assert private["data_in"]["path"] == "direct" and private["data_out"]["path"] in ("direct", "reversed"), private
    punched = rows[("eim", "eim")]
    assert punched["completed"], punched
    assert punched["data_in"]["path"] == punched["data_out"]["path"] == "hole-punched", punched
    across = rows[("eim", "sym")]
    assert across["completed"] and across["path"] == "relayed", across
    assert across["data_in"]["path"] == across["data_out"]["path"] == "punched-tcp", across
    relayed = rows[("sym", "sym")]
    assert relayed["completed"], relayed
    assert relayed["data_in"]["path"] == relayed["data_out"]["path"] == "relayed", relayed
    assert result["summary"] == "reach: 4/4 cells completed, 3 direct"
