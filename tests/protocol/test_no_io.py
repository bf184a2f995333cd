"""protocol/ is sans-IO: it never imports trio, libp2p, sockets, asyncio, time or random.

Two checks, because neither alone is enough:

* a fresh interpreter imports ``protocol`` and every submodule, and none of the
  forbidden modules may appear in ``sys.modules`` that was not there before.
  ``time`` is a built-in module the interpreter itself loads at start-up, so
  this check cannot see it; and it would also catch a dependency pulling one
  in (it caught ``cryptography``'s serialization module importing ``random``;
  envelope.py avoids that module for this reason);
* every ``import`` statement in protocol/*.py is read with ``ast``, which
  catches ``import time`` even though ``time`` is already loaded.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

FORBIDDEN = {"trio", "libp2p", "socket", "asyncio", "time", "random", "selectors", "ssl"}
PROTOCOL = Path(__file__).resolve().parents[2] / "protocol"

_PROBE = """
import importlib, json, pkgutil, sys
before = set(sys.modules)
import protocol
for info in pkgutil.iter_modules(protocol.__path__):
    importlib.import_module("protocol." + info.name)
print(json.dumps({"new": sorted(set(sys.modules) - before), "loaded": sorted(sys.modules)}))
"""


def test_importing_protocol_loads_no_io_module() -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, timeout=120)
    result = json.loads(out.stdout)
    assert any(m.startswith("protocol.") for m in result["new"])
    pulled_in = sorted(m for m in result["new"] if m.split(".")[0] in FORBIDDEN)
    assert pulled_in == [], f"importing protocol loaded {pulled_in}"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            names.add("__import__")
    return names


def test_protocol_sources_import_no_io_module() -> None:
    files = sorted(PROTOCOL.glob("*.py"))
    assert files
    offenders = {f.name: sorted(_imports(f) & (FORBIDDEN | {"__import__", "importlib"})) for f in files}
    assert {k: v for k, v in offenders.items() if v} == {}
