"""The start-up self-test: which OCI runtime enforces every limit here, and which GPUs CDI offers.

crun refuses hybrid cgroup hosts; runc works (docs/FIELD-NOTES "Containers").
:func:`choose_runtime` picks crun on unified cgroup v2 and runc otherwise, and
:func:`self_test` proves the choice before any job is accepted: it runs the
test image (:mod:`node.execute.selftest_image`) with limits under each
candidate runtime and keeps the first under which the container sees every
limit (memory, pids, CPU, no network, read-only root, dropped capabilities,
no-new-privileges, ulimits).  The result is a :class:`Capability`, which the
node advertises.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.execute.cgroups import cgroup_version
from node.execute.container import ContainerRun
from node.execute.podman import ContainerSpec, Podman, PodmanSettings

__all__ = ["Capability", "self_test", "choose_runtime", "cdi_devices", "fake_cdi_spec"]


def choose_runtime(version: int | None = None) -> list[str]:
    """Runtimes to try in order: crun first on cgroup v2, runc first otherwise."""
    v = cgroup_version() if version is None else version
    return ["crun", "runc"] if v == 2 else ["runc", "crun"]


_PROBE = r"""
m=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max 2>/dev/null)
p=$(cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max 2>/dev/null)
c=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || cut -d' ' -f1 /sys/fs/cgroup/cpu.max 2>/dev/null)
echo "memory=$m"; echo "pids=$p"; echo "cpu=$c"
echo "net=$(ls /sys/class/net | tr '\n' ' ')"
if touch /.cpn-probe 2>/dev/null; then echo root=rw; else echo root=ro; fi
if touch /tmp/.cpn-probe 2>/dev/null; then echo tmp=rw; else echo tmp=ro; fi
echo "caps=$(grep CapEff /proc/self/status | cut -f2)"
echo "nnp=$(grep NoNewPrivs /proc/self/status | cut -f2)"
echo "nofile=$(ulimit -n)"
"""


@dataclass
class Capability:
    """What the start-up self-test proved about this host's container runtime."""

    ok: bool
    runtime: str | None
    reason: str = ""  #: why not ok ("no container runtime: ...")
    enforced: dict[str, bool] = field(default_factory=dict)
    cgroup_version: int = 1
    cdi_gpus: list[str] = field(default_factory=list)  #: CDI device names of cdi_kind

    @property
    def gpus_via_cdi(self) -> bool:
        return bool(self.cdi_gpus)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "runtime": self.runtime, "reason": self.reason,
            "enforced": dict(self.enforced), "cgroup_version": self.cgroup_version,
            "gpus_via_cdi": self.gpus_via_cdi, "cdi_gpus": list(self.cdi_gpus),
        }


def _parse_probe(lines: Sequence[bytes], spec: ContainerSpec) -> dict[str, bool]:
    kv: dict[str, str] = {}
    for line in lines:
        key, _, value = line.decode(errors="replace").strip().partition("=")
        kv[key] = value.strip()
    mem = spec.memory_mib * 1024 * 1024
    quota = round(spec.cpu_millis / 1000 * 100_000)
    return {
        "memory": kv.get("memory") == str(mem),
        "pids": kv.get("pids") == str(spec.pids_limit),
        "cpu": kv.get("cpu") == str(quota),
        "network_none": kv.get("net") == "lo",
        "read_only_root": kv.get("root") == "ro",
        "writable_tmp": kv.get("tmp") == "rw",
        "caps_dropped": kv.get("caps", "").strip("0") == "" and "caps" in kv,
        "no_new_privileges": kv.get("nnp") == "1",
        "ulimits": kv.get("nofile") == "1024",
    }


def cdi_devices(dirs: Sequence[Path], kind: str) -> list[str]:
    """Device names of ``kind`` in the CDI spec dirs (YAML or JSON, parsed
    just enough: we only need to know which names podman can resolve)."""
    names: list[str] = []
    for d in dirs:
        if not d.is_dir():
            continue
        for f in sorted(d.iterdir()):
            if f.suffix not in (".yaml", ".yml", ".json"):
                continue
            try:
                text = f.read_text()
            except OSError:
                continue
            if f.suffix == ".json":
                try:
                    doc = json.loads(text)
                except ValueError:
                    continue
                if doc.get("kind") == kind:
                    names += [str(dev.get("name")) for dev in doc.get("devices", [])]
                continue
            if not re.search(rf"^kind:\s*[\"']?{re.escape(kind)}[\"']?\s*$", text, re.M):
                continue
            names += re.findall(r"^\s*-\s*name:\s*[\"']?([^\"'\s]+)", text, re.M)
    return sorted(set(names))


def fake_cdi_spec(path: Path, kind: str, uuids: Sequence[str]) -> None:
    """A CDI spec (JSON, which CDI accepts) for tests on GPU-less machines:
    each fake device only sets ``CPN_FAKE_GPU=<uuid>`` in the container."""
    doc = {
        "cdiVersion": "0.5.0",
        "kind": kind,
        "devices": [
            {"name": u, "containerEdits": {"env": [f"CPN_FAKE_GPU={u}"]}} for u in uuids
        ],
        "containerEdits": {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1))


async def self_test(
    settings: PodmanSettings, image_id: str, work_dir: Path, *, timeout_s: float = 60
) -> Capability:
    """Run the test image with limits under each candidate runtime; keep the
    first that enforces everything.  Sets ``settings.runtime`` on success."""
    version = cgroup_version(settings.cgroup_root)
    candidates = [settings.runtime] if settings.runtime else choose_runtime(version)
    reasons = []
    for runtime in candidates:
        trial = PodmanSettings(**{**settings.__dict__, "runtime": runtime})
        podman = Podman(trial)
        spec = ContainerSpec(
            job_id=f"selftest-{secrets.token_hex(4)}", image_id=image_id,
            command=("/bin/sh", "-c", _PROBE), memory_mib=64, cpu_millis=500, pids_limit=64,
            tmp_mib=8,
        )
        run = ContainerRun(podman, spec, work_dir / f"{spec.job_id}.log")
        try:
            outcome = await run.run(timeout_s=timeout_s)
        except OSError as exc:  # podman itself missing
            reasons.append(f"{runtime}: {exc}")
            continue
        if outcome.status != "exited" or outcome.exit_code != 0:
            reasons.append(f"{runtime}: {outcome.status} {outcome.detail}".strip())
            continue
        enforced = _parse_probe(run.logs.lines(), spec)
        run.logs.path.unlink(missing_ok=True)
        missing = [k for k, v in enforced.items() if not v]
        if missing:
            reasons.append(f"{runtime}: limits not enforced: {', '.join(missing)}")
            continue
        settings.runtime = runtime
        return Capability(
            ok=True, runtime=runtime, enforced=enforced, cgroup_version=version,
            cdi_gpus=cdi_devices(settings.cdi_dirs, settings.cdi_kind),
        )
    return Capability(
        ok=False, runtime=None, cgroup_version=version,
        reason="no container runtime: " + "; ".join(reasons or ["no candidate"]),
    )
