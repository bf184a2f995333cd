"""Blob hashes of local files, remembered between ``cpn submit`` runs.

Submitting the same job again (a new nonce, the same image) used to hash the
whole image again.  :class:`HashCache` keeps ``(digest, size, chunk root)`` per
file in ``<data dir>/hash-cache.json``, valid while the file's size, mtime,
ctime, inode and device are the ones it was hashed at.  Any write to the file
changes its ctime (and ``touch``-ing the mtime back changes the ctime too), so
a stale entry would need someone to defeat the file system's own clock; and
the daemon hashes every blob again when it imports it and refuses the job if
a digest is wrong (``blob_mismatch``), so a stale entry costs an error
message, never a wrong job.  ``cpn submit`` then forgets the cache and hashes
afresh.

The file is small JSON (at most :data:`MAX_ENTRIES` files, least recently used
dropped), written atomically, mode 0600.  A missing, unreadable or corrupt
cache is an empty one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from protocol.chunks import DEFAULT_CHUNK_SIZE, ChunkListBuilder, chunk_root

__all__ = ["HashCache", "hash_file", "CACHE_FILE", "MAX_ENTRIES"]

CACHE_FILE = "hash-cache.json"
MAX_ENTRIES = 512
_VERSION = 1


def hash_file(path: Path, chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[str, int, str]:
    """``(digest, size, chunk_root)`` of a file, reading one chunk at a time."""
    builder = ChunkListBuilder(chunk_size)
    with path.open("rb") as f:
        while chunk := f.read(chunk_size):
            builder.update(chunk)
    digest, hashes = builder.finish()
    return digest, builder.size, chunk_root(hashes)


def _identity(st: os.stat_result, chunk_size: int) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev, chunk_size]


class HashCache:
    """``hash_file`` with memory (see the module docstring)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path  #: None: remember nothing (no data dir)
        self.hits = 0
        self.misses = 0
        self._files: dict[str, list[Any]] = {}
        self._dirty = False
        if path is not None:
            self._files = self._read(path)

    @staticmethod
    def _read(path: Path) -> dict[str, list[Any]]:
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        files = doc.get("files") if isinstance(doc, dict) and doc.get("version") == _VERSION else None
        if not isinstance(files, dict):
            return {}
        return {k: v for k, v in files.items() if isinstance(v, list) and len(v) == 8}

    def hash_file(self, path: Path, chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[str, int, str]:
        key = str(path.resolve())
        st = path.stat()
        ident = _identity(st, chunk_size)
        entry = self._files.pop(key, None)
        if entry is not None and entry[:6] == ident:
            self._files[key] = entry  # most recently used last
            self.hits += 1
            return str(entry[6]), int(entry[0]), str(entry[7])
        digest, size, root = hash_file(path, chunk_size)
        self.misses += 1
        if size == st.st_size and _identity(path.stat(), chunk_size) == ident:  # unchanged while hashed
            self._files[key] = [*ident, digest, root]
            self._dirty = True
        return digest, size, root

    def forget(self) -> None:
        """Drop every entry (a digest turned out stale)."""
        self._files.clear()
        self._dirty = True
        self.save()

    def save(self) -> None:
        """Write the cache if it changed (best effort: a cache never fails a command)."""
        if self.path is None or not self._dirty or not self.path.parent.is_dir():
            return
        keep = dict(list(self._files.items())[-MAX_ENTRIES:])
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"version": _VERSION, "files": keep}, f)
            os.replace(tmp, self.path)
            self._dirty = False
        except OSError:
            tmp.unlink(missing_ok=True)
