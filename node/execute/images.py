"""Which images CPN loaded into podman, when each was last used, and removing idle ones.

Every verified image a job brings is loaded into containers-storage under
``localhost/cpn-image:<id>`` (:func:`node.execute.oci.load_image`) and kept,
so the next job with the same image starts at once.  Kept forever, they would
fill the provider's disk one image at a time; :class:`ImageCache` remembers
when each was last used (``<runs>/images.json``, written atomically) and
:meth:`ImageCache.collect` removes those idle for longer than
``[execution] image_idle_s``, except images a run is using now and the
self-test image.  Images CPN did not load (other names) are never touched.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Collection
from pathlib import Path

import trio

from node.execute.podman import Podman

__all__ = ["ImageCache", "IMAGE_PREFIX"]

log = logging.getLogger("cpn.execution")

IMAGE_PREFIX = "localhost/cpn-image:"  #: the names load_image gives (node.execute.oci.storage_reference)


class ImageCache:
    """Last use of each image ID CPN loaded (unix seconds), persisted as JSON."""

    def __init__(self, path: Path, clock: Callable[[], float]) -> None:
        self.path = path
        self.clock = clock
        self.used: dict[str, float] = {}
        self._lock = threading.Lock()  #: touches come from worker threads
        try:
            raw = json.loads(path.read_text())
            self.used = {str(k): float(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
        except (OSError, ValueError, TypeError, AttributeError):
            self.used = {}

    def touch(self, image_id: str) -> None:
        """Blocking (a small file write): ``image_id`` is used now."""
        with self._lock:
            self.used[image_id] = self.clock()
        self._save()

    def _save(self) -> None:
        with self._lock:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.used, sort_keys=True))
            os.replace(tmp, self.path)

    async def loaded(self, podman: Podman) -> list[str]:
        """IDs of the images in podman's storage that CPN loaded."""
        proc = await podman.call("images", "--no-trunc", "--format", "{{.ID}} {{.Repository}}:{{.Tag}}")
        out = []
        for line in proc.stdout.decode().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].startswith(IMAGE_PREFIX):
                out.append(parts[0].removeprefix("sha256:"))
        return out

    async def collect(self, podman: Podman, *, idle_s: float, keep: Collection[str]) -> list[str]:
        """Remove CPN's images unused for ``idle_s`` (never those in ``keep``);
        an image first seen now counts as used now.  Returns the IDs removed."""
        now = self.clock()
        removed = []
        for image_id in await self.loaded(podman):
            with self._lock:
                last = self.used.setdefault(image_id, now)
            if image_id in keep or now - last < idle_s:
                continue
            proc = await podman.call("image", "rm", image_id, check=False)
            if proc.returncode == 0:
                removed.append(image_id)
                with self._lock:
                    self.used.pop(image_id, None)
            else:
                log.info("image %s not removed: %s", image_id[:12], proc.stderr.decode(errors="replace").strip())
        await trio.to_thread.run_sync(self._save)
        return removed
