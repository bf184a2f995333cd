"""Real daemons in one process, on 127.0.0.1 (not a test module).

:class:`Net` starts nodes with :func:`node.daemon.run_node`, each with its own
data dir, real libp2p host and SQLite files; "killing" a node cancels its
service tree, which resets its streams like a dead process, and a restart
reuses its data dir, key and listen address.  Config tables are passed per
node (``negotiation={...}``), and each node may get a ``prepare`` hook (the
daemon's one seam for hardware this machine lacks) and its own unix clock.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import trio

from node.config import config_from_dict
from node.daemon import Node, run_node
from protocol.advert import ContainerCapability

LOOP = "/ip4/127.0.0.1/tcp/0"
#: what a passed podman self-test would prove (for nodes that negotiate but run nothing)
PROVEN = ContainerCapability(runtime="podman/runc", limits=("memory", "cpu", "pids", "network-none"),
                             gpu_cdi=False)


def container_proven(node: Node) -> None:
    """``prepare`` hook: stands in for a passed container self-test (no podman needed
    for tests that stop before execution)."""
    node.execution.proven = PROVEN


@dataclass
class Clock:
    """A unix clock a test can move forward (``offset`` seconds ahead of real time),
    or hold still (``frozen``: the time it reads until set back to None)."""

    offset: int = 0
    frozen: int | None = None

    def __call__(self) -> int:
        return int(time.time()) + self.offset if self.frozen is None else self.frozen


@dataclass
class Net:
    tmp: Path
    nursery: trio.Nursery
    podman: Any = None  #: support.podman.PodmanEnv, for nodes with execution
    nodes: dict[str, Node] = field(default_factory=dict)
    scopes: dict[str, trio.CancelScope] = field(default_factory=dict)
    configs: dict[str, Any] = field(default_factory=dict)
    bound: dict[str, str] = field(default_factory=dict)  #: the address each node listened on
    gone: dict[str, trio.Event] = field(default_factory=dict)  #: set once a node's tree has exited
    clocks: dict[str, Clock] = field(default_factory=dict)

    async def start(
        self,
        name: str,
        *,
        execution: bool = False,
        prepare: Callable[[Node], None] | None = None,
        bootstrap: bool = True,
        same_addr: bool = False,
        **tables: dict[str, Any],
    ) -> Node:
        """Start (or restart) node ``name``; ``tables`` are config sections.

        A restart listens on a new port unless ``same_addr``: py-libp2p 0.8.1
        leaves a stopped host's TCP listener open, so an in-process restart on
        the same port gets some of its connections on the dead listener."""
        if name not in self.configs:
            boot = [f"{a}/p2p/{n.peer_id}" for n in list(self.nodes.values())[:1] for a in n.p2p.listen_addrs[:1]]
            table: dict[str, Any] = {k: dict(v) for k, v in tables.items()}
            table["node"] = {"data_dir": str(self.tmp / name), "listen": [LOOP],
                             "bootstrap": boot if bootstrap else [], **table.get("node", {})}
            if execution:
                env = self.podman
                table["execution"] = {"enabled": True, "podman_root": str(env.settings.root),
                                      "podman_runroot": str(env.settings.runroot)}
            self.configs[name] = config_from_dict(table)
        elif same_addr and name in self.bound:  # a restart listens where the node listened before
            cfg = self.configs[name]
            self.configs[name] = replace(cfg, node=replace(cfg.node, listen=[self.bound[name]]))
        clock = self.clocks.setdefault(name, Clock())
        scope = trio.CancelScope()
        self.scopes[name] = scope
        gone = self.gone[name] = trio.Event()

        async def runner(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            try:
                with scope:
                    await run_node(self.configs[name], clock=clock, prepare=prepare, task_status=task_status)
            finally:
                gone.set()

        node: Node = await self.nursery.start(runner)
        self.nodes[name] = node
        self.bound[name] = node.p2p.listen_addrs[0].split("/p2p/")[0]
        return node

    async def kill(self, name: str) -> None:
        self.nodes.pop(name)
        self.scopes[name].cancel()
        with trio.fail_after(30):
            await self.gone[name].wait()


@asynccontextmanager
async def network(tmp: Path, podman: Any = None) -> AsyncIterator[Net]:
    async with trio.open_nursery() as nursery:
        net = Net(tmp, nursery, podman=podman)
        try:
            yield net
        finally:
            nursery.cancel_scope.cancel()


def addr_of(node: Node) -> str:
    """``node``'s first listen address with its ``/p2p/`` suffix."""
    return node.p2p.listen_addrs[0]


async def until(holder: Any, pred: Callable[[], bool]) -> None:
    """Wait until ``pred`` holds, re-checking whenever ``holder.changed`` (a trio.Event
    that ``holder`` replaces on every change) fires."""
    while True:
        changed = holder.changed
        if pred():
            return
        await changed.wait()
