"""The shape of the code, checked: the rules of docs/architecture.md as tests.

* py-libp2p is imported only by the adapter, the package ``node/p2p/`` (read
  from every ``import`` statement with ``ast``), and the CLI never loads it (a
  fresh interpreter imports the command line and the modules it uses);
* no import cycle among the modules of ``node/`` and ``protocol/`` (imports
  inside functions count too: a lazy import only hides a cycle; imports under
  ``if TYPE_CHECKING:`` do not run and do not count);
* no source file over 600 lines and no function over 80;
* services get what they need through their constructors: no lookup of a
  sibling by attribute name on a node object, no match on a class's name.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("node", "protocol")
ADAPTER = "node.p2p"  #: the adapter package: it and its modules may import libp2p
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    """Absolute names of every module ``module`` imports (outside TYPE_CHECKING blocks)."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                keep = len(parts) - node.level + (1 if is_package else 0)
                base = ".".join(parts[:keep] + ([base] if base else []))
            yield base
            for a in node.names:  # ``from node.find import adverts`` imports a module too
                yield f"{base}.{a.name}"
        stack.extend(ast.iter_child_nodes(node))


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        deps = set()
        for imported in _imports(tree, name, path.name == "__init__.py"):
            if imported in mods and imported != name:
                deps.add(imported)
        graph[name] = deps
    return graph


def test_libp2p_is_imported_by_the_adapter_only() -> None:
    offenders = []
    for name, path in _modules().items():
        tree = ast.parse(path.read_text())
        for imported in _imports(tree, name, path.name == "__init__.py"):
            in_adapter = name == ADAPTER or name.startswith(ADAPTER + ".")
            if imported.split(".")[0] == "libp2p" and not in_adapter:
                offenders.append(f"{name} imports {imported}")
    assert offenders == []


_CLI_PROBE = """
import json, sys
import node.cli, node.api.client, node.jobs.jobfile, node.errors
parser = node.cli.build_parser()
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("libp2p", "trio"))))
"""


def test_the_command_line_never_loads_libp2p() -> None:
    """`cpn` commands talk to the daemon's API; loading py-libp2p would cost ~0.8 s each."""
    out = subprocess.run([sys.executable, "-c", _CLI_PROBE], capture_output=True, text=True, check=True,
                         timeout=120, cwd=ROOT)
    assert [m for m in json.loads(out.stdout) if m.startswith("libp2p")] == []


def test_no_import_cycles() -> None:
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert cycles == []


def test_a_package_does_not_import_its_parent_back() -> None:
    """protocol/ never imports node/ (the sans-IO core knows nothing of the daemon)."""
    graph = _graph()
    assert sorted(f"{m} -> {d}" for m, deps in graph.items() if m.startswith("protocol")
                  for d in deps if d.startswith("node")) == []


def test_no_file_or_function_too_long() -> None:
    too_long = []
    for name, path in _modules().items():
        text = path.read_text()
        lines = text.count("\n")
        if lines > MAX_FILE_LINES:
            too_long.append(f"{name}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}.{node.name}: {length} lines")
    assert too_long == []


def test_services_are_wired_not_looked_up() -> None:
    offenders = []
    for name, path in _modules().items():
        if not name.startswith("node"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in (
                "getattr", "hasattr", "setattr"
            ):
                target = node.args[0] if node.args else None
                if isinstance(target, ast.Name) and target.id == "node" or (
                    isinstance(target, ast.Attribute) and target.attr == "node"
                ):
                    offenders.append(f"{name}: {node.func.id}(node, ...) at line {node.lineno}")
            if isinstance(node, ast.Compare) and isinstance(node.left, ast.Attribute) and (
                node.left.attr == "__name__" and isinstance(node.left.value, ast.Call)
            ):
                offenders.append(f"{name}: type(...).__name__ comparison at line {node.lineno}")
    assert offenders == []
