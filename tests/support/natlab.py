"""Real libp2p hosts in the NAT testbed, one process per host (tests/support/nat_host.py).

    with NatLab("pub=public:2,home=eim") as lab:
        home = lab.start("home-0")             # bootstraps from the bootstrap-role hosts
        lab.cmd("home-0", "wait", status="private", relays=1, timeout=30)

Every host process runs in its host's namespace via ``nsenter --net``; the
network is built with :mod:`netlab` (tools/netlab.py) and torn down on exit,
with every process stopped.  :func:`unavailable` says why the lab cannot run
here (not root, no nft), for ``pytest.skip``.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import netlab  # noqa: E402

PY = str(ROOT / ".venv" / "bin" / "python")
HOST = str(ROOT / "tests" / "support" / "nat_host.py")
PORT = 4001  #: every host listens on this port (a NAT keeps it for outbound dials too)


def unavailable() -> str | None:
    return netlab.preflight(nat=True)


class NatLab:
    """A NAT testbed with :mod:`nat_host` processes; a context manager."""

    def __init__(self, topology: str, log_dir: Path | None = None, **host_args: Any) -> None:
        self.layout = netlab.plan(netlab.parse_topology(topology), netlab.new_prefix())
        self.state: dict[str, Any] = {}
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self.ready: dict[str, dict[str, Any]] = {}
        self.log_dir = log_dir
        self.host_args = host_args

    def __enter__(self) -> NatLab:
        try:
            netlab.build(self.layout, self.state)
        except BaseException:
            netlab.teardown(self.state)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for name in list(self.procs):
            self.stop(name)
        netlab.teardown(self.state)

    @property
    def hosts(self) -> dict[str, dict[str, Any]]:
        return dict(self.layout["hosts"])

    def bootstrap_addrs(self) -> list[str]:
        return [f"/ip4/{h['ip']}/tcp/{PORT}/p2p/{self.ready[n]['peer_id']}"
                for n, h in self.hosts.items() if "bootstrap" in h["roles"] and n in self.ready]

    def start(self, name: str, **extra: Any) -> dict[str, Any]:
        """Start the host ``name`` (bootstrapping from the running bootstrap hosts)."""
        h = self.hosts[name]
        args = dict(self.host_args, **extra)
        argv = [PY, HOST, "--listen", f"/ip4/{h['ip']}/tcp/{PORT}"]
        if "bootstrap" not in h["roles"] or args.pop("bootstrap_too", False):
            for b in self.bootstrap_addrs():
                argv += ["--bootstrap", b]
        for k, v in args.items():
            argv += [f"--{k.replace('_', '-')}", str(v)]
        err = open(self.log_dir / f"{name}.log", "w") if self.log_dir else subprocess.DEVNULL  # noqa: SIM115
        proc = subprocess.Popen(netlab.in_ns(h["ns"], argv), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT)
        self.procs[name] = proc
        line = self._line(name, 60)
        self.ready[name] = json.loads(line)["ready"]
        return self.ready[name]

    def _line(self, name: str, timeout: float) -> str:
        proc = self.procs[name]
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"{name}: no answer in {timeout} s")
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{name} exited (rc {proc.poll()})")
        return line

    def cmd(self, name: str, cmd: str, timeout: float = 60, **args: Any) -> dict[str, Any]:
        """Send one command; its JSON answer (``ok`` False carries ``error``)."""
        proc = self.procs[name]
        assert proc.stdin is not None
        proc.stdin.write(json.dumps({"cmd": cmd, "timeout": timeout, **args}) + "\n")
        proc.stdin.flush()
        return dict(json.loads(self._line(name, timeout + 10)))

    def peer(self, name: str) -> str:
        return str(self.ready[name]["peer_id"])

    def stop(self, name: str, kill: bool = False) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        if kill:
            proc.kill()
        else:
            try:
                assert proc.stdin is not None
                proc.stdin.write('{"cmd": "quit"}\n')
                proc.stdin.flush()
            except (BrokenPipeError, OSError):
                pass
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.wait(10)
